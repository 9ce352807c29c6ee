"""Datasets: noise convention, reproducibility, and clear errors naming the path."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from structpred.data import DataError, add_noise, load_splits, noise_rng
from structpred.data.datasets import _to_gray255, load_split


def test_noise_is_unrounded_gaussian_and_reproducible():
    clean = np.full((64, 64), 100.0)
    a = add_noise(clean, 25, noise_rng(0, "test", 3))
    b = add_noise(clean, 25, noise_rng(0, "test", 3))
    np.testing.assert_array_equal(a, b)
    assert abs(np.std(a - clean) - 25) < 1.5 and not np.allclose(a, np.round(a))
    r = add_noise(clean, 25, noise_rng(0, "test", 3), rounded=True)
    assert np.array_equal(r, np.round(r)) and r.min() >= 0 and r.max() <= 255


def test_skimage_splits_are_disjoint_and_seeded():
    cfg = {"sigma": 25, "seed": 0, "train": {"images": ["camera"], "crop": 32,
                                             "crops_per_image": 2},
           "val": None, "test": {"images": ["rocket"], "crop": 32}}
    a, b = load_splits(cfg), load_splits(cfg)
    assert len(a["train"]) == 2 and a["val"] is None and a["test"].names == ["rocket"]
    np.testing.assert_array_equal(a["train"].noisy[1], b["train"].noisy[1])
    # each crop and each split draws noise of its own (no stream shared or reused)
    n0, n1 = (a["train"].noisy[i] - a["train"].clean[i] for i in (0, 1))
    nt = a["test"].noisy[0] - a["test"].clean[0]
    assert abs(np.corrcoef(n0.ravel(), n1.ravel())[0, 1]) < 0.2
    assert abs(np.corrcoef(n0.ravel(), nt[:32, :32].ravel())[0, 1]) < 0.2


def _write(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / name, arr)


def test_folder_errors_name_the_path(tmp_path):
    kw = dict(sigma=25, seed=0, min_shape=(5, 5))
    with pytest.raises(DataError, match="nowhere: no such folder"):
        load_split("train", {"path": str(tmp_path / "nowhere")}, **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        load_split("train", {"path": str(tmp_path / "empty")}, **kw)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot read"):
        load_split("train", {"path": str(tmp_path / "bad")}, **kw)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 200
    _write(tmp_path / "rgb", "colour.png", colour)
    with pytest.raises(DataError, match="colour.png: RGB image .* add data.gray=true"):
        load_split("train", {"path": str(tmp_path / "rgb")}, **kw)
    _write(tmp_path / "small", "tiny.png", np.zeros((4, 16), np.uint8))
    with pytest.raises(DataError, match="tiny: image of shape \\(4, 16\\) is smaller"):
        load_split("train", {"path": str(tmp_path / "small")}, **kw)
    with pytest.raises(DataError, match="x.tif: contains NaN"):
        _to_gray255(np.array([[np.nan, 1.0]]), "x.tif")
    with pytest.raises(DataError, match="unknown photograph"):
        load_split("train", {"images": ["lena"]}, **kw)
