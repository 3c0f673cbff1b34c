"""Image features: a built-in offline featurizer (Pillow + numpy) and an ONNX embedder the admin provides.

Both turn a decoded RGB image (backend/images.py) into one float32 vector; every featurizer has an
``id`` that names it and its settings, so cached features are reused only by the featurizer that
made them.

- :class:`PixelFeaturizer` (``builtin``): no model file, no download. The concatenation of
  - a 16 x 16 grayscale thumbnail (256 values in [0, 1]): the layout of the picture;
  - HOG-like gradient histograms (Dalal & Triggs 2005, "Histograms of oriented gradients for human
    detection"): on a 32 x 32 grayscale copy, 9 unsigned orientation bins weighted by gradient
    magnitude in each of 4 x 4 cells, each cell L2-normalized (144 values): shapes and edges,
    robust to brightness;
  - a colour histogram, 4 x 4 x 4 RGB bins as fractions of the pixels (64 values).
  Cheap (about a millisecond per image) and enough for simple images such as digits or icons;
  photos need an embedding model.
- :class:`OnnxEmbedder` (``AL_IMAGE_ONNX``): runs an image network the admin exported to ONNX (CLIP's
  image tower, DINOv2, a fine-tuned ResNet ...) with onnxruntime on the CPU. Contract: the model's
  first input is float32 ``[N, 3, H, W]`` (RGB, values in [0, 1]; put the network's own
  normalization inside the graph), H and W fixed in the graph (or 224 when symbolic); its first
  output, flattened per image, is the embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

__all__ = ["ImageFeaturizer", "OnnxEmbedder", "PixelFeaturizer"]

THUMB = 16
HOG_SIZE = 32
HOG_CELLS = 4
HOG_BINS = 9
COLOR_BINS = 4


class ImageFeaturizer(Protocol):
    """Turns decoded RGB images into a (n, dim) float32 matrix."""

    id: str
    dim: int

    def transform(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One feature row per image."""


def _hog(gray: np.ndarray) -> np.ndarray:
    """Orientation histograms per cell of a (HOG_SIZE, HOG_SIZE) grayscale array in [0, 1]."""
    gy, gx = np.gradient(gray)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
    bins = np.minimum((angle / np.pi * HOG_BINS).astype(np.int64), HOG_BINS - 1)
    cell = HOG_SIZE // HOG_CELLS
    cy = np.arange(HOG_SIZE)[:, None] // cell
    cx = np.arange(HOG_SIZE)[None, :] // cell
    index = (cy * HOG_CELLS + cx) * HOG_BINS + bins
    hist = np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=HOG_CELLS * HOG_CELLS * HOG_BINS)
    hist = hist.reshape(HOG_CELLS * HOG_CELLS, HOG_BINS)
    norm = np.linalg.norm(hist, axis=1, keepdims=True)
    return (hist / np.maximum(norm, 1e-6)).ravel()


def _color_histogram(rgb: np.ndarray) -> np.ndarray:
    q = (rgb.astype(np.int64) * COLOR_BINS) // 256
    index = (q[..., 0] * COLOR_BINS + q[..., 1]) * COLOR_BINS + q[..., 2]
    hist = np.bincount(index.ravel(), minlength=COLOR_BINS**3).astype(np.float64)
    return hist / max(1.0, hist.sum())


class PixelFeaturizer:
    """The built-in featurizer: thumbnail + HOG-like gradients + colour histogram (see the module doc)."""

    id = "builtin-v1"
    dim = THUMB * THUMB + HOG_CELLS * HOG_CELLS * HOG_BINS + COLOR_BINS**3

    def features(self, image: Image.Image) -> np.ndarray:
        """The feature vector of one RGB image."""
        rgb = image.convert("RGB")
        small = np.asarray(rgb.resize((HOG_SIZE, HOG_SIZE), Image.Resampling.BILINEAR))
        gray_img = rgb.convert("L")
        thumb = np.asarray(gray_img.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float64) / 255.0
        gray = np.asarray(gray_img.resize((HOG_SIZE, HOG_SIZE), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        return np.concatenate([thumb.ravel(), _hog(gray), _color_histogram(small)]).astype(np.float32)

    def transform(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) features of ``images``."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.features(img) for img in images])


class OnnxEmbedder:
    """Embeds images with an ONNX model file the admin provides (see the module docstring)."""

    def __init__(self, path: Path | str, *, batch_size: int = 32) -> None:
        import onnxruntime  # optional dependency: only needed when AL_IMAGE_ONNX is set

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {str(self.path)!r} does not exist")
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # workers run several jobs on few cores; one thread each
        self.session = onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ValueError(f"ONNX model input {inp.name!r} must be [N, 3, H, W], got {shape}")
        self.input_name = inp.name
        self.height = shape[2] if isinstance(shape[2], int) else 224
        self.width = shape[3] if isinstance(shape[3], int) else 224
        self.batch_size = int(batch_size)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        probe = self._run(np.zeros((1, 3, self.height, self.width), dtype=np.float32))
        self.dim = int(probe.shape[1])
        self.id = f"onnx-{digest}"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and self.fixed_batch != batch.shape[0]:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(batch.shape[0])])
        out: Any = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)

    def _pixels(self, image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB").resize((self.width, self.height), Image.Resampling.BILINEAR)
        return (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def transform(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) embeddings of ``images``, in batches of ``batch_size``."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self._pixels(img) for img in images[start : start + self.batch_size]])
            parts.append(self._run(batch))
        out = np.concatenate(parts)
        if not np.isfinite(out).all():
            raise ValueError(f"ONNX model {self.path.name!r} produced NaN or infinite embeddings")
        return out
