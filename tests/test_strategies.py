"""Tests for backend.strategies: exact values, properties (hypothesis) and bad input."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.linear_model import LogisticRegression

from backend import strategies as S
from backend.strategies import ScoringInput

UNCERTAINTY = ("least_confidence", "margin", "entropy")
COMMITTEE = ("vote_entropy", "consensus_entropy", "kl_divergence")
PROBA_MEASURES = UNCERTAINTY + COMMITTEE
REGISTERED = list(S.REGISTRY)
REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# hypothesis strategies


@st.composite
def proba_arrays(draw: st.DrawFn, min_k: int = 2, max_k: int = 6, max_n: int = 20) -> np.ndarray:
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(min_k, max_k))
    raw = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1, allow_nan=False, allow_subnormal=False)))
    # Some exactly-zero entries (one-hot-like rows) matter for the log terms, so keep them.
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    return raw / raw.sum(axis=1, keepdims=True)


@st.composite
def committees(draw: st.DrawFn) -> np.ndarray:
    m = draw(st.integers(2, 5))
    first = draw(proba_arrays())
    n, k = first.shape
    members = [first]
    for _ in range(m - 1):
        raw = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1, allow_subnormal=False)))
        raw[raw.sum(axis=1) == 0, 0] = 1.0
        members.append(raw / raw.sum(axis=1, keepdims=True))
    return np.stack(members)


def score(name: str, proba: np.ndarray | None = None, committee: np.ndarray | None = None, **kw: Any) -> np.ndarray:
    if proba is None and committee is not None:
        proba = committee.mean(axis=0)
    return S.informativeness(name, ScoringInput(proba=proba, committee=committee), **kw)


# --------------------------------------------------------------------------------------------------
# names


def test_names_and_resolve() -> None:
    assert S.STRATEGY_NAMES == (
        "least_confidence",
        "margin",
        "entropy",
        "vote_entropy",
        "consensus_entropy",
        "kl_divergence",
        "density",
        "diversity",
        "coreset",
        "expected_error",
        "variance_reduction",
        "random",
        "default",
    )
    assert S.DEFAULT_STRATEGY in S.STRATEGY_NAMES and S.DEFAULT_STRATEGY != "default"
    assert S.resolve("default") == S.DEFAULT_STRATEGY
    assert S.resolve("Entropy ") == "entropy"
    assert frozenset(COMMITTEE) == {n for n, e in S.REGISTRY.items() if "committee" in e.needs}
    with pytest.raises(ValueError, match="unknown strategy 'bald'.*least_confidence.*default"):
        S.resolve("bald")


# --------------------------------------------------------------------------------------------------
# the registry: every entry is checked by the same tests


def full_problem(seed: int = 0) -> ScoringInput:
    """Every input a strategy may read: probabilities, a 3-member committee, features, labeled rows."""
    inp = small_problem(seed)
    rng = np.random.default_rng(seed + 1)
    noise = [np.clip(inp.proba + rng.normal(0, 0.1, inp.proba.shape), 0.01, None) for _ in range(3)]
    committee = np.stack([m / m.sum(axis=1, keepdims=True) for m in noise])
    return ScoringInput(
        proba=inp.proba,
        committee=committee,
        features=inp.features,
        labeled_features=inp.labeled_features,
        labeled_y=inp.labeled_y,
        make_estimator=inp.make_estimator,
        seed=seed,
    )


FIELDS = {"committee": ("committee",), "features": ("features",), "labeled": ("labeled_features", "labeled_y"),
          "estimator": ("make_estimator",)}  # fmt: skip


def test_registry_entries_are_complete() -> None:
    assert (*S.REGISTRY, "default") == S.STRATEGY_NAMES
    assert S.DEFAULT_STRATEGY in S.REGISTRY and S.PREFILTER_MEASURE in S.REGISTRY
    assert S.REGISTRY[S.PREFILTER_MEASURE].pointwise
    for name, e in S.REGISTRY.items():
        assert e.name == name
        assert e.needs <= e.uses <= set(S.INPUTS), name
        assert e.selection in ("pointwise", "pool", "batch") and 1 <= e.cost_rank <= 4, name
        assert e.formula and e.normalization and e.reference and e.cost and e.when, name
        assert (e.select is not None) == (e.selection == "batch"), name
        assert e.function.__doc__, name  # the formula and its reference live in the docstring too


@pytest.mark.parametrize("name", REGISTERED)
def test_declared_parameters_match_the_function(name: str) -> None:
    """A parameter's declared default is the function's, so the docs cannot drift from the code."""
    e = S.REGISTRY[name]
    sig = dict(inspect.signature(e.function).parameters)
    if e.input != "pool":  # the measures take arrays; multi-label aggregation wraps them
        sig["aggregate"] = inspect.signature(S.multi_label_informativeness).parameters["aggregate"]
    for p in e.params:
        assert p.name in sig, (name, p.name)
        assert sig[p.name].default == p.default, (name, p.name)
        if p.settable:
            assert S.check_params(name, {p.name: p.default}) == {p.name: p.default}
    extra = [k for k, v in sig.items() if v.default is not inspect.Parameter.empty]
    assert sorted(extra) == sorted(p.name for p in e.params), name


@pytest.mark.parametrize("name", REGISTERED)
def test_every_strategy_scores_in_unit_interval_deterministically(name: str) -> None:
    inp = full_problem()
    v = S.informativeness(name, inp)
    assert v.shape == (120,) and np.all((v >= 0) & (v <= 1)), name
    np.testing.assert_array_equal(v, S.informativeness(name, inp))
    picks = S.select_batch(name, inp, 10)
    assert len(picks) == 10 and len(set(picks.tolist())) == 10


@pytest.mark.parametrize("name", REGISTERED)
def test_every_needed_input_is_named_when_missing(name: str) -> None:
    e = S.REGISTRY[name]
    for need in e.needs:
        fields = {f: None for f in FIELDS[need]}
        inp = full_problem()
        broken = ScoringInput(**{**inp.__dict__, **fields})
        with pytest.raises(ValueError, match="|".join(FIELDS[need]) + "|needs " + need):
            S.informativeness(name, broken)
    # Inputs the entry does not read can be left out.
    inp = full_problem()
    unread = {f: None for i in S.INPUTS if i not in e.uses for f in FIELDS[i]}
    np.testing.assert_array_equal(
        S.informativeness(name, ScoringInput(**{**inp.__dict__, **unread})), S.informativeness(name, inp)
    )


@pytest.mark.parametrize("name", [n for n, e in S.REGISTRY.items() if e.pointwise and n != "random"])
def test_pointwise_strategies_score_each_row_alone(name: str) -> None:
    inp = full_problem()
    whole = S.informativeness(name, inp)
    part = ScoringInput(
        proba=inp.proba[40:50], committee=inp.committee[:, 40:50] if inp.committee is not None else None
    )
    np.testing.assert_allclose(S.informativeness(name, part), whole[40:50])


@pytest.mark.parametrize("name", REGISTERED)
def test_parameter_bounds_are_enforced(name: str) -> None:
    for p in S.REGISTRY[name].params:
        if not p.settable:
            with pytest.raises(ValueError, match=f"unknown parameter.*{p.name}"):
                S.check_params(name, {p.name: p.default})
            continue
        bad: list[Any] = ["nope"] if p.choices else ["3", True]
        if p.low is not None:
            bad.append(p.low - 1)
        if p.high is not None:
            bad.append(p.high * 2)
        for value in bad:
            with pytest.raises(ValueError, match=f"parameter '{p.name}' of strategy '{name}'"):
                S.check_params(name, {p.name: value})


def test_strategy_docs_table_is_generated_from_the_registry() -> None:
    doc = (REPO / "docs" / "strategies.md").read_text()
    table = doc.split("<!-- strategy-table:start -->\n")[1].split("<!-- strategy-table:end -->")[0]
    assert table == S.markdown_tables(), (
        "docs/strategies.md is out of date: paste the output of "
        "python -c 'from backend.strategies import markdown_tables; print(markdown_tables(), end=\"\")'"
    )


# --------------------------------------------------------------------------------------------------
# exact values, hand computed

P3 = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.4, 0.4, 0.2]])


def test_least_confidence_exact() -> None:
    # (1 - pmax) * 3/2
    np.testing.assert_allclose(score("least_confidence", P3), [0.75, 0.0, 1.0, 0.9])


def test_margin_exact() -> None:
    np.testing.assert_allclose(score("margin", P3), [0.8, 0.0, 1.0, 1.0])


def test_entropy_exact() -> None:
    h0 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3)
    h3 = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)) / math.log(3)
    np.testing.assert_allclose(score("entropy", P3), [h0, 0.0, 1.0, h3])
    assert h0 == pytest.approx(0.9372305632161296)


def test_vote_entropy_exact() -> None:
    # 3 members, 3 classes; votes per row: (0,1,2) (0,0,1) (2,2,2)
    c = np.array(
        [
            [[0.8, 0.1, 0.1], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]],
            [[0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]],
            [[0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]],
        ]
    )
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    np.testing.assert_allclose(score("vote_entropy", committee=c), [1.0, h, 0.0])
    # 2 members over 4 classes: normalized by log(min(k, m)) = log 2, so a split vote is 1.
    c2 = np.array([[[0.7, 0.1, 0.1, 0.1]], [[0.1, 0.7, 0.1, 0.1]]])
    np.testing.assert_allclose(score("vote_entropy", committee=c2), [1.0])


def test_consensus_entropy_exact() -> None:
    c = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])
    np.testing.assert_allclose(score("consensus_entropy", committee=c), [1.0, 1.0])
    c = np.array([[[0.8, 0.2]], [[0.6, 0.4]]])
    q = 0.7
    expected = -(q * math.log(q) + (1 - q) * math.log(1 - q)) / math.log(2)
    np.testing.assert_allclose(score("consensus_entropy", committee=c), [expected])


def test_kl_divergence_exact() -> None:
    c = np.array([[[0.8, 0.2], [1.0, 0.0]], [[0.4, 0.6], [0.0, 1.0]]])
    q = np.array([0.6, 0.4])
    d0 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    d1 = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4)
    assert q.sum() == 1.0
    # Row 2: two certain members that disagree reach the bound log m.
    np.testing.assert_allclose(score("kl_divergence", committee=c), [max(d0, d1) / math.log(2), 1.0])
    np.testing.assert_allclose(score("kl_divergence", committee=c, reduce="mean"), [(d0 + d1) / 2 / math.log(2), 1.0])


def test_multi_label_exact() -> None:
    p = np.array([[0.5, 1.0, 0.9], [0.0, 0.0, 0.0]])
    inp = ScoringInput(proba=p, multi_label=True)
    per = np.array([1.0, 0.0, 0.2])  # 1 - |2p - 1|
    np.testing.assert_allclose(S.informativeness("margin", inp), [per.mean(), 0.0])
    np.testing.assert_allclose(S.informativeness("least_confidence", inp), [per.mean(), 0.0])
    np.testing.assert_allclose(S.informativeness("margin", inp, aggregate="max"), [1.0, 0.0])
    hb = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    np.testing.assert_allclose(S.informativeness("entropy", inp), [(1 + hb) / 3, 0.0])
    # Committee per label: label 0 split 1 vs 1, label 1 agreed.
    c = np.array([[[0.9, 0.2]], [[0.1, 0.3]]])
    inp = ScoringInput(proba=c.mean(axis=0), committee=c, multi_label=True)
    np.testing.assert_allclose(S.informativeness("vote_entropy", inp), [0.5])
    with pytest.raises(ValueError, match="aggregate"):
        S.informativeness("margin", ScoringInput(proba=p, multi_label=True), aggregate="median")


def test_float32_input_matches_float64() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(4), 1000)
    for name in UNCERTAINTY:
        np.testing.assert_allclose(score(name, p.astype(np.float32)), score(name, p), atol=1e-5)


def test_blocked_computation_matches_small() -> None:
    # More rows than one block, so the block boundaries are exercised.
    rng = np.random.default_rng(1)
    c = rng.dirichlet(np.ones(3), (3, S._BLOCK + 7))
    full = score("kl_divergence", committee=c)
    np.testing.assert_allclose(full[-7:], score("kl_divergence", committee=c[:, -7:]))
    np.testing.assert_allclose(score("entropy", c[0])[-7:], score("entropy", c[0][-7:]))


# --------------------------------------------------------------------------------------------------
# properties


@settings(max_examples=60, deadline=None)
@given(p=proba_arrays())
def test_uncertainty_bounds_and_permutation(p: np.ndarray) -> None:
    perm = np.random.default_rng(p.shape[1]).permutation(p.shape[1])
    for name in UNCERTAINTY:
        v = score(name, p)
        assert v.shape == (p.shape[0],)
        assert np.all((v >= 0) & (v <= 1))
        np.testing.assert_allclose(score(name, p[:, perm]), v, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 50))
def test_uncertainty_max_at_uniform_zero_at_one_hot(k: int) -> None:
    uniform = np.full((1, k), 1 / k)
    one_hot = np.eye(k)
    for name in UNCERTAINTY:
        assert score(name, uniform)[0] == pytest.approx(1.0)
        np.testing.assert_array_equal(score(name, one_hot), np.zeros(k))


@settings(max_examples=40, deadline=None)
@given(p=proba_arrays())
def test_uncertainty_never_exceeds_uniform(p: np.ndarray) -> None:
    k = p.shape[1]
    for name in UNCERTAINTY:
        assert score(name, p).max() <= score(name, np.full((1, k), 1 / k))[0] + 1e-12


@settings(max_examples=60, deadline=None)
@given(c=committees())
def test_committee_bounds_and_permutation(c: np.ndarray) -> None:
    perm = np.random.default_rng(c.shape[2]).permutation(c.shape[2])
    for name in ("consensus_entropy", "kl_divergence"):
        v = score(name, committee=c)
        assert np.all((v >= 0) & (v <= 1))
        np.testing.assert_allclose(score(name, committee=c[:, :, perm]), v, atol=1e-12)
    v = score("kl_divergence", committee=c, reduce="mean")
    assert np.all((v >= 0) & (v <= 1))
    v = score("vote_entropy", committee=c)
    assert np.all((v >= 0) & (v <= 1))
    # Member order never matters.
    for name in COMMITTEE:
        np.testing.assert_allclose(score(name, committee=c[::-1]), score(name, committee=c), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(p=proba_arrays(), m=st.integers(2, 6))
def test_zero_disagreement_when_committee_agrees(p: np.ndarray, m: int) -> None:
    c = np.stack([p] * m)
    assert np.all(score("vote_entropy", committee=c) == 0.0)
    np.testing.assert_allclose(score("kl_divergence", committee=c), 0.0, atol=1e-12)
    np.testing.assert_allclose(score("kl_divergence", committee=c, reduce="mean"), 0.0, atol=1e-12)
    # Consensus entropy of an agreeing committee is the members' own entropy.
    np.testing.assert_allclose(score("consensus_entropy", committee=c), score("entropy", p), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(p=hnp.arrays(np.float64, (8, 3), elements=st.floats(0, 1)), agg=st.sampled_from(["mean", "max"]))
def test_multi_label_bounds(p: np.ndarray, agg: str) -> None:
    inp = ScoringInput(proba=p, multi_label=True)
    for name in UNCERTAINTY:
        v = S.informativeness(name, inp, aggregate=agg)
        assert np.all((v >= 0) & (v <= 1))


def test_random_deterministic_for_seed() -> None:
    p = np.full((50, 2), 0.5)
    a = S.informativeness("random", ScoringInput(p, seed=3))
    np.testing.assert_array_equal(a, S.informativeness("random", ScoringInput(p, seed=3)))
    assert not np.array_equal(a, S.informativeness("random", ScoringInput(p, seed=4)))
    assert np.all((a >= 0) & (a <= 1))
    assert S.informativeness("random", ScoringInput(np.zeros((0, 2)))).shape == (0,)


# --------------------------------------------------------------------------------------------------
# features: density, clusters, diversity, coreset


def blobs(n_per: int = 40, centers: int = 5, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=20, size=(centers, d))
    truth = np.repeat(np.arange(centers), n_per)
    return c[truth] + rng.normal(size=(len(truth), d)), truth


def test_cluster_ids_recovers_blobs_dense_and_sparse() -> None:
    x, truth = blobs()
    for feats in (x, sp.csr_matrix(np.abs(x))):
        ids = S.cluster_ids(feats, 5, seed=1)
        assert ids.shape == truth.shape and ids.dtype.kind == "i"
        np.testing.assert_array_equal(ids, S.cluster_ids(feats, 5, seed=1))
    ids = S.cluster_ids(x, 5, seed=1)
    # Each true blob maps to exactly one cluster and vice versa.
    assert {len(set(ids[truth == t])) for t in range(5)} == {1}
    assert len(set(ids)) == 5
    assert S.cluster_ids(x[:3], 10).tolist() == [0, 1, 2]
    assert S.cluster_ids(np.zeros((0, 4)), 3).shape == (0,)
    with pytest.raises(ValueError, match="n_clusters"):
        S.cluster_ids(x, 0)


def test_small_sparse_features_are_clustered_dense_with_the_same_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF-IDF + embedding candidates (~40% non-zero) are clustered dense, which is faster: same ids."""
    rng = np.random.default_rng(3)
    tfidf = sp.random(600, 300, density=0.02, random_state=4, dtype=np.float32)
    x = sp.hstack([tfidf, rng.normal(size=(600, 64)).astype(np.float32)], format="csr")
    dense = S.cluster_ids(x, 20, seed=5)
    monkeypatch.setattr(S, "DENSE_CLUSTER_CELLS", 0)  # scikit-learn's sparse path
    sparse = S.cluster_ids(x, 20, seed=5)
    np.testing.assert_array_equal(dense, sparse)
    assert len(set(dense.tolist())) == 20


