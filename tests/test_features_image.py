"""features.image: the built-in featurizer's blocks with exact expected values, and the ONNX embedder
on tiny models built here with the `onnx` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from backend.features.image import COLOR_BINS, HOG_BINS, HOG_CELLS, THUMB, OnnxEmbedder, PixelFeaturizer


def stripes(vertical: bool, size: int = 64) -> Image.Image:
    a = np.zeros((size, size), dtype=np.uint8)
    if vertical:
        a[:, ::8] = 255
    else:
        a[::8, :] = 255
    return Image.fromarray(a).convert("RGB")


def test_layout_and_exact_values_of_a_flat_colour() -> None:
    f = PixelFeaturizer()
    v = f.features(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert v.dtype == np.float32 and v.shape == (f.dim,) == (THUMB * THUMB + HOG_CELLS**2 * HOG_BINS + COLOR_BINS**3,)
    thumb = v[: THUMB * THUMB]
    assert np.allclose(thumb, 76 / 255)  # Pillow's L of pure red: 299/1000 * 255 -> 76
    hog = v[THUMB * THUMB : THUMB * THUMB + HOG_CELLS**2 * HOG_BINS]
    assert np.all(hog == 0)  # no gradient anywhere
    colors = v[-(COLOR_BINS**3) :]
    red_bin = (3 * COLOR_BINS + 0) * COLOR_BINS + 0
    assert colors[red_bin] == 1.0 and colors.sum() == 1.0


def test_gradient_histograms_tell_orientations_apart() -> None:
    f = PixelFeaturizer()
    start, stop = THUMB * THUMB, THUMB * THUMB + HOG_CELLS**2 * HOG_BINS
    vert = f.features(stripes(True))[start:stop].reshape(-1, HOG_BINS)
    horiz = f.features(stripes(False))[start:stop].reshape(-1, HOG_BINS)
    # Vertical stripes change along x: gradient angle 0 (bin 0); horizontal ones along y: pi/2 (bin 4).
    assert vert.sum(axis=0).argmax() == 0
    assert horiz.sum(axis=0).argmax() == HOG_BINS // 2
    assert np.allclose(np.linalg.norm(vert, axis=1), 1.0, atol=1e-5)  # each cell L2-normalized


def test_transform_stacks_and_is_deterministic() -> None:
    f = PixelFeaturizer()
    imgs = [stripes(True), stripes(False), Image.new("RGB", (3, 5), (0, 0, 255))]
    X = f.transform(imgs)
    assert X.shape == (3, f.dim)
    assert np.array_equal(X, f.transform(imgs))
    assert f.transform([]).shape == (0, f.dim)


def mean_colour_model(path: Path, size: int = 8, batch: int | str = "N") -> Path:
    """An ONNX graph: [N, 3, size, size] -> GlobalAveragePool -> [N, 3, 1, 1] (the mean colour)."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 3, 1, 1])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["pixels"], ["embedding"])], "mean", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_embedder_runs_the_admins_model(tmp_path: Path) -> None:
    emb = OnnxEmbedder(mean_colour_model(tmp_path / "mean.onnx"))
    assert (emb.height, emb.width, emb.dim) == (8, 8, 3)
    X = emb.transform([Image.new("RGB", (20, 20), (255, 0, 51)), Image.new("RGB", (4, 4), (0, 102, 0))])
    assert np.allclose(X, [[1.0, 0.0, 0.2], [0.0, 0.4, 0.0]], atol=1e-6)
    assert emb.id.startswith("onnx-") and len(emb.id) == len("onnx-") + 16
    # The id follows the file's content: another model never reuses these cached features.
    other = OnnxEmbedder(mean_colour_model(tmp_path / "other.onnx", size=16))
    assert other.id != emb.id


def test_onnx_embedder_with_a_fixed_batch_of_one(tmp_path: Path) -> None:
    emb = OnnxEmbedder(mean_colour_model(tmp_path / "one.onnx", batch=1))
    X = emb.transform([Image.new("RGB", (8, 8), (255, 255, 255))] * 3)
    assert np.allclose(X, 1.0) and X.shape == (3, 3)


def test_onnx_embedder_refuses_a_model_that_does_not_take_images(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "flat", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "flat.onnx")
    with pytest.raises(ValueError, match=r"must be \[N, 3, H, W\], got \['N', 10\]"):
        OnnxEmbedder(tmp_path / "flat.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxEmbedder(tmp_path / "missing.onnx")
