"""One active-learning cycle for a project.

fetch labels -> fit -> publish -> score the unlabeled pool chunk by chunk -> write the most
informative slice back as predictions -> switch the project's model_version (only after every chunk
was written) -> evaluate (cross-validated) and add the metrics to the version's metadata -> stop-set
stability -> record the cycle.

Evaluation and stability come after the switch because nothing before it needs them: a new label
goes live one evaluation sooner. Between publish and the metadata update a reader sees the version
with ``"metrics": null`` (``/status``, the learning curve and ``/metrics`` show no figures for it).

Below the cold-start threshold no model is trained: the pool gets a diversity seed order instead
(round-robin over k-means clusters of label-free features) so the first labels cover the data.

The cycle talks to Label Studio only through `LabelStudioClient` and never writes anything a
person entered: it writes predictions of its own versions and the project's `model_version` /
`sampling` settings, and deletes only prediction versions it recorded as its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import KFold, StratifiedKFold

from backend import clusters, pace, projects, selection, stopping, strategies
from backend.config import ProjectConfig, Settings
from backend.cycle_log import cycle_history, record_cycle
from backend.features.cache import PoolEmbeddings
from backend.images import ImageFeatureCache, feature_cache
from backend.jobs import LabelHints
from backend.labelconfig import TaskSpec, parse_label_config, task_input
from backend.labels import LabelCache
from backend.labelstudio import LabelStudioClient
from backend.learner import TrainingSet, training_set
from backend.models import BUILTIN, LearnerModel, Model, ModelRegistry, fit_checked, scorer_for, scorer_for_strategy
from backend.models.base import call, check_proba
from backend.pool import PoolCache, PoolSnapshot, config_hash
from backend.projectdir import ProjectDir, read_json, write_json
from backend.selection import Prediction, Scorer
from backend.store import ModelStore

log = logging.getLogger("lsal.cycle")

Progress = Callable[[str, int, int], None]
IMPORT_CHUNK = 5_000
CV_MAX_LABELS = 5_000


def _no_progress(stage: str, done: int = 0, total: int = 0) -> None:
    pass


def _unfenced() -> None:
    pass


@dataclass
class CycleDeps:
    """What a cycle talks to: settings, the Label Studio client, the model store, a progress callback.

    ``fence`` is called immediately before every write of project state (MODEL_DIR) or to Label
    Studio, and raises when the project lock is no longer this job's (backend.worker.Fence.check):
    a job that lost its lock stops before its next write instead of writing over another worker's.
    """

    settings: Settings
    client: LabelStudioClient
    store: ModelStore
    progress: Progress = _no_progress
    models: ModelRegistry = field(default_factory=ModelRegistry)
    #: takes the tasks webhooks named since the last cycle (backend.jobs); None: read every label
    label_hints: Callable[[], LabelHints] | None = None
    fence: Callable[[], None] = _unfenced

    def load_model(self, project: int, spec: TaskSpec) -> tuple[str, Model] | None:
        """The project's current (version, model), or None before its first version."""
        return self.store.load(project, lambda path: self.models.load_version(path, spec))


@dataclass
class CycleReport:
    """What one cycle did (the job's result, the cycle log, metrics): status, version, counts, timings."""

    project: int
    status: str = "started"  # started -> trained | cold_start | no_pool | partial_write
    version: str | None = None
    labels: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    pool: int = 0
    depth: int = 0  # the slice asked for this cycle (backend/pace.py); written is what was sent
    pace: dict[str, float] | None = None
    written: int = 0
    created: int = 0
    dropped: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    training_stats: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] = field(default_factory=dict)
    pool_uncertainty: float | None = None
    embeddings: dict[str, int] = field(default_factory=dict)  # tasks embedded now / reused from the pool cache
    labels_read: str | None = None  # full (the whole export) or hints (only the tasks webhooks named)
    clusters: dict[str, Any] = field(default_factory=dict)  # the pool clusters: reused, extended or fitted; k
    evaluation_error: str | None = None  # why the live version has no metrics (its evaluation raised)
    finished_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return dict(self.__dict__)


