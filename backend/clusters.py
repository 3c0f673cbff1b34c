"""Pool clusters: the `cluster` id lsal writes with each prediction, stable across model versions.

Label Studio serves an annotator first the cluster in which *they* have solved the fewest tasks,
counted over all their annotations, i.e. across versions (docs/admin.md). That rule only keeps
its meaning if cluster 3 of version 8 is the region of the data that cluster 3 of version 7 was.
So the clusters are fitted once per pool, not per slice: k-means (at most ``POOL_CLUSTERS``, and one
per ``TASKS_PER_CLUSTER`` tasks) on label-free features (the texts' cached embeddings where the
project has them, else ``selection.label_free_features``), and each task keeps its id in
``MODEL_DIR/<project>/pool/clusters.npz`` (npz without pickle: task ids, cluster ids, a JSON meta).

Each cycle (:func:`assign`):

- tasks that have an id keep it (``reused``);
- tasks added since get the cluster whose members, in today's features, they are nearest to
  (``extended``): the centres are recomputed from the members, so this works whatever the
  features, TF-IDF refitted on today's pool included;
- when more than ``REFIT_SHARE`` of the pool is new since the fit, or the features changed (another
  embedding model), the clusters are fitted afresh (``fitted``): ids then change meaning once.

Labeled tasks leave the pool and drop out of the file; that alone never refits. The batch selection
still spreads a slice over its own per-batch groups (``selection.select``); only the written id is
the pool's.

What the rule can see: Label Studio counts an annotator's solved clusters from the predictions their
labeled tasks still have (``Max('predictions__cluster')``), and lsal's cleanup deletes the replaced
versions (when no cycle waits), so it sees the tasks labeled since then, carrying the ids of several
versions. Stable ids make those, and the step from the cold-start order to the first model, mean
one thing; a longer memory would need lsal to keep a prediction on every labeled task, which
would change the order Label Studio serves (least-solved cluster before lowest score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from backend import strategies
from backend.projectdir import atomic_file, read_npz, write_npz

#: clusters fitted per pool (Label Studio's cluster field) ...
POOL_CLUSTERS = 50
#: ... but no more than one per this many tasks: a region, not a handful of tasks
TASKS_PER_CLUSTER = 10
#: share of the pool's tasks that may be new since the fit before the clusters are fitted afresh
REFIT_SHARE = 0.25
#: rows the k-means is fitted on (a seeded sample); every task is then assigned to its nearest centre
FIT_SAMPLE = 10_000
#: rows assigned at once: bounds the memory of a pass whatever the pool size
CHUNK = 50_000
FORMAT = 1


@dataclass(frozen=True)
class PoolClusters:
    """Cluster id per task id (``ids`` sorted), and what they were fitted on."""

    ids: np.ndarray  # int64, sorted
    labels: np.ndarray  # int64, one per id
    features: str  # which label-free features: e.g. "embeddings:<model>" or "label_free"
    k: int  # clusters fitted
    fitted_on: int  # tasks in the pool at the fit

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, labels) for ``ids``: whether each has a cluster, and its id (-1 where not)."""
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        found = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), dtype=bool)
        return found, np.where(found, self.labels[pos] if len(self.ids) else -1, -1)


def load(path: Path) -> PoolClusters | None:
    """The saved clusters, or None when there are none (or the file is not one of ours)."""

    def read(npz: Any, meta: dict[str, Any]) -> PoolClusters | None:
        ids, labels = npz["ids"].astype(np.int64), npz["labels"].astype(np.int64)
        if len(ids) != len(labels):
            return None
        return PoolClusters(ids, labels, str(meta["features"]), int(meta["k"]), int(meta["fitted_on"]))

    return read_npz(path, FORMAT, read)


def save(path: Path, clusters: PoolClusters) -> None:
    """Write ``clusters`` atomically and durably as an npz (no pickled member)."""
    meta = {"format": FORMAT, "features": clusters.features, "k": clusters.k, "fitted_on": clusters.fitted_on}
    with atomic_file(path) as f:
        write_npz(f, meta, {"ids": clusters.ids, "labels": clusters.labels})


