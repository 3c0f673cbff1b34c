from __future__ import annotations

import pytest

from backend.stopping import agreement, recommendation


def test_identical_predictions_agree_fully() -> None:
    a = {1: ["spam"], 2: ["ham"], 3: ["ham"]}
    assert agreement(a, dict(a)) == {"kappa": 1.0, "changed": 0.0, "compared": 3}


def test_kappa_and_changed_share_by_hand() -> None:
    # 4 rows, one flip: observed agreement 3/4; before: 2 spam 2 ham; after: 1 spam 3 ham.
    # expected agreement = (2/4)(1/4) + (2/4)(3/4) = 0.5 -> kappa = (0.75 - 0.5) / 0.5 = 0.5
    before = {1: ["spam"], 2: ["spam"], 3: ["ham"], 4: ["ham"]}
    after = {1: ["spam"], 2: ["ham"], 3: ["ham"], 4: ["ham"]}
    assert agreement(before, after) == {"kappa": 0.5, "changed": 0.25, "compared": 4}


def test_only_common_rows_are_compared() -> None:
    assert agreement({1: ["a"]}, {2: ["a"]}) == {"kappa": None, "changed": None, "compared": 0}
    assert agreement({1: ["a"], 2: ["b"]}, {2: ["b"], 3: ["a"]})["compared"] == 1


def test_multi_label_rows_compare_as_sets() -> None:
    before = {1: ["bug", "urgent"], 2: ["billing"]}
    after = {1: ["urgent", "bug"], 2: ["billing"]}
    assert agreement(before, after) == {"kappa": 1.0, "changed": 0.0, "compared": 2}


def cycles(*kappas: float | None) -> list[dict]:
    return [{"stability": {"kappa": k}} for k in kappas]


def test_recommendation_needs_a_window() -> None:
    assert recommendation([])["advice"] == "no cycle has run yet"
    early = recommendation(cycles(None, 0.9, 0.995))
    assert early["stable_versions"] == 0
    assert early["advice"].startswith("too early to judge: 2 of 3 version comparisons")


def test_recommendation_when_stable() -> None:
    rec = recommendation(cycles(0.8, 0.991, 0.995, 1.0))
    assert rec["stable_versions"] == 3
    assert rec["mean_kappa"] == pytest.approx((0.991 + 0.995 + 1.0) / 3, abs=1e-6)
    assert rec["advice"].startswith("predictions have been stable for 3 versions")
    assert rec["advice"].endswith("more labels are unlikely to change the model")


def test_recommendation_when_still_changing() -> None:
    rec = recommendation(cycles(0.99, 0.7, 0.995))
    assert rec["stable_versions"] == 1
    assert "still changing" in rec["advice"] and rec["advice"].endswith("keep labeling")
