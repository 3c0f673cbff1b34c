"""Which models a deployment offers: registered by the admin, chosen by name per project.

The admin registers a model class (a :class:`~backend.models.base.Model` subclass) in one of two
ways, both read once when lsal starts:

- a Python entry point in the group ``lsal.models`` of an installed package (``pip install`` it)::

      [project.entry-points."lsal.models"]
      my-model = "my_package.lsal_model:MyModel"

- the environment variable ``AL_MODELS``: ``name=module:attribute`` pairs separated by commas,
  e.g. ``AL_MODELS=my-model=my_package.lsal_model:MyModel`` (for a module on ``PYTHONPATH``).

A project picks one by name in the connection's extra params, ``{"model": "my-model"}``; the
default is ``AL_MODEL`` (``builtin``: backend/models/builtin.py). A name is only ever looked up in
this table: nothing in a request makes lsal import a module or read a file. A plugin that fails to
import is kept as *broken* with its error, so the server and the other projects run on; a project
that names it is refused by ``/setup`` and its cycle fails with that error.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from backend.labelconfig import TaskSpec
from backend.models.base import Model, ModelError
from backend.models.builtin import ImageModel, LearnerModel
from backend.store import METADATA_FILE

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "ModelRegistry", "parse_model_specs"]

log = logging.getLogger("lsal.models")

ENTRY_POINT_GROUP = "lsal.models"
BUILTIN = "builtin"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_TARGET_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def parse_model_specs(raw: str) -> dict[str, str]:
    """``AL_MODELS``'s ``name=module:attribute,...`` as ``{name: "module:attribute"}`` (ValueError if malformed)."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not NAME_RE.fullmatch(name) or not _TARGET_RE.fullmatch(target):
            raise ValueError(f"expected name=module:attribute (name: lower-case letters, digits, '-_.'), got {item!r}")
        if name == BUILTIN or name in out:
            raise ValueError(f"model name {name!r} is taken")
        out[name] = target
    return out


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _check_class(name: str, obj: Any) -> type[Model]:
    if not isinstance(obj, type) or not issubclass(obj, Model):
        raise ModelError(f"model {name!r} is {obj!r:.80}, not a backend.models.Model subclass")
    if not obj.object_tags:
        raise ModelError(f"model {name!r} ({obj.__name__}) declares no object_tags")
    return obj


@dataclass
class ModelRegistry:
    """Model classes by name, and the plugins that failed to load (name -> error)."""

    classes: dict[str, type[Model]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    @classmethod
    def discover(cls, env_models: str = "", *, entry_points: bool = True) -> ModelRegistry:
        """The built-in model, every ``lsal.models`` entry point, and ``AL_MODELS`` (which wins)."""
        reg = cls()
        targets: dict[str, tuple[str, Any]] = {}
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                targets[ep.name] = (ep.value, ep.load)
        for name, target in parse_model_specs(env_models).items():
            targets[name] = (target, lambda t=target: _import(t))
        for name, (target, load) in sorted(targets.items()):
            if not NAME_RE.fullmatch(name) or name == BUILTIN:
                reg.broken[name] = (
                    f"model name {name!r} is not allowed (lower-case letters, digits, '-_.'; not {BUILTIN!r})"
                )
                continue
            try:
                reg.classes[name] = _check_class(name, load())
            except Exception as exc:  # a plugin may raise anything on import; keep lsal running
                reg.broken[name] = f"model {name!r} ({target}) failed to load: {type(exc).__name__}: {exc}"
                log.error("%s", reg.broken[name])
        return reg

    def names(self) -> list[str]:
        """Every name a project may choose."""
        return [BUILTIN, *sorted(self.classes)]

    def model_class(self, name: str, spec: TaskSpec) -> type[Model]:
        """The class ``name`` stands for in a project with ``spec``; ModelError says why not."""
        if name == BUILTIN:
            return ImageModel if spec.kind == "image" else LearnerModel
        if name in self.broken:
            raise ModelError(self.broken[name])
        if name not in self.classes:
            raise ModelError(f"unknown model {name!r}; registered models: {', '.join(self.names())}")
        cls = self.classes[name]
        if spec.object_tag not in cls.object_tags:
            raise ModelError(
                f"model {name!r} does not accept <{spec.object_tag}> (it accepts {', '.join(sorted(cls.object_tags))})"
            )
        if spec.multi_label and not cls.multi_label:
            raise ModelError(f'model {name!r} is single-label; this label config is multi-label (choice="multiple")')
        return cls

    def create(
        self, name: str, spec: TaskSpec, *, seed: int = 0, learner_params: Mapping[str, Any] | None = None
    ) -> Model:
        """A new, unfitted model; any error of the plugin's constructor becomes a ModelError.

        ``learner_params`` (``ProjectConfig.learner_params()``: text features, embedding model) are
        settings of the built-in text/table learner; other models do not take them."""
        cls = self.model_class(name, spec)
        params = dict(learner_params or {}) if cls is LearnerModel else {}
        try:
            return cls(spec, seed=seed, **params)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model {name!r} could not be created: {type(exc).__name__}: {exc}") from exc

    def load(self, name: str, spec: TaskSpec, path: Path) -> Model:
        """A published model of class ``name`` from its version directory."""
        cls = self.model_class(name, spec)
        try:
            model = cls.load(Path(path), spec)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"model {name!r} could not be loaded from {Path(path).name}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(model, Model):
            raise ModelError(f"model {name!r}: {cls.__name__}.load returned {type(model).__name__}, not a Model")
        return model

    def load_version(self, path: Path, spec: TaskSpec) -> Model:
        """The model of a published version directory (its metadata names the model; ``builtin``
        for versions published before models were pluggable). A loader for ``ModelStore.load``."""
        try:
            meta = json.loads((Path(path) / METADATA_FILE).read_text())
            name = meta.get("model", BUILTIN)
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelError(f"{Path(path).name} has no readable {METADATA_FILE}: {exc}") from None
        if not isinstance(name, str):
            raise ModelError(f"{Path(path).name}: model name {name!r} is not a string")
        return self.load(name, spec, path)

    def refusal(self, name: str, spec: TaskSpec, strategy: str, needs: Iterable[str]) -> tuple[str, str] | None:
        """Why a project may not use model ``name`` with ``strategy`` (which needs ``needs``), as
        ``(message, field)`` for a 400; None when it may."""
        try:
            lacking = self.missing(name, spec, needs)
        except ModelError as exc:
            return str(exc), "extra_params.model"
        if not lacking:
            return None
        have = sorted(self.create(name, spec).capabilities()) or ["probabilities only"]
        return (
            f"strategy {strategy!r} needs {' and '.join(lacking)}, which model {name!r} does not give "
            f"(it gives: {', '.join(have)}); choose a strategy such as 'margin' or 'entropy'",
            "extra_params.strategy",
        )

    def missing(self, name: str, spec: TaskSpec, needs: Iterable[str]) -> list[str]:
        """Which of a strategy's ``needs`` (out of committee / features / estimator) the model lacks."""
        model = self.create(name, spec)
        have = set(model.capabilities())
        if isinstance(model, LearnerModel):
            have.add("estimator")  # the Learner gives make_estimator for expected_error / variance_reduction
        return sorted(n for n in needs if n in ("committee", "features", "estimator") and n not in have)
