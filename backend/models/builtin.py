"""The built-in models, as implementations of the model interface.

- :class:`LearnerModel` (Text, HyperText, Table; single- and multi-label): backend/learner.py's
  ``Learner`` (featurizer, classifier, committee), unchanged. The cycle scores with the Learner
  itself (features computed once per chunk, see :func:`backend.models.scorer_for`).
- :class:`ImageModel` (Image; single- and multi-label): the image features lsal computes
  (backend.features.image.py), standardized, into a class-balanced logistic regression; multi-label
  one per label; a committee of bootstrap clones (backend/models/sklearn.py).

The registry's name ``builtin`` picks the one that fits the label config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from backend.labelconfig import TaskSpec
from backend.learner import TRUSTED_TYPES, Learner
from backend.models.base import Model
from backend.models.sklearn import SklearnModel

__all__ = ["ImageModel", "LearnerModel"]


class LearnerModel(Model):
    """backend/learner.py's Learner behind the model interface."""

    object_tags = frozenset({"Text", "HyperText", "Table"})
    multi_label = True
    trusted_types = TRUSTED_TYPES

    def __init__(self, spec: TaskSpec, *, seed: int = 0, **params: Any) -> None:
        super().__init__(spec, seed=seed)
        self.learner = Learner(spec, seed=seed, **params)

    def fit(self, inputs: Sequence[Any], y: Sequence[Any], embeddings: np.ndarray | None = None) -> LearnerModel:
        """Fit the Learner; ``embeddings``: the texts' embeddings from the pool cache (not recomputed)."""
        self.learner.fit(inputs, y, embeddings)
        self.classes_ = self.learner.classes_
        return self

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        return self.learner.predict_proba(self.learner.transform(inputs))

    def committee_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        return self.learner.committee_proba(self.learner.transform(inputs))

    def features(self, inputs: Sequence[Any]) -> Any:
        return self.learner.transform(inputs)

    def save(self, path: Path) -> None:
        self.learner.save(path)

    @classmethod
    def load(cls, path: Path, spec: TaskSpec) -> LearnerModel:
        learner = Learner.load(path)
        model = cls(learner.spec, seed=learner.seed)
        model.learner = learner
        model.classes_ = learner.classes_
        return model


class ImageModel(SklearnModel):
    """Standardized image features into a class-balanced logistic regression (C=1, sklearn's default)."""

    object_tags = frozenset({"Image"})
    multi_label = True
    committee_size = 3
    # OneVsRest keeps a constant predictor for a label that had no positive (or no negative) example.
    trusted_types = ("sklearn.multiclass._ConstantPredictor",)

    def make_estimator(self) -> Any:
        linear = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=self.seed)
        final: Any = OneVsRestClassifier(linear) if self.spec.multi_label else linear
        return Pipeline([("scale", StandardScaler()), ("linear", final)])
