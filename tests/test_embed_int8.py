"""int8 (issue 23 §1): a quantised copy of the network, made once, cached, checked against
fp32, and a precision of its own in the spec, so int8 and fp32 embeddings never mix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import cellembed.engines.int8 as int8_module
import cellembed.engines.onnxruntime_engine as onnx_engine
from cellembed import extract, load_embedder, read_spec
from cellembed.calibration import calibration_files, calibration_pixels
from cellembed.errors import InputError
from cellembed.precision import INT8_INSTRUCTIONS, int8_advice, int8_instructions
from conftest import SMALL

pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_is_quantised_once_cached_and_close_to_fp32_but_not_the_same(random_weights, monkeypatch):
    fp32 = load_embedder(random_weights, SMALL, "final", preset="v1")
    int8 = load_embedder(random_weights, SMALL, "final", preset="v1", precision="int8")
    assert (fp32.spec.precision, int8.spec.precision) == ("fp32", "int8")
    assert int8.spec.differences(fp32.spec) == ["precision: int8 vs fp32"]
    assert "precision" not in fp32.spec.identity()  # an fp32 spec keeps the identity it had before int8
    assert len(list(onnx_engine.cache_dir().glob("*-int8-*.onnx"))) == 1
    pixels = calibration_pixels(int8.spec)[::16]
    assert pixels.shape == (4, SMALL, SMALL, 3)
    a, b = fp32.embed(pixels), int8.embed(pixels)
    assert _cosines(a, b).min() >= int8_module.MIN_COSINE
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()  # close, not the same: a precision of its own

    def no_quantisation(*args, **kwargs):
        raise AssertionError("quantised again although the cache holds the int8 network")

    monkeypatch.setattr(int8_module, "quantise", no_quantisation)
    again = load_embedder(random_weights, SMALL, "final", preset="v1", precision="int8")
    np.testing.assert_array_equal(again.embed(pixels), b)


def test_an_int8_network_too_far_from_fp32_is_refused_and_not_cached(random_weights, monkeypatch, tmp_path):
    # A cache folder holding only the float32 conversion (no int8 copy yet).
    fp32 = load_embedder(random_weights, SMALL, "final", preset="v1")
    converted = next(p for p in onnx_engine.cache_dir().glob("xception-*.onnx") if "-int8-" not in p.name
                     and list(onnx_engine.OnnxTapExtractor(p).taps) == fp32.spec.tap_names)
    shutil.copy(converted, tmp_path / converted.name)
    monkeypatch.setenv("CELLEMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(int8_module, "MIN_COSINE", 1.01)
    with pytest.raises(InputError, match=r"too far from fp32.*--precision fp32"):
        load_embedder(random_weights, SMALL, "final", preset="v1", precision="int8")
    assert not list(tmp_path.glob("*-int8-*.onnx"))


def test_int8_and_fp32_embeddings_never_share_a_file(labelled_folder, tmp_path, random_weights):
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, weights=random_weights, input_size=SMALL, preset="v1", layers="final",
            progress=False)
    original = out.read_bytes()
    with pytest.raises(InputError, match=r"precision: int8 vs fp32.*--overwrite"):
        extract(labelled_folder, out, weights=random_weights, input_size=SMALL, preset="v1", layers="final",
                precision="int8", progress=False)
    assert out.read_bytes() == original
    result = extract(labelled_folder, out, weights=random_weights, input_size=SMALL, preset="v1", layers="final",
                     precision="int8", overwrite=True, progress=False)
    assert result.embedded == 12 and read_spec(out).precision == "int8"


def test_int8_on_an_engine_that_cannot_run_it_is_one_line_exit_2(tmp_path, labelled_folder, random_weights):
    from click.testing import CliRunner

    from cellembed.cli import main

    result = CliRunner().invoke(main, [
        "extract", str(labelled_folder), "-o", str(tmp_path / "e.parquet"), "--weights", str(random_weights),
        "--input-size", str(SMALL), "--precision", "int8", "--engine", "tensorflow", "-q"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == "Error: int8 runs on --engine onnxruntime only, not on tensorflow"
    assert not (tmp_path / "e.parquet").exists()


def test_the_calibration_cells_are_the_project_sample_and_the_cpu_is_read():
    files = calibration_files()
    assert len(files) == 64 and len({f.parent.name for f in files}) == 8
    found = int8_instructions()
    assert set(found) <= set(INT8_INSTRUCTIONS)
    assert (int8_advice() is None) == bool(found)


def test_auto_is_int8_where_the_cpu_has_the_instructions_and_the_engine_runs_it(monkeypatch, random_weights):
    import cellembed.precision as precision
    from cellembed.embedder import spec_for_settings

    monkeypatch.delenv("CELLEMBED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "int8_instructions", lambda: ("avx512_vnni",))
    assert precision.resolve_precision("auto", True) == "int8"
    assert precision.resolve_precision("auto", False) == "fp32"  # an engine without int8
    assert precision.resolve_precision("fp32", True) == "fp32"
    settings = dict(weights=random_weights, input_size=SMALL)
    assert spec_for_settings(**settings)[0].precision == "int8"  # the default preset
    assert spec_for_settings(engine="tensorflow", **settings)[0].precision == "fp32"
    assert spec_for_settings(preset="v1", **settings)[0].precision == "fp32"  # the first version's
    import cellembed.calibration as calibration

    monkeypatch.setattr(calibration, "CALIBRATION_FOLDER", Path("/nonexistent/data/sample"))
    assert precision.resolve_precision("auto", True) == "fp32"  # pip install . without data/sample: not an error
    monkeypatch.undo()
    monkeypatch.delenv("CELLEMBED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "int8_instructions", lambda: ())
    assert precision.resolve_precision("auto", True) == "fp32"  # no VNNI / AMX: fp32
    assert spec_for_settings(**settings)[0].precision == "fp32"
    monkeypatch.setenv("CELLEMBED_PRECISION", "int8")
    assert precision.resolve_precision("auto", True) == "int8"  # the lab's choice wins
    monkeypatch.setenv("CELLEMBED_PRECISION", "fp16")
    with pytest.raises(InputError, match=r"\$CELLEMBED_PRECISION is 'fp16'"):
        precision.resolve_precision("auto", True)


def test_an_existing_file_keeps_its_precision_when_auto_chooses(labelled_folder, tmp_path, random_weights, monkeypatch):
    import cellembed.precision as precision
    from conftest import noise_image

    out = tmp_path / "emb.parquet"
    settings = dict(weights=random_weights, input_size=SMALL, layers="final", progress=False)
    extract(labelled_folder, out, **settings)
    assert read_spec(out).precision == "fp32"  # auto, fixed to fp32 by the suite
    monkeypatch.delenv("CELLEMBED_PRECISION")
    monkeypatch.setattr(precision, "int8_instructions", lambda: ("avx512_vnni",))  # auto now means int8
    noise_image(99).save(labelled_folder / "alpha" / "new.png")
    lines = []
    result = extract(labelled_folder, out, log=lines.append, **settings)
    assert (result.embedded, result.reused, read_spec(out).precision) == (1, 12, "fp32")
    assert any("holds fp32 embeddings: extending it in fp32" in line for line in lines)
    with pytest.raises(InputError, match="precision: int8 vs fp32"):  # asked for: never mixed in
        extract(labelled_folder, out, precision="int8", **settings)
