"""The app factory (backend.server.app): error answers for any body, and the OpenAPI document."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from backend.config import Settings
from tests.serverkit import assert_error, client_for


@pytest.fixture
def client(settings: Settings, redis_conn: redis.Redis) -> TestClient:
    return client_for(settings)


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook", "/train"])
def test_malformed_json(client: TestClient, path: str) -> None:
    resp = client.post(path, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(resp, 400, "body")


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook", "/train"])
def test_json_that_is_not_an_object(client: TestClient, path: str) -> None:
    resp = client.post(path, json=[1, 2, 3])
    assert resp.status_code == 400
    assert resp.json()["field"]


def test_openapi_document_lists_the_protocol(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/health", "/setup", "/predict", "/webhook", "/train", "/jobs/{job_id}", "/projects/{project}/status"):
        assert path in doc["paths"], path