def test_diversity_spreads_over_clusters() -> None:
    x, truth = blobs(n_per=20, centers=6)
    rng = np.random.default_rng(0)
    top1 = rng.uniform(0.5, 0.9, len(x))
    p = np.c_[top1, (1 - top1) * 0.6, (1 - top1) * 0.4]
    # Blob 0 is by far the most uncertain: plain top-k would take all 6 picks from it.
    p[truth == 0] = [0.34, 0.33, 0.33]
    inp = ScoringInput(p, features=x, seed=2)
    top = S.select_batch("margin", inp, 6)
    assert set(truth[top]) == {0}
    picks = S.select_batch("diversity", inp, 6)
    assert len(set(picks.tolist())) == 6
    assert set(truth[picks]) == set(range(6))
    np.testing.assert_array_equal(picks, S.select_batch("diversity", inp, 6))
    # Picks are in priority order (margin alone with typical=0; margin x typicality by default).
    m = S.informativeness("margin", inp)
    plain = S.select_batch("diversity", inp, 6, typical=0.0)
    assert set(truth[plain]) == set(range(6)) and np.all(np.diff(m[plain]) <= 0)
    # Sparse input gives a valid, spread batch too.
    sp_picks = S.select_batch("diversity", ScoringInput(p, features=sp.csr_matrix(x), seed=2), 6)
    assert set(truth[sp_picks]) == set(range(6))


