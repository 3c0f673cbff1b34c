"""The labeled tasks kept between cycles, brought up to date from webhook hints.

Reading every label through Label Studio's export costs a cycle more the more labels a project has
(and Label Studio serves the annotators from the same process meanwhile). Between two full reads a
cycle reads only the tasks that webhooks named since the last cycle (`backend.jobs.LabelHints`):
their current state comes from Label Studio (a hint says which task, never what its label is), a
named task Label Studio no longer exports with annotations leaves the set. A full read happens when
there is no saved set yet, every `AL_LABELS_RECONCILE` seconds (deletions without a task id,
missed webhooks, edits made while lsal was down), when a hint asks for it, and after any update
that did not finish: `labels.dirty` exists from before the hints are taken until the updated set is
saved, so a cycle killed in between (its hints taken and lost) is followed by a full read.

The set is stored as JSON (`MODEL_DIR/<project>/labels.json`, written atomically), never pickled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from backend.jobs import LabelHints
from backend.projectdir import ProjectDir, read_json, write_atomic, write_json

Tasks = list[dict[str, Any]]
log = logging.getLogger("lsal.labels")


class LabelCache:
    """One project's labeled tasks on disk (``labels.json``) and how a cycle brings them up to date."""

    def __init__(self, model_dir: Any, project: int) -> None:
        self.pdir = ProjectDir(model_dir, project)

    def load(self) -> tuple[dict[int, dict[str, Any]], float] | None:
        """The saved tasks by id and when they were last read in full, or None (none saved, or the
        last update did not finish)."""
        if self.pdir.labels_dirty.exists():
            return None
        try:
            stored = read_json(self.pdir.labels)
            return {int(t["id"]): t for t in stored["tasks"]}, float(stored["full_read_at"])
        except (TypeError, ValueError, KeyError, AttributeError):
            return None

    def sync(
        self,
        reconcile_seconds: float,
        take_hints: Callable[[], LabelHints],
        read_all: Callable[[], Tasks],
        read_ids: Callable[[Iterable[int]], Tasks],
        now: Callable[[], float] = time.time,
        fence: Callable[[], None] = lambda: None,
    ) -> tuple[Tasks, str]:
        """The labeled tasks in id order, and how they were read: ``full`` or ``hints``.

        ``take_hints`` takes the tasks webhooks named (it clears them: called exactly once, after
        ``labels.dirty`` exists); ``read_all`` / ``read_ids`` read labeled tasks from Label Studio.
        ``fence`` is called right before each write (the project lock: CycleDeps.fence).
        """
        saved = self.load()
        try:
            self.pdir.open()
            fence()
            write_atomic(self.pdir.labels_dirty, b"")
        except OSError as exc:
            # Without the marker, hints taken now could be lost with nothing to say so: leave them
            # in Redis for the next cycle (the saved set plus them is still complete), read all now.
            log.warning("project dir %s not writable (%s): reading every label", self.pdir.root, exc)
            return sorted(read_all(), key=lambda t: int(t["id"])), "full"
        hints = take_hints()
        started = now()
        if saved is None or hints.full or started - saved[1] >= reconcile_seconds:
            tasks = {int(t["id"]): t for t in read_all()}
            full_read_at, how = started, "full"
        else:
            tasks, full_read_at = saved
            if hints.tasks:
                fresh = {int(t["id"]): t for t in read_ids(hints.tasks)}
                for task_id in hints.tasks:
                    if task_id in fresh:
                        tasks[task_id] = fresh[task_id]
                    else:
                        tasks.pop(task_id, None)  # no annotation left, or the task is gone
            how = "hints"
        ordered = [tasks[i] for i in sorted(tasks)]
        if how == "full" or hints.tasks:
            fence()
            write_json(self.pdir.labels, {"full_read_at": full_read_at, "tasks": ordered})
        fence()
        self.pdir.labels_dirty.unlink()
        return ordered, how
