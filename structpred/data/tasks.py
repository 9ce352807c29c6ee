"""Observation models (tasks): how a clean image becomes the model's input ``x``.

The energy's data term is ``lam/2 ||A y - x||^2`` with

* ``denoise``: A = identity, ``x = clean + noise``;
* ``inpaint``: A = diag(mask), a 0/1 mask of observed pixels; ``x = mask * (clean + noise)``
  (zero on the missing pixels, which the data term ignores);
* ``deblur``: A = correlation with a known normalised Gaussian blur kernel ``k`` (odd size),
  **zero-padded 'same'** convention: ``(A y)[i, j] = sum_{a,b} k[a, b] y[i + a - r, j + b - r]``
  (r = size // 2, terms outside the image are zero), so y and x have the same shape;
  ``x = A clean + noise``. Its adjoint is the same correlation with the flipped kernel.

The mask is a deterministic function of the image shape, the missing fraction and
``mask_seed`` (drawn from a generator seeded by (mask_seed, H, W)): the data (train, val,
test, evaluate) and the model (which rebuilds A from ``x.shape``) always agree without the
mask being stored or passed around. A task is described by a mapping
``{name, missing, mask_seed, blur_sigma, blur_size}`` (the data config's ``task`` key; the
experiment configs hand the same mapping to the model as ``model.task``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

TASKS = ("denoise", "inpaint", "deblur")
#: the parameters that matter to each task (the others are ignored by it)
TASK_PARAMS = {"denoise": (), "inpaint": ("missing", "mask_seed"),
               "deblur": ("blur_sigma", "blur_size")}


@dataclass(frozen=True)
class Task:
    name: str = "denoise"
    missing: float = 0.5        # inpaint: fraction of missing pixels
    mask_seed: int = 0          # inpaint: the mask's generator seed
    blur_sigma: float = 1.6     # deblur: Gaussian kernel's standard deviation (pixels)
    blur_size: int = 7          # deblur: kernel size (odd)

    def __post_init__(self):
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; allowed: {list(TASKS)}")
        if not 0.0 <= float(self.missing) < 1.0:
            raise ValueError(f"task.missing must be in [0, 1), got {self.missing!r}")
        if not float(self.blur_sigma) > 0:
            raise ValueError(f"task.blur_sigma must be > 0, got {self.blur_sigma!r}")
        if int(self.blur_size) < 1 or int(self.blur_size) % 2 == 0:
            raise ValueError(f"task.blur_size must be an odd positive integer, "
                             f"got {self.blur_size!r}")

    @property
    def identity(self) -> bool:
        return self.name == "denoise"

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The name and the parameters that matter, e.g. ``inpaint (missing=0.5, mask_seed=0)``."""
        keys = TASK_PARAMS[self.name]
        if not keys:
            return self.name
        return f"{self.name} ({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    # ----------------------------------------------------------------- operators
    def mask(self, shape) -> np.ndarray:
        """The (H, W) 0/1 float mask of observed pixels (inpaint)."""
        h, w = int(shape[0]), int(shape[1])
        rng = np.random.default_rng([int(self.mask_seed), h, w])
        return (rng.random((h, w)) >= float(self.missing)).astype(np.float64)

    def blur_kernel(self) -> np.ndarray:
        """The normalised (s, s) Gaussian blur kernel (deblur)."""
        r = int(self.blur_size) // 2
        t = np.arange(-r, r + 1, dtype=np.float64)
        g = np.exp(-0.5 * (t / float(self.blur_sigma)) ** 2)
        k = np.outer(g, g)
        return k / k.sum()

    def forward(self, y: np.ndarray) -> np.ndarray:
        """A y."""
        y = np.asarray(y, dtype=np.float64)
        if self.name == "inpaint":
            return self.mask(y.shape) * y
        if self.name == "deblur":
            return correlate_same(y, self.blur_kernel())
        return y.copy()

    def adjoint(self, r: np.ndarray) -> np.ndarray:
        """A^T r."""
        r = np.asarray(r, dtype=np.float64)
        if self.name == "inpaint":
            return self.mask(r.shape) * r
        if self.name == "deblur":
            return correlate_same(r, self.blur_kernel()[::-1, ::-1])
        return r.copy()

    def degrade(self, clean: np.ndarray, sigma: float, rng: np.random.Generator, *,
                rounded: bool = False) -> np.ndarray:
        """The observation ``x`` of ``clean``: A clean + sigma N(0, 1) (masked for inpaint)."""
        from structpred.data.noise import add_noise
        if self.name == "deblur":
            return add_noise(self.forward(clean), sigma, rng, rounded=rounded)
        noisy = add_noise(clean, sigma, rng, rounded=rounded)
        return self.mask(noisy.shape) * noisy if self.name == "inpaint" else noisy


def correlate_same(y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Zero-padded 'same' correlation of ``y`` with an odd-sized kernel ``k``."""
    s = k.shape[0]
    r = s // 2
    h, w = y.shape
    p = np.zeros((h + 2 * r, w + 2 * r))
    p[r:r + h, r:r + w] = y
    out = np.zeros((h, w))
    for a in range(s):
        for b in range(k.shape[1]):
            out += k[a, b] * p[a:a + h, b:b + w]
    return out


def _spec_dict(spec) -> dict:
    """The keys a task spec gives explicitly (a name gives only ``name``)."""
    if isinstance(spec, Task):
        return spec.as_dict()
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping):
        return dict(spec)
    raise ValueError(f"task must be a name or a mapping, got {spec!r}")


def task_for_model(trained, requested=None, *, source: str = "the task") -> Task:
    """The task to run a model trained for ``trained`` on.

    ``requested`` None: the model's own task. Otherwise (a name, a mapping or a Task) it must
    agree with the model's task on every key it gives that matters to that task (the name,
    ``missing``/``mask_seed`` for inpaint, ``blur_sigma``/``blur_size`` for deblur); keys it
    leaves out are the model's. Raises ValueError (one line) if it asks for another task or
    other parameters (naming ``source``, where the request came from): a model restores only
    the degradation it was trained for, so evaluating it on another one would silently
    measure the wrong thing.
    """
    trained = make_task(trained)
    if requested is None:
        return trained
    spec = _spec_dict(requested)
    make_task(spec)                        # unknown keys or bad values: its own message
    asked = make_task({**trained.as_dict(), **spec})
    if asked.name != trained.name:
        what = asked.name
    else:
        diff = [k for k in TASK_PARAMS[trained.name] if getattr(asked, k) != getattr(trained, k)]
        if not diff:
            return trained
        what = ", ".join(f"{k}={getattr(asked, k)!r}" for k in diff)
    raise ValueError(f"the model was trained for {trained.describe()} but {source} asks for "
                     f"{what}; leave {source} out to use the model's task")


def make_task(spec=None) -> Task:
    """A :class:`Task` from None (denoise), a name, a mapping or a Task."""
    if spec is None:
        return Task()
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str):
        return Task(name=spec)
    if isinstance(spec, Mapping):
        allowed = set(Task.__dataclass_fields__)
        extra = set(spec) - allowed
        if extra:
            raise ValueError(f"unknown task keys {sorted(extra)}; allowed: {sorted(allowed)}")
        return Task(**dict(spec))
    raise ValueError(f"task must be a name or a mapping, got {spec!r}")