@contextmanager
def _stage(report: CycleReport, progress: Progress, name: str) -> Iterator[None]:
    progress(name, 0, 0)
    start = time.perf_counter()
    try:
        yield
    finally:
        report.timings[name] = round(time.perf_counter() - start, 4)
        log.info("project=%s stage=%s seconds=%.3f", report.project, name, report.timings[name])


def project_spec(deps: CycleDeps, project: int) -> tuple[TaskSpec, ProjectConfig, str]:
    """The project's label config and settings: from /setup if seen, else from Label Studio."""
    setup = projects.load(deps.settings.model_dir, project)
    if setup is not None:
        return parse_label_config(setup.label_config), setup.config(deps.settings), setup.label_config
    xml = deps.client.get_project(project)["label_config"]
    return parse_label_config(xml), ProjectConfig.defaults(deps.settings), xml


def cold_start(ts: TrainingSet, config: ProjectConfig, spec: TaskSpec) -> str | None:
    """Why the project is still in cold start, or None once it can train."""
    if len(ts.y) < config.min_labels:
        return f"{len(ts.y)} usable labels < min_labels={config.min_labels}"
    if not spec.multi_label and len(set(ts.y)) < 2:
        return f"only one class labeled so far ({sorted(set(ts.y))})"
    return None


def cross_validate(
    spec: TaskSpec,
    ts: TrainingSet,
    seed: int,
    folds: int = 5,
    learner_params: Mapping[str, Any] | None = None,
    embeddings: np.ndarray | None = None,
    *,
    models: ModelRegistry | None = None,
    model: str = BUILTIN,
) -> dict[str, float | None]:
    """Cross-validated accuracy and macro-F1 of a fresh model (``model`` from ``models``; the built-in
    learner with ``learner_params`` and the texts' cached ``embeddings``) on the labeled set.

    Stratified k-fold with k = min(folds, smallest class count); None when a class has a single
    example. Capped at CV_MAX_LABELS labels (a seeded subsample) to bound the cost.
    """
    n = len(ts.y)
    idx = np.arange(n)
    if n > CV_MAX_LABELS:
        idx = np.sort(np.random.default_rng(seed).choice(n, CV_MAX_LABELS, replace=False))
    inputs = [ts.inputs[i] for i in idx]
    y = [ts.y[i] for i in idx]
    emb = None if embeddings is None else embeddings[idx]
    if spec.multi_label:
        splitter: Any = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
        split_y = np.zeros(len(y))
    else:
        counts = np.unique(np.asarray(y, dtype=object).astype(str), return_counts=True)[1]
        k = int(min(folds, counts.min()))
        if k < 2:
            return {"cv_accuracy": None, "cv_macro_f1": None, "cv_folds": None}
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        split_y = np.asarray(y, dtype=object).astype(str)
    truth: list[Any] = []
    pred: list[Any] = []
    for train_idx, test_idx in splitter.split(np.zeros(len(y)), split_y):
        train_y = [y[i] for i in train_idx]
        if not spec.multi_label and len(set(train_y)) < 2:
            continue
        fresh = (models or ModelRegistry()).create(model, spec, seed=seed, learner_params=learner_params)
        fitted = fit_checked(fresh, [inputs[i] for i in train_idx], train_y, None if emb is None else emb[train_idx])
        test = [inputs[i] for i in test_idx]
        if isinstance(fitted, LearnerModel):
            proba = fitted.learner.predict_proba(fitted.learner.transform(test, None if emb is None else emb[test_idx]))
        else:
            proba = check_proba(fitted, call(fitted, "predict_proba", test), len(test))
        labels = fitted.predict_labels(proba)
        truth.extend(y[i] for i in test_idx)
        pred.extend(labels)
    if not truth:
        return {"cv_accuracy": None, "cv_macro_f1": None, "cv_folds": None}
    if spec.multi_label:
        classes = list(spec.labels)
        t = np.array([[c in set(row) for c in classes] for row in truth])
        p = np.array([[c in set(row) for c in classes] for row in pred])
        acc = float(accuracy_score(t, p))
        f1 = float(f1_score(t, p, average="macro", zero_division=0))
    else:
        flat = [row[0] if row else "" for row in pred]
        acc = float(accuracy_score(truth, flat))
        f1 = float(f1_score(truth, flat, average="macro", zero_division=0))
    return {"cv_accuracy": round(acc, 6), "cv_macro_f1": round(f1, 6), "cv_folds": splitter.get_n_splits()}


