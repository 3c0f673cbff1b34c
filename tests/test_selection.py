"""Tests for backend.selection: the one scoring sequence (cycle, /predict, stream scoring, simulate).

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI, CC BY 4.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from backend import selection, strategies
from backend.labelconfig import parse_label_config
from backend.learner import Learner
from backend.selection import Prediction
from tests.conftest import REPO

SPEC = parse_label_config((REPO / "label_config" / "spam.xml").read_text())
MULTI = parse_label_config((REPO / "label_config" / "multilabel.xml").read_text())


class CountingLearner:
    """The real learner, counting the calls that cost (probabilities, committee)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.calls: dict[str, int] = {"predict_proba": 0, "committee_proba": 0, "transform": 0}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.learner, name)
        if name in self.calls:

            def counted(*args: Any, **kw: Any) -> Any:
                self.calls[name] += 1
                return attr(*args, **kw)

            return counted
        return attr


# -- the prediction record ---------------------------------------------------------------------


def test_prediction_json_is_label_studios_import_format() -> None:
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["spam"]}}]
    p = Prediction(task=7, result=result, score=0.25, model_version="v1", cluster=3)
    assert p.to_json() == {"task": 7, "result": result, "score": 0.25, "cluster": 3, "model_version": "v1"}
    assert list(p.to_json()) == ["task", "result", "score", "cluster", "model_version"]
    # /predict answers positionally (no task) and stream scoring writes no cluster.
    assert Prediction(None, [], 0.5, "v2").to_json() == {"result": [], "score": 0.5, "model_version": "v2"}


def test_selection_predictions_map_rows_to_task_ids() -> None:
    sel = selection.Selection(
        rows=np.array([2, 0]),
        informativeness=np.array([0.9, 0.4]),
        scores=np.array([0.1, 0.6]),
        clusters=np.array([1, 0]),
        labels=[["spam"], ["no_spam"]],
        mean_informativeness=0.5,
    )
    preds = sel.predictions(SPEC, [10, 11, 12], "v3")
    assert [p.to_json() for p in preds] == [
        {
            "task": 12,
            "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["spam"]}}],
            "score": 0.1,
            "cluster": 1,
            "model_version": "v3",
        },
        {
            "task": 10,
            "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["no_spam"]}}],
            "score": 0.6,
            "cluster": 0,
            "model_version": "v3",
        },
    ]


# -- predict: /predict and stream scoring ------------------------------------------------------


@pytest.mark.parametrize(("strategy", "measure"), [("entropy", "entropy"), ("diversity", "margin")])
def test_predict_scores_each_row_with_the_row_measure(
    learner: Learner, sms: tuple[list[str], list[str]], strategy: str, measure: str
) -> None:
    pool = sms[0][100:140]
    preds = selection.predict(learner, SPEC, pool, strategy, "v9", task_ids=list(range(500, 540)), seed=0)
    proba = learner.predict_proba(learner.transform(pool))
    info = strategies.informativeness(measure, strategies.ScoringInput(proba=proba))
    labels = learner.predict_labels(proba)
    assert [p.task for p in preds] == list(range(500, 540))
    assert [p.score for p in preds] == [float(1.0 - v) for v in info]
    assert [p.result[0]["value"]["choices"] for p in preds] == labels
    assert {p.model_version for p in preds} == {"v9"} and {p.cluster for p in preds} == {None}


def test_committee_is_computed_only_when_the_strategy_reads_one(
    learner: Learner, sms: tuple[list[str], list[str]]
) -> None:
    pool = sms[0][100:400]
    for name, committee_calls in (("margin", 0), ("diversity", 0), ("vote_entropy", 1)):
        spy = CountingLearner(learner)
        selection.select(spy, pool, name, 10, seed=0, multi_label=False)  # type: ignore[arg-type]
        # One chunk: probabilities once, committee once if needed, never recomputed for the slice.
        assert spy.calls == {"predict_proba": 1, "committee_proba": committee_calls, "transform": 1}, name
    spy = CountingLearner(learner)
    selection.predict(spy, SPEC, pool[:5], "kl_divergence", "v")  # type: ignore[arg-type]
    assert spy.calls == {"predict_proba": 1, "committee_proba": 1, "transform": 1}


