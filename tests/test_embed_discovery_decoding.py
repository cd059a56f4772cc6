"""Finding images, labels, and decoding every colour mode to 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cellembed.decoding import DecodeError, decode_rgb, load_for_network, resize_bilinear
from cellembed.discovery import find_images
from cellembed.errors import InputError
from conftest import noise_image


def test_labels_come_from_first_level_folders_at_any_depth(tmp_path):
    noise_image(1).save(tmp_path / "root.PNG")
    (tmp_path / "neutrophil" / "deep" / "deeper").mkdir(parents=True)
    noise_image(2).save(tmp_path / "neutrophil" / "a.JPG")
    noise_image(3).save(tmp_path / "neutrophil" / "deep" / "deeper" / "b.tiff")
    (tmp_path / "basophil").mkdir()
    noise_image(4).save(tmp_path / "basophil" / "c.bmp")
    noise_image(5).save(tmp_path / "basophil" / "d.jpeg")
    found = {f.path: f.label for f in find_images(tmp_path)}
    assert found == {
        "basophil/c.bmp": "basophil",
        "basophil/d.jpeg": "basophil",
        "neutrophil/a.JPG": "neutrophil",
        "neutrophil/deep/deeper/b.tiff": "neutrophil",
        "root.PNG": None,
    }
    assert list(found) == sorted(found)


def test_hidden_files_folders_and_other_extensions_are_ignored(tmp_path):
    (tmp_path / "eosinophil").mkdir()
    noise_image(1).save(tmp_path / "eosinophil" / "ok.png")
    noise_image(2).save(tmp_path / "eosinophil" / ".hidden.png")
    (tmp_path / ".thumbnails").mkdir()
    noise_image(3).save(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / "eosinophil" / "notes.txt").write_text("not an image")
    (tmp_path / "eosinophil" / ".DS_169665.jpg").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert [f.path for f in find_images(tmp_path)] == ["eosinophil/ok.png"]


def test_missing_or_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no images in"):
        find_images(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a folder"):
        find_images(tmp_path / "file.png")


def _saved(image: Image.Image, fmt: str, tmp_path, **kwargs):
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, fmt, **kwargs)
    return path


def test_grayscale_is_repeated_on_three_channels(tmp_path):
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    rgb = decode_rgb(_saved(gray, "PNG", tmp_path))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[:, :, 0], np.asarray(gray))
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish
    rgba[:2, :, 3] = 0  # top half fully transparent
    rgba[2:, :, 3] = 255  # bottom half opaque
    rgb = decode_rgb(_saved(Image.fromarray(rgba, "RGBA"), "PNG", tmp_path))
    assert (rgb[:2] == 255).all()
    assert (rgb[2:] == [200, 0, 0]).all()


def test_palette_images_are_expanded(tmp_path):
    image = noise_image(7, (10, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rgb = decode_rgb(_saved(image, "PNG", tmp_path))
    assert np.array_equal(rgb, np.asarray(image.convert("RGB")))


def test_16_bit_samples_scale_to_8_bit(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = _saved(Image.fromarray(values), "PNG", tmp_path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    rgb = decode_rgb(path)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_bad_files_raise_decode_error_with_a_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        decode_rgb(empty)
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    with pytest.raises(DecodeError, match="not an image"):
        decode_rgb(text)
    buffer = io.BytesIO()
    noise_image(3, (64, 64)).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DecodeError, match="cannot decode"):
        decode_rgb(truncated)
    result = load_for_network(truncated, 71)
    assert result.pixels is None and "cannot decode" in result.error


def test_resize_is_tensorflow_bilinear_without_antialiasing(tmp_path):
    import tensorflow as tf

    rgb = np.asarray(noise_image(9, (90, 80)))
    out = resize_bilinear(rgb, 71)
    assert out.shape == (71, 71, 3) and out.dtype == np.float32
    expected = tf.image.resize(rgb.astype(np.float32), (71, 71), method="bilinear", antialias=False)
    np.testing.assert_array_equal(out, expected.numpy())
    decoded = load_for_network(_saved(Image.fromarray(rgb), "PNG", tmp_path), 71)
    assert (decoded.width, decoded.height) == (90, 80)
    np.testing.assert_array_equal(decoded.pixels, out)


@pytest.mark.slow  # starts TensorFlow, the reference
def test_the_numpy_resize_equals_tensorflows_bit_for_bit_on_the_sample_images():
    """Resizing is NumPy (no TensorFlow when the network is ONNX): it must give exactly what
    tf.image.resize gave when the cached embeddings were made, on every sample image (up and
    down, odd sizes) and on degenerate shapes."""
    import tensorflow as tf

    from conftest import SAMPLE

    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(SAMPLE.glob("*/*.jpg"))]
    rng = np.random.default_rng(1)
    images += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1, 1, 3), (2, 301, 3), (301, 2, 3), (999, 1000, 3))]
    assert len(images) > 60
    for rgb in images:
        for size in (1, 3, 71, 150, 299, 448):
            expected = tf.image.resize(rgb.astype(np.float32), (size, size), method="bilinear", antialias=False)
            np.testing.assert_array_equal(resize_bilinear(rgb, size), expected.numpy(), err_msg=f"{rgb.shape} -> {size}")
