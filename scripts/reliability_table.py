"""Build the fault/attack table of docs/reliability.md from the test suite's docstrings.

Every test in SOURCES (faults, fuzz, security, `lsal serve`, deployment) whose docstring
has the lines ``Fault:``, ``Done:``, ``Expected:`` and ``Observed:`` (continuation lines indented)
becomes one row. ``python scripts/reliability_table.py`` prints the table;
``--write`` replaces the table between the markers in docs/reliability.md.
tests/test_reliability_doc.py fails when the doc and the tests differ.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = (
    "tests/test_faults.py",
    "tests/test_fuzz.py",
    "tests/test_security.py",
    "tests/test_cli_serve.py",
)
#: modules most of whose tests are not about faults: only their documented tests become rows
PARTIAL_SOURCES = (
    "tests/test_deploy.py",
    "tests/test_pool.py",
    "tests/test_projectdir.py",
    "tests/test_server_predict_pool.py",
)
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability-table:begin -->", "<!-- reliability-table:end -->"
FIELDS = ("Fault", "Done", "Expected", "Observed")


def _fields(doc: str) -> dict[str, str] | None:
    out: dict[str, str] = {}
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        key = next((f for f in FIELDS if stripped.startswith(f + ":")), None)
        if key is not None:
            current = key
            out[key] = stripped[len(key) + 1 :].strip()
        elif current is not None and stripped and line.startswith((" ", "\t")):
            out[current] += " " + stripped
        else:
            current = None
    return out if all(f in out for f in FIELDS) else None


def rows(repo: Path = REPO) -> list[list[str]]:
    table = []
    for rel in (*SOURCES, *PARTIAL_SOURCES):
        tree = ast.parse((repo / rel).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node)
                fields = _fields(doc or "")
                if fields is not None:
                    cells = [fields[f].replace("|", "\\|") for f in FIELDS]
                    table.append([*cells, f"`{Path(rel).stem}::{node.name}`"])
    return table


def table(repo: Path = REPO) -> str:
    header = "| fault or attack | what was done | expected behaviour | observed behaviour | test |"
    lines = [header, "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(repo)]
    return "\n".join(lines)


def render(doc_text: str, repo: Path = REPO) -> str:
    head, rest = doc_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(repo)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DOC.write_text(render(DOC.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