# -- the cycle -----------------------------------------------------------------------------------


#: cycle log entries read to measure the team's pace (covers pace.WINDOW_S at a cycle per 1.5 s)
PACE_HISTORY = 200


def slice_depth(
    deps: CycleDeps, project: int, config: ProjectConfig, labels: int, now: float | None = None
) -> tuple[int, dict[str, float] | None]:
    """How many predictions this cycle writes: the team's pace (backend/pace.py) within
    [AL_QUEUE_FLOOR, AL_QUEUE_DEPTH], and the pace it was computed from (None: no cycle log yet).
    ``now`` is the epoch time the pace is measured at (default: the clock)."""
    history = cycle_history(deps.settings.model_dir, project, last=PACE_HISTORY)
    observed = pace.observed_pace(history, labels, time.time() if now is None else now)
    depth = pace.slice_depth(config.queue_depth, min(config.queue_floor, config.queue_depth), observed)
    return depth, observed.as_dict() if observed is not None else None


def run_cycle(deps: CycleDeps, project: int) -> CycleReport:
    """One active-learning cycle for ``project`` (the worker's job; stages in the module docstring).

    Below the cold-start threshold the pool gets a seed order instead of a model. The queue is
    switched to the new version only after every prediction was written (else ``partial_write``).
    """
    report = CycleReport(project=project)
    settings, progress = deps.settings, deps.progress
    with _stage(report, progress, "setup"):
        spec, config, xml = project_spec(deps, project)
        model_class = deps.models.model_class(config.model, spec)  # an unknown or broken model fails first
    with _stage(report, progress, "fetch_labels"):
        labeled, report.labels_read = read_labels(deps, project)
        ts = training_set(spec, labeled)
    # Tasks with any annotation (skips included) are not offered again.
    done = {int(t["id"]) for t in labeled}
    # Cached text embeddings feed the built-in learner only; a plugin featurizes its own inputs.
    pool_embeddings = _pool_embeddings(spec, config, progress) if model_class is LearnerModel else None
    with _stage(report, progress, "read_pool"):
        ids, inputs = unlabeled_pool(
            deps, project, spec, xml, done, prepare=pool_embeddings.update if pool_embeddings else None, ts=ts
        )
    if pool_embeddings is not None:
        report.embeddings = dict(pool_embeddings.stats)
    pool_emb: Any = None
    labeled_emb: np.ndarray | None = None
    if pool_embeddings is not None:
        pool_emb = pool_embeddings.rows(ids, inputs)
        labeled_emb = np.asarray(pool_embeddings.rows(ts.task_ids, ts.inputs))
        pool_embeddings.release()  # the task data can go; pool_emb reads the embedding matrix only
    with _stage(report, progress, "clusters"):
        pool_clusters = pool_cluster_ids(deps, project, spec, config, xml, ids, inputs, pool_emb, report)
    report.labels = len(ts.y)
    report.depth, report.pace = slice_depth(deps, project, config, report.labels)
    report.training_stats = ts.stats
    report.label_counts = dict(ts.stats.get("label_counts", {}))

    reason = cold_start(ts, config, spec)
    if reason is not None:
        report.status = "cold_start"
        report.training_stats["cold_start_reason"] = reason
        _seed_order(deps, project, spec, config, report, ids, inputs, pool_clusters, pool_emb)
        deps.fence()
        record_cycle(deps.settings.model_dir, report)
        return report

    with _stage(report, progress, "fit"):
        fresh = deps.models.create(config.model, spec, seed=settings.seed, learner_params=config.learner_params())
        model = fit_checked(fresh, ts.inputs, ts.y, labeled_emb)
    with _stage(report, progress, "publish"):
        metadata = {
            "project": project,
            "model": config.model,
            "n_labels": len(ts.y),
            "label_counts": report.label_counts,
            "metrics": None,  # until _evaluate, after the switch
            "strategy": strategies.resolve(config.strategy),
            "strategy_params": dict(config.strategy_params),
            "classes": list(model.classes_),
            "training_stats": ts.stats,
        }
        deps.fence()
        report.version = deps.store.publish(project, model.save, metadata)
    report.status = "trained"
    _score_and_write(deps, project, spec, config, model, report, ids, inputs, pool_clusters, ts, pool_emb, labeled_emb)
    _evaluate(deps, project, spec, config, report, ts, labeled_emb)
    with _stage(report, progress, "stability"):
        report.stability = stop_set_agreement(
            deps.settings, project, scorer_for(model), report.version, ids, inputs, fence=deps.fence
        )
    deps.fence()
    record_cycle(deps.settings.model_dir, report)
    return report


