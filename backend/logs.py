"""Logging setup: plain text or one JSON object per line (LOG_FORMAT=json).

Secrets never reach a log line: handlers only ever log ids, counts, stage names and timings (the
request log line carries method, route template, status and milliseconds: never headers, query
strings or bodies). Two last lines of defence run on every formatted line: `redact` masks
anything shaped like a credential, and the secrets lsal was configured with (API key, Basic-auth
password, trigger token) are masked wherever they appear, whatever surrounds them.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

REDACTED = "[redacted]"
# key <sep> [scheme] value, where the key names a credential. The separator also accepts the
# "', b'" of a header tuple as printed from an ASGI scope: (b'authorization', b'Basic ...').
_SECRET_RE = re.compile(
    r"(?i)(authorization|cookie|token|api[_-]?key|pass(?:word|wd)?|secret|refresh|access)"
    r"([\"']?\s*(?:[:=]|,\s*b?[\"'])\s*(?:b(?=[\"']))?[\"']?)"
    r"(Bearer |Token |Basic )?([^\s\"',}\]]+)"
)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")
# scheme://user:password@host (REDIS_URL may carry a password)
_URL_PASSWORD_RE = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words and numbers


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets, JWTs, URL passwords and token-like values replaced by a marker."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _JWT_RE.sub(REDACTED, text)
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)


def known_secrets(
    api_key: str = "", basic_auth: tuple[str, str] | None = None, trigger_token: str = ""
) -> tuple[str, ...]:
    """The configured secrets in every form they travel in (Basic auth also base64-encoded)."""
    values = [api_key, trigger_token]
    if basic_auth is not None:
        values.append(basic_auth[1])
        values.append(base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode())
    # Longest first, so a secret that contains another is masked whole.
    return tuple(sorted({v for v in values if len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True))


class _RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class _JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(entry)


def configure(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send lsal's logs to stderr as text or JSON lines, with `secrets` redacted from every record."""
    masked = tuple(secrets)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(masked))
    else:
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", masked))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
