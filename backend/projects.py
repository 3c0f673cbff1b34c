"""What Label Studio told us about each project in /setup: its label config and extra params.

Kept in `MODEL_DIR/<project>/project.json` (written atomically) so that every worker sharing
MODEL_DIR sees it. It is derived state: if it is missing, the worker reads the label config from
Label Studio and uses the global settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.atomic import write_json
from backend.config import ProjectConfig, Settings


@dataclass(frozen=True)
class ProjectSetup:
    project: int
    label_config: str
    extra_params: dict[str, Any]
    updated_at: str

    def config(self, settings: Settings) -> ProjectConfig:
        return ProjectConfig.defaults(settings).with_extra_params(self.extra_params)


def path(model_dir: Path, project: int) -> Path:
    return Path(model_dir) / str(int(project)) / "project.json"


def save(model_dir: Path, project: int, label_config: str, extra_params: dict[str, Any] | None) -> ProjectSetup:
    setup = ProjectSetup(
        project=int(project),
        label_config=label_config,
        extra_params=dict(extra_params or {}),
        updated_at=datetime.now(UTC).isoformat(),
    )
    target = path(model_dir, project)
    if target.exists():
        try:
            old = json.loads(target.read_text())
            if old.get("label_config") == label_config and old.get("extra_params") == setup.extra_params:
                return setup  # /setup runs on every Data Manager load: skip the identical rewrite
        except (OSError, ValueError):
            pass
    write_json(target, setup.__dict__)
    return setup


def load(model_dir: Path, project: int) -> ProjectSetup | None:
    try:
        raw = json.loads(path(model_dir, project).read_text())
    except (OSError, ValueError):
        return None
    return ProjectSetup(
        project=int(raw["project"]),
        label_config=str(raw["label_config"]),
        extra_params=dict(raw.get("extra_params") or {}),
        updated_at=str(raw.get("updated_at", "")),
    )
