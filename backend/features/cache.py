"""Each task's text embedding, computed once and kept in the pool snapshot (float16).

An embedding depends only on the text and the model, so the pool snapshot (`backend/pool.py`) keeps
one row per task under an array named after the model (`array_name`), with a second array of
64-bit keys of the text each row was computed from. `update` embeds only the tasks without a valid
row (new tasks, edited texts, another model), in chunks, reporting progress; `lookup` gives the
rows for a list of task ids. A changed label config makes the cycle read the pool afresh, without
these arrays, so every task is embedded again.

Memory: 256 float16 values = 512 bytes per task (512 MB for 1,000,000 tasks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backend.labelconfig import TaskSpec, task_input
from backend.pool import PoolSnapshot, TaskArray

PREFIX = "emb_"
KEY_SUFFIX = "_key"
CHUNK = 20_000  # tasks embedded between two progress reports (~2-4 s at 5-10k texts/s)

Progress = Callable[[str, int, int], None]


def array_name(model: str) -> str:
    """The snapshot array holding `model`'s embeddings (npz member names need plain characters)."""
    return PREFIX + hashlib.sha256(model.encode()).hexdigest()[:16]


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit key per text (BLAKE2b): a row is reused only for the very text it was computed from."""
    return np.fromiter((_key(t) for t in texts), dtype=np.int64, count=len(texts))


def _no_progress(stage: str, done: int = 0, total: int = 0) -> None:
    return None


def update(
    snap: PoolSnapshot,
    spec: TaskSpec,
    model: str,
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    progress: Progress = _no_progress,
    chunk: int = CHUNK,
) -> dict[str, int]:
    """Give every text task of `snap` a valid embedding row; embed only those missing or stale.

    Rows of other models are dropped (one model's rows are kept per pool). Returns counts:
    ``embedded`` (computed now), ``reused`` (valid rows kept), ``tasks`` (text tasks in the pool),
    ``changed`` (1 if the snapshot's arrays changed and it needs saving).
    """
    name = array_name(model)
    ids_list: list[int] = []
    texts: list[str] = []
    for task_id in sorted(snap.data):
        try:
            texts.append(str(task_input(spec, snap.data[task_id])))
        except (KeyError, ValueError, TypeError):
            continue  # no text under the configured key: never scored, nothing to embed
        ids_list.append(task_id)
    ids = np.asarray(ids_list, dtype=np.int64)
    keys = text_keys(texts)
    old, old_keys = snap.arrays.get(name), snap.arrays.get(name + KEY_SUFFIX)
    values: np.ndarray | None = None
    valid = np.zeros(len(ids), dtype=bool)
    if old is not None and old_keys is not None and len(old.values):
        if np.array_equal(old.ids, ids) and np.array_equal(old_keys.ids, ids):
            # The steady state (same tasks): the rows in place, no copy of the whole matrix.
            values, valid = old.values, old_keys.values == keys
        else:
            found, values = old.rows(ids)
            key_found, stored = old_keys.rows(ids)
            valid = found & key_found & (stored == keys)
        values = values.astype(np.float16, copy=False)
    todo = np.flatnonzero(~valid)
    progress("embed", 0, len(todo))
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        fresh = np.asarray(embed([texts[i] for i in rows]), dtype=np.float16)
        if values is None:
            values = np.zeros((len(ids), fresh.shape[1]), dtype=np.float16)
        values[rows] = fresh
        progress("embed", min(start + chunk, len(todo)), len(todo))
    others = [k for k in snap.arrays if k.startswith(PREFIX) and k not in (name, name + KEY_SUFFIX)]
    for other in others:
        del snap.arrays[other]
    stale = old is not None and len(old.ids) != len(ids)  # rows of tasks that left the pool
    if values is not None and (len(todo) or stale or old is None):
        snap.arrays[name] = TaskArray(ids, values)
        snap.arrays[name + KEY_SUFFIX] = TaskArray(ids, keys)
    return {
        "tasks": len(ids),
        "embedded": len(todo),
        "reused": int(valid.sum()),
        "changed": int(bool(len(todo) or stale or others)),
    }


def lookup(
    snap: PoolSnapshot | None,
    model: str,
    task_ids: Sequence[int],
    texts: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
) -> np.ndarray:
    """Embeddings of `texts` (task `task_ids[i]` holds `texts[i]`) as float16: the snapshot's row
    where it was computed from that very text, else embedded now (tasks the snapshot lacks)."""
    texts = [str(t) for t in texts]
    arr = None if snap is None else snap.arrays.get(array_name(model))
    key_arr = None if snap is None else snap.arrays.get(array_name(model) + KEY_SUFFIX)
    if arr is None or key_arr is None:
        return np.asarray(embed(texts), dtype=np.float16)
    found, values = arr.rows(task_ids)
    key_found, stored = key_arr.rows(task_ids)
    valid = found & key_found & (stored == text_keys(texts))
    out = values.astype(np.float16, copy=False)
    missing = np.flatnonzero(~valid)
    if len(missing):
        out[missing] = embed([texts[i] for i in missing])
    return out


class PoolEmbeddings:
    """One cycle's view of the pool's embeddings: `update` (the hook `cycle.unlabeled_pool` calls
    before saving the snapshot) fills the cache, `rows` reads it for the tasks being featurized."""

    def __init__(self, spec: TaskSpec, model: str, progress: Progress = _no_progress) -> None:
        from backend.features.embeddings import load  # loads the model weights once per process

        self.spec = spec
        self.model = model
        self.progress = progress
        self._embed = load(model).embed
        self.snap: PoolSnapshot | None = None
        self.stats: dict[str, int] = {}

    def update(self, snap: PoolSnapshot) -> bool:
        """Embed the snapshot's tasks that lack a valid row; True if the snapshot changed (save it)."""
        self.stats = update(snap, self.spec, self.model, self._embed, progress=self.progress)
        self.snap = snap
        return bool(self.stats["changed"])

    def rows(self, task_ids: Sequence[int], texts: Sequence[str]) -> Any:
        """(n, dim) float16 embeddings of the tasks' texts, from the cache where it has them.

        When every task has a valid cached row (the cycle's pool, right after `update`), a
        `TaskRows` view that gathers rows per slice: a 1,000,000-task pool is not copied whole."""
        arr = None if self.snap is None else self.snap.arrays.get(array_name(self.model))
        key_arr = None if self.snap is None else self.snap.arrays.get(array_name(self.model) + KEY_SUFFIX)
        if arr is not None and key_arr is not None and np.array_equal(arr.ids, key_arr.ids) and len(task_ids):
            wanted = np.asarray(task_ids, dtype=np.int64)
            pos = np.minimum(np.searchsorted(arr.ids, wanted), len(arr.ids) - 1)
            if bool((arr.ids[pos] == wanted).all()) and bool((key_arr.values[pos] == text_keys(texts)).all()):
                return TaskRows(arr.values, pos)
        return lookup(self.snap, self.model, task_ids, texts, self._embed)

    def release(self) -> None:
        """Drop the snapshot (task data); views returned by `rows` keep only the embedding matrix."""
        self.snap = None


class TaskRows:
    """Rows ``values[positions]`` gathered on demand: slicing and indexing return float16 arrays."""

    def __init__(self, values: np.ndarray, positions: np.ndarray) -> None:
        self.values = values
        self.positions = positions
        self.shape = (len(positions), *values.shape[1:])

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.values[self.positions[key]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.values[self.positions]
        return out if dtype is None else out.astype(dtype)


def describe(snap: PoolSnapshot) -> dict[str, Any]:
    """Which embedding arrays a snapshot holds and their sizes (for status and tests)."""
    return {k: list(v.values.shape) for k, v in snap.arrays.items() if k.startswith(PREFIX)}
