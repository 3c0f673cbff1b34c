"""Text features: TF-IDF, embeddings, both; cached embeddings give the same features; the learner on them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from backend.features import embeddings as emb
from backend.features.tabular import TabularFeaturizer
from backend.features.text import MAX_TEXT_CHARS, TextFeaturizer
from backend.labelconfig import TaskSpec
from backend.learner import Learner

TEXTS = ["Free entry in 2 a wkly comp", "ok lunch at 1", "WINNER! claim your prize", "see you at home"]
SPEC = TaskSpec(
    from_name="label",
    to_name="text",
    data_key="text",
    labels=("spam", "no_spam"),
    multi_label=False,
    kind="text",
    object_tag="Text",
)
Y = ["spam", "no_spam", "spam", "no_spam"]


def test_concatenation_is_tfidf_then_weighted_embedding() -> None:
    f = TextFeaturizer("tfidf+embedding", embedding_weight=2.0)
    X = f.fit_transform(TEXTS)
    E = emb.load().embed(TEXTS)
    assert sp.issparse(X) and X.shape == (4, f.n_tfidf + 256)
    tfidf_only = TextFeaturizer("tfidf").fit_transform(TEXTS)
    np.testing.assert_array_equal(X[:, : f.n_tfidf].toarray(), tfidf_only.toarray())
    np.testing.assert_array_equal(X[:, f.n_tfidf :].toarray(), 2.0 * E)
    # Cached embeddings (as the pool keeps them) give the very same features.
    np.testing.assert_array_equal(f.transform(TEXTS, embeddings=E.astype(np.float16)).toarray(), X.toarray())


def test_embedding_only_is_dense_and_tfidf_only_has_no_embedding() -> None:
    f = TextFeaturizer("embedding")
    X = f.fit_transform(TEXTS)
    assert isinstance(X, np.ndarray) and X.shape == (4, 256) and f.n_tfidf == 0
    np.testing.assert_array_equal(X, emb.load().embed(TEXTS))
    t = TextFeaturizer("tfidf")
    assert t.fit_transform(TEXTS).shape[1] == t.n_tfidf


def test_bad_settings_name_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"one of tfidf, embedding, tfidf\+embedding; got 'bert'"):
        TextFeaturizer("bert")
    with pytest.raises(emb.EmbeddingModelError, match="'glove'"):
        Learner(SPEC, embedding_model="glove")
    with pytest.raises(ValueError, match="embedding_weight must be a number > 0, got 0"):
        Learner(SPEC, embedding_weight=0)
    f = TextFeaturizer()
    f.fit_transform(TEXTS)
    with pytest.raises(ValueError, match="embeddings has 3 rows for 4 texts"):
        f.transform(TEXTS, embeddings=np.zeros((3, 256), np.float32))


@pytest.mark.parametrize("features", ["tfidf", "embedding", "tfidf+embedding"])
def test_learner_fits_every_feature_set_with_its_committee(features: str) -> None:
    learner = Learner(SPEC, seed=0, text_features=features).fit(TEXTS, Y)
    X = learner.transform(["claim a free prize now", "lunch at home"])
    p = learner.predict_proba(X)
    assert p.shape == (2, 2) and learner.classes_ == ("spam", "no_spam")
    assert p[0, 0] > 0.5 and p[1, 1] > 0.5
    c = learner.committee_proba(X)
    assert c.shape == (3, 2, 2)
    np.testing.assert_allclose(c.sum(axis=2), 1)
    # The naive Bayes member reads TF-IDF when there is TF-IDF, else the embeddings (GaussianNB).
    second = type(learner._members[1]).__name__
    assert second == {"tfidf": "ComplementNB", "embedding": "GaussianNB", "tfidf+embedding": "_FirstColumns"}[features]


def test_learner_pickled_before_features_package_still_predicts() -> None:
    new = Learner(SPEC, seed=0, text_features="tfidf").fit(TEXTS, Y)
    state = dict(new.__dict__)
    text = state.pop("_text")
    state.pop("_tabular")
    for key in ("text_features", "embedding_model", "embedding_weight"):
        state.pop(key)
    state.update(_vectorizer=text.vectorizer, _columns=[], _median=None, _mean=None, _scale=None)
    old = Learner.__new__(Learner)
    old.__dict__.update(state)
    revived = pickle.loads(pickle.dumps(old))
    assert revived.text_features == "tfidf"
    X = revived.transform(TEXTS)
    np.testing.assert_array_equal(revived.predict_proba(X), new.predict_proba(new.transform(TEXTS)))


def test_tabular_featurizer_imputes_and_standardizes_exactly() -> None:
    f = TabularFeaturizer()
    X = f.fit_transform([{"a": 1.0, "b": 10.0}, {"a": 3.0}, {"a": 5.0, "b": 20.0}])
    assert f.columns == ["a", "b"]
    # b's median 15 fills the gap; every column then has mean 0 and std 1.
    np.testing.assert_allclose(X[:, 0], [-1.224744871, 0, 1.224744871])
    np.testing.assert_allclose(X[:, 1], [-1.224744871, 0, 1.224744871])
    np.testing.assert_allclose(f.transform([{"a": 3.0, "zzz": 7.0}]), [[0.0, 0.0]])


def test_append_dense_equals_hstack() -> None:
    from backend.features.text import append_dense

    A = sp.csr_matrix(np.array([[0, 1.5, 0], [0, 0, 0], [2.0, 0, 3.0]], dtype=np.float32))
    D = np.array([[1, -1], [0, 2], [0.5, 0]], dtype=np.float32)
    out = append_dense(A, D)
    assert out.dtype == np.float32 and out.shape == (3, 5)
    np.testing.assert_array_equal(out.toarray(), np.hstack([A.toarray(), D]))
    np.testing.assert_array_equal(out.indptr, [0, 3, 5, 9])  # every dense value stored, zeros too


def test_texts_are_cut_at_max_text_chars_in_training_and_prediction() -> None:
    """Only a text's first MAX_TEXT_CHARS characters make its features (TF-IDF's tokenizer holds the
    GIL for ~0.3 s per MB); words after the cut are not in the vocabulary, the embedding is unchanged.
    Broken once: without the cut the tail's words are fitted and the rows differ."""
    head = ("ok lunch at home " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]
    long = head + " tailword" * 1000
    f = TextFeaturizer("tfidf+embedding")
    X = f.fit_transform([long, "see you at home"])
    assert f.vectorizer is not None and "tailword" not in f.vectorizer.vocabulary_
    assert (f.transform([long]) != f.transform([head])).nnz == 0
    assert (X[0] != f.transform([head])).nnz == 0
    np.testing.assert_array_equal(f.embed([long]), emb.load(f.embedding_model).embed([long]))
