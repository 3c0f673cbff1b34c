"""A team of annotators on one project, against a real Label Studio 1.23.2 and lsal (issue 13). Prints JSON.

The whole stack is real and local: Label Studio on SQLite or PostgreSQL (``--db``; tests/lsharness.py:
a copy of a migrated template, a free port), `lsal serve` and one `lsal worker` as subprocesses, the
machine's Redis (DB 12, a unique queue name ``lsalbench-<hex>``; only its keys are deleted at the end),
lsal's own defaults otherwise (``AL_QUEUE_DEPTH``, ``AL_MIN_LABELS``, ``AL_RETRAIN_EVERY``). Label
Studio gets the feature flags docker-compose.yml sets, as deployed (bench/stack.py; ``--ls-env KEY=VALUE``
replaces them; the JSON's ``ls_env`` says which were set).

The team: ``--annotators`` Label Studio users (default 5), each signed up the way a person joins an
open-source Label Studio (``/user/signup/``: they join the organization) and each with their own
legacy API token (``GET /api/current-user/token``, as the Account page shows it). Each annotator
loops, for ``--duration`` seconds: ``GET /api/projects/{id}/next`` (LS locks the task to them) ->
think ``--think`` seconds (reading the task) -> ``POST /api/tasks/{id}/annotations/`` with the task's
true label (LS sends lsal the webhook inside that request).

Two arms, each on its own project with the 5,574 SMS messages (``--tasks``), from zero labels:

* ``al``: lsal connected (``POST /api/ml``), uncertainty sampling (lsal switches it on itself);
* ``random``: no backend, Label Studio's *Uniform sampling*: the same team labeling in random order.

Reported per arm:

* ``served_twice_at_once``: tasks served to one annotator while another held them (served, not yet
  submitted): Label Studio's task lock should make it 0; ``tasks_annotated_twice`` counts the damage;
* ``from_live_slice``: share of served tasks that carried a prediction of the version that was live
  when LS served it (the live version's interval comes from lsal's cycle log, whose ``finished_at``
  is written right after the switch PATCH returned; a version counts as live for a serve if its
  interval overlaps the request, with 0.5 s of slack for the PATCH-to-log gap), and every miss with
  its reason: ``no_version_yet`` (before lsal's first order), ``slice_drained`` (since the switch
  the team was served at least as many tasks as the version wrote), ``at_switch`` (served within
  0.5 s of a switch: chosen from the previous slice, answered after it), ``other``;
* ``freshness_s``: for every annotation, from the start of its POST to the switch of the first
  version trained on at least as many labeled tasks as existed after it (``labels`` of the cycle
  report), i.e. webhook -> new order live under the team's load; median and p95;
* ``errors`` (any HTTP answer other than 2xx, and the final 404 "no more tasks"), ``annotations``,
  ``cycles`` (by status) and ``written`` per cycle;
* ``curve``: macro-F1 against the number of labels and the seconds since the arm started, of
  lsal's learner (``backend.learner.Learner``, the production defaults) fitted on the first k labels
  in the order the team gave them, on a held-out test split: a seeded stratified ``--test-share`` of
  the messages minus every task either arm labeled (so the same test set for both arms).
  ``labels_to_reach_random_final`` says how many labels the ``al`` arm needed to reach the random
  arm's final macro-F1.

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI ML Repository,
CC BY 4.0). Usage::

    python bench/bench_team.py --db postgresql [--annotators 5] [--think 2] [--duration 180]

Progress on stderr, JSON on stdout. Load averages at start and end are in the JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import requests
from stack import REDIS_DB, REPO, Stack, apply_ls_env, compose_ls_flags, run_main
from stack import err as _err

LIVE_SLACK_S = 0.5  # the switch PATCH returns a moment before the cycle log's finished_at is written
CURVE_STEP = 10


def sms(n: int) -> list[tuple[str, str]]:
    """The first n SMS messages as (text, label) with the labels of label_config/spam.xml."""
    from tests.conftest import DATASETS  # finds the shared datasets (LSAL_SHARED, ../shared, /work/shared)

    with open(DATASETS / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        rows = [(r["text"], "spam" if r["label"] == "spam" else "no_spam") for r in csv.DictReader(f)]
    if n > len(rows):
        raise SystemExit(f"--tasks {n}: the SMS set has {len(rows)} messages")
    return rows[:n]


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "median": round(statistics.median(values), 3),
        "p95": quantile(values, 0.95),
        "max": round(max(values), 3),
        "n": len(values),
    }


# ---------------------------------------------------------------------- the team


@dataclass
class Serve:
    annotator: int
    task: int
    asked: float  # monotonic seconds since the arm's start: GET /next sent
    served: float  # ... answered
    versions: list[str]  # model_version of the predictions the served task carried
    posted: float | None = None  # POST /annotations sent (webhook inside it)
    submitted: float | None = None  # ... answered


@dataclass
class ArmLog:
    serves: list[Serve] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    exhausted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def annotator_loop(
    url: str,
    token: str,
    who: int,
    project: int,
    labels: dict[int, str],
    t0: float,
    stop_at: float,
    think: float,
    log: ArmLog,
) -> None:
    """One annotator: next -> think -> submit the true label, until ``stop_at`` (monotonic)."""
    s = requests.Session()
    s.headers["Authorization"] = f"Token {token}"
    while time.monotonic() < stop_at:
        asked = time.monotonic()
        try:
            r = s.get(f"{url}/api/projects/{project}/next", timeout=120)
        except requests.RequestException as exc:
            with log.lock:
                log.errors.append({"annotator": who, "call": "next", "error": type(exc).__name__})
            continue
        served = time.monotonic()
        if r.status_code == 404:
            with log.lock:
                log.exhausted += 1
            return
        if not r.ok:
            with log.lock:
                log.errors.append({"annotator": who, "call": "next", "status": r.status_code})
            time.sleep(think)
            continue
        task = r.json()
        tid = int(task["id"])
        versions = [str(p.get("model_version")) for p in task.get("predictions") or []]
        serve = Serve(who, tid, asked - t0, served - t0, versions)
        with log.lock:
            log.serves.append(serve)
        time.sleep(think)
        result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [labels[tid]]}}]
        posted = time.monotonic()
        try:
            r = s.post(
                f"{url}/api/tasks/{tid}/annotations/",
                json={"result": result, "lead_time": think, "was_cancelled": False},
                timeout=120,
            )
        except requests.RequestException as exc:
            with log.lock:
                log.errors.append({"annotator": who, "call": "annotate", "error": type(exc).__name__})
            continue
        if not r.ok:
            with log.lock:
                log.errors.append({"annotator": who, "call": "annotate", "status": r.status_code})
            continue
        serve.posted, serve.submitted = posted - t0, time.monotonic() - t0


def run_team(
    url: str, tokens: list[str], project: int, labels: dict[int, str], duration: float, think: float
) -> tuple[ArmLog, float]:
    """Run the team for ``duration`` seconds; the log and the arm's start (epoch seconds)."""
    log = ArmLog()
    t0 = time.monotonic()
    wall0 = time.time()
    threads = [
        threading.Thread(
            target=annotator_loop,
            args=(url, tok, who, project, labels, t0, t0 + duration, think, log),
            daemon=True,
        )
        for who, tok in enumerate(tokens)
    ]
    # Staggered by a fraction of the think time, as people do not click in unison.
    for th in threads:
        th.start()
        time.sleep(think / max(1, len(threads)))
    for th in threads:
        th.join(timeout=duration + 300)
    return log, wall0


