"""Hostile inputs of ``cellembed extract`` (issue 9, items 1, 4, 7 and EXIF): file names that
are not UTF-8, folders that cannot be listed, symbolic links and loops, empty or unsupported
folders, huge images, FIFOs and devices, EXIF orientation. Each test failed before its fix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cellembed import extract, load_embedder, load_embeddings
from cellembed.cli import main
from cellembed.decoding import DEFAULT_MAX_PIXELS, DecodeError, decode_rgb, load_for_network, resize_bilinear, to_rgb8
from cellembed.discovery import IMAGE_EXTENSIONS, find_images, scan_images
from cellembed.errors import InputError
from cellembed.shared.hashing import sha256_file
from conftest import SAMPLE, SMALL, make_folder, noise_image

LATIN1 = b"latin\xe9.png"  # a Latin-1 name (as from a Windows share): not valid UTF-8


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Hung(BaseException):
    """A test ran out of time (not an OSError, which the code under test may catch)."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging forever (what a FIFO or /dev/zero did)."""

    def expired(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def save_bytes_name(folder: Path, name: bytes, seed: int) -> None:
    with open(os.path.join(os.fsencode(str(folder)), name), "wb") as handle:
        noise_image(seed).save(handle, "PNG")


@pytest.fixture(scope="module")
def embedder(random_weights):
    return load_embedder(random_weights, SMALL)


# -- Item 1: file names that are not UTF-8 -------------------------------------------------


def test_an_undecodable_file_name_gets_a_utf8_key_with_hex_escapes_and_is_still_read(tmp_path):
    folder = make_folder(tmp_path / "images", {"a": 2})
    save_bytes_name(folder / "a", LATIN1, 50)
    found = {image.path: image for image in find_images(folder)}
    assert sorted(found) == ["a/img_000.png", "a/img_001.png", "a/latin\\xe9.png"]
    latin = found["a/latin\\xe9.png"]
    latin.path.encode("utf-8")  # strict: a valid UTF-8 string
    assert os.fsencode(latin.absolute).endswith(b"/a/" + LATIN1)  # the real name, for reading
    assert decode_rgb(latin.absolute).shape == (40, 48, 3)
    assert found["a/img_000.png"].path == "a/img_000.png"  # names that decode are unchanged


def test_a_latin1_class_folder_gives_a_clean_label(tmp_path):
    folder = tmp_path / "images"
    latin_class = os.path.join(os.fsencode(str(folder)), b"caf\xe9")
    os.makedirs(latin_class)
    save_bytes_name(Path(os.fsdecode(latin_class)), b"x.png", 1)
    [image] = find_images(folder)
    assert (image.path, image.label) == ("caf\\xe9/x.png", "caf\\xe9")
    image.label.encode("utf-8")


def test_two_files_with_the_same_key_are_not_merged_silently(tmp_path):
    folder = make_folder(tmp_path / "images", {"a": 1})
    save_bytes_name(folder / "a", LATIN1, 50)
    (folder / "a" / "latin\\xe9.png").write_bytes((folder / "a" / "img_000.png").read_bytes())  # literal backslash
    scan = scan_images(folder)
    keys = [image.path for image in scan.files]
    assert keys == ["a/img_000.png", "a/latin\\xe9.png"]
    kept = scan.files[1]
    assert os.fsencode(kept.absolute).endswith(b"latin\\xe9.png")  # the name that is its own key wins
    [error] = scan.errors
    assert error["path"] == "a/latin\\xe9.png" and "same row key" in error["reason"] and "rename" in error["reason"]


@pytest.mark.slow
def test_extract_of_a_folder_with_a_latin1_name_writes_every_row_and_reuses_them(tmp_path, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2, "b": 2})
    save_bytes_name(folder / "a", LATIN1, 50)
    out = tmp_path / "emb.parquet"
    args = ["extract", folder, "-o", out, "--weights", random_weights, "--input-size", SMALL, "-q"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    frame, _ = load_embeddings(out)
    assert len(frame) == 5 and "a/latin\\xe9.png" in set(frame["path"])
    again = run(*args)
    assert again.exit_code == 0 and "embedded 0" in again.output and "reused 5" in again.output, again.output
    # The row keys travel to CSV files (predictions) as clean UTF-8.
    frame[["path", "label"]].to_csv(tmp_path / "rows.csv", index=False, encoding="utf-8", errors="strict")
    assert "a/latin\\xe9.png" in pd.read_csv(tmp_path / "rows.csv", encoding="utf-8")["path"].tolist()


@pytest.mark.slow
def test_an_images_folder_whose_own_name_is_not_utf8_is_recorded_exactly(tmp_path, random_weights):
    """The folder's path is file metadata (for the report's thumbnails): it crashed the final
    write with a UnicodeEncodeError; it is now stored as the folder's own bytes."""
    from cellembed import read_images_root

    folder = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"imgs\xe9"))
    make_folder(Path(folder), {"a": 2})
    out = tmp_path / "emb.parquet"
    args = ["extract", folder, "-o", out, "--weights", random_weights, "--input-size", SMALL, "--layers", "final", "-q"]
    assert run(*args).exit_code == 0
    assert read_images_root(out) == Path(folder).resolve() and Path(read_images_root(out), "a").is_dir()
    again = run(*args)
    assert again.exit_code == 0 and "embedded 0" in again.output and "reused 2" in again.output


