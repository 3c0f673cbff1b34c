"""Pool clusters (backend.clusters): fitted once per pool, reused, extended to new tasks, refitted
when the pool changed a lot; kept as an npz without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from backend import clusters


def blobs(n_per: int, centres: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(c, 0.05, size=(n_per, 2)) for c in centres])


CENTRES = [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0)]


@pytest.fixture(autouse=True)
def three_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clusters, "POOL_CLUSTERS", 3)
    monkeypatch.setattr(clusters, "TASKS_PER_CLUSTER", 1)


def test_fit_reuse_extend_and_refit() -> None:
    X = blobs(20, CENTRES)
    ids = list(range(100, 160))
    calls: list[int] = []

    def features(x: np.ndarray) -> object:
        return lambda: calls.append(len(x)) or x

    labels, kept, status = clusters.assign(None, ids, features(X), "emb:a", seed=0)
    assert status == "fitted" and kept.k == 3 and calls == [60]
    # the three blobs are the three clusters
    assert [len(set(labels[i : i + 20])) for i in (0, 20, 40)] == [1, 1, 1]
    assert len(set(labels)) == 3

    # Same pool: every task keeps its id and no feature is computed.
    again, kept2, status = clusters.assign(kept, ids, features(X), "emb:a", seed=1)
    assert status == "reused" and calls == [60]
    assert again.tolist() == labels.tolist()

    # Labeled tasks leave (the first 10), two new tasks arrive near blob 2 and 3: the rest keep their
    # ids, the new ones join the clusters of their blobs (centres from today's members).
    new_X = np.array([[5.02, 0.01], [0.01, 4.97]])
    ids3 = ids[10:] + [500, 501]
    X3 = np.vstack([X[10:], new_X])
    labels3, kept3, status = clusters.assign(kept2, ids3, features(X3), "emb:a", seed=0)
    assert status == "extended" and kept3.k == 3
    assert labels3[:-2].tolist() == labels[10:].tolist()
    assert labels3[-2:].tolist() == [labels[20], labels[40]]
    assert kept3.ids.tolist() == sorted(ids3)

    # More than REFIT_SHARE of the pool new: fitted afresh (ids change meaning once).
    fresh = list(range(1000, 1000 + 30))
    ids4 = ids[:30] + fresh
    _, _, status = clusters.assign(kept3, ids4, features(blobs(20, CENTRES, seed=3)), "emb:a", seed=0)
    assert status == "fitted"
    # Other features (another embedding model, a new label config): fitted afresh too.
    _, _, status = clusters.assign(kept3, ids3, features(X3), "emb:b", seed=0)
    assert status == "fitted"


def test_sparse_features_and_a_pool_smaller_than_the_cluster_count() -> None:
    X = sp.csr_matrix(blobs(2, CENTRES))
    labels, kept, status = clusters.assign(None, [1, 2, 3, 4, 5, 6], lambda: X, "label_free", seed=0)
    assert status == "fitted" and kept.k == 3 and len(set(labels.tolist())) == 3
    empty, _, status = clusters.assign(kept, [], lambda: X, "label_free", seed=0)
    assert empty.tolist() == [] and status == "reused"


def test_saved_as_an_npz_without_pickle(tmp_path: Path) -> None:
    labels, kept, _ = clusters.assign(None, [7, 3, 5], lambda: blobs(1, CENTRES), "emb:a", seed=0)
    path = tmp_path / "pool" / "clusters.npz"
    clusters.save(path, kept)
    back = clusters.load(path)
    assert back is not None
    assert (back.ids.tolist(), back.labels.tolist(), back.features, back.k, back.fitted_on) == (
        [3, 5, 7],
        [int(labels[1]), int(labels[2]), int(labels[0])],
        "emb:a",
        3,
        3,
    )
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["ids", "labels", "meta"]
    path.write_bytes(b"not an npz")
    assert clusters.load(path) is None
    assert clusters.load(tmp_path / "missing.npz") is None


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_pools(n: int) -> None:
    labels, kept, status = clusters.assign(None, list(range(n)), lambda: np.eye(n), "x", seed=0)
    assert status == "fitted" and len(labels) == n and kept.k == n