# ---------------------------------------------------------------------- what the log says


def overlaps(log: ArmLog) -> tuple[int, int]:
    """(tasks served to one annotator while another held them, tasks annotated more than once)."""
    by_task: dict[int, list[Serve]] = {}
    for s in log.serves:
        by_task.setdefault(s.task, []).append(s)
    twice = 0
    for serves in by_task.values():
        held = [(s.served, s.submitted if s.submitted is not None else float("inf"), s.annotator) for s in serves]
        if any(a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for i, a in enumerate(held) for b in held[i + 1 :]):
            twice += 1
    annotated: dict[int, int] = {}
    for s in log.serves:
        if s.submitted is not None:
            annotated[s.task] = annotated.get(s.task, 0) + 1
    return twice, sum(1 for n in annotated.values() if n > 1)


def live_intervals(cycles: list[dict[str, Any]], wall0: float) -> list[tuple[float, float, dict[str, Any]]]:
    """(from, to, cycle) for every version that was switched live, in seconds since the arm's start."""
    switched = [c for c in cycles if c.get("version") and c.get("finished_at") and c.get("written")]
    switched.sort(key=lambda c: c["finished_at"])
    out = []
    for i, c in enumerate(switched):
        start = datetime.fromisoformat(c["finished_at"]).timestamp() - wall0
        end = (
            datetime.fromisoformat(switched[i + 1]["finished_at"]).timestamp() - wall0
            if i + 1 < len(switched)
            else float("inf")
        )
        out.append((start, end, c))
    return out


