"""Static embeddings: the shipped wordllama weights, a model2vec model built here, bad model names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model2vec import StaticModel
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from backend.features import embeddings as emb

VOCAB = {"[UNK]": 0, "refund": 1, "money": 2, "back": 3, "crash": 4}
VECTORS = np.array(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [3.0, 4.0, 0.0]], dtype=np.float32
)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A 5-word model2vec model saved the way model2vec saves one (a real StaticModel)."""
    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    StaticModel(VECTORS, tok, normalize=True).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_model2vec_directory_loads_and_embeds_exact_means(tiny_model: Path) -> None:
    embedder = emb.load(str(tiny_model))
    assert embedder.dim == 3
    out = embedder.embed(["refund", "money back", "crash", "refund zzz", "zzz", "", "   "])
    assert out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_allclose(out[0], [1, 0, 0], atol=1e-6)
    # mean of (0,2,0),(0,0,2), normalized, in float16 (the precision the pool cache keeps)
    np.testing.assert_array_equal(out[1], np.float16([0, 1, 1] / np.sqrt(2)))
    np.testing.assert_array_equal(out[2], np.float16([0.6, 0.8, 0]))
    np.testing.assert_allclose(out[3], [1, 0, 0], atol=1e-6)  # the unknown word is dropped
    # No known token: the zero vector, not NaN.
    np.testing.assert_array_equal(out[4:], 0)


def test_wordllama_default_is_shipped_and_handles_odd_texts() -> None:
    embedder = emb.load()
    assert embedder.name == "wordllama" and embedder.dim == 256
    out = embedder.embed(["", "   \n\t", "x" * 1_000_000, "word " * 200_000, "Free entry in 2 a wkly comp"])
    assert out.shape == (5, 256) and np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_allclose(np.linalg.norm(out[2:], axis=1), 1, atol=1e-3)  # float16 rounding
    # Static: a text's vector does not depend on the batch it is in.
    np.testing.assert_allclose(embedder.embed(["Free entry in 2 a wkly comp"])[0], out[4], atol=1e-6)
    # Similar meaning, closer vectors: the point of embeddings.
    a, b, c = embedder.embed(["I want my money back", "please refund me", "the weather is sunny"])
    assert a @ b > a @ c


@pytest.mark.parametrize("name", ["nonsense", "potion-base-8M", "", "   ", "a/b/c"])
def test_unknown_model_name_names_value_and_choices(name: str) -> None:
    with pytest.raises(emb.EmbeddingModelError) as e:
        emb.check_model_name(name)
    assert repr(name.strip() if name.strip() else name) in str(e.value) or repr(name) in str(e.value)
    assert "'wordllama'" in str(e.value) and "hub id" in str(e.value)


def test_unreadable_paths_are_refused_naming_the_path(tmp_path: Path) -> None:
    for bad in (str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(emb.EmbeddingModelError, match="not a readable model2vec directory") as e:
            emb.load(bad)
        assert repr(bad) in str(e.value) and "'wordllama'" in str(e.value)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(emb.EmbeddingModelError, match="cannot load embedding model") as e:
        emb.load(str(tmp_path))
    assert repr(str(tmp_path)) in str(e.value)


def test_hub_ids_pass_the_offline_check() -> None:
    assert emb.check_model_name(" minishlab/potion-base-8M ") == "minishlab/potion-base-8M"


def test_memo_returns_the_same_numbers_and_stays_bounded(tiny_model: Path) -> None:
    embedder = emb.load(str(tiny_model))
    embedder._memo.clear()
    first = embedder.embed(["refund", "crash"])
    assert list(embedder._memo) == ["refund", "crash"]
    np.testing.assert_array_equal(embedder.embed(["crash", "refund"]), first[::-1])
    small = emb.StaticEmbedder("tiny", embedder._model, memo_rows=2)
    small.embed(["refund", "crash", "money"])  # more than memo_rows: not remembered
    assert small._memo == {}
    small.embed(["refund"])
    small.embed(["crash", "money"])
    assert list(small._memo) == ["crash", "money"]  # the oldest went first


def test_threads_that_ask_for_an_unloaded_model_at_once_read_its_weights_once(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: 16 concurrent first /predict requests of a fresh HTTP process each need the embedder.
    Expected: one read of the weights, every thread gets the same embedder (broken once: with only
    lru_cache, each thread that missed loaded its own copy: 16 reads, 3.7 s instead of 0.2 s)."""
    import threading

    emb.forget_loaded()
    reads: list[str] = []
    original = emb._load_model2vec
    gate = threading.Barrier(16)

    def counting(name: str) -> object:
        reads.append(name)
        return original(name)

    def ask(out: list[object]) -> None:
        gate.wait()
        out.append(emb.load(str(tiny_model)))

    monkeypatch.setattr(emb, "_load_model2vec", counting)
    got: list[object] = []
    threads = [threading.Thread(target=ask, args=(got,)) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        emb.forget_loaded()
    assert reads == [str(tiny_model)]
    assert len(got) == 16 and all(e is got[0] for e in got)
