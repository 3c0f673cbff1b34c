"""Active-learning query strategies: pure, vectorized functions over probability arrays.

Every measure takes probabilities that the caller computed once (``ScoringInput``) and returns an
*informativeness* per pool row in ``[0, 1]`` (higher = label this first).  The cycle writes
``score = 1 - informativeness`` to Label Studio, which serves the lowest score first.

Normalizations are fixed functions of ``k`` (classes) and ``m`` (committee size), never of the pool,
so values from different model versions are comparable.  The exceptions are the batch and
bounded-search strategies (diversity, coreset, expected_error, variance_reduction), which rank a
selected set above the rest; see :func:`informativeness` and ``docs/strategies.md``.

References
----------
Settles, B. *Active Learning Literature Survey*, Computer Sciences Technical Report 1648,
University of Wisconsin-Madison, 2009 (revised 2010).  Section and equation numbers below refer to it.
McCallum, A. & Nigam, K. Employing EM and pool-based active learning for text classification, ICML 1998.
Zhdanov, F. Diverse mini-batch active learning, arXiv:1901.05954, 2019.
Sener, O. & Savarese, S. Active learning for convolutional neural networks: a core-set approach, ICLR 2018.
Roy, N. & McCallum, A. Toward optimal active learning through sampling estimation of error reduction,
ICML 2001.
Schein, A. & Ungar, L. Active learning for logistic regression: an evaluation, Machine Learning 68, 2007.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp

Features: TypeAlias = np.ndarray | sp.csr_matrix | sp.csr_array

# Rows whose probabilities sum to 1 within this tolerance are accepted; float32 models drift ~1e-6.
SUM_TOL = 1e-4
# Rows per block: keeps (block, k) temporaries in L2 cache (512 KB for k=4 float64) instead of
# streaming n x k arrays through memory once per class column.
_BLOCK = 16384


@dataclass
class ScoringInput:
    """Everything a strategy may need, computed once by the caller.

    ``proba`` is ``(n, k)`` class probabilities (multi-label: ``(n, L)`` per-label P(positive)).
    ``committee`` is ``(m, n, k)`` member probabilities.  ``features`` ``(n, d)`` dense or CSR.
    """

    proba: np.ndarray
    committee: np.ndarray | None = None
    features: Features | None = None
    labeled_features: Features | None = None
    labeled_y: np.ndarray | None = None
    make_estimator: Callable[[], Any] | None = None
    multi_label: bool = False
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# validation


def _as_float(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _first_bad_row(bad: Any) -> int:
    """Index of the first True in a boolean row mask."""
    return int(np.flatnonzero(bad)[0])


def _bad_values(p: np.ndarray, multi_label: bool, what: str, offset: int = 0) -> None:
    """Raise the ValueError describing the first invalid row of ``p`` (called only on failure)."""
    finite = np.isfinite(p).all(axis=1)
    if not finite.all():
        row = _first_bad_row(~finite)
        raise ValueError(f"{what} row {row + offset} is not finite: {p[row].tolist()}")
    out_of_range = ((p < -SUM_TOL) | (p > 1 + SUM_TOL)).any(axis=1)
    if out_of_range.any():
        row = _first_bad_row(out_of_range)
        raise ValueError(f"{what} row {row + offset} has values outside [0, 1]: {p[row].tolist()}")
    if not multi_label:
        s = p.sum(axis=1)
        bad = np.abs(s - 1) > SUM_TOL
        if bad.any():
            row = _first_bad_row(bad)
            raise ValueError(
                f"{what} row {row + offset} sums to {float(s[row])!r}, not 1 (tolerance {SUM_TOL}): {p[row].tolist()}"
            )


def _values_ok(p: np.ndarray, multi_label: bool) -> bool:
    # Four reductions and one mat-vec; NaN/inf propagate into min/max and fail the comparisons, so
    # the common (valid) case never allocates an n x k mask.
    lo, hi = float(np.min(p)), float(np.max(p))
    if not (lo >= -SUM_TOL and hi <= 1 + SUM_TOL):
        return False
    if multi_label:
        return True
    k = p.shape[-1]
    if k > 32:
        s = p @ np.ones(k, dtype=p.dtype)
    else:
        s = p[..., 0] + p[..., 1]
        for j in range(2, k):
            s += p[..., j]
    return bool(float(np.min(s)) >= 1 - SUM_TOL and float(np.max(s)) <= 1 + SUM_TOL)


def check_proba(proba: Any, multi_label: bool = False, what: str = "proba", values: bool = True) -> np.ndarray:
    """Validate a ``(n, k)`` probability array and return it as float32/float64.

    Raises ``ValueError`` naming the first offending row for: wrong rank, fewer than 2 classes
    (single-label), NaN/inf, values outside [0, 1], or (single-label) rows not summing to 1 within
    :data:`SUM_TOL`.  An empty pool (n = 0) is valid.  ``values=False`` checks only the shape
    (the measures check values block by block, see :func:`_scan`).
    """
    p = _as_float(proba, what)
    if p.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, k), got shape {p.shape}")
    n, k = p.shape
    if n == 0:
        return p
    if k == 0:
        raise ValueError(f"{what} has no class columns (shape {p.shape})")
    if not multi_label and k < 2:
        raise ValueError(
            f"{what} has a single class column (shape {p.shape}); uncertainty needs >= 2 classes "
            "(train on at least two labels, or use the 'random' strategy)"
        )
    if values and not _values_ok(p, multi_label):
        _bad_values(p, multi_label, what)
    return p


def check_committee(committee: Any, multi_label: bool = False, n: int | None = None, values: bool = True) -> np.ndarray:
    """Validate ``(m, n, k)`` committee probabilities (m >= 2; each member as in :func:`check_proba`).

    ``values=False`` checks only shapes; the committee measures then validate values block by
    block while the block is in cache (:func:`_check_block`).
    """
    if committee is None:
        raise ValueError("this strategy needs committee probabilities (ScoringInput.committee), got None")
    c = _as_float(committee, "committee")
    if c.ndim != 3:
        raise ValueError(f"committee must be 3-D (m, n, k), got shape {c.shape}")
    m = c.shape[0]
    if m < 2:
        raise ValueError(
            f"committee has {m} member(s); disagreement needs at least 2 (a committee of one always agrees)"
        )
    if n is not None and c.shape[1] != n:
        raise ValueError(f"committee covers {c.shape[1]} rows but proba has {n}")
    if c.shape[1] and not multi_label and c.shape[2] < 2:
        raise ValueError(f"committee has a single class column (shape {c.shape}); needs >= 2 classes")
    if values:
        for start in range(0, c.shape[1], _CBLOCK):
            _check_block(c[:, start : start + _CBLOCK], start, multi_label)
    return c


def _check_block(blk: np.ndarray, offset: int, multi_label: bool = False) -> None:
    if not _values_ok(blk, multi_label):
        for j in range(blk.shape[0]):
            _bad_values(blk[j], multi_label, f"committee member {j}", offset)


# Committee blocks: (m, 8192, k) float64 is ~1.3 MB for m=5, k=4 -- it stays in L2 between passes.
_CBLOCK = 8192


# --------------------------------------------------------------------------------------------------
# uncertainty (single model)


def _block_rows(k: int) -> int:
    return max(256, (1 << 16) // max(k, 1))


def _row_max(p: np.ndarray) -> np.ndarray:
    # For the small k of annotation projects a column loop over cache-sized row blocks is ~8x
    # faster than ndarray.max(axis=1), whose inner reduction over k elements does not vectorize.
    n, k = p.shape
    if k > 32:
        return p.max(axis=1)
    out = np.empty(n, dtype=p.dtype)
    for start in range(0, n, _BLOCK):
        b = p[start : start + _BLOCK]
        o = out[start : start + _BLOCK]
        np.maximum(b[:, 0], b[:, 1], out=o)
        for j in range(2, k):
            np.maximum(o, b[:, j], out=o)
    return out


def _max_kernel(b: np.ndarray, o: np.ndarray) -> None:
    o[:] = _row_max(b)


def _margin_kernel(b: np.ndarray, o: np.ndarray) -> None:
    k = b.shape[1]
    if k > 32:
        part = np.partition(b, k - 2, axis=1)
        np.subtract(part[:, -1], part[:, -2], out=o)
        return
    first = np.maximum(b[:, 0], b[:, 1])
    second = np.minimum(b[:, 0], b[:, 1])
    tmp = np.empty_like(first)
    for j in range(2, k):
        col = b[:, j]
        np.minimum(first, col, out=tmp)
        np.maximum(second, tmp, out=second)
        np.maximum(first, col, out=first)
    np.subtract(first, second, out=o)


def _entropy_kernel(b: np.ndarray, o: np.ndarray) -> None:
    logb = np.log(b, out=np.zeros_like(b), where=b > 0)
    logb *= b
    o[:] = logb @ np.ones(b.shape[1], dtype=b.dtype)
    np.negative(o, out=o)


def _entropy_nats(p: np.ndarray) -> np.ndarray:
    """Row entropies ``-sum_i p_i log p_i`` in nats, with ``0 log 0 = 0``."""
    out = np.empty(p.shape[0])
    _entropy_kernel(p, out)
    return np.maximum(out, 0.0, out=out)  # tolerated tiny negatives in p can give -1e-12


def _scan(proba: Any, kernel: Callable[[np.ndarray, np.ndarray], None]) -> np.ndarray:
    """Validate ``proba`` and apply ``kernel`` block by block, while each block is in cache.

    Validation and measure read the same cache-sized block, so the (n, k) array streams through
    memory once instead of once for the checks and once per class column for the measure.
    """
    p = check_proba(proba, values=False)
    n, k = p.shape
    out = np.empty(n)
    step = _block_rows(k)
    for start in range(0, n, step):
        b = p[start : start + step]
        if not _values_ok(b, False):
            _bad_values(b, False, "proba", start)
        kernel(b, out[start : start + step])
    return out


def least_confidence(proba: np.ndarray) -> np.ndarray:
    """Least confidence, normalized: ``(1 - max_y P(y|x)) * k / (k - 1)``.

    Settles 2009, section 3.1, Eq. (1): ``x* = argmax_x 1 - P(y_hat|x)``.  The raw value is at
    most ``1 - 1/k`` (uniform distribution); multiplying by ``k/(k-1)`` maps it onto [0, 1] so
    projects with different numbers of classes, and model versions, are comparable.
    """
    out = _scan(proba, _max_kernel)
    k = np.shape(proba)[1]
    np.subtract(1.0, out, out=out)
    out *= k / (k - 1)
    return np.clip(out, 0.0, 1.0, out=out)


def margin(proba: np.ndarray) -> np.ndarray:
    """Margin, as informativeness: ``1 - (P(y1|x) - P(y2|x))`` for the two most probable classes.

    Settles 2009, section 3.1, Eq. (2): ``x* = argmin_x P(y1|x) - P(y2|x)``.  Already in [0, 1]:
    1 when the top two tie, 0 for a one-hot row.
    """
    out = _scan(proba, _margin_kernel)
    np.subtract(1.0, out, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def entropy(proba: np.ndarray) -> np.ndarray:
    """Normalized Shannon entropy: ``-sum_i P(y_i|x) log P(y_i|x) / log k``.

    Settles 2009, section 3.1, Eq. (3).  Dividing by ``log k`` (the entropy of the uniform
    distribution) maps it onto [0, 1].
    """
    out = _scan(proba, _entropy_kernel)
    out /= math.log(np.shape(proba)[1])
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------------------------------
# query by committee


def _votes_one_hot_counts(blk: np.ndarray) -> np.ndarray:
    """(m, b, k) -> (b, k) number of members whose most probable class is each class (ties: lowest)."""
    m, b, k = blk.shape
    counts = np.zeros((b, k), dtype=np.uint8 if m < 256 else np.int64)
    mx = np.empty(b, dtype=blk.dtype)
    for r in range(m):
        pr = blk[r]
        mx[:] = _row_max(pr)
        counts += pr == mx[:, None]
    # A row where a member's top probability is tied counts that member twice; recount those rows
    # with argmax (lowest index wins), which is rare enough that the slow path does not matter.
    ties = np.flatnonzero(counts.sum(axis=1, dtype=np.int64) != m)
    if len(ties):
        votes = np.argmax(blk[:, ties], axis=2)
        fix = np.zeros((len(ties), k), dtype=counts.dtype)
        rows = np.arange(len(ties))
        for r in range(m):
            fix[rows, votes[r]] += 1
        counts[ties] = fix
    return counts


def vote_entropy(committee: np.ndarray) -> np.ndarray:
    """Vote entropy of a committee of ``m`` members: ``-sum_i V(y_i)/m log(V(y_i)/m) / log(min(k, m))``.

    Settles 2009, section 3.2, Eq. (4) (Dagan & Engelson 1995).  ``V(y_i)`` counts the members
    whose most probable class is ``y_i`` (ties go to the lowest class index).  ``log(min(k, m))``
    bounds the entropy of ``m`` votes over ``k`` classes, so the result is in [0, 1]; it reaches 1
    when the votes can be and are spread evenly (e.g. ``m`` divisible by ``k``).
    """
    c = check_committee(committee, values=False)
    m, n, k = c.shape
    out = np.empty(n)
    # Counts are integers 0..m, so every -(c/m) log(c/m) term comes from a table of m + 1 values.
    frac = np.arange(m + 1) / m
    table = np.zeros(m + 1)
    table[1:] = -frac[1:] * np.log(frac[1:])
    for start in range(0, n, _CBLOCK):
        blk = c[:, start : start + _CBLOCK]
        _check_block(blk, start)
        out[start : start + _CBLOCK] = np.take(table, _votes_one_hot_counts(blk)) @ np.ones(k)
    out /= math.log(min(k, m))
    return np.clip(out, 0.0, 1.0, out=out)


def consensus_entropy(committee: np.ndarray) -> np.ndarray:
    """Consensus (soft vote) entropy: normalized entropy of the members' mean distribution.

    Settles 2009, section 3.2, the "soft" variant of Eq. (4): ``H(P_C(y|x)) / log k`` with
    ``P_C(y|x) = 1/m sum_c P_c(y|x)``.  In [0, 1].
    """
    c = check_committee(committee, values=False)
    m, n, k = c.shape
    out = np.empty(n)
    for start in range(0, n, _CBLOCK):
        blk = c[:, start : start + _CBLOCK]
        _check_block(blk, start)
        out[start : start + _CBLOCK] = _entropy_nats(blk.mean(axis=0))
    out /= math.log(k)
    return np.clip(out, 0.0, 1.0, out=out)


def kl_divergence(committee: np.ndarray, reduce: str = "max") -> np.ndarray:
    """Disagreement as KL divergence of members from the consensus.

    ``D_c(x) = sum_i P_c(y_i|x) log(P_c(y_i|x) / P_C(y_i|x))``, ``P_C`` the members' mean.
    ``reduce="max"`` (default): ``max_c D_c / log m`` -- the maximum disagreement used by modAL's
    ``KL_max_disagreement``.  Since ``P_C >= P_c / m``, ``D_c <= log m``; it equals ``log m`` when
    one member is certain of a class that the others exclude.
    ``reduce="mean"``: ``1/m sum_c D_c / log(min(k, m))`` -- Settles 2009, section 3.2, Eq. (5)
    (McCallum & Nigam 1998); the mean is the generalized Jensen-Shannon divergence, bounded by
    ``log m`` and by ``log k``.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"kl_divergence reduce must be 'max' or 'mean', got {reduce!r}")
    c = check_committee(committee, values=False)
    m, n, k = c.shape
    out = np.empty(n)
    tiny = np.finfo(c.dtype).tiny
    ones = np.ones(k, dtype=c.dtype)
    for start in range(0, n, _CBLOCK):
        blk = c[:, start : start + _CBLOCK]
        _check_block(blk, start)
        if blk.min() < 0:  # tolerated rounding below 0 would turn p * log(tiny) into a large positive
            blk = np.maximum(blk, 0.0)
        # Clipping at `tiny` instead of log(where=) is exact: a 0 probability multiplies its finite
        # log to 0, and where P_c > 0 the consensus is >= P_c / m > 0.
        logs = np.maximum(blk, tiny)
        np.log(logs, out=logs)
        logq = np.log(np.maximum(blk.mean(axis=0), tiny))
        logs -= logq
        logs *= blk
        d = logs @ ones  # (m, b)
        out[start : start + _CBLOCK] = d.max(axis=0) if reduce == "max" else d.mean(axis=0)
    out /= math.log(m) if reduce == "max" else math.log(min(k, m))
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------------------------------
# multi-label

