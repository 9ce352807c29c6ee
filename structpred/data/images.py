"""The one rule for a user's images: what their pixel values and channels mean, going in and
coming out. Every entry point uses it: the ``denoise`` command, the folder datasets, the
MLflow pyfunc model and :meth:`structpred.tracking.TrainedModel.denoise`.

The engine works on (H, W) float64 images in 0..255. An image that arrives (a file or an
array) is mapped to that scale by its dtype, and the result is mapped back to the input's
dtype, scale and channel layout.

Pixel values (``value_range=None``, the automatic rule):

=====================================  =====================================  ==================
input                                  taken as                               output
=====================================  =====================================  ==================
uint8                                  0..255                                 uint8
uint16                                 0..65535 (divided by 257)              uint16
bool (1-bit)                           False = 0, True = 255                  uint8
other integers (int8..int64, uint32+)  0..255 if every value is in 0..255,    the same dtype,
                                       else an error                          clipped to 0..255
float, 99.5th percentile <= 2          0..1 (scikit-image's convention),      the same dtype,
                                       multiplied by 255 (a note)             0..1, not clipped
float otherwise, 0.5th percentile      0..255                                 the same dtype,
>= -255 and 99.5th <= 510                                                     not clipped
anything else (other floats, complex,  an error naming the file, the dtype    -
strings, NaN/Inf)                      and the range found
=====================================  =====================================  ==================

The percentiles (not the minimum and maximum) let a noisy image through: 0..255 plus noise of
sigma 100 or 0..1 plus noise of sigma 0.3 stay on their scale. An explicit range
``value_range=(lo, hi)`` (``--range LO,HI``, ``data.range``, the pyfunc's ``range``
parameter) overrides the guess for any dtype: ``lo`` maps to 0 and ``hi`` to 255, and the
output maps back (integers rounded and clipped to [lo, hi]).

Channels (the last axis of an (H, W, C) array; a file is read with its EXIF orientation
applied, palette images through their palette, CMYK converted to RGB):

* L (H, W) or (H, W, 1): denoised as it is.
* LA (H, W, 2): the gray channel is denoised, the alpha channel is copied to the output.
* RGB (H, W, 3) or RGBA (H, W, 4): if the three colour channels are equal (a gray image
  saved as colour, a gray palette) it is gray, with a note. Otherwise it is an error that
  names the ``gray`` option; with it the colour is converted to luminance
  (``skimage.color.rgb2gray`` weights 0.2125 R + 0.7154 G + 0.0721 B), the output is gray
  (and keeps the alpha channel of RGBA).
* anything else (a stack or a multi-page TIFF, 5+ channels): an error naming the shape.

Errors are :class:`ImageError` (a :class:`structpred.data.DataError`, so a ``ValueError``)
with one line naming the file or array, e.g. ``photo.tif: float32 image with values in
[-3.1e+03, 7.2e+04]: neither 0..1 nor 0..255; give the range with --range LO,HI``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from structpred.errors import DataError
from structpred.validation import UNIT_RANGE_P995

log = logging.getLogger("structpred.images")

#: the luminance weights of skimage.color.rgb2gray (ITU-R BT.709)
RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
#: file suffixes read and written through tifffile (any dtype); the rest goes through Pillow
TIFF_SUFFIXES = (".tif", ".tiff")
#: what a folder given to ``denoise`` (or a data split without ``glob``) is searched for
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp",
                  ".pgm", ".ppm", ".pnm")
LAYOUTS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class ImageError(DataError):
    """An image that cannot be read or whose values or channels the rule does not accept; the
    message is one line naming the file (or array), and what to do."""


@dataclass(frozen=True)
class Hints:
    """How the entry point spells the two options in its error messages."""

    range: str = "value_range=(lo, hi)"
    gray: str = "gray=True"
    range_key: str = "value_range"


CLI_HINTS = Hints(range="--range LO,HI", gray="--gray", range_key="--range")
CONFIG_HINTS = Hints(range="data.range=[LO,HI]", gray="data.gray=true", range_key="data.range")
API_HINTS = Hints()
PYFUNC_HINTS = Hints(range="params={'range': 'LO,HI'}", gray="params={'gray': True}",
                     range_key="params['range']")


@dataclass
class ImageInfo:
    """What an image was, so that the result can be written back the same way.

    ``scale`` is ``(lo, hi)``: the input value ``lo`` is 0 and ``hi`` is 255 on the engine's
    scale. ``alpha`` is the alpha channel (input dtype) or None; ``layout`` is the input's
    channel layout ("L", "LA", "RGB", "RGBA", or the file's mode such as "P" or "CMYK")."""

    where: str
    dtype: np.dtype
    scale: tuple[float, float]
    layout: str = "L"
    alpha: np.ndarray | None = field(default=None, repr=False)
    rule: str = ""
    notes: list[str] = field(default_factory=list)
    suffix: str = ".png"

    @property
    def out_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.dtype == bool else self.dtype

    def describe(self) -> str:
        """e.g. ``uint16 L, 0..65535``."""
        lo, hi = self.scale
        return f"{self.dtype} {self.layout}, {_num(lo)}..{_num(hi)}"


def _num(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.3g}"


def parse_range(value, key: str = "--range") -> tuple[float, float] | None:
    """``None``/"auto" -> None (the automatic rule); "LO,HI", "LO..HI" or a pair -> (lo, hi).

    Raises ValueError naming ``key`` if the value is not two finite numbers with lo < hi."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        if isinstance(value, str):
            parts = value.replace("..", ",").replace("[", "").replace("]", "").split(",")
        else:
            parts = list(value)
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected 'auto' or two numbers LO,HI (e.g. 0,1 or 0,65535), "
                         f"got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{key}: need finite LO < HI, got {value!r}")
    return lo, hi


# ------------------------------------------------------------------------ values
def _range_text(a: np.ndarray) -> str:
    return f"[{_num(float(np.min(a)))}, {_num(float(np.max(a)))}]"


def _scale_for(arr: np.ndarray, where: str, hints: Hints) -> tuple[tuple[float, float], str]:
    """The automatic rule: (lo, hi) and a short description, or ImageError."""
    dt = arr.dtype
    if dt == np.uint8:
        return (0.0, 255.0), "uint8"
    if dt == np.uint16:
        return (0.0, 65535.0), "uint16"
    if dt == bool:
        return (0.0, 1.0), "bool"
    if np.issubdtype(dt, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageError(f"{where}: {dt} image with values in {_range_text(arr)}: not "
                             f"0..255 (only uint8/uint16 have a known range); give the range "
                             f"with {hints.range}")
        return (0.0, 255.0), f"{dt} 0..255"
    if np.issubdtype(dt, np.floating):
        lo_p, hi_p = (np.percentile(arr, [0.5, 99.5]) if arr.size else (0.0, 0.0))
        if hi_p <= UNIT_RANGE_P995:
            return (0.0, 1.0), f"{dt} 0..1"
        if lo_p >= -255.0 and hi_p <= 510.0:
            return (0.0, 255.0), f"{dt} 0..255"
        raise ImageError(f"{where}: {dt} image with values in {_range_text(arr)}: neither "
                         f"0..1 nor 0..255; give the range with {hints.range}")
    raise ImageError(f"{where}: unsupported pixel type {dt} (expected integers or floats)")


def _check_finite(arr: np.ndarray, where: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ImageError(f"{where}: contains NaN or Inf values ({bad} of {arr.size})")


# ------------------------------------------------------------------------ channels
def _split_channels(arr: np.ndarray, where: str, gray: bool, hints: Hints, layout: str | None):
    """(gray plane in input units, alpha or None, layout, notes)."""
    notes = []
    if arr.ndim == 2:
        return arr, None, layout or "L", notes
    if arr.ndim == 3 and arr.shape[2] in LAYOUTS:
        c = arr.shape[2]
        name = layout or LAYOUTS[c]
        if c == 1:
            return arr[..., 0], None, name, notes
        if c == 2:
            notes.append("alpha channel copied to the output unchanged")
            return arr[..., 0], arr[..., 1], name, notes
        rgb, alpha = arr[..., :3], (arr[..., 3] if c == 4 else None)
        if alpha is not None:
            notes.append("alpha channel copied to the output unchanged")
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            notes.insert(0, f"{name} image with three equal channels: taken as gray")
            return rgb[..., 0], alpha, name, notes
        if not gray:
            raise ImageError(f"{where}: {name} image of shape {arr.shape}; structpred "
                             f"denoises gray images: add {hints.gray} to convert it to "
                             "luminance (0.2125 R + 0.7154 G + 0.0721 B), or convert it "
                             "yourself")
        notes.insert(0, f"{name} converted to gray (luminance 0.2125 R + 0.7154 G + 0.0721 B)")
        plane = rgb.astype(np.float64) @ RGB_WEIGHTS
        if rgb.dtype == bool:
            plane = plane >= 0.5
        return plane, alpha, name, notes
    hint = (" (a stack or a multi-page file? give one 2-D image per file)"
            if arr.ndim == 3 else "")
    raise ImageError(f"{where}: expected a 2-D grayscale image or (H, W, C) with C in 1..4 "
                     "channels, "
                     f"got shape {arr.shape}{hint}")


def to_gray255(image, where: str = "image", *, value_range=None, gray: bool = False,
               hints: Hints = API_HINTS, layout: str | None = None):
    """Map an image to the engine's scale: ``(x, info)`` with ``x`` (H, W) float64 in 0..255
    and ``info`` what :func:`from_gray255` needs to map a result back.

    ``image``: (H, W) or (H, W, C) array, C in 1..4 (see the module docstring for the rule);
    ``value_range``: None (automatic) or (lo, hi); ``gray``: convert colour to luminance.
    Raises :class:`ImageError` (one line naming ``where``)."""
    arr = np.asarray(image)
    if arr.dtype == object:      # e.g. JSON through MLflow: numbers as Python objects
        try:
            arr = np.array(arr.tolist())
        except Exception:
            raise ImageError(f"{where}: not a numeric array") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        raise ImageError(f"{where}: unsupported pixel type {arr.dtype} (expected integers or "
                         "floats)")
    plane, alpha, name, notes = _split_channels(arr, where, gray, hints, layout)
    _check_finite(plane, where)
    if value_range is not None:
        lo, hi = parse_range(value_range, hints.range_key)
        rule = f"given range {_num(lo)}..{_num(hi)}"
    else:
        # the range follows the dtype of the *input* (a uint8 RGB converted to a float gray
        # plane is still 0..255)
        (lo, hi), rule = _scale_for(arr if plane.dtype != arr.dtype else plane, where, hints)
        if rule.endswith(" 0..1") and arr.dtype.kind == "f":
            notes.insert(0, f"{arr.dtype} values in {_range_text(plane)} taken as 0..1 "
                            f"(scikit-image's float convention); give {hints.range} if not")
        elif rule.endswith(" 0..255") and arr.dtype.kind in "iu":
            notes.insert(0, f"{arr.dtype} values in {_range_text(plane)} taken as 0..255")
        elif rule == "uint16" and plane.size and plane.max() < 4096:
            notes.append(f"uint16 values in {_range_text(plane)} taken as 0..65535 (the "
                         f"image is dark if it is 12-bit data: give {hints.range.replace('LO,HI', '0,4095')})")
        elif rule == "bool":
            notes.append("1-bit image: False = 0, True = 255; written back as 8-bit")
    x = (np.asarray(plane, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    info = ImageInfo(where=where, dtype=arr.dtype, scale=(float(lo), float(hi)), layout=name,
                     alpha=alpha, rule=rule, notes=notes)
    for n in notes:
        log.info("%s: %s", where, n)
    return np.ascontiguousarray(x), info


def from_gray255(y, info: ImageInfo) -> np.ndarray:
    """Map a result ``y`` ((H, W), 0..255) back to the input's dtype, scale and layout (gray,
    or gray + the copied alpha channel): integers rounded and clipped, floats not clipped, a
    1-bit input comes back as uint8."""
    lo, hi = info.scale
    v = np.asarray(y, dtype=np.float64) * ((hi - lo) / 255.0) + lo
    dt = info.out_dtype
    if dt == np.uint8 and info.dtype == bool:
        v, lo, hi = np.asarray(y, dtype=np.float64), 0.0, 255.0
    if np.issubdtype(dt, np.integer):
        lim = np.iinfo(dt)
        out = np.clip(np.round(v), max(lo, lim.min), min(hi, lim.max)).astype(dt)
    else:
        out = v.astype(dt)
    if info.alpha is not None:
        a = info.alpha
        if a.dtype != dt:        # e.g. a bool input (1-bit with alpha): alpha as 0/255
            a = (a.astype(np.float64) * (255.0 if a.dtype == bool else 1.0)).astype(dt)
        out = np.stack([out, a], axis=-1)
    return out


# ------------------------------------------------------------------------ files
def _pillow_mode(path: Path) -> str:
    """Pillow's mode of the file (e.g. "L", "I;16", "P", "CMYK"); ImageError if Pillow cannot
    identify it."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as exc:
        msg = (str(exc).splitlines() or [""])[0]
        raise ImageError(f"{path}: cannot read image: not an image file or corrupt "
                         f"({type(exc).__name__}: "
                         f"{msg})") from None