def test_diversity_round_robin_with_given_clusters() -> None:
    inf = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.95])
    clusters = np.array([0, 0, 0, 1, 1, 2])
    # Round 1: best of each cluster by informativeness: 5 (0.95), 0 (0.9), 4 (0.2); round 2: 1, 3; then 2.
    np.testing.assert_array_equal(S.round_robin(inf, clusters, 6), [5, 0, 4, 1, 3, 2])
    p = np.c_[1 - inf / 2, inf / 2]  # margin = inf
    picks = S.select_batch("diversity", ScoringInput(p), 3, clusters=clusters)
    np.testing.assert_array_equal(picks, [5, 0, 4])


def test_typicality_exact_on_a_line() -> None:
    x = np.array([[0.0], [0.1], [0.2], [5.0]])
    # k = 1: nearest-neighbour distances 0.1, 0.1, 0.1, 4.8 -> 1 / d, scaled to max 1.
    np.testing.assert_allclose(S.typicality(x, k=1), [1.0, 1.0, 1.0, 0.1 / 4.8])


def test_typicality_of_a_repeated_text_ties_with_the_densest_rows() -> None:
    x = np.array([[0.0]] * 5 + [[1.0], [1.5], [3.0], [6.0], [10.0]])
    # k = 1: the five copies are 0 apart; the rest 0.5, 0.5, 1.5, 3, 4 from their nearest. The floor
    # (5% quantile of the positive distances) is 0.5, so the copies count as 0.5, not 0.
    np.testing.assert_allclose(S.typicality(x, k=1), [1.0] * 7 + [1 / 3, 1 / 6, 1 / 8])