_ML_AGGREGATES = ("mean", "max")


def _binary_expand(p: np.ndarray) -> np.ndarray:
    """(..., L) per-label P(positive) -> (..., L, 2) two-class distributions [P(neg), P(pos)]."""
    p = np.clip(p, 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=-1)


def multi_label_informativeness(
    measure: str, proba: np.ndarray | None, committee: np.ndarray | None = None, aggregate: str = "mean"
) -> np.ndarray:
    """Multi-label informativeness: each label is a binary problem, aggregated over labels.

    Label ``l`` of row ``x`` is scored with the two-class version of ``measure`` on
    ``[1 - P(l|x), P(l|x)]`` (for the uncertainty measures ``least_confidence`` and ``margin`` both
    reduce to ``1 - |2p - 1|`` and ``entropy`` to ``H_b(p) / log 2``), then aggregated over the
    ``L`` labels: ``aggregate="mean"`` (default; every label's uncertainty counts) or ``"max"``
    (the single most uncertain label decides).  Both stay in [0, 1].
    """
    if aggregate not in _ML_AGGREGATES:
        raise ValueError(f"multi-label aggregate must be one of {_ML_AGGREGATES}, got {aggregate!r}")
    fn = _measure(measure)
    if "committee" in REGISTRY[measure].needs:
        c = check_committee(committee, multi_label=True)
        m, n, n_labels = c.shape
        if n == 0:
            return np.zeros(0)
        two = _binary_expand(c).reshape(m, n * n_labels, 2)
        per_label = fn(two).reshape(n, n_labels)
    else:
        p = check_proba(proba, multi_label=True)
        n, n_labels = p.shape
        if n == 0:
            return np.zeros(0)
        per_label = fn(_binary_expand(p).reshape(n * n_labels, 2)).reshape(n, n_labels)
    return per_label.mean(axis=1) if aggregate == "mean" else per_label.max(axis=1)


