"""Fetch and decode a task's image, as lsal itself (never as the annotator's browser would).

An `<Image value="$key">` task holds a *reference*; where lsal may fetch it from depends on its form:

- a path on Label Studio (``/data/upload/...`` for uploaded files, ``/data/local-files/?d=...`` for
  local-files storage, ``/tasks/<id>/resolve/?fileuri=...`` as Label Studio rewrites storage URIs),
  or the same as an absolute URL on ``LABEL_STUDIO_URL``: fetched from Label Studio with lsal's own
  API key. Other Label Studio paths are refused: a task must not make lsal call the API with its key;
- a cloud-storage URI (``s3://``, ``gs://``, ``azure-blob://``): through Label Studio's resolve
  endpoint ``GET /tasks/<task id>/resolve/?fileuri=<base64url of the URI>`` (label_studio
  io_storages/proxy_api.py in 1.23.2), which either proxies the bytes or redirects (303) to a
  presigned URL; the presigned URL is followed *without* lsal's key;
- ``data:image/...;base64,...``: decoded in place;
- any other ``http(s)`` URL: only when its host is in the admin's allowlist (``AL_IMAGE_HOSTS``),
  never with lsal's key, and redirects only to allowlisted hosts (SSRF: a task author must not make
  the worker call an internal address).

Limits refuse decompression bombs and oversized downloads *before* the pixels are decoded: the
download stops at ``max_bytes`` and the header's width x height must be at most ``max_pixels``.
Every refusal raises :class:`ImageSkipped` with a short ``reason``: the caller skips that task and
counts the reason, it never fails a request or a cycle.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import logging
import posixpath
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
from PIL import Image, UnidentifiedImageError

from backend.pool import TaskArray

if TYPE_CHECKING:
    from backend.config import Settings

__all__ = [
    "CLOUD_SCHEMES",
    "ImageFeatureCache",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImagePolicy",
    "ImageSkipped",
    "decode_image",
    "feature_cache",
    "fetch_image",
    "load_image",
]

#: URI schemes of Label Studio's cloud storages (``url_scheme`` of its import storages in 1.23.2)
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})
#: largest image file downloaded (bytes)
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
#: largest image decoded (width x height); 40 MP is a 7,300 x 5,500 photo
DEFAULT_MAX_PIXELS = 40_000_000
#: image formats lsal decodes (Pillow names); others are refused without trying every plugin
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
#: Label Studio paths that serve task files; anything else on Label Studio is refused
LS_FILE_PATHS = re.compile(
    r"^/(data/upload/|data/local-files/?$|tasks/\d+/(resolve|presign)/?$|storage-data/uploaded/?$)"
)
log = logging.getLogger("lsal.images")

_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


class ImageSkipped(Exception):
    """This task's image cannot be used; ``reason`` is a short code to count, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be (see the module docstring)."""

    label_studio_url: str
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"max_bytes and max_pixels must be >= 1, got {self.max_bytes}, {self.max_pixels}")


def _ls_base(policy: ImagePolicy) -> tuple[str, str, str]:
    parts = urlsplit(policy.label_studio_url.rstrip("/"))
    return parts.scheme, parts.netloc.lower(), parts.path


def _ls_path(path: str) -> str:
    """The normalized path if it is one of Label Studio's file endpoints, else ImageSkipped."""
    norm = posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")
    if ".." in path.split("/") or not LS_FILE_PATHS.match(norm):
        raise ImageSkipped("not_a_file_path", f"{path!r:.120} is not a Label Studio file path")
    return norm


def _host_allowed(url: str, policy: ImagePolicy) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    with_port = f"{host}:{parts.port}" if parts.port else host
    return host in policy.allowed_hosts or with_port in policy.allowed_hosts


def _read_limited(resp: requests.Response, max_bytes: int) -> bytes:
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise ImageSkipped("too_large", f"image is {int(length)} bytes > max {max_bytes}")
    buf = bytearray()
    try:
        for chunk in resp.iter_content(_CHUNK):
            buf += chunk
            if len(buf) > max_bytes:
                raise ImageSkipped("too_large", f"image is larger than max {max_bytes} bytes")
    except requests.RequestException as exc:
        raise ImageSkipped("fetch_failed", f"download broke off: {type(exc).__name__}") from None
    return bytes(buf)