def test_typicality_matches_brute_force_and_samples_large_inputs() -> None:
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(3).standard_normal((300, 5))
    dist, _ = NearestNeighbors(n_neighbors=21).fit(x).kneighbors(x)
    brute = 1.0 / dist[:, 1:].mean(axis=1)  # column 0 is the row itself
    brute = 1.0 / np.maximum(1.0 / brute, np.quantile(1.0 / brute, 0.05))
    np.testing.assert_allclose(S.typicality(x), brute / brute.max(), rtol=1e-6)
    np.testing.assert_allclose(S.typicality(sp.csr_matrix(x)), brute / brute.max(), rtol=1e-6)
    sampled = S.typicality(x, n_ref=100, seed=1)  # neighbours among 100 rows drawn with the seed
    assert sampled.shape == (300,) and sampled.max() == 1.0 and (sampled > 0).all()
    np.testing.assert_array_equal(sampled, S.typicality(x, n_ref=100, seed=1))


def test_diversity_weighs_informativeness_by_typicality() -> None:
    # One cluster: row 0 is the most uncertain but an outlier; rows 1-9 sit together.
    x = np.r_[[[100.0, 0.0]], np.random.default_rng(0).normal(0, 0.1, (9, 2))]
    inf = np.array([0.95, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    p = np.c_[1 - inf / 2, inf / 2]  # margin = inf
    inp = ScoringInput(p, features=x)
    clusters = np.zeros(10, dtype=np.int64)
    assert S.select_batch("diversity", inp, 1, clusters=clusters).tolist() == [1]
    assert S.select_batch("diversity", inp, 1, clusters=clusters, typical=0.0).tolist() == [0]
    # Picks rank first in the informativeness; the rest keep half their margin.
    banded = S.informativeness("diversity", inp, clusters=clusters, batch_size=1)
    assert banded[1] == 1.0 and banded[0] == pytest.approx(0.475)


def test_batch_informativeness_puts_picks_first() -> None:
    x, truth = blobs(n_per=30, centers=4)
    p = np.random.default_rng(5).dirichlet(np.ones(2), len(x))
    inp = ScoringInput(p, features=x, labeled_features=x[:3], seed=1)
    for name in ("diversity", "coreset"):
        picks = S.select_batch(name, inp, 8)
        inf = S.informativeness(name, inp, batch_size=8)
        assert np.all((inf >= 0) & (inf <= 1))
        # Label Studio serves lowest 1 - informativeness first: exactly the picks, in order.
        np.testing.assert_array_equal(np.argsort(1 - inf, kind="stable")[:8], picks)
        assert inf[picks].min() > 0.5 >= np.delete(inf, picks).max()


def test_coreset_exact_k_center() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0], [10.5]])
    inp = ScoringInput(np.full((5, 2), 0.5), features=x, labeled_features=np.array([[0.0]]))
    # Farthest from {0}: 10.5; then farthest from {0, 10.5}: 2 (dist 2) ... then 1 (dist 1), then 10 (0.5).
    np.testing.assert_array_equal(S.select_batch("coreset", inp, 4), [4, 2, 1, 3])
    sparse = ScoringInput(np.full((5, 2), 0.5), features=sp.csr_matrix(x), labeled_features=sp.csr_matrix([[0.0]]))
    np.testing.assert_array_equal(S.select_batch("coreset", sparse, 4), [4, 2, 1, 3])
    # Duplicate rows never produce a repeated pick.
    dup = ScoringInput(np.full((4, 2), 0.5), features=np.zeros((4, 2)))
    assert sorted(S.select_batch("coreset", dup, 4).tolist()) == [0, 1, 2, 3]


