"""Offline oracle simulation: query strategies vs random on a labeled file.

``lsal simulate`` replays active learning on a file whose labels are known: it hides the labels of
a training pool, lets each strategy ask for ``--batch`` labels at a time (the "oracle" answers with
the true label), retrains after every batch and scores every model on a held-out test split.

It uses exactly the production code path: the project's model from the registry (``--model``;
default the built-in :class:`backend.learner.Learner`, see backend/models/),
:func:`backend.selection.select` for the batch (the function the worker uses to fill Label
Studio's queue) and :func:`backend.labelconfig.task_input` to turn a row into a model input.
Nothing here re-implements a strategy.

Protocol
--------
- One stratified test split (``--test-fraction``, drawn with ``--seed``); the rest is the pool.
  With ``--test-data FILE`` the whole ``--data`` file is the pool and FILE (same columns) the test
  set, so runs on different pools are scored on one fixed labeled file.
- Repeat ``r`` uses seed ``seed + r``: it draws the initial labeled set (``--initial`` rows, a
  uniform random sample; if it holds a single class, its last row is swapped for a random row of
  another class, since a model needs two classes) and seeds the learner and the strategies.
  ``--initial 0`` replays the server's cold start instead: the first :data:`COLD_START_LABELS`
  rows of the seed order the server writes before its first model (``selection.seed_order``,
  TypiClust on the label-free features), the last swapped for the next row of another class in
  that order if they hold a single class.
  Every strategy of a repeat starts from that same initial set, so a repeat is a paired comparison.
- Steps: fit on the labeled rows, score on the test split, ask for the next batch, until
  ``--budget`` labels (initial set included). The last batch is shortened to land on the budget.
- The ceiling (``full_pool``) is the same learner trained on the whole pool.

Output (``--out DIR``): ``curves.json`` (schema in :data:`SCHEMA_DOC` and docs/benchmarks.md) and
``curves.png`` (mean curve with a +-1 standard deviation band over repeats per strategy, the
full-pool score as a dashed line; one panel per metric).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from backend import selection, strategies
from backend.labelconfig import LabelConfigError, TaskSpec, parse_label_config, task_input
from backend.learner import Learner
from backend.models import BUILTIN, Model, ModelRegistry, fit_checked, scorer_for_strategy
from backend.models.base import call, check_proba

EXIT_USAGE = 2
METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
TARGETS: tuple[float, ...] = (0.95, 0.99)
SCHEMA_VERSION = 1

SCHEMA_DOC = """curves.json (schema_version 1):
{
  "schema_version": 1,
  "config":   {data, label_column, text_column, feature_columns, label_config, strategies, initial,
               batch, budget, repeats, test_fraction, seed, initial_order, jobs},
  "dataset":  {rows, skipped_rows, kind, labels, label_counts, n_pool, n_test},
  "full_pool": {"n_labels": n_pool, "accuracy": float, "macro_f1": float},
  "resolved": {strategy name as given: concrete strategy it ran (e.g. "default" -> "diversity")},
  "runs": {strategy: [ {"repeat": r, "seed": s, "seconds": float,
                        "n_labels": [int, ...], "accuracy": [float, ...], "macro_f1": [float, ...],
                        "labeled_order": [pool row, ...] (initial set first, then the picks in order)},
                       ... one per repeat ] },
  "summary": {strategy: {metric: {
        "aulc": mean over repeats, "aulc_std": float, "aulc_per_repeat": [float, ...],
        "aulc_wins_vs_random": share of repeats with AULC >= random's AULC (same repeat) or null,
        "labels_to_95": int or null, "labels_to_99": int or null,
        "labels_to_95_per_repeat": [int or null, ...], "labels_to_99_per_repeat": [...],
        "ratio_to_random_95": float or null, "ratio_to_random_99": float or null,
        "final": mean score at the budget}}}
}
AULC: trapezoidal area under the learning curve between the first and the last n_labels divided by
that width, so it is the mean score over the label range and lies in [0, 1].
labels_to_X: the smallest n_labels at which the mean curve over repeats is >= X * full-pool score
and stays there up to the budget; null when the budget is not enough. Per repeat: the same on that
repeat's curve. ratio_to_random_X: labels_to_X / random's labels_to_X (null if either is null).
"""


class SimulationError(ValueError):
    """Bad input for a simulation; the message names the problem (the CLI prints it, exit 2)."""


# -- data ----------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A labeled file as model inputs and labels, with the TaskSpec they were read for."""

    spec: TaskSpec
    inputs: list[Any]
    y: list[str]
    skipped_rows: int = 0
    text_column: str | None = None
    feature_columns: list[str] | None = None


