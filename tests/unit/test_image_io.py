"""The one image reader (issue 9 item 5, 8, 13): every pixel format to upright 8-bit RGB, or one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lvisctl.data.image_io import (
    ImageReadError,
    ImageSizeError,
    probe_image,
    read_image,
    read_image_tensor,
)

RGB = (np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3) * 2).astype(np.uint8)


def test_16_bit_grayscale_is_scaled_not_saturated(tmp_path):
    gray8 = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # exact 16-bit version
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert (out == gray8[:, :, None]).all()  # Pillow's convert("RGB") makes all of these 255


def test_16_bit_rounding_is_hand_computed(tmp_path):
    # 0..65535 -> 0..255 rounded: 32767 -> round(127.498) = 127, 32896 -> 128, 65535 -> 255, 300 -> 1
    values = np.array([[32767, 32896, 65535, 300]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "v.png")
    assert read_image(tmp_path / "v.png")[0, :, 0].tolist() == [127, 128, 255, 1]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_other_modes_become_rgb_as_a_viewer_shows_them(tmp_path, mode):
    img = Image.fromarray(RGB).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    img.save(tmp_path / f"x.{ext}")
    out = read_image(tmp_path / f"x.{ext}")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    if mode in ("RGBA",):
        assert (out == RGB).all()  # alpha dropped, colour kept
    if mode in ("L", "LA"):
        gray = np.asarray(Image.fromarray(RGB).convert("L"))
        assert (out == gray[:, :, None]).all()
    if mode == "P":
        assert (out == np.asarray(img.convert("RGB"))).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(RGB)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.png", exif=exif)
    out = read_image(tmp_path / "o.png")
    assert out.shape == (7, 5, 3)
    assert (out == np.rot90(RGB, k=-1)).all()
    assert probe_image(tmp_path / "o.png") == (7, 5)


def test_unsupported_modes_are_refused(tmp_path):
    Image.fromarray(np.zeros((3, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f.tif: pixel format 'F' is not supported"):
        read_image(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="pixel format 'F'"):
        probe_image(tmp_path / "f.tif")


def test_broken_files_are_one_line(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, what in [
        ("cut.jpg", "truncated"),
        ("empty.jpg", "empty file"),
        ("text.jpg", "not an image file"),
        ("nope.jpg", "not found"),
    ]:
        for reader in (read_image, probe_image):
            with pytest.raises(ImageReadError) as err:
                reader(tmp_path / name)
            assert str(err.value).startswith(f"{tmp_path / name}: ") and what in str(err.value)
            assert "\n" not in str(err.value)


def test_size_is_checked_against_the_json(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    assert read_image_tensor(tmp_path / "a.png", expected_hw=(5, 7)).shape == (3, 5, 7)
    with pytest.raises(ImageSizeError, match="image is 7x5 but the annotation file says 5x7"):
        read_image(tmp_path / "a.png", expected_hw=(7, 5))
    with pytest.raises(ImageSizeError):
        probe_image(tmp_path / "a.png", expected_hw=(7, 5))


def test_images_above_the_pixel_cap_are_one_line_naming_the_file(tmp_path, monkeypatch, recwarn):
    """Issue 22 item 24: a 100-megapixel PNG printed Pillow's raw DecompressionBombWarning."""
    import lvisctl.data.image_io as image_io

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(path)
    monkeypatch.setattr(image_io, "MAX_PIXELS", 10_000)  # 12,000 pixels: between the cap and twice it
    for read in (image_io.read_image, image_io.probe_image):
        with pytest.raises(image_io.ImageReadError) as err:
            read(path)
        assert (
            str(err.value)
            == f"{path}: refused: 12,000 pixels, above lvisctl's cap of 10,000 (a decompression bomb guard)"
        )
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
    monkeypatch.setattr(image_io, "MAX_PIXELS", 12_000)
    assert image_io.read_image(path).shape == (100, 120, 3)