# -- Item 4: folders that silently drop out ------------------------------------------------


def unlistable(monkeypatch, folder: Path) -> None:
    """Make ``folder`` fail to list: chmod 000 when not root, else an injected OSError."""
    if os.geteuid() != 0:
        folder.chmod(0)
        return
    real = os.scandir
    target = os.path.realpath(folder)

    def scandir(path="."):
        if os.path.realpath(os.fsdecode(path)) == target:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images", {"a": 2, "a/sub": 2, "b": 1})
    unlistable(monkeypatch, folder / "a" / "sub")
    try:
        scan = scan_images(folder)
    finally:
        (folder / "a" / "sub").chmod(0o755)
    assert [image.path for image in scan.files] == ["a/img_000.png", "a/img_001.png", "b/img_004.png"]
    assert scan.unlisted == ["a/sub"]
    [error] = scan.errors
    assert error["path"] == "a/sub/" and "cannot list this folder" in error["reason"]
    assert "Permission denied" in error["reason"]


def test_an_images_folder_that_cannot_be_listed_is_an_input_error(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images", {"a": 1})
    unlistable(monkeypatch, folder)
    try:
        with pytest.raises(InputError, match="cannot list the images folder .*images.*Permission denied"):
            find_images(folder)
    finally:
        folder.chmod(0o755)


@pytest.mark.slow
def test_cached_rows_under_an_unlistable_folder_are_kept_and_the_run_exits_3(tmp_path, monkeypatch, embedder, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2, "a/sub": 2, "b": 1})
    out = tmp_path / "emb.parquet"
    assert extract(folder, out, embedder=embedder, progress=False).rows == 5
    before, _ = load_embeddings(out)
    (folder / "empty").mkdir()
    unlistable(monkeypatch, folder / "a" / "sub")
    args = ["extract", folder, "-o", out, "--weights", random_weights, "--input-size", SMALL]
    try:
        result = run(*args)
        quiet = run(*args, "-q")
    finally:
        (folder / "a" / "sub").chmod(0o755)
    assert result.exit_code == 3, result.output
    assert "a/sub/" in result.output and "cannot list this folder" in result.output
    assert "dropped 0" in result.output
    assert "folder empty/ holds no images" in result.output  # the warning (item 4c)
    assert quiet.exit_code == 3 and "folder empty/ holds no images" in quiet.output
    after, _ = load_embeddings(out)
    assert after["path"].tolist() == before["path"].tolist()  # the 2 rows under a/sub are kept
    np.testing.assert_array_equal(np.stack(after["embedding"]), np.stack(before["embedding"]))
    assert pd.read_csv(tmp_path / "emb.errors.csv")["path"].tolist() == ["a/sub/"]
    monkeypatch.undo()
    healed = run(*args, "-q")
    assert healed.exit_code == 0 and "embedded 0" in healed.output, healed.output
    assert not (tmp_path / "emb.errors.csv").exists()


def test_a_symlinked_class_folder_is_followed_and_link_loops_end(tmp_path):
    elsewhere = make_folder(tmp_path / "elsewhere", {"": 2})
    folder = make_folder(tmp_path / "images", {"a": 1})
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "a" / "loop").symlink_to(folder, target_is_directory=True)  # a/loop -> images
    (folder / "a" / "self").symlink_to(".", target_is_directory=True)  # a/self -> a
    (folder / "0_alias").symlink_to("a", target_is_directory=True)  # walked before a/ by name
    with deadline(20):
        scan = scan_images(folder)
    assert {(image.path, image.label) for image in scan.files} == {
        ("a/img_000.png", "a"), ("linked/img_000.png", "linked"), ("linked/img_001.png", "linked"),
    }
    assert any("a/loop/" in w and "already listed" in w for w in scan.warnings), scan.warnings
    assert any("a/self/" in w and "already listed" in w for w in scan.warnings), scan.warnings
    assert any("0_alias/" in w and "already listed (a/)" in w for w in scan.warnings), scan.warnings


