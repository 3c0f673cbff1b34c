"""A small, typed client for the Label Studio REST endpoints this backend uses.

One :class:`requests.Session`, timeouts on every call, retries with exponential backoff, and both
kinds of Label Studio API keys (README, "Connecting Label Studio"; docs/admin.md on tokens):

* a **personal access token** (PAT, the default since Label Studio 1.20) is a long-lived JWT *refresh*
  token. The client trades it for a short-lived access token (``POST /api/token/refresh/``, valid 5
  minutes), sends ``Authorization: Bearer <access>``, refreshes shortly before the access token expires
  (the ``exp`` claim is read without verifying the signature: it is only a scheduling hint) and once more
  whenever Label Studio answers 401. Label Studio rejects a PAT sent as ``Token`` or as ``Bearer``.
* a **legacy token** (anything that is not a JWT) is sent as ``Authorization: Token <key>``.
* a JWT whose ``token_type`` claim is ``access`` is sent as ``Bearer`` as it is (it cannot be refreshed).

Retry policy
------------
Connection errors, timeouts and 5xx answers are retried with exponential backoff (``backoff * 2**n``,
honouring ``Retry-After``) for requests that are safe to repeat: GET, PATCH, PUT, DELETE and the bulk
prediction import. 4xx answers are never retried (except the single token refresh on 401).

A POST that is not idempotent (creating a project, importing tasks, connecting an ML backend, creating
an annotation) is retried only when the request certainly never reached Label Studio (the connection
could not be opened); after a read timeout or a 5xx it may have been applied, and repeating it would
create a duplicate, so the error is raised.

``POST /api/projects/{id}/import/predictions`` is deliberately treated as safe to repeat: if a timed-out
import was applied, the retry adds a second prediction of the *same* model version with the *same*
score to each task. Label Studio's uncertainty sampling and its ``predictions_score`` column give the
same order with or without the duplicate, and the writer deletes whole versions in bulk
(:meth:`LabelStudioClient.delete_model_version`), which removes duplicates too. Losing a write, on the
other hand, would leave the annotation queue following stale scores.

No secret (API key, access token, basic-auth password) is ever logged or put in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import requests
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, Timeout

__all__ = [
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioUnavailable",
    "is_jwt",
    "jwt_claims",
]

log = logging.getLogger(__name__)

_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
#: refresh the access token this many seconds before its ``exp``
REFRESH_MARGIN_S = 30.0
#: lifetime assumed for an access token whose ``exp`` cannot be read (Label Studio's default)
DEFAULT_ACCESS_LIFETIME_S = 300.0
#: longest single backoff sleep
MAX_BACKOFF_S = 30.0
#: the status codes a retry can help with
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: how much of Label Studio's error text goes into an exception message
_MAX_DETAIL_CHARS = 1000
#: fields of an annotation that :meth:`LabelStudioClient.labeled_tasks` keeps
ANNOTATION_FIELDS = (
    "id",
    "result",
    "was_cancelled",
    "ground_truth",
    "created_at",
    "updated_at",
    "completed_by",
    "lead_time",
)
#: Data Manager filter: tasks without a submitted (non-cancelled) annotation
_UNLABELED_FILTER = {
    "filter": "filter:tasks:total_annotations",
    "operator": "equal",
    "value": 0,
    "type": "Number",
}
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


class LabelStudioError(Exception):
    """Label Studio answered with an error, or could not be asked.

    ``status`` is the HTTP status (``None`` when no answer arrived), ``method`` and ``path`` name the
    call, ``detail`` is Label Studio's own error text. None of them contains a secret.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.method = method
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio could not be reached, timed out, or answered 5xx (after the retries allowed)."""


def is_jwt(key: str) -> bool:
    """True if ``key`` has the shape of a JWT (three dot-separated base64url parts)."""
    return bool(_JWT_RE.match(key))


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded **without** verifying its signature; ``{}`` if unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _never_sent(exc: BaseException) -> bool:
    """True if a requests exception proves the request never reached the server."""
    if isinstance(exc, ConnectTimeout):
        return True
    if not isinstance(exc, RequestsConnectionError) or isinstance(exc, Timeout):
        return False
    # requests wraps urllib3's MaxRetryError(reason=NewConnectionError | NameResolutionError ...)
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        name = type(cur).__name__
        if name in {"NewConnectionError", "NameResolutionError", "ConnectTimeoutError"}:
            return True
        stack.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__])
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    return False


class LabelStudioClient:
    """Typed client for the Label Studio API (1.23).

    ``url`` is Label Studio's base URL (a sub-path such as ``https://host/ls`` works); ``api_key`` a
    personal access token or a legacy token. ``timeout`` applies to each HTTP request (connect and
    read), ``retries`` is the number of *extra* attempts after a retryable failure, ``backoff`` the
    first backoff sleep in seconds. The client is safe to share between threads.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError("Label Studio url must start with http:// or https://")
        if not api_key or not api_key.strip():
            raise ValueError("Label Studio api_key is empty")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session if session is not None else requests.Session()
        self._key = api_key.strip()
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_exp = 0.0
        if is_jwt(self._key):
            self.auth_kind = "access" if jwt_claims(self._key).get("token_type") == "access" else "pat"
        else:
            self.auth_kind = "legacy"
        if self.auth_kind == "access":
            self._access = self._key
            self._access_exp = float(jwt_claims(self._key).get("exp") or 0) or float("inf")

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, auth={self.auth_kind})"

    def close(self) -> None:
        """Close the HTTP session's pooled connections."""
        self.session.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ secrets and auth

    def _redact(self, text: str) -> str:
        for secret in (self._key, self._access):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _refresh_access(self) -> None:
        """Trade the PAT for a new access token. Caller holds ``self._lock``."""
        resp = self._send(
            "POST",
            "/api/token/refresh/",
            json_body={"refresh": self._key},
            idempotent=True,
            auth=False,
            timeout=None,
            params=None,
        )
        if resp.status_code in (400, 401, 403):
            raise self._error(
                resp,
                "POST",
                "/api/token/refresh/",
                hint="Label Studio rejected the personal access token; create a new one in Account settings",
            )
        if resp.status_code >= 400:
            raise self._error(resp, "POST", "/api/token/refresh/")
        access = _json_or_none(resp)
        token = access.get("access") if isinstance(access, dict) else None
        if not isinstance(token, str) or not token:
            raise LabelStudioError(
                "POST /api/token/refresh/ -> 200 without an access token",
                status=resp.status_code,
                method="POST",
                path="/api/token/refresh/",
            )
        exp = jwt_claims(token).get("exp")
        now = time.time()
        self._access = token
        self._access_exp = float(exp) if isinstance(exp, int | float) else now + DEFAULT_ACCESS_LIFETIME_S
        log.debug("label studio access token refreshed, valid for %.0f s", self._access_exp - now)

    def _auth_header(self, *, stale: str | None = None) -> dict[str, str]:
        """The Authorization header; with ``stale`` (an access token LS refused), refresh it first."""
        if self.auth_kind == "legacy":
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self.auth_kind == "pat" and (
                self._access is None
                or (stale is not None and stale == self._access)
                or time.time() >= self._access_exp - REFRESH_MARGIN_S
            ):
                self._refresh_access()
            assert self._access is not None
            return {"Authorization": f"Bearer {self._access}"}

    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header for Label Studio, for a caller that streams a file itself
        (backend/images.py); never send it to any other host."""
        return self._auth_header()

    # ------------------------------------------------------------------ transport

    def _sleep_before_retry(self, attempt: int, resp: requests.Response | None) -> None:
        delay = min(self.backoff * (2**attempt), MAX_BACKOFF_S)
        if resp is not None:
            retry_after = resp.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = min(max(delay, float(retry_after)), MAX_BACKOFF_S * 2)
        if delay > 0:
            time.sleep(delay)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        json_body: Any,
        idempotent: bool,
        auth: bool,
        timeout: float | None,
    ) -> requests.Response:
        """Send with retries; returns the final response (any status) or raises LabelStudioUnavailable."""
        url = self.url + path
        attempt = 0
        refreshed = False
        while True:
            headers = {"Accept": "application/json"}
            sent_access: str | None = None
            if auth:
                headers.update(self._auth_header())
                if self.auth_kind != "legacy":
                    sent_access = headers["Authorization"].removeprefix("Bearer ")
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=headers,
                    timeout=timeout or self.timeout,
                )
            except (RequestsConnectionError, Timeout) as exc:
                retryable = idempotent or _never_sent(exc)
                if retryable and attempt < self.retries:
                    log.warning(
                        "label studio %s %s failed (%s), retry %d/%d",
                        method,
                        path,
                        type(exc).__name__,
                        attempt + 1,
                        self.retries,
                    )
                    self._sleep_before_retry(attempt, None)
                    attempt += 1
                    continue
                why = "" if retryable else " (not retried: the request may have been applied)"
                raise LabelStudioUnavailable(
                    self._redact(
                        f"{method} {path} -> no answer from Label Studio at {self.url}: {type(exc).__name__}{why}"
                    ),
                    method=method,
                    path=path,
                ) from None
            if resp.status_code == 401 and auth and self.auth_kind == "pat" and not refreshed:
                # the access token expired early or was revoked: one refresh, then the same call again
                refreshed = True
                log.info("label studio %s %s -> 401, refreshing the access token", method, path)
                self._auth_header(stale=sent_access)
                continue
            if resp.status_code in _RETRY_STATUSES and idempotent and attempt < self.retries:
                log.warning(
                    "label studio %s %s -> %d, retry %d/%d",
                    method,
                    path,
                    resp.status_code,
                    attempt + 1,
                    self.retries,
                )
                self._sleep_before_retry(attempt, resp)
                attempt += 1
                continue
            return resp

    def _error(self, resp: requests.Response, method: str, path: str, *, hint: str = "") -> LabelStudioError:
        detail = _error_detail(resp)
        msg = f"{method} {path} -> {resp.status_code}"
        if detail:
            msg += f": {detail}"
        if hint:
            msg += f" ({hint})"
        cls = LabelStudioUnavailable if resp.status_code >= 500 else LabelStudioError
        return cls(
            self._redact(msg),
            status=resp.status_code,
            method=method,
            path=path,
            detail=self._redact(detail) if detail else None,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Call ``path`` (starting with ``/``) and return the decoded JSON answer (``None`` if empty).

        ``idempotent`` defaults to True for GET/PUT/PATCH/DELETE and False for POST (see the module doc).
        Raises :class:`LabelStudioError` on 4xx, :class:`LabelStudioUnavailable` on 5xx and network errors.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in _IDEMPOTENT_METHODS
        resp = self._send(
            method, path, params=params, json_body=json, idempotent=idempotent, auth=True, timeout=timeout
        )
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code == 401 and self.auth_kind == "legacy":
                hint = (
                    "check the API key; Label Studio 1.20+ disables legacy tokens by default, "
                    "use a personal access token"
                )
            elif resp.status_code == 401 and self.auth_kind == "access":
                hint = "an access token expires after 5 minutes; configure the personal access token instead"
            raise self._error(resp, method, path, hint=hint)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise LabelStudioError(
                f"{method} {path} -> {resp.status_code} with a body that is not JSON "
                f"({resp.headers.get('Content-Type', 'no content type')})",
                status=resp.status_code,
                method=method,
                path=path,
            ) from None

    # ------------------------------------------------------------------ health and identity

    def health(self) -> bool:
        """True if Label Studio answers ``GET /health`` with ``{"status": "UP"}``. One try, no auth."""
        try:
            resp = self.session.get(self.url + "/health", timeout=min(self.timeout, 5.0))
            body = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return False
        return isinstance(body, dict) and body.get("status") == "UP"

    def current_user(self) -> dict[str, Any]:
        """The user the key belongs to (``GET /api/current-user/whoami``): checks that the key works."""
        return self.request("GET", "/api/current-user/whoami")

    # ------------------------------------------------------------------ projects

    def get_project(self, project: int, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The project (``GET /api/projects/{id}``): title, ``model_version``, ``sampling``, label config.

        ``fields``: only these (and ``id``) in the answer, via Label Studio's ``include``, which also
        skips the project's task and annotation counts: those are aggregates over every task, the
        bulk of the call's cost on a large project (``None``: every field, counts included).
        """
        params = None if fields is None else {"include": ",".join(["id", *fields])}
        return self.request("GET", f"/api/projects/{int(project)}", params=params)

    def update_project(self, project: int, **fields: Any) -> dict[str, Any]:
        """``PATCH /api/projects/{id}``, e.g. ``sampling="Uncertainty sampling", model_version="v3"``;
        the answer holds ``id`` and the fields sent, as Label Studio stored them.

        Label Studio accepts a ``model_version`` only if a prediction of that version exists or it is the
        title of a connected ML backend (400 otherwise). The PATCH fires a ``PROJECT_UPDATED`` webhook.
        The answer is trimmed with ``include`` (see :meth:`get_project`), so Label Studio does not
        compute the project's counts for it: this PATCH switches the queue once per cycle.
        """
        if not fields:
            raise ValueError("update_project needs at least one field")
        params = {"include": ",".join(["id", *fields])}
        return self.request("PATCH", f"/api/projects/{int(project)}", params=params, json=fields)

    # ------------------------------------------------------------------ tasks

    def iter_tasks(
        self,
        project: int,
        *,
        page_size: int = 1000,
        include: Sequence[str] | None = ("id", "data"),
        only_unlabeled: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yield the project's tasks in id order, one page (``GET /api/tasks``) at a time.

        ``include`` limits the fields Label Studio serializes (``("id", "data")`` is ~4x faster than
        the default field set; ``None`` = Label Studio's default fields). ``only_unlabeled`` keeps tasks
        without a submitted annotation (``total_annotations == 0``; a task that was only *skipped*
        counts as unlabeled, as in Label Studio's own queue). Stops at ``total``; a page past the end
        (404, e.g. after concurrent deletions) ends the iteration too.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if only_unlabeled:
            query["filters"] = {
                "conjunction": "and",
                "items": [_UNLABELED_FILTER],
            }
        params: dict[str, Any] = {"project": int(project), "page_size": page_size, "query": json.dumps(query)}
        if include is not None:
            params["include"] = ",".join(include)
        page = 1
        while True:
            params["page"] = page
            try:
                body = self.request("GET", "/api/tasks", params=params)
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:
                    return
                raise
            tasks = body.get("tasks") or []
            total = int(body.get("total") or 0)
            yield from tasks
            if len(tasks) < page_size or page * page_size >= total:
                return
            page += 1

    def tasks_by_id(self, project: int, ids: Iterable[int], *, chunk_size: int = 500) -> dict[int, dict[str, Any]]:
        """The data of the project's tasks among ``ids``: task id -> ``data``, read in bulk.

        ``GET /api/tasks`` with a Data Manager selection (``selectedItems`` with ``all: false`` and
        the ids ``included``) and ``include=id,data``: one request per ``chunk_size`` ids. An id that
        Label Studio does not return (deleted, never existed, or another project's) is absent from
        the answer; whatever Label Studio returns beyond the ids asked for is ignored.
        """
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), chunk_size):
            chunk = wanted[start : start + chunk_size]
            query = {"selectedItems": {"all": False, "included": chunk}, "ordering": ["tasks:id"]}
            params = {
                "project": int(project),
                "page_size": len(chunk),
                "page": 1,
                "include": "id,data",
                "query": json.dumps(query),
            }
            body = self.request("GET", "/api/tasks", params=params)
            asked = set(chunk)
            tasks = body.get("tasks") if isinstance(body, dict) else None
            for task in tasks if isinstance(tasks, list) else []:
                task_id = task.get("id") if isinstance(task, dict) else None
                if isinstance(task_id, int) and task_id in asked and isinstance(task.get("data"), dict):
                    out[task_id] = task["data"]
        return out

    def labeled_tasks(
        self, project: int, ids: Iterable[int] | None = None, *, chunk_size: int = 200
    ) -> list[dict[str, Any]]:
        """Every task with at least one annotation, skipped (``was_cancelled``) ones included; with
        ``ids``, only those of these tasks (an id without annotations, deleted or of another project
        is simply absent from the answer).

        Uses the JSON export (the fastest way; ``ids[]`` selects tasks, one request per
        ``chunk_size`` ids). Each task is trimmed to ``id``, ``data``, ``meta`` and ``annotations``;
        each annotation to :data:`ANNOTATION_FIELDS`. The caller decides what to do with cancelled
        annotations and with several annotations per task.
        """
        if ids is None:
            return self._export(project, {"exportType": "JSON"})
        wanted = sorted({int(i) for i in ids})
        out: list[dict[str, Any]] = []
        for start in range(0, len(wanted), chunk_size):
            chunk = wanted[start : start + chunk_size]
            asked = set(chunk)
            got = self._export(project, {"exportType": "JSON", "ids[]": chunk})
            out.extend(t for t in got if t["id"] in asked)
        return out

    def _export(self, project: int, params: dict[str, Any]) -> list[dict[str, Any]]:
        path = f"/api/projects/{int(project)}/export"
        body = self.request("GET", path, params=params)
        if not isinstance(body, list):
            raise LabelStudioError(
                f"GET {path} -> unexpected answer (not a list of tasks)", status=200, method="GET", path=path
            )
        out: list[dict[str, Any]] = []
        for task in body:
            annotations = [{k: a[k] for k in ANNOTATION_FIELDS if k in a} for a in task.get("annotations") or []]
            if not annotations:
                continue
            out.append(
                {
                    "id": task["id"],
                    "data": task.get("data", {}),
                    "meta": task.get("meta") or {},
                    "annotations": annotations,
                }
            )
        return out

    # ------------------------------------------------------------------ predictions

    def import_predictions(self, project: int, predictions: Sequence[dict[str, Any]], *, chunk_size: int = 5000) -> int:
        """Bulk-create predictions; returns how many Label Studio created.

        Items: ``{"task": id, "result": [...], "score": float, "model_version": "v"}``. Sent in chunks
        of ``chunk_size`` (Label Studio recounts the whole project after every call, so few large calls
        are much faster than many small ones). Label Studio 1.23 **silently drops** an item whose result
        does not match the label config: compare the answer with ``len(predictions)`` (a warning is
        logged when they differ). A task id that is not in the project makes Label Studio reject that
        whole chunk with 400 (:class:`LabelStudioError`); earlier chunks stay imported.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        path = f"/api/projects/{int(project)}/import/predictions"
        created = 0
        for start in range(0, len(predictions), chunk_size):
            chunk = list(predictions[start : start + chunk_size])
            body = self.request("POST", path, json=chunk, idempotent=True)
            created += int(body.get("created", 0)) if isinstance(body, dict) else 0
        if created != len(predictions):
            log.warning(
                "label studio created %d of %d predictions in project %d: the others were dropped "
                "(result does not match the label config?)",
                created,
                len(predictions),
                int(project),
            )
        return created

    def model_versions(self, project: int) -> dict[str, int]:
        """``{model_version: number of predictions}``; the project's current ``model_version`` is listed
        with 0 when it has no predictions (Label Studio does that)."""
        body = self.request("GET", f"/api/projects/{int(project)}/model-versions/")
        return {str(k): int(v) for k, v in (body or {}).items()}

    def delete_model_version(self, project: int, version: str, *, timeout: float | None = 600.0) -> int:
        """Delete every prediction of ``version`` in one call; returns how many were deleted.

        Label Studio needs ~11 ms per prediction (a minute for 5,000), hence the long default timeout:
        run it off the critical path.
        """
        if not version:
            raise ValueError("version must be a non-empty string")
        body = self.request(
            "DELETE",
            f"/api/projects/{int(project)}/model-versions/",
            json={"model_version": version},
            timeout=timeout,
        )
        return int(body.get("deleted_predictions", 0)) if isinstance(body, dict) else 0

    def next_task(self, project: int) -> dict[str, Any]:
        """The task Label Studio's queue serves next to this key's user (``GET /api/projects/{id}/next``).

        404 (:class:`LabelStudioError`) when there is none left.
        """
        return self.request("GET", f"/api/projects/{int(project)}/next")

    # ------------------------------------------------------------------ ML backend connection

    def create_ml_backend(
        self,
        project: int,
        url: str,
        *,
        title: str = "lsal",
        basic_auth: tuple[str, str] | None = None,
        extra_params: dict[str, Any] | None = None,
        is_interactive: bool = False,
    ) -> dict[str, Any]:
        """Connect an ML backend to a project (``POST /api/ml``).

        Label Studio calls the backend's ``/health`` and ``/setup`` before it answers, and rejects the
        connection (400) if they fail. Not retried after a timeout (it could create a second connection).
        """
        body: dict[str, Any] = {
            "project": int(project),
            "url": url,
            "title": title,
            "is_interactive": is_interactive,
            "auth_method": "NONE",
        }
        if basic_auth is not None:
            user, password = basic_auth
            body.update(auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password)
        if extra_params is not None:
            body["extra_params"] = extra_params
        return self.request("POST", "/api/ml", json=body)

    def list_ml_backends(self, project: int) -> list[dict[str, Any]]:
        """The ML-backend connections of a project (``GET /api/ml?project=N``)."""
        body = self.request("GET", "/api/ml", params={"project": int(project)})
        return list(body or [])

    def delete_ml_backend(self, backend_id: int) -> None:
        """Remove an ML-backend connection (``DELETE /api/ml/{id}``)."""
        self.request("DELETE", f"/api/ml/{int(backend_id)}")


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _error_detail(resp: requests.Response) -> str:
    """Label Studio's error text: ``detail`` plus ``validation_errors``; a short note for non-JSON."""
    body = _json_or_none(resp)
    if isinstance(body, dict):
        parts: list[str] = []
        detail = body.get("detail")
        if detail:
            parts.append(str(detail))
        errors = body.get("validation_errors")
        if errors:
            parts.append(json.dumps(errors, ensure_ascii=False, default=str))
        if not parts:
            parts.append(json.dumps(body, ensure_ascii=False, default=str))
        text = " ".join(parts)
    elif body is not None:
        text = json.dumps(body, ensure_ascii=False, default=str)
    else:
        ctype = resp.headers.get("Content-Type", "")
        text = f"non-JSON answer ({ctype or 'no content type'}, {len(resp.content)} bytes)" if resp.content else ""
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[:_MAX_DETAIL_CHARS] + "…"
    return text
