"""The model of a project: featurizer + classifier, a committee for disagreement, training rules.

- Text (`<Text>`/`<HyperText>`): features from `backend.features.text`, by default TF-IDF over
  words concatenated with the text's pretrained static sentence embedding (weight 1), feeding a
  class-balanced logistic regression with an intercept (C=1; C=3 for TF-IDF alone). Measured with
  `bench/bench_features.py` (production learner, 10 random draws, 1,000-row test split), chosen
  on SMS spam, sentiment sentences held out; macro-F1 at 50 / 100 / 200 random labels:
  SMS spam TF-IDF (C=3) 0.830 / 0.918 / 0.957, embedding (C=1) 0.871 / 0.905 / 0.931, both
  (w=1, C=1) 0.859 / 0.929 / 0.964; held-out sentiment 0.592 / 0.662 / 0.688, 0.723 / 0.753 /
  0.784, 0.703 / 0.763 / 0.788 (docs/benchmarks.md, "Text features"). With TF-IDF alone:
  every digit is read as 0 (`shape_numbers`), so "08712460324"
  and "09061701461" are the same word: phone numbers, prices and short codes are mostly seen once,
  and as raw words they teach nothing. On SMS spam (docs/benchmarks.md, 10 repeats, same seeds) it
  took the default strategy from 270 to 130 labels for 99% of the full-pool macro-F1 and random
  sampling's AULC from 0.854 to 0.908; on sentiment sentences (7.8% have a digit) it changed no
  win-rate over 20 repeats (diversity beats random on 17 of 20 either way). It costs ~10% of
  featurization speed (94k vs 104k SMS texts/s). `number_shapes=False` restores raw numbers.
  `soft_vote=True` averages it with the complement naive Bayes:
  better with a few *random* labels (SMS spam, 8 draws: macro-F1 0.755 / 0.902 / 0.960 at 50 / 200 /
  1,000 labels, against 0.640 / 0.882 / 0.957), but worse where it matters here, on *actively chosen*
  labels (docs/benchmarks.md, 10 repeats: the default strategy's AULC 0.905 vs 0.911 on SMS, 99% of
  the full-pool score after > 300 labels vs 270; on sentiment it beats random on 80% of repeats vs
  100%), so it is off by default. The intercept was off at first:
  with 50 *random* labels of the SMS spam set it costs macro-F1 (0.74 vs 0.79 in
  docs/benchmarks.md, 0.56 vs 0.75 in `bench/bench_learner.py`) because the intercept absorbs the
  class prior. But without it every text sharing no word with the labeled set scores exactly
  P = 0.5, so uncertainty sampling asks for exactly those first: in `lsal simulate` (10 repeats,
  docs/benchmarks.md "Learner settings") margin sampling then loses to random on every repeat
  (macro-F1 AULC 0.819 vs 0.852), while with the intercept margin wins on every repeat (0.906) and
  the default strategy goes from 0.864 to 0.911; random's AULC is unchanged (lower before ~100
  labels, higher after), and the full-pool macro-F1 rises from 0.948 to 0.963. `fit_intercept=False`
  restores the old model. Character n-grams helped a little more but
  cost 3-5x the featurization time (sklearn's char analyzer runs ~17k short texts/s), which the pool
  scoring budget (>= 50k texts/s) does not allow.
- Tabular (`<Table>`): the numeric fields seen in training (sorted names), missing values
  imputed with the training median, standardized, then a class-balanced logistic regression with
  intercept (C=1). Fields never seen in training are ignored at prediction.
- Multi-label (`choice="multiple"`): one binary model per label (one-vs-rest); a label with no
  positive or no negative example gets a constant probability, its Laplace-smoothed training
  frequency (pos + 1) / (n + 2), in every committee member.
- Committee (query by committee): members share the featurization, so the committee costs m
  cheap linear predictions: the main model, a complement naive Bayes on the TF-IDF columns (text;
  a Gaussian naive Bayes on embeddings alone and on tabular features), and logistic regressions
  on seeded stratified bootstrap resamples (every class keeps at least one example, so tiny
  training sets work).

Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import ComplementNB, GaussianNB

from backend.features.embeddings import DEFAULT_MODEL, check_model_name
from backend.features.tabular import TabularFeaturizer
from backend.features.text import (
    DEFAULT_EMBEDDING_WEIGHT,
    DEFAULT_TEXT_FEATURES,
    TextFeaturizer,
    check_text_features,
    shape_numbers,
)
from backend.labelconfig import TaskSpec, annotation_labels, task_input

__all__ = ["ARTIFACT", "Learner", "TrainingSet", "shape_numbers", "training_set"]

ARTIFACT = "learner.skops"
#: What a saved Learner holds besides scikit-learn, numpy and builtins: the only other types its
#: artifact may name (backend/models/artifacts.py refuses any other; tests/test_models.py saves and
#: loads every kind of Learner, so a type added here without being listed fails there).
TRUSTED_TYPES: tuple[str, ...] = (
    "backend.labelconfig.TaskSpec",
    "backend.learner.Learner",
    "backend.learner._Constant",
    "backend.learner._FirstColumns",
    "backend.features.text.TextFeaturizer",
    "backend.features.text.shape_numbers",
    "backend.features.tabular.TabularFeaturizer",
)


# -- training data ---------------------------------------------------------------------------


@dataclass
class TrainingSet:
    """Model inputs and labels of the labeled tasks, with the training rules' statistics (counts, drops)."""

    inputs: list[Any]
    y: list[Any]  # str (single-label) or list[str] (multi-label)
    task_ids: list[int]
    stats: dict[str, Any] = field(default_factory=dict)