def _evaluate(
    deps: CycleDeps,
    project: int,
    spec: TaskSpec,
    config: ProjectConfig,
    report: CycleReport,
    ts: TrainingSet,
    labeled_emb: np.ndarray | None,
) -> None:
    """Cross-validate the published version's model and add the figures to its metadata (their one
    home; the cycle report carries a copy for the log)."""
    assert report.version is not None
    with _stage(report, deps.progress, "evaluate"):
        try:
            report.metrics = cross_validate(
                spec,
                ts,
                deps.settings.seed,
                learner_params=config.learner_params(),
                embeddings=labeled_emb,
                models=deps.models,
                model=config.model,
            )
        except Exception as exc:
            # The version is live already and its model fitted on all labels: a fold that a plugin
            # model cannot fit leaves the version without metrics, not the cycle failed (and unlogged).
            report.evaluation_error = f"{type(exc).__name__}: {exc}"
            log.warning("project=%s evaluating %s failed: %s", project, report.version, report.evaluation_error)
            return
        deps.fence()
        deps.store.update_metadata(project, report.version, {"metrics": report.metrics})


def read_labels(deps: CycleDeps, project: int) -> tuple[list[dict[str, Any]], str]:
    """The project's labeled tasks from Label Studio and how they were read (``full`` or ``hints``):
    with ``deps.label_hints``, only the tasks webhooks named, between full reads (backend/labels.py)."""
    client = deps.client
    if deps.label_hints is None:
        return client.labeled_tasks(project), "full"
    return LabelCache(deps.settings.model_dir, project).sync(
        deps.settings.labels_reconcile,
        deps.label_hints,
        lambda: client.labeled_tasks(project),
        lambda ids: client.labeled_tasks(project, ids),
        fence=deps.fence,
    )


def stop_set_agreement(
    settings: Settings,
    project: int,
    learner: Scorer,
    version: str | None,
    ids: list[int],
    inputs: list[Any],
    *,
    fence: Callable[[], None] = _unfenced,
) -> dict[str, Any]:
    """Predict the project's fixed stop set and compare with the previous version (stopping.py).

    The stop set is drawn once (seeded, up to STOP_SET_SIZE unlabeled tasks) and kept in
    MODEL_DIR/<project>/stopset.json; tasks that leave the pool stay in it, so successive versions
    are always compared on the same examples.
    """
    pdir = ProjectDir(settings.model_dir, project)
    by_id = dict(zip(ids, inputs, strict=True))
    try:
        stored = read_json(pdir.stop_set)
        stop_ids = [int(i) for i in stored["ids"]]
        stop_inputs = stored["inputs"]
    except (TypeError, ValueError, KeyError):
        rng = np.random.default_rng(settings.seed)
        pick = sorted(rng.choice(len(ids), min(stopping.STOP_SET_SIZE, len(ids)), replace=False)) if ids else []
        stop_ids = [ids[i] for i in pick]
        stop_inputs = [by_id[i] for i in stop_ids]
        # Image inputs are feature vectors: stored as lists of numbers.
        stored_inputs = [x.tolist() if isinstance(x, np.ndarray) else x for x in stop_inputs]
        fence()
        write_json(pdir.stop_set, {"ids": stop_ids, "inputs": stored_inputs})
    if not stop_ids:
        return {"kappa": None, "changed": None, "compared": 0}
    labels = learner.predict_labels(learner.predict_proba(learner.transform(stop_inputs)))
    now = {i: list(lab) for i, lab in zip(stop_ids, labels, strict=True)}
    try:
        prev = {int(k): v for k, v in read_json(pdir.stop_predictions)["labels"].items()}
    except (TypeError, ValueError, KeyError, AttributeError):
        prev = {}
    result = stopping.agreement(prev, now) if prev else {"kappa": None, "changed": None, "compared": 0}
    fence()
    write_json(pdir.stop_predictions, {"version": version, "labels": now})
    return result


