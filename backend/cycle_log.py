"""The per-project cycle log: MODEL_DIR/<project>/cycles.jsonl, one JSON line per cycle.

Written by workers, read by the server (status, metrics): derived state, safe to lose.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


class _Report(Protocol):
    project: int
    finished_at: str | None

    def as_dict(self) -> dict[str, Any]: ...


def record_cycle(model_dir: Path, report: _Report) -> None:
    """Append the cycle's report to MODEL_DIR/<project>/cycles.jsonl (status, timings, signals)."""
    report.finished_at = datetime.now(UTC).isoformat()
    path = Path(model_dir) / str(report.project) / "cycles.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(report.as_dict(), default=str, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def cycle_history(model_dir: Path, project: int, last: int | None = None) -> list[dict[str, Any]]:
    try:
        lines = (Path(model_dir) / str(int(project)) / "cycles.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines[-last:] if last else lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
