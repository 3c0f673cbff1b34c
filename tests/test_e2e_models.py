"""Models end to end: real Label Studio 1.23.2, real `lsal serve`, real RQ worker.

- An image project: PNGs uploaded to Label Studio (the scikit-learn digits, upscaled), connected with
  `lsal connect`, annotated through the API: lsal fetches the images itself, trains, writes
  predictions, and Label Studio's `/next` follows them.
- A text project on a plugin from the example package, installed the way a user would
  (`pip install examples/lsal-example-models`, here into a directory on the processes' PYTHONPATH
  so the shared environment stays untouched; the entry point is found the same way).
- A plugin that breaks (NaN, wrong shape, an exception in fit, an import error): the cycle fails
  with the model's error and the previous version keeps serving.

Data: scikit-learn's copy of the UCI optical digits (Alpaydin & Kaynak 1998, CC BY 4.0); the SMS
Spam Collection (Almeida, Gómez Hidalgo & Yamakami 2011, CC BY 4.0).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from PIL import Image
from sklearn.datasets import load_digits

from backend.config import Settings
from backend.labelstudio import LabelStudioClient
from backend.store import ModelStore
from tests.conftest import REPO, LsalServer, WorkerProcess, cycles_idle, settings_env, wait_for
from tests.lsharness import LabelStudio, choice_result, create_annotation, create_project, import_tasks
from tests.test_e2e_foundation import SPAM_XML, sms

pytestmark = [pytest.mark.e2e]

DIGITS_XML = """<View>
  <Image name="img" value="$image"/>
  <Choices name="digit" toName="img" choice="single">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/>
  </Choices>
</View>"""


def digit_pngs(n: int) -> list[tuple[bytes, str]]:
    """The first ``n`` digits 0, 1 and 2, each 8 x 8 upscaled to 64 x 64 grayscale PNG."""
    d = load_digits()
    out = []
    for x, y in zip(d.data, d.target, strict=True):
        if y > 2:
            continue
        img = Image.fromarray((x.reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append((buf.getvalue(), str(y)))
        if len(out) == n:
            break
    return out


def upload_pngs(ls: LabelStudio, project: int, pngs: list[bytes]) -> list[int]:
    """Upload PNG files as Label Studio's import dialog does (multipart); one task per file."""
    # One form field per file: Label Studio reads request.FILES by field, one file per field.
    files = [(f"file{i}", (f"digit{i:03d}.png", raw, "image/png")) for i, raw in enumerate(pngs)]
    resp = requests.post(
        f"{ls.url}/api/projects/{project}/import",
        params={"return_task_ids": "true"},
        files=files,
        headers={"Authorization": f"Token {ls.legacy_token}"},
        timeout=120,
    )
    assert resp.status_code == 201, resp.text
    return [int(i) for i in resp.json()["task_ids"]]


