"""What Label Studio told us about each project in /setup: its label config and extra params.

Kept in `MODEL_DIR/<project>/project.json` (written atomically) so that every worker sharing
MODEL_DIR sees it. It is derived state: if it is missing, the worker reads the label config from
Label Studio and uses the global settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.config import ProjectConfig, Settings
from backend.projectdir import ProjectDir, read_json, write_json


@dataclass(frozen=True)
class ProjectSetup:
    """The label config and extra params of one project, as /setup last received them."""

    project: int
    label_config: str
    extra_params: dict[str, Any]
    updated_at: str

    def config(self, settings: Settings) -> ProjectConfig:
        """The project's effective settings: the deployment's, overridden by its extra params."""
        return ProjectConfig.defaults(settings).with_extra_params(self.extra_params)


def path(model_dir: Path, project: int) -> Path:
    """Where the project's setup is kept (the server stats it to notice changes)."""
    return ProjectDir(model_dir, project).project_json


def is_set_up(model_dir: Path, project: int) -> bool:
    """Whether Label Studio ever set `project` up with lsal (its /setup reached this MODEL_DIR).

    The one rule for requests about a project lsal was never set up for (a made-up id, or one Label
    Studio never connected): they cost no job, no file and no metric series. One stat, no parsing.
    """
    return path(model_dir, project).is_file()


def save(model_dir: Path, project: int, label_config: str, extra_params: dict[str, Any] | None) -> ProjectSetup:
    """Keep what /setup received; an identical repeat does not rewrite the file."""
    setup = ProjectSetup(
        project=int(project),
        label_config=label_config,
        extra_params=dict(extra_params or {}),
        updated_at=datetime.now(UTC).isoformat(),
    )
    pdir = ProjectDir(model_dir, project)
    old = read_json(pdir.project_json)
    if (
        isinstance(old, dict)
        and old.get("label_config") == label_config
        and old.get("extra_params") == setup.extra_params
    ):
        return setup  # /setup runs on every Data Manager load: skip the identical rewrite
    write_json(pdir.open().project_json, setup.__dict__)
    return setup


def load(model_dir: Path, project: int) -> ProjectSetup | None:
    """The project's setup, or None if /setup never reached this MODEL_DIR (or the file is unreadable)."""
    raw = read_json(ProjectDir(model_dir, project).project_json)
    try:
        return ProjectSetup(
            project=int(raw["project"]),
            label_config=str(raw["label_config"]),
            extra_params=dict(raw.get("extra_params") or {}),
            updated_at=str(raw.get("updated_at", "")),
        )
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
