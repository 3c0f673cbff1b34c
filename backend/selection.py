"""Scoring and selection: from a fitted learner and model inputs to the predictions lsal writes.

One sequence, used by the cycle (:func:`select`), ``/predict`` and stream scoring (:func:`predict`),
the cold start (:func:`seed_order`) and ``lsal simulate`` (:func:`select`):

    inputs -> features (``learner.transform``) -> probabilities (once) -> committee, only if the
    strategy needs one -> informativeness (``strategies``) -> the slice to write (top-k, or a
    batch over clusters) -> :class:`Prediction` records.

Which inputs a strategy reads, whether it scores rows one at a time and which parameters the
caller fills in all come from the registry (``strategies.REGISTRY``); nothing here tests a
strategy's name.  A prediction's JSON is built in one place, :meth:`Prediction.to_json`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from backend import strategies
from backend.labelconfig import TaskSpec, choices_result
from backend.learner import Learner

log = logging.getLogger("lsal.selection")

Progress = Callable[[str, int, int], None]

# Pool rows transformed and scored at once: bounds the memory of a pass whatever the pool size.
SCORE_CHUNK = 20_000
# Clusters of a slice's candidates, one per pick up to this (k-means cost grows with it).
MAX_CLUSTERS = 50
# Pool-level strategies run on the CANDIDATES_PER_PICK x depth (at least MIN_CANDIDATES) rows
# ranked highest by the prefilter measure, which bounds their cost whatever the pool size.
CANDIDATES_PER_PICK = 5
MIN_CANDIDATES = 2000
# Cold start typicality (TypiClust): neighbours per row, and rows per cluster it is computed for.
TYPICAL_K = 20
TYPICAL_CANDIDATES = 500


def _no_progress(stage: str, done: int = 0, total: int = 0) -> None:
    pass


class Scorer(Protocol):
    """What selection scores with: the built-in :class:`~backend.learner.Learner`, or any model made
    Learner-shaped (``backend.models.scorer``). Features come from ``transform`` once per chunk;
    probabilities, the committee and labels are read from them."""

    @property
    def classes_(self) -> tuple[str, ...]:
        """Class labels in the column order of ``predict_proba``."""
        ...

    def transform(self, inputs: Sequence[Any], embeddings: np.ndarray | None = None) -> Any:
        """Features of ``inputs``, one row each (dense or CSR); ``embeddings``: the inputs' cached
        text embeddings, for a model whose features use them (others ignore it)."""
        ...

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, k)`` probabilities (multi-label: ``(n, L)`` per-label P(positive))."""
        ...

    def committee_proba(self, X: Any) -> np.ndarray:
        """``(m, n, k)`` committee member probabilities."""
        ...

    def predict_labels(self, proba: np.ndarray) -> list[list[str]]:
        """Predicted labels per row from its probabilities."""
        ...

    def make_estimator(self) -> Any:
        """An unfitted estimator on ``transform``'s features (expected_error, variance_reduction)."""
        ...


@dataclass(frozen=True)
class Prediction:
    """One prediction as lsal writes it to Label Studio (or answers it in ``/predict``).

    ``score`` is ``1 - informativeness`` (Label Studio's uncertainty sampling serves the lowest
    first); ``cluster`` is the task's cluster id (the cycle writes its pool cluster, kept across
    versions: backend/clusters.py; None: not written); ``task`` is None in a
    ``/predict`` answer, which is positional.
    """

    task: int | None
    result: list[dict[str, Any]]
    score: float
    model_version: str
    cluster: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object: Label Studio's prediction import format, or a ``/predict`` entry without
        ``task``. Fields that are None are left out."""
        out: dict[str, Any] = {}
        if self.task is not None:
            out["task"] = self.task
        out["result"] = self.result
        out["score"] = self.score
        if self.cluster is not None:
            out["cluster"] = self.cluster
        out["model_version"] = self.model_version
        return out


@dataclass(frozen=True)
class Selection:
    """The slice of a pool to write, in priority order.

    ``rows`` are pool positions; ``scores`` the values to write (``1 - informativeness``, or the
    rank for a seed order); ``labels`` the model's predicted labels per row (None in cold start: no
    model, empty results); ``mean_informativeness`` the pool's mean by the row measure.
    """

    rows: np.ndarray
    informativeness: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    labels: list[list[str]] | None
    mean_informativeness: float | None

    def predictions(self, spec: TaskSpec, task_ids: Sequence[int], version: str) -> list[Prediction]:
        """One :class:`Prediction` per selected row; ``task_ids[row]`` is the row's task id."""
        return [
            Prediction(
                task=int(task_ids[int(row)]),
                result=choices_result(spec, self.labels[j]) if self.labels is not None else [],
                score=float(self.scores[j]),
                model_version=version,
                cluster=int(self.clusters[j]),
            )
            for j, row in enumerate(self.rows)
        ]