@pytest.fixture
def lsal(
    label_studio: LabelStudio, settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings pointing at the real Label Studio; the test starts server and worker with its env."""
    settings = replace(
        settings,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.legacy_token,
        min_labels=6,
        queue_depth=8,
        ls_retries=2,
        ls_timeout=30.0,
    )
    yield settings, {}


def start(settings: Settings, tmp_path: Path, env: dict[str, str]) -> tuple[LsalServer, WorkerProcess]:
    server = LsalServer(settings, tmp_path / "server.log", extra_env=env)
    worker = WorkerProcess(settings, tmp_path / "worker.log", extra_env=env)
    return server, worker


def connect(settings: Settings, project: int, url: str, env: dict[str, str], extra: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "backend.cli", "connect", "--project", str(project), "--url", url]
    if extra is not None:
        cmd += ["--extra-params", json.dumps(extra)]
    run = subprocess.run(
        cmd, env={**settings_env(settings), **env}, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr


def live_version(settings: Settings, ls: LabelStudioClient, project: int, store: ModelStore) -> str | None:
    """The newest version once no cycle is queued or running and Label Studio's queue follows it."""
    if not cycles_idle(settings):
        return None
    current = store.current(project)
    return current if current and ls.get_project(project)["model_version"] == current else None


def test_image_project_trains_on_images_lsal_fetched_itself(
    label_studio: LabelStudio, lsal: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, env = lsal
    ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    data = digit_pngs(30)
    project = create_project(ls, f"digits {tmp_path.name}", DIGITS_XML)
    task_ids = upload_pngs(label_studio, project, [raw for raw, _ in data])
    assert len(task_ids) == 30
    task = ls.request("GET", f"/api/tasks/{task_ids[0]}")
    assert task["data"]["image"].startswith("/data/upload/"), task["data"]
    # One task whose image cannot be read: a PNG's first bytes only. Skipped and counted, not fatal.
    broken = upload_pngs(label_studio, project, [data[0][0][:60]])[0]

    server, worker = start(settings, tmp_path, env)
    store = ModelStore(settings.model_dir)
    try:
        connect(settings, project, server.url, env)
        labeled = list(range(12))
        for i in labeled:
            create_annotation(ls, task_ids[i], choice_result(data[i][1], from_name="digit", to_name="img"))
        wait_for(
            lambda: store.current(project) and store.metadata(project)["n_labels"] == 12,
            240,
            0.5,
            "a version trained on the 12 labeled images",
        )
        version = wait_for(
            lambda: live_version(settings, ls, project, store), 240, 0.5, "the queue on the newest version"
        )
        meta = store.metadata(project)
        assert meta["model"] == "builtin"
        assert meta["label_counts"] == dict(sorted(Counter(data[i][1] for i in labeled).items()))
        assert meta["training_stats"]["images_skipped"] == {}
        assert meta["training_stats"]["pool_images_skipped"] == {"undecodable": 1}
        assert meta["metrics"]["cv_accuracy"] >= 0.6

        # Predictions of that version for the queue_depth most informative unlabeled images, with
        # labels the images show: the model saw pixels, not file names.
        preds = [
            p
            for p in ls.request("GET", "/api/predictions/", params={"project": project})
            if p["model_version"] == version
        ]
        assert len(preds) == settings.queue_depth
        truth = {task_ids[i]: data[i][1] for i in range(len(data))}
        assert broken not in {p["task"] for p in preds}
        right = sum(p["result"][0]["value"]["choices"][0] == truth[p["task"]] for p in preds)
        assert right >= settings.queue_depth * 0.6, preds

        # /next serves the lowest score of the current version.
        wait_for(
            lambda: {v for v, n in ls.model_versions(project).items() if n > 0} == {version},
            120,
            0.5,
            "stale versions deleted",
        )
        scores = {p["task"]: p["score"] for p in preds}
        assert ls.next_task(project)["id"] == min(scores, key=lambda t: (scores[t], t))

        # Label Studio's "Retrieve predictions" on an image without one: /predict fetches it too.
        unpredicted = [t for t in task_ids[12:] if t not in scores][:2]
        ls.request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": False, "included": [*unpredicted, broken]}},
        )
        for t in unpredicted:
            mine = [
                p for p in ls.request("GET", "/api/predictions/", params={"task": t}) if p["model_version"] == version
            ]
            assert len(mine) == 1 and mine[0]["result"][0]["value"]["choices"][0] in ("0", "1", "2")
        assert not [p for p in ls.request("GET", "/api/predictions/", params={"task": broken}) if p["result"]]
    finally:
        worker.stop()
        server.stop()
    assert label_studio.legacy_token not in server.log() + worker.log(), "a secret reached a log"


@pytest.fixture(scope="module")
def example_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install examples/lsal-example-models` into a directory (with its dist-info: entry points)."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    run = subprocess.run(
        [*cmd, str(REPO / "examples" / "lsal-example-models")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return target


def test_text_project_on_an_installed_plugin_model(
    label_studio: LabelStudio, lsal: tuple[Settings, dict[str, str]], tmp_path: Path, example_package: Path
) -> None:
    settings, _ = lsal
    env = {"PYTHONPATH": f"{REPO}:{example_package}"}
    ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    data = sms(40)
    project = create_project(ls, f"plugin {tmp_path.name}", SPAM_XML)
    task_ids = import_tasks(ls, project, [{"text": t} for t, _ in data])
    server, worker = start(settings, tmp_path, env)
    store = ModelStore(settings.model_dir)
    try:
        connect(settings, project, server.url, env, {"model": "sgd-text", "strategy": "entropy"})
        for i in range(10):
            create_annotation(ls, task_ids[i], choice_result(data[i][1]))
        wait_for(
            lambda: store.current(project) and store.metadata(project)["n_labels"] == 10,
            240,
            0.5,
            "a plugin version trained on the 10 labels",
        )
        version = wait_for(
            lambda: live_version(settings, ls, project, store), 240, 0.5, "the queue on the newest version"
        )
        meta = store.metadata(project)
        assert meta["model"] == "sgd-text" and meta["strategy"] == "entropy"
        assert sorted(p.name for p in store.path(project, version).iterdir()) == ["metadata.json", "model.skops"]
        assert ls.model_versions(project).get(version) == settings.queue_depth
        # /predict answers with the plugin's version.
        body = {
            "tasks": [{"id": task_ids[-1], "data": {"text": data[-1][0]}}],
            "project": project,
            "label_config": SPAM_XML,
        }
        answer = requests.post(f"{server.url}/predict", json=body, timeout=30).json()
        assert answer["model_version"] == version
        assert answer["results"][0]["result"][0]["value"]["choices"][0] in ("spam", "no_spam")
        # Status and the learning curve read a plugin's versions as they read the built-in learner's.
        status = requests.get(f"{server.url}/projects/{project}/status", timeout=30).json()
        assert status["current_version"] == version and status["n_labels"] == 10
        assert status["learning_curve"][-1]["version"] == version
        png = requests.get(f"{server.url}/projects/{project}/learning-curve.png", timeout=30)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        # Rollback: a newer plugin version, then the earlier one serves again (loaded from its artifact).
        create_annotation(ls, task_ids[10], choice_result(data[10][1]))
        wait_for(
            lambda: store.current(project) != version and store.metadata(project)["n_labels"] == 11,
            240,
            0.5,
            "a second plugin version trained on 11 labels",
        )
        wait_for(lambda: cycles_idle(settings), 240, 0.5, "no cycle queued or running")
        store.rollback(project, version)
        rolled = requests.post(f"{server.url}/predict", json=body, timeout=30).json()
        assert rolled["model_version"] == version
        # A strategy the model cannot serve is refused by /setup, naming both.
        refused = requests.post(
            f"{server.url}/setup",
            json={
                "project": f"{project}.1",
                "schema": SPAM_XML,
                "extra_params": {"model": "centroid", "strategy": "vote_entropy"},
            },
            timeout=30,
        )
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "strategy 'vote_entropy' needs committee, which model 'centroid' does not give "
            "(it gives: features); choose a strategy such as 'margin' or 'entropy'",
            "field": "extra_params.strategy",
        }
    finally:
        worker.stop()
        server.stop()


FLAKY_PLUGIN = '''
"""A plugin whose behaviour a file chooses: ok, nan, shape or raise (tests/test_e2e_models.py)."""
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from backend.models import SklearnModel

MODE = Path(__file__).with_name("mode.txt")


class Flaky(SklearnModel):
    object_tags = frozenset({"Text"})

    def make_estimator(self):
        return make_pipeline(TfidfVectorizer(), LogisticRegression())

    def fit(self, inputs, y):
        if MODE.read_text().strip() == "raise":
            raise RuntimeError("the GPU is on fire")
        return super().fit(inputs, y)

    def predict_proba(self, inputs):
        mode = MODE.read_text().strip()
        p = super().predict_proba(inputs)
        if mode == "nan":
            p[0, 0] = np.nan
        if mode == "shape":
            return p[:, :1]
        return p
'''


def test_a_broken_plugin_fails_the_cycle_and_the_previous_version_keeps_serving(
    label_studio: LabelStudio, lsal: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, _ = lsal
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky_plugin.py").write_text(textwrap.dedent(FLAKY_PLUGIN))
    mode = plugins / "mode.txt"
    mode.write_text("ok")
    env = {
        "PYTHONPATH": f"{REPO}:{plugins}",
        "AL_MODELS": "flaky=flaky_plugin:Flaky,gone=no_such_plugin_module:Model",
        "AL_STRATEGY": "entropy",
    }
    ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    data = sms(30)
    project = create_project(ls, f"flaky {tmp_path.name}", SPAM_XML)
    task_ids = import_tasks(ls, project, [{"text": t} for t, _ in data])
    server, worker = start(settings, tmp_path, env)
    store = ModelStore(settings.model_dir)
    jobs = requests.Session()
    try:
        # An import error is reported by /setup, naming the module; the server runs on.
        gone = requests.post(
            f"{server.url}/setup",
            json={"project": f"{project}.1", "schema": SPAM_XML, "extra_params": {"model": "gone"}},
        )
        assert gone.status_code == 400, gone.text
        assert gone.json()["field"] == "extra_params.model"
        assert "No module named 'no_such_plugin_module'" in gone.json()["error"]

        connect(settings, project, server.url, env, {"model": "flaky"})
        for i in range(8):
            create_annotation(ls, task_ids[i], choice_result(data[i][1]))
        good = wait_for(lambda: live_version(settings, ls, project, store), 240, 0.5, "a first, good version")
        served = ls.model_versions(project)

        for bad, expected in [
            ("nan", "Flaky.predict_proba returned nan at (0, 0)"),
            ("shape", "Flaky.predict_proba returned shape (8, 1); expected (8, 2)"),
            ("raise", "Flaky.fit failed: RuntimeError: the GPU is on fire"),
        ]:
            mode.write_text(bad)
            job_id = jobs.post(f"{server.url}/train", json={"project": project}, timeout=10).json()["job_id"]
            state = wait_for(
                lambda job_id=job_id: (
                    (s := jobs.get(f"{server.url}/jobs/{job_id}", timeout=10).json())["state"] in ("failed", "finished")
                    and s
                ),
                240,
                0.5,
                f"the {bad} cycle to end",
            )
            assert state["state"] == "failed", state
            assert expected in state["error"], state
            # Nothing was published or written: the queue still follows the good version.
            assert store.current(project) == good
            assert ls.get_project(project)["model_version"] == good
            now = ls.model_versions(project)
            assert set(now) <= set(served) and now[good] == served[good] == settings.queue_depth
        mode.write_text("ok")
        body = {
            "tasks": [{"id": task_ids[-1], "data": {"text": data[-1][0]}}],
            "project": project,
            "label_config": SPAM_XML,
        }
        assert requests.post(f"{server.url}/predict", json=body, timeout=30).json()["model_version"] == good
    finally:
        worker.stop()
        server.stop()
