"""One battery per registry, run over every registered entry (as Keras' MODEL_LIST table and
scikit-learn's check_estimator): a backbone x engine pair, and a distributor, gets the whole
battery by being registered. (Model families: tests/test_family_conformance.py.)"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from cellembed import backbones, distributors, engines
from cellembed.errors import InputError
from conftest import SMALL, make_folder
from test_onnx_backbone import describe

pytestmark = pytest.mark.slow  # builds networks

#: A small network of each registered backbone, with random weights: name ->
#: (tmp folder, random Xception weights) -> (the --weights value, --input-size or None).
TEST_NETWORKS = {
    "xception": lambda folder, random_weights: (random_weights, SMALL),
    "onnx": lambda folder, random_weights: (describe(folder / "network"), None),
}


def test_every_registered_backbone_has_a_test_network():
    assert set(TEST_NETWORKS) == set(backbones.backbone_names())


def _runs(engine: str, framework: str) -> bool:
    return framework in importlib.import_module(engines._MODULES[engine][0]).FRAMEWORKS


@pytest.mark.parametrize("engine", engines.ENGINES)
@pytest.mark.parametrize("name", backbones.backbone_names())
def test_backbone_and_engine(name, engine, tmp_path, random_weights):
    if engines.unavailable(engine):  # the GPU engine on a machine without one: tests/test_embed_gpu_engine.py
        pytest.skip(engines.unavailable(engine))
    from cellembed.embedder import embedder_from_spec, spec_for_settings
    from cellembed.weights import resolve_weights

    weights, size = TEST_NETWORKS[name](tmp_path, random_weights)
    generic = backbones.get_backbone(name)
    backbone = generic.configured(resolve_weights(weights, generic))
    assert backbone.name == name and backbone.spec_name == generic.spec_name
    assert backbone.default_layers in backbone.tap_presets and backbone.framework in ("keras", "onnx")
    if not _runs(engine, backbone.framework):  # refused in one line, naming the engine that runs it
        with pytest.raises(InputError, match=f"--engine {engine} does not run {backbone.framework} networks"):
            spec_for_settings(backbone=name, weights=weights, input_size=size, engine=engine, preset="v1")
        return
    spec, resolved = spec_for_settings(backbone=name, weights=weights, input_size=size, engine=engine,
                                       views=2, pooling="global_average+std", crop="none", stain="none")
    # the spec is whole before any network is built: its tap widths come from the configuration
    taps = list(backbone.tap_presets[backbone.default_layers])
    assert spec.tap_names == taps and [t.width for t in spec.taps] == [2 * c for c in backbone.tap_channels(taps)]
    with pytest.raises(InputError, match="unknown .* no_such_tap in --layers"):
        backbone.tap_channels([taps[0], "no_such_tap"])
    network = embedder_from_spec(spec, resolved, engine)
    assert network.spec == spec and [network.extractor.channels[t] for t in taps] == backbone.tap_channels(taps)
    size = network.spec.input_size
    pixels = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    maps = network.extractor(pixels)
    assert list(maps) == network.spec.tap_names
    for tap, array in maps.items():
        assert array.ndim == 4 and array.shape[0] == 3 and array.shape[-1] == network.extractor.channels[tap]
    embedding = network.embed(pixels)
    assert embedding.shape == (3, network.spec.dim) and embedding.dtype == np.float32 and np.isfinite(embedding).all()
    scale = float(np.abs(embedding).max())
    assert scale > 0
    # the heat-map material is of the same forward passes: its mean is the embedding
    np.testing.assert_allclose(network.maps(pixels).embedding(), embedding, rtol=1e-4, atol=1e-5 * scale)
    # an image's embedding does not depend on the batch it is in
    np.testing.assert_allclose(network.embed(pixels[1:2]), embedding[1:2], rtol=1e-4, atol=1e-5 * scale)
    assert network.embed(pixels[:0]).shape == (0, network.spec.dim)
    # the spec it writes rebuilds the same network
    again = embedder_from_spec(network.spec, resolved, engine)
    np.testing.assert_allclose(again.embed(pixels), embedding, rtol=1e-4, atol=1e-5 * scale)
    assert all(isinstance(role, str) for role in network.tap_roles().values())
    # every engine that runs this framework gives the same embeddings
    for other in engines.ENGINES:
        if other != engine and _runs(other, backbone.framework) and not engines.unavailable(other):
            theirs = embedder_from_spec(network.spec, resolved, other).embed(pixels)
            np.testing.assert_allclose(theirs, embedding, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("name", [n for n in backbones.backbone_names() if backbones.get_backbone(n).framework == "keras"])
def test_a_keras_backbones_configuration_knows_every_layers_channels(name):
    """The widths of a spec come from the configuration, never from building the network:
    for a Keras backbone its table of layers is the built model's, layer for layer."""
    backbone = backbones.get_backbone(name)
    layers = backbone.layers(backbone.build(backbone.min_input_size))
    assert backbone.tap_channels(list(layers)) == [int(layer.output.shape[-1]) for layer in layers.values()]


@pytest.mark.parametrize("name", distributors.DISTRIBUTORS)
def test_distributor(name, tmp_path, random_weights):
    """Every distributor writes the same file as the sequential one (same rows, same floats
    within 1e-6), and a second run reuses every image."""
    from cellembed import extract, load_embeddings

    if name == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    folder = make_folder(tmp_path / "images", {"a": 3, "b": 3})
    settings = dict(weights=random_weights, input_size=SMALL, layers="add_6", preset="v1", progress=False)
    reference = extract(folder, tmp_path / "reference.parquet", **settings)
    out = Path(tmp_path / f"{name}.parquet")
    done = extract(folder, out, distributed=name, checkpoint_every=2, **settings)
    assert (done.embedded, done.rows) == (reference.embedded, reference.rows) == (6, 6)
    theirs, _ = load_embeddings(out)
    ours, _ = load_embeddings(tmp_path / "reference.parquet")
    theirs, ours = theirs.set_index("path").sort_index(), ours.set_index("path").sort_index()
    assert list(theirs.index) == list(ours.index) and list(theirs["label"]) == list(ours["label"])
    np.testing.assert_allclose(np.stack(theirs["embedding"]), np.stack(ours["embedding"]), atol=1e-6)
    again = extract(folder, out, distributed=name, **settings)
    assert (again.embedded, again.reused) == (0, 6)
