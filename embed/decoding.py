"""Decoding image files to 8-bit RGB and resizing them for the network.

Colour conversion, one documented way for every input (see ``cellembed.spec.COLOR``):

* RGB is kept; grayscale (1-bit or 8-bit) is repeated on the three channels;
* palette images are expanded to their colours;
* any transparency (RGBA, LA, palette with a transparent index) is composited onto white,
  the background colour of a smear;
* 16-bit (or 32-bit integer) samples are scaled to 8 bits as ``round(v / 257)``, so 65535
  maps to 255; floating-point samples are clipped to 0..255.

Only the first frame of a multi-page file is used.

The same rules apply whatever the source: a file path, the file's bytes (an upload), a PIL
image, or a uint8 array ((H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA), so an image
classified from memory gets exactly the embedding of the same image read from disk.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

_WHITE = (255, 255, 255)

#: What can be decoded: a path, encoded bytes, a PIL image or a uint8 pixel array.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class DecodeError(Exception):
    """The input is not a readable image; the message says why, in a few words."""


def decode_rgb(source: ImageSource) -> np.ndarray:
    """Decode an image file, encoded bytes, a PIL image or a uint8 array to (H, W, 3) uint8 RGB.

    Raises:
        DecodeError: empty, truncated, unreadable or non-image input, or an array that is
            not uint8 with 1, 3 or 4 channels.
        OSError: the file cannot be read (permission denied, vanished).
    """
    if isinstance(source, Image.Image):
        source.load()
        return to_rgb8(source)
    if isinstance(source, np.ndarray):
        return to_rgb8(_array_image(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty input (0 bytes)")
        return _open(io.BytesIO(bytes(source)))
    if not isinstance(source, (str, os.PathLike)):
        raise DecodeError(f"cannot decode a {type(source).__name__}; give a path, bytes, a PIL image or a uint8 array")
    if Path(source).stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    return _open(source)


def _open(source) -> np.ndarray:
    try:
        with Image.open(source) as image:
            image.load()
            return to_rgb8(image)
    except UnidentifiedImageError:
        raise DecodeError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file itself cannot be read: not a decoding problem
        # PIL reports truncation and corrupt streams as OSError/SyntaxError.
        raise DecodeError(f"cannot decode image: {exc}") from None


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


def prepare_resize() -> None:
    """Start TensorFlow, which does the resizing, now and quietly: left to the first
    decode thread, its start-up messages (import, then device probing on the first op)
    would land in the middle of the progress bar."""
    from cellembed.quiet import quiet_native_logs

    with quiet_native_logs():
        resize_bilinear(np.zeros((2, 2, 3), np.uint8), 1)


def resize_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) image to (size, size, 3) float32 in 0..255.

    TensorFlow bilinear interpolation with half-pixel centres and no antialiasing (the
    resize Keras' image loaders use); the aspect ratio is not kept, as CellaVision crops
    are almost square.
    """
    import tensorflow as tf  # local: keep module import light for readers of the cache

    resized = tf.image.resize(rgb.astype(np.float32), (size, size), method="bilinear")
    return resized.numpy()


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


def load_for_network(source: ImageSource, size: int) -> DecodedImage:
    """Decode and resize one image; never raises for a bad input (the error is returned)."""
    try:
        rgb = decode_rgb(source)
    except DecodeError as exc:
        return DecodedImage(None, error=str(exc))
    except OSError as exc:  # e.g. permission denied, file vanished
        return DecodedImage(None, error=f"cannot read file: {exc.strerror or exc}", transient=True)
    height, width = rgb.shape[:2]
    return DecodedImage(resize_bilinear(rgb, size), width=width, height=height)
