"""Heat maps: class margins decomposed over image locations (cellclf.heatmaps, cellembed.network)."""

from __future__ import annotations

import numpy as np
import pytest

from cellclf.families.lr import make_lr
from cellclf.families.xgb import make_xgb
from cellclf.heatmaps import APPROXIMATE_METHOD, EXACT_METHOD, attribute, upsample
from cellclf.estimator import CellClassifier, feature_reference
from cellembed.network import Network, TapMaps
from cellembed.spec import EmbeddingSpec
from conftest import SAMPLE


def test_upsampling_keeps_each_maps_sum_and_a_flat_map_stays_flat():
    rng = np.random.default_rng(0)
    for source, size in ((19, 299), (10, 299), (7, 64), (1, 5)):
        values = rng.normal(size=(3, 2, source, source))
        up = upsample(values, size)
        assert up.shape == (3, 2, size, size)
        np.testing.assert_allclose(up.sum(axis=(-2, -1)), values.sum(axis=(-2, -1)), rtol=1e-10, atol=1e-10)
    flat = upsample(np.full((10, 10), 2.0), 50)
    np.testing.assert_allclose(flat, 2.0 * 100 / 2500)  # the same total, spread evenly
    peak = np.zeros((10, 10))
    peak[2, 7] = 1.0
    where = np.unravel_index(upsample(peak, 100).argmax(), (100, 100))
    assert abs(where[0] - 25) <= 3 and abs(where[1] - 75) <= 3  # stays where it was


SPEC = EmbeddingSpec.from_widths([("a", 4), ("b", 3)], backbone="b", weights_sha256="0", input_size=16)


