"""The ONNX Runtime engine: converted once, cached, checked, interchangeable with TensorFlow."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import cellembed.engines.onnxruntime_engine as onnx_engine
from cellembed import extract, load_embedder, load_embeddings, read_spec
from cellembed.embedder import embedder_from_spec
from cellembed.preparation import preparation_for
from cellembed.backbones import get_backbone
from cellembed.decoding import load_for_network
from cellembed.errors import InputError
from cellembed.weights import resolve_weights
from conftest import SMALL, make_folder


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)

def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SMALL, SMALL, 3)).astype(np.float32)


def _cache_file(weights, taps):
    return onnx_engine.cached_model_path("xception", resolve_weights(weights, get_backbone("xception")).sha256, SMALL, taps)


def test_conversion_is_cached_and_reused_without_tensorflow_model(random_weights, monkeypatch, tmp_path):
    first = load_embedder(random_weights, SMALL, "final", preset="v1")
    path = _cache_file(random_weights, ["block14_sepconv2_act"])
    assert path.is_file() and path.parent == onnx_engine.cache_dir()
    assert "onnxruntime" in first.spec.versions

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this network")

    monkeypatch.setattr(onnx_engine, "converted", no_conversion)
    renamed = tmp_path / "same-weights-renamed.weights.h5"  # same bytes: same SHA-256
    shutil.copy(random_weights, renamed)
    second = load_embedder(renamed, SMALL, "final", preset="v1")
    assert second.spec.identity() == first.spec.identity() and second.spec.versions == first.spec.versions
    # The provenance is this run's, not the one recorded when the model was converted.
    assert (first.spec.weights_source, second.spec.weights_source) == (random_weights.name, renamed.name)
    np.testing.assert_array_equal(second.embed(_pixels(3)), first.embed(_pixels(3)))


def test_damaged_cache_file_is_converted_again_in_a_child_process(random_weights, tmp_path, monkeypatch):
    """A damaged cache file is replaced by a new conversion, made in a child process with
    the pure-Python protobuf backend, whose temporary files are all removed."""
    import subprocess
    import tempfile

    reference = load_embedder(random_weights, SMALL, "add_6", "tensorflow", preset="v1")
    path = _cache_file(random_weights, ["add_6"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx model")
    calls, real_run = [], subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append((command, kw["env"])) or real_run(command, **kw))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the child's files go
    embedder = load_embedder(random_weights, SMALL, "add_6", preset="v1")
    np.testing.assert_allclose(embedder.embed(_pixels(2)), reference.embed(_pixels(2)), atol=1e-4)
    assert path.read_bytes() != b"not an onnx model"
    [(command, env)] = calls
    assert command[1:3] == ["-m", "cellembed.engines.onnx_conversion"]
    assert env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] == "python"
    assert command[3].startswith(str(tmp_path / "cellembed-convert-"))  # the request file
    assert not list(tmp_path.glob("cellembed-convert-*"))  # request, model and reference removed


def test_a_cached_model_of_other_taps_is_not_trusted(random_weights):
    from cellembed.embedder import spec_for_settings

    load_embedder(random_weights, SMALL, "final", preset="v1")
    final_model = _cache_file(random_weights, ["block14_sepconv2_act"])
    add_6, _ = spec_for_settings(weights=random_weights, input_size=SMALL, layers="add_6", preset="v1")
    assert onnx_engine._open_cached(final_model, add_6.tap_names, None) is None
    final, _ = spec_for_settings(weights=random_weights, input_size=SMALL, layers="final", preset="v1")
    assert onnx_engine._open_cached(final_model, final.tap_names, None).taps == ("block14_sepconv2_act",)


def test_unwritable_cache_folder_only_warns(random_weights, tmp_path, monkeypatch):
    """Given a conversion (the cached one: no need to convert again here), an unwritable
    cache folder only costs a warning."""
    from contextlib import contextmanager

    from cellembed.engines.onnx_conversion import probe_pixels

    load_embedder(random_weights, SMALL, "final", preset="v1")  # converted once per session
    model = _cache_file(random_weights, ["block14_sepconv2_act"])
    probe_output = load_embedder(random_weights, SMALL, "final", "tensorflow", preset="v1").extractor(probe_pixels(SMALL))

    @contextmanager
    def already_converted(backbone, weights, taps, size):
        yield model, probe_output

    monkeypatch.setattr(onnx_engine, "converted", already_converted)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("CELLEMBED_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not cache the converted model.*CELLEMBED_CACHE_DIR"):
        embedder = load_embedder(random_weights, SMALL, "final", preset="v1")
    assert embedder.embed(_pixels(1)).shape == (1, 2048)


def test_a_conversion_that_differs_from_tensorflow_is_refused(random_weights):
    from cellembed.engines.onnx_conversion import probe_pixels

    extractor = load_embedder(random_weights, SMALL, "final", preset="v1").extractor
    reference = load_embedder(random_weights, SMALL, "final", "tensorflow", preset="v1").extractor(probe_pixels(SMALL))
    onnx_engine.check_same_output(extractor, reference)
    with pytest.raises(InputError, match="differs from TensorFlow by 0.01.*--engine tensorflow"):
        onnx_engine.check_same_output(extractor, {tap: maps + 0.01 for tap, maps in reference.items()})


def test_engines_share_one_embeddings_file(random_weights, labelled_folder, tmp_path):
    out = tmp_path / "e.parquet"
    first = extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final",
                    engine="tensorflow", progress=False)
    assert first.embedded == 12 and "onnxruntime" not in first.spec.versions
    make_folder(labelled_folder, {"beta": 1}, start_seed=50)
    second = extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final",
                     progress=False)
    assert (second.embedded, second.reused, second.rows) == (1, 12, 13)
    frame, _ = load_embeddings(out)
    new = frame.set_index("path").loc["beta/img_050.png", "embedding"]
    spec = read_spec(out)
    keras_embedder = embedder_from_spec(spec, random_weights, "tensorflow")
    pixels = load_for_network(labelled_folder / "beta" / "img_050.png", SMALL, prepare=preparation_for(spec)).pixels
    expected = keras_embedder.embed(pixels[None])
    # random weights give tiny floats: compare relative to their scale, not with a 1e-4 floor
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(np.asarray(new)[None], expected, rtol=1e-3, atol=1e-4 * scale)
    with pytest.raises(InputError, match="unknown --engine 'torch'"):
        extract(labelled_folder, out, weights=random_weights, input_size=SMALL, engine="torch", progress=False)
