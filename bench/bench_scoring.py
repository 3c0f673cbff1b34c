"""Scoring throughput and worker memory of the production scoring path (issue 7). Prints JSON.

1. Throughput: `selection.select` (the cycle's stream scoring + selection) on a fitted
   `Learner` over 100,000 synthetic short texts, for a single-model strategy (`margin`),
   a committee strategy (`vote_entropy`, 3 members) and the default strategy (pool-level: the top
   max(5 x depth, 2000) by margin, then its own measure), under one BLAS/OpenMP thread as
   `worker.cycle_job` runs a cycle (`--threads default` for the library defaults).
   Targets: >= 50,000 tasks/s single model, >= 15,000 tasks/s committee. A breakdown times the
   parts (TF-IDF transform, predict_proba, committee_proba) over the same pool.
2. Peak RSS of a process that runs the cycle's pool path over a 1,000,000-task pool
   (target <= 1 GB): `--rss-mode cycle` loads the pool cache snapshot (backend/pool.py) and builds
   ids/inputs with `cycle.unlabeled_pool` exactly as a cycle does, then `selection.select`;
   `--rss-mode inputs` starts from the plain list of 1M strings. Every measurement runs in a fresh
   subprocess and reports VmRSS after each step and VmHWM (peak) at the end, so what dominates is
   visible.

The learner is fitted on 500 labeled messages of the SMS Spam Collection (Almeida, Gómez Hidalgo &
Yamakami, ACM DOCENG'11; UCI ML Repository, CC BY 4.0). The pool texts are synthetic: 4-24 words
drawn (seeded, Zipf-like) from that corpus' vocabulary, so the featurizer sees realistic tokens.

3. `--read-pool N`: the cycle's read_pool stage (`cycle.unlabeled_pool`) on an N-task pool cache
   with no pending events, the state of every cycle between two full reads.

Usage: python bench/bench_scoring.py [--runs 5] [--pool 100000] [--rss-pool 1000000] [--skip-rss]
       [--skip-throughput] [--read-pool N] [--seed-order N]
4. `--seed-order N`: the cold-start seed order (TF-IDF, k-means, centrality) on N texts, in a fresh
   subprocess: seconds per step and peak RSS.
       [--pythonpath DIR]   (score with another tree, e.g. a worktree with a patch applied)
Progress goes to stderr; the JSON result to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# ../shared/datasets beside the checkout; LSAL_DATASETS for a checkout elsewhere (a git worktree).
SMS = Path(os.environ.get("LSAL_DATASETS", REPO.parent / "shared" / "datasets")) / "sms_spam" / "sms_spam.csv"
SPAM_XML = (REPO / "label_config" / "spam.xml").read_text() if (REPO / "label_config" / "spam.xml").exists() else ""


def _err(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def load_sms() -> tuple[list[str], list[str]]:
    with open(SMS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], ["spam" if r["label"] == "spam" else "no_spam" for r in rows]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """n short texts of 4-24 words drawn Zipf-like from the SMS vocabulary (seeded)."""
    import numpy as np

    texts, _ = load_sms()
    counts: dict[str, int] = {}
    for t in texts:
        for w in re.findall(r"\w+", t.lower()):
            counts[w] = counts.get(w, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    # ASCII words Zipf-like; then, as in the real set (8.7% of its messages hold a non-ASCII
    # character), 9% of the texts get one non-ASCII word (they cost the accent stripper more).
    vocab = np.array([w for w in ranked if w.isascii()], dtype=object)
    other = [w for w in ranked if not w.isascii()]
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 25, size=n)
    ranks = np.minimum(rng.zipf(1.3, size=int(lengths.sum())) - 1, len(vocab) - 1)
    words = vocab[ranks]
    accented = rng.random(n) < 0.09
    extra = rng.integers(0, len(other), size=n)
    out: list[str] = []
    pos = 0
    for i, k in enumerate(lengths.tolist()):
        text = " ".join(words[pos : pos + k])
        out.append(f"{text} {other[extra[i]]}" if accented[i] else text)
        pos += k
    return out


def fitted_learner():  # type: ignore[no-untyped-def]
    from backend.labelconfig import parse_label_config
    from backend.learner import Learner

    texts, labels = load_sms()
    spam = [i for i, y in enumerate(labels) if y == "spam"][:100]
    ham = [i for i, y in enumerate(labels) if y != "spam"][:400]
    idx = sorted(spam + ham)
    spec = parse_label_config(SPAM_XML)
    return spec, Learner(spec, seed=0).fit([texts[i] for i in idx], [labels[i] for i in idx])


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


# -- throughput -----------------------------------------------------------------------------------


def throughput(pool: int, runs: int, depth: int) -> dict:
    import numpy as np

    from backend import strategies
    from backend.selection import SCORE_CHUNK, select

    t0 = time.perf_counter()
    inputs = synthetic_texts(pool, seed=1)
    _err(f"generated {pool} synthetic texts in {time.perf_counter() - t0:.1f} s")
    spec, learner = fitted_learner()
    out: dict = {"pool": pool, "depth": depth, "runs": runs, "score_chunk": SCORE_CHUNK}
    # The pool cache holds every task's embedding (backend/features/cache.py): embedded once, at the
    # first featurization (timed here), then read by every scoring pass below, as in a cycle.
    E = None
    if learner.uses_embeddings:
        from backend.features.embeddings import load

        embedder = load(learner.embedding_model)
        embedder.embed(inputs[:100])  # warm-up
        embed_s = []
        for _ in range(runs):
            embedder._memo.clear()
            t = time.perf_counter()
            E = learner.embed(inputs).astype("float16")
            embed_s.append(time.perf_counter() - t)
        out["first_featurization_embed"] = {
            "median_seconds": round(statistics.median(embed_s), 3),
            "texts_per_s_median": round(pool / statistics.median(embed_s)),
        }
        _err(f"embedded {pool} texts: {statistics.median(embed_s):.1f} s")
    for name in ("margin", "vote_entropy", strategies.resolve("default")):
        if name in out:
            continue
        warm = None if E is None else E[:SCORE_CHUNK]
        select(learner, inputs[:SCORE_CHUNK], name, depth, seed=0, multi_label=False, embeddings=warm)  # warm-up
        times: list[float] = []
        cpu: list[float] = []
        for r in range(runs):
            t, c = time.perf_counter(), time.process_time()
            order = select(learner, inputs, name, depth, seed=0, multi_label=False, embeddings=E).rows
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            assert len(order) == depth
            _err(f"{name} run {r + 1}/{runs}: {times[-1]:.3f} s ({pool / times[-1]:,.0f} tasks/s)")
        rates = sorted(pool / s for s in times)
        out[name] = {
            "seconds": [round(s, 3) for s in times],
            "median_seconds": round(statistics.median(times), 3),
            "tasks_per_s_median": round(statistics.median(rates)),
            "tasks_per_s_min": round(rates[0]),
            "tasks_per_s_max": round(rates[-1]),
            # CPU seconds of this process (all its threads): less sensitive to other load than wall time
            "cpu_seconds": [round(s, 3) for s in cpu],
            "tasks_per_cpu_s_median": round(pool / statistics.median(cpu)),
        }
    # Breakdown of one pass, chunk by chunk as selection.select does it (median of `runs`).
    parts: dict[str, list[float]] = {
        "transform": [],
        "predict_proba": [],
        "committee_proba": [],
        "margin_measure": [],
        "vote_entropy_measure": [],
    }
    for _ in range(runs):
        acc = dict.fromkeys(parts, 0.0)
        for start in range(0, pool, SCORE_CHUNK):
            t = time.perf_counter()
            X = learner.transform(
                inputs[start : start + SCORE_CHUNK], None if E is None else E[start : start + SCORE_CHUNK]
            )
            acc["transform"] += time.perf_counter() - t
            t = time.perf_counter()
            proba = learner.predict_proba(X)
            acc["predict_proba"] += time.perf_counter() - t
            t = time.perf_counter()
            committee = learner.committee_proba(X)
            acc["committee_proba"] += time.perf_counter() - t
            t = time.perf_counter()
            strategies.informativeness("margin", strategies.ScoringInput(proba=proba))
            acc["margin_measure"] += time.perf_counter() - t
            t = time.perf_counter()
            strategies.informativeness("vote_entropy", strategies.ScoringInput(proba=proba, committee=committee))
            acc["vote_entropy_measure"] += time.perf_counter() - t
        for k, v in acc.items():
            parts[k].append(v)
    out["breakdown_median_seconds"] = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    out["mean_words_per_text"] = round(float(np.mean([t.count(" ") + 1 for t in inputs])), 2)
    return out


# -- peak RSS (runs in a fresh subprocess) ----------------------------------------------------------


def make_snapshot(model_dir: Path, project: int, n: int, embed: bool = False) -> None:
    """Write a pool cache snapshot of n tasks ({"text": ...} data dicts), as a full read would."""
    from backend.pool import PoolCache, PoolSnapshot, config_hash

    texts = synthetic_texts(n, seed=2)
    snap = PoolSnapshot(
        data={i + 1: {"text": t} for i, t in enumerate(texts)}, synced_at=time.time(), config_hash=config_hash(SPAM_XML)
    )
    if embed:
        # The cycle's first featurization of the pool: every task embedded and kept in the snapshot.
        from backend.features import cache
        from backend.features.embeddings import load
        from backend.labelconfig import parse_label_config

        t = time.perf_counter()
        stats = cache.update(snap, parse_label_config(SPAM_XML), "wordllama", load("wordllama").embed)
        _err(f"embedded {stats['embedded']} tasks into the snapshot in {time.perf_counter() - t:.1f} s")
    PoolCache(model_dir, project).save(snap)


def rss_child(mode: str, n: int, model_dir: str, depth: int, strategy: str) -> dict:
    from types import SimpleNamespace

    steps: dict[str, int] = {"start_kb": status_kb("VmRSS")}
    from backend.cycle import unlabeled_pool
    from backend.selection import select

    spec, learner = fitted_learner()
    steps["imports_and_fit_kb"] = status_kb("VmRSS")
    t = time.perf_counter()
    if mode == "cycle":
        from backend.config import Settings

        settings = Settings(model_dir=Path(model_dir), pool_reconcile=10**9)  # type: ignore[call-arg]
        deps = SimpleNamespace(settings=settings, client=None)
        from backend.features.cache import PoolEmbeddings

        pe = PoolEmbeddings(spec, learner.embedding_model)
        ids, inputs = unlabeled_pool(deps, 1, spec, SPAM_XML, set(), prepare=pe.update)  # type: ignore[arg-type]
        emb = pe.rows(ids, inputs) if learner.uses_embeddings else None
        pe.release()  # as the cycle does: the task data goes, the embedding matrix stays
        steps["embedded_now"] = pe.stats.get("embedded", -1)
    else:
        inputs = synthetic_texts(n, seed=2)
        ids = list(range(1, n + 1))
        emb = None
    steps["pool_ready_kb"] = status_kb("VmRSS")
    steps["pool_ready_hwm_kb"] = status_kb("VmHWM")
    pool_s = time.perf_counter() - t
    t = time.perf_counter()
    select(learner, inputs, strategy, depth, seed=0, multi_label=False, embeddings=emb)
    score_s = time.perf_counter() - t
    steps["after_score_kb"] = status_kb("VmRSS")
    import resource

    return {
        "mode": mode,
        "pool": len(ids),
        "strategy": strategy,
        "depth": depth,
        "pool_seconds": round(pool_s, 2),
        "score_seconds": round(score_s, 2),
        **steps,
        "peak_VmHWM_kb": status_kb("VmHWM"),
        "peak_ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_rss(n: int, pythonpath: str, strategies_: list[str], depth: int) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out: dict = {"pool": n}
    with tempfile.TemporaryDirectory(prefix="lsal-bench-rss-") as tmp:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--make-snapshot", str(n), "--model-dir", tmp, "--pythonpath", pythonpath],
            env=env,
            check=True,
            timeout=900,
        )
        snap = next((Path(tmp) / "1" / "pool").glob("snapshot.*"))  # .npz (.pkl before the npz change)
        out["snapshot_bytes"] = snap.stat().st_size
        _err(f"snapshot of {n} tasks: {snap.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s")
        results = []
        for mode in ("cycle",) if os.environ.get("BENCH_RSS_CYCLE_ONLY") else ("inputs", "cycle"):
            for strategy in strategies_:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--rss-child",
                        mode,
                        "--rss-pool",
                        str(n),
                        "--model-dir",
                        tmp,
                        "--strategy",
                        strategy,
                        "--depth",
                        str(depth),
                        "--pythonpath",
                        pythonpath,
                    ],
                    env=env,
                    check=True,
                    timeout=1800,
                    capture_output=True,
                    text=True,
                )
                res = json.loads(proc.stdout)
                _err(
                    f"rss {mode}/{strategy}: peak {res['peak_VmHWM_kb'] / 1024:.0f} MB, "
                    f"pool ready {res['pool_ready_kb'] / 1024:.0f} MB, score {res['score_seconds']} s"
                )
                results.append(res)
        out["runs"] = results
    return out


def read_pool_timing(n: int, runs: int) -> dict:
    """`cycle.unlabeled_pool` on an n-task pool cache with no new events (the steady state)."""
    from types import SimpleNamespace

    from backend.config import Settings
    from backend.cycle import unlabeled_pool
    from backend.labelconfig import parse_label_config

    spec = parse_label_config(SPAM_XML)
    with tempfile.TemporaryDirectory(prefix="lsal-bench-pool-") as tmp:
        make_snapshot(Path(tmp), 1, n)
        deps = SimpleNamespace(settings=Settings(model_dir=Path(tmp), pool_reconcile=10**9), client=None)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            ids, _inputs = unlabeled_pool(deps, 1, spec, SPAM_XML, set())  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
            assert len(ids) == n
    return {"pool": n, "seconds": [round(x, 3) for x in times], "median_seconds": round(statistics.median(times), 3)}


def seed_order_child(n: int) -> dict:
    """The cold-start seed order's steps (cycle._seed_order without the write) on n synthetic texts.

    The vocabulary grows with the pool like a real project's: every 50th text carries a unique
    reference token (ids, names, numbers), so a 100k pool has a ~10k-word vocabulary.
    """
    from backend import strategies
    from backend.cycle import _centrality, label_free_features
    from backend.labelconfig import parse_label_config

    spec = parse_label_config(SPAM_XML)
    texts = [t if i % 50 else f"{t} ref{i}" for i, t in enumerate(synthetic_texts(n, seed=3))]
    base = status_kb("VmRSS")
    out: dict = {"pool": n}
    t = time.perf_counter()
    X = label_free_features(spec, texts, 0)
    out["features_s"] = round(time.perf_counter() - t, 3)
    out["features_shape"] = list(X.shape)
    t = time.perf_counter()
    clusters = strategies.cluster_ids(X, min(n, 2 * len(spec.labels) + 8, 50), seed=0)
    out["clusters_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    try:
        _centrality(X, clusters)
        out["centrality_s"] = round(time.perf_counter() - t, 3)
    except MemoryError as exc:
        out["centrality_error"] = f"MemoryError: {str(exc)[:100]}"
    out["texts_and_libs_kb"] = base
    out["peak_VmHWM_kb"] = status_kb("VmHWM")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--depth", type=int, default=500)
    ap.add_argument("--rss-pool", type=int, default=1_000_000)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--threads", default="1", help="BLAS/OpenMP threads while scoring: 1 as in the worker's cycle_job, or 'default'"
    )
    ap.add_argument("--seed-order", type=int, default=0, help="also time the cold-start seed order on N texts")
    ap.add_argument("--seed-child", type=int, default=0)
    ap.add_argument("--read-pool", type=int, default=0, help="also time cycle.unlabeled_pool on a pool of this size")
    ap.add_argument("--pythonpath", default=str(REPO))
    ap.add_argument("--strategy", default="margin")
    # internal: subprocess entry points
    ap.add_argument("--make-snapshot", type=int, default=0)
    ap.add_argument("--rss-child", default="")
    ap.add_argument("--model-dir", default="")
    args = ap.parse_args()
    sys.path.insert(0, args.pythonpath)
    if args.make_snapshot:
        make_snapshot(Path(args.model_dir), 1, args.make_snapshot, embed=True)
        return
    if args.seed_child:
        print(json.dumps(seed_order_child(args.seed_child)))
        return
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rss_pool, args.model_dir, args.depth, args.strategy)))
        return
    import backend

    result: dict = {
        "bench": "scoring",
        "backend_path": str(Path(backend.__file__).parent),
        "load_before": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
    }
    if not args.skip_throughput:
        # As the worker runs a cycle (backend.worker.cycle_job): one BLAS/OpenMP thread, unless --threads.
        from threadpoolctl import threadpool_limits

        limit = None if args.threads == "default" else int(args.threads)
        result["threads"] = args.threads
        with threadpool_limits(limit):
            result["throughput"] = throughput(args.pool, args.runs, args.depth)
    if args.seed_order:
        proc = subprocess.run(
            [sys.executable, __file__, "--seed-child", str(args.seed_order), "--pythonpath", args.pythonpath],
            check=True,
            timeout=1800,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": args.pythonpath},
        )
        result["seed_order"] = json.loads(proc.stdout)
    if args.read_pool:
        result["read_pool"] = read_pool_timing(args.read_pool, args.runs)
    if not args.skip_rss:
        names = os.environ.get("BENCH_RSS_STRATEGIES", "margin,vote_entropy").split(",")
        result["rss"] = run_rss(args.rss_pool, args.pythonpath, names, args.depth)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
