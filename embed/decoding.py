"""Decoding image files to 8-bit RGB and resizing them for the network.

Colour conversion, one documented way for every input (see ``cellembed.spec.COLOR``):

* RGB is kept; grayscale (1-bit or 8-bit) is repeated on the three channels;
* palette images are expanded to their colours;
* any transparency (RGBA, LA, palette with a transparent index) is composited onto white,
  the background colour of a smear;
* 16-bit (or 32-bit integer) samples are scaled to 8 bits as ``round(v / 257)``, so 65535
  maps to 255; floating-point samples are clipped to 0..255.

Only the first frame of a multi-page file is used. EXIF orientation is ignored: pixels are
used as stored (CellaVision exports carry no EXIF at all, and a cell's class does not depend
on its orientation; see the README).

Resources. An image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`)
is refused from its header, before any pixel is decoded. An image of more than
:data:`REDUCE_ABOVE_PIXELS` (4 million) pixels and at least 4x the network input on both
sides is decoded small: JPEG files by the decoder's DCT scaling (``Image.draft``), other
formats by an integer box reduction (``Image.reduce``), both by the largest factor that
keeps each side at least twice the network input. The rest (every usual cell crop, at any
input size) is decoded exactly as before, so cached embeddings stay valid. Only regular
files are read: a FIFO or a device named like an image is refused, never read.

The same rules apply whatever the source: a file path, the file's bytes (an upload), a PIL
image, or a uint8 array ((H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA), so an image
classified from memory gets exactly the embedding of the same image read from disk.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

_WHITE = (255, 255, 255)

#: What can be decoded: a path, encoded bytes, a PIL image or a uint8 pixel array.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


#: Default pixel cap (width x height) of an input image. A real cell crop is far smaller
#: (CellaVision: 360 x 363, 0.13 Mpx); 50 Mpx is a whole 8,660 x 5,773 camera frame. Decoded,
#: it is 150 MB as RGB (200 MB with alpha), so the two decoding threads stay well inside the
#: 2.5 GB extraction budget; Pillow's own decompression-bomb limit (89 Mpx a warning, 179 Mpx
#: an error) is the ceiling of ``--max-pixels``.
DEFAULT_MAX_PIXELS = 50_000_000

#: Images of at most this many pixels are decoded whole (48 MB as float32 RGB at most),
#: whatever the network input: every usual cell crop decodes exactly as it always did, so
#: embeddings already cached stay valid. Only larger ones are reduced.
REDUCE_ABOVE_PIXELS = 4_000_000

#: Modes ``Image.reduce`` averages correctly (alpha ones premultiplied); others are first
#: converted (palette indices must not be averaged, 16-bit modes are not supported).
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F")


class DecodeError(Exception):
    """The input is not a readable image; the message says why, in a few words."""


class TooManyPixels(DecodeError):
    """The image is larger than the pixel cap (the next run tries it again: the cap may change)."""


def decode_rgb(
    source: ImageSource, *, reduce_to: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image file, encoded bytes, a PIL image or a uint8 array to (H, W, 3) uint8 RGB.

    Args:
        reduce_to: the network input side: an image of more than 4 million pixels and at
            least 4x that on both sides is decoded reduced (see the module docstring);
            None decodes the full image.
        max_pixels: refuse an image of more pixels than this (None: no cap but Pillow's).

    Raises:
        DecodeError: empty, truncated, unreadable or non-image input, not a regular file,
            an array that is not uint8 with 1, 3 or 4 channels; :class:`TooManyPixels`
            above ``max_pixels``.
        OSError: the file cannot be read (permission denied, vanished).
    """
    return _decode(source, reduce_to, max_pixels)[0]


def check_max_pixels(max_pixels: int | None) -> None:
    """Refuse a pixel cap below 1 or above Pillow's decompression-bomb limit (which would
    refuse, or warn about, the images the cap lets through)."""
    from cellembed.errors import InputError

    ceiling = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None and (max_pixels < 1 or (ceiling is not None and max_pixels > ceiling)):
        raise InputError(
            f"--max-pixels must be between 1 and {ceiling} (Pillow's decompression-bomb limit), got {max_pixels}"
        )


