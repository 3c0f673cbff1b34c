"""The model interface: what lsal needs from a model to run active learning with it.

A model is a class that derives from :class:`Model` (as a scikit-learn estimator derives from
``BaseEstimator``). It declares what it accepts and implements two methods:

- ``object_tags``: the Label Studio object tags it can learn from (``"Text"``, ``"HyperText"``,
  ``"Table"``, ``"Image"``); ``multi_label``: whether it handles ``<Choices choice="multiple">``;
- ``fit(inputs, y)``: ``inputs`` are what :func:`backend.labelconfig.task_input` gives for the
  object (a string for Text/HyperText, a ``{name: number}`` dict for Table) except for Image, where
  lsal fetches and featurizes the picture itself and passes one float32 vector per task;
  ``y`` holds a label per input (single-label) or a list of labels per input (multi-label);
- ``predict_proba(inputs)``: an ``(n, k)`` array, one column per ``classes_`` entry, rows summing
  to 1; multi-label: ``(n, L)`` independent probabilities, one column per label.

Optional capabilities (override the method; ``capabilities()`` reports which are there):

- ``committee_proba(inputs)`` -> ``(m, n, k)``, m >= 2 members: query-by-committee strategies;
- ``features(inputs)`` -> ``(n, d)`` numbers: diversity, coreset, density, cold-start seeding and
  the ``cluster`` written to Label Studio;

and ``save(path)`` / ``load(path, spec)``, which every model must provide so that versions are
published, served and rolled back. The artifacts must not execute code when read (no pickle or
joblib; see backend/models/artifacts.py).

Everything lsal reads from a model goes through :func:`check_proba` / :func:`check_committee` /
:func:`check_features`: wrong shapes, NaN or probabilities outside [0, 1] become a
:class:`ModelError` naming the model and the offending value, which fails that project's cycle and
leaves the previous version serving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backend.labelconfig import TaskSpec

__all__ = [
    "CAPABILITIES",
    "call",
    "fit_checked",
    "OBJECT_TAGS",
    "Model",
    "ModelError",
    "check_committee",
    "check_features",
    "check_proba",
]

#: object tags a model may declare
OBJECT_TAGS = frozenset({"Text", "HyperText", "Table", "Image"})
#: optional capabilities a model may have (strategies name them in their ``needs``)
CAPABILITIES = ("committee", "features")
#: how far a row of single-label probabilities may be from summing to 1
PROBA_TOLERANCE = 1e-3


class ModelError(RuntimeError):
    """A model cannot be built, used or loaded; the message names the model and what is wrong."""


class Model(ABC):
    """Base class of every model lsal can train (see the module docstring for the contract)."""

    #: the Label Studio object tags this model learns from
    object_tags: ClassVar[frozenset[str]] = frozenset()
    #: whether it handles multi-label ``<Choices choice="multiple">``
    multi_label: ClassVar[bool] = False

    def __init__(self, spec: TaskSpec, *, seed: int = 0) -> None:
        self.spec = spec
        self.seed = int(seed)
        self.classes_: tuple[str, ...] = ()

    @abstractmethod
    def fit(self, inputs: Sequence[Any], y: Sequence[Any]) -> Model:
        """Train on ``inputs`` and their labels; returns self with ``classes_`` set."""

    @abstractmethod
    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """``(n, len(classes_))`` probabilities (see the module docstring)."""

    def committee_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """``(m, n, k)`` probabilities of m >= 2 committee members. Optional."""
        raise NotImplementedError(f"{type(self).__name__} has no committee")

    def features(self, inputs: Sequence[Any]) -> np.ndarray:
        """``(n, d)`` numeric features (dense or scipy sparse). Optional."""
        raise NotImplementedError(f"{type(self).__name__} gives no features")

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted model into the (new, empty) directory ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, spec: TaskSpec) -> Model:
        """Read a model that :meth:`save` wrote; must not execute code from the files."""

    def capabilities(self) -> frozenset[str]:
        """The optional capabilities this model implements, out of :data:`CAPABILITIES`.

        By default: the optional methods its class overrides; a class that has them only for some
        estimators or label configs overrides this too (as :class:`SklearnModel` does)."""
        cls = type(self)
        have = set()
        if cls.committee_proba is not Model.committee_proba:
            have.add("committee")
        if cls.features is not Model.features:
            have.add("features")
        return frozenset(have)

    def predict_labels(self, proba: np.ndarray) -> list[list[str]]:
        """Single-label: the most probable class; multi-label: every label with P > 0.5."""
        proba = np.asarray(proba)
        if self.spec.multi_label:
            return [[self.classes_[j] for j in np.flatnonzero(row > 0.5)] for row in proba]
        return [[self.classes_[j]] for j in proba.argmax(axis=1)]


def _who(model: Any) -> str:
    return type(model).__name__


def check_proba(model: Any, proba: Any, n: int) -> np.ndarray:
    """``proba`` as a float64 array if it is what :meth:`Model.predict_proba` promises, else ModelError."""
    k = len(model.classes_)
    try:
        p = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"{_who(model)}.predict_proba returned {type(proba).__name__}, not an array") from None
    if p.shape != (n, k):
        raise ModelError(
            f"{_who(model)}.predict_proba returned shape {p.shape}; expected ({n}, {k}): n inputs x classes_"
        )
    _check_values(model, "predict_proba", p)
    if not model.spec.multi_label and n:
        sums = p.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > PROBA_TOLERANCE)
        if bad.size:
            raise ModelError(f"{_who(model)}.predict_proba row {int(bad[0])} sums to {sums[bad[0]]:.6g}, not 1")
    return p


def check_committee(model: Any, proba: Any, n: int) -> np.ndarray:
    """Like :func:`check_proba` for ``committee_proba``'s ``(m, n, k)``, m >= 2."""
    k = len(model.classes_)
    try:
        p = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"{_who(model)}.committee_proba returned {type(proba).__name__}, not an array") from None
    if p.ndim != 3 or p.shape[0] < 2 or p.shape[1:] != (n, k):
        raise ModelError(f"{_who(model)}.committee_proba returned shape {p.shape}; expected (m >= 2, {n}, {k})")
    _check_values(model, "committee_proba", p)
    return p


