"""The taps: stable names, equality with plain Keras Xception, weights errors."""

from __future__ import annotations

import numpy as np
import pytest

from cellembed import load_embedder
from cellembed.backbones import get_backbone, parse_layers
from cellembed.decoding import load_for_network
from cellembed.engines import ENGINES, unavailable
from cellembed.errors import InputError
from cellembed.weights import resolve_weights
from conftest import SMALL, make_folder


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)
XCEPTION = get_backbone("xception")
TAP_PRESETS = XCEPTION.tap_presets
#: Every engine, skipped where this machine cannot run it (the GPU engine without a GPU).
ENGINES_HERE = [pytest.param(e, marks=pytest.mark.skipif(bool(unavailable(e)), reason=str(unavailable(e))))
                for e in ENGINES]


def _plain_xception(weights, size, pooling=None):
    import keras

    model = keras.applications.Xception(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling=pooling
    )
    model.load_weights(weights)
    return model


def _pixels(folder, size):
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return np.stack([load_for_network(p, size).pixels for p in paths])


def _independent_tap_outputs(weights, size, pixels):
    """Pooled outputs of the multiscale layers, found by position without cellembed code."""
    import keras

    model = _plain_xception(weights, size)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    layers = [adds[2], adds[6], adds[10], adds[11], model.get_layer("block14_sepconv2_act")]
    probe = keras.Model(model.input, [layer.output for layer in layers])
    outputs = probe.predict(keras.applications.xception.preprocess_input(pixels.copy()), verbose=0)
    return [np.asarray(o).mean(axis=(1, 2)) for o in outputs]


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_multiscale_taps_equal_the_pooled_layer_outputs(random_weights, tmp_path, engine):
    pixels = _pixels(make_folder(tmp_path, {"a": 3}), SMALL)
    embedder = load_embedder(random_weights, SMALL, "multiscale", engine, preset="v1")
    spec = embedder.spec
    assert spec.tap_names == list(TAP_PRESETS["multiscale"])
    assert [t.width for t in spec.taps] == [728, 728, 728, 1024, 2048]
    assert [t.offset for t in spec.taps] == [0, 728, 1456, 2184, 3208] and spec.dim == 5256
    embedding = embedder.embed(pixels)
    for tap, expected in zip(spec.taps, _independent_tap_outputs(random_weights, SMALL, pixels)):
        np.testing.assert_allclose(embedding[:, tap.offset : tap.stop], expected, atol=1e-4, err_msg=tap.name)


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_final_tap_equals_keras_xception_avg_pooling(random_weights, tmp_path, engine):
    import keras

    pixels = _pixels(make_folder(tmp_path, {"a": 4}), SMALL)
    embedder = load_embedder(random_weights, SMALL, "final", engine, preset="v1")
    assert embedder.spec.dim == 2048
    reference = _plain_xception(random_weights, SMALL, pooling="avg")
    expected = reference.predict(keras.applications.xception.preprocess_input(pixels.copy()), verbose=0)
    np.testing.assert_allclose(embedder.embed(pixels), expected, atol=1e-4)


def test_taps_resolve_by_position_when_keras_renamed_the_layers(random_weights):
    import keras

    # Every Xception built earlier in this process shifted Keras' automatic names.
    first = load_embedder(random_weights, SMALL, "add_6", "tensorflow", preset="v1")
    second = load_embedder(random_weights, SMALL, "add_6", "tensorflow", preset="v1")
    live_names = [l.name for l in second.extractor.model.layers if isinstance(l, keras.layers.Add)]
    assert "add_6" not in live_names or live_names.index("add_6") == 6
    x = np.random.default_rng(0).uniform(0, 255, (2, SMALL, SMALL, 3)).astype(np.float32)
    np.testing.assert_allclose(first.embed(x), second.embed(x), atol=1e-5)
    assert second.spec.tap_names == ["add_6"] and second.spec.dim == 728


