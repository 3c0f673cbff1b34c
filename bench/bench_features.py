"""Choose the text features: TF-IDF vs static embeddings vs both, by macro-F1 with few random labels.

For each text dataset, a fixed stratified test split (1,000 rows, seed 12345) and the rest as the
pool; for each repeat, `n` labels drawn at random from the pool (every class at least once), the
production `Learner` (committee_size=2: only the main logistic regression is scored) fitted on them
with one feature setting, and macro-F1 on the test split. The embeddings are computed once per
dataset and passed in, as the pool cache does in production. Also measured: first featurization
throughput (embedding + TF-IDF of fresh texts, texts/s) and the first featurization of 100,000
short texts.

The default is chosen on `--choose-on` (sms_spam) only; the other dataset is reported as held out.

    python bench/bench_features.py --repeats 10 [--out bench/out/features.json]

Prints one JSON document: per dataset, per setting, per label count, the median and mean macro-F1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from backend.features.embeddings import load
from backend.labelconfig import TaskSpec
from backend.learner import Learner

SHARED = Path(os.environ.get("LSAL_DATASETS", "/work/shared/datasets"))
DATASETS = {"sms_spam": "sms_spam/sms_spam.csv", "sentiment_sentences": "sentiment_sentences/sentiment_sentences.csv"}
SIZES = (50, 100, 200)
TEST_ROWS = 1000

SETTINGS: dict[str, dict[str, Any]] = {
    **{f"tfidf C={c:g}": {"text_features": "tfidf", "C": c} for c in (1, 3, 10)},
    **{f"embedding C={c:g}": {"text_features": "embedding", "C": c} for c in (1, 3, 10, 30)},
    **{
        f"tfidf+embedding w={w:g} C={c:g}": {"text_features": "tfidf+embedding", "embedding_weight": w, "C": c}
        for w in (0.5, 1, 2)
        for c in (1, 3, 10)
    },
}


def ls_baseline() -> tuple[TfidfVectorizer, LogisticRegression]:
    """Label Studio's example sklearn_text_classifier: TF-IDF word 1-3-grams, LogisticRegression(C=10)."""
    return TfidfVectorizer(ngram_range=(1, 3), token_pattern=r"(?u)\b\w\w+\b|\w"), LogisticRegression(C=10)


def text_spec(labels: tuple[str, ...]) -> TaskSpec:
    """A single-label text TaskSpec, as labelconfig parses a <Choices> on a <Text>."""
    return TaskSpec(
        from_name="label",
        to_name="text",
        data_key="text",
        labels=labels,
        multi_label=False,
        kind="text",
        object_tag="Text",
    )


def read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def draw(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random pool rows with every class present (redraw otherwise)."""
    while True:
        idx = rng.choice(len(y), size=n, replace=False)
        if len(np.unique(y[idx])) == len(np.unique(y)):
            return idx


def quality(name: str, repeats: int) -> dict[str, Any]:
    texts, labels = read(SHARED / DATASETS[name])
    classes = sorted(set(labels))
    spec = text_spec(tuple(classes))
    idx = np.arange(len(texts))
    pool_idx, test_idx = train_test_split(idx, test_size=TEST_ROWS, stratify=labels, random_state=12345)
    y = np.asarray(labels, dtype=object)
    E = load("wordllama").embed(texts)
    test_texts = [texts[i] for i in test_idx]
    out: dict[str, Any] = {"rows": len(texts), "pool": len(pool_idx), "test": len(test_idx), "settings": {}}
    scores: dict[str, dict[int, list[float]]] = {
        s: {n: [] for n in SIZES} for s in [*SETTINGS, "label_studio_baseline"]
    }
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        for n in SIZES:
            chosen = pool_idx[draw(y[pool_idx], n, rng)]
            tr_texts, tr_y = [texts[i] for i in chosen], [labels[i] for i in chosen]
            for setting, params in SETTINGS.items():
                learner = Learner(spec, seed=rep, committee_size=2, **params).fit(tr_texts, tr_y, embeddings=E[chosen])
                proba = learner.predict_proba(learner.transform(test_texts, embeddings=E[test_idx]))
                pred = [learner.classes_[j] for j in proba.argmax(axis=1)]
                scores[setting][n].append(f1_score(y[test_idx], pred, average="macro"))
            vec, lr = ls_baseline()
            lr.fit(vec.fit_transform(tr_texts), tr_y)
            pred = lr.predict(vec.transform(test_texts))
            scores["label_studio_baseline"][n].append(f1_score(y[test_idx], pred, average="macro"))
    for setting, by_n in scores.items():
        out["settings"][setting] = {
            str(n): {"median": round(statistics.median(v), 4), "mean": round(statistics.fmean(v), 4)}
            for n, v in by_n.items()
        }
    return out


def throughput(repeats: int) -> dict[str, Any]:
    """First featurization of fresh texts: embedding alone and embedding + TF-IDF fit (texts/s)."""
    texts, _ = read(SHARED / DATASETS["sms_spam"])
    big = [f"{t} #{i}" for i, t in enumerate(texts * 18)][:100_000]  # distinct texts, SMS lengths
    t0 = time.perf_counter()
    embedder = load("wordllama")
    load_s = time.perf_counter() - t0
    embed_rates, full_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        E = embedder.embed(big)
        embed_rates.append(len(big) / (time.perf_counter() - t0))
        spec = text_spec(("ham", "spam"))
        t0 = time.perf_counter()
        learner = Learner(spec)
        learner.fit_features(big, learner.embed(big))
        full_s.append(time.perf_counter() - t0)
    return {
        "texts": len(big),
        "dim": int(E.shape[1]),
        "model_load_s": round(load_s, 2),
        "embed_texts_per_s_median": round(statistics.median(embed_rates)),
        "first_featurization_100k_s_median": round(statistics.median(full_s), 2),
        "first_featurization_texts_per_s_median": round(len(big) / statistics.median(full_s)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {"load_before": os.getloadavg()}
    if not args.skip_quality:
        doc["quality"] = {name: quality(name, args.repeats) for name in DATASETS}
    doc["speed"] = throughput(args.speed_repeats)
    doc["load_after"] = os.getloadavg()
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
