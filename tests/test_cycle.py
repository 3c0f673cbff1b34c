"""Unit tests of the cycle's pieces that need no Label Studio: selection, cold start, evaluation.

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI, CC BY 4.0).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from backend import cycle
from backend.config import ProjectConfig
from backend.labelconfig import parse_label_config
from backend.learner import Learner, TrainingSet
from tests.conftest import DATASETS, REPO

SPEC = parse_label_config((REPO / "label_config" / "spam.xml").read_text())


@pytest.fixture(scope="module")
def sms() -> tuple[list[str], list[str]]:
    with open(DATASETS / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:1500]
    return [r["text"] for r in rows], ["spam" if r["label"] == "spam" else "no_spam" for r in rows]


@pytest.fixture(scope="module")
def learner(sms: tuple[list[str], list[str]]) -> Learner:
    texts, y = sms
    return Learner(SPEC, seed=0).fit(texts[:100], y[:100])


@pytest.mark.parametrize("name", ["margin", "entropy", "vote_entropy", "random"])
def test_chunked_scoring_equals_one_shot(
    learner: Learner, sms: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    pool = sms[0][100:]
    whole = cycle.select_for_queue(learner, pool, name, 50, seed=0, multi_label=False)
    monkeypatch.setattr(cycle, "SCORE_CHUNK", 97)  # many uneven chunks
    chunked = cycle.select_for_queue(learner, pool, name, 50, seed=0, multi_label=False)
    if name == "random":
        assert len(set(chunked[0])) == 50  # random draws differ per chunk, but stay distinct
        return
    assert chunked[0] == whole[0]
    np.testing.assert_allclose(chunked[1], whole[1])
    assert chunked[4] == pytest.approx(whole[4])


def test_pointwise_selection_is_the_top_of_the_measure(learner: Learner, sms: tuple[list[str], list[str]]) -> None:
    from backend import strategies

    pool = sms[0][100:600]
    order, info, clusters, labels, mean_info = cycle.select_for_queue(
        learner, pool, "margin", 25, seed=0, multi_label=False
    )
    full = strategies.informativeness(
        "margin", strategies.ScoringInput(proba=learner.predict_proba(learner.transform(pool)))
    )
    assert order == list(strategies.priority_order(full, 25))
    np.testing.assert_allclose(info, full[order])
    assert mean_info == pytest.approx(float(full.mean()))
    assert list(np.diff(info) <= 1e-12) == [True] * 24  # most informative first
    assert len(labels) == 25 and all(lab[0] in ("spam", "no_spam") for lab in labels)
    assert clusters.shape == (25,)


@pytest.mark.parametrize(("depth", "expected"), [(12, 12), (80, cycle.MAX_CLUSTERS)])
def test_diversity_takes_one_cluster_per_pick_up_to_the_cap(
    learner: Learner, sms: tuple[list[str], list[str]], depth: int, expected: int
) -> None:
    """Cluster-margin: as many clusters as picks (at most MAX_CLUSTERS), each pick from its own cluster."""
    pool = sms[0][100:1100]
    order, _, clusters, *_ = cycle.select_for_queue(learner, pool, "diversity", depth, seed=0, multi_label=False)
    assert len(order) == depth
    first_round = clusters[:expected]
    assert len(set(first_round.tolist())) == expected  # the first `expected` picks: one per cluster
    assert len(set(clusters.tolist())) == expected


@pytest.mark.parametrize("name", ["diversity", "coreset", "density", "expected_error", "variance_reduction"])
def test_pool_level_strategies_pick_distinct_tasks(
    learner: Learner, sms: tuple[list[str], list[str]], name: str
) -> None:
    texts, y = sms
    order, info, *_ = cycle.select_for_queue(
        learner, texts[100:900], name, 20, seed=0, multi_label=False, labeled_inputs=texts[:100], labeled_y=y[:100]
    )
    assert len(order) == 20 and len(set(order)) == 20
    assert all(0 <= i < 800 for i in order)
    assert ((info >= 0.0) & (info <= 1.0)).all()
    assert list(np.diff(info) <= 1e-12) == [True] * 19


def test_cold_start_rules() -> None:
    config = ProjectConfig(min_labels=4)
    few = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "spam"], [1, 2, 3])
    assert cycle.cold_start(few, config, SPEC) == "3 usable labels < min_labels=4"
    one_class = TrainingSet(["a"] * 5, ["spam"] * 5, list(range(5)))
    assert cycle.cold_start(one_class, config, SPEC) == "only one class labeled so far (['spam'])"
    ok = TrainingSet(["a"] * 4, ["spam", "no_spam"] * 2, list(range(4)))
    assert cycle.cold_start(ok, config, SPEC) is None


def test_seed_order_covers_every_cluster_first() -> None:
    from backend import strategies

    texts = [f"invoice payment overdue {i}" for i in range(30)] + [f"football match tonight {i}" for i in range(30)]
    X = cycle.label_free_features(SPEC, texts, seed=0)
    clusters = strategies.cluster_ids(X, 2, seed=0)
    order = strategies.round_robin(cycle._centrality(X, clusters), clusters, 10)
    assert len(set(clusters[order[:2]].tolist())) == 2  # the first two picks come from different clusters


def test_cross_validation_reports_both_metrics(sms: tuple[list[str], list[str]]) -> None:
    texts, y = sms
    ts = TrainingSet(texts[:200], y[:200], list(range(200)))
    metrics = cycle.cross_validate(SPEC, ts, seed=0)
    assert metrics["cv_folds"] == 5
    assert 0.8 <= metrics["cv_accuracy"] <= 1.0
    assert 0.5 <= metrics["cv_macro_f1"] <= 1.0
    tiny = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "no_spam"], [1, 2, 3])
    assert cycle.cross_validate(SPEC, tiny, seed=0) == {"cv_accuracy": None, "cv_macro_f1": None, "cv_folds": None}