def test_empty_and_unsupported_only_folders_are_named_in_warnings(tmp_path):
    folder = make_folder(tmp_path / "images", {"a": 1})
    (folder / "empty").mkdir()
    (folder / "gifs").mkdir()
    noise_image(3).save(folder / "gifs" / "x.gif")
    noise_image(4).save(folder / "gifs" / "y.gif")
    (folder / "a" / "notes").mkdir()
    (folder / "a" / "notes" / "readme.txt").write_text("x")
    warnings = scan_images(folder).warnings
    assert any(w.startswith("folder empty/ holds no images") for w in warnings), warnings
    assert any("gifs/" in w and "2 .gif" in w and ".png" in w for w in warnings), warnings
    assert any("a/notes/" in w and "1 .txt" in w for w in warnings), warnings
    assert len(warnings) == 3


def test_webp_is_a_supported_format(tmp_path):
    from PIL import features

    assert features.check("webp")
    assert ".webp" in IMAGE_EXTENSIONS
    pixels = np.asarray(noise_image(5))
    Image.fromarray(pixels).save(tmp_path / "x.webp", lossless=True)
    assert [image.path for image in find_images(tmp_path)] == ["x.webp"]
    np.testing.assert_array_equal(decode_rgb(tmp_path / "x.webp"), pixels)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ".webp" in readme


# -- Item 7: resources ---------------------------------------------------------------------


