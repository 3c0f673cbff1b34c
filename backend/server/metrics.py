"""`GET /metrics`: this process's Prometheus metrics (what they measure lives in `backend.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from backend.server.deps import MetricsDep

router = APIRouter()


# A sync endpoint on purpose: the scrape does blocking Redis and file reads, so FastAPI runs it in
# the thread pool instead of stalling the event loop that answers /webhook.
@router.get(
    "/metrics",
    response_class=Response,
    response_model=None,
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
)
def metrics(registry: MetricsDep) -> Response:
    """The Prometheus text exposition of every lsal metric."""
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
