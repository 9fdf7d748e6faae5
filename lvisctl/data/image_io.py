"""The one image reader of lvisctl: training data, inference and ``data validate`` all read through here.

As detectron2's ``read_image``: the EXIF orientation is applied (the json's width/height describe the
upright image), and every pixel format becomes 8-bit RGB the way a viewer shows it:

- RGB, grayscale (``L``, ``1``), palette (``P``, ``PA``), CMYK, YCbCr: Pillow's conversion to RGB;
- alpha (``RGBA``, ``LA``, ``PA``): dropped, as detectron2 and OpenCV do (the colour under it is kept);
- 16-bit grayscale (``I;16*``, and ``I``, which Pillow uses for 16-bit PNGs): scaled 0..65535 -> 0..255.
  Pillow's own ``convert("RGB")`` clips these to 255, turning a 16-bit image all white;
- anything else (32-bit float ``F``, multi-band scientific formats): refused with one line.

Problems are ``ImageReadError`` (missing, empty, truncated, not an image, unsupported mode) or
``ImageSizeError`` (decodes, but its size is not the json's), both one-line ``LvisctlError``s naming the
file, so callers can skip an unreadable image (``tta-infer``) or refuse the run (``train``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.errors import LvisctlError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_VIA_RGB = ("RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBX", "RGBa", "LA", "La", "P", "PA")
SUPPORTED_MODES = _VIA_RGB + SIXTEEN_BIT_MODES
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # 90-degree rotations: width and height swap
_TRAILER_BYTES = 4096  # where the end-of-image marker is looked for (encoders may pad after it)
# The pixel cap of every image read (Pillow's own default, 2^30 / 12: a 9459 x 9459 image). Larger
# images are refused with one line naming the file: a small compressed file can decode to gigabytes (a
# "decompression bomb"), and LVIS / Open Images photos are far below it. Pillow would only warn between
# the cap and twice the cap; that warning is an error here.
MAX_PIXELS = 89_478_485


class ImageReadError(LvisctlError):
    """The file cannot be read as an image (missing, empty, truncated, not an image, unsupported)."""


class ImageSizeError(LvisctlError):
    """The image decodes but its (upright) size is not the one the json records."""

    def __init__(self, path: Path, actual_hw: tuple[int, int], expected_hw: tuple[int, int]) -> None:
        self.path, self.actual_hw, self.expected_hw = path, actual_hw, expected_hw
        (h, w), (eh, ew) = actual_hw, expected_hw
        super().__init__(f"{path}: image is {w}x{h} but the annotation file says {ew}x{eh} (width x height)")


def read_image(path: str | os.PathLike[str], *, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to an upright ``[H, W, 3]`` uint8 RGB array (module docstring for the formats).

    ``expected_hw``: the json's ``(height, width)``; a different size raises ``ImageSizeError``.
    """
    Image = _pil()  # noqa: N806 - the module, as everywhere

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            upright = _exif_transpose(img)
            array = _to_rgb_array(upright, path)
    except _decode_errors(Image) as err:
        raise ImageReadError(f"{path}: {_decode_problem(err)}") from None
    _check_size(path, array.shape[:2], expected_hw)
    return array


def read_image_tensor(path: str | os.PathLike[str], *, expected_hw: tuple[int, int] | None = None) -> Any:
    """``read_image`` as a uint8 ``torch.Tensor[3, H, W]`` (the training-sample layout)."""
    import torch

    array = read_image(path, expected_hw=expected_hw)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def probe_image(
    path: str | os.PathLike[str], *, expected_hw: tuple[int, int] | None = None, decode: bool = False
) -> tuple[int, int]:
    """The upright ``(height, width)`` of an image from its header, cheaply (no pixel decoding).

    Checks what a header tells: the file exists and is not empty, it is an image of a supported mode,
    and JPEG/PNG files end with their end-of-image marker (a truncated download fails here). With
    ``decode`` the pixels are decoded too (``read_image``), which catches every damaged file.
    """
    Image = _pil()  # noqa: N806 - the module, as everywhere

    path = Path(path)
    if decode:
        return read_image(path, expected_hw=expected_hw).shape[:2]
    _check_file(path)
    try:
        with Image.open(path) as img:
            if img.mode not in SUPPORTED_MODES:
                raise ImageReadError(_unsupported(path, img.mode))
            w, h = img.size
            if _orientation(img) in _TRANSPOSED_ORIENTATIONS:
                h, w = w, h
            fmt = img.format
    except _decode_errors(Image) as err:
        raise ImageReadError(f"{path}: {_decode_problem(err)}") from None
    _check_trailer(path, fmt)
    _check_size(path, (h, w), expected_hw)
    return h, w


# ---------------------------------------------------------------------------------------- helpers


def _decode_errors(Image: Any) -> tuple[type[BaseException], ...]:  # noqa: N803 - PIL's module
    """What PIL raises for a damaged, foreign or over-sized (pixel cap) image file."""
    return (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError, ValueError)


def _pil() -> Any:
    """Pillow's ``Image`` with lvisctl's pixel cap, above which opening an image raises (never a raw
    ``DecompressionBombWarning`` on stderr)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)  # idempotent
    return Image


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read image file ({err.strerror})") from None
    if not path.is_file():
        raise ImageReadError(f"{path}: is not a file")
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes), not an image")


def _check_size(path: Path, actual_hw: tuple[int, int], expected_hw: tuple[int, int] | None) -> None:
    if expected_hw is not None and tuple(int(v) for v in actual_hw) != tuple(int(v) for v in expected_hw):
        raise ImageSizeError(path, (int(actual_hw[0]), int(actual_hw[1])), expected_hw)


def _decode_problem(err: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not an image file (or a format Pillow cannot read)"
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return f"refused: {size}, above lvisctl's cap of {MAX_PIXELS:,} (a decompression bomb guard)"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "truncated" in text.lower():
        return "truncated or damaged image file (it does not decode to the end)"
    return f"cannot decode image ({text})"


def _orientation(img: Any) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels are still fine, keep them as stored
        return 1


def _exif_transpose(img: Any) -> Any:
    from PIL import ImageOps

    if _orientation(img) in (1, 0):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - as above: an unreadable orientation tag leaves the image as stored
        return img


def _unsupported(path: Path, mode: str) -> str:
    return f"{path}: pixel format {mode!r} is not supported; convert the image to 8-bit RGB or grayscale"


def _to_rgb_array(img: Any, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.int64)
        # 0..65535 -> 0..255, rounded; 32-bit "I" files beyond 16 bits are clipped (no image format
        # lvisctl reads stores more than 16 bits per grey sample).
        gray = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette with transparency: through RGBA, then the alpha is dropped
    if mode in _VIA_RGB:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # writable copy
    raise ImageReadError(_unsupported(path, mode))


def _check_trailer(path: Path, fmt: str | None) -> None:
    """JPEG ends with FF D9 and PNG with an IEND chunk; a file cut short has neither."""
    markers = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
    marker = markers.get(fmt or "")
    if marker is None:
        return
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - _TRAILER_BYTES))
        tail = fh.read()
    if marker not in tail:
        raise ImageReadError(f"{path}: truncated image file (no {fmt} end-of-image marker)")
