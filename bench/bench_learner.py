"""Learner benchmark: quality with 50 labels on SMS spam, and pool-scoring throughput. Prints JSON.

Quality: for several seeds, 50 random labeled messages from the SMS Spam Collection train a
Learner; macro-F1 and accuracy are measured on 2,000 held-out messages, next to the majority-class
baseline. Throughput: transform + predict_proba and transform + committee_proba on 100,000
synthetic short texts (words drawn from the SMS vocabulary), single process.

Data: SMS Spam Collection v.1 (UCI, CC BY 4.0). Almeida, T.A., Gomez Hidalgo, J.M., Yamakami, A.
Contributions to the Study of SMS Spam Filtering: New Collection and Results. ACM DOCENG'11.

    python bench/bench_learner.py [--seeds 10] [--pool 100000]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.labelconfig import parse_label_config  # noqa: E402
from backend.learner import Learner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMS = Path("/work/shared/datasets/sms_spam/sms_spam.csv")


def load_sms() -> tuple[list[str], np.ndarray]:
    with SMS.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    y = np.array(["spam" if r["label"] == "spam" else "no_spam" for r in rows], dtype=object)
    return texts, y


def quality(seeds: int, n_labels: int) -> dict:
    spec = parse_label_config((ROOT / "label_config" / "spam.xml").read_text())
    texts, y = load_sms()
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(texts))
        train, test = idx[:n_labels], idx[n_labels : n_labels + 2000]
        if len(set(y[train])) < 2:
            continue
        learner = Learner(spec, seed=seed).fit([texts[i] for i in train], list(y[train]))
        proba = learner.predict_proba(learner.transform([texts[i] for i in test]))
        pred = [labels[0] for labels in learner.predict_labels(proba)]
        majority = max(set(y[train]), key=list(y[train]).count)
        base = [majority] * len(test)
        rows.append(
            {
                "seed": seed,
                "macro_f1": f1_score(y[test], pred, average="macro"),
                "accuracy": accuracy_score(y[test], pred),
                "majority_macro_f1": f1_score(y[test], base, average="macro"),
                "majority_accuracy": accuracy_score(y[test], base),
                "spam_in_train": int((y[train] == "spam").sum()),
            }
        )
    keys = ["macro_f1", "accuracy", "majority_macro_f1", "majority_accuracy"]
    return {
        "n_labels": n_labels,
        "held_out": 2000,
        "runs": len(rows),
        **{f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
        "min_macro_f1": round(float(np.min([r["macro_f1"] for r in rows])), 4),
        "per_seed": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }


def throughput(pool: int) -> dict:
    spec = parse_label_config((ROOT / "label_config" / "spam.xml").read_text())
    texts, y = load_sms()
    rng = np.random.default_rng(0)
    vocab = np.array(" ".join(texts).split())
    docs = [" ".join(vocab[rng.integers(0, len(vocab), size=rng.integers(4, 16))]) for _ in range(pool)]
    learner = Learner(spec, seed=0).fit(texts[:500], list(y[:500]))
    out: dict = {"pool": pool, "mean_chars": round(float(np.mean([len(d) for d in docs])), 1)}

    def best(fn: object, repeat: int = 3) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return min(times)

    X = learner.transform(docs)
    t_transform = best(lambda: learner.transform(docs))
    t_single = best(lambda: learner.predict_proba(X))
    t_committee = best(lambda: learner.committee_proba(X))
    out["transform_texts_per_s"] = round(pool / t_transform)
    out["predict_proba_texts_per_s"] = round(pool / t_single)
    out["committee_proba_texts_per_s"] = round(pool / t_committee)
    # What scoring an uncached pool costs: featurize once, then one or m linear predictions.
    out["single_texts_per_s"] = round(pool / (t_transform + t_single))
    out["committee_texts_per_s"] = round(pool / (t_transform + t_committee))
    # /predict path: 1,000 tasks, transform + predict_proba + committee + labels.
    batch = docs[:1000]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        X = learner.transform(batch)
        p = learner.predict_proba(X)
        learner.committee_proba(X)
        learner.predict_labels(p)
        times.append(time.perf_counter() - t0)
    out["predict_1000_tasks_ms"] = round(1000 * min(times), 1)
    out["committee_size"] = int(learner.committee_proba(learner.transform(batch[:1])).shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--pool", type=int, default=100_000)
    args = ap.parse_args()
    print(
        json.dumps(
            {"quality_sms_spam": quality(args.seeds, args.labels), "throughput": throughput(args.pool)}, indent=2
        )
    )


if __name__ == "__main__":
    main()