def test_density_exact_and_bounds() -> None:
    # Three identical rows and one orthogonal row; n_ref covers the whole pool, so the average is exact.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = np.full((4, 2), 0.5)  # entropy 1 everywhere, so informativeness == density
    v = S.informativeness("density", ScoringInput(p, features=x), n_ref=4, gamma=1.0)
    far = math.exp(-1.0)
    np.testing.assert_allclose(v, [(3 + far) / 4] * 3 + [(1 + 3 * far) / 4])
    vs = S.informativeness("density", ScoringInput(p, features=sp.csr_matrix(x)), n_ref=4)
    np.testing.assert_allclose(vs, v)
    x, _ = blobs()
    p = np.random.default_rng(0).dirichlet(np.ones(3), len(x))
    inp = ScoringInput(p, features=x, seed=4)
    a = S.informativeness("density", inp, n_ref=50)
    assert np.all((a >= 0) & (a <= S.informativeness("entropy", inp) + 1e-12))
    np.testing.assert_array_equal(a, S.informativeness("density", inp, n_ref=50))


# --------------------------------------------------------------------------------------------------
# expected error and variance reduction


def small_problem(seed: int = 0) -> ScoringInput:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 3))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
    lab = np.r_[np.flatnonzero(y == 0)[:4], np.flatnonzero(y == 1)[:4]]
    model = LogisticRegression().fit(x[lab], y[lab])
    return ScoringInput(
        proba=model.predict_proba(x),
        features=x,
        labeled_features=x[lab],
        labeled_y=y[lab],
        make_estimator=LogisticRegression,
        seed=seed,
    )