def pool_cluster_ids(
    deps: CycleDeps,
    project: int,
    spec: TaskSpec,
    config: ProjectConfig,
    label_config: str,
    ids: list[int],
    inputs: list[Any],
    embeddings: Any,
    report: CycleReport,
) -> np.ndarray:
    """Each pool task's cluster id (``ids`` order), stable across versions (backend/clusters.py): on
    the texts' cached ``embeddings`` when the project has them, else on label-free features."""
    path = ProjectDir(deps.settings.model_dir, project).pool_clusters
    space = f"embeddings:{config.embedding_model}" if embeddings is not None else "label_free"
    key = f"{space}:{config_hash(label_config)}"

    def features() -> Any:
        if embeddings is not None:
            return embeddings
        return selection.label_free_features(spec, inputs, deps.settings.seed, config.learner_params())

    labels, kept, status = clusters.assign(clusters.load(path), ids, features, key, seed=deps.settings.seed)
    if status != "reused":
        deps.fence()
        clusters.save(path, kept)
    report.clusters = {"status": status, "k": kept.k}
    return labels


def _pool_embeddings(spec: TaskSpec, config: ProjectConfig, progress: Progress) -> PoolEmbeddings | None:
    """The pool's embedding cache for this cycle, or None when the project's features use none."""
    if spec.kind != "text" or config.text_features == "tfidf":
        return None
    return PoolEmbeddings(spec, config.embedding_model, progress)


def unlabeled_pool(
    deps: CycleDeps,
    project: int,
    spec: TaskSpec,
    label_config: str,
    done: set[int],
    prepare: Callable[[PoolSnapshot], bool] | None = None,
    *,
    ts: TrainingSet | None = None,
) -> tuple[list[int], list[Any]]:
    """Ids and model inputs of the tasks still to label, from the pool cache (read in full when due).

    `prepare` sees the snapshot before it is saved (the pool's embeddings are added there). Image
    projects: the inputs are image feature vectors (see :func:`image_inputs`), and so are the
    training set's (``ts``, updated in place)."""
    cache = PoolCache(deps.settings.model_dir, project, fence=deps.fence)
    snap = cache.sync(
        label_config,
        deps.settings.pool_reconcile,
        lambda: deps.client.iter_tasks(project, include=("id", "data")),
        prepare=prepare,
    )
    ids, inputs = _pool_inputs(spec, snap, done)
    if spec.kind == "image":
        ids, inputs = image_inputs(deps, snap, ids, inputs, ts)
        cache.save(snap)
    return ids, inputs


def _pool_inputs(spec: TaskSpec, snap: PoolSnapshot, done: set[int]) -> tuple[list[int], list[Any]]:
    ids: list[int] = []
    inputs: list[Any] = []
    for task_id in sorted(snap.data):
        if task_id in done:
            continue
        try:
            inputs.append(task_input(spec, snap.data[task_id]))
        except (KeyError, ValueError, TypeError):
            continue  # a task without the configured key cannot be scored; it stays in LS's order
        ids.append(task_id)
    return ids, inputs


def image_cache(deps: CycleDeps) -> ImageFeatureCache:
    """Fetches and featurizes task images as the settings say (AL_IMAGE_*), with lsal's key."""
    return feature_cache(deps.settings, deps.client.session, deps.client.auth_headers)


