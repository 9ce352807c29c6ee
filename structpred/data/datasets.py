"""Image sets: scikit-image's bundled photographs (no download) or a folder of images.

A *split* (train, val or test) is described by a mapping with either

* ``images``: names of scikit-image photographs (``skimage.data.<name>()``, converted to
  gray), or
* ``path``: a folder of grayscale images (``glob`` pattern, default ``*.png``), e.g. the
  Berkeley ``train400/`` and ``bsd68/`` folders,

and optionally ``start``/``limit`` (a slice of the sorted list), ``crop`` (square crops of
this size, or null for whole images) and ``crops_per_image``. Crop positions and noise are
drawn from generators seeded by (seed, split, index), so they are reproducible.

The data config's optional ``task`` (see :mod:`structpred.data.tasks`: denoise, inpaint with
a seeded mask, deblur with a known Gaussian kernel) says how a clean image becomes the
observation ``x`` (the ``noisy`` list); absent or null: denoising.

Image files follow the rule of :mod:`structpred.data.images` (uint8 as is, uint16 / 257, float
0..1 x 255, other integers if in 0..255, otherwise a one-line error); the data config's
optional ``range`` ([lo, hi] or "lo,hi"; null: by dtype) overrides it and ``gray: true``
converts colour images to luminance (otherwise a colour image is an error).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from structpred.errors import DataError
from structpred.data.images import CONFIG_HINTS, parse_range, read_image_file, to_gray255
from structpred.data.noise import SPLITS, noise_rng
from structpred.data.tasks import Task, make_task

log = logging.getLogger(__name__)

#: photographs that scikit-image ships inside its wheel (no network access needed)
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon",
                  "page", "rocket", "text")




@dataclass(frozen=True)
class Dataset:
    """Clean images, their noisy versions and their names."""

    names: list[str]
    clean: list[np.ndarray] = field(repr=False)
    noisy: list[np.ndarray] = field(repr=False)
    sigma: float = 25.0

    def __len__(self) -> int:
        return len(self.clean)

    def pairs(self, indices=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(noisy, clean) pairs, all or those at ``indices``."""
        idx = range(len(self)) if indices is None else indices
        return [(self.noisy[i], self.clean[i]) for i in idx]

    def describe(self) -> str:
        shapes = sorted({c.shape for c in self.clean})
        return f"{len(self)} images, shapes {shapes[:3]}{' ...' if len(shapes) > 3 else ''}"


# ---------------------------------------------------------------------------- reading
def _to_gray255(img: np.ndarray, where: str, value_range=None, gray: bool = False) -> np.ndarray:
    """An image array -> float64 gray in 0..255 by the rule of :mod:`structpred.data.images`;
    an error names ``where`` (and the data config's keys ``data.range``/``data.gray``)."""
    return to_gray255(img, where, value_range=value_range, gray=gray, hints=CONFIG_HINTS)[0]


def read_image(path, value_range=None, gray: bool = False) -> np.ndarray:
    """Read an image file as (H, W) float64 in 0..255 by the rule of
    :mod:`structpred.data.images` (uint8 as is, uint16 / 257, float 0..1 x 255, ...;
    ``value_range=(lo, hi)`` overrides it; ``gray`` converts colour). Raises DataError (an
    :class:`~structpred.data.images.ImageError`) naming the path if not."""
    return read_image_file(path, value_range=value_range, gray=gray, hints=CONFIG_HINTS)[0]


def skimage_photo(name: str) -> np.ndarray:
    """A scikit-image photograph in gray, 0..255 (colour ones converted with rgb2gray)."""
    from skimage import color, data
    if name not in SKIMAGE_PHOTOS:
        raise DataError(f"skimage:{name}: unknown photograph; allowed: {list(SKIMAGE_PHOTOS)}")
    img = np.asarray(getattr(data, name)())
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) * 255.0
        return _to_gray255(img, f"skimage:{name}", value_range=(0, 255))
    return _to_gray255(img, f"skimage:{name}")


def _list_folder(path, pattern: str) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (set data.root or the split's path; see "
                        "README 'Training, tracking and evaluation')")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"{folder}: no images matching {pattern!r}")
    return files