def _stamp(annotation: Mapping[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def training_set(spec: TaskSpec, tasks: Iterable[Mapping[str, Any]]) -> TrainingSet:
    """Turn Label Studio tasks with annotations into model inputs and targets.

    Rules (each task lands in exactly one of ``used``, ``invalid_tasks``, ``no_annotation``,
    ``no_known_label``, ``missing_input``):
    - a task that is not an object or has no integer ``id`` is skipped (``invalid_tasks``);
    - skipped annotations (``was_cancelled``) are ignored and counted (``skipped_cancelled``); a task
      left with no annotation is not used (``no_annotation``);
    - choices that are not in the label config are dropped and counted (``unknown_labels``: total,
      ``unknown_label_values``: per value); an annotation left with no known choice of this control
      is ignored, and a task left with none is not used (``no_known_label``);
    - several annotations on one task: a ``ground_truth`` annotation wins (the most recently
      updated one); otherwise single-label tasks take the majority label, ties going to the most
      recently updated annotation, and multi-label tasks take the most recently updated annotation.
      Tasks whose annotations disagreed are counted (``conflicts_resolved``). "Most recently
      updated" compares ``updated_at`` (else ``created_at``) as ISO-8601 strings, as LS writes them;
    - a task whose data lacks the configured key is skipped and counted (``missing_input``);
    - ``label_counts``: examples per config label (multi-label: per label), zero counts omitted.
    """
    known = set(spec.labels)
    ts = TrainingSet([], [], [])
    unknown: Counter[str] = Counter()
    stats: dict[str, Any] = {
        "tasks": 0,
        "used": 0,
        "invalid_tasks": 0,
        "skipped_cancelled": 0,
        "no_annotation": 0,
        "no_known_label": 0,
        "unknown_labels": 0,
        "conflicts_resolved": 0,
        "missing_input": 0,
    }
    for task in tasks:
        stats["tasks"] += 1
        task_id = task.get("id") if isinstance(task, Mapping) else None
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            stats["invalid_tasks"] += 1
            continue
        votes: list[tuple[Mapping[str, Any], list[str]]] = []
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            annotations = []
        live = 0
        for ann in annotations:
            if not isinstance(ann, Mapping):
                continue
            if ann.get("was_cancelled"):
                stats["skipped_cancelled"] += 1
                continue
            live += 1
            chosen = annotation_labels(spec, ann.get("result"))
            good = [c for c in dict.fromkeys(chosen) if c in known]
            for c in chosen:
                if c not in known:
                    unknown[c] += 1
            if good:
                votes.append((ann, good))
        if not votes:
            stats["no_annotation" if live == 0 else "no_known_label"] += 1
            continue
        try:
            x = task_input(spec, task.get("data") or {})
        except ValueError:
            stats["missing_input"] += 1
            continue
        target, conflict = _resolve(spec, votes)
        stats["conflicts_resolved"] += int(conflict)
        ts.inputs.append(x)
        ts.y.append(target)
        ts.task_ids.append(task_id)
    stats["used"] = len(ts.y)
    stats["unknown_labels"] = sum(unknown.values())
    stats["unknown_label_values"] = dict(sorted(unknown.items()))
    counts: Counter[str] = Counter()
    for target in ts.y:
        counts.update(target if isinstance(target, list) else [target])
    stats["label_counts"] = {label: counts[label] for label in spec.labels if counts[label]}
    ts.stats = stats
    return ts


def _resolve(spec: TaskSpec, votes: list[tuple[Mapping[str, Any], list[str]]]) -> tuple[Any, bool]:
    latest_first = sorted(votes, key=lambda v: _stamp(v[0]), reverse=True)
    truth = [v for v in latest_first if v[0].get("ground_truth")]
    distinct = {tuple(sorted(v[1])) if spec.multi_label else v[1][0] for v in votes}
    conflict = len(distinct) > 1
    if truth:
        chosen = truth[0][1]
    elif spec.multi_label:
        chosen = latest_first[0][1]
    else:
        tally = Counter(v[1][0] for v in votes)
        best = max(tally.values())
        leaders = {label for label, n in tally.items() if n == best}
        chosen = next(v[1] for v in latest_first if v[1][0] in leaders)
    if spec.multi_label:
        order = {label: i for i, label in enumerate(spec.labels)}
        return sorted(chosen, key=order.__getitem__), conflict
    return chosen[0], conflict


# -- the learner -------------------------------------------------------------------------------


# C per text feature set, measured with bench/bench_features.py (docs/benchmarks.md, "Text features").
_TEXT_C = {"tfidf": 3.0, "embedding": 1.0, "tfidf+embedding": 1.0}


def _flag(name: str, value: Any) -> bool:
    # 0/1 too: `lsal simulate --learner-param number_shapes=0` passes an int.
    if value in (True, False) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"{name} must be true/false or 1/0, got {value!r}")


class _Constant:
    """A binary 'model' for a label seen with one value only: its smoothed frequency."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: Any) -> np.ndarray:
        n = X.shape[0]
        return np.column_stack([np.full(n, 1 - self.p), np.full(n, self.p)])


class _FirstColumns:
    """An estimator that sees only the first `stop` columns: the committee's naive Bayes member
    reads the TF-IDF block of [TF-IDF | embedding] features (naive Bayes needs counts-like,
    non-negative features; the embedding has negative values)."""

    def __init__(self, estimator: Any, stop: int) -> None:
        self.estimator = estimator
        self.stop = int(stop)

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.estimator.classes_)

    def fit(self, X: Any, y: np.ndarray) -> _FirstColumns:
        self.estimator.fit(X[:, : self.stop], y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(X[:, : self.stop]))


class Learner:
    """fit / transform / predict_proba / committee_proba for one TaskSpec."""

    def __init__(
        self,
        spec: TaskSpec,
        *,
        seed: int = 0,
        committee_size: int = 3,
        C: float | None = None,
        max_features: int = 200_000,
        fit_intercept: bool = True,
        soft_vote: bool = False,
        number_shapes: bool = True,
        text_features: str = DEFAULT_TEXT_FEATURES,
        embedding_model: str = DEFAULT_MODEL,
        embedding_weight: float = DEFAULT_EMBEDDING_WEIGHT,
    ) -> None:
        if committee_size < 2:
            raise ValueError(f"committee_size must be >= 2, got {committee_size}")
        if C is not None and not C > 0:
            raise ValueError(f"C must be > 0, got {C!r}")
        self.spec = spec
        self.seed = int(seed)
        self.committee_size = int(committee_size)
        self.text_features = check_text_features(text_features)
        # Defaults measured with 50-200 random labels (see the module docstring).
        self.C = float(C) if C is not None else (_TEXT_C[self.text_features] if spec.kind == "text" else 1.0)
        self.max_features = int(max_features)
        self.fit_intercept = _flag("fit_intercept", fit_intercept)
        self.soft_vote = _flag("soft_vote", soft_vote)
        self.number_shapes = _flag("number_shapes", number_shapes)
        self.embedding_model = check_model_name(embedding_model)
        if not isinstance(embedding_weight, int | float) or not embedding_weight > 0:
            raise ValueError(f"embedding_weight must be a number > 0, got {embedding_weight!r}")
        self.embedding_weight = float(embedding_weight)
        self.classes_: tuple[str, ...] = ()
        self._text: TextFeaturizer | None = None
        self._tabular: TabularFeaturizer | None = None
        self._members: list[Any] = []  # single-label: estimators; multi-label: list of per-label lists

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A Learner pickled before backend/features existed held a bare TfidfVectorizer: keep
        # serving it as the TF-IDF-only model it was.
        if "_vectorizer" in state:
            vectorizer = state.pop("_vectorizer")
            text = None
            if vectorizer is not None:
                text = TextFeaturizer("tfidf", number_shapes=bool(state.get("number_shapes", False)))
                text.vectorizer = vectorizer
            state.update(
                text_features="tfidf", embedding_model=DEFAULT_MODEL, embedding_weight=DEFAULT_EMBEDDING_WEIGHT
            )
            state["_text"] = text
            tab = None
            if state.get("_median") is not None:
                tab = TabularFeaturizer()
                tab.columns = state["_columns"]
                tab._median, tab._mean, tab._scale = state["_median"], state["_mean"], state["_scale"]
            state["_tabular"] = tab
            for key in ("_columns", "_median", "_mean", "_scale"):
                state.pop(key, None)
        self.__dict__.update(state)

    # -- features ------------------------------------------------------------------------------

    @property
    def uses_embeddings(self) -> bool:
        """Whether the features include text embeddings (so cached ones can be passed in)."""
        return self.spec.kind == "text" and getattr(self, "text_features", "tfidf") != "tfidf"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings this learner's features use, (n, dim) float32; for the pool cache."""
        return self._text_featurizer().embed([str(t) for t in texts])

    def _text_featurizer(self) -> TextFeaturizer:
        return TextFeaturizer(
            self.text_features,
            embedding_model=self.embedding_model,
            embedding_weight=self.embedding_weight,
            max_features=self.max_features,
            number_shapes=getattr(self, "number_shapes", False),
        )

    def fit_features(self, inputs: Sequence[Any], embeddings: np.ndarray | None = None) -> Any:
        """Fit the featurizer alone (it needs no labels) and return the features of `inputs`.

        `embeddings`: the texts' embeddings if already computed (rows aligned with `inputs`)."""
        if self.spec.kind == "text":
            self._text = self._text_featurizer()
            return self._text.fit_transform(list(inputs), embeddings)
        self._tabular = TabularFeaturizer()
        return self._tabular.fit_transform(inputs)

    def transform(self, inputs: Sequence[Any], embeddings: np.ndarray | None = None) -> Any:
        """Features of `inputs` (CSR for text with TF-IDF, else dense); cacheable, reused by members.

        `embeddings`: the texts' embeddings if already computed (the pool cache keeps them)."""
        if not self.classes_:
            raise RuntimeError("Learner is not fitted")
        if self.spec.kind == "text":
            assert self._text is not None
            return self._text.transform([str(t) for t in inputs], embeddings)
        assert self._tabular is not None
        return self._tabular.transform(inputs)

    # -- models --------------------------------------------------------------------------------

    def make_estimator(self) -> LogisticRegression:
        """An unfitted copy of the main model, for strategies that refit on transform() features."""
        return LogisticRegression(
            C=self.C,
            class_weight="balanced",
            # An intercept for text too (see the module docstring). Learners pickled before this
            # setting existed keep their behaviour: no intercept for text.
            fit_intercept=getattr(self, "fit_intercept", self.spec.kind != "text"),
            max_iter=2000,
            random_state=self.seed,
        )

    def _second_member(self) -> Any:
        if self.spec.kind != "text" or getattr(self, "text_features", "tfidf") == "embedding":
            return GaussianNB()
        if self.text_features == "tfidf":
            return ComplementNB(alpha=0.3)
        assert self._text is not None
        return _FirstColumns(ComplementNB(alpha=0.3), self._text.n_tfidf)

    def _bootstrap(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A stratified bootstrap sample: every class keeps at least one example."""
        idx = []
        for label in np.unique(y):
            rows = np.flatnonzero(y == label)
            idx.append(rng.choice(rows, size=len(rows), replace=True))
        return np.sort(np.concatenate(idx))

    def _fit_members(self, X: Any, y: np.ndarray) -> list[Any]:
        members = [self.make_estimator().fit(X, y)]
        second = self._second_member()
        members.append(second.fit(X, y))
        rng = np.random.default_rng(self.seed)
        while len(members) < self.committee_size:
            idx = self._bootstrap(y, rng)
            members.append(clone(self.make_estimator()).fit(X[idx], y[idx]))
        return members

    def fit(self, inputs: Sequence[Any], y: Sequence[Any], embeddings: np.ndarray | None = None) -> Learner:
        """Fit the featurizer and the committee on labeled `inputs`; `embeddings` as in fit_features."""
        if len(inputs) != len(y):
            raise ValueError(f"inputs and y differ in length: {len(inputs)} != {len(y)}")
        if len(y) == 0:
            raise ValueError("cannot fit on zero examples")
        if self.spec.multi_label:
            bad = [row for row in y if isinstance(row, str) or not isinstance(row, list | tuple | set | frozenset)]
            if bad:
                raise ValueError(f"multi-label y must hold lists of labels, got {bad[0]!r}")
        want = str if self.spec.kind == "text" else Mapping
        wrong = next((x for x in inputs if not isinstance(x, want)), None)
        if wrong is not None:
            raise ValueError(
                f"{self.spec.kind} inputs must be {want.__name__} (see labelconfig.task_input), got {wrong!r:.80}"
            )
        if not self.spec.multi_label:
            labels = np.asarray([str(v) for v in y], dtype=object)
            seen = set(labels)
            if len(seen) < 2:
                raise ValueError(f"need at least 2 classes to fit, got {sorted(seen)}")
        X = self.fit_features(inputs, embeddings)
        if self.spec.multi_label:
            self.classes_ = tuple(self.spec.labels)
            self._members = []
            for label in self.classes_:
                target = np.array([label in set(row) for row in y], dtype=np.int64)
                pos = int(target.sum())
                if pos == 0 or pos == len(target):
                    p = (pos + 1) / (len(target) + 2)
                    self._members.append([_Constant(p)] * self.committee_size)
                else:
                    self._members.append(self._fit_members(X, target))
            return self
        order = [label for label in self.spec.labels if label in seen] + sorted(seen - set(self.spec.labels))
        self.classes_ = tuple(order)
        codes = np.array([self.classes_.index(v) for v in labels], dtype=np.int64)
        self._members = self._fit_members(X, codes)
        return self

    # -- prediction ----------------------------------------------------------------------------

    def _member_proba(self, member: Any, X: Any) -> np.ndarray:
        p = member.predict_proba(X)
        if self.spec.multi_label:
            return p[:, 1]
        full = np.zeros((X.shape[0], len(self.classes_)))
        full[:, member.classes_] = p
        return full

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, k) class probabilities (rows sum to 1); multi-label: (n, L) per-label P(positive).

        The logistic regression; with `soft_vote=True` (text only) the mean of it and the complement
        naive Bayes."""
        voters = 2 if self.spec.kind == "text" and getattr(self, "soft_vote", False) else 1
        if self.spec.multi_label:
            return np.column_stack(
                [np.mean([self._member_proba(m[i], X) for i in range(voters)], axis=0) for m in self._members]
            )
        if voters == 1:
            return self._member_proba(self._members[0], X)
        return 0.5 * (self._member_proba(self._members[0], X) + self._member_proba(self._members[1], X))

    def committee_proba(self, X: Any) -> np.ndarray:
        """(m, n, k) member probabilities (multi-label: (m, n, L))."""
        if self.spec.multi_label:
            return np.stack(
                [
                    np.column_stack([self._member_proba(m[i], X) for m in self._members])
                    for i in range(self.committee_size)
                ]
            )
        return np.stack([self._member_proba(m, X) for m in self._members])

    def predict_labels(self, proba: np.ndarray) -> list[list[str]]:
        """Single-label: the most probable class. Multi-label: every label with P > 0.5, possibly none.

        Strictly above 0.5: a text sharing no word with the training set scores exactly 0.5 on
        every (intercept-free) label model, and "no evidence" should not select every label.
        """
        proba = np.asarray(proba)
        if self.spec.multi_label:
            return [[self.classes_[j] for j in np.flatnonzero(row > 0.5)] for row in proba]
        return [[self.classes_[j]] for j in proba.argmax(axis=1)]

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the fitted learner into the directory ``path`` (skops: no code runs when it is read)."""
        from backend.models import artifacts  # lazily: backend.models imports this module

        path = Path(path)
        artifacts.dump(self, path / ARTIFACT)
        (path / "learner.json").write_text(
            json.dumps(
                {
                    "classes": list(self.classes_),
                    "kind": self.spec.kind,
                    "multi_label": self.spec.multi_label,
                    "committee_size": self.committee_size,
                    "C": self.C,
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> Learner:
        """Read a learner :meth:`save` wrote, trusting only :data:`TRUSTED_TYPES` beyond skops's defaults.

        A ``learner.joblib`` of an earlier release is not read (unpickling runs code): ModelError."""
        from backend.models import artifacts

        learner = artifacts.load(Path(path) / ARTIFACT, trusted=TRUSTED_TYPES)
        if not isinstance(learner, cls):
            raise TypeError(f"{path} does not hold a Learner")
        return learner
