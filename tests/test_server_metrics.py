"""The /metrics router (backend.server.metrics), mounted alone with its one dependency overridden."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from backend.config import Settings
from backend.metrics import Metrics
from backend.server import metrics
from backend.server.deps import get_metrics


def test_metrics_router_serves_prometheus_text(settings: Settings) -> None:
    registry = Metrics(settings)
    app = FastAPI()
    app.include_router(metrics.router)
    app.dependency_overrides[get_metrics] = lambda: registry
    resp = TestClient(app).get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    families = {f.name for f in text_string_to_metric_families(resp.text)}
    assert "lsal_build_info" in families
