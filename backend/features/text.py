"""Text features: TF-IDF over words, pretrained static sentence embeddings, or both side by side.

`features` (the setting `AL_TEXT_FEATURES`, per project `text_features`) chooses:

- ``tfidf``: TF-IDF over words (sublinear tf, rows of norm 1), fitted on the training texts. Every
  digit is read as 0 (`shape_numbers`): phone numbers, prices and short codes are mostly seen once,
  and as raw words they teach nothing.
- ``embedding``: the text's static sentence embedding (`backend.features.embeddings`, norm 1).
- ``tfidf+embedding`` (the default): both, concatenated as [TF-IDF | w * embedding] with
  w = `embedding_weight`. A linear model on it keeps TF-IDF's exact-word evidence and gains the
  embedding's similarity between words it has never seen labeled. The choice of the default, the
  weight and the model's C were measured with `bench/bench_features.py` (docs/benchmarks.md,
  "Text features").

An embedding depends only on the text and the model, so the pool cache keeps each task's embedding
(`embeddings=` below) and a text is embedded once, not once per cycle.

Every text is cut to its first `MAX_TEXT_CHARS` characters before either feature sees it, in
training and in prediction alike: TF-IDF's tokenizer holds the GIL for ~0.3 s per MB, so a few
60-task `/predict` bodies of 1 MB texts would take a core for minutes, while the first 20,000
characters (some 3,000 words) already say what a document is about.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer, strip_accents_unicode

from backend.features import DEFAULT_TEXT_FEATURES, TEXT_FEATURES
from backend.features import embeddings as emb

# Chosen on sms_spam (sentiment_sentences held out): docs/benchmarks.md, "Text features".
DEFAULT_EMBEDDING_WEIGHT = 1.0
#: characters of a text that its features are computed from; the rest is ignored. More than the
#: embedding reads (model2vec cuts a text to MAX_TOKENS x its median token length, ~3,000 characters
#: for wordllama), so only TF-IDF sees a difference, and only in texts longer than this.
MAX_TEXT_CHARS = 20_000
_DIGIT = re.compile(r"\d")


def clip_texts(texts: Sequence[Any]) -> list[str]:
    """`texts` as strings of at most MAX_TEXT_CHARS characters (their beginnings)."""
    return [(t if isinstance(t, str) else str(t))[:MAX_TEXT_CHARS] for t in texts]


def shape_numbers(text: str) -> str:
    """Lower-case, strip accents, and write every digit as 0: "Call 08712460324" -> "call 00000000000".

    A number then counts by its shape (length, position) instead of being a word seen once: phone
    numbers, prices and codes generalize from a few labels.
    """
    return _DIGIT.sub("0", strip_accents_unicode(text.lower()))


def append_dense(A: sp.csr_matrix, D: np.ndarray) -> sp.csr_matrix:
    """[A | D] as CSR float32, built in O(nnz + n*d): `sp.hstack` of a dense block scans it for
    zeros and converts through COO, several times slower on the scoring path."""
    A = sp.csr_matrix(A)
    n, d = D.shape
    if A.shape[0] != n:
        raise ValueError(f"{A.shape[0]} sparse rows but {n} dense rows")
    per_row = np.diff(A.indptr)
    indptr = A.indptr.astype(np.int64) + np.arange(n + 1, dtype=np.int64) * d
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    sparse_pos = np.arange(A.nnz, dtype=np.int64) + np.repeat(np.arange(n, dtype=np.int64) * d, per_row)
    data[sparse_pos] = A.data
    indices[sparse_pos] = A.indices
    dense_pos = (indptr[1:] - d)[:, None] + np.arange(d, dtype=np.int64)[None, :]
    data[dense_pos.ravel()] = np.asarray(D, dtype=np.float32).ravel()
    indices[dense_pos.ravel()] = np.tile(np.arange(A.shape[1], A.shape[1] + d, dtype=np.int32), n)
    return sp.csr_matrix((data, indices, indptr), shape=(n, A.shape[1] + d))


def check_text_features(value: Any) -> str:
    """Validate a `text_features` setting; raise ValueError naming the value and the choices."""
    if value not in TEXT_FEATURES:
        raise ValueError(f"text features must be one of {', '.join(TEXT_FEATURES)}; got {value!r}")
    return str(value)


class TextFeaturizer:
    """fit_transform(texts) / transform(texts) -> features; `embeddings=` reuses cached embeddings.

    The result is a CSR matrix when TF-IDF is in use (its first `n_tfidf` columns are TF-IDF, the
    rest the weighted embedding), else a dense float32 array of embeddings.
    """

    def __init__(
        self,
        features: str = DEFAULT_TEXT_FEATURES,
        *,
        embedding_model: str = emb.DEFAULT_MODEL,
        embedding_weight: float = DEFAULT_EMBEDDING_WEIGHT,
        max_features: int = 200_000,
        number_shapes: bool = True,
    ) -> None:
        self.features = check_text_features(features)
        self.embedding_model = emb.check_model_name(embedding_model)
        if not embedding_weight > 0:
            raise ValueError(f"embedding_weight must be > 0, got {embedding_weight!r}")
        self.embedding_weight = float(embedding_weight)
        self.max_features = int(max_features)
        self.number_shapes = bool(number_shapes)
        self.vectorizer: TfidfVectorizer | None = None

    @property
    def uses_tfidf(self) -> bool:
        """Whether the features include TF-IDF columns."""
        return self.features != "embedding"

    @property
    def uses_embedding(self) -> bool:
        """Whether the features include sentence-embedding columns."""
        return self.features != "tfidf"

    @property
    def n_tfidf(self) -> int:
        """How many leading columns are TF-IDF (0 before fitting or without TF-IDF)."""
        return len(self.vectorizer.vocabulary_) if self.vectorizer is not None else 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings of `texts` with this featurizer's model, (n, dim) float32."""
        return emb.load(self.embedding_model).embed(clip_texts(texts))

    def _embeddings(self, texts: Sequence[str], embeddings: np.ndarray | None) -> np.ndarray:
        if embeddings is None:
            return self.embed(texts)
        if embeddings.shape[0] != len(texts):
            raise ValueError(f"embeddings has {embeddings.shape[0]} rows for {len(texts)} texts")
        return np.asarray(embeddings, dtype=np.float32)

    def _combine(self, tfidf: Any, texts: Sequence[str], embeddings: np.ndarray | None) -> Any:
        if not self.uses_embedding:
            return tfidf
        E = self._embeddings(texts, embeddings)
        if tfidf is None:
            return E
        return append_dense(tfidf, self.embedding_weight * E)

    def fit_transform(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> Any:
        """Fit TF-IDF (if used) on `texts` and return their features."""
        texts = clip_texts(texts)
        tfidf = None
        if self.uses_tfidf:
            self.vectorizer = TfidfVectorizer(
                # Unigrams: same 50-label quality as 1-2-grams on SMS spam, ~30% faster to featurize.
                ngram_range=(1, 1),
                sublinear_tf=True,
                min_df=1,
                max_features=self.max_features,
                dtype=np.float32,
                strip_accents="unicode",
                lowercase=True,
                # Keep one-character tokens ("u", "2", "x"): short messages have few words to spare.
                token_pattern=r"(?u)\b\w+\b",
                # A preprocessor replaces sklearn's lowercase/strip_accents; shape_numbers does both.
                preprocessor=shape_numbers if self.number_shapes else None,
            )
            try:
                tfidf = self.vectorizer.fit_transform(texts)
            except ValueError as e:
                if "empty vocabulary" not in str(e):
                    raise
                raise ValueError(f"the training texts contain no word at all, e.g. {texts[0]!r:.80}") from None
            # max_features makes scikit-learn store each column index as a numpy int64, which skops
            # saves as one .npy entry per word: plain ints are the same indices, and make a saved
            # model ~5x smaller and its publish ~4x faster (300 SMS labels: 329 -> 62 KB).
            self.vectorizer.vocabulary_ = {term: int(col) for term, col in self.vectorizer.vocabulary_.items()}
        return self._combine(tfidf, texts, embeddings)

    def transform(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> Any:
        """Features of `texts` with the fitted vocabulary; `embeddings` (aligned rows) skips embedding."""
        texts = clip_texts(texts)
        tfidf = None
        if self.uses_tfidf:
            if self.vectorizer is None:
                raise RuntimeError("TextFeaturizer is not fitted")
            tfidf = self.vectorizer.transform(texts)
        return self._combine(tfidf, texts, embeddings)
