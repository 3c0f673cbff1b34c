"""Any scikit-learn classifier or pipeline as an lsal model, in a few lines.

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from backend.models import sklearn_model

    SgdText = sklearn_model(
        lambda: make_pipeline(TfidfVectorizer(), SGDClassifier(loss="log_loss")),
        object_tags={"Text", "HyperText"},
    )

What the wrapper adds to the estimator:

- labels: ``classes_`` in the label config's order (labels outside it after them, sorted);
  multi-label (``multi_label=True``): the estimator is fitted on a 0/1 indicator matrix, one column
  per label (e.g. ``OneVsRestClassifier``), and ``predict_proba`` gives P(label) per column;
- inputs: Text/HyperText as a list of strings, Table as a list of ``{name: number}`` dicts (start the
  pipeline with ``DictVectorizer``), Image as an ``(n, d)`` float32 matrix of image features;
- a committee when the estimator has none: the estimator and ``committee_size - 1`` clones fitted on
  seeded bootstrap resamples (stratified: every class keeps at least one example), Breiman's
  bagging as in query-by-bagging (Abe & Mamitsuka 1998). ``committee_size = 1`` fits one estimator
  only (committee strategies are then refused);
- features for diversity, coreset and density: what a pipeline's last step receives
  (``pipeline[:-1].transform``), or the image features; a bare estimator on text or tables has none;
- save/load through skops (backend/models/artifacts.py): list in ``trusted_types`` the full names
  of your own classes and functions that the fitted estimator holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from backend.labelconfig import TaskSpec
from backend.models import artifacts
from backend.models.base import OBJECT_TAGS, Model, ModelError

__all__ = ["SklearnModel", "sklearn_model"]

ARTIFACT = "model.skops"


def _bootstrap(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a bootstrap resample in which every class keeps at least one example."""
    idx = [rng.choice(rows, size=len(rows), replace=True) for rows in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.sort(np.concatenate(idx))


def _seeded(estimator: Any, seed: int) -> Any:
    """Give every unset ``random_state`` in the estimator (and its steps) the project's seed."""
    params = estimator.get_params(deep=True) if hasattr(estimator, "get_params") else {}
    unset = {k: seed for k, v in params.items() if (k == "random_state" or k.endswith("__random_state")) and v is None}
    return estimator.set_params(**unset) if unset else estimator


class SklearnModel(Model):
    """A :class:`Model` around ``make_estimator()``'s scikit-learn classifier (module docstring)."""

    committee_size: ClassVar[int] = 3
    trusted_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: TaskSpec, *, seed: int = 0) -> None:
        super().__init__(spec, seed=seed)
        if self.committee_size < 1:
            raise ModelError(f"{type(self).__name__}.committee_size must be >= 1, got {self.committee_size}")
        self.estimator_: Any = None
        self.members_: list[Any] = []

    def make_estimator(self) -> Any:
        """A new, unfitted scikit-learn classifier with ``fit`` and ``predict_proba``."""
        raise NotImplementedError(f"{type(self).__name__} must define make_estimator()")

    # -- inputs and targets ------------------------------------------------------------------------

    def prepare(self, inputs: Sequence[Any]) -> Any:
        """What the estimator receives for ``inputs`` (see the module docstring)."""
        if self.spec.kind == "image":
            return np.asarray(np.stack([np.asarray(x, dtype=np.float32) for x in inputs]), dtype=np.float32)
        return list(inputs)

    def _targets(self, y: Sequence[Any]) -> np.ndarray:
        if self.spec.multi_label:
            bad = next((row for row in y if isinstance(row, str) or not isinstance(row, Iterable)), None)
            if bad is not None:
                raise ValueError(f"multi-label y must hold lists of labels, got {bad!r}")
            self.classes_ = tuple(self.spec.labels)
            return np.array([[label in set(row) for label in self.classes_] for row in y], dtype=np.int64)
        labels = [str(v) for v in y]
        seen = set(labels)
        if len(seen) < 2:
            raise ValueError(f"need at least 2 classes to fit, got {sorted(seen)}")
        self.classes_ = tuple([c for c in self.spec.labels if c in seen] + sorted(seen - set(self.spec.labels)))
        index = {c: i for i, c in enumerate(self.classes_)}
        return np.array([index[v] for v in labels], dtype=np.int64)

    # -- fit and predict ---------------------------------------------------------------------------

    def _new(self) -> Any:
        estimator = clone(self.make_estimator())
        if not hasattr(estimator, "fit") or not hasattr(estimator, "predict_proba"):
            raise ModelError(f"{type(self).__name__}.make_estimator() returned {estimator!r:.80} without predict_proba")
        return _seeded(estimator, self.seed)

    def fit(self, inputs: Sequence[Any], y: Sequence[Any]) -> SklearnModel:
        if len(inputs) != len(y):
            raise ValueError(f"inputs and y differ in length: {len(inputs)} != {len(y)}")
        if len(y) == 0:
            raise ValueError("cannot fit on zero examples")
        target = self._targets(y)
        X = self.prepare(inputs)
        self.estimator_ = self._new().fit(X, target)
        self.members_ = []
        rng = np.random.default_rng(self.seed)
        strata = target if target.ndim == 1 else np.zeros(len(target), dtype=np.int64)
        for _ in range(self.committee_size - 1):
            idx = _bootstrap(strata, rng)
            part = X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]
            self.members_.append(self._new().fit(part, target[idx]))
        return self

    def _proba(self, estimator: Any, X: Any, n: int) -> np.ndarray:
        raw = estimator.predict_proba(X)
        k = len(self.classes_)
        if self.spec.multi_label:
            if isinstance(raw, list):  # MultiOutputClassifier: one (n, 2) array per label
                return np.column_stack([p[:, -1] if p.shape[1] > 1 else np.zeros(n) for p in raw])
            return np.asarray(raw, dtype=np.float64)
        raw = np.asarray(raw, dtype=np.float64)
        codes = np.asarray(getattr(estimator, "classes_", np.arange(raw.shape[1] if raw.ndim == 2 else 0)))
        if raw.ndim != 2 or raw.shape[1] != len(codes):
            return raw  # check_proba reports the wrong shape with the model's name
        full = np.zeros((raw.shape[0], k))
        full[:, codes.astype(np.int64)] = raw
        return full

    def _fitted(self) -> Any:
        if self.estimator_ is None:
            raise ModelError(f"{type(self).__name__} is not fitted")
        return self.estimator_

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        return self._proba(self._fitted(), self.prepare(inputs), len(inputs))

    def committee_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        if not self.members_:
            raise NotImplementedError(f"{type(self).__name__} has committee_size = 1")
        X = self.prepare(inputs)
        return np.stack([self._proba(m, X, len(inputs)) for m in [self._fitted(), *self.members_]])

    def features(self, inputs: Sequence[Any]) -> Any:
        estimator = self._fitted()
        X = self.prepare(inputs)
        if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
            return estimator[:-1].transform(X)
        if isinstance(X, np.ndarray):
            return X
        raise NotImplementedError(f"{type(self).__name__}: a bare estimator on {self.spec.kind} gives no features")

    def capabilities(self) -> frozenset[str]:
        """committee if committee_size >= 2; features for a pipeline or image features."""
        have = set()
        if self.committee_size >= 2:
            have.add("committee")
        if self.spec.kind == "image" or isinstance(self.make_estimator(), Pipeline):
            have.add("features")
        return frozenset(have)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        artifacts.dump(
            {"estimator": self._fitted(), "members": self.members_, "classes": list(self.classes_)},
            Path(path) / ARTIFACT,
        )

    @classmethod
    def load(cls, path: Path, spec: TaskSpec) -> SklearnModel:
        state = artifacts.load(Path(path) / ARTIFACT, trusted=cls.trusted_types)
        if not isinstance(state, dict) or not {"estimator", "members", "classes"} <= set(state):
            raise ModelError(f"{path} does not hold a {cls.__name__}")
        model = cls(spec)
        model.estimator_ = state["estimator"]
        model.members_ = list(state["members"])
        model.classes_ = tuple(str(c) for c in state["classes"])
        return model


def sklearn_model(
    make_estimator: Callable[[], Any],
    *,
    object_tags: Iterable[str],
    multi_label: bool = False,
    committee_size: int = 3,
    trusted_types: Iterable[str] = (),
    name: str = "SklearnPlugin",
) -> type[SklearnModel]:
    """A :class:`SklearnModel` subclass whose ``make_estimator`` calls ``make_estimator()``."""
    tags = frozenset(object_tags)
    unknown = sorted(tags - OBJECT_TAGS)
    if not tags or unknown:
        raise ValueError(f"object_tags must be a non-empty subset of {sorted(OBJECT_TAGS)}, got {sorted(tags)}")
    if committee_size < 1:
        raise ValueError(f"committee_size must be >= 1, got {committee_size}")

    def make(self: SklearnModel) -> Any:
        return make_estimator()

    return type(
        name,
        (SklearnModel,),
        {
            "make_estimator": make,
            "object_tags": tags,
            "multi_label": bool(multi_label),
            "committee_size": int(committee_size),
            "trusted_types": tuple(trusted_types),
            "__module__": getattr(make_estimator, "__module__", __name__),
            "__doc__": f"scikit-learn model {name} (made by sklearn_model)",
        },
    )
