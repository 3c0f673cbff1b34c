"""Built-in image features: speed, and how well a linear model learns from them. Prints JSON.

Datasets (all made here, offline):
- ``digits``: scikit-learn's 1,797 handwritten digits (8 x 8), upscaled to 64 x 64 and saved as
  PNG, decoded again: what the end-to-end test uploads to Label Studio. The featurizer's design was
  checked on this set.
- ``shapes`` (held out: never looked at while choosing the features): 900 random circles, squares
  and triangles of random colour, size and position on random backgrounds, 48 x 48.

For each: 5-fold cross-validated accuracy of the built-in image model (standardized features,
class-balanced logistic regression) on all rows and with 50 / 200 random labels (5 draws, median),
against the same model on the 16 x 16 grayscale thumbnail alone; and featurization speed (images/s,
median of 3 runs, decode included).

    python bench/bench_images.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold

from backend.features.image import PixelFeaturizer
from backend.images import ImagePolicy, decode_image
from backend.labelconfig import TaskSpec
from backend.models import ImageModel

POLICY = ImagePolicy(label_studio_url="http://unused.invalid")


def as_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def digits() -> tuple[list[bytes], np.ndarray]:
    d = load_digits()
    grays = [Image.fromarray((x.reshape(8, 8) * 255 / 16).astype(np.uint8)) for x in d.data]
    pngs = [as_png(g.resize((64, 64), Image.Resampling.BILINEAR)) for g in grays]
    return pngs, d.target.astype(str)


def shapes(n: int = 900, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    out = []
    for kind in y:
        img = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        s = int(rng.integers(8, 20))
        cx, cy = (int(v) for v in rng.integers(s, 48 - s, 2))
        if kind == 0:
            draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=fill)
        elif kind == 1:
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            draw.polygon([(cx, cy - s), (cx - s, cy + s), (cx + s, cy + s)], fill=fill)
        out.append(as_png(img))
    return out, np.array(["circle", "square", "triangle"])[y]


class MainOnly(ImageModel):
    """The built-in image model without its bootstrap committee: the same predict_proba, a third of the fits."""

    committee_size = 1


class Estimator:
    """The built-in image model on feature rows, with an accuracy score."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels

    def fit(self, X: np.ndarray, y: np.ndarray) -> Estimator:
        spec = TaskSpec("c", "img", "image", self.labels, False, "image", "Image")
        self.model_ = MainOnly(spec).fit(list(X), list(y))
        return self

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        labels = self.model_.predict_labels(self.model_.predict_proba(list(X)))
        return float(np.mean([row[0] for row in labels] == y))


def cross_val_score(est: Estimator, X: np.ndarray, y: np.ndarray, cv: int) -> np.ndarray:
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=0).split(X, y)
    return np.array([est.fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in folds])


def few_labels(X: np.ndarray, y: np.ndarray, labels: tuple[str, ...], n: int, repeats: int) -> float:
    scores = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        idx = rng.permutation(len(y))
        train, test = idx[:n], idx[n:]
        if len(set(y[train])) < 2:
            continue
        scores.append(Estimator(labels).fit(X[train], y[train]).score(X[test], y[test]))
    return round(statistics.median(scores), 4)


def run(name: str, pngs: list[bytes], y: np.ndarray, repeats: int) -> dict[str, Any]:
    f = PixelFeaturizer()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        X = f.transform([decode_image(raw, POLICY) for raw in pngs])
        times.append(time.perf_counter() - start)
    thumbs = X[:, : 16 * 16]
    labels = tuple(sorted(set(y)))
    return {
        "dataset": name,
        "images": len(pngs),
        "feature_dim": int(X.shape[1]),
        "images_per_s": round(len(pngs) / statistics.median(times)),
        "cv_accuracy": round(float(cross_val_score(Estimator(labels), X, y, cv=5).mean()), 4),
        "cv_accuracy_thumbnail_only": round(float(cross_val_score(Estimator(labels), thumbs, y, cv=5).mean()), 4),
        "accuracy_50_labels": few_labels(X, y, labels, 50, repeats),
        "accuracy_200_labels": few_labels(X, y, labels, 200, repeats),
        "accuracy_50_labels_thumbnail_only": few_labels(thumbs, y, labels, 50, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = [run("digits", *digits(), args.repeats), run("shapes (held out)", *shapes(), args.repeats)]
    print(json.dumps({"results": results, "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
