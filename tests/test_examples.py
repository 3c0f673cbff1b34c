"""The example plugin package (examples/lsal-example-models, docs/plugins.md): both models pass lsal's
own checks, round-trip through save/load, and run in `lsal simulate --model` registered through
AL_MODELS. (tests/test_e2e_models.py installs the package with pip and runs it against Label Studio.)

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami 2011, CC BY 4.0).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.labelconfig import parse_label_config
from backend.models import ModelRegistry, fit_checked
from tests.conftest import DATASETS, REPO

EXAMPLE = REPO / "examples" / "lsal-example-models"
SPEC = parse_label_config((REPO / "label_config" / "spam.xml").read_text())
AL_MODELS = "sgd-text=lsal_example_models:SgdText,centroid=lsal_example_models:NearestCentroid"


@pytest.fixture(scope="module")
def registry() -> Iterator[ModelRegistry]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield ModelRegistry.discover(AL_MODELS, entry_points=False)
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def sms() -> tuple[list[str], list[str]]:
    with open(DATASETS / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:600]
    return [r["text"] for r in rows], ["spam" if r["label"] == "spam" else "no_spam" for r in rows]


@pytest.mark.parametrize(
    ("name", "capabilities"), [("sgd-text", {"committee", "features"}), ("centroid", {"features"})]
)
def test_example_models_pass_the_checks_and_round_trip(
    registry: ModelRegistry, sms: tuple[list[str], list[str]], tmp_path: Path, name: str, capabilities: set[str]
) -> None:
    texts, y = sms
    model = fit_checked(registry.create(name, SPEC, seed=0), texts[:400], y[:400])
    assert model.capabilities() == capabilities
    assert model.classes_ == ("spam", "no_spam")
    p = model.predict_proba(texts[400:])
    accuracy = float(np.mean([row[0] for row in model.predict_labels(p)] == np.array(y[400:])))
    assert accuracy > 0.85, accuracy
    model.save(tmp_path)
    loaded = registry.load(name, SPEC, tmp_path)
    assert np.allclose(loaded.predict_proba(texts[400:]), p)


def test_lsal_simulate_with_a_plugin_model(tmp_path: Path, sms: tuple[list[str], list[str]]) -> None:
    texts, y = sms
    data = tmp_path / "sms.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, y, strict=True)))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{EXAMPLE}", "AL_MODELS": AL_MODELS}
    cmd = [sys.executable, "-m", "backend.cli", "simulate", "--data", str(data), "--label-column", "label"]
    cmd += ["--text-column", "text", "--label-config", str(REPO / "label_config" / "spam.xml"), "--quiet"]
    cmd += ["--strategies", "entropy,random", "--initial", "20", "--batch", "20", "--budget", "60", "--repeats", "1"]
    run = subprocess.run(
        [*cmd, "--model", "centroid", "--out", str(tmp_path / "out")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert doc["config"]["model"] == "centroid"
    assert sorted(doc["summary"]) == ["entropy", "random"]
    # A strategy the model cannot serve is refused before anything runs, naming both.
    refused = subprocess.run(
        [*cmd, "--strategies", "vote_entropy", "--model", "centroid", "--out", str(tmp_path / "out2")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2
    assert (
        "--model centroid: strategy 'vote_entropy' needs committee, which model 'centroid' does not give"
        in refused.stderr
    )
