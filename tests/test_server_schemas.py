"""Request parsing helpers (backend.server.schemas): project ids and error field paths."""

from __future__ import annotations

from typing import Any

import pytest

from backend.server.schemas import ApiError, field_from_loc, parse_project


@pytest.mark.parametrize(("value", "expected"), [("3.1763717060", 3), ("12", 12), (7, 7)])
def test_parse_project_reads_label_studios_form_and_plain_ids(value: Any, expected: int) -> None:
    assert parse_project(value) == expected


@pytest.mark.parametrize("value", ["0", "0.1763717060", "abc", "", "1/../../etc", -4, 1.5, None])
def test_parse_project_refuses_naming_the_field(value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_project(value, "project.id")
    assert (caught.value.status, caught.value.field) == (400, "project.id")


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("body", "tasks", 0, "id"), "tasks[0].id"),
        (("body", "extra_params", "strategy"), "extra_params.strategy"),
        (("body",), "body"),
        ((), "body"),
        (("path", "job_id"), "path.job_id"),
    ],
)
def test_field_from_loc(loc: tuple[Any, ...], expected: str) -> None:
    assert field_from_loc(loc) == expected