def test_unknown_layer_is_an_input_error_listing_valid_names(random_weights):
    with pytest.raises(InputError) as info:
        load_embedder(random_weights, SMALL, "add_6,block99_nothing", preset="v1")
    message = str(info.value)
    assert "block99_nothing" in message and "add_11" in message and "block14_sepconv2_act" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="more than once"):
        parse_layers(XCEPTION, "add_2,add_2")


def test_weights_errors_name_the_file(tmp_path, random_weights):
    import keras

    with pytest.raises(InputError, match="missing.weights.h5.*does not exist"):
        resolve_weights(tmp_path / "missing.weights.h5", XCEPTION)
    wrong = tmp_path / "dense.weights.h5"
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    small.save_weights(wrong)
    with pytest.raises(InputError, match="dense.weights.h5 does not fit Xception"):
        load_embedder(wrong, SMALL, "final", preset="v1")
    # A file holding only the first blocks of Xception must not load "partly".
    full = keras.applications.Xception(include_top=False, weights=None, input_shape=(SMALL, SMALL, 3))
    partial = tmp_path / "partial.weights.h5"
    keras.Model(full.input, full.get_layer("block3_pool").output).save_weights(partial)
    with pytest.raises(InputError, match="partial.weights.h5 does not fit Xception"):
        load_embedder(partial, SMALL, "final", preset="v1")
    with pytest.raises(InputError, match="too small"):
        load_embedder(random_weights, 32, "final", preset="v1")


def test_weights_come_from_the_environment_variable(monkeypatch, random_weights):
    monkeypatch.setenv("CELLEMBED_WEIGHTS", str(random_weights))
    resolved = resolve_weights(None, XCEPTION)
    assert resolved.path == random_weights.resolve()
    assert len(resolved.sha256) == 64


def test_weights_given_once_are_found_again_and_a_failed_download_says_why(monkeypatch, random_weights, tmp_path):
    """Issue 24 §5: after `make demo` (which sets $CELLEMBED_WEIGHTS) a command typed by hand
    on an offline machine finds the same weights; without any, the download's cause is said."""
    import keras

    monkeypatch.setenv("CELLEMBED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CELLEMBED_WEIGHTS", raising=False)

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(InputError, match=r"\(OSError: Temporary failure in name resolution\).*--weights PATH.*remembered"):
        resolve_weights(None, XCEPTION)
    copy = tmp_path / "xception.weights.h5"
    copy.write_bytes(random_weights.read_bytes())
    monkeypatch.setenv("CELLEMBED_WEIGHTS", str(copy))
    assert resolve_weights(None, XCEPTION).path == copy.resolve()
    monkeypatch.delenv("CELLEMBED_WEIGHTS")
    again = resolve_weights(None, XCEPTION)  # the variable is gone: the file given before
    assert again.path == copy.resolve() and again.source == copy.name
    assert resolve_weights(random_weights, XCEPTION).path == random_weights.resolve()  # --weights: remembered
    assert resolve_weights(None, XCEPTION).path == random_weights.resolve()
    random_moved = tmp_path / "gone.weights.h5"
    copy.rename(random_moved)
    resolve_weights(random_moved, XCEPTION)
    random_moved.unlink()  # a remembered file that is gone: the download again
    with pytest.raises(InputError, match="could not download"):
        resolve_weights(None, XCEPTION)


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_real_weights_final_tap_matches_keras_on_sample_images(real_weights, sample_subset, engine):
    """Integration: ImageNet weights, 299x299, real CellaVision images."""
    import keras

    pixels = _pixels(sample_subset, 299)[:6]
    embedder = load_embedder(real_weights, 299, "multiscale", engine, preset="v1")
    embedding = embedder.embed(pixels)
    final = embedder.spec.tap_slices(["block14_sepconv2_act"])[0]
    reference = _plain_xception(real_weights, 299, pooling="avg")
    expected = reference.predict(keras.applications.xception.preprocess_input(pixels.copy()), verbose=0)
    np.testing.assert_allclose(embedding[:, final], expected, atol=1e-4)
    assert embedder.spec.weights_sha256 == "c51edf65daf73e3039178bb3c0fe422245dde203bfa7500bbdba74ee409817ae"