def slice_share(log: ArmLog, intervals: list[tuple[float, float, dict[str, Any]]]) -> dict[str, Any]:
    """Share of served tasks that carried a prediction of the live version, and why the others did not."""
    misses: dict[str, int] = {"no_version_yet": 0, "slice_drained": 0, "at_switch": 0, "other": 0}
    examples: list[dict[str, Any]] = []
    serves = sorted(log.serves, key=lambda s: s.served)
    hit = [False] * len(serves)
    for k, s in enumerate(serves):
        live = [(a, b, c) for a, b, c in intervals if a - LIVE_SLACK_S <= s.served and b + LIVE_SLACK_S >= s.asked]
        if any(c["version"] in s.versions for _, _, c in live):
            hit[k] = True
            continue
        if not live:
            misses["no_version_yet"] += 1
            continue
        a, _, c = live[-1]
        served_since = sum(1 for x in serves[:k] if x.served >= a)
        if served_since >= int(c.get("written") or 0):
            reason = "slice_drained"
        elif abs(s.served - a) <= LIVE_SLACK_S:
            # LS chose the task from the previous slice and serialized it after the switch, so the
            # answer carries no prediction of the version that is live by then
            reason = "at_switch"
        else:
            reason = "other"
        misses[reason] += 1
        if len(examples) < 10:
            examples.append(
                {
                    "at_s": round(s.served, 2),
                    "reason": reason,
                    "live": c["version"],
                    "live_for_s": round(s.served - a, 2),
                    "written": c.get("written"),
                    "served_since_switch": served_since,
                    "carried": s.versions,
                }
            )
    first = intervals[0][0] + LIVE_SLACK_S if intervals else float("inf")
    after = [h for s, h in zip(serves, hit, strict=True) if s.asked >= first]
    return {
        "served": len(serves),
        "share": round(sum(hit) / len(serves), 4) if serves else None,
        "share_after_first_order": round(sum(after) / len(after), 4) if after else None,
        "misses": misses,
        "miss_examples": examples,
    }


def freshness(log: ArmLog, cycles: list[dict[str, Any]], wall0: float) -> dict[str, Any]:
    """Per annotation: POST start -> switch of the first trained version with at least as many labels."""
    trained = sorted(
        (c for c in cycles if c.get("status") == "trained" and c.get("finished_at")), key=lambda c: c["finished_at"]
    )
    done = sorted((s for s in log.serves if s.submitted is not None), key=lambda s: s.submitted or 0.0)
    seen: set[int] = set()
    values: list[float] = []
    not_live = 0
    for s in done:
        seen.add(s.task)
        need = len(seen)
        first = next((c for c in trained if int(c.get("labels") or 0) >= need), None)
        if first is None or need < min((int(c.get("labels") or 0) for c in trained), default=0):
            if first is None:
                not_live += 1
            continue
        live_at = datetime.fromisoformat(first["finished_at"]).timestamp() - wall0
        values.append(max(0.0, live_at - (s.posted or 0.0)))
    return {**summary(values), "not_live_by_end": not_live}


def learning_curve(
    order: list[int], when: list[float], data: list[tuple[str, str]], test: list[int]
) -> list[dict[str, Any]]:
    """Macro-F1 of lsal's learner fitted on the first k labeled messages (k = 10, 20, ...) on ``test``."""
    from sklearn.metrics import f1_score

    from backend.labelconfig import parse_label_config
    from backend.learner import Learner

    spec = parse_label_config((REPO / "label_config" / "spam.xml").read_text())
    x_test = [data[i][0] for i in test]
    y_test = [data[i][1] for i in test]
    out = []
    ks = list(range(CURVE_STEP, len(order) + 1, CURVE_STEP))
    if order and (not ks or ks[-1] != len(order)):
        ks.append(len(order))
    for k in ks:
        y = [data[i][1] for i in order[:k]]
        if len(set(y)) < 2:
            continue
        learner = Learner(spec, seed=0).fit([data[i][0] for i in order[:k]], y)
        proba = learner.predict_proba(learner.transform(x_test))
        pred = [row[0] if row else "" for row in learner.predict_labels(proba)]
        f1 = f1_score(y_test, pred, average="macro", labels=list(spec.labels), zero_division=0)
        out.append({"labels": k, "seconds": round(when[k - 1], 1), "macro_f1": round(float(f1), 4)})
    return out


# ---------------------------------------------------------------------- the bench