def image_inputs(
    deps: CycleDeps, snap: PoolSnapshot, ids: list[int], refs: list[Any], ts: TrainingSet | None
) -> tuple[list[int], list[Any]]:
    """Image feature vectors for the pool (``ids``, ``refs``) and the training set ``ts`` (in place),
    computed once per task and image reference and kept in ``snap.arrays``.

    Tasks whose image cannot be fetched or decoded are left out and counted by reason in
    ``ts.stats``: ``images_skipped`` (labeled tasks) and ``pool_images_skipped`` (unlabeled ones)."""
    images = image_cache(deps)
    if ts is not None:
        kept_ids, vectors = images.vectors(snap.arrays, ts.task_ids, ts.inputs)
        position = {task_id: i for i, task_id in enumerate(ts.task_ids)}
        ts.y = [ts.y[position[t]] for t in kept_ids]
        ts.task_ids, ts.inputs = kept_ids, list(vectors)
        ts.stats["images_skipped"] = dict(images.skipped)
        ts.stats["used"] = len(ts.y)
        images.skipped.clear()
    out_ids, out_vectors = images.vectors(snap.arrays, ids, refs)
    if ts is not None:
        ts.stats["pool_images_skipped"] = dict(images.skipped)
    return out_ids, list(out_vectors)


def _score_and_write(
    deps: CycleDeps,
    project: int,
    spec: TaskSpec,
    config: ProjectConfig,
    model: Model,
    report: CycleReport,
    ids: list[int],
    inputs: list[Any],
    pool_clusters: np.ndarray,
    ts: TrainingSet,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
) -> None:
    settings, progress = deps.settings, deps.progress
    name = strategies.resolve(config.strategy)
    learner = scorer_for_strategy(model, name, config.strategy_params)
    report.pool = len(ids)
    if not ids:
        report.status = "no_pool"
        _switch(deps, project, config, report.version, report)
        return
    depth = min(report.depth or config.queue_depth, len(ids))
    with _stage(report, progress, "score"):
        chosen = selection.select(
            learner,
            inputs,
            name,
            depth,
            seed=settings.seed,
            multi_label=spec.multi_label,
            labeled_inputs=ts.inputs,
            labeled_y=ts.y,
            params=config.strategy_params,
            progress=progress,
            embeddings=embeddings,
            labeled_embeddings=labeled_embeddings,
        )
    report.pool_uncertainty = chosen.mean_informativeness
    # The batch was spread over its own groups; Label Studio gets the pool's, which keep their meaning.
    chosen = replace(chosen, clusters=pool_clusters[chosen.rows])
    assert report.version is not None
    _write(deps, project, report, chosen.predictions(spec, ids, report.version))
    if report.status != "partial_write":
        _switch(deps, project, config, report.version, report)


def _write(deps: CycleDeps, project: int, report: CycleReport, predictions: list[Prediction]) -> None:
    """Import the predictions in chunks, counting what Label Studio stored (``partial_write`` if not all)."""
    assert report.version is not None
    deps.fence()
    ProjectDir(deps.settings.model_dir, project).record_written(report.version)
    with _stage(report, deps.progress, "write"):
        for start in range(0, len(predictions), IMPORT_CHUNK):
            chunk = [p.to_json() for p in predictions[start : start + IMPORT_CHUNK]]
            deps.fence()
            created = deps.client.import_predictions(project, chunk)
            report.written += len(chunk)
            report.created += created
            deps.progress("write", report.written, len(predictions))
    report.dropped = report.written - report.created
    if report.dropped:
        # Label Studio answered 201 but stored fewer items: the new order is incomplete, so the
        # queue stays on the previous version. Reported (job result, metrics, log), not raised:
        # retrying the same write would drop the same items; the next cycle writes afresh.
        report.status = "partial_write"
        log.warning(
            "project=%s Label Studio stored %d of %d predictions of %s; the queue stays on the previous version",
            project,
            report.created,
            report.written,
            report.version,
        )