def score_features(
    learner: Scorer,
    X: Any,
    name: str,
    *,
    multi_label: bool,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(proba, informativeness)`` of the rows of ``X`` by the pointwise measure ``name``.

    Probabilities are computed once; the committee only when the measure reads one.
    """
    entry = strategies.get(name)
    if not entry.pointwise:
        raise ValueError(f"strategy {entry.name!r} needs the whole pool; score rows with {entry.row_measure!r}")
    params = dict(params or {})
    proba = learner.predict_proba(X)
    inp = strategies.ScoringInput(
        proba=proba,
        committee=learner.committee_proba(X) if "committee" in entry.requires(params) else None,
        multi_label=multi_label,
        seed=seed,
    )
    return proba, strategies.informativeness(entry.name, inp, **params)


def predict(
    learner: Scorer,
    spec: TaskSpec,
    inputs: Sequence[Any],
    strategy: str,
    version: str,
    *,
    task_ids: Sequence[int] | None = None,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> list[Prediction]:
    """A prediction per input, in order, scored one row at a time (``/predict``, stream scoring).

    Pool-level strategies need the whole pool, so rows get their row measure
    (:attr:`strategies.Strategy.row_measure`, margin, without the strategy's ``params``).  No
    cluster is written: a new task gets its pool cluster at the next cycle (backend/clusters.py).
    """
    entry = strategies.get(strategy)
    X = learner.transform(inputs)
    proba, info = score_features(
        learner,
        X,
        entry.row_measure,
        multi_label=spec.multi_label,
        seed=seed,
        params=params if entry.pointwise else None,
    )
    labels = learner.predict_labels(proba)
    return [
        Prediction(
            task=None if task_ids is None else int(task_ids[i]),
            result=choices_result(spec, labels[i]),
            score=float(1.0 - info[i]),
            model_version=version,
        )
        for i in range(len(labels))
    ]


def _vstack(parts: list[Any]) -> Any:
    if any(sp.issparse(p) for p in parts):
        return sp.vstack(parts, format="csr")
    return np.vstack(parts)


def _labeled(
    learner: Scorer,
    labeled_inputs: Sequence[Any],
    labeled_y: Sequence[Any],
    embeddings: Any = None,
    *,
    in_embedding_space: bool = False,
) -> tuple[Any | None, np.ndarray | None]:
    """Features and class codes of the labeled rows whose label the model knows; with
    ``in_embedding_space``, their unit-norm ``embeddings`` instead of the model's features."""
    # Codes by position in classes_: sorted codes are then exactly proba's column order.
    index = {label: i for i, label in enumerate(learner.classes_)}
    known = [i for i, y in enumerate(labeled_y) if y in index]
    codes = np.array([index[labeled_y[i]] for i in known], dtype=np.int64)
    if in_embedding_space and embeddings is not None:
        return unit_rows(embeddings[np.asarray(known, dtype=np.int64)]), codes
    features = learner.transform([labeled_inputs[i] for i in known], None if embeddings is None else embeddings[known])
    return features, codes


def unit_rows(embeddings: Any) -> np.ndarray:
    """``embeddings`` as float32 rows of norm 1 (a zero row, the embedding of an empty text, stays 0)."""
    E = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1.0)


def select(
    learner: Scorer,
    inputs: Sequence[Any],
    strategy: str,
    depth: int,
    *,
    seed: int,
    multi_label: bool,
    labeled_inputs: Sequence[Any] | None = None,
    labeled_y: Sequence[Any] | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Progress = _no_progress,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
) -> Selection:
    """Score the pool chunk by chunk and pick the ``depth`` rows to put in front of the queue.

    Pointwise strategies keep a running top-``depth``, so memory does not grow with the pool.
    Pool-level strategies run on the top ``max(CANDIDATES_PER_PICK x depth, MIN_CANDIDATES)``
    candidates by the prefilter measure (margin); they get the labeled rows (``labeled_inputs``,
    ``labeled_y``) when their registry entry reads them.  Every candidate is clustered (one
    cluster per pick, at most :data:`MAX_CLUSTERS`) and batch strategies spread their picks over
    those clusters; the cycle then writes each pick's pool cluster (backend/clusters.py), whose ids
    keep their meaning across versions.  ``params``
    are the strategy's own (a project's ``strategy_params``); the prefilter runs without them.
    ``embeddings`` / ``labeled_embeddings``: the rows' text embeddings from the pool cache (aligned
    with ``inputs`` / ``labeled_inputs``), so no text is embedded again.
    """
    entry = strategies.get(strategy)
    params = dict(params or {})
    if multi_label and not entry.multi_label:
        log.info("%s is single-label only; using %s for this multi-label project", entry.name, entry.row_measure)
        entry, params = strategies.get(strategies.PREFILTER_MEASURE), {}
    row_params = params if entry.pointwise else {}
    n = len(inputs)
    keep = depth if entry.pointwise else min(n, max(CANDIDATES_PER_PICK * depth, MIN_CANDIDATES))
    # Candidates so far, in pool order: positions, informativeness, features, probabilities.
    cand_rows = np.zeros(0, dtype=np.int64)
    cand_info = np.zeros(0)
    cand_X: Any = None
    cand_proba: np.ndarray | None = None
    total_info = 0.0
    for start in range(0, n, SCORE_CHUNK):
        X = learner.transform(
            inputs[start : start + SCORE_CHUNK],
            None if embeddings is None else embeddings[start : start + SCORE_CHUNK],
        )
        proba, info = score_features(
            learner, X, entry.row_measure, multi_label=multi_label, seed=seed + start, params=row_params
        )
        total_info += float(info.sum())
        top = np.sort(strategies.priority_order(info, keep))
        rows = np.r_[cand_rows, start + top]
        infos = np.r_[cand_info, info[top]]
        X_all = X[top] if cand_X is None else _vstack([cand_X, X[top]])
        proba_all = proba[top] if cand_proba is None else np.vstack([cand_proba, proba[top]])
        # Rows are in pool order, so priority_order's ties go to the lower pool position.
        best = np.sort(strategies.priority_order(infos, keep))
        cand_rows, cand_info, cand_X, cand_proba = rows[best], infos[best], X_all[best], proba_all[best]
        progress("score", min(start + SCORE_CHUNK, n), n)
    if cand_X is None or cand_proba is None:  # empty pool
        empty = np.zeros(0, dtype=np.int64)
        return Selection(empty, np.zeros(0), np.zeros(0), empty, [], 0.0)
    ranked = strategies.priority_order(cand_info, None)
    chosen, X, proba = cand_rows[ranked], cand_X[ranked], cand_proba[ranked]
    # Distances (clusters, density, core-set) are measured between the texts' sentence embeddings
    # when the pool has them, not in [TF-IDF | embedding]: in the TF-IDF block two texts that share
    # no word are all equally far apart, so k-means and k-center there split on noise (measured in
    # docs/benchmarks.md, "What was tried"). Strategies that refit the model keep its features.
    space = X if embeddings is None else unit_rows(embeddings[cand_rows[ranked]])
    # One cluster per pick (cluster-margin, Citovsky et al. 2021), at most MAX_CLUSTERS: a batch then
    # takes the most uncertain task of each region. Measured against sqrt(depth) + 1 clusters in
    # docs/benchmarks.md.
    n_clusters = max(1, min(len(chosen), depth, MAX_CLUSTERS))
    clusters = strategies.cluster_ids(space, n_clusters, seed=seed)
    if entry.pointwise:
        info = cand_info[ranked]
    else:
        labeled_X = labeled_codes = None
        has_labeled = labeled_inputs is not None and labeled_y is not None and len(labeled_inputs) > 0
        # A strategy that refits the model (an estimator) needs the model's features; the others
        # only measure distances, in `space`.
        reads_labeled = "labeled" in entry.requires(params)
        in_space = (
            space is not X
            and "estimator" not in entry.requires(params)
            and (labeled_embeddings is not None or not reads_labeled)
        )
        if reads_labeled and has_labeled and not multi_label:
            assert labeled_inputs is not None and labeled_y is not None
            labeled_X, labeled_codes = _labeled(
                learner, labeled_inputs, labeled_y, labeled_embeddings, in_embedding_space=in_space
            )
        inp = strategies.ScoringInput(
            proba=proba,
            committee=learner.committee_proba(X) if "committee" in entry.requires(params) else None,
            features=space if in_space else X,
            labeled_features=labeled_X,
            labeled_y=labeled_codes,
            multi_label=multi_label,
            seed=seed,
            make_estimator=learner.make_estimator,
        )
        derived: dict[str, Any] = {}
        if entry.param("batch_size") is not None:
            derived["batch_size"] = min(depth, len(chosen))
        if entry.param("clusters") is not None:
            derived["clusters"] = clusters  # the batch's own groups (the cycle writes the pool's)
        if entry.param("typical") is not None and "typical" not in params and space is X:
            # Typicality weighting is measured in the text embedding space only (docs/benchmarks.md);
            # tabular, image and TF-IDF-only pools keep the measured plain cluster-margin.
            derived["typical"] = 0.0
        info = strategies.informativeness(entry.name, inp, **params, **derived)
    local = strategies.priority_order(info, depth)
    return Selection(
        rows=chosen[local],
        informativeness=info[local],
        scores=1.0 - info[local],
        clusters=clusters[local],
        labels=learner.predict_labels(proba[local]),
        mean_informativeness=total_info / n if n else 0.0,
    )


def seed_order(
    spec: TaskSpec,
    inputs: Sequence[Any],
    depth: int,
    seed: int,
    *,
    learner_params: Mapping[str, Any] | None = None,
    embeddings: np.ndarray | None = None,
) -> Selection:
    """Cold start (no model yet): ``depth`` rows round-robin over k-means clusters, the most typical
    row of each cluster first, so the first labels are typical tasks from distinct regions
    (TypiClust, Hacohen et al., ICML 2022: as many clusters as picks, at most :data:`MAX_CLUSTERS`;
    typicality = 1 / mean distance to the :data:`TYPICAL_K` nearest neighbours in the cluster).

    Clustered on the texts' ``embeddings`` when given (the pool cache's), else on the learner's
    label-free features. The written score is the rank over ``depth`` (the queue serves the lowest
    first); there are no labels to suggest.
    """
    n = len(inputs)
    depth = min(depth, n)
    if n == 0 or depth <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return Selection(empty, np.zeros(0), np.zeros(0), empty, None, None)
    X: Any
    if embeddings is not None:
        X = np.asarray(embeddings, dtype=np.float32)
    else:
        X = label_free_features(spec, inputs, seed, learner_params)
    n_clusters = max(1, min(n, depth, MAX_CLUSTERS))
    clusters = strategies.cluster_ids(X, n_clusters, seed=seed)
    typical = typicality(X, clusters, seed=seed)
    order = strategies.round_robin(typical, clusters, depth)
    return Selection(
        rows=order,
        informativeness=typical[order],
        scores=np.array([round(rank / depth, 6) for rank in range(len(order))], dtype=np.float64),
        clusters=clusters[order],
        labels=None,
        mean_informativeness=None,
    )


def typicality(
    X: Any, clusters: np.ndarray, *, k: int = TYPICAL_K, cap: int = TYPICAL_CANDIDATES, seed: int = 0
) -> np.ndarray:
    """TypiClust's typicality of each row within its cluster: 1 / mean distance to its ``k`` nearest
    neighbours there (Hacohen, Dekel, Weinshall, *Active Learning on a Budget*, ICML 2022).

    A cluster larger than ``cap`` is scored on a seeded sample of ``cap`` rows (density estimated
    among them; the rest get 0 and come after them): ``cap``^2 distances per cluster bound the cost
    whatever the pool size. A single-row cluster gets 0 (an outlier: served last in its round).
    """
    from sklearn.metrics import pairwise_distances

    out = np.zeros(len(clusters))
    rng = np.random.default_rng(seed)
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        if len(rows) < 2:
            continue
        dist = pairwise_distances(X[rows])
        np.fill_diagonal(dist, np.inf)
        kk = min(k, len(rows) - 1)
        nearest = np.partition(dist, kk - 1, axis=1)[:, :kk]
        out[rows] = 1.0 / (1e-9 + nearest.mean(axis=1))
    return out


def _centrality(X: Any, clusters: np.ndarray) -> np.ndarray:
    """1 / (1 + distance to the row's cluster mean): typical rows of a cluster come first.

    Sparse input stays sparse: ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, one dense centre at a time
    (densifying a 100k-task TF-IDF pool would need ~37 GB).
    """
    out = np.zeros(len(clusters))
    sparse = hasattr(X, "toarray")
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        part: Any = X[rows] if sparse else np.asarray(X)[rows]
        centre = np.asarray(part.mean(axis=0), dtype=np.float64).ravel()
        if sparse:
            sq = np.asarray(part.multiply(part).sum(axis=1), dtype=np.float64).ravel()
            d2 = sq - 2.0 * np.asarray(part @ centre, dtype=np.float64).ravel() + float(centre @ centre)
            dist = np.sqrt(np.maximum(d2, 0.0))
        else:
            dist = np.linalg.norm(part - centre, axis=1)
        out[rows] = 1.0 / (1.0 + dist)
    return out


def label_free_features(
    spec: TaskSpec,
    inputs: Sequence[Any],
    seed: int,
    learner_params: Mapping[str, Any] | None = None,
    embeddings: np.ndarray | None = None,
) -> Any:
    """Features that need no labels, for cold-start clustering: the learner's own featurizer
    (TF-IDF and/or embeddings for text; median-imputed, standardized numbers for tables), fitted on the
    pool; for images, the image feature vectors, standardized."""
    if spec.kind == "image":
        X = np.asarray(np.stack([np.asarray(x, dtype=np.float64) for x in inputs]))
        scale = X.std(axis=0)
        return (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return Learner(spec, seed=seed, **(learner_params or {})).fit_features(inputs, embeddings)
