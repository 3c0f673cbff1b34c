"""The README cannot drift from the code: its configuration table and its test command."""

from __future__ import annotations

import re
from pathlib import Path

from backend.config import ENV_VARS, markdown_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_configuration_table_lists_every_variable_with_its_default() -> None:
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    found = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        found[cells[0].strip("`")] = cells[1]
    assert list(found) == [v.name for v in ENV_VARS]
    for var in ENV_VARS:
        expected = f"`{var.default}`" if var.default else "(empty)"
        assert found[var.name] == expected, var.name


def test_configuration_table_is_the_generated_one() -> None:
    """Regenerate with `python -m backend.config --write README.md` after adding a setting."""
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    assert table.strip() == markdown_table()


def test_quickstart_is_two_commands_and_ci_runs_the_test_command_verbatim() -> None:
    block = README.split("## Quickstart")[1].split("```bash")[1].split("```")[0]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.strip().splitlines()]
    assert commands == ["pip install -e . && lsal serve", "pip install -e '.[test]' && pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\n" + commands[1] + "\n" in ci