def _decode(source: ImageSource, reduce_to: int | None, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The RGB array and the original (width, height)."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        source.load()
        return _to_network_rgb(source, reduce_to), source.size
    if isinstance(source, np.ndarray):
        image = _array_image(source)
        _check_pixels(image.size, max_pixels)
        return _to_network_rgb(image, reduce_to), image.size
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty input (0 bytes)")
        return _open(io.BytesIO(bytes(source)), reduce_to, max_pixels)
    if not isinstance(source, (str, os.PathLike)):
        raise DecodeError(f"cannot decode a {type(source).__name__}; give a path, bytes, a PIL image or a uint8 array")
    # Non-blocking: opening a FIFO for reading would wait for a writer forever. The type is
    # checked on the open file, so a file swapped after discovery cannot slip through.
    with os.fdopen(os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("not a regular file; only regular files are read")
        if info.st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        return _open(handle, reduce_to, max_pixels)


def _open(source, reduce_to: int | None, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        with Image.open(source) as image:
            size = image.size
            _check_pixels(size, max_pixels)
            factor = _reduce_factor(size, reduce_to)
            if factor > 1 and image.format == "JPEG":
                image.draft(None, (2 * reduce_to, 2 * reduce_to))  # DCT scaling by 2, 4 or 8
            image.load()
            return _to_network_rgb(image, reduce_to, size), size
    except UnidentifiedImageError:
        raise DecodeError("not an image file (format not recognised)") from None
    except Image.DecompressionBombError:
        limit = f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, Pillow's decompression-bomb limit"
        cap = f", and more than --max-pixels {max_pixels}" if max_pixels is not None else ""
        raise TooManyPixels(f"image is {limit}{cap}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file itself cannot be read: not a decoding problem
        # PIL reports truncation and corrupt streams as OSError/SyntaxError.
        raise DecodeError(f"cannot decode image: {exc}") from None


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixels(f"image is {width} x {height} pixels, more than --max-pixels {max_pixels}")


def _reduce_factor(size: tuple[int, int], reduce_to: int | None, original: tuple[int, int] | None = None) -> int:
    """The largest integer factor keeping both sides of ``size`` >= 2x the network input;
    1 (none) when the ``original`` size (default ``size``; else the size before JPEG
    draft scaling) is at most :data:`REDUCE_ABOVE_PIXELS`."""
    original = original or size
    if not reduce_to or original[0] * original[1] <= REDUCE_ABOVE_PIXELS:
        return 1
    return max(1, min(size) // (2 * reduce_to))


def _to_network_rgb(image: Image.Image, reduce_to: int | None, original: tuple[int, int] | None = None) -> np.ndarray:
    """``to_rgb8``, after reducing an image much bigger than the network input (see
    :func:`_reduce_factor`); others are converted exactly as they are."""
    factor = _reduce_factor(image.size, reduce_to, original)
    if factor < 2:
        return to_rgb8(image)
    return to_rgb8(_reducible(image).reduce(factor))


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode ``Image.reduce`` averages correctly, converted as ``to_rgb8``
    would (16-bit samples widened to 32-bit, palettes and other modes expanded to RGB, or
    RGBA when they carry transparency), without ``to_rgb8``'s full-size temporaries."""
    mode = image.mode
    if mode in _REDUCIBLE:
        return image
    if mode.startswith("I;16"):
        return image.convert("I")
    has_alpha = mode in ("PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


def _array_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise DecodeError(f"pixel arrays must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    mode = "L" if array.ndim == 2 else modes.get(array.shape[2]) if array.ndim == 3 else None
    if mode is None or min(array.shape[:2], default=0) == 0:
        raise DecodeError(f"pixel arrays must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))  # L, RGB or RGBA from the shape


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any PIL image to an (H, W, 3) uint8 array (rules in the module docstring)."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        samples = np.asarray(image)
        if mode == "F":
            gray = np.clip(samples, 0, 255).round().astype(np.uint8)
        else:
            gray = np.round(np.clip(samples.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _half_pixel_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the lower and upper input index and the weight of the
    upper one, as TensorFlow's ResizeBilinear computes them with half-pixel centres (in
    float32: ``in = (out + 0.5) * (in_size / out_size) - 0.5``, clamped at the edges)."""
    scale = np.float32(in_size) / np.float32(out_size)
    where = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(where)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(where), in_size - 1).astype(np.intp)
    return lower, upper, (where - floor).astype(np.float32)


def resize_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) image to (size, size, 3) float32 in 0..255.

    Bilinear interpolation with half-pixel centres and no antialiasing, the arithmetic of
    TensorFlow's ``tf.image.resize(method="bilinear")`` (the resize Keras' image loaders
    use) in NumPy, in float32 and in its order (across each row first, then between rows),
    so embeddings cached by earlier versions, which resized with TensorFlow, stay valid
    (tests/test_embed_discovery_decoding.py compares the two). The aspect ratio is not kept,
    as CellaVision crops are almost square.
    """
    image = np.asarray(rgb, dtype=np.float32)
    height, width = image.shape[:2]
    top, bottom, y_lerp = _half_pixel_weights(height, size)
    left, right, x_lerp = _half_pixel_weights(width, size)
    rows = np.unique(np.concatenate([top, bottom]))  # each input row used is interpolated once
    used = image[rows]
    across = used[:, left] + (used[:, right] - used[:, left]) * x_lerp[None, :, None]
    top_row, bottom_row = across[np.searchsorted(rows, top)], across[np.searchsorted(rows, bottom)]
    return top_row + (bottom_row - top_row) * y_lerp[:, None, None]


@dataclass
class DecodedImage:
    """Result of preparing one file for the network.

    ``pixels`` is (size, size, 3) float32 in 0..255, or None when ``error`` says why not.
    ``width``/``height`` are the original size in pixels. ``transient`` marks an error of
    reading (permission, a vanished file, a network file system), which may not happen
    again, as opposed to content that does not decode, which always fails again.
    """

    pixels: np.ndarray | None
    width: int = 0
    height: int = 0
    error: str | None = None
    transient: bool = False
    cell_found: bool | None = None  # whether the spec's crop found the cell (None: no crop)


def load_for_network(
    source: ImageSource,
    size: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    prepare: "Callable[[np.ndarray], tuple[np.ndarray, bool | None]] | None" = None,
) -> DecodedImage:
    """Decode, prepare (``cellembed.preparation``: colour normalisation, cell crop) and
    resize one image; never raises for a bad input (the error is returned).

    An image over ``max_pixels`` is an error marked ``transient``: a later run, perhaps
    with a larger cap, tries it again.
    """
    try:
        rgb, (width, height) = _decode(source, size, max_pixels)
    except TooManyPixels as exc:
        return DecodedImage(None, error=str(exc), transient=True)
    except DecodeError as exc:
        return DecodedImage(None, error=str(exc))
    except OSError as exc:  # e.g. permission denied, file vanished
        return DecodedImage(None, error=f"cannot read file: {exc.strerror or exc}", transient=True)
    cell_found = None
    if prepare is not None:
        rgb, cell_found = prepare(rgb)
    return DecodedImage(resize_bilinear(rgb, size), width=width, height=height, cell_found=cell_found)