def big_png(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    """A few hundred KB on disk, hundreds of MB decoded."""
    Image.new(mode, (width, height), (200, 30, 90) if mode == "RGB" else 128).save(path, compress_level=9)
    return path


def test_an_image_over_the_pixel_cap_is_an_error_decided_from_its_header(tmp_path):
    path = big_png(tmp_path / "huge.png", 9000, 9000)
    assert path.stat().st_size < 1_000_000
    assert 20_000_000 <= DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    decoded = load_for_network(path, SMALL)  # the default cap applies
    assert decoded.pixels is None
    assert decoded.error == f"image is 9000 x 9000 pixels, more than --max-pixels {DEFAULT_MAX_PIXELS}"
    assert decoded.transient  # tried again by the next run (perhaps with a larger cap)
    with pytest.raises(DecodeError, match="image is 9000 x 9000 pixels, more than --max-pixels 1000"):
        decode_rgb(path, max_pixels=1000)


@pytest.mark.parametrize("size", [SMALL, 299])
def test_sample_images_decode_exactly_as_before(size):
    """Reducing big images must not touch normal ones, at any input size: cached
    embeddings stay valid."""
    for path in sorted(SAMPLE.glob("*/*.jpg"))[:16]:
        with Image.open(path) as image:
            image.load()
            reference = resize_bilinear(to_rgb8(image), size)
        np.testing.assert_array_equal(load_for_network(path, size).pixels, reference)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_big_image_is_reduced_before_resizing_and_looks_the_same(tmp_path, fmt):
    y, x = np.mgrid[0:2600, 0:2400]  # 6.2 Mpx: above REDUCE_ABOVE_PIXELS
    smooth = np.stack([x * 255 // 2400, y * 255 // 2600, (x + y) * 255 // 5000], axis=2).astype(np.uint8)
    path = tmp_path / f"big.{fmt.lower()}"
    Image.fromarray(smooth).save(path, fmt, quality=95) if fmt == "JPEG" else Image.fromarray(smooth).save(path)
    decoded = load_for_network(path, SMALL)
    assert (decoded.width, decoded.height) == (2400, 2600)  # the original size is recorded
    full = resize_bilinear(smooth, SMALL)
    assert np.abs(decoded.pixels - full).mean() < 2.0
    rgb = decode_rgb(path, reduce_to=SMALL)
    assert min(rgb.shape[:2]) >= 2 * SMALL and max(rgb.shape[:2]) <= 320  # reduced, but kept >= 2x
    crop = smooth[:1000, :1000]  # 1 Mpx, 14x the input: decoded whole, as it always was
    np.testing.assert_array_equal(decode_rgb(crop, reduce_to=SMALL), crop)


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "PA", "LA", "RGBA", "CMYK", "1"])
def test_every_mode_reduces_like_its_full_decode(mode):
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (2100, 2000, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        image = Image.fromarray((rng.integers(0, 65536, (2100, 2000))).astype(np.uint16))
    elif mode in ("P", "PA"):
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image = image.convert("PA") if mode == "PA" else image
    else:
        image = base.convert(mode)
    reduced = decode_rgb(image, reduce_to=SMALL)
    factor = 2000 // (2 * SMALL)
    expected = np.asarray(Image.fromarray(decode_rgb(image)).reduce(factor), dtype=np.float64)
    assert reduced.shape == expected.shape
    assert np.abs(reduced - expected).mean() < 3.0  # the same picture (alpha: averaged premultiplied)


@pytest.mark.slow
def test_decoding_a_big_png_does_not_blow_up_memory(tmp_path):
    path = big_png(tmp_path / "big.png", 7000, 7000)  # 49 megapixels, under the default cap
    script = (
        "import resource, sys\n"
        "from cellembed.decoding import load_for_network\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = load_for_network(sys.argv[1], 299)\n"
        "assert decoded.error is None, decoded.error\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_mb = int(done.stdout.split()[-1])
    # 49 Mpx as RGB uint8 is 147 MB; the old float32 copy of the full image alone was 588 MB.
    assert grown_mb < 400, f"decoding grew the process by {grown_mb} MB"


@pytest.mark.slow
def test_max_pixels_option_makes_error_rows_and_a_higher_cap_retries_them(tmp_path, embedder, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2})
    big_png(folder / "a" / "big.png", 3000, 2000)
    out = tmp_path / "emb.parquet"
    result = extract(folder, out, embedder=embedder, progress=False, max_pixels=1_000_000)
    assert result.rows == 2
    assert [(e["path"], e["reason"]) for e in result.errors] == [
        ("a/big.png", "image is 3000 x 2000 pixels, more than --max-pixels 1000000")
    ]
    cli = run("extract", folder, "-o", out, "--weights", random_weights, "--input-size", SMALL, "-q",
              "--max-pixels", 1_000_000)
    assert cli.exit_code == 3 and "more than --max-pixels 1000000" in cli.output, cli.output
    again = extract(folder, out, embedder=embedder, progress=False, max_pixels=6_000_000)
    assert (again.embedded, again.rows, again.errors) == (1, 3, [])
    assert "--max-pixels" in run("extract", "--help").output


# -- Item 7: only regular files are read -------------------------------------------------


def test_fifos_and_devices_named_like_images_are_errors_not_hangs(tmp_path):
    folder = make_folder(tmp_path / "images", {"a": 1})
    os.mkfifo(folder / "a" / "x.jpg")
    (folder / "a" / "zero.jpg").symlink_to("/dev/zero")
    with deadline(20):
        scan = scan_images(folder)
        with pytest.raises(OSError, match="not a regular file"):
            sha256_file(folder / "a" / "x.jpg")
        with pytest.raises(OSError, match="not a regular file"):
            sha256_file(folder / "a" / "zero.jpg")
        with pytest.raises(DecodeError, match="not a regular file"):
            decode_rgb(folder / "a" / "zero.jpg")
    assert [image.path for image in scan.files] == ["a/img_000.png"]
    assert [(e["path"], e["reason"]) for e in scan.errors] == [
        ("a/x.jpg", "not a regular file (a FIFO); only regular files are read"),
        ("a/zero.jpg", "not a regular file (a character device); only regular files are read"),
    ]


@pytest.mark.slow
def test_extract_with_a_fifo_and_a_dev_zero_link_finishes(tmp_path, embedder):
    folder = make_folder(tmp_path / "images", {"a": 2})
    os.mkfifo(folder / "a" / "x.jpg")
    (folder / "a" / "zero.jpg").symlink_to("/dev/zero")
    with deadline(120):
        result = extract(folder, tmp_path / "emb.parquet", embedder=embedder, progress=False)
    assert result.rows == 2 and [e["path"] for e in result.errors] == ["a/x.jpg", "a/zero.jpg"]


# -- Item 9: EXIF orientation is ignored (documented) ------------------------------------


def test_exif_orientation_is_ignored_as_documented(tmp_path):
    pixels = np.asarray(noise_image(11, (40, 30)))
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as check:
        assert check.getexif().get(274) == 6
    np.testing.assert_array_equal(decode_rgb(tmp_path / "o.png"), pixels)  # stored layout, not rotated
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "EXIF orientation" in readme
