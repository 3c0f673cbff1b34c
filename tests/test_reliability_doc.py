"""docs/reliability.md's table is generated from the fault, fuzz and security tests: it cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("reliability_table", REPO / "scripts" / "reliability_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reliability_doc_matches_the_tests() -> None:
    script = _script()
    doc = (REPO / "docs" / "reliability.md").read_text()
    assert doc == script.render(doc), "docs/reliability.md is stale: run python scripts/reliability_table.py --write"


def test_every_fault_security_and_fuzz_test_has_a_row() -> None:
    script = _script()
    names = {r[-1] for r in script.rows()}
    assert len(names) >= 15
    for rel in script.SOURCES:
        text = (REPO / rel).read_text()
        for line in text.splitlines():
            if line.startswith("def test_"):
                name = line.split("(")[0].removeprefix("def ")
                row = f"`{Path(rel).stem}::{name}`"
                assert row in names, f"{rel}::{name} has no Fault/Done/Expected/Observed docstring"
