"""Pretrained static sentence embeddings: one vector per text, from token vectors, no network needed.

A static embedding model is a table of one vector per token; a text's vector is the mean of its
tokens' vectors, L2-normalized. No neural network runs, so it embeds ~10,000 short texts/s on one
core (`bench/bench_features.py`) and gives a linear model what TF-IDF cannot: similar words get
similar vectors, so a label on "refund" teaches something about "money back".

Models (the value of `AL_EMBEDDING_MODEL` / the project's `embedding_model`):

- ``wordllama`` (the default): the 256-dimensional "l2_supercat" token vectors that the installed
  `wordllama` wheel ships inside its package directory, with their Llama-2 tokenizer. Nothing is
  downloaded, so it works on a fresh machine after `pip install`. The weights are distilled from
  the token embeddings of Llama-2-family models: see the README's dependency table for their terms.
- a model2vec model (Tulkens & van Dongen, 2024): a local directory written by
  `StaticModel.save_pretrained` (`model.safetensors`, `tokenizer.json`, `config.json`), or a
  Hugging Face hub id such as ``minishlab/potion-base-8M``, downloaded and cached on first use by
  the `model2vec` package where the hub is reachable.

Both run through `model2vec.StaticModel.encode`, so there is one pooling code path. Texts are cut
to their first `MAX_TOKENS` tokens: a 1 MB text embeds in constant memory, and a text with no
token (empty, whitespace) gets the zero vector.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "wordllama"
MAX_TOKENS = 512  # model2vec's own default; a longer text keeps its first 512 tokens
CHUNK = 4096  # texts per encode call: bounds the token matrix (CHUNK x tokens x dim floats)
MEMO_ROWS = 50_000  # texts remembered per process: 50,000 x 256 float16 = 25 MB
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHOICES = f"{DEFAULT_MODEL!r}, a model2vec hub id such as 'minishlab/potion-base-8M', or a local model2vec directory"

_WORDLLAMA_WEIGHTS = ("weights", "l2_supercat_256.safetensors")
_WORDLLAMA_TOKENIZER = ("tokenizers", "l2_supercat_tokenizer_config.json")


class EmbeddingModelError(ValueError):
    """The embedding model setting names no model that can be loaded; says the value and the choices."""


def check_model_name(name: Any) -> str:
    """Validate an embedding model setting without loading it; return it stripped.

    Accepted: ``wordllama``, a hub id ``owner/name`` (checked when first loaded, since the hub may be
    unreachable here), or a path to a readable directory holding a model2vec model. Raises
    `EmbeddingModelError` naming the value and the valid choices otherwise.
    """
    if not isinstance(name, str) or not name.strip():
        raise EmbeddingModelError(f"embedding model must be {CHOICES}; got {name!r}")
    name = name.strip()
    if name == DEFAULT_MODEL:
        return name
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    if looks_like_path:
        missing = [f for f in ("model.safetensors", "tokenizer.json") if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise EmbeddingModelError(
                f"embedding model {name!r} is not a readable model2vec directory"
                f"{' (missing ' + ', '.join(missing) + ')' if path.is_dir() else ''}; valid choices: {CHOICES}"
            )
        return name
    if _HUB_ID.match(name):
        return name
    raise EmbeddingModelError(f"unknown embedding model {name!r}; valid choices: {CHOICES}")


def check_project_model_name(name: Any) -> str:
    """Validate a project's embedding model (from a request's extra params); return it stripped.

    A request may choose ``wordllama`` or a hub id, never a local directory: which files on the
    server get loaded is the admin's choice (``AL_EMBEDDING_MODEL``). A value that names an existing
    path is refused without saying what is there.
    """
    if isinstance(name, str) and name.strip() == DEFAULT_MODEL:
        return DEFAULT_MODEL
    if not isinstance(name, str) or not _HUB_ID.match(name.strip()) or Path(name.strip()).exists():
        raise EmbeddingModelError(
            f"embedding model {name!r} cannot be chosen per project; valid choices: {DEFAULT_MODEL!r} or a "
            "model2vec hub id such as 'minishlab/potion-base-8M' (a local model directory is the admin's "
            "AL_EMBEDDING_MODEL)"
        )
    return name.strip()


class StaticEmbedder:
    """Embeds texts with one static model: `embed(texts)` -> (n, dim) float32, rows of norm 1 or 0.

    Values are rounded to float16, the precision the pool cache stores, so a cached embedding and a
    fresh one are the same numbers. The embedder remembers the last `memo_rows` texts it embedded
    (`/predict` of a task it has seen, and `lsal simulate`'s repeated pool, embed nothing twice).
    """

    def __init__(self, name: str, model: Any, memo_rows: int = MEMO_ROWS) -> None:
        self.name = name
        self._model = model
        self.dim = int(model.dim)
        self.memo_rows = int(memo_rows)
        self._memo: dict[str, np.ndarray] = {}  # insertion-ordered: the oldest is evicted first

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float16)
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            # No multiprocessing: forking the worker (with a fitted model in memory) per chunk
            # costs more than it saves on 2 cores.
            out[start : start + len(chunk)] = self._model.encode(
                chunk, max_length=MAX_TOKENS, normalize=True, use_multiprocessing=False, batch_size=CHUNK
            )
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings; an empty or whitespace-only text gets zeros."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if self.memo_rows <= 0 or len(texts) > self.memo_rows:
            return self._encode(texts).astype(np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        memo = self._memo
        todo = [i for i, t in enumerate(texts) if t not in memo]
        fresh = self._encode([texts[i] for i in todo]) if todo else np.zeros((0, self.dim), np.float16)
        for i, t in enumerate(texts):
            if t in memo:
                out[i] = memo[t]
        for i, row in zip(todo, fresh, strict=True):
            out[i] = row
            memo[texts[i]] = row.copy()  # a view would keep the whole chunk alive
        while len(memo) > self.memo_rows:
            del memo[next(iter(memo))]
        return out


def _wordllama_dir() -> Path:
    # find_spec, not import: importing wordllama configures the root logger (logging.basicConfig).
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError(
            f"embedding model {DEFAULT_MODEL!r} needs the 'wordllama' package (pip install wordllama); "
            f"valid choices: {CHOICES}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_wordllama() -> Any:
    from model2vec import StaticModel
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    root = _wordllama_dir()
    weights = root.joinpath(*_WORDLLAMA_WEIGHTS)
    tokenizer = root.joinpath(*_WORDLLAMA_TOKENIZER)
    if not weights.is_file() or not tokenizer.is_file():
        raise EmbeddingModelError(
            f"the installed wordllama package lacks {weights} or {tokenizer}; valid choices: {CHOICES}"
        )
    vectors = load_file(str(weights))["embedding.weight"].astype(np.float32)
    return StaticModel(vectors, Tokenizer.from_file(str(tokenizer)), normalize=True, max_length=MAX_TOKENS)


def _load_model2vec(name: str) -> Any:
    from model2vec import StaticModel

    try:
        # force_download=False: a cached hub model loads offline.
        return StaticModel.from_pretrained(name, normalize=True, force_download=False)
    except Exception as e:  # the hub client and the safetensors reader raise many types
        raise EmbeddingModelError(
            f"cannot load embedding model {name!r} ({type(e).__name__}: {e}); valid choices: {CHOICES}"
        ) from None


#: held while an embedder loads: lru_cache alone lets every thread that misses load its own copy
#: (16 concurrent first /predict requests: 16 loads, 3.7 s, instead of one, 0.2 s)
_LOADING = threading.Lock()


def load(name: str = DEFAULT_MODEL) -> StaticEmbedder:
    """The embedder for a model setting, loaded once per process (the weights are read-only)."""
    with _LOADING:
        return _load(name)


def forget_loaded() -> None:
    """Drop every loaded embedder (the next `load` reads the weights again), as in a fresh process."""
    with _LOADING:
        _load.cache_clear()


@functools.lru_cache(maxsize=4)
def _load(name: str) -> StaticEmbedder:
    name = check_model_name(name)
    model = _load_wordllama() if name == DEFAULT_MODEL else _load_model2vec(name)
    return StaticEmbedder(name, model)
