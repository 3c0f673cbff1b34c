"""End to end against a real Label Studio 1.23.2, a real `lsal serve` and a real RQ worker.

Connect the backend through Label Studio's API and see it "Connected"; post annotations through
Label Studio's API; see a new model version; see Label Studio store predictions from /predict;
see the queue switched to the new version.

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI ML
Repository, CC BY 4.0), first 60 messages.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from backend.config import Settings
from backend.labelstudio import LabelStudioClient
from backend.store import ModelStore
from tests.conftest import DATASETS, LsalServer, WorkerProcess, cycles_idle, wait_for
from tests.lsharness import LabelStudio, choice_result, create_annotation, create_project, import_tasks

pytestmark = [pytest.mark.e2e]
REPO = Path(__file__).resolve().parent.parent
SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()


def sms(n: int) -> list[tuple[str, str]]:
    with open(DATASETS / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    spam = [(r["text"], "spam") for r in rows if r["label"] == "spam"][: n // 4]
    ham = [(r["text"], "no_spam") for r in rows if r["label"] == "ham"][: n - len(spam)]
    mixed = []
    for i in range(max(len(spam), len(ham))):
        mixed += ([ham[i]] if i < len(ham) else []) + ([spam[i]] if i < len(spam) else [])
    return mixed


@pytest.fixture
def stack(
    label_studio: LabelStudio, settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> Iterator[tuple[LabelStudioClient, Settings, LsalServer]]:
    assert label_studio.pat, "the harness must provide a personal access token"
    settings = replace(
        settings,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.pat,  # the JWT refresh flow, as a new user would configure it
        min_labels=6,
        queue_depth=10,
        ls_retries=2,
        ls_timeout=30.0,
    )
    server = LsalServer(settings, tmp_path / "server.log")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    client = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    try:
        yield client, settings, server
    finally:
        worker.stop()
        server.stop()
        assert label_studio.pat not in server.log(), "a secret reached the server log"
        assert label_studio.pat not in worker.log(), "a secret reached the worker log"


def test_connect_annotate_train_predict(stack: tuple[LabelStudioClient, Settings, LsalServer]) -> None:
    client, settings, server = stack
    data = sms(40)
    project = create_project(client, "e2e spam", SPAM_XML)
    task_ids = import_tasks(client, project, [{"text": t} for t, _ in data])

    backend = client.create_ml_backend(project, server.url, title="lsal")
    assert backend["state"] == "CO"  # Label Studio's code for "Connected"

    # Eight annotations (skips are ignored), posted the way the annotation UI posts them.
    labeled = list(range(8))
    for i in labeled:
        create_annotation(client, task_ids[i], choice_result(data[i][1], from_name="label", to_name="text"))
    create_annotation(client, task_ids[8], [], was_cancelled=True)

    store = ModelStore(settings.model_dir)

    def all_labels_trained() -> bool:
        # Earlier cycles (started by the 6th or 7th annotation) may publish first; coalescing
        # guarantees a follow-up cycle that sees all eight.
        return store.current(project) is not None and store.metadata(project)["n_labels"] == 8

    wait_for(all_labels_trained, 180, 0.5, "a model version trained on all 8 labels")
    meta = store.metadata(project)
    assert meta["label_counts"] == {"no_spam": 4, "spam": 4}

    # The queue follows the newest version once the cycle finished. A coalesced follow-up cycle may
    # publish a newer one, so "the" version is read only once no cycle is queued or running.
    def switched() -> str | None:
        if not cycles_idle(settings):
            return None
        current = store.current(project)
        info = client.get_project(project)
        return current if info["model_version"] == current and info["sampling"] == "Uncertainty sampling" else None

    version = wait_for(switched, 180, 0.5, "the project switched to the newest version")
    versions = client.model_versions(project)
    assert versions.get(version) == settings.queue_depth

    # Label Studio asks /predict for tasks that have no prediction of the backend's version, and stores the answers.
    no_prediction = [t for t in task_ids[9:] if not _has_prediction(client, t, version)]
    assert no_prediction, "queue_depth < pool, so some tasks have no cycle prediction"
    client.request(
        "POST",
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": False, "included": no_prediction[:5]}},
    )
    for task in no_prediction[:5]:
        preds = client.request("GET", "/api/predictions/", params={"task": task})
        mine = [p for p in preds if p["model_version"] == version]
        assert len(mine) == 1, preds
        (item,) = mine[0]["result"]
        assert item["value"]["choices"][0] in ("spam", "no_spam")
        assert 0.0 <= mine[0]["score"] <= 1.0

    # The next task Label Studio serves is the unlabeled one with the lowest score of the current version,
    # once the cleanup job has deleted earlier versions: LS's cluster rule counts a labeled task's
    # cluster from any of its predictions, including a stale version's.
    wait_for(
        lambda: {v for v, n in client.model_versions(project).items() if n > 0} == {version},
        120,
        0.5,
        "stale lsal versions to be deleted",
    )
    nxt = client.next_task(project)
    scored = {
        p["task"]: p["score"]
        for p in client.request("GET", "/api/predictions/", params={"project": project})
        if p["model_version"] == version and p["task"] not in task_ids[:9]
    }
    assert nxt["id"] == min(scored, key=lambda t: (scored[t], t))


def _has_prediction(client: LabelStudioClient, task: int, version: str) -> bool:
    preds = client.request("GET", "/api/predictions/", params={"task": task})
    return any(p["model_version"] == version for p in preds)