def synthetic_maps(n: int, seed: int) -> tuple[TapMaps, np.ndarray]:
    """Random per-location values for two taps (2 views, grids 4x4 and 2x2); label 1 when a
    hot spot in tap a's first channel is in the left half of the image."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, 2, 4, 4, 4))
    b = rng.normal(0, 1, (n, 2, 2, 2, 3))
    y = rng.integers(0, 3, n)
    for i in range(n):
        a[i, :, 1, (0 if y[i] == 1 else 3), 0] += 12.0  # 'left' vs 'right' spot
        b[i, :, :, :, 2] += y[i] == 2
    return TapMaps([a, b], SPEC), y


def fitted(family: str, maps: TapMaps, y: np.ndarray) -> CellClassifier:
    X = maps.embedding().astype(np.float32)
    model = make_lr(1.0) if family == "lr" else make_xgb({"max_depth": 2}, n_classes=3, n_estimators=20)
    if family == "xgb":
        from sklearn.pipeline import Pipeline

        model = Pipeline([("xgb", model)])
    model.fit(X, y)
    return CellClassifier.from_fitted(model, ["x", "y", "z"], SPEC, family=family, reference=feature_reference(X))


@pytest.mark.parametrize("family", ["lr", "xgb"])
def test_maps_add_up_to_every_class_margin(family):
    train, y = synthetic_maps(90, seed=0)
    predictor = fitted(family, train, y)
    test, _ = synthetic_maps(12, seed=1)
    result = attribute(predictor, test)
    assert [m.shape for m in result.tap_maps] == [(12, 3, 4, 4), (12, 3, 2, 2)]
    assert result.exact is (family == "lr") and result.method == (EXACT_METHOD if family == "lr" else APPROXIMATE_METHOD)
    X = predictor.matrix(test.embedding().astype(np.float32))
    if family == "lr":
        expected_margin = predictor.model.decision_function(X)
    else:
        import xgboost

        booster = predictor.model.named_steps["xgb"].get_booster()
        expected_margin = booster.predict(xgboost.DMatrix(X), output_margin=True)
    np.testing.assert_allclose(result.margin, expected_margin, rtol=1e-5, atol=1e-5)
    assert result.additivity_error < 1e-4
    images = result.image_maps(16)
    np.testing.assert_allclose(images.sum(axis=(2, 3)) + result.baseline, result.margin, atol=1e-4)


def test_two_classes_and_a_model_on_some_taps_in_another_order():
    train, y = synthetic_maps(90, seed=4)
    keep = y < 2
    train = TapMaps([m[keep] for m in train.maps], SPEC)
    X = np.concatenate([train.embedding()[:, 4:7], train.embedding()[:, 0:4]], axis=1).astype(np.float32)
    model = make_lr(1.0).fit(X, y[keep])  # two classes: one coefficient row
    predictor = CellClassifier.from_fitted(model, ["x", "y"], SPEC, taps=("b", "a"), family="lr", reference=feature_reference(X))
    test, _ = synthetic_maps(6, seed=5)
    result = attribute(predictor, test)
    assert result.taps == ("b", "a") and [m.shape[2:] for m in result.tap_maps] == [(2, 2), (4, 4)]
    margin = model.decision_function(predictor.matrix(test.embedding().astype(np.float32)))
    np.testing.assert_allclose(result.margin, np.stack([-margin, margin], axis=1), atol=1e-6)
    assert result.additivity_error < 1e-6


def test_each_view_is_turned_back_to_the_image_orientation():
    """With a 'network' that averages 4x4 blocks of the pixels (exactly equivariant under the
    square's symmetries), the maps of all 8 views, turned back, are the identity view's
    map: the inverses are right."""
    import dataclasses

    def blocks(pixels):
        return np.asarray(pixels)[..., :1].reshape(-1, 4, 4, 4, 4, 1).mean(axis=(2, 4))

    class Blocks:
        taps, channels = ("t",), {"t": 1}

        def __call__(self, pixels):
            return {"t": blocks(pixels)}

    network = Network(Blocks(), dataclasses.replace(
        EmbeddingSpec.from_widths([("t", 1)], backbone="b", weights_sha256="0", input_size=16), views=8
    ))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    maps = network.maps(pixels).maps[0]  # (2, 8, 4, 4, 1)
    for view in range(8):
        np.testing.assert_allclose(maps[:, view], maps[:, 0], rtol=1e-6, err_msg=f"view {view}")
    np.testing.assert_allclose(maps[:, 0], blocks(pixels), rtol=1e-6)
    assert not np.allclose(maps[:, 0], maps[:, 0, ::-1])  # a map that flips would be seen


def test_the_linear_map_puts_the_evidence_where_the_spot_is():
    train, y = synthetic_maps(150, seed=2)
    predictor = fitted("lr", train, y)
    test, y_test = synthetic_maps(20, seed=3)
    maps = attribute(predictor, test).tap_maps[0]  # tap a, (n, k, 4, 4)
    for i in np.flatnonzero(y_test == 1):
        column = 0  # the spot of class "y" (code 1) is in column 0 of row 1
        assert maps[i, 1].argmax() == np.ravel_multi_index((1, column), (4, 4))


# ----------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def sample_maps(real_weights):
    from cellembed.embedder import embedder_from_spec, spec_for_settings

    spec, weights = spec_for_settings(weights=real_weights)  # the default preset
    engine = embedder_from_spec(spec, weights)  # ONNX Runtime
    network = embedder_from_spec(spec, weights, "tensorflow")  # maps from the other engine
    files = sorted(SAMPLE.glob("*/*.jpg"))
    pixels = np.stack([network.load(f).pixels for f in files])
    maps = network.maps(pixels)
    labels = np.array([f.parent.name for f in files])
    return network, engine, maps, pixels, labels


@pytest.mark.slow
def test_maps_of_real_images_reproduce_the_embedding_and_every_logit(sample_maps):
    network, engine, maps, pixels, labels = sample_maps
    embedded = engine.embed(pixels[:6])
    np.testing.assert_allclose(maps.embedding()[:6], embedded, atol=1e-4, rtol=1e-4)
    X = maps.embedding().astype(np.float32)
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    train = np.arange(len(y)) % 4 != 0
    model = make_lr(0.1).fit(X[train], y[train])
    predictor = CellClassifier.from_fitted(model, classes, engine.spec, family="lr", reference=feature_reference(X[train]))
    held = TapMaps([m[~train] for m in maps.maps], maps.spec)
    result = attribute(predictor, held)
    logits = model.decision_function(X[~train]).astype(np.float64)
    total = result.tap_sums().sum(axis=1) + result.baseline
    np.testing.assert_allclose(total, logits, atol=1e-4)  # every class, every image
    image = result.image_maps(engine.spec.input_size)
    np.testing.assert_allclose(image.sum(axis=(2, 3)) + result.baseline, logits, atol=1e-4)
    # and against the embedding engine's own embedding of the same images
    np.testing.assert_allclose(model.decision_function(engine.embed(pixels[~train][:4])), logits[:4], atol=5e-3)