# -- select: the cycle's queue slice and simulate's batch --------------------------------------


@pytest.mark.parametrize("name", ["margin", "entropy", "vote_entropy", "random", "diversity"])
def test_chunked_scoring_equals_one_shot(
    learner: Learner, sms: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    pool = sms[0][100:]
    whole = selection.select(learner, pool, name, 50, seed=0, multi_label=False)
    monkeypatch.setattr(selection, "SCORE_CHUNK", 97)  # many uneven chunks
    chunked = selection.select(learner, pool, name, 50, seed=0, multi_label=False)
    if name == "random":
        assert len(set(chunked.rows.tolist())) == 50  # random draws differ per chunk, but stay distinct
        return
    assert chunked.rows.tolist() == whole.rows.tolist()
    np.testing.assert_allclose(chunked.informativeness, whole.informativeness)
    assert chunked.mean_informativeness == pytest.approx(whole.mean_informativeness)


def test_pointwise_selection_is_the_top_of_the_measure(learner: Learner, sms: tuple[list[str], list[str]]) -> None:
    pool = sms[0][100:600]
    sel = selection.select(learner, pool, "margin", 25, seed=0, multi_label=False)
    full = strategies.informativeness(
        "margin", strategies.ScoringInput(proba=learner.predict_proba(learner.transform(pool)))
    )
    assert sel.rows.tolist() == strategies.priority_order(full, 25).tolist()
    np.testing.assert_allclose(sel.informativeness, full[sel.rows])
    np.testing.assert_array_equal(sel.scores, 1.0 - sel.informativeness)
    assert sel.mean_informativeness == pytest.approx(float(full.mean()))
    assert list(np.diff(sel.informativeness) <= 1e-12) == [True] * 24  # most informative first
    assert sel.labels is not None and len(sel.labels) == 25
    assert all(lab[0] in ("spam", "no_spam") for lab in sel.labels)
    assert sel.clusters.shape == (25,)


@pytest.mark.parametrize(("depth", "expected"), [(12, 12), (80, selection.MAX_CLUSTERS)])
def test_diversity_takes_one_cluster_per_pick_up_to_the_cap(
    learner: Learner, sms: tuple[list[str], list[str]], depth: int, expected: int
) -> None:
    """Cluster-margin: as many clusters as picks (at most MAX_CLUSTERS), each pick from its own cluster."""
    pool = sms[0][100:1100]
    sel = selection.select(learner, pool, "diversity", depth, seed=0, multi_label=False)
    assert len(sel.rows) == depth
    first_round = sel.clusters[:expected]
    assert len(set(first_round.tolist())) == expected  # the first `expected` picks: one per cluster
    assert len(set(sel.clusters.tolist())) == expected


def _two_views() -> tuple[list[str], np.ndarray]:
    """60 texts in two word blocks (rows 0-29, 30-59) whose embeddings group them by parity instead.

    The blocks share no word (TF-IDF distance sqrt(2)); the parity groups are 0.46 apart in the
    embedding, so [TF-IDF | embedding] splits by block and the embedding alone by parity."""
    texts = [f"invoice payment overdue {i}" for i in range(30)] + [f"football match tonight {i}" for i in range(30)]
    rng = np.random.default_rng(0)
    E = np.zeros((60, 256), dtype=np.float32)
    E[0::2, 0] = 1.0
    E[1::2, :2] = np.array([1.0, 0.5]) / np.sqrt(1.25)
    E += 0.005 * rng.standard_normal(E.shape).astype(np.float32)
    return texts, E.astype(np.float16)


def test_clusters_are_found_in_the_embedding_space_when_the_pool_has_it(learner: Learner) -> None:
    """With the pool cache's embeddings, k-means runs on them (unit rows), not on [TF-IDF | embedding]:
    the cluster ids are exactly those of the embeddings of the candidates, in priority order."""
    texts, E = _two_views()
    sel = selection.select(learner, texts, "diversity", 2, seed=0, multi_label=False, embeddings=E)
    info = strategies.margin(learner.predict_proba(learner.transform(texts, E)))
    ranked = strategies.priority_order(info, None)
    want = strategies.cluster_ids(selection.unit_rows(E[ranked]), 2, seed=0)
    position = {int(row): j for j, row in enumerate(ranked)}
    assert sel.clusters.tolist() == [int(want[position[int(r)]]) for r in sel.rows]
    assert sorted(int(r) % 2 for r in sel.rows) == [0, 1]  # one pick from each embedding group


def test_coreset_measures_distance_to_the_labeled_rows_in_the_embedding_space(learner: Learner) -> None:
    """k-center greedy's first pick is the pool row farthest from every labeled row in embedding space."""
    texts, E = _two_views()
    labeled = [f"football match tonight {i}" for i in range(60, 66)]
    labeled_y = ["spam", "no_spam"] * 3
    lab_E = np.tile(E[1], (6, 1))  # the odd rows' group; in words, the football block (rows 30-59)
    sel = selection.select(
        learner,
        texts,
        "coreset",
        1,
        seed=0,
        multi_label=False,
        labeled_inputs=labeled,
        labeled_y=labeled_y,
        embeddings=E,
        labeled_embeddings=lab_E,
    )
    U, L = selection.unit_rows(E), selection.unit_rows(lab_E)
    far = np.linalg.norm(U[:, None, :] - L[None, :, :], axis=2).min(axis=1)
    assert sel.rows.tolist() == [int(np.argmax(far))]
    assert int(np.argmax(far)) % 2 == 0


@pytest.mark.parametrize("name", [n for n, e in strategies.REGISTRY.items() if not e.pointwise])
def test_pool_level_strategies_pick_distinct_tasks(
    learner: Learner, sms: tuple[list[str], list[str]], name: str
) -> None:
    texts, y = sms
    sel = selection.select(
        learner, texts[100:900], name, 20, seed=0, multi_label=False, labeled_inputs=texts[:100], labeled_y=y[:100]
    )
    assert len(sel.rows) == 20 and len(set(sel.rows.tolist())) == 20
    assert all(0 <= i < 800 for i in sel.rows)
    assert ((sel.informativeness >= 0.0) & (sel.informativeness <= 1.0)).all()
    assert list(np.diff(sel.informativeness) <= 1e-12) == [True] * 19


def test_strategy_params_reach_the_strategy(learner: Learner, sms: tuple[list[str], list[str]]) -> None:
    pool = sms[0][100:600]
    X = learner.transform(pool)
    proba, committee = learner.predict_proba(X), learner.committee_proba(X)
    mean_kl = strategies.informativeness(
        "kl_divergence", strategies.ScoringInput(proba=proba, committee=committee), reduce="mean"
    )
    sel = selection.select(learner, pool, "kl_divergence", 15, seed=0, multi_label=False, params={"reduce": "mean"})
    assert sel.rows.tolist() == strategies.priority_order(mean_kl, 15).tolist()
    preds = selection.predict(learner, SPEC, pool[:5], "kl_divergence", "v", params={"reduce": "mean"})
    assert [p.score for p in preds] == [float(1.0 - v) for v in mean_kl[:5]]
    # A pool-level strategy gets its params; the prefilter and /predict's row measure do not.
    plain = selection.select(learner, pool, "density", 15, seed=0, multi_label=False)
    tuned = selection.select(learner, pool, "density", 15, seed=0, multi_label=False, params={"beta": 8.0})
    assert plain.rows.tolist() != tuned.rows.tolist()
    assert selection.predict(learner, SPEC, pool[:5], "density", "v", params={"beta": 8.0}) == selection.predict(
        learner, SPEC, pool[:5], "margin", "v"
    )


def test_single_label_strategy_on_multi_label_falls_back_to_the_row_measure() -> None:
    texts = [f"word{i % 7} other{i % 3} text" for i in range(60)]
    labels = [[MULTI.labels[i % 3]] + ([MULTI.labels[3]] if i % 2 else []) for i in range(60)]
    learner = Learner(MULTI, seed=0).fit(texts[:30], labels[:30])
    got = selection.select(learner, texts[30:], "expected_error", 5, seed=0, multi_label=True)
    want = selection.select(learner, texts[30:], "margin", 5, seed=0, multi_label=True)
    assert got.rows.tolist() == want.rows.tolist()


def test_empty_pool_selects_nothing(learner: Learner) -> None:
    sel = selection.select(learner, [], "margin", 5, seed=0, multi_label=False)
    assert sel.rows.tolist() == [] and sel.predictions(SPEC, [], "v") == []


# -- cold start --------------------------------------------------------------------------------


def test_seed_order_goes_round_robin_over_clusters() -> None:
    # Two topics, each in one contiguous block: taking rows in pool order would give ten invoices.
    texts = [f"invoice payment overdue {i}" for i in range(30)] + [f"football match tonight {i}" for i in range(30)]
    every = selection.seed_order(SPEC, texts, 60, seed=0)
    n_clusters = len(set(every.clusters.tolist()))
    assert n_clusters >= 2
    # Depths past MAX_CLUSTERS share the clusters: a shorter queue is then a prefix of the long one.
    assert selection.seed_order(SPEC, texts, 55, seed=0).rows.tolist() == every.rows[:55].tolist()
    sel = selection.seed_order(SPEC, texts, 10, seed=0)  # one cluster per pick
    first_round = sel.clusters[: min(n_clusters, 10)].tolist()
    assert len(set(first_round)) == len(first_round)  # one row per cluster before any cluster repeats
    # Round r serves every cluster's r-th most typical row: along the order, rounds never go back.
    seen: dict[int, int] = {}
    rounds = []
    for c in every.clusters.tolist():
        rounds.append(seen.get(c, 0))
        seen[c] = rounds[-1] + 1
    assert rounds == sorted(rounds)
    assert {"invoice", "football"} == {"invoice" if i < 30 else "football" for i in sel.rows[:n_clusters]}
    assert sel.scores.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert sel.labels is None
    preds = sel.predictions(SPEC, list(range(100, 160)), "seed-x")
    assert preds[0].to_json() == {
        "task": 100 + int(sel.rows[0]),
        "result": [],
        "score": 0.0,
        "cluster": int(sel.clusters[0]),
        "model_version": "seed-x",
    }


def test_seed_order_takes_the_most_typical_row_of_each_cluster_first(sms: tuple[list[str], list[str]]) -> None:
    texts = sms[0][:300]
    sel = selection.seed_order(SPEC, texts, len(texts), seed=0)
    X = selection.label_free_features(SPEC, texts, seed=0).toarray()
    assert len(set(sel.clusters.tolist())) == selection.MAX_CLUSTERS  # one cluster per pick, at most 50
    for c in set(sel.clusters.tolist()):
        members = sel.rows[sel.clusters == c]  # in the order they are served
        if len(members) < 2:
            continue
        # TypiClust: 1 / mean distance to the k = min(20, size - 1) nearest cluster members.
        d = np.linalg.norm(X[members][:, None, :] - X[members][None, :, :], axis=2)
        np.fill_diagonal(d, np.inf)
        k = min(20, len(members) - 1)
        typical = 1 / (1e-9 + np.sort(d, axis=1)[:, :k].mean(axis=1))
        assert (np.diff(typical) <= 1e-6 * typical[:-1]).all(), c  # densest first
    assert sorted(sel.rows.tolist()) == list(range(300))


def test_seed_order_clusters_the_pool_cache_embeddings_when_given() -> None:
    texts = [f"invoice payment overdue {i}" for i in range(30)] + [f"football match tonight {i}" for i in range(30)]
    E = np.zeros((60, 4), dtype=np.float16)
    E[:30, 0] = 1  # the embeddings say: two groups, by block
    E[30:, 1] = 1
    E[[0, 31], 2] = 0.5  # and one outlier in each
    sel = selection.seed_order(SPEC, texts, 2, seed=0, embeddings=E)
    assert sorted(int(r) // 30 for r in sel.rows) == [0, 1]  # one typical task from each group
    assert not {0, 31} & set(sel.rows.tolist())


def test_seed_order_depth_is_capped_by_the_pool() -> None:
    sel = selection.seed_order(SPEC, ["a b", "c d", "e f"], 10, seed=0)
    assert sorted(sel.rows.tolist()) == [0, 1, 2]
    assert sel.scores.tolist() == [0.0, round(1 / 3, 6), round(2 / 3, 6)]
    assert selection.seed_order(SPEC, [], 10, seed=0).rows.tolist() == []
