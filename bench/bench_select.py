"""The trained cycle's score stage offline: `selection.select` as a cycle on the 5,574-message SMS
project runs it (issue 13, freshness). Prints JSON.

A learner with the production defaults is fitted on 300 seeded labels (stratified); the pool is the
other 5,274 messages with their cached embeddings, the strategy the default (`diversity`), depth
500, one BLAS/OpenMP thread as `worker.cycle_job` runs a cycle. Timed: `select` as a whole, and its
two heaviest parts on the same candidates, `strategies.typicality` and `strategies.cluster_ids`.
Each tree given with `--trees` is measured in its own subprocess, alternating, `--runs` times each,
so a baseline and a change are compared in the same run at the same load; the picks (rows, in
order) are hashed, and equal hashes mean the change picks the same tasks.

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI, CC BY 4.0).

Usage: python bench/bench_select.py [--trees DIR ...] [--runs 7] [--labels 300] [--depth 500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def child(labels: int, depth: int, runs: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scoring import SPAM_XML, load_sms

    from backend import selection, strategies
    from backend.labelconfig import parse_label_config
    from backend.learner import Learner

    texts, y = load_sms()
    rng = np.random.default_rng(0)
    spam = [i for i, v in enumerate(y) if v == "spam"]
    ham = [i for i, v in enumerate(y) if v != "spam"]
    n_spam = round(labels * len(spam) / len(y))
    lab = sorted([*rng.choice(spam, n_spam, replace=False), *rng.choice(ham, labels - n_spam, replace=False)])
    pool = sorted(set(range(len(texts))) - set(lab))
    spec = parse_label_config(SPAM_XML)
    learner = Learner(spec, seed=0)
    # The pool cache stores float16 embeddings; a cycle reads them back as float32.
    E = learner.embed(texts).astype(np.float16).astype(np.float32) if learner.uses_embeddings else None
    lab_E = None if E is None else E[lab]
    pool_E = None if E is None else E[pool]
    learner.fit([texts[i] for i in lab], [y[i] for i in lab], lab_E)
    inputs = [texts[i] for i in pool]

    def run() -> object:
        return selection.select(
            learner,
            inputs,
            strategies.resolve("default"),
            depth,
            seed=0,
            multi_label=False,
            labeled_inputs=[texts[i] for i in lab],
            labeled_y=[y[i] for i in lab],
            embeddings=pool_E,
            labeled_embeddings=lab_E,
        )

    picks = run()  # warm-up, and the picks compared between trees
    rows = np.asarray(picks.rows, dtype=np.int64)  # type: ignore[attr-defined]
    select_s = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        select_s.append(time.perf_counter() - t)
    # The candidates select() measures distances between: the top max(5 x depth, 2000) by margin.
    proba = learner.predict_proba(learner.transform(inputs, pool_E))
    margin = strategies.informativeness("margin", strategies.ScoringInput(proba=proba))
    keep = min(len(inputs), max(selection.CANDIDATES_PER_PICK * depth, selection.MIN_CANDIDATES))
    cand = np.sort(strategies.priority_order(margin, keep))
    space = selection.unit_rows(pool_E[cand]) if pool_E is not None else learner.transform([inputs[i] for i in cand])
    typ_s, km_s = [], []
    for _ in range(runs):
        t = time.perf_counter()
        typ = strategies.typicality(space, seed=0)
        typ_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        km = strategies.cluster_ids(space, min(depth, selection.MAX_CLUSTERS), seed=0)
        km_s.append(time.perf_counter() - t)
    return {
        "select_s": select_s,
        "typicality_s": typ_s,
        "cluster_ids_s": km_s,
        "picks_sha256": hashlib.sha256(rows.tobytes()).hexdigest()[:16],
        "typicality_sha256": hashlib.sha256(np.round(typ, 6).tobytes()).hexdigest()[:16],
        "cluster_ids_sha256": hashlib.sha256(km.tobytes()).hexdigest()[:16],
        "candidates": int(space.shape[0]),
        "pool": len(inputs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", default=[str(REPO)], help="source trees to compare (PYTHONPATH each)")
    ap.add_argument("--runs", type=int, default=7, help="timed calls per tree and round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the trees")
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--depth", type=int, default=500)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.labels, args.depth, args.runs)))
        return
    per_tree: dict[str, list[dict]] = {t: [] for t in args.trees}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for tree in args.trees:
            cmd = [sys.executable, __file__, "--child", "--runs", str(args.runs)]
            cmd += ["--labels", str(args.labels), "--depth", str(args.depth)]
            env = {**os.environ, **THREADS, "PYTHONPATH": tree}
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
            per_tree[tree].append(json.loads(out.stdout))
    result: dict = {"labels": args.labels, "depth": args.depth, "runs": args.runs, "rounds": args.rounds}
    result["load_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    for tree, rounds in per_tree.items():
        merged = {k: [x for r in rounds for x in r[k]] for k in ("select_s", "typicality_s", "cluster_ids_s")}
        result[tree] = {
            **{f"{k}_median": round(statistics.median(v), 4) for k, v in merged.items()},
            **{k: rounds[0][k] for k in ("picks_sha256", "typicality_sha256", "cluster_ids_sha256", "candidates")},
            "same_picks_every_round": len({r["picks_sha256"] for r in rounds}) == 1,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