def _switch(deps: CycleDeps, project: int, config: ProjectConfig, version: str | None, report: CycleReport) -> None:
    """Point the project's queue at the new version, only after all of it was written."""
    if version is None:
        return
    fields: dict[str, Any] = {"model_version": version}
    if config.set_sampling:
        fields["sampling"] = "Uncertainty sampling"
    with _stage(report, deps.progress, "switch"):
        deps.fence()
        deps.client.update_project(project, **fields)


def _seed_order(
    deps: CycleDeps,
    project: int,
    spec: TaskSpec,
    config: ProjectConfig,
    report: CycleReport,
    ids: list[int],
    inputs: list[Any],
    pool_clusters: np.ndarray,
    embeddings: np.ndarray | None = None,
) -> None:
    """Cold start: order the pool round-robin over clusters so the first labels cover the data
    (Label Studio gets each task's pool cluster, as every version does)."""
    report.pool = len(ids)
    if len(ids) == 0:
        return
    with _stage(report, deps.progress, "seed_order"):
        order = selection.seed_order(
            spec,
            inputs,
            report.depth or config.queue_depth,
            deps.settings.seed,
            learner_params=config.learner_params(),
            embeddings=embeddings,
        )
    order = replace(order, clusters=pool_clusters[order.rows])
    version = f"seed-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    report.version = version
    _write(deps, project, report, order.predictions(spec, ids, version))
    if report.status != "partial_write":
        _switch(deps, project, config, version, report)


def score_new_tasks(deps: CycleDeps, project: int, task_ids: Sequence[int]) -> dict[str, Any]:
    """Stream scoring: predictions for just-imported tasks with the current model, so they enter
    the queue at their priority without waiting for a retrain. Skipped in cold start (no model)."""
    spec, config, _ = project_spec(deps, project)
    loaded = deps.load_model(project, spec)
    if loaded is None:
        return {"status": "cold_start", "written": 0}
    version, model = loaded
    if version not in ProjectDir(deps.settings.model_dir, project).written_versions():
        return {"status": "version_not_live", "written": 0}
    snap = PoolCache(deps.settings.model_dir, project).load()
    data = snap.data if snap is not None else {}
    ids: list[int] = []
    inputs: list[Any] = []
    for task_id in task_ids:
        try:
            inputs.append(task_input(spec, data[int(task_id)]))
        except (KeyError, ValueError, TypeError):
            continue
        ids.append(int(task_id))
    if spec.kind == "image" and snap is not None:
        # Not saved: the next cycle (which holds the project's pool) computes and keeps them.
        ids, inputs = image_cache(deps).vectors(dict(snap.arrays), ids, inputs)
    if not ids:
        return {"status": "nothing_to_score", "written": 0}
    learner = scorer_for_strategy(model, config.strategy, config.strategy_params)
    predictions = selection.predict(
        learner,
        spec,
        inputs,
        config.strategy,
        version,
        task_ids=ids,
        seed=deps.settings.seed,
        params=config.strategy_params,
    )
    created = 0
    for start in range(0, len(predictions), IMPORT_CHUNK):
        deps.fence()
        created += deps.client.import_predictions(
            project, [p.to_json() for p in predictions[start : start + IMPORT_CHUNK]]
        )
    return {"status": "scored", "version": version, "written": len(predictions), "created": created}


def cleanup_stale(deps: CycleDeps, project: int, limit: int | None = None) -> dict[str, int]:
    """Delete the prediction versions lsal wrote that the project no longer uses (a follow-up job),
    oldest first, at most ``limit`` of those that still have predictions (None: all)."""
    current = deps.client.get_project(project, fields=("model_version",)).get("model_version")
    present = deps.client.model_versions(project)
    deleted: dict[str, int] = {}
    pdir = ProjectDir(deps.settings.model_dir, project)
    for version in pdir.written_versions():
        if version == current:
            continue
        if version in present:
            if limit is not None and len(deleted) >= limit:
                break
            deps.fence()
            deleted[version] = deps.client.delete_model_version(project, version)
        deps.fence()
        pdir.forget_written(version)
    return deleted
