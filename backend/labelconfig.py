"""Label Studio label config XML -> TaskSpec: what lsal learns and where the input lives.

Supported: one `<Choices>` control (single, or `choice="multiple"` for multi-label) bound by
`toName` to one object:

- `<Text value="$key">` / `<HyperText value="$key">`: `task.data[key]` is the text (HTML tags
  are stripped for HyperText);
- `<Table value="$key">`: tabular. **Convention**: `task.data[key]` is an object of named numeric
  fields, e.g. `{"age": 41, "income": 5.2}` — exactly what Label Studio's Table tag renders.
  Numbers (and numeric strings) are features; other values count as missing and are imputed by
  the learner. A task without that key falls back to its own top-level numeric fields, so a CSV
  imported with one column per feature works too.
- `<Image value="$key">`: `task.data[key]` is a reference to the image (an uploaded file
  `/data/upload/...`, local-files storage `/data/local-files/?d=...`, a cloud-storage URI such as
  `s3://bucket/key`, or an http(s) URL); `backend/images.py` fetches and decodes it.

The first `<Choices>` bound to a supported object is used; other controls are ignored, and so is a
`<Choices perRegion="true">` (it labels regions, not the task). Tag names match case-insensitively,
as in Label Studio's editor. A `<Choice alias="...">` contributes its alias: Label Studio writes the
alias, not the value, into annotation results.
Hostile XML (entity expansion, external entities, DTDs, a config over 1 MB) is refused.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

MAX_CONFIG_BYTES = 1_000_000
#: parsed configs (and refusals) remembered, by SHA-256 of the XML: /setup and /predict repeat them
PARSE_CACHE_SIZE = 64
TEXT_TAGS = {"Text": "text", "HyperText": "text"}
TABLE_TAGS = {"Table": "tabular"}
IMAGE_TAGS = {"Image": "image"}
OBJECT_TAGS = TEXT_TAGS | TABLE_TAGS | IMAGE_TAGS
NO_OBJECT = "no <Choices> bound to a Text, HyperText, Table or Image object"
_TAG_RE = re.compile(r"<[^>]+>")
# Script/style bodies and comments are not visible text; drop them before stripping tags.
_INVISIBLE_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_CANONICAL = {t.lower(): t for t in ("View", "Choices", "Choice", *OBJECT_TAGS)}


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says what is missing."""

    def __init__(self, message: str, field: str = "label_config") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TaskSpec:
    """What lsal learns from a label config: the Choices control, its object and data key, the labels."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    multi_label: bool
    kind: Literal["text", "tabular", "image"]
    object_tag: str


def _parse_xml(xml: str) -> Element:
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    if len(xml.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise LabelConfigError(f"label config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise LabelConfigError(
            f"label config refused: {type(exc).__name__} (DTDs and entities are not allowed)"
        ) from None
    except ParseError as exc:
        raise LabelConfigError(f"label config is not well-formed XML: {exc}") from None


class _ParseCache:
    """Bounded memo of parse results, successes and refusals alike, keyed by the XML's digest.

    Refusals are remembered too: a client resending the same hostile 1 MB config costs one hash,
    not one parse, per request. The key is a digest so the cache never holds the XML itself.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, TaskSpec | LabelConfigError] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> TaskSpec | LabelConfigError | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: TaskSpec | LabelConfigError) -> None:
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


_CACHE = _ParseCache(PARSE_CACHE_SIZE)


def parse_label_config(xml: str) -> TaskSpec:
    """The TaskSpec of a label config, or LabelConfigError saying what is missing (memoized)."""
    if not isinstance(xml, str):
        raise LabelConfigError("label config is empty")
    key = hashlib.sha256(xml.encode("utf-8", "surrogatepass")).digest()
    cached = _CACHE.get(key)
    if isinstance(cached, LabelConfigError):
        raise LabelConfigError(str(cached), cached.field)
    if cached is not None:
        return cached
    try:
        spec = _parse_label_config(xml)
    except LabelConfigError as exc:
        _CACHE.put(key, LabelConfigError(str(exc), exc.field))  # a copy: no traceback kept alive
        raise
    _CACHE.put(key, spec)
    return spec