def read_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of a ``.csv`` (header line) or ``.jsonl`` (one JSON object per line) file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise SimulationError(f"--data {p}: unsupported file type {suffix or '(none)'!r}; use .csv or .jsonl")
    try:
        with p.open(encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                rows = [dict(r) for r in reader]
                columns = list(reader.fieldnames or [])
            else:
                rows = []
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise SimulationError(f"--data {p}: line {lineno} is not JSON ({exc})") from None
                    if not isinstance(obj, dict):
                        raise SimulationError(f"--data {p}: line {lineno} is not a JSON object")
                    rows.append(obj)
                columns = list(dict.fromkeys(k for r in rows for k in r))
    except SimulationError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SimulationError(f"--data {p}: cannot read the file ({exc})") from None
    if not rows:
        raise SimulationError(f"--data {p}: no data rows")
    if suffix == ".csv" and any(None in r for r in rows):
        bad = next(i for i, r in enumerate(rows) if None in r)
        raise SimulationError(f"--data {p}: CSV row {bad + 2} has more fields than the header")
    return columns, rows


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value.strip() == ""  # an empty cell is a missing value, imputed by the learner
        return True
    return value is None


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def build_dataset(
    path: str | os.PathLike[str],
    label_column: str,
    *,
    text_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    label_config: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read a labeled file into model inputs (via ``labelconfig.task_input``) and labels.

    Without ``label_config`` the TaskSpec is built from the data: a text column gives a Text task,
    feature columns a tabular one (no column given: every other column, if all are numeric); the
    labels are the sorted distinct label values. Rows with an empty label are skipped and counted.
    """
    columns, rows = read_rows(path)
    if text_column and feature_columns:
        raise SimulationError("give either --text-column or --feature-columns, not both")
    if label_column not in columns:
        raise SimulationError(f"label column {label_column!r} not in the file; columns: {', '.join(columns)}")
    keep = [r for r in rows if r.get(label_column) is not None and _label_text(r[label_column]) != ""]
    skipped = len(rows) - len(keep)
    if not keep:
        raise SimulationError(f"label column {label_column!r} is empty in every row")
    y = [_label_text(r[label_column]) for r in keep]

    spec: TaskSpec | None = None
    if label_config is not None:
        try:
            xml = Path(label_config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SimulationError(f"--label-config {label_config}: cannot read the file ({exc})") from None
        try:
            spec = parse_label_config(xml)
        except LabelConfigError as exc:
            raise SimulationError(f"--label-config {label_config}: {exc}") from None
        if spec.multi_label:
            raise SimulationError(f"--label-config {label_config}: simulate supports single-label configs only")
        unknown = sorted(set(y) - set(spec.labels))
        if unknown:
            raise SimulationError(
                f"label values {unknown[:5]} are not choices of --label-config {label_config} "
                f"(choices: {', '.join(spec.labels)})"
            )
        if spec.kind == "text" and not text_column and not feature_columns:
            text_column = spec.data_key
        if spec.kind == "text" and feature_columns:
            raise SimulationError(f"--label-config {label_config} is a text config; give --text-column, not features")
        if spec.kind == "tabular" and text_column:
            raise SimulationError(f"--label-config {label_config} is a tabular config; give --feature-columns")

    if text_column:
        if text_column not in columns:
            raise SimulationError(f"text column {text_column!r} not in the file; columns: {', '.join(columns)}")
        if spec is None:
            spec = TaskSpec("label", "text", text_column, tuple(sorted(set(y))), False, "text", "Text")
        datas: list[dict[str, Any]] = [
            {spec.data_key: "" if r.get(text_column) is None else r[text_column]} for r in keep
        ]
        feats: list[str] | None = None
    else:
        if feature_columns:
            feats = list(feature_columns)
            missing = [c for c in feats if c not in columns]
            if missing:
                raise SimulationError(f"feature column(s) {missing} not in the file; columns: {', '.join(columns)}")
            if label_column in feats:
                raise SimulationError(f"label column {label_column!r} cannot also be a feature column")
        else:
            feats = [c for c in columns if c != label_column]
            if not feats:
                raise SimulationError("no input column: give --text-column or --feature-columns")
            bad = [c for c in feats if not all(_is_number(r.get(c)) for r in keep)]
            if bad:
                raise SimulationError(
                    f"column(s) {bad[:5]} are not numeric: give --text-column for text, or --feature-columns"
                )
        if spec is None:
            spec = TaskSpec("label", "table", "features", tuple(sorted(set(y))), False, "tabular", "Table")
        datas = [{spec.data_key: {c: r.get(c) for c in feats}} for r in keep]
    inputs: list[Any] = []
    for i, data in enumerate(datas):
        try:
            inputs.append(task_input(spec, data))
        except ValueError as exc:
            raise SimulationError(f"data row {i + 1}: {exc}") from None
    if spec.kind == "tabular" and not any(inputs):
        raise SimulationError("the feature columns hold no number at all")
    if len(set(y)) < 2:
        raise SimulationError(f"label column {label_column!r} has a single class ({y[0]!r}); need at least 2")
    return Dataset(spec, inputs, y, skipped, text_column if spec.kind == "text" else None, feats)


# -- one simulated run --------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything a worker needs (shared once per worker process)."""

    spec: TaskSpec
    pool_inputs: list[Any]
    pool_y: list[str]
    test_inputs: list[Any]
    test_y: list[str]
    initial_sets: list[list[int]]  # per repeat, indices into the pool
    seeds: list[int]
    batch: int
    budget: int
    learner_params: dict[str, Any] = field(default_factory=dict)
    model: str = BUILTIN  # a name in the registry of AL_MODELS + entry points (``models_env``)
    models_env: str = ""
    # The pool's text embeddings, as the worker's pool cache holds them (None: the model uses none).
    pool_embeddings: np.ndarray | None = None


@functools.lru_cache(maxsize=4)
def _registry(models_env: str) -> ModelRegistry:
    """The registered models, discovered once per process (worker processes rebuild it by name)."""
    return ModelRegistry.discover(models_env)


def split(y: Sequence[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when every class has >= 2 rows) pool / test split of row indices."""
    idx = np.arange(len(y))
    counts = np.unique(np.asarray(y, dtype=object).astype(str), return_counts=True)[1]
    stratify = np.asarray(y, dtype=object).astype(str) if counts.min() >= 2 else None
    try:
        pool, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError:  # test split smaller than the number of classes: fall back to unstratified
        pool, test = train_test_split(idx, test_size=test_fraction, random_state=seed)
    return np.sort(pool), np.sort(test)


def initial_set(y: Sequence[str], n: int, seed: int) -> list[int]:
    """``n`` pool rows drawn uniformly with ``seed``; a single-class draw swaps its last row for another class."""
    rng = np.random.default_rng(seed)
    y_arr = np.asarray(y, dtype=object)
    picks = rng.choice(len(y_arr), size=n, replace=False)
    if len(set(y_arr[picks])) < 2:
        other = np.flatnonzero(y_arr != y_arr[picks[0]])
        picks[-1] = int(rng.choice(other))
    return [int(i) for i in picks]


# Labels before the first model with --initial 0: the server's default AL_MIN_LABELS.
COLD_START_LABELS = 10


def pool_embeddings(
    spec: TaskSpec, inputs: Sequence[Any], model: str, learner_params: Mapping[str, Any]
) -> np.ndarray | None:
    """The pool's text embeddings as the worker's pool cache holds them, for the built-in model when
    its features use them (else None): selection and the cold start then read them as in production."""
    if model != BUILTIN or spec.kind != "text":
        return None
    learner = Learner(spec, **learner_params)
    # float16, as the pool cache stores them.
    return learner.embed(inputs).astype(np.float16) if learner.uses_embeddings else None


def cold_start_set(
    spec: TaskSpec,
    inputs: Sequence[Any],
    y: Sequence[str],
    n: int,
    seed: int,
    learner_params: Mapping[str, Any],
    embeddings: np.ndarray | None = None,
) -> list[int]:
    """The first ``n`` rows of the server's cold-start seed order (a second class swapped in if needed);
    ``embeddings``: the pool's, which the server clusters on when its pool cache has them."""
    seeded = selection.seed_order(spec, inputs, len(inputs), seed, learner_params=learner_params, embeddings=embeddings)
    order = [int(i) for i in seeded.rows]
    picks = order[:n]
    if len({y[i] for i in picks}) < 2:
        other = next((i for i in order[n:] if y[i] != y[picks[0]]), None)
        if other is not None:
            picks[-1] = other
    return picks


def _fit(plan: Plan, labeled: Sequence[int], seed: int) -> Model:
    """The project's model (``plan.model``) fitted on the labeled pool rows, as the cycle fits it."""
    model = _registry(plan.models_env).create(plan.model, plan.spec, seed=seed, learner_params=plan.learner_params)
    emb = None if plan.pool_embeddings is None else plan.pool_embeddings[np.asarray(labeled, dtype=np.int64)]
    return fit_checked(model, [plan.pool_inputs[i] for i in labeled], [plan.pool_y[i] for i in labeled], emb)


def _score(model: Model, inputs: Sequence[Any], y: Sequence[str]) -> tuple[float, float]:
    proba = check_proba(model, call(model, "predict_proba", inputs), len(inputs))
    pred = [row[0] if row else "" for row in model.predict_labels(proba)]
    acc = float(accuracy_score(y, pred))
    f1 = float(f1_score(y, pred, average="macro", zero_division=0))
    return round(acc, 6), round(f1, 6)


def run_one(plan: Plan, name: str, repeat: int, tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """One learning curve: strategy ``name`` from repeat ``repeat``'s initial set up to the budget."""
    start_time = time.perf_counter()
    seed = plan.seeds[repeat]
    labeled = list(plan.initial_sets[repeat])
    in_pool = np.ones(len(plan.pool_inputs), dtype=bool)
    in_pool[labeled] = False
    out: dict[str, Any] = {"repeat": repeat, "seed": seed, "n_labels": [], "accuracy": [], "macro_f1": []}
    step = 0
    while True:
        model = _fit(plan, labeled, seed)
        acc, f1 = _score(model, plan.test_inputs, plan.test_y)
        out["n_labels"].append(len(labeled))
        out["accuracy"].append(acc)
        out["macro_f1"].append(f1)
        if tick is not None:
            tick()
        if len(labeled) >= plan.budget:
            break
        k = min(plan.batch, plan.budget - len(labeled))
        rest = np.flatnonzero(in_pool)
        emb = plan.pool_embeddings
        chosen = selection.select(
            scorer_for_strategy(model, name),
            [plan.pool_inputs[i] for i in rest],
            name,
            k,
            seed=seed * 100_003 + step,
            multi_label=False,
            labeled_inputs=[plan.pool_inputs[i] for i in labeled],
            labeled_y=[plan.pool_y[i] for i in labeled],
            embeddings=None if emb is None else emb[rest],
            labeled_embeddings=None if emb is None else emb[np.asarray(labeled, dtype=np.int64)],
        )
        picked = [int(rest[j]) for j in chosen.rows]
        if len(picked) != k or len(set(picked)) != k:
            raise RuntimeError(f"selection.select({name!r}) returned {len(set(picked))} distinct rows, asked {k}")
        labeled.extend(picked)
        in_pool[picked] = False
        step += 1
    out["labeled_order"] = labeled
    out["seconds"] = round(time.perf_counter() - start_time, 3)
    return out


def steps_per_run(initial: int, batch: int, budget: int) -> int:
    """Learning-curve points of one run: the initial fit plus one per batch up to the budget."""
    return 1 + math.ceil((budget - initial) / batch)


# worker-process state: the plan and the progress queue, set once per process
_PLAN: Plan | None = None
_TICKS: Any = None


def _one_thread() -> Any:
    """One BLAS/OpenMP thread: the models are small, and on a busy machine OpenMP's thread team makes
    scikit-learn's k-means 40x slower (measured: 0.8 s vs 0.02 s per cluster_ids call at load 7).
    Parallelism comes from --jobs processes instead."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(1)


def _init_worker(plan: Plan, ticks: Any) -> None:
    global _PLAN, _TICKS
    _PLAN, _TICKS = plan, ticks
    _one_thread()


def _worker_run(name: str, repeat: int) -> dict[str, Any]:
    assert _PLAN is not None
    return run_one(_PLAN, name, repeat, tick=lambda: _TICKS.put(1))


# -- summary -------------------------------------------------------------------------------------


def aulc(n_labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the learning curve over its label range, divided by that range: in [0, 1]."""
    x = np.asarray(n_labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(x) == 1 or x[-1] == x[0]:
        return float(s[0])
    return float(np.sum((s[1:] + s[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def labels_to_reach(n_labels: Sequence[int], scores: Sequence[float], target: float) -> int | None:
    """Smallest n from which ``scores`` stay >= ``target`` up to the end; None if the end is below it."""
    s = np.asarray(scores, dtype=np.float64)
    below = np.flatnonzero(s < target - 1e-12)
    if len(below) == 0:
        return int(n_labels[0])
    last = int(below[-1])
    return None if last == len(s) - 1 else int(n_labels[last + 1])


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]], full_pool: Mapping[str, float]) -> dict[str, Any]:
    """Per strategy and metric: AULC, labels to 95% / 99% of the full pool, ratios to random (SCHEMA_DOC)."""
    summary: dict[str, Any] = {}
    for name, reps in runs.items():
        per: dict[str, Any] = {}
        for metric in METRICS:
            n = reps[0]["n_labels"]
            curves = np.array([r[metric] for r in reps], dtype=np.float64)
            mean = curves.mean(axis=0)
            areas = [aulc(n, c) for c in curves]
            entry: dict[str, Any] = {
                "aulc": round(float(np.mean(areas)), 6),
                "aulc_std": round(float(np.std(areas)), 6),
                "aulc_per_repeat": [round(a, 6) for a in areas],
                "aulc_wins_vs_random": None,
                "final": round(float(mean[-1]), 6),
            }
            for t in TARGETS:
                pct = round(t * 100)
                goal = t * full_pool[metric]
                entry[f"labels_to_{pct}"] = labels_to_reach(n, mean, goal)
                entry[f"labels_to_{pct}_per_repeat"] = [labels_to_reach(n, c, goal) for c in curves]
                entry[f"ratio_to_random_{pct}"] = None
            per[metric] = entry
        summary[name] = per
    if "random" in summary:
        rand = summary["random"]
        for _name, per in summary.items():
            for metric in METRICS:
                entry = per[metric]
                mine = entry["aulc_per_repeat"]
                theirs = rand[metric]["aulc_per_repeat"]
                entry["aulc_wins_vs_random"] = round(
                    float(np.mean([a >= b - 1e-12 for a, b in zip(mine, theirs, strict=True)])), 6
                )
                for t in TARGETS:
                    key = f"labels_to_{round(t * 100)}"
                    a, b = entry[key], rand[metric][key]
                    entry[f"ratio_to_random_{round(t * 100)}"] = None if a is None or b is None else round(a / b, 4)
    return summary


# -- the simulation ------------------------------------------------------------------------------


@dataclass
class SimulationConfig:
    """Everything ``lsal simulate`` was asked to do (the command line, or a benchmark's settings)."""

    data: str
    label_column: str
    strategies: list[str]
    text_column: str | None = None
    feature_columns: list[str] | None = None
    label_config: str | None = None
    initial: int = 20
    batch: int = 10
    budget: int = 200
    repeats: int = 5
    test_fraction: float = 0.25
    seed: int = 0
    jobs: int = 1
    out: str | None = None
    learner_params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    test_data: str | None = None  # a fixed labeled test file; the whole of `data` is then the pool
    model: str = BUILTIN
    models_env: str = ""


def check_config(cfg: SimulationConfig) -> list[str]:
    """Validate the numeric settings and the strategy names; returns the names, de-duplicated."""
    if not cfg.strategies:
        raise SimulationError("--strategies is empty")
    names: list[str] = []
    for raw in cfg.strategies:
        name = raw.strip().lower()
        try:
            strategies.resolve(name)
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
        if name not in names:
            names.append(name)
    if cfg.initial < 2 and cfg.initial != 0:
        raise SimulationError(
            "--initial must be 0 (the server's cold-start order) or >= 2 (a model needs two classes), "
            f"got {cfg.initial}"
        )
    if cfg.batch < 1:
        raise SimulationError(f"--batch must be >= 1, got {cfg.batch}")
    first = cfg.initial or COLD_START_LABELS
    if cfg.budget < first:
        raise SimulationError(f"--budget ({cfg.budget}) is smaller than the initial set ({first})")
    if cfg.repeats < 1:
        raise SimulationError(f"--repeats must be >= 1, got {cfg.repeats}")
    if not 0 < cfg.test_fraction < 1:
        raise SimulationError(f"--test-fraction must be between 0 and 1, got {cfg.test_fraction}")
    if cfg.jobs < 1:
        raise SimulationError(f"--jobs must be >= 1, got {cfg.jobs}")
    if cfg.seed < 0:
        raise SimulationError(f"--seed must be >= 0, got {cfg.seed}")
    probe = TaskSpec("label", "text", "text", ("a", "b"), False, "text", "Text")
    try:
        Learner(probe, **cfg.learner_params)
    except (TypeError, ValueError) as exc:
        raise SimulationError(f"--learner-param: {exc}") from None
    return names


class ProgressBar:
    """A one-line progress bar on a terminal stream (stderr): steps done, elapsed, ETA."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "simulate") -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, force: bool = False) -> None:
        """Count ``n`` finished steps and redraw (at most every 0.2 s unless ``force``)."""
        self.done += n
        now = time.monotonic()
        if not force and now - self._last < 0.2 and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        frac = min(self.done / self.total, 1.0)
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        filled = int(30 * frac)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} steps"
            f" {elapsed:6.0f}s elapsed, ~{eta:5.0f}s left"
        )
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self.update(0, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _expected_cost(name: str) -> int:
    return strategies.get(name).cost_rank


def simulate(cfg: SimulationConfig, progress: TextIO | None = None) -> dict[str, Any]:
    """Run the simulation described by ``cfg``; returns the curves.json document (and writes it if ``out``)."""
    names = check_config(cfg)
    ds = build_dataset(
        cfg.data,
        cfg.label_column,
        text_column=cfg.text_column,
        feature_columns=cfg.feature_columns,
        label_config=cfg.label_config,
    )
    test_ds = None
    if cfg.test_data:
        test_ds = build_dataset(
            cfg.test_data,
            cfg.label_column,
            text_column=cfg.text_column,
            feature_columns=ds.feature_columns or cfg.feature_columns,
            label_config=cfg.label_config,
        )
        unknown = sorted(set(test_ds.y) - set(ds.y))
        if unknown:
            raise SimulationError(f"--test-data has labels the pool never has: {unknown}")
        pool_idx, test_idx = np.arange(len(ds.y)), np.arange(len(test_ds.y))
    else:
        pool_idx, test_idx = split(ds.y, cfg.test_fraction, cfg.seed)
    test_source = test_ds if test_ds is not None else ds
    pool_y = [ds.y[i] for i in pool_idx]
    if len(set(pool_y)) < 2:
        raise SimulationError("the training pool holds a single class; lower --test-fraction")
    if cfg.budget > len(pool_idx):
        raise SimulationError(
            f"--budget ({cfg.budget}) is larger than the training pool ({len(pool_idx)} rows after the "
            f"{cfg.test_fraction:g} test split)"
        )
    seeds = [cfg.seed + r for r in range(cfg.repeats)]
    pool_inputs = [ds.inputs[i] for i in pool_idx]
    pool_emb = pool_embeddings(ds.spec, pool_inputs, cfg.model, cfg.learner_params)
    plan = Plan(
        spec=ds.spec,
        pool_inputs=pool_inputs,
        pool_y=pool_y,
        test_inputs=[test_source.inputs[i] for i in test_idx],
        test_y=[test_source.y[i] for i in test_idx],
        initial_sets=[
            initial_set(pool_y, cfg.initial, s)
            if cfg.initial
            else cold_start_set(ds.spec, pool_inputs, pool_y, COLD_START_LABELS, s, cfg.learner_params, pool_emb)
            for s in seeds
        ],
        seeds=seeds,
        batch=cfg.batch,
        budget=cfg.budget,
        learner_params=dict(cfg.learner_params),
        model=cfg.model,
        models_env=cfg.models_env,
        pool_embeddings=pool_emb,
    )
    resolved = {n: strategies.resolve(n) for n in names}
    registry = _registry(cfg.models_env)
    for n in dict.fromkeys(resolved.values()):
        entry = strategies.get(n)
        refused = registry.refusal(cfg.model, ds.spec, entry.name, entry.needs)
        if refused is not None:
            raise SimulationError(f"--model {cfg.model}: {refused[0]}")
    # A name that resolves to a strategy already listed (default -> diversity) reuses its runs.
    concrete: list[str] = list(dict.fromkeys(resolved.values()))

    full = _fit(plan, range(len(pool_idx)), cfg.seed)
    full_acc, full_f1 = _score(full, plan.test_inputs, plan.test_y)
    full_pool = {"n_labels": len(pool_idx), "accuracy": full_acc, "macro_f1": full_f1}

    tasks = sorted(((c, r) for c in concrete for r in range(cfg.repeats)), key=lambda t: -_expected_cost(t[0]))
    bar = ProgressBar(len(tasks) * steps_per_run(cfg.initial or COLD_START_LABELS, cfg.batch, cfg.budget), progress)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        if cfg.jobs == 1:
            with _one_thread():
                for c, r in tasks:
                    results[(c, r)] = run_one(plan, c, r, tick=bar.update)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            ticks = ctx.Queue()
            with ProcessPoolExecutor(
                max_workers=min(cfg.jobs, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(plan, ticks)
            ) as ex:
                futures: dict[Future[dict[str, Any]], tuple[str, int]] = {
                    ex.submit(_worker_run, c, r): (c, r) for c, r in tasks
                }
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(ticks, bar)
                    for fut in done:
                        results[futures[fut]] = fut.result()
                _drain(ticks, bar)
    finally:
        bar.close()

    runs = {n: [results[(resolved[n], r)] for r in range(cfg.repeats)] for n in names}
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "config": {
            "data": str(cfg.data),
            "label_column": cfg.label_column,
            "text_column": ds.text_column,
            "feature_columns": ds.feature_columns,
            "label_config": cfg.label_config,
            "strategies": names,
            "initial": cfg.initial,
            "batch": cfg.batch,
            "budget": cfg.budget,
            "repeats": cfg.repeats,
            "test_fraction": cfg.test_fraction,
            "test_data": cfg.test_data,
            "seed": cfg.seed,
            "jobs": cfg.jobs,
            "learner_params": dict(cfg.learner_params),
            "model": cfg.model,
            **cfg.extra,
        },
        "dataset": {
            "rows": len(ds.y) + ds.skipped_rows,
            "skipped_rows": ds.skipped_rows,
            "kind": ds.spec.kind,
            "labels": list(ds.spec.labels),
            "label_counts": {label: ds.y.count(label) for label in ds.spec.labels if label in set(ds.y)},
            "n_pool": len(pool_idx),
            "n_test": len(test_idx),
        },
        "full_pool": full_pool,
        "resolved": resolved,
        "runs": runs,
        "summary": summarize(runs, full_pool),
    }
    if cfg.out:
        out = Path(cfg.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "curves.json").write_text(json.dumps(doc, indent=1))
            plot_curves(doc, out / "curves.png")
        except OSError as exc:
            raise SimulationError(f"--out {out}: cannot write ({exc})") from None
    return doc


def _drain(ticks: Any, bar: ProgressBar) -> None:
    n = 0
    while True:
        try:
            n += ticks.get_nowait()
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)


# -- plot ----------------------------------------------------------------------------------------


def plot_curves(doc: Mapping[str, Any], path: str | os.PathLike[str], title: str | None = None) -> None:
    """Mean learning curve and a +-1 std band over repeats per strategy; the full-pool score dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (and none on servers)
    import matplotlib.pyplot as plt

    cfg = doc["config"]
    title = title or f"{Path(cfg['data']).name}: {cfg['repeats']} repeats, batch {cfg['batch']}"
    fig, axes = plt.subplots(1, len(METRICS), figsize=(6.2 * len(METRICS), 4.4), dpi=100)
    try:
        cmap = plt.get_cmap("tab10" if len(doc["runs"]) <= 10 else "tab20")
        for ax, metric in zip(axes, METRICS, strict=True):
            for i, (name, reps) in enumerate(doc["runs"].items()):
                n = np.asarray(reps[0]["n_labels"])
                curves = np.array([r[metric] for r in reps], dtype=np.float64)
                mean, std = curves.mean(axis=0), curves.std(axis=0)
                label = name if doc["resolved"].get(name, name) == name else f"{name} ({doc['resolved'][name]})"
                color = "black" if name == "random" else cmap(i % cmap.N)
                style = ":" if name == "random" else "-"
                ax.plot(n, mean, style, color=color, label=label, lw=1.6)
                ax.fill_between(n, mean - std, mean + std, color=color, alpha=0.12, lw=0)
            full = doc["full_pool"][metric]
            ax.axhline(full, color="grey", ls="--", lw=1.2, label=f"full pool ({doc['full_pool']['n_labels']} labels)")
            ax.axhline(0.99 * full, color="grey", ls=":", lw=0.8, label="99% of full pool")
            ax.set_xlabel("labeled examples")
            ax.set_ylabel(f"test {metric.replace('_', '-')}")
            ax.grid(alpha=0.3)
            lo = min(float(np.min([r[metric] for reps in doc["runs"].values() for r in reps])), full)
            ax.set_ylim(max(0.0, lo - 0.02), min(1.0, max(full, 0.0) + 0.03) + 0.005)
        axes[0].legend(loc="lower right", fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# -- command line --------------------------------------------------------------------------------


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _learner_param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    parsed: Any = raw.strip()
    for cast in (int, float):
        try:
            parsed = cast(raw)
            break
        except ValueError:
            continue
    return key.strip(), parsed


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``simulate`` subcommand on the ``lsal`` argument parser."""
    p = sub.add_parser(
        "simulate",
        help="oracle simulation: strategies vs random on a labeled file (curves.json + curves.png)",
        description="Replay active learning on a labeled .csv/.jsonl with the production learner and batch "
        "selection; writes DIR/curves.json and DIR/curves.png.",
    )
    p.add_argument("--data", required=True, metavar="FILE", help=".csv (with a header) or .jsonl")
    p.add_argument("--label-column", required=True, metavar="COL")
    inp = p.add_mutually_exclusive_group()
    inp.add_argument("--text-column", metavar="COL", help="text input (a Text task)")
    inp.add_argument(
        "--feature-columns",
        metavar="A,B,...",
        type=_csv_list,
        help="numeric inputs (a tabular task); default: every other column, if all numeric",
    )
    p.add_argument("--label-config", metavar="XML", help="a Label Studio label config (e.g. label_config/spam.xml)")
    p.add_argument(
        "--strategies",
        required=True,
        type=_csv_list,
        metavar="NAME,...",
        help=f"any of: {', '.join(strategies.STRATEGY_NAMES)}",
    )
    p.add_argument(
        "--initial",
        type=int,
        default=20,
        help=f"labels in the random initial set (default 20); 0: the server's cold-start seed order "
        f"({COLD_START_LABELS} labels)",
    )
    p.add_argument("--batch", type=int, default=10, help="labels asked per step (default 10)")
    p.add_argument("--budget", type=int, default=200, help="total labels at the end, initial set included")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument(
        "--test-data",
        metavar="FILE",
        help="a fixed labeled test file (same columns); the whole of --data is then the pool",
    )
    p.add_argument("--seed", type=int, default=0, help="test split seed; repeat r uses seed + r")
    p.add_argument("--jobs", type=int, default=1, help="worker processes over (strategy, repeat)")
    p.add_argument(
        "--learner-param",
        action="append",
        default=[],
        type=_learner_param,
        metavar="KEY=VALUE",
        help="a Learner setting to try instead of its default, e.g. C=1 (repeatable)",
    )
    p.add_argument(
        "--model",
        default=BUILTIN,
        metavar="NAME",
        help="a registered model (lsal.models entry points, AL_MODELS); default: builtin",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)
    return p


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """The SimulationConfig of parsed command-line arguments."""
    return SimulationConfig(
        data=args.data,
        label_column=args.label_column,
        strategies=args.strategies,
        text_column=args.text_column,
        feature_columns=args.feature_columns,
        label_config=args.label_config,
        initial=args.initial,
        batch=args.batch,
        budget=args.budget,
        repeats=args.repeats,
        test_fraction=args.test_fraction,
        seed=args.seed,
        jobs=args.jobs,
        out=args.out,
        learner_params=dict(args.learner_param),
        test_data=args.test_data,
        model=args.model,
        models_env=os.environ.get("AL_MODELS", ""),
    )


def format_table(doc: Mapping[str, Any], metric: str) -> str:
    """A plain-text table of the summary (printed by the CLI; markdown by bench/label_efficiency.py)."""
    rows = [f"{'strategy':<22} {'AULC':>7} {'wins':>5} {'n@95%':>6} {'n@99%':>6} {'x rnd 95':>8} {'x rnd 99':>8}"]

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for name, per in doc["summary"].items():
        e = per[metric]
        rows.append(
            f"{name:<22} {e['aulc']:>7.4f} {fmt(e['aulc_wins_vs_random'], '.0%'):>5} "
            f"{fmt(e['labels_to_95'], 'd'):>6} {fmt(e['labels_to_99'], 'd'):>6} "
            f"{fmt(e['ratio_to_random_95'], '.2f'):>8} {fmt(e['ratio_to_random_99'], '.2f'):>8}"
        )
    return "\n".join(rows)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``lsal simulate``: run, print the summary tables, return the exit code (2 on bad input)."""
    try:
        if args.quiet:
            with open(os.devnull, "w") as sink:
                doc = simulate(config_from_args(args), progress=sink)
        else:
            doc = simulate(config_from_args(args), progress=sys.stderr)
    except SimulationError as exc:
        print(f"lsal simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for metric in METRICS:
        print(f"{metric} (full pool {doc['full_pool'][metric]:.4f}, {doc['full_pool']['n_labels']} labels)")
        print(format_table(doc, metric))
    print(f"wrote {Path(args.out) / 'curves.json'} and {Path(args.out) / 'curves.png'}")
    return 0


__all__ = [
    "SCHEMA_DOC",
    "Dataset",
    "SimulationConfig",
    "SimulationError",
    "add_parser",
    "aulc",
    "build_dataset",
    "labels_to_reach",
    "simulate",
    "summarize",
]