class Bench(Stack):
    def new_project(self, title: str, data: list[tuple[str, str]]) -> tuple[int, list[int]]:
        """A project with the messages imported in order; its id and the task id of each message."""
        from tests.lsharness import create_project

        xml = (REPO / "label_config" / "spam.xml").read_text()
        project = create_project(self.client, title, xml)
        body = self.client.request(
            "POST",
            f"/api/projects/{project}/import",
            params={"return_task_ids": "true"},
            json=[{"text": t} for t, _ in data],
        )
        ids = [int(i) for i in body["task_ids"]]
        assert len(ids) == len(data), (len(ids), len(data))
        return project, ids

    def arm_report(self, name: str, log: ArmLog, wall0: float, cycles: list[dict[str, Any]] | None) -> dict[str, Any]:
        twice, annotated_twice = overlaps(log)
        submitted = [s for s in log.serves if s.submitted is not None]
        rep: dict[str, Any] = {
            "arm": name,
            "served": len(log.serves),
            "annotations": len(submitted),
            "annotations_per_s": round(len(submitted) / self.args.duration, 3),
            "served_twice_at_once": twice,
            "tasks_annotated_twice": annotated_twice,
            "errors": len(log.errors),
            "error_examples": log.errors[:10],
            "queue_exhausted": log.exhausted,
            "next_s": summary([s.served - s.asked for s in log.serves]),
            "annotate_s": summary([s.submitted - s.posted for s in submitted if s.posted is not None]),
        }
        if cycles is not None:
            by_status: dict[str, int] = {}
            for c in cycles:
                by_status[str(c.get("status"))] = by_status.get(str(c.get("status")), 0) + 1
            intervals = live_intervals(cycles, wall0)
            rep["cycles"] = {"total": len(cycles), "by_status": by_status}
            rep["written"] = summary([float(c.get("written") or 0) for c in cycles if c.get("written")])
            rep["cycle_s"] = summary([sum((c.get("timings") or {}).values()) for c in cycles if c.get("timings")])
            trained = [c.get("timings") or {} for c in cycles if c.get("status") == "trained"]
            stages = sorted({k for t in trained for k in t})
            rep["trained_stage_median_s"] = {k: summary([t.get(k, 0.0) for t in trained])["median"] for k in stages}
            rep["depth"] = summary([float(c["depth"]) for c in cycles if c.get("depth")])
            rep["from_live_slice"] = slice_share(log, intervals)
            rep["freshness_s"] = freshness(log, cycles, wall0)
        return rep

    def run(self) -> dict[str, Any]:
        import redis

        from backend.config import Settings
        from backend.cycle_log import cycle_history
        from backend.labelstudio import LabelStudioClient
        from tests.conftest import LsalServer, WorkerProcess
        from tests.lsharness import session_template, sign_up_annotator, start_label_studio

        args = self.args
        out: dict[str, Any] = {
            "bench": "team",
            "db": args.db,
            "tasks": args.tasks,
            "annotators": args.annotators,
            "think_s": args.think,
            "duration_s": args.duration,
            "cpus": os.cpu_count(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
        }
        out["ls_env"] = compose_ls_flags() if args.ls_env is None else list(args.ls_env)
        apply_ls_env(out["ls_env"])  # the harness passes os.environ on to Label Studio
        t = time.perf_counter()
        self.ls = start_label_studio(session_template(args.db), self.workdir / "ls")
        out["label_studio_start_s"] = round(time.perf_counter() - t, 1)
        _err(f"Label Studio ({args.db}) up at {self.ls.url} in {out['label_studio_start_s']} s")
        self.client = LabelStudioClient(self.ls.url, self.ls.legacy_token, timeout=1800.0, retries=0)
        tokens = [sign_up_annotator(self.ls.url, f"annotator{i}@example.com") for i in range(args.annotators)]
        _err(f"{len(tokens)} annotators signed up")

        data = sms(args.tasks)
        self.redis = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
        self.settings = replace(
            Settings(),
            redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
            queue_name=self.queue_name,
            model_dir=self.workdir / "models",
            label_studio_url=self.ls.url,
            label_studio_api_key=self.ls.legacy_token,
            ls_timeout=1800.0,
            ls_retries=1,
        )
        if args.queue_depth is not None:
            self.settings = replace(self.settings, queue_depth=args.queue_depth)
        if args.queue_floor is not None:
            self.settings = replace(self.settings, queue_floor=args.queue_floor)
        out["lsal"] = {
            "queue_depth": self.settings.queue_depth,
            "queue_floor": self.settings.queue_floor,
            "min_labels": self.settings.min_labels,
            "retrain_every": self.settings.retrain_every,
        }
        self.server = LsalServer(self.settings, self.workdir / "server.log")
        self.worker = WorkerProcess(self.settings, self.workdir / "worker.log")

        arms: dict[str, Any] = {}
        # Per arm, the message index of every labeled task in the order the team labeled them.
        orders: dict[str, tuple[list[int], list[float]]] = {}
        for arm in args.arms.split(","):
            project, ids = self.new_project(f"team {arm}", data)
            labels = {tid: lab for tid, (_, lab) in zip(ids, data, strict=True)}
            index = {tid: i for i, tid in enumerate(ids)}
            if arm == "al":
                self.client.create_ml_backend(project, self.server.url, title="lsal")
                # Connecting through the API starts no cycle (`lsal connect` would): ask for the first.
                requests.post(f"{self.server.url}/train", json={"project": project}, timeout=30).raise_for_status()
                self.wait(
                    lambda p=project: str(self.client.get_project(p).get("model_version") or "").startswith("seed-"),
                    args.timeout,
                    "lsal's cold-start order",
                )
            else:
                self.client.update_project(project, sampling="Uniform sampling")
            _err(f"arm {arm}: project {project} ready, team starts for {args.duration:.0f} s")
            log, wall0 = run_team(self.ls.url, tokens, project, labels, args.duration, args.think)
            cycles = None
            if arm == "al":
                try:
                    self.wait(self.queues_idle, args.timeout, "lsal to finish its cycles")
                except TimeoutError as exc:
                    _err(str(exc))
                cycles = [
                    c
                    for c in cycle_history(self.settings.model_dir, project)
                    if c.get("finished_at") and datetime.fromisoformat(c["finished_at"]).timestamp() >= wall0 - 60
                ]
            arms[arm] = self.arm_report(arm, log, wall0, cycles)
            done = sorted((s for s in log.serves if s.submitted is not None), key=lambda s: s.submitted or 0.0)
            first: dict[int, float] = {}
            for s in done:
                first.setdefault(s.task, s.submitted or 0.0)
            orders[arm] = ([index[t] for t in first], list(first.values()))
            _err(f"arm {arm}: {json.dumps({k: v for k, v in arms[arm].items() if k != 'error_examples'})[:600]}")

        # One test set for both arms: a seeded stratified share of the messages, minus every labeled one.
        rng = random.Random(args.seed)
        by_label: dict[str, list[int]] = {}
        for i, (_, lab) in enumerate(data):
            by_label.setdefault(lab, []).append(i)
        test = {i for idx in by_label.values() for i in rng.sample(idx, round(len(idx) * args.test_share))}
        test -= {i for order, _ in orders.values() for i in order}
        out["test_messages"] = len(test)
        out["test_spam"] = sum(1 for i in test if data[i][1] == "spam")
        for arm, (order, when) in orders.items():
            arms[arm]["curve"] = learning_curve(order, when, data, sorted(test))
        if "al" in arms and "random" in arms and arms["random"]["curve"]:
            target = arms["random"]["curve"][-1]["macro_f1"]
            reach = next((p for p in arms["al"]["curve"] if p["macro_f1"] >= target), None)
            out["random_final_macro_f1"] = target
            out["random_final_labels"] = arms["random"]["curve"][-1]["labels"]
            out["labels_to_reach_random_final"] = reach["labels"] if reach else None
            out["seconds_to_reach_random_final"] = reach["seconds"] if reach else None
        out["arms"] = arms
        out["load_end"] = [round(x, 2) for x in os.getloadavg()]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    ap.add_argument("--annotators", type=int, default=5)
    ap.add_argument("--think", type=float, default=2.0, help="seconds between a task served and its submission")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds the team labels, per arm")
    ap.add_argument("--tasks", type=int, default=5574)
    ap.add_argument("--arms", default="al,random", help="al (lsal connected), random (LS uniform sampling)")
    ap.add_argument("--queue-depth", type=int, help="AL_QUEUE_DEPTH (default: lsal's)")
    ap.add_argument("--queue-floor", type=int, help="AL_QUEUE_FLOOR (default: lsal's; = depth: a fixed depth)")
    ap.add_argument("--test-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="bound of every wait")
    ap.add_argument(
        "--ls-env",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="environment for Label Studio (repeatable), e.g. a feature flag; "
        "default: the feature flags docker-compose.yml sets (the deployed shape)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, MODEL_DIR)")
    run_main(Bench, ap.parse_args(), "lsal-bench-team-")


if __name__ == "__main__":
    main()
