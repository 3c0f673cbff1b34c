"""The pool's embedding cache: each task embedded once, re-embedded when its text or the model changes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.features import cache
from backend.features import embeddings as emb
from backend.labelconfig import TaskSpec
from backend.pool import PoolCache, PoolSnapshot, read_snapshot, snapshot_bytes

SPEC = TaskSpec(
    from_name="label",
    to_name="text",
    data_key="text",
    labels=("a", "b"),
    multi_label=False,
    kind="text",
    object_tag="Text",
)


class Counting:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return emb.load().embed(texts)


def snapshot() -> PoolSnapshot:
    return PoolSnapshot(
        data={3: {"text": "free prize now"}, 1: {"text": "see you at lunch"}, 7: {"other": 1}, 5: {"text": ""}},
        synced_at=1.0,
        config_hash="x",
    )


def test_update_embeds_each_task_once_and_only_what_changed() -> None:
    snap = snapshot()
    embed = Counting()
    stats = cache.update(snap, SPEC, "wordllama", embed, chunk=2)
    assert stats == {"tasks": 3, "embedded": 3, "reused": 0, "changed": 1}  # task 7 has no text
    assert sorted(embed.texts) == ["", "free prize now", "see you at lunch"]
    name = cache.array_name("wordllama")
    assert set(snap.arrays) == {name, name + cache.KEY_SUFFIX}
    arr = snap.arrays[name]
    assert arr.ids.tolist() == [1, 3, 5] and arr.values.dtype == np.float16 and arr.values.shape == (3, 256)
    np.testing.assert_array_equal(arr.values[1], emb.load().embed(["free prize now"])[0])

    # Saved and read back (npz, no pickle), nothing is embedded again.
    snap = read_snapshot(io.BytesIO(snapshot_bytes(snap)))
    assert snap is not None
    embed = Counting()
    assert cache.update(snap, SPEC, "wordllama", embed) == {"tasks": 3, "embedded": 0, "reused": 3, "changed": 0}
    assert embed.texts == []

    # An edited text and a new task: those two only.
    snap.data[3] = {"text": "claim your free prize"}
    snap.data[9] = {"text": "new task"}
    embed = Counting()
    assert cache.update(snap, SPEC, "wordllama", embed) == {"tasks": 4, "embedded": 2, "reused": 2, "changed": 1}
    assert sorted(embed.texts) == ["claim your free prize", "new task"]


def test_another_model_replaces_the_rows(tmp_path: object) -> None:
    snap = snapshot()
    cache.update(snap, SPEC, "wordllama", Counting())
    other = Counting()
    stats = cache.update(snap, SPEC, "minishlab/potion-base-8M", other)
    assert stats["embedded"] == 3 and len(other.texts) == 3
    assert set(snap.arrays) == {
        cache.array_name("minishlab/potion-base-8M"),
        cache.array_name("minishlab/potion-base-8M") + "_key",
    }


def test_lookup_reads_cached_rows_and_embeds_only_what_the_cache_lacks() -> None:
    snap = snapshot()
    cache.update(snap, SPEC, "wordllama", Counting())
    embed = Counting()
    rows = cache.lookup(snap, "wordllama", [3, 1, 42], ["free prize now", "see you at lunch", "unseen"], embed)
    assert embed.texts == ["unseen"]
    assert rows.dtype == np.float16
    np.testing.assert_array_equal(rows, emb.load().embed(["free prize now", "see you at lunch", "unseen"]))
    # A task whose text differs from the one its row was computed from is embedded afresh.
    embed = Counting()
    cache.lookup(snap, "wordllama", [3], ["edited since"], embed)
    assert embed.texts == ["edited since"]
    # No cache at all: everything embedded.
    embed = Counting()
    cache.lookup(None, "wordllama", [3], ["free prize now"], embed)
    assert embed.texts == ["free prize now"]


def test_pool_sync_saves_embeddings_once_and_keeps_them_across_full_reads(tmp_path: Path) -> None:
    tasks = [{"id": 1, "data": {"text": "free prize now"}}, {"id": 2, "data": {"text": "lunch?"}}]
    pool = PoolCache(tmp_path, 1)
    embed = Counting()

    def prepare(snap: PoolSnapshot) -> bool:
        return bool(cache.update(snap, SPEC, "wordllama", embed)["changed"])

    pool.sync("<View/>", 3600, lambda: tasks, prepare=prepare)
    assert len(embed.texts) == 2
    saved = PoolCache(tmp_path, 1).load()
    assert saved is not None and saved.arrays[cache.array_name("wordllama")].ids.tolist() == [1, 2]
    # A full read with the same config (reconcile due: 0 s) keeps the rows: nothing re-embedded.
    PoolCache(tmp_path, 1).sync("<View/>", 0, lambda: tasks, prepare=prepare)
    assert len(embed.texts) == 2
    # A new label config drops them: everything is embedded again.
    PoolCache(tmp_path, 1).sync("<View><Text/></View>", 3600, lambda: tasks, prepare=prepare)
    assert len(embed.texts) == 4


def test_pool_embeddings_rows_are_a_view_gathering_the_cached_rows() -> None:
    snap = snapshot()
    pe = cache.PoolEmbeddings(SPEC, "wordllama")
    assert pe.update(snap) is True and pe.update(snap) is False  # the second pass changes nothing
    texts = ["see you at lunch", "", "free prize now"]
    rows = pe.rows([1, 5, 3], texts)
    assert isinstance(rows, cache.TaskRows) and rows.shape == (3, 256)
    expected = emb.load().embed(texts).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(rows), expected)
    np.testing.assert_array_equal(rows[1:], expected[1:])
    np.testing.assert_array_equal(rows[[2, 0]], expected[[2, 0]])
    pe.release()
    np.testing.assert_array_equal(rows[0:1], expected[0:1])  # the view outlives the snapshot
    # A text that changed since: no view, the rows are computed where needed.
    pe.update(snap)
    assert isinstance(pe.rows([3], ["edited"]), np.ndarray)
