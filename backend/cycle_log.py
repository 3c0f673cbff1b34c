"""The per-project cycle log: MODEL_DIR/<project>/cycles.jsonl, one JSON line per cycle.

Written by workers, read by the server (status, metrics): derived state, safe to lose. Each line is
appended durably (projectdir.append_line); a line torn by a crash is skipped on read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from backend.projectdir import ProjectDir, append_line, read_jsonl


class _Report(Protocol):
    project: int
    finished_at: str | None

    def as_dict(self) -> dict[str, Any]: ...


def record_cycle(model_dir: Path, report: _Report) -> None:
    """Append the cycle's report to MODEL_DIR/<project>/cycles.jsonl (status, timings, signals)."""
    report.finished_at = datetime.now(UTC).isoformat()
    line = json.dumps(report.as_dict(), default=str, separators=(",", ":")).encode()
    append_line(ProjectDir(model_dir, report.project).cycle_log, line)


def cycle_history(model_dir: Path, project: int, last: int | None = None) -> list[dict[str, Any]]:
    """The project's cycle reports, oldest first (only the `last` ones if given)."""
    entries = [e for e in read_jsonl(ProjectDir(model_dir, project).cycle_log) if isinstance(e, dict)]
    return entries[-last:] if last else entries