def _centres(X: Any, rows: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, present): the mean of each cluster's rows (rows of ``X`` at ``rows``), chunk by chunk;
    ``present[c]`` says whether cluster c has any row."""
    sums: np.ndarray | None = None
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    for start in range(0, len(rows), CHUNK):
        part = X[rows[start : start + CHUNK]]
        part = part if sp.issparse(part) else np.asarray(part, dtype=np.float64)
        m = part.shape[0]
        onehot = sp.csr_matrix((np.ones(m), (labels[start : start + CHUNK], np.arange(m))), shape=(k, m))
        add = onehot @ part
        add = np.asarray(add.toarray() if sp.issparse(add) else add, dtype=np.float64)
        sums = add if sums is None else sums + add
    assert sums is not None
    present = counts > 0
    return sums / np.maximum(counts, 1.0)[:, None], present


def _nearest(X: Any, rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances_argmin

    out = np.zeros(len(rows), dtype=np.int64)
    for start in range(0, len(rows), CHUNK):
        part = X[rows[start : start + CHUNK]]
        part = part if sp.issparse(part) else np.asarray(part, dtype=np.float64)
        out[start : start + CHUNK] = pairwise_distances_argmin(part, centres)
    return out


def fit(X: Any, n: int, seed: int, k: int | None = None) -> tuple[np.ndarray, int]:
    """(cluster id per row, clusters fitted): k-means on a seeded sample of at most FIT_SAMPLE rows
    of ``X`` (dense, CSR, or a row view such as features.cache.TaskRows), then every row is given its
    nearest centre, chunk by chunk. ``k``: at most this many clusters (default: POOL_CLUSTERS, and
    one per TASKS_PER_CLUSTER rows)."""
    k = max(1, min(min(POOL_CLUSTERS, n // TASKS_PER_CLUSTER) if k is None else k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), 1
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max(FIT_SAMPLE, 3 * k)), replace=False))
    part = X[sample]
    part = sp.csr_matrix(part) if sp.issparse(part) else np.asarray(part, dtype=np.float64)
    sample_labels = strategies.cluster_ids(part, k, seed=seed)
    k = int(sample_labels.max()) + 1
    centres, present = _centres(X, sample, sample_labels, k)
    labels = _nearest(X, np.arange(n), centres[present])
    return np.flatnonzero(present)[labels], k


def assign(
    previous: PoolClusters | None,
    ids: Sequence[int],
    features: Callable[[], Any],
    feature_key: str,
    *,
    seed: int,
) -> tuple[np.ndarray, PoolClusters, str]:
    """Cluster id per task of ``ids`` (the cycle's pool), the clusters to keep, and what was done:
    ``reused`` (nothing to save), ``extended`` or ``fitted`` (see the module docstring).

    ``features()`` gives the label-free features of ``ids``' tasks, one row each; it is called only
    when some task has no cluster yet (new tasks, or a fit).
    """
    wanted = np.asarray(ids, dtype=np.int64)
    n = len(wanted)
    order = np.argsort(wanted, kind="stable")
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, PoolClusters(empty, empty, feature_key, 0, 0), "reused"
    found = np.zeros(n, dtype=bool)
    labels = np.full(n, -1, dtype=np.int64)
    if previous is not None and previous.features == feature_key and previous.k > 0:
        found, labels = previous.lookup(wanted)
    new = np.flatnonzero(~found)
    if previous is not None and len(new) == 0:
        status = "reused"
        k, fitted_on = previous.k, previous.fitted_on
    elif previous is None or not found.any() or len(new) > REFIT_SHARE * n:
        labels, k = fit(features(), n, seed)
        status, fitted_on = "fitted", n
    else:
        X = features()
        known = np.flatnonzero(found)
        centres, present = _centres(X, known, labels[known], previous.k)
        labels[new] = np.flatnonzero(present)[_nearest(X, new, centres[present])]
        status, k, fitted_on = "extended", previous.k, previous.fitted_on
    kept = PoolClusters(wanted[order], labels[order], feature_key, k, fitted_on)
    return labels, kept, status
