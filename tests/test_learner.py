"""training_set rules and the Learner (text, tabular, multi-label), on real data where it matters.

Datasets (all UCI, CC BY 4.0):
- SMS Spam Collection v.1 -- Almeida, T.A., Gomez Hidalgo, J.M., Yamakami, A. Contributions to the
  Study of SMS Spam Filtering: New Collection and Results. ACM DOCENG'11.
- Sentiment Labelled Sentences -- Kotzias et al., From Group to Individual Labels using Deep
  Features, KDD 2015.
- Spambase -- Hopkins, Reeber, Forman, Suermondt, Hewlett-Packard Labs, 1999.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from backend.labelconfig import TaskSpec, parse_label_config
from backend.learner import Learner, shape_numbers, training_set
from tests.conftest import DATASETS

ROOT = Path(__file__).resolve().parents[1]
DATA = DATASETS


def spec_of(name: str) -> TaskSpec:
    return parse_label_config((ROOT / "label_config" / name).read_text())


def read_csv(name: str) -> list[dict[str, str]]:
    path = DATA / name / f"{name}.csv"
    if not path.exists():
        pytest.skip(f"dataset {path} not available")
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sms() -> tuple[list[str], np.ndarray]:
    # SMS Spam Collection v.1 (Almeida et al., DOCENG'11); ham -> no_spam as the dataset README says.
    rows = read_csv("sms_spam")
    return [r["text"] for r in rows], np.array(["spam" if r["label"] == "spam" else "no_spam" for r in rows])


def ann(
    labels: list[str],
    *,
    from_name: str = "label",
    aid: int = 1,
    updated: str = "2025-01-01T00:00:00Z",
    cancelled: bool = False,
    ground_truth: bool = False,
) -> dict[str, Any]:
    return {
        "id": aid,
        "result": [{"from_name": from_name, "to_name": "text", "type": "choices", "value": {"choices": labels}}],
        "was_cancelled": cancelled,
        "ground_truth": ground_truth,
        "created_at": updated,
        "updated_at": updated,
    }


# -- training_set --------------------------------------------------------------------------------


def test_training_set_rules_and_exact_stats() -> None:
    spec = spec_of("spam.xml")
    tasks: list[Any] = [
        {"id": 1, "data": {"text": "win cash"}, "annotations": [ann(["spam"])]},
        # cancelled only -> no_annotation
        {"id": 2, "data": {"text": "hi"}, "annotations": [ann(["spam"], cancelled=True)]},
        # nothing at all -> no_annotation
        {"id": 3, "data": {"text": "hey"}, "annotations": []},
        # majority wins over the later single vote
        {
            "id": 4,
            "data": {"text": "lunch?"},
            "annotations": [
                ann(["no_spam"], aid=1, updated="2025-01-01T00:00:00Z"),
                ann(["no_spam"], aid=2, updated="2025-01-02T00:00:00Z"),
                ann(["spam"], aid=3, updated="2025-01-03T00:00:00Z"),
            ],
        },
        # tie -> most recently updated
        {
            "id": 5,
            "data": {"text": "call now"},
            "annotations": [
                ann(["no_spam"], aid=1, updated="2025-01-02T00:00:00Z"),
                ann(["spam"], aid=2, updated="2025-01-05T00:00:00Z"),
            ],
        },
        # ground truth beats a majority
        {
            "id": 6,
            "data": {"text": "prize"},
            "annotations": [
                ann(["no_spam"], aid=1),
                ann(["no_spam"], aid=2),
                ann(["spam"], aid=3, ground_truth=True),
            ],
        },
        # unknown label only -> no_known_label; unknown counted
        {"id": 7, "data": {"text": "x"}, "annotations": [ann(["maybe"])]},
        # unknown label dropped, known one kept
        {"id": 8, "data": {"text": "ok see you"}, "annotations": [ann(["maybe", "no_spam"])]},
        # another control's result is not a label of this one
        {"id": 9, "data": {"text": "y"}, "annotations": [ann(["spam"], from_name="other")]},
        # labeled but the data key is missing
        {"id": 10, "data": {"body": "no text key"}, "annotations": [ann(["spam"])]},
        # malformed tasks
        {"data": {"text": "no id"}, "annotations": [ann(["spam"])]},
        "not a task",
    ]
    ts = training_set(spec, tasks)
    assert ts.task_ids == [1, 4, 5, 6, 8]
    assert ts.y == ["spam", "no_spam", "spam", "spam", "no_spam"]
    assert ts.inputs == ["win cash", "lunch?", "call now", "prize", "ok see you"]
    assert ts.stats == {
        "tasks": 12,
        "used": 5,
        "invalid_tasks": 2,
        "skipped_cancelled": 1,
        "no_annotation": 2,
        "no_known_label": 2,
        "unknown_labels": 2,
        "unknown_label_values": {"maybe": 2},
        "conflicts_resolved": 3,
        "missing_input": 1,
        "label_counts": {"spam": 3, "no_spam": 2},
    }


def test_training_set_multi_label_takes_latest_and_orders_labels() -> None:
    spec = spec_of("multilabel.xml")
    tasks = [
        {
            "id": 1,
            "data": {"text": "a"},
            "annotations": [
                ann(["urgent", "bug"], from_name="tags", aid=1, updated="2025-02-01T00:00:00Z"),
                ann(["billing"], from_name="tags", aid=2, updated="2025-01-01T00:00:00Z"),
            ],
        },
        {"id": 2, "data": {"text": "b"}, "annotations": [ann(["feature_request"], from_name="tags")]},
    ]
    ts = training_set(spec, tasks)
    assert ts.y == [["bug", "urgent"], ["feature_request"]]  # config order, latest annotation
    assert ts.stats["conflicts_resolved"] == 1
    assert ts.stats["label_counts"] == {"bug": 1, "feature_request": 1, "urgent": 1}


# -- text learner ----------------------------------------------------------------------------------


def test_sms_50_labels_clearly_beats_majority(sms: tuple[list[str], np.ndarray]) -> None:
    """50 random labels (3-6 of them spam), five draws, 2,000 held-out messages each."""
    texts, y = sms
    scores, majorities = [], []
    for draw in range(5):
        idx = np.random.default_rng(draw).permutation(len(texts))
        train, test = idx[:50], idx[50:2050]
        learner = Learner(spec_of("spam.xml"), seed=0).fit([texts[i] for i in train], list(y[train]))
        proba = learner.predict_proba(learner.transform([texts[i] for i in test]))
        pred = [p[0] for p in learner.predict_labels(proba)]
        scores.append(f1_score(y[test], pred, average="macro"))
        majorities.append(f1_score(y[test], ["no_spam"] * len(test), average="macro"))
        assert scores[-1] > majorities[-1], (draw, scores[-1], majorities[-1])  # never worse than "all ham"
        assert np.mean(np.array(pred) == y[test]) > 0.87  # above the majority share (86.6%)
    # On average clearly better: a majority classifier would score exactly its macro-F1 (~0.465).
    assert np.mean(scores) > np.mean(majorities) + 0.15, (scores, majorities)


def test_text_shapes_rows_sum_and_class_order(sms: tuple[list[str], np.ndarray]) -> None:
    texts, y = sms
    spec = spec_of("spam.xml")
    learner = Learner(spec, seed=0, committee_size=4).fit(texts[:200], list(y[:200]))
    assert learner.classes_ == ("spam", "no_spam")  # config order, not alphabetical
    X = learner.transform(texts[200:260])
    assert sp.issparse(X) and X.shape[0] == 60
    p = learner.predict_proba(X)
    assert p.shape == (60, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    c = learner.committee_proba(X)
    assert c.shape == (4, 60, 2)
    np.testing.assert_allclose(c.sum(axis=2), 1.0)
    assert not np.allclose(c[0], c[1])  # members differ
    labels = learner.predict_labels(p)
    assert labels == [[learner.classes_[j]] for j in p.argmax(axis=1)]


def test_deterministic_for_a_seed(sms: tuple[list[str], np.ndarray]) -> None:
    texts, y = sms
    spec = spec_of("spam.xml")
    a = Learner(spec, seed=7).fit(texts[:120], list(y[:120]))
    b = Learner(spec, seed=7).fit(texts[:120], list(y[:120]))
    X = a.transform(texts[120:170])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(b.transform(texts[120:170])))
    np.testing.assert_array_equal(a.committee_proba(X), b.committee_proba(X))


def test_shape_numbers_exact() -> None:
    assert shape_numbers("Call 08712460324 for £1,500 Café") == "call 00000000000 for £0,000 cafe"
    assert shape_numbers("") == ""
    assert shape_numbers("٣ four") == "0 four"  # any Unicode digit (\d), as the tokenizer sees them


def test_numbers_count_by_shape_and_the_switch_restores_raw_numbers() -> None:
    spec = spec_of("spam.xml")
    texts = ["call 08712460324 now", "win cash call 09061701461", "see you at 5", "ok lunch at 1"]
    y = ["spam", "spam", "no_spam", "no_spam"]
    shaped = Learner(spec, seed=0).fit(texts, y)
    raw = Learner(spec, seed=0, number_shapes=False, text_features="tfidf").fit(texts, y)
    vocab = set(shaped._text.vectorizer.vocabulary_)
    assert {"00000000000", "0"} <= vocab and not any(c.isdigit() and c != "0" for w in vocab for c in w)
    assert {"08712460324", "09061701461", "5", "1"} <= set(raw._text.vectorizer.vocabulary_)
    # An unseen number of a seen shape is evidence only for the shaped model (TF-IDF alone: the
    # embedding gives every text some evidence).
    new = ["07099833605"]
    spam = shaped.classes_.index("spam")
    assert shaped.predict_proba(shaped.transform(new))[0, spam] > 0.5
    assert raw.predict_proba(raw.transform(new))[0, spam] == pytest.approx(
        raw.predict_proba(raw.transform(["zzz"]))[0, spam])  # fmt: skip


def test_tiny_training_set_two_per_class() -> None:
    spec = spec_of("sentiment.xml")
    texts = ["great phone, love it", "excellent value", "terrible battery", "awful, broke in a day"]
    learner = Learner(spec, seed=0).fit(texts, ["positive", "positive", "negative", "negative"])
    assert learner.classes_ == ("positive", "negative")  # neutral never seen -> not a column
    X = learner.transform(["love it, excellent", "terrible and awful", ""])
    p = learner.predict_proba(X)
    assert p.shape == (3, 2)
    assert learner.predict_labels(p)[:2] == [["positive"], ["negative"]]
    assert learner.committee_proba(X).shape == (3, 3, 2)


def test_sentiment_three_classes_and_topic_five() -> None:
    # Sentiment Labelled Sentences (Kotzias et al., KDD 2015): 30 of each polarity.
    rows = read_csv("sentiment_sentences")
    pos = [r["text"] for r in rows if r["label"] == "positive"][:30]
    neg = [r["text"] for r in rows if r["label"] == "negative"][:30]
    neutral = ["the package arrived on tuesday", "it is a phone", "i read the manual", "the box is black"]
    spec = spec_of("sentiment.xml")
    learner = Learner(spec, seed=0).fit(pos + neg + neutral, ["positive"] * 30 + ["negative"] * 30 + ["neutral"] * 4)
    assert learner.classes_ == ("positive", "negative", "neutral")
    assert learner.predict_proba(learner.transform(["fine"])).shape == (1, 3)

    topic = spec_of("topic.xml")
    docs = {
        "business": ["shares rose as profits beat forecasts", "the bank cut interest rates"],
        "entertainment": ["the film won an award", "a new album from the band"],
        "politics": ["parliament passed the election law", "the minister resigned"],
        "sport": ["the striker scored twice", "the team won the cup"],
        "tech": ["a new smartphone chip", "software update fixes the bug"],
    }
    X_text = [t for ts in docs.values() for t in ts]
    y = [k for k, ts in docs.items() for _ in ts]
    tl = Learner(topic, seed=0).fit(X_text, y)
    assert tl.classes_ == topic.labels
    assert tl.predict_labels(tl.predict_proba(tl.transform(["the striker scored in the cup"]))) == [["sport"]]


def test_fit_validates_inputs() -> None:
    spec = spec_of("spam.xml")
    with pytest.raises(ValueError, match=r"at least 2 classes.*\['spam'\]"):
        Learner(spec).fit(["a b", "c d"], ["spam", "spam"])
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        Learner(spec).fit(["a", "b"], ["spam"])
    with pytest.raises(ValueError, match="zero examples"):
        Learner(spec).fit([], [])
    with pytest.raises(ValueError, match="text inputs must be str"):
        Learner(spec).fit([{"x": 1.0}, "b"], ["spam", "no_spam"])
    with pytest.raises(ValueError, match="committee_size must be >= 2, got 1"):
        Learner(spec, committee_size=1)
    with pytest.raises(ValueError, match="C must be > 0, got -1"):
        Learner(spec, C=-1)
    with pytest.raises(ValueError, match="number_shapes must be true/false or 1/0, got 'abc'"):
        Learner(spec, number_shapes="abc")  # type: ignore[arg-type]
    assert Learner(spec, number_shapes=0).number_shapes is False
    with pytest.raises(RuntimeError, match="not fitted"):
        Learner(spec).transform(["x"])
    with pytest.raises(ValueError, match="contain no word at all, e.g. '!!'"):
        Learner(spec).fit(["!!", "?"], ["spam", "no_spam"])
    with pytest.raises(ValueError, match="lists of labels, got 'bug'"):
        Learner(spec_of("multilabel.xml")).fit(["a"], ["bug"])


FITTED_SPAM = Learner(spec_of("spam.xml"), seed=0).fit(
    ["win a free prize now", "call to claim cash", "see you at lunch", "running late, sorry"],
    ["spam", "spam", "no_spam", "no_spam"],
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=8))
def test_any_text_gives_finite_probabilities(texts: list[str]) -> None:
    p = FITTED_SPAM.predict_proba(FITTED_SPAM.transform(texts))
    assert p.shape == (len(texts), 2)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert len(FITTED_SPAM.predict_labels(p)) == len(texts)


# -- multi-label -----------------------------------------------------------------------------------


def test_multi_label_one_vs_rest_and_constant_labels() -> None:
    spec = spec_of("multilabel.xml")
    texts = [
        "invoice charged twice",
        "refund my payment",
        "app crashes on start",
        "error when saving",
        "invoice wrong and app crashes",
        "please add dark mode",
    ]
    y = [["billing"], ["billing"], ["bug"], ["bug"], ["billing", "bug"], ["bug"]]
    # TF-IDF alone: the "no known word" check below is about TF-IDF's unseen words.
    learner = Learner(spec, seed=0, text_features="tfidf").fit(texts, y)
    assert learner.classes_ == spec.labels
    X = learner.transform(["charged twice on my invoice", "crashes with an error"])
    p = learner.predict_proba(X)
    assert p.shape == (2, 4)
    # feature_request and urgent never positive in 6 examples: Laplace-smoothed constant 1/8.
    np.testing.assert_allclose(p[:, 2:], 1 / 8)
    assert p[0, 0] > p[0, 1] and p[1, 1] > p[1, 0]
    c = learner.committee_proba(X)
    assert c.shape == (3, 2, 4)
    np.testing.assert_allclose(c[:, :, 3], 1 / 8)
    labels = learner.predict_labels(np.array([[0.9, 0.2, 0.51, 0.1], [0.1, 0.2, 0.5, 0.4]]))
    assert labels == [["billing", "feature_request"], []]
    # A text with no known word carries no evidence: every such text gets the same probabilities
    # (the intercepts' priors on learned labels), the constants elsewhere.
    empty = learner.predict_proba(learner.transform([""]))
    unknown = learner.predict_proba(learner.transform(["zzzz qqqq xxyyzz"]))
    np.testing.assert_allclose(empty, unknown)
    np.testing.assert_allclose(empty[:, 2:], 1 / 8)
    assert ((empty[:, :2] > 0) & (empty[:, :2] < 1)).all()


# -- tabular ---------------------------------------------------------------------------------------


def test_tabular_spambase_with_missing_fields() -> None:
    # Spambase (Hopkins et al., HP Labs 1999): 100 rows, some fields removed or non-numeric.
    rows = read_csv("spambase")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(rows))
    spec = spec_of("tabular.xml")

    def record(r: dict[str, str], i: int) -> dict[str, Any]:
        rec: dict[str, Any] = {k: float(v) for k, v in r.items() if k != "is_spam"}
        if i % 3 == 0:
            del rec["word_freq_free"]
        if i % 5 == 0:
            rec["char_freq_$"] = None
        if i % 7 == 0:
            rec["capital_run_length_average"] = "n/a"
        return {k: v for k, v in rec.items() if isinstance(v, float)}  # what task_input keeps

    train = [record(rows[j], i) for i, j in enumerate(pick[:100])]
    y_train = ["spam" if rows[j]["is_spam"] == "1" else "no_spam" for j in pick[:100]]
    test = [record(rows[j], i) for i, j in enumerate(pick[100:600])]
    y_test = np.array(["spam" if rows[j]["is_spam"] == "1" else "no_spam" for j in pick[100:600]])
    learner = Learner(spec, seed=0).fit(train, y_train)
    X = learner.transform(test + [{}, {"unknown_field": 3.0}])
    assert isinstance(X, np.ndarray) and X.shape == (502, 57)
    assert np.isfinite(X).all()
    # An empty record is imputed to the training medians: every standardized value equals the
    # median's z-score.
    np.testing.assert_allclose(X[-1], X[-2])
    p = learner.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    pred = np.array([lab[0] for lab in learner.predict_labels(p[:500])])
    assert np.mean(pred == y_test) > 0.8  # majority share is 0.61
    assert learner.committee_proba(X).shape == (3, 502, 2)


# -- persistence and make_estimator ---------------------------------------------------------------


@pytest.mark.parametrize("config", ["spam.xml", "multilabel.xml", "tabular.xml"])
def test_save_load_round_trip(config: str, tmp_path: Path) -> None:
    spec = spec_of(config)
    if spec.kind == "tabular":
        inputs: list[Any] = [{"a": float(i), "b": float(i % 3)} for i in range(12)]
    else:
        inputs = [f"word{i % 4} common text {i}" for i in range(12)]
    if spec.multi_label:
        y: list[Any] = [["billing"] if i % 2 else ["bug", "urgent"] for i in range(12)]
    else:
        y = ["spam" if i % 2 else "no_spam" for i in range(12)]
    learner = Learner(spec, seed=3).fit(inputs, y)
    learner.save(tmp_path)
    loaded = Learner.load(tmp_path)
    assert loaded.classes_ == learner.classes_
    X = learner.transform(inputs)
    np.testing.assert_array_equal(loaded.predict_proba(loaded.transform(inputs)), learner.predict_proba(X))
    np.testing.assert_array_equal(loaded.committee_proba(X), learner.committee_proba(X))


def test_a_saved_text_model_stores_its_vocabulary_as_plain_ints(
    sms: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    """scikit-learn's max_features leaves numpy ints in ``vocabulary_``, which skops writes as one .npy
    entry per word (publish took ~0.5 s at 300 SMS labels); the fitted featurizer keeps plain ints,
    the same columns, so a saved model has one array entry per fitted array, not per word."""
    import zipfile

    texts, y = sms
    learner = Learner(spec_of("spam.xml"), seed=0).fit(texts[:300], list(y[:300]))
    vocabulary = learner._text.vectorizer.vocabulary_  # type: ignore[union-attr]
    assert {type(col) for col in vocabulary.values()} == {int}
    assert sorted(vocabulary.values()) == list(range(len(vocabulary)))
    learner.save(tmp_path)
    with zipfile.ZipFile(tmp_path / "learner.skops") as z:
        arrays = [n for n in z.namelist() if n.endswith(".npy")]
    assert len(arrays) < 100 < len(vocabulary), (len(arrays), len(vocabulary))
    loaded = Learner.load(tmp_path)
    np.testing.assert_array_equal(
        loaded.transform(texts[300:400]).toarray(), learner.transform(texts[300:400]).toarray()
    )


def test_make_estimator_is_unfitted_and_fits_on_transform_features(sms: tuple[list[str], np.ndarray]) -> None:
    texts, y = sms
    learner = Learner(spec_of("spam.xml"), seed=0).fit(texts[:100], list(y[:100]))
    est = learner.make_estimator()
    assert not hasattr(est, "coef_")
    X = learner.transform(texts[:100])
    est.fit(X, y[:100])
    assert est.predict_proba(learner.transform(texts[100:110])).shape == (10, 2)