def test_expected_error_bounded_and_banded() -> None:
    inp = small_problem()
    v = S.informativeness("expected_error", inp, n_candidates=6, n_eval=40)
    assert np.all((v >= 0) & (v <= 1))
    cand = S.priority_order(S.informativeness("entropy", inp), 6)
    assert v[cand].min() >= 0.5 >= np.delete(v, cand).max()
    np.testing.assert_array_equal(v, S.informativeness("expected_error", inp, n_candidates=6, n_eval=40))
    with pytest.raises(ValueError, match="make_estimator"):
        S.informativeness("expected_error", ScoringInput(inp.proba, features=inp.features))


def test_expected_error_exact_single_candidate() -> None:
    inp = small_problem()
    v = S.informativeness("expected_error", inp, n_candidates=1, n_eval=120)
    c = int(S.priority_order(S.informativeness("entropy", inp), 1)[0])
    ee = 0.0
    for label in (0, 1):
        m = LogisticRegression().fit(np.vstack([inp.labeled_features, inp.features[c]]), np.r_[inp.labeled_y, label])
        ee += inp.proba[c, label] * np.mean(1 - m.predict_proba(inp.features).max(axis=1))
    assert v[c] == pytest.approx(0.5 + 0.5 * (1 - 2 * ee))


def test_variance_reduction_matches_brute_force_trace() -> None:
    inp = small_problem(1)
    v = S.informativeness("variance_reduction", inp, n_candidates=120, n_eval=120)
    assert np.all((v >= 0.5) & (v <= 1))
    # Brute force: tr((A + w z z^T)^{-1} I_U) for one row, with A built exactly as documented.
    z = np.c_[inp.features, np.ones(120)]
    w = (inp.proba * (1 - inp.proba)).sum(axis=1)
    zl = np.c_[inp.labeled_features, np.ones(8)]
    est = LogisticRegression().fit(inp.labeled_features, inp.labeled_y)
    pl = est.predict_proba(inp.labeled_features)
    a = np.eye(4) + (zl * (pl * (1 - pl)).sum(axis=1)[:, None]).T @ zl
    iu = (z * w[:, None]).T @ z / 120
    before = np.trace(np.linalg.solve(a, iu))
    for i in (0, 17, 99):
        after = np.trace(np.linalg.solve(a + w[i] * np.outer(z[i], z[i]), iu))
        assert v[i] == pytest.approx(0.5 + 0.5 * (before - after) / before)


