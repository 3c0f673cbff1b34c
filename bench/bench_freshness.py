"""Freshness against a real Label Studio 1.23.2 (issue 7): annotation webhook -> new order live. Prints JSON.

The whole stack is real and local: Label Studio on SQLite or, with ``--db postgresql``, on the
machine's PostgreSQL (tests/lsharness.py: a copy of a migrated template, a free port), `lsal serve`
and one `lsal worker` (RQ SimpleWorker) as subprocesses, the machine's Redis (DB 12, a unique queue
name `lsalbench-<hex>`; only its keys are deleted at the end).

Per run:
1. create a project (label_config/spam.xml) and import the pool, timed (`import_seconds`);
2. connect lsal through LS's API (`POST /api/ml`: LS registers the webhook), then a warm-up:
   `--warmup-labels` annotations (half spam) through LS's API; wait until a trained version is
   live and the queue is idle (the first cycles read the whole pool once: the pool cache exists);
3. for each queue depth in `--depths` (the worker restarts with that AL_QUEUE_DEPTH), `--measure`
   annotations one after another: take the task LS serves next (`GET /api/projects/{id}/next`),
   post its true label (`POST /api/tasks/{id}/annotations/`: LS sends the webhook synchronously
   inside that request); `webhook_to_live_s` runs from just before that POST until the cycle's switch
   PATCH (`model_version` := the new version) returned, read from the cycle log's `finished_at`
   and confirmed with one `GET /api/projects/{id}` (`--poll-mode ls` polls that GET instead; on
   a 100k-task project each GET costs LS ~1.4 s and slows the cycle's own LS calls). The cycle's
   own stage timings come from MODEL_DIR/<p>/cycles.jsonl.
   Before each annotation the bench waits until no job is queued or running (the stale-version
   cleanup job included) and reports how long that cleanup took (`cleanup_after_live_s`).

Data: the SMS Spam Collection, 5,574 messages (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11;
UCI ML Repository, CC BY 4.0); `--tasks N` > 5,574 repeats its messages with variation (a word
dropped, a reference token appended) to build an N-task project.

Usage: python bench/bench_freshness.py [--db sqlite|postgresql] [--tasks 5574] [--depths 500,100,2000] [--measure 5]
To measure a patch, copy this file into a worktree with the patch applied and run it there
(lsal's processes run from the tree the bench file is in; LSAL_SHARED=/work/shared finds the data).
Progress on stderr, JSON on stdout.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from stack import REDIS_DB, REPO, Stack, apply_ls_env, run_main
from stack import err as _err

SHARED = Path(os.environ.get("LSAL_SHARED") or REPO.parent / "shared")
SMS = SHARED / "datasets" / "sms_spam" / "sms_spam.csv"


def pool_data(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (text, label) pairs: the SMS set, then copies with a dropped word and a reference token."""
    import random

    with open(SMS, newline="", encoding="utf-8") as f:
        rows = [(r["text"], "spam" if r["label"] == "spam" else "no_spam") for r in csv.DictReader(f)]
    out = list(rows[:n])
    rng = random.Random(seed)
    k = 0
    while len(out) < n:
        text, label = rows[k % len(rows)]
        words = text.split()
        if len(words) > 3:
            del words[rng.randrange(len(words))]
        out.append((" ".join(words) + f" ref{k}", label))
        k += 1
    return out


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {"median": round(statistics.median(s), 3), "min": round(s[0], 3), "max": round(s[-1], 3), "n": len(s)}