def _base(inp: ScoringInput, base: str, aggregate: str = "mean") -> np.ndarray:
    """Informativeness from one of the probability measures (the base of the feature strategies)."""
    fn = _measure(base)
    if inp.multi_label:
        return multi_label_informativeness(base, inp.proba, inp.committee, aggregate)
    if "committee" in REGISTRY[base].needs:
        return fn(inp.committee)
    return fn(inp.proba)


# --------------------------------------------------------------------------------------------------
# features helpers


def _check_features(x: Any, n: int | None, what: str = "features") -> Features:
    if x is None:
        raise ValueError(f"this strategy needs {what} (ScoringInput.{what}), got None")
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        data = x.data
    else:
        x = _as_float(x, what)
        if x.ndim != 2:
            raise ValueError(f"{what} must be 2-D (n, d), got shape {x.shape}")
        data = x
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{what} has {x.shape[0]} rows but the pool (proba) has {n}")
    if data.size and not np.isfinite(data).all():
        if sp.issparse(x):
            rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
            row = int(rows[~np.isfinite(x.data)][0])
        else:
            row = _first_bad_row(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{what} row {row} is not finite")
    return x


def _row_norms_sq(x: Features) -> np.ndarray:
    if sp.issparse(x):
        csr: Any = x
        return np.asarray(csr.multiply(csr).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", x, x)


def _normalize_rows(x: Features) -> Features:
    norms = np.sqrt(_row_norms_sq(x))
    norms[norms == 0] = 1.0
    if sp.issparse(x):
        return sp.csr_matrix(sp.diags(1.0 / norms) @ x)
    return x / norms[:, None]


def _rows(x: Features, idx: np.ndarray) -> Features:
    return x[idx]


def _dense(x: Features) -> np.ndarray:
    if sp.issparse(x):
        csr: Any = x
        return np.asarray(csr.toarray())
    return np.asarray(x)


def _sq_dist_to(x: Features, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, c) from rows of ``x`` to dense ``centers``: O(n c d), no n x n."""
    cross = np.asarray(x @ centers.T)
    d = x_sq[:, None] - 2.0 * cross + np.einsum("ij,ij->i", centers, centers)[None, :]
    return np.maximum(d, 0.0, out=d)


# --------------------------------------------------------------------------------------------------
# density weighting


def density(
    inp: ScoringInput,
    base: str = "entropy",
    beta: float = 1.0,
    n_ref: int = 256,
    gamma: float = 1.0,
    aggregate: str = "mean",
) -> np.ndarray:
    """Information density: ``phi(x) * (1/U sum_u sim(x, x_u)) ** beta``.

    Settles 2009, section 5.1, Eq. (15) (Settles & Craven 2008).  ``phi`` is the ``base`` measure.
    ``sim`` is a kernel on L2-normalized features, ``sim(x, u) = exp(-gamma (1 - cos(x, u)))`` in
    ``(0, 1]``; unlike plain cosine it is not linear in ``u``, so it rewards rows in *locally* dense
    regions rather than rows aligned with the global mean.  The average over the pool is estimated
    from ``n_ref`` rows sampled with ``seed`` (Monte Carlo, standard error <= 0.5/sqrt(n_ref)),
    so the cost is O(n * n_ref * d) time and O(block * n_ref) memory instead of O(n^2).
    The result is in [0, 1] because both factors are.
    """
    phi = _base(inp, base, aggregate)
    n = phi.shape[0]
    if n == 0:
        return phi
    x = _normalize_rows(_check_features(inp.features, n))
    rng = np.random.default_rng(inp.seed)
    ref_idx = np.sort(rng.choice(n, size=min(n_ref, n), replace=False))
    ref = _dense(_rows(x, ref_idx))
    sim = np.empty(n)
    for start in range(0, n, _BLOCK):
        cos = np.asarray(x[start : start + _BLOCK] @ ref.T)
        cos -= 1.0
        cos *= gamma
        np.exp(cos, out=cos)
        sim[start : start + _BLOCK] = cos.mean(axis=1)
    np.clip(sim, 0.0, 1.0, out=sim)
    if beta != 1.0:
        np.power(sim, beta, out=sim)
    return phi * sim


# --------------------------------------------------------------------------------------------------
# clusters, diversity, core-set


#: sparse features with at most this many cells (rows x columns) are clustered dense: 64 MB as float32
DENSE_CLUSTER_CELLS = 16_000_000


def cluster_ids(features: Features, n_clusters: int, seed: int = 0, fit_sample: int = 10000) -> np.ndarray:
    """Cluster id per pool row, for Label Studio's ``cluster`` field and for diversity.

    Mini-batch k-means (Sculley 2010) fitted on at most ``fit_sample`` rows drawn with ``seed``,
    then every row is assigned to its nearest centre: O(fit_sample * c * d * iters + n * c * d)
    time, O(block * c) extra memory.  Dense or CSR input (CSR of at most DENSE_CLUSTER_CELLS
    cells is clustered dense, which is faster).  ``n_clusters`` is clamped to the
    number of rows; an empty pool gives an empty array.
    """
    from sklearn.cluster import MiniBatchKMeans

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    x = _check_features(features, None)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if sp.issparse(x) and n * x.shape[1] <= DENSE_CLUSTER_CELLS:
        # TF-IDF + embedding rows are ~40% non-zero: k-means on them is 1-5x cheaper dense (BLAS)
        # than through scikit-learn's sparse kernels, with the same clusters.
        csr: Any = x
        x = np.asarray(csr.toarray(), dtype=np.float32 if csr.dtype == np.float32 else np.float64)
    c = min(int(n_clusters), n)
    if c == 1:
        return np.zeros(n, dtype=np.int64)
    if c == n:  # as many clusters as rows: every row is its own cluster
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=min(n, max(fit_sample, 3 * c)), replace=False))
    km = MiniBatchKMeans(
        n_clusters=c,
        random_state=seed,
        n_init=1,
        batch_size=min(1024, len(fit_idx)),
        init_size=min(len(fit_idx), max(3 * c, 1024)),
        max_no_improvement=10,
    )
    km.fit(_rows(x, fit_idx))
    return _nearest_center(x, km.cluster_centers_)


def _nearest_center(x: Features, centers: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances_argmin

    # scikit-learn's chunked, multi-threaded kernel: O(n c d) time, O(chunk c) memory, CSR ok.
    return pairwise_distances_argmin(x, centers).astype(np.int64)


def priority_order(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (all if None), highest first, ties by lower index.

    Uses ``argpartition`` so picking k of n costs O(n + k log k), not a full sort.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    if k is None or k >= n:
        return np.lexsort((np.arange(n), -s))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(s, n - k)[n - k]
    # Everything tied with the k-th value is a candidate so ties resolve by index, deterministically.
    cand = np.flatnonzero(s >= kth)
    order = cand[np.lexsort((cand, -s[cand]))]
    return order[:k]


def round_robin(inf: np.ndarray, clusters: np.ndarray, k: int) -> np.ndarray:
    """Pick ``k`` rows spreading over ``clusters``: every cluster's best row, then every second best...

    Within a round, rows are ordered by informativeness (ties by index).  O(n log n).
    """
    inf = np.asarray(inf, dtype=np.float64)
    clusters = np.asarray(clusters)
    n = inf.shape[0]
    if clusters.shape != (n,):
        raise ValueError(f"clusters must have shape ({n},), got {clusters.shape}")
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(n)
    by_cluster = np.lexsort((idx, -inf, clusters))  # cluster, then informativeness desc
    sorted_clusters = clusters[by_cluster]
    starts = np.r_[0, np.flatnonzero(sorted_clusters[1:] != sorted_clusters[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank_in_cluster = np.empty(n, dtype=np.int64)
    rank_in_cluster[by_cluster] = np.arange(n) - group_start
    order = np.lexsort((idx, -inf, rank_in_cluster))
    return order[:k]


def typicality(
    features: Features, k: int = 20, n_ref: int = 2000, seed: int = 0, floor_quantile: float = 0.05
) -> np.ndarray:
    """TypiClust's typicality of each row, 1 / mean distance to its ``k`` nearest rows (Hacohen,
    Dekel & Weinshall, *Active Learning on a Budget*, ICML 2022), scaled so the largest is 1.

    Neighbours are looked for among at most ``n_ref`` rows drawn with ``seed`` (all rows when there
    are fewer; a row is never its own neighbour): O(n * n_ref * d) time, O(block * n_ref) memory.
    The mean distance is floored at its ``floor_quantile`` over the rows where it is positive, so a
    text repeated k times (mean distance 0) ties with the densest rows instead of counting as
    infinitely typical, and is picked on its informativeness like them.
    """
    x = _check_features(features, None)
    n = x.shape[0]
    if n < 2:
        return np.ones(n)
    rng = np.random.default_rng(seed)
    ref_idx = np.arange(n) if n <= n_ref else np.sort(rng.choice(n, size=n_ref, replace=False))
    ref = _rows(x, ref_idx)  # CSR stays CSR: a dense TF-IDF reference could take gigabytes
    kk = max(1, min(k, len(ref_idx) - 1))
    where = np.full(n, -1, dtype=np.int64)
    where[ref_idx] = np.arange(len(ref_idx))
    x_sq = _row_norms_sq(x).astype(np.float64)
    ref_sq = x_sq[ref_idx]
    mean_d = np.empty(n)
    step = max(1, (1 << 22) // len(ref_idx))  # (step, n_ref) float64 blocks of ~32 MB
    for start in range(0, n, step):
        stop = min(start + step, n)
        product: Any = _rows(x, np.arange(start, stop)) @ ref.T
        # d2 = max(x_sq - 2 cross + ref_sq, 0), in place in one block (no temporaries): the same
        # floating-point operations in the same order as the three-temporary expression (scaling by
        # -2 is exact, and a - b == a + (-b)), so the same values, in about 3/4 of the time.
        d2 = np.array(product.toarray() if sp.issparse(product) else product, dtype=np.float64)
        d2 *= -2.0
        d2 += x_sq[start:stop, None]
        d2 += ref_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        own = where[start:stop]
        mine = np.flatnonzero(own >= 0)
        d2[mine, own[mine]] = np.inf
        d2.partition(kk - 1, axis=1)  # in place: only the kk nearest (the first kk columns) are read
        mean_d[start:stop] = np.sqrt(d2[:, :kk]).mean(axis=1)
    positive = mean_d[mean_d > 0]
    floor = float(np.quantile(positive, floor_quantile)) if positive.size else 1.0
    mean_d = np.maximum(mean_d, floor)
    typical = 1.0 / mean_d
    return typical / typical.max()


def diversity_select(
    inp: ScoringInput,
    k: int,
    base: str = "margin",
    prefilter: int = 10,
    clusters: np.ndarray | None = None,
    aggregate: str = "mean",
    typical: float = 1.0,
) -> np.ndarray:
    """Diverse batch: ``k`` informative rows spread over clusters, in priority order.

    Default (Zhdanov 2019, "diverse mini-batch active learning"): keep the ``prefilter * k`` most
    informative rows by ``base``, run k-means with ``k`` centres on them weighted by
    informativeness, and take from each cluster the row nearest its centre; picks are ordered by
    informativeness.  Cost O(n) for the prefilter plus k-means on ``prefilter * k`` rows,
    O(prefilter * k * k * d) per iteration; memory O(n + prefilter * k * k), never n x n.
    If ``clusters`` (a cluster id per pool row, e.g. from :func:`cluster_ids`) is given instead,
    picks go round-robin over those clusters (:func:`round_robin`), so the batch agrees with the
    ``cluster`` field written to Label Studio.
    ``typical`` > 0 weighs the informativeness by :func:`typicality` ``** typical`` (information
    density, Settles & Craven 2008, with TypiClust's typicality): the uncertain rows that many others
    resemble come before uncertain outliers; 0 ranks by ``base`` alone. Typicality is computed
    among the given rows (with ``clusters``) or among the prefiltered candidates (k-means).
    """
    return _diversity_picks(inp, k, _base(inp, base, aggregate), prefilter, clusters, typical)


def _weighted(x: Features | None, inf: np.ndarray, typical: float, seed: int) -> np.ndarray:
    """``inf * typicality(x) ** typical``; ``inf`` itself for ``typical`` = 0, no rows, or no
    features (a batch over given clusters needs none)."""
    if typical == 0 or inf.shape[0] == 0 or x is None:
        return inf
    return np.asarray(inf * typicality(x, seed=seed) ** typical)


def _diversity_picks(
    inp: ScoringInput, k: int, inf: np.ndarray, prefilter: int, clusters: np.ndarray | None, typical: float = 0.0
) -> np.ndarray:
    from sklearn.cluster import KMeans

    n = inf.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if clusters is not None:
        x_all = None if inp.features is None else _check_features(inp.features, n)
        return round_robin(_weighted(x_all, inf, typical, inp.seed), clusters, k)
    x = _check_features(inp.features, n)
    cand = priority_order(inf, min(n, max(prefilter, 1) * k))
    if k == len(cand):
        return cand
    xc = _rows(x, cand)  # CSR stays CSR: densifying 10k TF-IDF rows could take gigabytes
    # Typicality among the candidates only: its cost stays O(prefilter k * min(prefilter k, 2000) * d).
    inf = inf.copy()
    inf[cand] = _weighted(xc, inf[cand], typical, inp.seed)
    w = inf[cand] + 1e-6  # zero weights would let k-means ignore certain rows entirely
    km = KMeans(n_clusters=k, random_state=inp.seed, n_init=1, max_iter=100)
    labels = km.fit_predict(xc, sample_weight=w)
    d = _sq_dist_to(xc, _row_norms_sq(xc), km.cluster_centers_)[np.arange(len(cand)), labels]
    # Nearest to centre within each cluster; ties (duplicate rows) by candidate position.
    by = np.lexsort((np.arange(len(cand)), d, labels))
    first = np.r_[True, labels[by][1:] != labels[by][:-1]]
    picks = cand[by[first]]
    if len(picks) < k:  # k-means left clusters empty (duplicate rows): fill by informativeness
        rest = np.setdiff1d(cand, picks, assume_unique=True)
        picks = np.r_[picks, rest[priority_order(inf[rest], k - len(picks))]]
    return picks[np.lexsort((picks, -inf[picks]))]


def coreset_select(inp: ScoringInput, k: int, max_labeled: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy core-set selection (Sener & Savarese 2018, Algorithm 1).

    Repeatedly picks the pool row farthest (Euclidean) from the labeled set plus the rows already
    picked: ``u = argmax_i min_j ||x_i - x_j||``.  Without labeled rows, the first pick is drawn
    with ``seed``.  Labeled rows are subsampled to ``max_labeled`` (seeded).
    Cost O((l + k) * n * d) time, O(n) extra memory.  Returns ``(picks, min_distance)`` where
    ``min_distance`` is each row's distance to the labeled set + picks at the end.
    """
    n = np.asarray(inp.proba).shape[0] if inp.proba is not None else None
    x = _check_features(inp.features, n)
    n = x.shape[0]
    k = min(k, n)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(n)
    x_sq = _row_norms_sq(x)
    min_d = np.full(n, np.inf)
    rng = np.random.default_rng(inp.seed)
    if inp.labeled_features is not None and inp.labeled_features.shape[0] > 0:
        lab = _check_features(inp.labeled_features, None, "labeled_features")
        if lab.shape[1] != x.shape[1]:
            raise ValueError(f"labeled_features have {lab.shape[1]} columns, features have {x.shape[1]}")
        if lab.shape[0] > max_labeled:
            lab = _rows(lab, np.sort(rng.choice(lab.shape[0], max_labeled, replace=False)))
        from sklearn.metrics import pairwise_distances_argmin_min

        _, dist = pairwise_distances_argmin_min(x, lab)
        min_d = np.square(dist)
        picks: list[int] = []
    else:
        first = int(rng.integers(n))
        picks = [first]
        min_d = np.maximum(x_sq - 2.0 * np.asarray(x @ _dense(x[first]).ravel()).ravel() + x_sq[first], 0.0)
        min_d[first] = -np.inf
    while len(picks) < k:
        i = int(np.argmax(min_d))
        picks.append(i)
        xi = _dense(x[i]).ravel()
        d = np.asarray(x @ xi).ravel()
        d *= -2.0
        d += x_sq
        d += x_sq[i]
        np.minimum(min_d, d, out=min_d)
        min_d[i] = -np.inf  # picked rows can never win argmax again, even if every distance is 0
    min_d[np.asarray(picks, dtype=np.int64)] = 0.0
    np.maximum(min_d, 0.0, out=min_d)
    return np.asarray(picks, dtype=np.int64), np.sqrt(min_d)


# --------------------------------------------------------------------------------------------------
# expected error reduction, variance reduction (bounded)


def _stack(a: Features, b: Features) -> Features:
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([a, b])


def _labeled(inp: ScoringInput, d: int) -> tuple[Features, np.ndarray]:
    lab = _check_features(inp.labeled_features, None, "labeled_features")
    if inp.labeled_y is None:
        raise ValueError("this strategy needs labeled_y, got None")
    y = np.asarray(inp.labeled_y)
    if y.shape != (lab.shape[0],):
        raise ValueError(f"labeled_y has shape {y.shape}, expected ({lab.shape[0]},) to match labeled_features")
    if lab.shape[1] != d:
        raise ValueError(f"labeled_features have {lab.shape[1]} columns, features have {d}")
    return lab, y


def _band(picks: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Ranked picks in (0.5, 1] (first pick = 1), every other row at ``0.5 * rest`` in [0, 0.5]."""
    out = 0.5 * np.clip(rest, 0.0, 1.0)
    b = len(picks)
    if b:
        out[picks] = 1.0 - 0.5 * np.arange(b) / b
    return out


def expected_error(inp: ScoringInput, n_candidates: int = 100, n_eval: int = 500, base: str = "entropy") -> np.ndarray:
    """Expected error reduction with bounded work (Roy & McCallum 2001).

    Settles 2009, section 3.4, Eq. (8) (expected 0/1 loss):
    ``x* = argmin_x sum_i P(y_i|x) sum_u (1 - P+(y_hat|x_u))`` where ``P+`` is the model retrained
    on ``L + (x, y_i)``.  Only the ``n_candidates`` most informative rows by ``base`` are candidates
    and the loss is averaged over ``n_eval`` pool rows drawn with ``seed``.  Cost:
    ``n_candidates * k`` fits of ``make_estimator()`` on ``l + 1`` rows plus as many
    ``predict_proba`` calls on ``n_eval`` rows -- e.g. 100 x 4 = 400 logistic-regression fits.
    Normalization: the expected loss ``EE`` is in ``[0, (k-1)/k]``; candidate ``c`` gets
    ``0.5 + 0.5 * (1 - EE_c k/(k-1))`` in [0.5, 1], every other row ``0.5 * base`` in [0, 0.5], so
    evaluated candidates always rank first.  The columns of ``proba`` must be the sorted unique
    ``labeled_y`` (scikit-learn's ``classes_`` order).  Single-label only.
    """
    if inp.multi_label:
        raise ValueError("expected_error supports single-label tasks only; use margin/entropy for multi-label")
    if inp.make_estimator is None:
        raise ValueError("expected_error needs make_estimator (a factory of unfitted classifiers), got None")
    phi = _base(inp, base)
    p = np.asarray(inp.proba)
    n, k = p.shape
    if n == 0:
        return phi
    x = _check_features(inp.features, n)
    lab, y = _labeled(inp, x.shape[1])
    classes = np.unique(y)
    if len(classes) != k:
        raise ValueError(
            f"proba has {k} columns but labeled_y has {len(classes)} distinct labels {classes.tolist()}; "
            "they must match (sorted, as scikit-learn's classes_)"
        )
    rng = np.random.default_rng(inp.seed)
    cand = priority_order(phi, min(n, n_candidates))
    x_eval = _rows(x, np.sort(rng.choice(n, size=min(n, n_eval), replace=False)))
    ee = np.zeros(len(cand))
    for ci, row in enumerate(cand):
        x_plus = _stack(lab, _rows(x, np.array([row])))
        for yi, label in enumerate(classes):
            if p[row, yi] < 1e-6:  # contributes nothing to the expectation; skip the fit
                continue
            est = inp.make_estimator()
            est.fit(x_plus, np.r_[y, [label]])
            pe = np.asarray(est.predict_proba(x_eval))
            ee[ci] += p[row, yi] * float(np.mean(1.0 - pe.max(axis=1)))
    score = 1.0 - np.clip(ee * k / (k - 1), 0.0, 1.0)
    out = 0.5 * np.clip(phi, 0.0, 1.0)
    out[cand] = 0.5 + 0.5 * score
    return out


def _fisher_weights(p: np.ndarray) -> np.ndarray:
    # Trace of the softmax covariance diag(p) - p p^T: sum_y p_y (1 - p_y); per-label sum for multi-label.
    return (p * (1.0 - p)).sum(axis=1)


def variance_reduction(
    inp: ScoringInput,
    n_candidates: int = 2000,
    n_eval: int = 2000,
    max_dim: int = 256,
    ridge: float = 1.0,
    base: str = "entropy",
    aggregate: str = "mean",
) -> np.ndarray:
    """Variance reduction via the Fisher information ratio, in closed form (bounded work).

    Settles 2009, section 3.5, Eq. (12) (Zhang & Oles 2000; Schein & Ungar 2007):
    ``x* = argmin_x tr(I_{L+x}^{-1} I_U)``, the model's output variance over the pool after adding
    ``x``.  For a logistic model the Fisher information of a row is ``w(x) x x^T`` with
    ``w = sum_y P(y|x)(1 - P(y|x))`` (the trace of the softmax covariance, a block-diagonal
    approximation).  ``A = ridge I + sum_L w x x^T`` (``ridge=1`` is scikit-learn's ``C=1`` L2
    penalty) and ``I_U`` is averaged over ``n_eval`` pool rows drawn with ``seed``.  By
    Sherman-Morrison, adding ``x`` lowers ``tr(A^{-1} I_U)`` by
    ``w x^T A^{-1} I_U A^{-1} x / (1 + w x^T A^{-1} x)`` -- no refitting per candidate.
    Candidates: the ``n_candidates`` most informative rows by ``base``.  Features wider than
    ``max_dim`` (e.g. TF-IDF) are first mapped to ``max_dim`` dimensions by a seeded sparse
    random projection.  Cost O((l + n_eval + n_candidates) d^2 + d^3), d <= max_dim + 1.
    Labeled-row weights come from ``make_estimator()`` fitted on the labeled rows if given, else
    the pool's mean weight.
    Normalization: reduction / ``tr(A^{-1} I_U)`` -- the fraction of current output variance the
    label removes, in [0, 1]; candidate ``c`` gets ``0.5 + 0.5 * fraction``, others ``0.5 * base``.
    """
    phi = _base(inp, base, aggregate)
    n = phi.shape[0]
    if n == 0:
        return phi
    p = check_proba(inp.proba, multi_label=inp.multi_label)
    x = _check_features(inp.features, n)
    rng = np.random.default_rng(inp.seed)
    cand = priority_order(phi, min(n, n_candidates))
    eval_idx = np.sort(rng.choice(n, size=min(n, n_eval), replace=False))
    has_labeled = inp.labeled_features is not None and inp.labeled_features.shape[0] > 0
    lab: Features | None = None
    y: np.ndarray | None = None
    if has_labeled:
        lab = _check_features(inp.labeled_features, None, "labeled_features")
        if lab.shape[1] != x.shape[1]:
            raise ValueError(f"labeled_features have {lab.shape[1]} columns, features have {x.shape[1]}")
        y = None if inp.labeled_y is None else np.asarray(inp.labeled_y)

    project: Callable[[Features], np.ndarray]
    if x.shape[1] > max_dim:
        from sklearn.random_projection import SparseRandomProjection

        rp = SparseRandomProjection(n_components=max_dim, random_state=inp.seed)
        rp.fit(_rows(x, eval_idx))

        def project(a: Features) -> np.ndarray:
            return _dense(rp.transform(a))
    else:

        def project(a: Features) -> np.ndarray:
            return _dense(a)

    def design(a: Features) -> np.ndarray:
        z = project(a).astype(np.float64)
        return np.hstack([z, np.ones((z.shape[0], 1))])  # intercept

    z_eval = design(_rows(x, eval_idx))
    w_eval = _fisher_weights(p[eval_idx])
    z_cand = design(_rows(x, cand))
    w_cand = _fisher_weights(p[cand])
    dim = z_eval.shape[1]
    a_mat = ridge * np.eye(dim)
    if has_labeled and lab is not None:
        z_lab = design(lab)
        if inp.make_estimator is not None and y is not None and len(np.unique(y)) >= 2:
            est = inp.make_estimator()
            est.fit(lab, y)
            w_lab = _fisher_weights(np.asarray(est.predict_proba(lab)))
        else:
            w_lab = np.full(z_lab.shape[0], float(np.mean(w_eval)))
        a_mat += (z_lab * w_lab[:, None]).T @ z_lab
    i_u = (z_eval * w_eval[:, None]).T @ z_eval / len(eval_idx)
    a_inv = np.linalg.inv(a_mat)
    a_inv = 0.5 * (a_inv + a_inv.T)
    total = float(np.trace(a_inv @ i_u))
    m_mat = a_inv @ i_u @ a_inv
    num = w_cand * np.einsum("ij,jk,ik->i", z_cand, m_mat, z_cand)
    den = 1.0 + w_cand * np.einsum("ij,jk,ik->i", z_cand, a_inv, z_cand)
    frac = np.zeros(len(cand)) if total <= 0 else np.clip(num / den / total, 0.0, 1.0)
    out = 0.5 * np.clip(phi, 0.0, 1.0)
    out[cand] = 0.5 + 0.5 * frac
    return out


# --------------------------------------------------------------------------------------------------
# random and dispatch


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random informativeness in [0, 1), reproducible for a ``seed``: the baseline."""
    return np.random.default_rng(seed).random(n)


def _pool_size(inp: ScoringInput) -> int:
    if inp.proba is not None:
        p = np.asarray(inp.proba)
        if p.ndim >= 1:
            return int(p.shape[0])
    if inp.committee is not None:
        return int(np.asarray(inp.committee).shape[1])
    if inp.features is not None:
        return int(inp.features.shape[0])
    raise ValueError("ScoringInput has neither proba, committee nor features: cannot size the pool")


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return int(k)


def _random(inp: ScoringInput) -> np.ndarray:
    """``random`` as a strategy: :func:`random_scores` for every pool row."""
    return random_scores(_pool_size(inp), inp.seed)


def diversity_informativeness(
    inp: ScoringInput,
    base: str = "margin",
    prefilter: int = 10,
    clusters: np.ndarray | None = None,
    aggregate: str = "mean",
    batch_size: int = 100,
    typical: float = 1.0,
) -> np.ndarray:
    """``diversity`` as informativeness: the :func:`diversity_select` batch banded above the rest.

    The ``batch_size`` picks get ``1 - 0.5 r / b`` (pick ``r`` of ``b``, in (0.5, 1]); every other
    row half its ``base`` value, in [0, 0.5] (:func:`_band`).
    """
    base_inf = _base(inp, base, aggregate)
    picks = _diversity_picks(inp, min(batch_size, len(base_inf)), base_inf, prefilter, clusters, typical)
    return _band(picks, base_inf)


def coreset_informativeness(inp: ScoringInput, max_labeled: int = 1000, batch_size: int = 100) -> np.ndarray:
    """``coreset`` as informativeness: the :func:`coreset_select` batch banded above the rest.

    Picks in (0.5, 1] in pick order; every other row ``0.5 * d / max d``, ``d`` its distance to
    the labeled set + picks.
    """
    picks, dist = coreset_select(inp, batch_size, max_labeled)
    top = float(dist.max()) if dist.size else 0.0
    return _band(picks, dist / top if top > 0 else dist)


def _coreset_picks(inp: ScoringInput, k: int, max_labeled: int = 1000) -> np.ndarray:
    return coreset_select(inp, k, max_labeled)[0]


# --------------------------------------------------------------------------------------------------
# the registry: one entry per strategy; everything else (cycle, simulate, server, /setup, docs,
# tests) reads it.

Selection = Literal["pointwise", "pool", "batch"]
Input = Literal["proba", "committee", "pool"]
# What ScoringInput fields an entry reads: "committee" (ScoringInput.committee), "features",
# "labeled" (labeled_features + labeled_y), "estimator" (make_estimator).
INPUTS: tuple[str, ...] = ("committee", "features", "labeled", "estimator")


class ParamError(ValueError):
    """A strategy parameter is unknown or out of bounds; ``param`` names it (None: several unknown)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a strategy: its default, type and bounds (inclusive).

    ``settable=False`` marks parameters the caller derives (``batch_size`` from the queue depth,
    ``clusters`` from the clustering), which a project cannot set.
    """

    name: str
    default: Any
    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    settable: bool = True

    def check(self, strategy: str, value: Any) -> Any:
        """``value`` if it is valid for this parameter (ints accepted for floats), else ValueError."""
        where = f"parameter {self.name!r} of strategy {strategy!r}"
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                raise ParamError(self.name, f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ParamError(self.name, f"{where} must be an integer, got {value!r}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ParamError(self.name, f"{where} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ParamError(self.name, f"{where} must be finite, got {value!r}")
        else:
            return value  # arrays (clusters): checked by the function that uses them
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ParamError(self.name, f"{where} must be in [{_num(self.low)}, {_num(self.high)}], got {value!r}")
        return value

    def bounds(self) -> str:
        """The accepted values in words, for the docs: ``1 – 10,000`` or ``mean, max``."""
        if self.choices:
            return ", ".join(f"`{c}`" for c in self.choices)
        if self.kind not in (int, float):
            return "set by the caller"
        return f"{_num(self.low)} – {_num(self.high)}"


def _num(v: float | None) -> str:
    if v is None:
        return "∞"
    return f"{int(v):,}" if float(v).is_integer() else str(v)


@dataclass(frozen=True)
class Strategy:
    """A registry entry: everything the cycle, the server, the docs and the tests need to know.

    ``function`` is the public function that computes the strategy; ``input`` says what it takes:
    ``"proba"`` an ``(n, k)`` array, ``"committee"`` an ``(m, n, k)`` array, ``"pool"`` the whole
    :class:`ScoringInput` (returning informativeness).  ``selection``: ``"pointwise"`` (a row's value
    depends on that row alone: stream the pool in chunks, score one task in /predict), ``"pool"``
    (needs the whole pool at once), ``"batch"`` (selects ``batch_size`` rows as a set; ``select``
    returns the picks).  ``needs``: inputs that must be given; ``uses``: inputs read when given.
    ``cost_rank``: relative cost, 1 (a pass over the probabilities) to 4 (model refits).
    """

    name: str
    function: Callable[..., Any]
    input: Input
    selection: Selection
    formula: str
    normalization: str
    reference: str
    cost: str
    cost_rank: int
    when: str
    needs: frozenset[str] = frozenset()
    uses: frozenset[str] = frozenset()
    params: tuple[Param, ...] = ()
    multi_label: bool = True
    select: Callable[..., np.ndarray] | None = None

    @property
    def pointwise(self) -> bool:
        """True when a row's value depends on that row alone (chunked scoring, /predict)."""
        return self.selection == "pointwise"

    @property
    def row_measure(self) -> str:
        """The measure that scores rows one at a time for this strategy: itself when pointwise, else
        :data:`PREFILTER_MEASURE` (pool-level strategies need the whole pool)."""
        return self.name if self.pointwise else PREFILTER_MEASURE

    def param(self, name: str) -> Param | None:
        """The parameter called ``name``, or None."""
        return next((p for p in self.params if p.name == name), None)

    def check_params(self, params: dict[str, Any], *, settable_only: bool = False) -> dict[str, Any]:
        """``params`` validated against this entry (names, types, bounds); raises ValueError."""
        accepted = [p.name for p in self.params if p.settable or not settable_only]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ParamError(
                unknown[0] if len(unknown) == 1 else None,
                f"unknown parameter(s) {unknown} for strategy {self.name!r}; accepted: {sorted(accepted)}",
            )
        out = {}
        for key, value in params.items():
            spec = self.param(key)
            assert spec is not None
            out[key] = spec.check(self.name, value)
        return out

    def requires(self, params: dict[str, Any] | None = None) -> frozenset[str]:
        """Inputs this entry reads with ``params``: ``uses``, plus a committee when its ``base`` is a
        committee measure."""
        base = (params or {}).get("base")
        if isinstance(base, str) and base in REGISTRY and "committee" in REGISTRY[base].needs:
            return self.uses | {"committee"}
        return self.uses


def _aggregate() -> Param:
    return Param("aggregate", "mean", str, "multi-label: mean or max over the labels", choices=("mean", "max"))


def _base_param(default: str) -> Param:
    return Param("base", default, str, "the probability measure underneath", choices=_MEASURE_NAMES)


_MEASURE_NAMES = ("least_confidence", "margin", "entropy", "vote_entropy", "consensus_entropy", "kl_divergence")
_COMMITTEE = frozenset({"committee"})


def _batch_size() -> Param:
    return Param("batch_size", 100, int, "rows selected as a batch (the cycle: the queue depth)", 0, None, (), False)


def _entries() -> tuple[Strategy, ...]:
    return (
        Strategy(
            "least_confidence",
            least_confidence,
            "proba",
            "pointwise",
            formula="1 - max_y P(y|x)",
            normalization="× k/(k-1) (the uniform distribution gives 1)",
            reference="Settles §3.1, Eq. 1",
            cost="O(nk), ~10–25 ms for 1M × 4",
            cost_rank=1,
            when="simplest uncertainty; looks at the top class only",
            params=(_aggregate(),),
        ),
        Strategy(
            "margin",
            margin,
            "proba",
            "pointwise",
            formula="1 - (P(y1|x) - P(y2|x)), top two classes",
            normalization="none needed: 1 for a tie, 0 for one-hot",
            reference="Settles §3.1, Eq. 2",
            cost="O(nk), ~10–35 ms",
            cost_rank=1,
            when="robust for any k; the base of `diversity`, the default",
            params=(_aggregate(),),
        ),
        Strategy(
            "entropy",
            entropy,
            "proba",
            "pointwise",
            formula="-Σ P log P",
            normalization="/ log k",
            reference="Settles §3.1, Eq. 3",
            cost="O(nk) logs, ~15–45 ms",
            cost_rank=1,
            when="uses the whole distribution; good for many classes",
            params=(_aggregate(),),
        ),
        Strategy(
            "vote_entropy",
            vote_entropy,
            "committee",
            "pointwise",
            formula="-Σ V(y)/m log(V(y)/m), V = hard votes",
            normalization="/ log min(k, m) (largest possible vote entropy)",
            reference="Settles §3.2, Eq. 4",
            cost="O(mnk), ~80 ms for 5 × 1M × 4",
            cost_rank=1,
            when="query by committee with hard votes",
            needs=_COMMITTEE,
            uses=_COMMITTEE,
            params=(_aggregate(),),
        ),
        Strategy(
            "consensus_entropy",
            consensus_entropy,
            "committee",
            "pointwise",
            formula="entropy of the members' mean (soft vote)",
            normalization="/ log k",
            reference="Settles §3.2",
            cost="O(mnk), ~40 ms",
            cost_rank=1,
            when="committee, soft votes",
            needs=_COMMITTEE,
            uses=_COMMITTEE,
            params=(_aggregate(),),
        ),
        Strategy(
            "kl_divergence",
            kl_divergence,
            "committee",
            "pointwise",
            formula='max_c KL(P_c ‖ P_mean) (modAL\'s max disagreement); `reduce="mean"`: mean KL',
            normalization="max: / log m (KL from a mean that includes the member is at most log m); "
            "mean: / log min(k, m)",
            reference="Settles §3.2, Eq. 5; McCallum & Nigam 1998",
            cost="O(mnk) logs, ~80 ms",
            cost_rank=1,
            when="committee; finds rows where one member strongly dissents",
            needs=_COMMITTEE,
            uses=_COMMITTEE,
            params=(
                _aggregate(),
                Param("reduce", "max", str, "max or mean over the members", choices=("max", "mean")),
            ),
        ),
        Strategy(
            "density",
            density,
            "pool",
            "pool",
            formula="φ(x) · (mean_u sim(x, u))^β (information density); sim = exp(-γ(1 - cos)) on "
            "L2-normalized features",
            normalization="both factors are already in [0, 1]",
            reference="Settles §5.1, Eq. 15; Settles & Craven 2008",
            cost="O(n · n_ref · d), n_ref = 256 sampled reference rows (Monte Carlo, standard error ≤ 0.5/√n_ref)",
            cost_rank=2,
            when="uncertain *and* typical rows; avoids outliers",
            needs=frozenset({"features"}),
            uses=frozenset({"features"}),
            params=(
                _base_param("entropy"),
                Param("beta", 1.0, float, "weight of the density factor", 0.0, 100.0),
                Param("n_ref", 256, int, "reference rows sampled for the density", 1, 100_000),
                Param("gamma", 1.0, float, "kernel width: sim = exp(-γ(1 - cos))", 0.0, 1000.0),
                _aggregate(),
            ),
        ),
        Strategy(
            "diversity",
            diversity_informativeness,
            "pool",
            "batch",
            formula="batch: informativeness = `base` (default margin) × typicality^`typical` (TypiClust's "
            "1 / mean distance to the 20 nearest rows, scaled to max 1); prefilter the `prefilter·k` most "
            "informative rows, weighted k-means with k centres, the row nearest each centre; or round-robin "
            "over given `clusters` (the cycle: one cluster per pick, the most informative row of each)",
            normalization="banded (below)",
            reference="Zhdanov 2019; Citovsky et al. 2021; Settles & Craven 2008; Hacohen et al. 2022",
            cost="O(n) + k-means on `10k` rows + typicality O(n · 2000 · d); memory O(n + 10k·k), never n × n",
            cost_rank=2,
            when="labelling in batches; avoids near-duplicates in one batch",
            needs=frozenset({"features"}),
            uses=frozenset({"features"}),
            params=(
                _base_param("margin"),
                Param("prefilter", 10, int, "candidates per pick for k-means", 1, 1000),
                Param(
                    "clusters",
                    None,
                    np.ndarray,
                    "a cluster id per row (the cycle passes its candidates' clusters)",
                    settable=False,
                ),
                _aggregate(),
                _batch_size(),
                Param(
                    "typical",
                    1.0,
                    float,
                    "weight of typicality: picks by base × typicality^typical (0: base alone)",
                    0.0,
                    10.0,
                ),
            ),
            select=diversity_select,
        ),
        Strategy(
            "coreset",
            coreset_informativeness,
            "pool",
            "batch",
            formula="k-center greedy: repeatedly the row farthest from labeled ∪ picked",
            normalization="banded; other rows: distance / max distance",
            reference="Sener & Savarese 2018",
            cost="O((l + k) n d), l ≤ `max_labeled` = 1000 (subsampled)",
            cost_rank=2,
            when="cold-ish start, representation coverage, model-agnostic",
            needs=frozenset({"features"}),
            uses=frozenset({"features", "labeled"}),
            params=(
                Param("max_labeled", 1000, int, "labeled rows kept (seeded subsample)", 1, 1_000_000),
                _batch_size(),
            ),
            select=_coreset_picks,
        ),
        Strategy(
            "expected_error",
            expected_error,
            "pool",
            "pool",
            formula="Σ_y P(y|x) · mean_u (1 - max P⁺(·|u)), P⁺ refitted on L + (x, y)",
            normalization="1 - EE · k/(k-1); banded",
            reference="Settles §3.4, Eq. 8; Roy & McCallum 2001",
            cost="`n_candidates · k` fits (default 100 × k) on l + 1 rows + predictions on `n_eval` = 500 rows",
            cost_rank=4,
            when="small pools, cheap models, when the label budget is precious",
            needs=frozenset({"features", "labeled", "estimator"}),
            uses=frozenset({"features", "labeled", "estimator"}),
            params=(
                Param("n_candidates", 100, int, "rows evaluated by refitting", 1, 100_000),
                Param("n_eval", 500, int, "pool rows the expected error is averaged over", 1, 1_000_000),
                _base_param("entropy"),
            ),
            multi_label=False,
        ),
        Strategy(
            "variance_reduction",
            variance_reduction,
            "pool",
            "pool",
            formula="Fisher information ratio tr(I_{L+x}^{-1} I_U), block-diagonal logistic Fisher w(x) x xᵀ, "
            "w = Σ_y P(1-P); Sherman–Morrison closed form, no refits",
            normalization="fraction of the current output variance removed, in [0, 1]; banded",
            reference="Settles §3.5, Eq. 12; Schein & Ungar 2007",
            cost="O((l + n_eval + n_candidates) d² + d³), d ≤ `max_dim` = 256 (sparse random projection beyond)",
            cost_rank=2,
            when="logistic-type models, when you want the principled choice at bounded cost",
            needs=frozenset({"features"}),
            uses=frozenset({"features", "labeled", "estimator"}),
            params=(
                Param("n_candidates", 2000, int, "rows evaluated", 1, 1_000_000),
                Param("n_eval", 2000, int, "pool rows I_U is averaged over", 1, 1_000_000),
                Param("max_dim", 256, int, "features projected to at most this many dimensions", 1, 4096),
                Param("ridge", 1.0, float, "L2 prior of the Fisher information (scikit-learn's C=1)", 1e-9, 1e9),
                _base_param("entropy"),
                _aggregate(),
            ),
        ),
        Strategy(
            "random",
            _random,
            "pool",
            "pointwise",
            formula="uniform in [0, 1) from `seed`",
            normalization="—",
            reference="—",
            cost="O(n)",
            cost_rank=1,
            when="the baseline every comparison uses",
        ),
    )


REGISTRY: dict[str, Strategy] = {s.name: s for s in _entries()}

# Measured with `lsal simulate` on six datasets (docs/benchmarks.md): margin + one cluster per pick
# has the best AULC on every dataset and beats random on >= 90% of repeats on each.
DEFAULT_STRATEGY: str = "diversity"
# What pool-level strategies score rows with when they must be scored one at a time (/predict,
# stream scoring) and what the cycle prefilters their candidates by.
PREFILTER_MEASURE: str = "margin"
# Every name a user may give: the registry's plus "default".
STRATEGY_NAMES: tuple[str, ...] = (*REGISTRY, "default")


def resolve(name: str) -> str:
    """Map a user-facing strategy name to a concrete one (``default`` -> :data:`DEFAULT_STRATEGY`)."""
    return get(name).name


def get(name: str) -> Strategy:
    """The registry entry for ``name`` (case and surrounding spaces ignored; ``default`` resolves)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "default":
        key = DEFAULT_STRATEGY
    if key not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGY_NAMES)}")
    return REGISTRY[key]


def pointwise_measure(name: str) -> str:
    """The measure that scores rows one at a time for strategy ``name`` (:attr:`Strategy.row_measure`)."""
    return get(name).row_measure


def check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate parameters a project gives for strategy ``name`` (names, types, bounds).

    Parameters the caller derives (``batch_size``, ``clusters``) are refused. Raises
    :class:`ParamError` naming the parameter and the accepted values.
    """
    return get(name).check_params(dict(params), settable_only=True)


def _measure(name: str) -> Callable[..., np.ndarray]:
    entry = REGISTRY.get(name)
    if entry is None or entry.input == "pool":
        raise ValueError(f"base measure must be one of {_MEASURE_NAMES}, got {name!r}")
    return entry.function


def informativeness(name: str, inp: ScoringInput, **params: Any) -> np.ndarray:
    """Informativeness in [0, 1] of every pool row for strategy ``name`` (higher = label sooner).

    Batch strategies (``diversity``, ``coreset``; parameter ``batch_size``, default 100) select a
    batch first and give its rows, in pick order, values in (0.5, 1]; every other row gets half its
    base value (diversity: the ``base`` measure; coreset: distance to the labeled set + picks
    divided by the largest such distance) in [0, 0.5].  Sorting by ``1 - informativeness``
    therefore serves the picks first, in order.  ``expected_error`` and ``variance_reduction``
    band their evaluated candidates the same way.
    """
    entry = get(name)
    params = entry.check_params(params)
    if entry.input == "pool":
        return entry.function(inp, **params)
    aggregate = params.pop("aggregate", "mean")
    if inp.multi_label:
        if params:
            raise ValueError(f"parameters {sorted(params)} are not supported for multi-label input")
        return multi_label_informativeness(entry.name, inp.proba, inp.committee, aggregate)
    if entry.input == "committee":
        c = inp.committee
        if inp.proba is not None and c is not None:
            # Shapes only: the measure validates values block by block itself.
            check_committee(c, n=np.asarray(inp.proba).shape[0], values=False)
        return entry.function(c, **params)
    return entry.function(inp.proba)


def select_batch(name: str, inp: ScoringInput, k: int, **params: Any) -> np.ndarray:
    """Indices of ``k`` distinct pool rows to label next, most important first.

    ``k`` larger than the pool returns every row (in priority order); ``k = 0`` or an empty pool
    returns an empty array; a negative or non-integer ``k`` raises ``ValueError``.  ``diversity``
    and ``coreset`` select a genuine batch (spread over clusters / k-center greedy); every other
    strategy takes the top ``k`` by informativeness, ties broken by lower index.
    """
    entry = get(name)
    k = _check_k(k)
    params = entry.check_params(params)
    if "batch_size" in params:
        raise ValueError("select_batch takes the batch size as k, not batch_size")
    if entry.select is not None:
        return entry.select(inp, k, **params)
    return priority_order(informativeness(entry.name, inp, **params), k)


# --------------------------------------------------------------------------------------------------
# documentation: docs/strategies.md's tables are generated from the registry (a test keeps them equal)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_tables() -> str:
    """The strategy table and the parameter table of docs/strategies.md, rendered from REGISTRY."""
    rows = [
        "| name | inputs besides `proba` | selection | formula (informativeness) | normalization | cost | when to use"
        " |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in REGISTRY.values():
        reads = ", ".join(i if i in s.needs else f"{i} (if given)" for i in INPUTS if i in s.uses) or "—"
        formula = s.formula if s.reference == "—" else f"{s.formula} ({s.reference})"
        rows.append(
            f"| `{s.name}` | {reads} | {s.selection} | {_cell(formula)} | {_cell(s.normalization)} | "
            f"{_cell(s.cost)} | {_cell(s.when)}{'' if s.multi_label else ' (single-label only)'} |"
        )
    rows += ["", "| strategy | parameter | default | accepted | meaning |", "|---|---|---|---|---|"]
    for s in REGISTRY.values():
        for p in s.params:
            default = "—" if p.default is None else f"`{p.default}`"
            who = "" if p.settable else " (set by the caller, not by a project)"
            rows.append(f"| `{s.name}` | `{p.name}` | {default} | {p.bounds()} | {_cell(p.doc)}{who} |")
    return "\n".join(rows) + "\n"