def read_array(path) -> tuple[np.ndarray, str | None]:
    """The pixels of an image file as stored, and Pillow's mode (None for TIFFs read by
    tifffile). EXIF orientation applied; palette expanded; CMYK/YCbCr/LAB converted to RGB.
    Raises ImageError naming the file if it is missing or not a readable image."""
    import imageio.v3 as iio
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            try:
                return np.asarray(iio.imread(path, plugin="tifffile")), None
            except ImportError:
                pass
        mode = _pillow_mode(path)
        kw = {"plugin": "pillow", "rotate": True}
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            kw["mode"] = "RGB"
        return np.asarray(iio.imread(path, **kw)), mode
    except ImageError:
        raise
    except Exception as exc:  # Pillow, tifffile and imageio raise many types; all mean this
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {msg})") from None


def read_image_file(path, *, value_range=None, gray: bool = False, hints: Hints = CLI_HINTS):
    """Read an image file: ``(x, info)``, x (H, W) float64 in 0..255 by the rule.

    Raises :class:`ImageError` with one line naming the file."""
    path = Path(path)
    arr, mode = read_array(path)
    layout = {"P": "P (palette)", "PA": "PA (palette)", "1": None, "I;16": None}.get(mode, None)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        layout = f"{mode} (as RGB)"
    x, info = to_gray255(arr, str(path), value_range=value_range, gray=gray, hints=hints,
                         layout=layout)
    info.suffix = output_suffix(path, info)
    return x, info