class Bench(Stack):
    # -- helpers -----------------------------------------------------------------------------

    def start_worker(self, depth: int) -> None:
        from tests.conftest import WorkerProcess

        if self.worker is not None:
            self.worker.stop()
        self.settings = replace(self.settings, queue_depth=depth)
        self.worker = WorkerProcess(self.settings, self.workdir / f"worker-{depth}.log")

    def idle(self) -> bool:
        return self.queues_idle() and not self.redis.exists(f"{self.queue_name}:project:{self.project}:queued")

    def model_version(self) -> str:
        return str(self.client.get_project(self.project).get("model_version") or "")

    def annotate(self, task_id: int) -> None:
        from tests.lsharness import choice_result, create_annotation

        create_annotation(self.client, task_id, choice_result(self.labels[task_id]))

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import redis

        from backend.config import Settings
        from backend.cycle_log import cycle_history
        from backend.labelstudio import LabelStudioClient
        from tests.conftest import LsalServer
        from tests.lsharness import create_project, session_template, start_label_studio

        args = self.args
        out: dict[str, Any] = {
            "bench": "freshness",
            "db": args.db,
            "tasks": args.tasks,
            "cpus": os.cpu_count(),
            "load_start": os.getloadavg(),
            "poll_mode": args.poll_mode,
            "backend_path": str(REPO / "backend"),
        }
        apply_ls_env(args.ls_env)  # e.g. a Label Studio feature flag; the harness passes os.environ on
        out["ls_env"] = list(args.ls_env)
        t = time.perf_counter()
        template = session_template(args.db)
        self.ls = start_label_studio(template, self.workdir / "ls")
        out["label_studio_start_s"] = round(time.perf_counter() - t, 1)
        _err(f"Label Studio up at {self.ls.url} in {out['label_studio_start_s']} s")
        self.client = LabelStudioClient(self.ls.url, self.ls.legacy_token, timeout=1800.0, retries=0)
        xml = (REPO / "label_config" / "spam.xml").read_text()
        self.project = create_project(self.client, f"freshness {args.tasks}", xml)
        data = pool_data(args.tasks)
        t = time.perf_counter()
        ids: list[int] = []
        chunk_times = []
        for start in range(0, len(data), args.import_chunk):
            tc = time.perf_counter()
            body = self.client.request(
                "POST",
                f"/api/projects/{self.project}/import",
                params={"return_task_ids": "true"},
                json=[{"text": txt} for txt, _ in data[start : start + args.import_chunk]],
            )
            ids += [int(i) for i in body["task_ids"]]
            chunk_times.append(time.perf_counter() - tc)
            _err(f"imported {len(ids)}/{len(data)} tasks ({chunk_times[-1]:.1f} s for this chunk)")
        out["import_seconds"] = round(time.perf_counter() - t, 1)
        out["import_chunk"] = args.import_chunk
        out["import_chunk_seconds"] = summary(chunk_times)
        assert len(ids) == len(data), (len(ids), len(data))
        self.labels = {tid: lab for tid, (_, lab) in zip(ids, data, strict=True)}

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
        depths = [int(d) for d in args.depths.split(",")]
        self.server = LsalServer(self.settings, self.workdir / "server.log")
        self.start_worker(depths[0])
        self.client.create_ml_backend(self.project, self.server.url, title="lsal")

        # Warm-up: enough labels for a trained version; the first cycle reads the whole pool.
        spam = [i for i in ids if self.labels[i] == "spam"][: args.warmup_labels // 2]
        ham = [i for i in ids if self.labels[i] != "spam"][: args.warmup_labels - len(spam)]
        t = time.perf_counter()
        for tid in sorted(spam + ham):
            self.annotate(tid)
        self.wait(
            lambda: (
                self.idle()
                and self.model_version()
                and not self.model_version().startswith("seed-")
                and self.model_version() != "lsal"
            ),
            args.timeout,
            "a trained version live (warm-up)",
            0.5,
        )
        out["warmup_seconds"] = round(time.perf_counter() - t, 1)
        warm = cycle_history(self.settings.model_dir, self.project)
        out["warmup_cycles"] = [{"status": c.get("status"), "timings": c.get("timings")} for c in warm]
        _err(f"warm-up done in {out['warmup_seconds']} s, {len(warm)} cycles")

        runs: dict[str, Any] = {}
        for depth in depths:
            if depth != self.settings.queue_depth:
                self.start_worker(depth)
                # One unmeasured annotation: the new worker's first job pays its imports.
                self.wait(self.idle, args.timeout, "the queue to be idle")
                before = self.model_version()
                self.annotate(int(self.client.next_task(self.project)["id"]))
                self.wait(lambda b=before: self.model_version() != b, args.timeout, "warm-up switch", args.poll)
            samples = []
            for k in range(args.measure):
                self.wait(self.idle, args.timeout, "the queue to be idle")
                nxt = self.client.next_task(self.project)
                before = self.model_version()
                seen = len(cycle_history(self.settings.model_dir, self.project))
                wall0 = time.time()
                t0 = time.perf_counter()
                self.annotate(int(nxt["id"]))
                ack = time.perf_counter() - t0
                if args.poll_mode == "ls":
                    version = self.wait(
                        lambda b=before: (v := self.model_version()) != b and v,
                        args.timeout,
                        "model_version to change",
                        args.poll,
                    )
                    live = time.perf_counter() - t0
                else:
                    # Watch the cycle log (a local file): no extra load on Label Studio, whose
                    # GET /api/projects/{id} takes ~1.4 s on a 100k-task project. The cycle records
                    # `finished_at` right after its switch PATCH returned, so live = finished_at - t0.
                    rec = self.wait(
                        lambda s=seen: [
                            c
                            for c in cycle_history(self.settings.model_dir, self.project)[s:]
                            if c.get("version") and c.get("finished_at")
                        ],
                        args.timeout,
                        "a new cycle record",
                        0.05,
                    )[0]
                    version = rec["version"]
                    live = datetime.fromisoformat(rec["finished_at"]).timestamp() - wall0
                    now = self.model_version()
                    assert now == version or now != before, f"LS model_version {now!r} is not the new {version!r}"
                self.wait(self.idle, args.timeout, "cleanup to finish")
                settled = time.perf_counter() - t0
                cycles = cycle_history(self.settings.model_dir, self.project)[seen:]
                mine = next((c for c in cycles if c.get("version") == version), cycles[-1] if cycles else {})
                timings = mine.get("timings") or {}
                sample = {
                    "webhook_to_live_s": round(live, 3),
                    "annotation_post_s": round(ack, 3),
                    "cleanup_after_live_s": round(settled - live, 3),
                    "cycles_run": len(cycles),
                    "status": mine.get("status"),
                    "written": mine.get("written"),
                    "pool": mine.get("pool"),
                    "timings": timings,
                    "stage_sum_s": round(sum(timings.values()), 3),
                }
                samples.append(sample)
                _err(
                    f"depth {depth} #{k + 1}: live after {live:.2f} s (stages {sample['stage_sum_s']} s: "
                    f"{timings}), cleanup {settled - live:.1f} s more"
                )
            stages = sorted({s for x in samples for s in x["timings"]})
            runs[str(depth)] = {
                "webhook_to_live_s": summary([x["webhook_to_live_s"] for x in samples]),
                "stage_median_s": {s: summary([x["timings"].get(s, 0.0) for x in samples])["median"] for s in stages},
                "outside_cycle_s": summary([x["webhook_to_live_s"] - x["stage_sum_s"] for x in samples]),
                "cleanup_after_live_s": summary([x["cleanup_after_live_s"] for x in samples]),
                "samples": samples,
            }
        out["depths"] = runs
        out["load_end"] = os.getloadavg()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite", help="Label Studio's database")
    ap.add_argument("--tasks", type=int, default=5574)
    ap.add_argument("--depths", default="500,100,2000", help="queue depths; the first one is measured first")
    ap.add_argument("--measure", type=int, default=5, help="measured annotations per depth")
    ap.add_argument("--warmup-labels", type=int, default=20)
    ap.add_argument("--import-chunk", type=int, default=10_000)
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between GET /api/projects/{id} (--poll-mode ls)")
    ap.add_argument(
        "--poll-mode",
        choices=("log", "ls"),
        default="log",
        help="log: time the switch from the cycle log's finished_at and confirm it with one GET; "
        "ls: poll GET /api/projects/{id} until model_version changes",
    )
    ap.add_argument("--timeout", type=float, default=1200.0, help="bound of every wait")
    ap.add_argument(
        "--ls-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for Label Studio (repeatable), e.g. a feature flag",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, MODEL_DIR)")
    run_main(Bench, ap.parse_args(), "lsal-bench-fresh-")


if __name__ == "__main__":
    main()
