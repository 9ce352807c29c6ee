"""The one image rule (structpred.data.images) on the files people have, generated here: what
each dtype and channel layout is taken as, what comes back out, and the one-line errors."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from structpred.data import DataError
from structpred.data.datasets import load_split
from structpred.data.images import (
    CLI_HINTS, ImageError, encode, from_gray255, parse_range, read_image_file, to_gray255,
)


def gradient(h=24, w=32):
    """A clean gray test picture with values spread over 0..1."""
    yy, xx = np.mgrid[0:h, 0:w]
    return 0.5 + 0.45 * np.sin(xx / 4.0) * np.cos(yy / 5.0)


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- pixel values
def test_float_tiff_in_0_1_is_scaled_and_written_back_in_0_1(tmp_path):
    g = gradient().astype(np.float32)
    iio.imwrite(tmp_path / "f.tif", g)
    x, info = read_image_file(tmp_path / "f.tif")
    np.testing.assert_allclose(x, g.astype(np.float64) * 255, rtol=1e-6)
    assert info.scale == (0.0, 1.0) and any("taken as 0..1" in n for n in info.notes)
    assert info.suffix == ".tif"
    (tmp_path / "out.tif").write_bytes(encode(x * 0.5, info))
    back = iio.imread(tmp_path / "out.tif")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, g * 0.5, rtol=1e-6)


def test_float_tiff_in_0_255_is_taken_as_is(tmp_path):
    g = (gradient() * 255).astype(np.float32)
    iio.imwrite(tmp_path / "f.tif", g)
    x, info = read_image_file(tmp_path / "f.tif")
    np.testing.assert_allclose(x, g, rtol=1e-6)
    assert info.scale == (0.0, 255.0) and not info.notes


def test_float_tiff_on_another_scale_is_one_line_naming_dtype_and_range(tmp_path):
    iio.imwrite(tmp_path / "counts.tif", (gradient() * 4000).astype(np.float32))
    with pytest.raises(ImageError) as exc:
        read_image_file(tmp_path / "counts.tif")
    line = one_line(exc)
    assert line.startswith(f"{tmp_path / 'counts.tif'}: float32 image with values in [")
    assert "neither 0..1 nor 0..255; give the range with --range LO,HI" in line
    x, info = read_image_file(tmp_path / "counts.tif", value_range=(0, 4000))
    np.testing.assert_allclose(x, gradient() * 255, rtol=1e-5)
    assert info.scale == (0.0, 4000.0)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32])
def test_other_integer_tiffs(tmp_path, dtype):
    small = np.round(gradient() * 255).astype(dtype)
    iio.imwrite(tmp_path / "small.tif", small)
    x, info = read_image_file(tmp_path / "small.tif")
    np.testing.assert_array_equal(x, small.astype(np.float64))
    assert any(f"{np.dtype(dtype)} values in" in n and "taken as 0..255" in n
               for n in info.notes)
    (tmp_path / "o.tif").write_bytes(encode(x + 0.4, info))
    back = iio.imread(tmp_path / "o.tif")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, small)      # rounded back to the same integers
    big = np.round(gradient() * 3000).astype(dtype)
    iio.imwrite(tmp_path / "big.tif", big)
    with pytest.raises(ImageError) as exc:
        read_image_file(tmp_path / "big.tif")
    assert f"big.tif: {np.dtype(dtype)} image with values in [" in one_line(exc)
    assert "give the range with --range LO,HI" in str(exc.value)
    x, info = read_image_file(tmp_path / "big.tif", value_range="0,3000")
    np.testing.assert_allclose(x, big / 3000 * 255)
    (tmp_path / "b.tif").write_bytes(encode(x, info))
    np.testing.assert_array_equal(iio.imread(tmp_path / "b.tif"), big)


def test_16bit_png_in_16bit_png_out(tmp_path):
    v = np.round(gradient() * 65535).astype(np.uint16)
    iio.imwrite(tmp_path / "deep.png", v)
    x, info = read_image_file(tmp_path / "deep.png")
    np.testing.assert_allclose(x, v / 257.0)
    assert info.suffix == ".png" and info.out_dtype == np.uint16
    (tmp_path / "o.png").write_bytes(encode(x, info))
    back = iio.imread(tmp_path / "o.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, v)               # every one of the 16 bits kept


def test_uint16_with_12_bit_values_gets_a_note(tmp_path):
    iio.imwrite(tmp_path / "cam.tif", np.round(gradient() * 4000).astype(np.uint16))
    _, info = read_image_file(tmp_path / "cam.tif")
    assert any("--range 0,4095" in n for n in info.notes)


def test_uint8_and_bool(tmp_path):
    v = np.round(gradient() * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "p.png", v)
    x, info = read_image_file(tmp_path / "p.png")
    np.testing.assert_array_equal(x, v)
    assert not info.notes                                # 8-bit gray: nothing to say
    Image.fromarray(v > 128).save(tmp_path / "bw.png")
    x, info = read_image_file(tmp_path / "bw.png")
    assert set(np.unique(x)) == {0.0, 255.0} and info.out_dtype == np.uint8


def test_array_rule_noisy_images_keep_their_scale():
    rng = np.random.default_rng(0)
    clean = gradient()
    x, info = to_gray255(clean + 0.3 * rng.standard_normal(clean.shape))   # 0..1 + noise
    assert info.scale == (0.0, 1.0)
    x, info = to_gray255(clean * 255 + 100 * rng.standard_normal(clean.shape))
    assert info.scale == (0.0, 255.0)
    with pytest.raises(ImageError, match=r"scan: contains NaN or Inf values \(1 of 2\)"):
        to_gray255(np.array([[np.nan, 1.0]]), "scan")
    with pytest.raises(ImageError, match="unsupported pixel type complex128"):
        to_gray255(clean.astype(complex))
    y = from_gray255(x, info)
    assert y.dtype == np.float64


def test_parse_range():
    assert parse_range(None) is None and parse_range("auto") is None
    assert parse_range("0,1") == (0.0, 1.0) and parse_range([0, 4095]) == (0.0, 4095.0)
    assert parse_range("0..65535") == (0.0, 65535.0)
    with pytest.raises(ValueError, match="--range: need finite LO < HI"):
        parse_range("5,1")
    with pytest.raises(ValueError, match="data.range: expected 'auto' or two numbers"):
        parse_range("zero,one", "data.range")


# ---------------------------------------------------------------- channels
def test_gray_alpha_png_keeps_its_alpha(tmp_path):
    v = np.round(gradient() * 255).astype(np.uint8)
    alpha = np.full_like(v, 200)
    alpha[:4] = 0
    Image.fromarray(np.stack([v, alpha], -1), mode="LA").save(tmp_path / "la.png")
    for gray in (False, True):
        x, info = read_image_file(tmp_path / "la.png", gray=gray)
        np.testing.assert_array_equal(x, v)
        assert info.layout == "LA"
    (tmp_path / "o.png").write_bytes(encode(255 - x, info))
    back = iio.imread(tmp_path / "o.png")
    assert back.shape == v.shape + (2,)
    np.testing.assert_array_equal(back[..., 0], 255 - v)
    np.testing.assert_array_equal(back[..., 1], alpha)


def colour(h=24, w=32):
    g = gradient(h, w)
    return np.round(np.stack([g, 1 - g, g * 0.5], -1) * 255).astype(np.uint8)


def test_rgb_and_rgba_need_gray_and_say_so(tmp_path):
    iio.imwrite(tmp_path / "c.png", colour())
    rgba = np.concatenate([colour(), np.full(colour().shape[:2] + (1,), 255, np.uint8)], -1)
    iio.imwrite(tmp_path / "ca.png", rgba)
    for name, layout in (("c.png", "RGB"), ("ca.png", "RGBA")):
        with pytest.raises(ImageError) as exc:
            read_image_file(tmp_path / name, hints=CLI_HINTS)
        line = one_line(exc)
        assert line.startswith(f"{tmp_path / name}: {layout} image of shape (24, 32, ")
        assert "add --gray to convert it to luminance" in line
    x, info = read_image_file(tmp_path / "c.png", gray=True)
    want = colour().astype(float) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(x, want)
    assert info.out_dtype == np.uint8 and info.alpha is None
    x, info = read_image_file(tmp_path / "ca.png", gray=True)
    assert info.layout == "RGBA" and info.alpha is not None
    assert from_gray255(x, info).shape == (24, 32, 2)              # gray + the alpha


def test_rgb_with_equal_channels_is_gray(tmp_path):
    v = np.round(gradient() * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "g3.png", np.stack([v] * 3, -1))
    x, info = read_image_file(tmp_path / "g3.png")
    np.testing.assert_array_equal(x, v)
    assert "three equal channels" in info.notes[0]


def test_palette_pngs(tmp_path):
    v = np.round(gradient() * 255).astype(np.uint8)
    Image.fromarray(v).convert("P").save(tmp_path / "grayp.png")      # a gray palette
    x, info = read_image_file(tmp_path / "grayp.png")
    np.testing.assert_array_equal(x, v)
    assert info.layout.startswith("P")
    Image.fromarray(colour()).convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "cp.png")
    with pytest.raises(ImageError, match=r"cp.png: P \(palette\) image .* add --gray"):
        read_image_file(tmp_path / "cp.png", hints=CLI_HINTS)
    x, _ = read_image_file(tmp_path / "cp.png", gray=True)
    assert x.shape == (24, 32) and 0 <= x.min() and x.max() <= 255


def test_jpegs_without_exif(tmp_path):
    v = np.round(gradient() * 255).astype(np.uint8)
    Image.fromarray(v).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(colour()).save(tmp_path / "c.jpg", quality=95)
    assert "exif" not in Image.open(tmp_path / "g.jpg").info
    x, info = read_image_file(tmp_path / "g.jpg")
    assert np.abs(x - v).max() < 12 and info.suffix == ".png"     # lossy in, lossless out
    with pytest.raises(ImageError, match="c.jpg: RGB image"):
        read_image_file(tmp_path / "c.jpg")
    x, info = read_image_file(tmp_path / "c.jpg", gray=True)
    assert x.shape == (24, 32) and info.suffix == ".png"


def test_jpeg_exif_orientation_is_applied(tmp_path):
    v = np.zeros((10, 20), np.uint8)
    v[:, :5] = 255                                   # bright on the left
    exif = Image.Exif()
    exif[0x0112] = 6                                 # "rotate 90 CW to display"
    Image.fromarray(v).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    x, _ = read_image_file(tmp_path / "phone.jpg")
    assert x.shape == (20, 10) and x[:5].mean() > 200   # bright now on top, as displayed


def test_stack_and_corrupt_and_text_files_are_one_line(tmp_path):
    iio.imwrite(tmp_path / "stack.tif", np.zeros((6, 16, 16), np.uint8))
    with pytest.raises(ImageError, match=r"stack.tif: expected a 2-D grayscale image .*"
                                         r"\(a stack or a multi-page file"):
        read_image_file(tmp_path / "stack.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "notes.txt").write_text("not an image\n")
    for name in ("broken.png", "notes.txt"):
        for gray in (False, True):
            with pytest.raises(ImageError) as exc:
                read_image_file(tmp_path / name, gray=gray)
            assert one_line(exc).startswith(f"{tmp_path / name}: cannot read image: not an image file "
                                            "or corrupt")
    with pytest.raises(ImageError, match="nothing.png: no such file"):
        read_image_file(tmp_path / "nothing.png")


# ---------------------------------------------------------------- datasets use the rule
def test_folder_dataset_reads_float_and_16bit_and_takes_data_range(tmp_path):
    g = gradient()
    iio.imwrite(tmp_path / "a.tif", g.astype(np.float32))
    iio.imwrite(tmp_path / "b.png", np.round(g * 65535).astype(np.uint16))
    kw = dict(sigma=25, seed=0)
    ds = load_split("test", {"path": str(tmp_path), "glob": "*.*"}, **kw)
    assert ds.names == ["a", "b"]
    for c in ds.clean:
        np.testing.assert_allclose(c, g * 255, atol=0.01)
    iio.imwrite(tmp_path / "c.tif", (g * 4000).astype(np.float32))
    with pytest.raises(DataError, match=r"c.tif: float32 image .* data.range=\[LO,HI\]"):
        load_split("test", {"path": str(tmp_path), "glob": "c.tif"}, **kw)
    ds = load_split("test", {"path": str(tmp_path), "glob": "c.tif"}, value_range=[0, 4000], **kw)
    np.testing.assert_allclose(ds.clean[0], g * 255, rtol=1e-5)
    with pytest.raises(DataError, match="data.range: need finite LO < HI"):
        load_split("test", {"path": str(tmp_path), "glob": "c.tif"}, value_range="1,0", **kw)


def test_written_images_get_the_users_file_mode(tmp_path):
    """write_bytes goes through mkstemp (mode 0600); the image it leaves has the mode of any
    new file of the user's (0666 less the umask), not 0600."""
    import os
    import stat

    from structpred.data.images import write_bytes
    old = os.umask(0o022)
    try:
        p = write_bytes(tmp_path / "a.png", b"x")
        q = write_bytes(tmp_path / "a.png", b"y", overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644 and q.read_bytes() == b"y"
