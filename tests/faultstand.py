"""A stand-in Label Studio 1.23.2 that can be made to fail, for fault-injection tests only.

It serves exactly the endpoints lsal's worker calls (see backend/labelstudio.py and
/work/shared/label-studio.md), with the status codes and JSON shapes of the real 1.23.2:

* ``GET /health`` -> ``{"status": "UP"}``
* ``GET /api/projects/{id}`` / ``PATCH /api/projects/{id}`` (``model_version`` accepted only if a
  prediction of that version exists or it is a connected backend's title, else 400 with
  ``validation_errors``, as LS does)
* ``GET /api/projects/{id}/export?exportType=JSON[&ids[]=..]`` -> list of tasks that have annotations
* ``GET /api/tasks?project=&page=&page_size=`` -> ``{"tasks", "total", "total_annotations",
  "total_predictions"}``; a page past the end -> 404 ``"Invalid page."``
* ``POST /api/projects/{id}/import/predictions`` -> 201 ``{"created": N}``; an unknown task id -> 400
* ``GET|DELETE /api/projects/{id}/model-versions/``

Authentication: ``Authorization: Token <key>`` (a legacy key), 401 otherwise, as LS answers.

Faults (:meth:`FaultStand.inject`) are what a real Label Studio cannot be made to do on demand:
500 (LS's JSON error body), 502 (a proxy's HTML page), a response slower than the client's
timeout, a 200 whose JSON body is truncated, a connection cut in the middle of the body, dropped
prediction items (``created`` < items sent, as LS does for items that do not fit the config), and
*holds* that park a request until the test releases it (to kill the worker at a precise stage).
Every hold and sleep is bounded in time.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_HOLD_S = 120.0
FAULT_KINDS = ("500", "502", "timeout", "truncated_json", "cut_connection", "drop", "hold", "hold_after_apply")
STAGE_CALLS = {
    # stage of a cycle -> (method, path pattern with {p} for the project id)
    "fetch_labels": ("GET", r"/api/projects/{p}/export"),
    "read_pool": ("GET", r"/api/tasks"),
    "write": ("POST", r"/api/projects/{p}/import/predictions"),
    "switch": ("PATCH", r"/api/projects/{p}"),
    # not a cycle's stage: the cleanup job's first call
    "read_project": ("GET", r"/api/projects/{p}"),
}


def ls_error(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """An error body exactly as Label Studio 1.23.2 shapes it."""
    return {"id": "5f10e62b-f84b-4dce-9585-d995ed0575a0", "status_code": status, "version": "1.23.2",
            "detail": detail, "exc_info": None, **extra}  # fmt: skip


BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Project:
    id: int
    label_config: str
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    model_version: str = ""
    sampling: str = "Sequential sampling"
    backend_titles: tuple[str, ...] = ("lsal",)


@dataclass
class Fault:
    kind: str
    method: str
    pattern: re.Pattern[str]
    project: int | None
    times: int | None  # None: until cleared
    delay: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)
    hits: int = 0
    waiting: int = 0


class FaultStand:
    """The stand-in; ``with FaultStand(key) as ls: ls.url``."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.projects: dict[int, Project] = {}
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []
        self.lock = threading.RLock()
        self._next_task = 1000
        self._next_pred = 1
        self._next_ann = 1
        stand = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand._handle(self, "GET")

            def do_POST(self) -> None:
                stand._handle(self, "POST")

            def do_PATCH(self) -> None:
                stand._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                stand._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultStand:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- data -----------------------------------------------------------------------------------

    def add_project(self, pid: int, label_config: str, texts: list[str]) -> list[int]:
        with self.lock:
            project = Project(pid, label_config)
            for text in texts:
                self._next_task += 1
                project.tasks[self._next_task] = {"text": text}
            self.projects[pid] = project
            return list(project.tasks)

    def add_task(self, pid: int, text: str) -> int:
        """Import one more task into project ``pid`` (as a TASKS_CREATED import would); returns its id."""
        with self.lock:
            self._next_task += 1
            self.projects[pid].tasks[self._next_task] = {"text": text}
            return self._next_task

    def annotate(self, pid: int, task: int, choice: str, from_name: str = "label", to_name: str = "text") -> None:
        with self.lock:
            self._next_ann += 1
            result = [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]
            self.projects[pid].annotations.setdefault(task, []).append({
                "id": self._next_ann, "result": result, "was_cancelled": False, "ground_truth": False,
                "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
                "completed_by": 1, "lead_time": 1.0,
            })  # fmt: skip

    def annotations_snapshot(self, pid: int) -> str:
        with self.lock:
            return json.dumps(self.projects[pid].annotations, sort_keys=True)

    def version_tasks(self, pid: int, version: str) -> set[int]:
        with self.lock:
            return {p["task"] for p in self.projects[pid].predictions if p["model_version"] == version}

    def project_version(self, pid: int) -> str:
        with self.lock:
            return self.projects[pid].model_version

    # -- faults ---------------------------------------------------------------------------------

    def inject(
        self, kind: str, stage: str, project: int | None = None, *, times: int | None = None, delay: float = 0.0
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        method, pattern = STAGE_CALLS[stage]
        regex = re.compile("^" + pattern.replace("{p}", str(project) if project is not None else r"\d+") + "/?$")
        fault = Fault(kind, method, regex, project, times, delay)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self, project: int | None = None) -> None:
        with self.lock:
            for f in self.faults:
                if project is None or f.project == project:
                    f.released.set()
            self.faults = [f for f in self.faults if not (project is None or f.project == project)]

    def release_all(self) -> None:
        with self.lock:
            for f in self.faults:
                f.released.set()

    def calls_to(self, method: str, path_re: str) -> list[tuple[str, str, dict[str, list[str]]]]:
        with self.lock:
            return [c for c in self.calls if c[0] == method and re.search(path_re, c[1])]

    def _match(self, method: str, path: str, query: dict[str, list[str]]) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.method != method or not f.pattern.match(path):
                    continue
                if f.project is not None and path == "/api/tasks" and query.get("project") != [str(f.project)]:
                    continue
                if f.times is not None and f.hits >= f.times:
                    continue
                f.hits += 1
                return f
        return None

    # -- HTTP -----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(h.path)
        path, query = parsed.path, parse_qs(parsed.query)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self.lock:
            self.calls.append((method, path, query))
        if path == "/health":
            self._send(h, 200, {"status": "UP"})
            return
        if h.headers.get("Authorization") != f"Token {self.api_key}":
            self._send(h, 401, ls_error(401, "Authentication credentials were not provided."))
            return
        fault = self._match(method, path, query)
        if fault is not None and fault.kind == "hold":
            self._wait(fault)
        if fault is not None and fault.kind in ("500", "502"):
            if fault.kind == "500":
                self._send(h, 500, ls_error(500, "Internal server error"))
            else:
                self._send_raw(h, 502, BAD_GATEWAY_HTML, "text/html")
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(h, 400, ls_error(400, "JSON parse error"))
            return
        status, reply = self._route(method, path, query, body, fault)
        if fault is not None and fault.kind == "hold_after_apply":
            self._wait(fault)
        if fault is not None and fault.kind == "timeout":
            time.sleep(min(fault.delay, MAX_HOLD_S))  # applied, then answered too late
        payload = json.dumps(reply).encode()
        if fault is not None and fault.kind == "truncated_json":
            self._send_raw(h, status, payload[: max(1, len(payload) // 2)], "application/json")
            return
        if fault is not None and fault.kind == "cut_connection":
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, status, reply)

    def _wait(self, fault: Fault) -> None:
        with self.lock:
            fault.waiting += 1
        fault.released.wait(MAX_HOLD_S)
        with self.lock:
            fault.waiting -= 1

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self._send_raw(h, status, json.dumps(body).encode(), "application/json")

    def _send_raw(self, h: BaseHTTPRequestHandler, status: int, payload: bytes, ctype: str) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timed out, or was killed)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, fault: Fault | None
    ) -> tuple[int, Any]:
        with self.lock:
            if path == "/api/tasks" and method == "GET":
                return self._tasks(query)
            m = re.fullmatch(r"/api/projects/(\d+)(/.*)?", path)
            if not m or int(m.group(1)) not in self.projects:
                return 404, ls_error(404, "Not found.")
            p = self.projects[int(m.group(1))]
            rest = (m.group(2) or "").rstrip("/")
            if rest == "" and method == "GET":
                return 200, self._project_json(p)
            if rest == "" and method == "PATCH":
                body = body or {}
                mv = body.get("model_version")
                known = {x["model_version"] for x in p.predictions} | set(p.backend_titles)
                if mv is not None and mv not in known:
                    return 400, ls_error(400, "Validation error", validation_errors={"model_version": [
                        "Model version doesn't exist either as live model or as static predictions."]})  # fmt: skip
                if mv is not None:
                    p.model_version = mv
                if "sampling" in body:
                    p.sampling = body["sampling"]
                return 200, self._project_json(p)
            if rest == "/export" and method == "GET":
                only = {int(i) for i in query.get("ids[]", [])}  # Label Studio's selection by task id
                out = [
                    {"id": t, "data": p.tasks[t], "meta": {}, "annotations": anns, "predictions": []}
                    for t, anns in sorted(p.annotations.items())
                    if not only or t in only
                ]
                return 200, out
            if rest == "/import/predictions" and method == "POST":
                items = body if isinstance(body, list) else []
                if any(not isinstance(i, dict) or i.get("task") not in p.tasks for i in items):
                    return 400, ls_error(400, 'Validation error', validation_errors={
                        "non_field_errors": ['contains invalid "task" field']})  # fmt: skip
                if fault is not None and fault.kind == "drop":
                    items = items[: len(items) // 2]
                for i in items:
                    self._next_pred += 1
                    p.predictions.append({**i, "id": self._next_pred})
                return 201, {"created": len(items)}
            if rest == "/model-versions" and method == "GET":
                counts: dict[str, int] = {}
                for x in p.predictions:
                    counts[x["model_version"]] = counts.get(x["model_version"], 0) + 1
                if p.model_version and p.model_version not in counts:
                    counts[p.model_version] = 0
                return 200, counts
            if rest == "/model-versions" and method == "DELETE":
                version = (body or {}).get("model_version")
                before = len(p.predictions)
                p.predictions = [x for x in p.predictions if x["model_version"] != version]
                return 200, {"deleted_predictions": before - len(p.predictions)}
            return 404, ls_error(404, "Not found.")

    def _tasks(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        try:
            pid = int(query["project"][0])
            page = int(query.get("page", ["1"])[0])
            size = int(query.get("page_size", ["30"])[0])
        except (KeyError, ValueError):
            return 400, ls_error(400, "Validation error")
        p = self.projects.get(pid)
        if p is None:
            return 404, ls_error(404, "Not found.")
        ids = sorted(p.tasks)
        # A Data Manager selection (`query={"selectedItems": {"all": false, "included": [...]}}`)
        # narrows the list to those ids of this project, as Label Studio's prepared queryset does.
        selected = json.loads(query.get("query", ["{}"])[0] or "{}").get("selectedItems") or {}
        if selected.get("all") is False and selected.get("included"):
            wanted = {int(i) for i in selected["included"]}
            ids = [t for t in ids if t in wanted]
        start = (page - 1) * size
        if page < 1 or (start >= len(ids) and page > 1):
            return 404, ls_error(404, "Invalid page.")
        tasks = [{"id": t, "data": p.tasks[t]} for t in ids[start : start + size]]
        return 200, {"tasks": tasks, "total": len(ids), "total_annotations": len(p.annotations),
                     "total_predictions": len(p.predictions)}  # fmt: skip

    def _project_json(self, p: Project) -> dict[str, Any]:
        return {
            "id": p.id, "title": f"project {p.id}", "label_config": p.label_config,
            "model_version": p.model_version, "sampling": p.sampling,
            "task_number": len(p.tasks), "total_predictions_number": len(p.predictions),
        }  # fmt: skip
