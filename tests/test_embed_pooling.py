"""`--pooling`: each tap's channel means, and with global_average+std their standard deviations."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cellembed import load_embedder, read_spec
from cellembed.backbones import get_backbone
from cellembed.cli import main as cellembed_main
from cellembed.errors import InputError
from cellembed.weights import load_weights, resolve_weights
from conftest import SMALL, make_folder

pytestmark = pytest.mark.slow  # builds networks

TAPS = "add_2,add_11"


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SMALL, SMALL, 3)).astype(np.float32)


def _feature_maps(weights, pixels: np.ndarray) -> list[np.ndarray]:
    """The taps' (n, H, W, C) maps, from a plain Keras model of the same weights."""
    import keras

    backbone = get_backbone("xception")
    network = backbone.build(SMALL)
    load_weights(network, resolve_weights(weights, backbone), backbone)
    layers = backbone.layers(network)
    model = keras.Model(network.input, [layers[name].output for name in TAPS.split(",")])
    # preprocess_input scales a NumPy array in place: give it a copy
    return [np.asarray(m) for m in model(backbone.preprocess(pixels.copy()), training=False)]


def test_std_pooling_appends_each_channels_spread_and_both_engines_agree(random_weights):
    pixels = _pixels(3)
    maps = _feature_maps(random_weights, pixels)
    expected = np.concatenate([np.concatenate([m.mean(axis=(1, 2)), m.std(axis=(1, 2))], axis=1) for m in maps], axis=1)
    for engine in ("tensorflow", "onnxruntime"):
        embedder = load_embedder(random_weights, SMALL, TAPS, engine=engine, preset="v1", pooling="global_average+std")
        spec = embedder.spec
        assert spec.pooling == "global_average+std"
        assert [t.width for t in spec.taps] == [2 * 728, 2 * 1024]
        got = embedder.embed(pixels)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=engine)
    average = load_embedder(random_weights, SMALL, TAPS, preset="v1")
    assert average.spec.pooling == "global_average" and average.spec.dim == 728 + 1024
    np.testing.assert_allclose(average.embed(pixels), np.concatenate([m.mean(axis=(1, 2)) for m in maps], axis=1),
                               atol=1e-4, rtol=1e-4)


def test_a_file_of_other_pooling_is_refused_and_an_unknown_pooling_named(tmp_path, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2})
    out = tmp_path / "e.parquet"
    args = ["extract", str(folder), "-o", str(out), "--weights", str(random_weights), "--input-size", str(SMALL),
            "--preset", "v1", "--layers", "add_2", "-q"]
    assert CliRunner().invoke(cellembed_main, args).exit_code == 0
    refused = CliRunner().invoke(cellembed_main, [*args, "--pooling", "global_average+std"])
    assert refused.exit_code == 2 and "pooling: global_average+std vs global_average" in refused.output, refused.output
    assert read_spec(out).pooling == "global_average" and read_spec(out).dim == 728
    unknown = CliRunner().invoke(cellembed_main, [*args, "--pooling", "gem"])
    assert unknown.exit_code == 2 and "--pooling" in unknown.output
    with pytest.raises(InputError, match="unknown --pooling 'gem'; choose one of global_average, global_average"):
        load_embedder(random_weights, SMALL, "add_2", preset="v1", pooling="gem")
