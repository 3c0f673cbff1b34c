"""Benchmark backend.strategies against the issue-3 targets and side by side with modAL.

Prints one JSON document on stdout (progress goes to stderr).  Every time is the median of
``--runs`` (>= 3) runs, in seconds; the lsal-vs-modAL rows use max(runs, 5) runs, alternating
lsal and modAL so that load changes on a shared machine affect both sides alike.

    python bench/bench_strategies.py            # 1,000,000-row pools, 200,000-row batch pool
    python bench/bench_strategies.py --quick    # 100,000 / 20,000 rows

Pools: a fitted 4-class logistic regression on (a) a dense n x 50 Gaussian-mixture pool and (b) a
sparse TF-IDF pool of n synthetic texts (Zipf-distributed words), plus a 5-member committee of
logistic regressions fitted on bootstrap samples.  modAL measures call ``predict_proba`` themselves,
so the side-by-side rows time the whole call on both sides (lsal: predict once + measure); the
``measure_only`` rows time only the measure on identical probability arrays (modAL's private
``_proba_*`` helpers).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import strategies as S  # noqa: E402
from backend.strategies import ScoringInput  # noqa: E402

try:  # modAL is optional (the `bench` extra); it is old, so any import failure is reported, not fatal.
    import modAL.batch as modal_batch
    import modAL.disagreement as modal_dis
    import modAL.uncertainty as modal_unc
    from modAL.models import ActiveLearner, Committee

    MODAL_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 -- any failure (ImportError, numpy/sklearn API drift) is a note
    MODAL_ERROR = f"modAL unavailable: {type(exc).__name__}: {exc}"

K_CLASSES = 4
D_DENSE = 50
N_MEMBERS = 5


def log(msg: str) -> None:
    print(f"[bench_strategies] {msg}", file=sys.stderr, flush=True)


def median_time(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), [round(t, 4) for t in times]


def interleaved(fa: Callable[[], Any], fb: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median times of ``fa`` and ``fb`` run alternately, so load drift on a shared machine hits both."""
    ta, tb = [], []
    for _ in range(runs):
        start = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - start)
    return float(np.median(ta)), float(np.median(tb))


def dense_pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(K_CLASSES, D_DENSE))
    y = rng.integers(K_CLASSES, size=n)
    x = rng.normal(size=(n, D_DENSE))
    x += centers[y]
    return x, y


