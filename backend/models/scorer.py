"""Give any model the shape that scoring (backend/selection.py) works with.

Selection computes features once per chunk (``transform``) and reads probabilities, committee
probabilities and features from them. The built-in Learner has exactly that shape and is used as
it is. For any other model, :class:`ModelScorer` calls the model once per chunk and keeps
everything it said in one matrix: ``[features | probabilities | committee probabilities]`` (the
features only when the model has them, the committee only when the strategy reads one), so the
pool is never run through the model twice. A model without features is therefore clustered (the
``cluster`` written to Label Studio) on its probabilities. Every output is checked
(:func:`~backend.models.base.check_proba` and friends) before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from backend import strategies
from backend.models.base import Model, ModelError, call, check_committee, check_features, check_proba
from backend.models.builtin import LearnerModel

__all__ = ["ModelScorer", "scorer_for", "scorer_for_strategy"]


class ModelScorer:
    """A Learner-shaped view of a model: ``transform`` -> X -> ``predict_proba(X)`` / ``committee_proba(X)``."""

    def __init__(self, model: Model, *, committee: bool = False, features: bool | None = None) -> None:
        self.model = model
        caps = model.capabilities()
        if committee and "committee" not in caps:
            raise ModelError(f"{type(model).__name__} has no committee")
        self.committee = committee
        self.use_features = ("features" in caps) if features is None else features
        self._d = 0
        self._members = 0

    @property
    def classes_(self) -> tuple[str, ...]:
        """The model's classes, in the order of the probability columns."""
        return self.model.classes_

    def transform(self, inputs: Sequence[Any], embeddings: np.ndarray | None = None) -> Any:
        """One row per input: the model's features (if any), probabilities and committee (if asked).

        ``embeddings`` (the pool cache's text embeddings) is not used: a plugin model featurizes itself."""
        n = len(inputs)
        parts: list[Any] = []
        if self.use_features:
            F = check_features(self.model, call(self.model, "features", inputs), n)
            self._d = F.shape[1]
            parts.append(sp.csr_matrix(F) if sp.issparse(F) else np.asarray(F, dtype=np.float64))
        parts.append(check_proba(self.model, call(self.model, "predict_proba", inputs), n))
        if self.committee:
            c = check_committee(self.model, call(self.model, "committee_proba", inputs), n)
            self._members = c.shape[0]
            parts.append(c.transpose(1, 0, 2).reshape(n, -1))
        if any(sp.issparse(p) for p in parts):
            return sp.hstack([sp.csr_matrix(p) for p in parts], format="csr")
        return np.hstack(parts)

    def _columns(self, X: Any, start: int, stop: int) -> np.ndarray:
        part = X[:, start:stop]
        return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The class probabilities held in rows that `transform` produced."""
        k = len(self.classes_)
        return self._columns(X, self._d, self._d + k)

    def committee_proba(self, X: Any) -> np.ndarray:
        """The committee's probabilities (members, rows, classes) held in rows that `transform` produced."""
        if not self.committee:
            raise ModelError("committee probabilities were not computed (ModelScorer(committee=True))")
        k = len(self.classes_)
        flat = self._columns(X, self._d + k, self._d + k + self._members * k)
        return flat.reshape(flat.shape[0], self._members, k).transpose(1, 0, 2)

    def make_estimator(self) -> Any:
        """Not available for a plug-in model: raises ModelError."""
        raise ModelError(f"{type(self.model).__name__} gives no estimator factory")

    def predict_labels(self, proba: np.ndarray) -> list[list[str]]:
        """The model's labels for rows of probabilities."""
        return self.model.predict_labels(proba)


def scorer_for_strategy(model: Model, strategy: str, params: Mapping[str, Any] | None = None) -> Any:
    """:func:`scorer_for` with a committee exactly when ``strategy`` (with ``params``) or the row
    measure it scores rows with reads one."""
    entry = strategies.get(strategy)
    row = strategies.get(entry.row_measure)
    needs = entry.requires(dict(params or {})) | row.requires(dict(params or {}) if entry.pointwise else None)
    return scorer_for(model, committee="committee" in needs)


def scorer_for(model: Model, *, committee: bool = False) -> Any:
    """What selection scores with: the Learner itself for the built-in model, else a ModelScorer."""
    if isinstance(model, LearnerModel):
        return model.learner
    return ModelScorer(model, committee=committee)