def _parse_label_config(xml: str) -> TaskSpec:
    root = _parse_xml(xml)
    for el in root.iter():
        if isinstance(el.tag, str):
            el.tag = _CANONICAL.get(el.tag.lower(), el.tag)
    if root.tag != "View":
        raise LabelConfigError(f"label config must have <View> as its root, got <{root.tag}>")
    objects: dict[str, Element] = {}
    for el in root.iter():
        name = el.get("name")
        if name and el.tag in OBJECT_TAGS:
            objects.setdefault(name, el)
    all_named = {el.get("name"): el for el in root.iter() if el.get("name")}
    choices = [el for el in root.iter() if el.tag == "Choices"]
    if not choices:
        raise LabelConfigError(NO_OBJECT)
    problems: list[str] = []
    for control in choices:
        name = control.get("name")
        to_name = (control.get("toName") or "").split(",")[0].strip()
        if not name or not to_name:
            problems.append("a <Choices> without name or toName")
            continue
        if (control.get("perRegion") or "").lower() == "true":
            problems.append(f"<Choices name={name!r}> is perRegion (labels regions, not tasks)")
            continue
        target = objects.get(to_name)
        if target is None:
            other = all_named.get(to_name)
            problems.append(
                f"<Choices name={name!r}> is bound to <{other.tag}> {to_name!r}, which lsal does not support"
                if other is not None
                else f"<Choices name={name!r}> has toName={to_name!r}, which names no object"
            )
            continue
        value = (target.get("value") or "").strip()
        if not value.startswith("$") or len(value) < 2:
            problems.append(f'<{target.tag} name={to_name!r}> has value={value!r}; expected value="$key"')
            continue
        if target.tag not in IMAGE_TAGS and (target.get("valueType") or "").lower() == "url":
            problems.append(f'<{target.tag} name={to_name!r}> has valueType="url"; lsal needs the text inline')
            continue
        labels = tuple(c.get("alias") or c.get("value") or "" for c in control.iter("Choice"))
        labels = tuple(label for label in labels if label)
        if not labels:
            problems.append(f"<Choices name={name!r}> has no <Choice value=...>")
            continue
        counts = Counter(labels)  # linear: a 1 MB config holds ~40,000 choices
        if len(counts) != len(labels):
            dupes = sorted(label for label, n in counts.items() if n > 1)
            problems.append(f"<Choices name={name!r}> repeats choice values {dupes}")
            continue
        kind: Literal["text", "tabular", "image"] = (
            "tabular" if target.tag in TABLE_TAGS else "image" if target.tag in IMAGE_TAGS else "text"
        )
        return TaskSpec(
            from_name=name,
            to_name=to_name,
            data_key=value[1:],
            labels=labels,
            multi_label=(control.get("choice") or "single").lower() == "multiple",
            kind=kind,
            object_tag=target.tag,
        )
    detail = "; ".join(problems)
    raise LabelConfigError(f"{NO_OBJECT} ({detail})")


def choices_result(spec: TaskSpec, labels: Sequence[str]) -> list[dict[str, Any]]:
    """A Label Studio prediction `result` choosing `labels` (empty when there are none)."""
    if not labels:
        return []
    return [
        {
            "from_name": spec.from_name,
            "to_name": spec.to_name,
            "type": "choices",
            "value": {"choices": list(labels)},
        }
    ]


def annotation_labels(spec: TaskSpec, result: Any) -> list[str]:
    """The choices an annotation's result makes with this control (may include unknown labels)."""
    if not isinstance(result, list):
        return []
    out: list[str] = []
    for item in result:
        if not isinstance(item, Mapping) or item.get("from_name") != spec.from_name:
            continue
        value = item.get("value")
        chosen = value.get("choices") if isinstance(value, Mapping) else None
        if isinstance(chosen, list):
            out.extend(str(c) for c in chosen if isinstance(c, (str, int, float)))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def task_input(spec: TaskSpec, data: Mapping[str, Any]) -> str | dict[str, float]:
    """The model input of one task: its text, its numeric fields, or its image reference (a string
    for backend/images.py to fetch). A missing key or a value of the wrong type -> ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"task data must be an object, got {type(data).__name__}")
    if spec.kind == "image":
        # Files imported without a key sit under Label Studio's "$undefined$" until it renames them.
        ref = data.get(spec.data_key, data.get("$undefined$"))
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f"task data {spec.data_key!r} must be an image URL, got {ref!r:.80}")
        return ref.strip()
    if spec.kind == "text":
        if spec.data_key not in data:
            raise ValueError(f"task data has no key {spec.data_key!r}")
        value = data[spec.data_key]
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"task data {spec.data_key!r} must be text, got {type(value).__name__}")
        text = str(value)
        if spec.object_tag == "HyperText":
            text = html.unescape(_TAG_RE.sub(" ", _INVISIBLE_RE.sub(" ", text)))
        return text
    row = data.get(spec.data_key)
    if row is None:
        row = data  # fallback: the task's own top-level fields
    if not isinstance(row, Mapping):
        raise ValueError(f"task data {spec.data_key!r} must be an object of named numbers, got {type(row).__name__}")
    out: dict[str, float] = {}
    for key, value in row.items():
        number = _number(value)
        if number is not None and number == number and abs(number) != float("inf"):
            out[str(key)] = number
    return out