def output_suffix(path, info: ImageInfo) -> str:
    """The output's file type: a TIFF stays a TIFF; 8/16-bit (and 1-bit) images are written as
    PNG (lossless, so a JPEG's output is a PNG); other dtypes go to TIFF, which holds them."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return suffix
    if info.out_dtype in (np.uint8, np.uint16):
        return ".png"
    return ".tif"


def encode(y, info: ImageInfo, suffix: str | None = None) -> bytes:
    """The bytes of the result ``y`` (0..255) as a file of ``suffix`` (default
    ``info.suffix``), in the input's dtype, scale and layout."""
    import imageio.v3 as iio
    suffix = suffix or info.suffix
    arr = from_gray255(y, info)
    if suffix in TIFF_SUFFIXES:
        return iio.imwrite("<bytes>", arr, extension=suffix, plugin="tifffile")
    return iio.imwrite("<bytes>", arr, extension=suffix, plugin="pillow")


def write_bytes(dst, payload: bytes, *, overwrite: bool = False) -> Path:
    """Write ``payload`` to ``dst`` through a temporary file in the same folder: a crash
    leaves no half-written image. Without ``overwrite`` an existing ``dst`` is never replaced
    (FileExistsError, even if it appears while writing)."""
    import os
    import tempfile
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        # mkstemp makes the file 0600; an image written for a user gets the mode any new
        # file of theirs gets (0666 less the umask), as on a shared lab disk colleagues read it
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        if overwrite:
            os.replace(tmp, dst)
        else:
            os.link(tmp, dst)          # fails if dst exists: no silent overwrite
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


__all__ = ["API_HINTS", "CLI_HINTS", "CONFIG_HINTS", "Hints", "IMAGE_SUFFIXES", "ImageError",
           "ImageInfo", "PYFUNC_HINTS", "encode", "from_gray255", "output_suffix",
           "parse_range", "read_array", "read_image_file", "to_gray255", "write_bytes"]