def test_variance_reduction_sparse_wide_features() -> None:
    rng = np.random.default_rng(0)
    x = sp.random(200, 1000, density=0.01, format="csr", random_state=1)
    p = rng.dirichlet(np.ones(3), 200)
    inp = ScoringInput(p, features=x, labeled_features=x[:5], seed=0)
    v = S.informativeness("variance_reduction", inp, max_dim=32, n_candidates=50, n_eval=100)
    assert np.all((v >= 0) & (v <= 1))
    assert len(S.select_batch("variance_reduction", inp, 10, max_dim=32)) == 10


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name", PROBA_MEASURES)
def test_nan_row_is_named(name: str) -> None:
    p = np.full((4, 3), 1 / 3)
    p[2, 1] = np.nan
    c = np.stack([p, np.full((4, 3), 1 / 3)])
    with pytest.raises(ValueError, match=r"row 2 is not finite.*nan"):
        score(name, p, committee=c[::-1] if name in COMMITTEE else None)


@pytest.mark.parametrize("name", UNCERTAINTY)
def test_rows_not_summing_to_one(name: str) -> None:
    p = np.array([[0.5, 0.5], [0.6, 0.6], [0.1, 0.9]])
    with pytest.raises(ValueError, match=r"row 1 sums to 1\.2"):
        score(name, p)
    with pytest.raises(ValueError, match=r"row 0 has values outside \[0, 1\]"):
        score(name, np.array([[1.5, -0.5]]))
    # Within tolerance is accepted (float32 models).
    assert score(name, np.array([[0.5, 0.50001]])).shape == (1,)


def test_single_class_and_shapes() -> None:
    with pytest.raises(ValueError, match="single class"):
        score("entropy", np.ones((3, 1)))
    with pytest.raises(ValueError, match="2-D"):
        score("margin", np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="numeric"):
        score("margin", np.array([["a", "b"]]))
    # random needs no probabilities at all, so a single class is fine there.
    assert S.informativeness("random", ScoringInput(np.ones((3, 1)))).shape == (3,)


@pytest.mark.parametrize("name", [n for n in S.STRATEGY_NAMES if n not in ("expected_error",)])
def test_empty_pool(name: str) -> None:
    inp = ScoringInput(
        proba=np.zeros((0, 3)), committee=np.zeros((2, 0, 3)), features=np.zeros((0, 4)), labeled_features=None
    )
    assert S.informativeness(name, inp).shape == (0,)
    assert S.select_batch(name, inp, 5).shape == (0,)


def test_committee_problems() -> None:
    p = np.full((3, 2), 0.5)
    for name in COMMITTEE:
        with pytest.raises(ValueError, match="1 member"):
            score(name, p, committee=p[None])
        with pytest.raises(ValueError, match="needs committee"):
            score(name, p)
    with pytest.raises(ValueError, match="committee covers 3 rows but proba has 2"):
        score("vote_entropy", p[:2], committee=np.stack([p, p]))
    bad = np.stack([p, np.array([[0.5, 0.5], [0.9, 0.9], [0.5, 0.5]])])
    with pytest.raises(ValueError, match="committee member 1 row 1 sums"):
        score("kl_divergence", committee=bad)


def test_k_larger_than_pool_and_bad_k() -> None:
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])
    x = np.arange(6.0).reshape(3, 2)
    inp = ScoringInput(p, features=x)
    np.testing.assert_array_equal(S.select_batch("margin", inp, 10), [1, 2, 0])
    for name in ("diversity", "coreset", "random", "density"):
        assert sorted(S.select_batch(name, inp, 10).tolist()) == [0, 1, 2]
    assert S.select_batch("margin", inp, 0).shape == (0,)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a non-negative integer"):
            S.select_batch("margin", inp, bad)  # type: ignore[arg-type]