def text_pool(n: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    y = rng.integers(K_CLASSES, size=n)
    words = np.minimum(rng.zipf(1.3, size=(n, 20)) - 1, len(vocab) - 1)
    # Class-specific words make the task learnable: every 4th token is drawn from the label's band.
    words[:, ::4] = 1000 + y[:, None] * 50 + rng.integers(50, size=(n, 5))
    texts = [" ".join(row) for row in vocab[words]]
    return TfidfVectorizer(dtype=np.float64).fit_transform(texts).tocsr(), y


def fit_models(x: Any, y: np.ndarray, seed: int = 0) -> tuple[LogisticRegression, list[LogisticRegression]]:
    rng = np.random.default_rng(seed)
    train = rng.choice(x.shape[0], 5000, replace=False)
    model = LogisticRegression(max_iter=500).fit(x[train], y[train])
    members = []
    for _ in range(N_MEMBERS):
        boot = rng.choice(train, len(train), replace=True)
        members.append(LogisticRegression(max_iter=500).fit(x[boot], y[boot]))
    return model, members


def bench_pool(kind: str, x: Any, y: np.ndarray, runs: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    model, members = fit_models(x, y)
    out: dict[str, Any] = {"pool": kind, "n": int(x.shape[0]), "d": int(x.shape[1])}
    t_pred, _ = median_time(lambda: model.predict_proba(x), runs)
    proba = model.predict_proba(x)
    out["predict_proba_s"] = round(t_pred, 4)

    def committee_proba() -> np.ndarray:
        # Filled in place, as modAL's Committee.vote_proba does: no extra (m, n, k) copy.
        out = np.empty((len(members), x.shape[0], K_CLASSES))
        for j, member in enumerate(members):
            out[j] = member.predict_proba(x)
        return out

    t_members, _ = median_time(committee_proba, runs)
    committee = committee_proba()
    out["committee_predict_s"] = round(t_members, 4)
    inp = ScoringInput(proba=proba, committee=committee)

    for name in ("least_confidence", "margin", "entropy"):
        t, all_t = median_time(lambda name=name: S.informativeness(name, inp), runs)
        out[f"{name}_measure_s"] = round(t, 4)
        out[f"{name}_target_ok"] = t <= 0.100  # target: <= predict_proba + 100 ms
    for name in ("vote_entropy", "consensus_entropy", "kl_divergence"):
        t, _ = median_time(lambda name=name: S.informativeness(name, inp), runs)
        out[f"{name}_measure_s"] = round(t, 4)
        out[f"{name}_total_over_members"] = round((t_members + t) / t_members, 3)
        out[f"{name}_target_ok"] = (t_members + t) / t_members <= 1.2

    if MODAL_ERROR is None:
        modal_pairs: list[tuple[str, Callable[[], Any]]] = [
            ("least_confidence", lambda: modal_unc.classifier_uncertainty(model, x)),
            ("margin", lambda: modal_unc.classifier_margin(model, x)),
            ("entropy", lambda: modal_unc.classifier_entropy(model, x)),
        ]
        side = max(runs, 5)  # prediction dominates these rows and is noisy: more, interleaved runs
        for name, modal_fn in modal_pairs:
            t_lsal, t_modal = interleaved(
                lambda name=name: S.informativeness(name, ScoringInput(model.predict_proba(x))), modal_fn, side
            )
            rows.append(_row(kind, name, "predict+measure", t_lsal, t_modal, x.shape[0]))
        for name, helper in (
            ("least_confidence", modal_unc._proba_uncertainty),
            ("margin", modal_unc._proba_margin),
            ("entropy", modal_unc._proba_entropy),
        ):
            t_lsal, t_modal = interleaved(
                lambda name=name: S.informativeness(name, inp), lambda helper=helper: helper(proba), side
            )
            rows.append(_row(kind, name, "measure_only", t_lsal, t_modal, x.shape[0]))
        learners = [ActiveLearner(estimator=m) for m in members]
        comm = Committee(learner_list=learners)
        for name, modal_fn in (
            ("vote_entropy", lambda: modal_dis.vote_entropy(comm, x)),
            ("consensus_entropy", lambda: modal_dis.consensus_entropy(comm, x)),
            ("kl_divergence", lambda: modal_dis.KL_max_disagreement(comm, x)),
        ):
            t_lsal, t_modal = interleaved(
                lambda name=name: S.informativeness(name, ScoringInput(proba, committee=committee_proba())),
                modal_fn,
                side,
            )
            rows.append(_row(kind, name, "predict+measure", t_lsal, t_modal, x.shape[0]))
        cached = CachedCommittee(committee)
        for name, modal_fn in (
            ("vote_entropy", lambda: modal_dis.vote_entropy(cached, x)),
            ("consensus_entropy", lambda: modal_dis.consensus_entropy(cached, x)),
            ("kl_divergence", lambda: modal_dis.KL_max_disagreement(cached, x)),
        ):
            t_lsal, t_modal = interleaved(lambda name=name: S.informativeness(name, inp), modal_fn, side)
            rows.append(_row(kind, name, "measure_only", t_lsal, t_modal, x.shape[0]))
    return out


class CachedCommittee:
    """Stands in for a modAL Committee whose members' probabilities are already computed.

    modAL's disagreement functions only call ``vote``, ``vote_proba``, ``predict_proba``,
    ``classes_``, ``len`` and iteration, so this times modAL's measure code on exactly the
    probabilities lsal gets.  Hard votes are the argmax of the cached probabilities (what each
    member's ``predict`` returns), computed inside the timed call as lsal does.
    """

    def __init__(self, proba: np.ndarray) -> None:
        self.proba = proba  # (m, n, k)
        self.classes_ = np.arange(proba.shape[2])

    def __len__(self) -> int:
        return self.proba.shape[0]

    def __iter__(self) -> Any:
        return iter(range(self.proba.shape[0]))

    def vote(self, x: Any) -> np.ndarray:
        return np.argmax(self.proba, axis=2).T  # (n, m)

    def vote_proba(self, x: Any) -> np.ndarray:
        return self.proba.transpose(1, 0, 2)  # (n, m, k)

    def predict_proba(self, x: Any) -> np.ndarray:
        return self.proba.mean(axis=0)


def _row(pool: str, name: str, scope: str, t_lsal: float, t_modal: float, n: int) -> dict[str, Any]:
    log(f"{pool} {name} {scope}: lsal {t_lsal:.4f} s, modAL {t_modal:.4f} s")
    return {
        "pool": pool,
        "n": n,
        "strategy": name,
        "scope": scope,
        "lsal_s": round(t_lsal, 4),
        "modal_s": round(t_modal, 4),
        "ratio": round(t_lsal / t_modal, 3),
    }


def bench_batch(n: int, runs: int, modal_runs: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    x, y = dense_pool(n, seed=1)
    rng = np.random.default_rng(1)
    lab = rng.choice(n, 1000, replace=False)
    model = LogisticRegression(max_iter=500).fit(x[lab], y[lab])
    out: dict[str, Any] = {"pool": "dense", "n": n, "d": D_DENSE, "batch": 100}

    def lsal_diversity() -> np.ndarray:
        inp = ScoringInput(model.predict_proba(x), features=x, labeled_features=x[lab], seed=0)
        return S.select_batch("diversity", inp, 100)

    t_div, _ = median_time(lsal_diversity, runs)
    picks = lsal_diversity()
    out["diversity_s"] = round(t_div, 4)
    out["diversity_target_ok"] = t_div <= 2.0
    out["diversity_distinct"] = int(len(set(picks.tolist())))

    def cycle_path() -> np.ndarray:
        # What the cycle does for the cluster field: ids for the whole pool, then round-robin picks.
        inp = ScoringInput(model.predict_proba(x), features=x, seed=0)
        ids = S.cluster_ids(x, 100, seed=0)
        return S.select_batch("diversity", inp, 100, clusters=ids)

    t_cyc, _ = median_time(cycle_path, runs)
    out["cluster_ids_plus_round_robin_s"] = round(t_cyc, 4)
    inp = ScoringInput(model.predict_proba(x), features=x, labeled_features=x[lab], labeled_y=y[lab], seed=0)
    t_core, _ = median_time(lambda: S.select_batch("coreset", inp, 100), runs)
    out["coreset_s"] = round(t_core, 4)
    t_den, _ = median_time(lambda: S.informativeness("density", inp), runs)
    out["density_s"] = round(t_den, 4)
    t_vr, _ = median_time(lambda: S.informativeness("variance_reduction", inp), runs)
    out["variance_reduction_s"] = round(t_vr, 4)
    inp_ee = ScoringInput(
        inp.proba, features=x, labeled_features=x[lab], labeled_y=y[lab], make_estimator=LogisticRegression
    )
    t_ee, _ = median_time(lambda: S.informativeness("expected_error", inp_ee), runs)
    out["expected_error_s"] = round(t_ee, 4)
    out["expected_error_params"] = {"n_candidates": 100, "n_eval": 500, "labeled": len(lab)}

    if MODAL_ERROR is None and modal_runs > 0:
        learner = ActiveLearner(estimator=LogisticRegression(max_iter=500), X_training=x[lab], y_training=y[lab])
        log(f"modAL ranked batch on {n} rows, {modal_runs} run(s); this is slow")
        t_modal, all_modal = median_time(
            lambda: modal_batch.uncertainty_batch_sampling(learner, x, n_instances=100), modal_runs
        )
        row = _row("dense", "diversity (modAL: uncertainty_batch_sampling)", "predict+batch", t_div, t_modal, n)
        row["modal_runs"] = all_modal
        rows.append(row)
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The lsal-vs-modAL rows of a saved result as a Markdown table (for docs/strategies.md)."""
    lines = [
        "| pool | n | strategy | scope | lsal s | modAL s | lsal / modAL |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in result["vs_modal"]:
        lines.append(
            f"| {r['pool']} | {r['n']:,} | {r['strategy']} | {r['scope']} | {r['lsal_s']:.4f} "
            f"| {r['modal_s']:.4f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000-row pools and a 20,000-row batch pool")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modal-batch-runs", type=int, default=3, help="modAL ranked batch is slow; 0 skips it")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--table", metavar="RESULT.json", help="print the modAL table of a saved result and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    if args.runs < 3:
        ap.error("--runs must be >= 3 (medians of at least 3 runs)")
    n = 100_000 if args.quick else 1_000_000
    n_batch = 20_000 if args.quick else 200_000
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "command": " ".join(["python", "bench/bench_strategies.py", *sys.argv[1:]]),
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(),
        },
        "runs": args.runs,
        "modal": MODAL_ERROR or "modAL-python imported",
    }
    log(f"dense pool {n} x {D_DENSE}")
    x, y = dense_pool(n)
    result["dense"] = bench_pool("dense", x, y, args.runs, rows)
    del x, y
    if not args.skip_text:
        log(f"text pool: vectorizing {n} synthetic texts")
        xt, yt = text_pool(n)
        result["tfidf"] = bench_pool("tfidf", xt, yt, args.runs, rows)
        del xt, yt
    log(f"batch strategies on {n_batch} rows")
    result["batch"] = bench_batch(n_batch, args.runs, args.modal_batch_runs, rows)
    result["vs_modal"] = rows
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
