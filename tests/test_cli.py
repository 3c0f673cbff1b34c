"""`lsal rollback` and the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend import cli
from backend.store import ModelStore


def _publish(store: ModelStore, n: int) -> list[str]:
    return [store.publish(5, lambda path: (path / "artifact").write_text("x"), {"n_labels": i}) for i in range(n)]


def test_rollback_serves_an_earlier_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    store = ModelStore(tmp_path)
    versions = _publish(store, 3)
    assert cli.main(["rollback", "--project", "5", "--to", versions[0]]) == 0
    assert json.loads(capsys.readouterr().out) == {"project": 5, "current_version": versions[0]}
    assert ModelStore(tmp_path).current(5) == versions[0]
    newer = _publish(store, 1)[0]  # publishing after a rollback still gets the next number
    assert newer.startswith("v4-")


def test_rollback_to_an_unknown_version_is_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    _publish(ModelStore(tmp_path), 1)
    assert cli.main(["rollback", "--project", "5", "--to", "v9-20260101T000000Z"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lsal: rollback failed:")
