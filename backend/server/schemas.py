"""The HTTP API's request and response models (they make the OpenAPI document) and its one error.

Handlers raise `ApiError`; the app turns it, and every validation error, into a 4xx JSON body
`{"error": "...", "field": "..."}` that names the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.projectdir import MAX_PROJECT_ID
from backend.store import StoreError, validate_project


class ApiError(Exception):
    """A client-facing error: HTTP `status`, a message, and the request field it is about."""

    def __init__(
        self, status: int, error: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field
        self.headers = headers


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    field: str | None = None


class SetupRequest(BaseModel):
    """`POST /setup` as Label Studio sends it when a backend is connected or its settings change."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")
    project: str | int = Field(description='"<project id>.<created timestamp>" as Label Studio sends it, or an id')
    label_config: str = Field(alias="schema", description="the project's label config XML")
    hostname: str | None = Field(default=None, description="ignored: lsal only calls LABEL_STUDIO_URL")
    access_token: str | None = Field(default=None, description="ignored (legacy token); never logged")
    extra_params: dict[str, Any] | None = None


class SetupResponse(BaseModel):
    """The project's current model version, or `lsal-untrained`."""

    model_version: str


class PredictTask(BaseModel):
    """One task of a `/predict` request: only `id` and `data` are read."""

    model_config = ConfigDict(extra="allow")
    id: int
    data: dict[str, Any]


class PredictRequest(BaseModel):
    """`POST /predict`: the tasks to pre-annotate, and the project they belong to."""

    model_config = ConfigDict(extra="allow")
    tasks: list[PredictTask]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class Prediction(BaseModel):
    """One task's pre-annotation; `score` is the model's confidence (1 - informativeness)."""

    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    """`POST /predict`'s answer."""

    results: list[Prediction | list[Prediction]] = Field(
        description="one entry per task, same order; before the project's first model every entry is []"
    )
    model_version: str | None = None


class WebhookResponse(BaseModel):
    """What a webhook event caused: `status` is queued, joined, counted, recorded or ignored."""

    status: str
    action: str
    job_id: str | None = None


class TrainRequest(BaseModel):
    """`POST /train`: a pipeline asks for a cycle of one project."""

    project: int = Field(gt=0, le=MAX_PROJECT_ID)


class TrainResponse(BaseModel):
    """The cycle's job; `created` is false when the request joined a cycle already queued."""

    job_id: str
    created: bool


class HealthResponse(BaseModel):
    """`GET /health`: the server is up; Redis and the model store are reported, not required."""

    model_config = ConfigDict(extra="allow")
    status: str
    model_class: str
    redis: str
    model_store: str


def parse_project(value: Any, field_name: str = "project") -> int:
    """A positive project id from Label Studio's '<id>.<created_ts>' (/setup, /predict) or a plain id."""
    if isinstance(value, str) and "." in value:
        value = value.split(".", 1)[0]
    try:
        project = validate_project(value)
    except StoreError as exc:
        raise ApiError(400, str(exc), field_name) from None
    if project <= 0:
        raise ApiError(400, f"project id must be a positive integer, got {value!r}", field_name)
    return project


def inline_refs(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` written in place: a schema that stands alone in the
    OpenAPI document (whose `#/...` references would point at the document's root)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def validation_error_body(errors: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The 400 body for pydantic validation errors: the first one, naming its field."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ("body",)}
    if first.get("type") == "json_invalid":
        return {"error": "malformed JSON body", "field": "body"}
    field_name = field_from_loc(tuple(first.get("loc", ("body",))))
    return {"error": f"{field_name}: {first.get('msg')}", "field": field_name}


def field_from_loc(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the field path a client reads: ('body', 'tasks', 0, 'id') -> tasks[0].id."""
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"