# ---------------------------------------------------------------------------- splits
def _crops(img: np.ndarray, size, count: int, rng: np.random.Generator):
    """``count`` random square crops of ``size`` (the whole image if size is None)."""
    if size is None:
        return [img]
    h, w = img.shape
    size = int(size)
    if size >= min(h, w):  # the image is no bigger than a crop: use it whole
        return [img]
    out = []
    for _ in range(int(count)):
        i, j = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        out.append(np.ascontiguousarray(img[i:i + size, j:j + size]))
    return out


def _sources(spec: Mapping, value_range=None, gray: bool = False) -> list[tuple[str, callable]]:
    """(name, loader) of each image of a split, after ``start``/``limit``."""
    if spec.get("images") is not None:
        items = [(f"{n}", (lambda n=n: skimage_photo(n))) for n in spec["images"]]
    elif spec.get("path") is not None:
        files = _list_folder(spec["path"], spec.get("glob") or "*.png")
        items = [(p.stem, (lambda p=p: read_image(p, value_range, gray))) for p in files]
    else:
        raise DataError("a data split needs 'images' (scikit-image names) or 'path' (a folder)")
    start = int(spec.get("start") or 0)
    limit = spec.get("limit")
    items = items[start:] if limit is None else items[start:start + int(limit)]
    if not items:
        raise DataError(f"{spec.get('path') or 'images'}: the split is empty after "
                        f"start={start}, limit={limit}")
    return items


def load_split(split: str, spec: Mapping, *, sigma: float, seed: int, rounded: bool = False,
               min_shape=(1, 1), task=None, value_range=None, gray: bool = False) -> Dataset:
    """Load one split: images, crops and their degraded versions (``task``: see
    :func:`structpred.data.tasks.make_task`; None: denoising). Image files follow the rule
    of :mod:`structpred.data.images`; ``value_range`` ((lo, hi), "LO,HI" or None: by dtype)
    and ``gray`` (convert colour to luminance) are the data config's ``range`` and ``gray``."""
    task = make_task(task)
    try:
        value_range = parse_range(value_range, "data.range")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    names, clean, noisy = [], [], []
    for k, (name, load) in enumerate(_sources(spec, value_range, bool(gray))):
        img = load()
        crop_rng = np.random.default_rng([int(seed), SPLITS[split], k, 7])
        pieces = _crops(img, spec.get("crop"), spec.get("crops_per_image") or 1, crop_rng)
        for c, piece in enumerate(pieces):
            where = name if len(pieces) == 1 else f"{name}#{c}"
            if piece.shape[0] < min_shape[0] or piece.shape[1] < min_shape[1]:
                raise DataError(f"{where}: image of shape {piece.shape} is smaller than the "
                                f"filter ({min_shape[0]}x{min_shape[1]})")
            names.append(where)
            clean.append(piece)
            noisy.append(task.degrade(piece, sigma, noise_rng(seed, split, len(noisy)),
                                      rounded=rounded))
    return Dataset(names=names, clean=clean, noisy=noisy, sigma=float(sigma))


def load_skimage(names, **kw) -> Dataset:
    """A test split made of whole scikit-image photographs."""
    return load_split("test", {"images": list(names)}, **kw)


def load_folder(path, **kw) -> Dataset:
    """A test split made of every PNG of a folder."""
    return load_split("test", {"path": str(path)}, **kw)


def load_splits(data_cfg: Mapping, min_shape=(1, 1), splits=("train", "val", "test")):
    """Every split of a data config that is present (``val`` may be null).

    Returns a dict split -> Dataset (or None for an absent split).
    """
    task = data_cfg.get("task")
    if task is not None and not isinstance(task, (str, Task)):
        task = {k: task[k] for k in task}            # DictConfig -> dict
    value_range = data_cfg.get("range")
    if value_range is not None and not isinstance(value_range, str):
        value_range = list(value_range)              # ListConfig -> list
    out = {}
    for split in splits:
        spec = data_cfg.get(split)
        if spec is None:
            out[split] = None
            continue
        out[split] = load_split(split, spec, sigma=float(data_cfg["sigma"]),
                                seed=int(data_cfg["seed"]), rounded=bool(data_cfg.get("rounded")),
                                min_shape=min_shape, task=task, value_range=value_range,
                                gray=bool(data_cfg.get("gray") or False))
        log.info("data %s: %s", split, out[split].describe())
    return out
