"""Unit tests of the cycle's pieces: cold start rules, evaluation (selection: tests/test_selection.py).

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI, CC BY 4.0).
"""

from __future__ import annotations

import csv

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


def test_cold_start_rules() -> None:
    config = ProjectConfig(min_labels=4)
    few = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "spam"], [1, 2, 3])
    assert cycle.cold_start(few, config, SPEC) == "3 usable labels < min_labels=4"
    one_class = TrainingSet(["a"] * 5, ["spam"] * 5, list(range(5)))
    assert cycle.cold_start(one_class, config, SPEC) == "only one class labeled so far (['spam'])"
    ok = TrainingSet(["a"] * 4, ["spam", "no_spam"] * 2, list(range(4)))
    assert cycle.cold_start(ok, config, SPEC) is None


def test_cross_validation_reports_both_metrics(sms: tuple[list[str], list[str]]) -> None:
    texts, y = sms
    ts = TrainingSet(texts[:200], y[:200], list(range(200)))
    metrics = cycle.cross_validate(SPEC, ts, seed=0)
    assert metrics["cv_folds"] == 5
    assert 0.8 <= metrics["cv_accuracy"] <= 1.0
    assert 0.5 <= metrics["cv_macro_f1"] <= 1.0
    tiny = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "no_spam"], [1, 2, 3])
    assert cycle.cross_validate(SPEC, tiny, seed=0) == {"cv_accuracy": None, "cv_macro_f1": None, "cv_folds": None}