def _get(
    session: requests.Session,
    url: str,
    policy: ImagePolicy,
    headers: Mapping[str, str],
    *,
    redirect_ok: Any,
) -> bytes:
    """GET ``url`` following at most _MAX_REDIRECTS redirects that ``redirect_ok(url)`` accepts.

    ``headers`` (lsal's key) go only to the first URL: a redirect target never receives them."""
    send = dict(headers)
    for _ in range(_MAX_REDIRECTS + 1):
        try:
            resp = session.get(url, headers=send, timeout=policy.timeout, stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            raise ImageSkipped("fetch_failed", f"no answer: {type(exc).__name__}") from None
        with resp:
            if resp.is_redirect:
                target = urljoin(url, resp.headers.get("Location", ""))
                if not redirect_ok(target):
                    raise ImageSkipped("host_not_allowed", f"redirect to {urlsplit(target).netloc!r} refused")
                url, send = target, {}
                continue
            if resp.status_code != 200:
                raise ImageSkipped("fetch_failed", f"HTTP {resp.status_code}")
            return _read_limited(resp, policy.max_bytes)
    raise ImageSkipped("fetch_failed", f"more than {_MAX_REDIRECTS} redirects")


def _data_uri(ref: str, policy: ImagePolicy) -> bytes:
    head, _, payload = ref.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ImageSkipped("bad_reference", "only base64 data:image/... URIs are read")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise ImageSkipped("too_large", f"data URI is larger than max {policy.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageSkipped("bad_reference", "data URI is not valid base64") from None


def fetch_image(
    ref: str,
    task_id: int,
    policy: ImagePolicy,
    session: requests.Session,
    ls_headers: Mapping[str, str],
) -> bytes:
    """The bytes of task ``task_id``'s image ``ref`` (see the module docstring for what is allowed).

    ``ls_headers`` is the ``Authorization`` header for Label Studio (``LabelStudioClient.auth_headers``);
    it is sent to Label Studio's own file paths and nowhere else. Raises :class:`ImageSkipped`.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ImageSkipped("bad_reference", f"image reference must be a non-empty string, got {ref!r:.80}")
    ref = ref.strip()
    if ref.startswith("data:"):
        return _data_uri(ref, policy)
    ls_scheme, ls_host, ls_prefix = _ls_base(policy)
    ls_root = f"{ls_scheme}://{ls_host}{ls_prefix}"
    parts = urlsplit(ref)
    scheme = parts.scheme.lower()

    def ls_or_allowed(url: str) -> bool:
        # Label Studio answers a resolve with a redirect to the storage's presigned URL: where that
        # points is Label Studio's (its admin's) choice, and it gets no key.
        return True

    if scheme in CLOUD_SCHEMES:
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        url = f"{ls_root}/tasks/{int(task_id)}/resolve/?fileuri={fileuri}"
        return _get(session, url, policy, ls_headers, redirect_ok=ls_or_allowed)
    if not scheme and not parts.netloc and ref.startswith("/"):
        path = _ls_path(parts.path)
        url = ls_root + path + (f"?{parts.query}" if parts.query else "")
        return _get(session, url, policy, ls_headers, redirect_ok=ls_or_allowed)
    if scheme in ("http", "https"):
        if scheme == ls_scheme and parts.netloc.lower() == ls_host and parts.path.startswith(ls_prefix + "/"):
            path = _ls_path(parts.path[len(ls_prefix) :])
            url = ls_root + path + (f"?{parts.query}" if parts.query else "")
            return _get(session, url, policy, ls_headers, redirect_ok=ls_or_allowed)
        if not _host_allowed(ref, policy):
            raise ImageSkipped(
                "host_not_allowed", f"host {parts.netloc!r:.80} is not in AL_IMAGE_HOSTS (the admin's allowlist)"
            )
        return _get(session, ref, policy, {}, redirect_ok=lambda url: _host_allowed(url, policy))
    raise ImageSkipped("bad_reference", f"cannot fetch an image from {ref!r:.80}")


def decode_image(raw: bytes, policy: ImagePolicy) -> Image.Image:
    """Decode ``raw`` into an RGB image, refusing more than ``policy.max_pixels`` before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
            width, height = img.size
            if width < 1 or height < 1 or width * height > policy.max_pixels:
                raise ImageSkipped("too_many_pixels", f"image is {width}x{height} > max {policy.max_pixels} pixels")
            if img.format == "JPEG":
                img.draft("RGB", (256, 256))  # decode JPEGs at a reduced scale: features use <= 64 px
            return img.convert("RGB")
    except ImageSkipped:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageSkipped("too_many_pixels", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageSkipped("undecodable", f"not a readable image ({type(exc).__name__})") from None


def load_image(
    ref: str,
    task_id: int,
    policy: ImagePolicy,
    session: requests.Session,
    ls_headers: Mapping[str, str],
) -> Image.Image:
    """:func:`fetch_image` then :func:`decode_image`."""
    return decode_image(fetch_image(ref, task_id, policy, session, ls_headers), policy)


# -- features of a project's task images, computed once per task ---------------------------------------


def ref_hash(ref: str) -> int:
    """A 63-bit digest of an image reference: cached features are reused only for the same reference."""
    return int.from_bytes(hashlib.sha256(ref.encode()).digest()[:8], "big") >> 1


@dataclass
class ImageFeatureCache:
    """Image features by task id, kept in the pool snapshot's arrays (``image.<featurizer id>`` and
    ``image.<featurizer id>.ref``, the digest of the reference each row was computed from).

    :meth:`vectors` computes what is missing (fetch, decode and featurize, ``workers`` at a time),
    skips and counts what cannot be fetched or decoded, and updates ``arrays`` for the caller to save.
    A task whose image failed is tried again at the next cycle.
    """

    featurizer: Any  # backend.features.image.ImageFeaturizer
    policy: ImagePolicy
    session: requests.Session
    ls_headers: Callable[[], Mapping[str, str]]
    workers: int = 4
    skipped: Counter[str] = field(default_factory=Counter)
    fetched: int = 0

    @property
    def _names(self) -> tuple[str, str]:
        return f"image.{self.featurizer.id}", f"image.{self.featurizer.id}.ref"

    def _compute(self, task_id: int, ref: str, headers: Mapping[str, str]) -> np.ndarray | str:
        try:
            img = load_image(ref, task_id, self.policy, self.session, headers)
            return np.asarray(self.featurizer.transform([img])[0], dtype=np.float32)
        except ImageSkipped as exc:
            log.info("task %s: image skipped (%s): %s", task_id, exc.reason, exc)
            return exc.reason

    def vectors(
        self, arrays: dict[str, TaskArray], ids: Sequence[int], refs: Sequence[str]
    ) -> tuple[list[int], list[np.ndarray]]:
        """(ids, feature vectors) of the tasks whose image is usable, in the order given."""
        feat_name, ref_name = self._names
        hashes = np.array([ref_hash(r) for r in refs], dtype=np.int64)
        dim = int(self.featurizer.dim)
        have = np.zeros(len(ids), dtype=bool)
        values = np.zeros((len(ids), dim), dtype=np.float32)
        if feat_name in arrays and ref_name in arrays and arrays[feat_name].values.shape[1:] == (dim,):
            found, rows = arrays[feat_name].rows(ids)
            _, old_hashes = arrays[ref_name].rows(ids)
            have = found & (old_hashes == hashes)
            values[have] = rows[have]
        todo = np.flatnonzero(~have)
        if len(todo):
            headers = dict(self.ls_headers())
            with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                results = list(pool.map(lambda i: self._compute(int(ids[i]), refs[i], headers), todo))
            for i, out in zip(todo, results, strict=True):
                if isinstance(out, str):
                    self.skipped[out] += 1
                else:
                    values[i], have[i] = out, True
            self.fetched += int(have[todo].sum())
        keep = np.flatnonzero(have)
        kept_ids = np.asarray(ids, dtype=np.int64)[keep]
        # Merge with rows of tasks not asked about this time (the snapshot drops tasks that left the pool).
        if feat_name in arrays and ref_name in arrays and arrays[feat_name].values.shape[1:] == (dim,):
            others = ~np.isin(arrays[feat_name].ids, kept_ids)
            kept_ids_all = np.r_[arrays[feat_name].ids[others], kept_ids]
            values_all = np.vstack([arrays[feat_name].values[others], values[keep]])
            hashes_all = np.r_[arrays[ref_name].values[others], hashes[keep]]
        else:
            kept_ids_all, values_all, hashes_all = kept_ids, values[keep], hashes[keep]
        arrays[feat_name] = TaskArray(kept_ids_all, values_all)
        arrays[ref_name] = TaskArray(kept_ids_all, hashes_all)
        return [int(i) for i in kept_ids], [values[i] for i in keep]


@functools.lru_cache(maxsize=4)
def featurizer_for(onnx_path: Path | None) -> Any:
    """The image featurizer AL_IMAGE_ONNX chooses (the built-in one when unset), built once per process."""
    from backend.features.image import OnnxEmbedder, PixelFeaturizer

    return OnnxEmbedder(onnx_path) if onnx_path else PixelFeaturizer()


def feature_cache(
    settings: Settings, session: requests.Session, ls_headers: Callable[[], Mapping[str, str]]
) -> ImageFeatureCache:
    """An :class:`ImageFeatureCache` as the settings say (AL_IMAGE_*), fetching with ``ls_headers``."""
    policy = ImagePolicy(
        label_studio_url=settings.label_studio_url,
        allowed_hosts=settings.image_hosts,
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        timeout=settings.ls_timeout,
    )
    return ImageFeatureCache(featurizer_for(settings.image_onnx), policy, session, ls_headers)