def test_unknown_params_and_missing_inputs() -> None:
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for strategy 'margin'"):
        S.informativeness("margin", ScoringInput(p), beta=2)
    with pytest.raises(ValueError, match="needs features"):
        S.informativeness("density", ScoringInput(p))
    with pytest.raises(ValueError, match="features has 2 rows but the pool"):
        S.informativeness("density", ScoringInput(p, features=np.zeros((2, 2))))
    with pytest.raises(ValueError, match="features row 1 is not finite"):
        S.select_batch("coreset", ScoringInput(p, features=np.array([[0, 0], [np.inf, 0], [1, 1]])), 2)


def test_priority_order_ties_by_index() -> None:
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    np.testing.assert_array_equal(S.priority_order(s, 4), [1, 3, 0, 2])
    np.testing.assert_array_equal(S.priority_order(s), [1, 3, 0, 2, 5, 4])
    np.testing.assert_array_equal(S.select_batch("margin", ScoringInput(np.full((5, 2), 0.5)), 3), [0, 1, 2])


def test_sparse_features_everywhere() -> None:
    inp = small_problem(2)
    x = sp.csr_matrix(np.abs(inp.features))
    lab = sp.csr_matrix(np.abs(inp.labeled_features))
    sparse = ScoringInput(
        inp.proba, features=x, labeled_features=lab, labeled_y=inp.labeled_y, make_estimator=LogisticRegression
    )
    dense = ScoringInput(
        inp.proba,
        features=x.toarray(),
        labeled_features=lab.toarray(),
        labeled_y=inp.labeled_y,
        make_estimator=LogisticRegression,
    )
    # coreset's distances are square roots of ||x||^2 - 2 x.u + ||u||^2: a row that duplicates a
    # labeled row gets sqrt(rounding) ~ 1e-8 instead of 0, differently for CSR and dense.
    for name, kw, atol in (
        ("density", {}, 1e-9),
        ("coreset", {}, 1e-6),
        ("variance_reduction", {}, 1e-9),
        ("expected_error", {"n_candidates": 2, "n_eval": 30}, 1e-9),
    ):
        np.testing.assert_allclose(
            S.informativeness(name, sparse, **kw), S.informativeness(name, dense, **kw), atol=atol, err_msg=name
        )


def test_multi_label_feature_strategies() -> None:
    x, truth = blobs(n_per=10, centers=3)
    p = np.random.default_rng(0).random((len(x), 4))
    inp = ScoringInput(p, features=x, multi_label=True)
    for name in ("density", "diversity", "coreset", "variance_reduction", "random"):
        v = S.informativeness(name, inp)
        assert v.shape == (len(x),) and np.all((v >= 0) & (v <= 1))
    assert len(set(S.select_batch("diversity", inp, 3).tolist())) == 3
    with pytest.raises(ValueError, match="single-label"):
        S.informativeness("expected_error", inp)


class _CachedCommittee:
    """The parts of a modAL Committee its disagreement functions use, over fixed probabilities."""

    def __init__(self, proba: np.ndarray) -> None:
        self.proba = proba
        self.classes_ = np.arange(proba.shape[2])

    def __len__(self) -> int:
        return self.proba.shape[0]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.proba.shape[0]))

    def vote(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.proba, axis=2).T

    def vote_proba(self, x: np.ndarray) -> np.ndarray:
        return self.proba.transpose(1, 0, 2)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.proba.mean(axis=0)


def test_matches_modal_up_to_normalization() -> None:
    modal_unc = pytest.importorskip("modAL.uncertainty")
    modal_dis = pytest.importorskip("modAL.disagreement")
    c = np.random.default_rng(0).dirichlet(np.ones(4), (5, 300))
    p, x = c[0], np.empty((300, 0))
    np.testing.assert_allclose(score("least_confidence", p), modal_unc._proba_uncertainty(p) * 4 / 3, atol=1e-12)
    np.testing.assert_allclose(score("margin", p), 1 - modal_unc._proba_margin(p), atol=1e-12)
    np.testing.assert_allclose(score("entropy", p), modal_unc._proba_entropy(p) / math.log(4), atol=1e-12)
    cc = _CachedCommittee(c)
    np.testing.assert_allclose(
        score("vote_entropy", committee=c), modal_dis.vote_entropy(cc, x) / math.log(4), atol=1e-12
    )
    np.testing.assert_allclose(
        score("consensus_entropy", committee=c), modal_dis.consensus_entropy(cc, x) / math.log(4), atol=1e-12
    )
    np.testing.assert_allclose(
        score("kl_divergence", committee=c), modal_dis.KL_max_disagreement(cc, x) / math.log(5), atol=1e-12
    )