def check_features(model: Any, X: Any, n: int) -> Any:
    """``features`` output if it is ``(n, d)`` and finite (dense or scipy sparse), else ModelError."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != n or shape[1] < 1:
        raise ModelError(f"{_who(model)}.features returned shape {shape}; expected ({n}, d >= 1)")
    values = X.data if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ModelError(f"{_who(model)}.features returned NaN or infinite values")
    return X


def _check_values(model: Any, method: str, p: np.ndarray) -> None:
    if not np.isfinite(p).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
        raise ModelError(f"{_who(model)}.{method} returned {p[where]} at {where}")
    if p.size and (p.min() < -PROBA_TOLERANCE or p.max() > 1 + PROBA_TOLERANCE):
        bad = p.min() if p.min() < 0 else p.max()
        raise ModelError(f"{_who(model)}.{method} returned {bad:.6g}, outside [0, 1]")


def call(model: Any, method: str, inputs: Sequence[Any]) -> Any:
    """``model.<method>(inputs)``, with anything the model raises turned into a ModelError naming it."""
    try:
        return getattr(model, method)(inputs)
    except ModelError:
        raise
    except Exception as exc:  # a plugin may raise anything; the cycle reports it as the model's fault
        raise ModelError(f"{_who(model)}.{method} failed: {type(exc).__name__}: {exc}") from exc


#: training rows run through every output check right after fit, before a version is published
PROBE_ROWS = 200


def fit_checked(model: Model, inputs: Sequence[Any], y: Sequence[Any], embeddings: Any = None) -> Model:
    """Fit ``model`` and check what it says on (up to PROBE_ROWS of) its own training inputs.

    Anything wrong (an exception in ``fit``, no or unknown ``classes_``, a wrong shape, NaN) raises
    ModelError *before* the version is published, so the previous version keeps serving.
    ``embeddings``: the texts' cached embeddings, which only the built-in learner takes."""
    try:
        if embeddings is not None:
            model.fit(inputs, y, embeddings)  # type: ignore[call-arg]
        else:
            model.fit(inputs, y)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{_who(model)}.fit failed: {type(exc).__name__}: {exc}") from exc
    classes = getattr(model, "classes_", ())
    if not isinstance(classes, tuple) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelError(f"{_who(model)}.fit left classes_ = {classes!r:.120}; expected a tuple of label strings")
    if model.spec.multi_label and classes != tuple(model.spec.labels):
        raise ModelError(f"{_who(model)}: multi-label classes_ must be the config's labels {model.spec.labels}")
    probe = list(inputs[:PROBE_ROWS])
    check_proba(model, call(model, "predict_proba", probe), len(probe))
    caps = model.capabilities()
    if "committee" in caps:
        check_committee(model, call(model, "committee_proba", probe), len(probe))
    if "features" in caps:
        check_features(model, call(model, "features", probe), len(probe))
    return model
