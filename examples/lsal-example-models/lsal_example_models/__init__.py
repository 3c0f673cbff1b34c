"""Two lsal model plugins (docs/plugins.md walks through both).

- ``SgdText``: any scikit-learn pipeline, wrapped in a few lines with ``sklearn_model``. lsal adds
  the label mapping, a bootstrap committee, features (what the pipeline's last step receives) and
  safe save/load.
- ``NearestCentroid``: a model written against the interface directly, for when your model is not
  a scikit-learn estimator: fit, predict_proba, features, and save/load as npz + JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline

from backend.labelconfig import TaskSpec
from backend.models import Model, ModelError, sklearn_model

__all__ = ["NearestCentroid", "SgdText"]

#: A linear model trained by SGD on TF-IDF of words and word pairs.
SgdText = sklearn_model(
    lambda: make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        SGDClassifier(loss="log_loss", alpha=1e-4, class_weight="balanced", max_iter=50, tol=None),
    ),
    object_tags={"Text", "HyperText"},
    name="SgdText",
)


class NearestCentroid(Model):
    """Texts as hashed character 3-5-grams; P(class) = softmax(-distance to the class centroid / T).

    Stateless featurizer (hashing), so the saved state is the centroids alone: an npz of one array
    and a JSON of the classes, which cannot execute code when read.
    """

    object_tags = frozenset({"Text", "HyperText"})
    multi_label = False
    temperature = 0.1

    def __init__(self, spec: TaskSpec, *, seed: int = 0) -> None:
        super().__init__(spec, seed=seed)
        self.centroids_: np.ndarray | None = None
        self._hasher = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**14, norm="l2")

    def features(self, inputs: Sequence[Any]) -> Any:
        return self._hasher.transform([str(x) for x in inputs])

    def fit(self, inputs: Sequence[Any], y: Sequence[Any]) -> NearestCentroid:
        if len(inputs) != len(y) or not len(y):
            raise ValueError(f"need as many labels as inputs (> 0), got {len(inputs)} inputs and {len(y)} labels")
        labels = np.asarray([str(v) for v in y])
        self.classes_ = tuple(c for c in self.spec.labels if c in set(labels))
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 known classes, got {sorted(set(labels))}")
        X = self.features(inputs)
        self.centroids_ = np.vstack([np.asarray(X[labels == c].mean(axis=0)).ravel() for c in self.classes_])
        return self

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        if self.centroids_ is None:
            raise ModelError("NearestCentroid is not fitted")
        X = self.features(inputs)
        sq = np.asarray(X.multiply(X).sum(axis=1)).ravel()[:, None]
        d2 = sq - 2 * np.asarray(X @ self.centroids_.T) + (self.centroids_**2).sum(axis=1)[None, :]
        logits = -np.sqrt(np.maximum(d2, 0.0)) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        if self.centroids_ is None:
            raise ModelError("NearestCentroid is not fitted")
        np.savez(Path(path) / "centroids.npz", centroids=self.centroids_)
        (Path(path) / "classes.json").write_text(json.dumps(list(self.classes_)))

    @classmethod
    def load(cls, path: Path, spec: TaskSpec) -> NearestCentroid:
        model = cls(spec)
        with np.load(Path(path) / "centroids.npz", allow_pickle=False) as npz:
            model.centroids_ = np.asarray(npz["centroids"], dtype=np.float64)
        classes = json.loads((Path(path) / "classes.json").read_text())
        if not isinstance(classes, list) or len(classes) != len(model.centroids_):
            raise ModelError(f"{path}: classes.json does not match centroids.npz")
        model.classes_ = tuple(str(c) for c in classes)
        return model
