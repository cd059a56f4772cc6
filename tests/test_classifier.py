"""In-memory prediction (cellclf.ImageClassifier) and rebuilding an embedder from a spec."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from cellembed import InputError, embedder_from_spec, load_embeddings, read_spec
from cellembed.decoding import load_for_network
from cellembed.pipeline import decoded_batches
from cellclf import ImageClassifier
from cellclf.errors import ClassifierInputError
from conftest import SMALL
from test_predict import tinted_predictor


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, random_weights):
    """A predictor trained on a tinted folder, and the folder holding its embeddings file."""
    root = tmp_path_factory.mktemp("classifier")
    predictor, _, _ = tinted_predictor(root, {"red": 6, "blue": 6, "green": 6}, random_weights)
    assert list(predictor.classes) == CLASSES
    return predictor, root


@pytest.fixture(scope="module")
def classifier(trained, random_weights):
    predictor, _ = trained
    return ImageClassifier(predictor, weights=random_weights)


def awkward_images(root):
    """Images whose colour rules matter: RGBA with transparency, grayscale, palette."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (40, 44, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0  # a transparent band: composited onto white
    paths = {
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "gray.jpg": Image.fromarray(rng.integers(0, 256, (38, 41), dtype=np.uint8), "L"),
        "palette.png": Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).convert("P"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, picture in paths.items():
        picture.save(root / name)
    return [root / name for name in paths]


def test_bytes_pil_and_arrays_give_exactly_the_embedding_of_the_path(classifier, tmp_path):
    for path in awkward_images(tmp_path):
        data = path.read_bytes()
        with Image.open(path) as opened:
            as_array = np.asarray(opened.convert("RGBA") if opened.mode == "P" else opened)
        reference = load_for_network(path, SMALL).pixels
        for source in (data, Image.open(io.BytesIO(data)), as_array):
            pixels = load_for_network(source, SMALL).pixels
            np.testing.assert_array_equal(pixels, reference, err_msg=f"{path.name} from {type(source).__name__}")
        embedder = classifier.embedder
        np.testing.assert_allclose(
            embedder.embed(load_for_network(data, SMALL).pixels[None]), embedder.embed(reference[None]), atol=1e-6
        )


def test_predict_images_agrees_with_the_cached_folder_prediction(classifier, tmp_path):
    from cellclf.prediction import predict_folder

    paths = awkward_images(tmp_path / "images")
    data = [p.read_bytes() for p in paths]
    table = classifier.predict_images([*paths, *data, *(Image.open(io.BytesIO(d)) for d in data)])
    assert list(table.columns) == ["image", "predicted", "confidence", *(f"proba_{c}" for c in CLASSES), "set", "set_size",
                                   "uncertain", "error"]
    assert table["image"].tolist()[:3] == [str(p) for p in paths] and table["image"].tolist()[3:] == [f"#{i}" for i in range(3, 9)]
    proba = table[[f"proba_{c}" for c in CLASSES]].to_numpy(dtype=float)
    # Same pixels and embeddings (exactly: test_bytes_pil_and_arrays...); the probabilities
    # may differ in the last float32 bits, as BLAS rounds rows at different positions differently.
    np.testing.assert_allclose(proba[3:6], proba[:3], atol=1e-6)
    np.testing.assert_allclose(proba[6:9], proba[:3], atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert table["error"].isna().all()
    assert (table["predicted"] == np.asarray(CLASSES)[proba.argmax(axis=1)]).all()

    run = predict_folder(classifier, tmp_path / "images", tmp_path / "cache.parquet", progress=False)
    folder = run.table.set_index("path")
    for path, row in zip(paths, proba[:3]):
        np.testing.assert_allclose(folder.loc[path.name, [f"proba_{c}" for c in CLASSES]].to_numpy(dtype=float), row, atol=1e-6)


def test_undecodable_inputs_get_an_error_row_and_the_others_a_prediction(classifier, tmp_path):
    good = awkward_images(tmp_path)[0]
    inputs = [b"", b"not an image", np.zeros((8, 8, 3), np.float32), tmp_path / "missing.png", good, 42]
    table = classifier.predict_images(inputs, names=["empty", "junk", "floats", "missing", "good", "number"])
    errors = dict(zip(table["image"], table["error"]))
    assert errors["empty"] == "empty input (0 bytes)"
    assert errors["junk"].startswith("not an image")
    assert "uint8" in errors["floats"]
    assert errors["missing"].startswith("cannot read file")
    assert "cannot decode a int" in errors["number"]
    assert errors["good"] is None
    failed = table[table["image"] != "good"]
    assert failed["predicted"].isna().all() and failed["proba_red"].isna().all()
    assert table.set_index("image").loc["good", "predicted"] in CLASSES
    with pytest.raises(ClassifierInputError, match="2 names for 1 images"):
        classifier.predict_images([good], names=["a", "b"])


def test_other_weights_are_refused_before_anything_is_built(trained, tmp_path):
    predictor, _ = trained
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"other bytes")  # only the SHA-256 is compared before loading
    with pytest.raises(ClassifierInputError, match="other.weights.h5 .*not the ones this model was trained with"):
        ImageClassifier(predictor, weights=other)


@pytest.mark.parametrize("engine", ["onnxruntime", "tensorflow"])
def test_embedder_from_spec_rebuilds_the_embedder_that_wrote_a_file(trained, random_weights, engine):
    _, root = trained
    frame, _ = load_embeddings(root / "train.parquet")
    spec = read_spec(root / "train.parquet")
    embedder = embedder_from_spec(spec, random_weights, engine)
    assert embedder.spec.identity() == spec.identity()
    images = root / "images"
    pixels = next(decoded_batches([images / p for p in frame["path"]], spec, len(frame))).pixels
    np.testing.assert_allclose(embedder.embed(pixels), np.stack(frame["embedding"]), atol=1e-4)


def test_embedder_from_spec_refuses_what_it_cannot_reproduce(trained, random_weights, tmp_path):
    _, root = trained
    spec = read_spec(root / "train.parquet")
    with pytest.raises(InputError, match="backbone 'resnet50'.*does not have"):
        embedder_from_spec(dataclasses.replace(spec, backbone="resnet50"), random_weights)
    with pytest.raises(InputError, match="cannot reproduce embeddings made with preprocessing"):
        embedder_from_spec(dataclasses.replace(spec, preprocessing="x / 255"), random_weights)
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"other bytes")
    with pytest.raises(InputError, match="not the ones these embeddings were made with"):
        embedder_from_spec(spec, other)


@pytest.fixture(scope="module")
def lr_classifier(trained, random_weights):
    """The tinted folder's embeddings fitted by the lr family itself (fit_lr: what cellclf fit
    makes, with the step names its closed-form SHAP reads)."""
    from cellclf import CellClassifier
    from cellclf.families.lr import fit_lr
    from cellembed import embedding_matrix

    _, root = trained
    frame, spec = load_embeddings(root / "train.parquet")
    X, labels = embedding_matrix(frame, spec)
    codes = np.array([CLASSES.index(label) for label in labels])
    model = fit_lr(X, codes, {"C": 0.1, "class_weight": None})
    return ImageClassifier(CellClassifier.from_fitted(model, CLASSES, spec, family="lr"), weights=random_weights)


def test_shap_explanation_is_the_closed_form_in_shaps_layout_for_embeddings_and_images(lr_classifier, tmp_path):
    """ImageClassifier.shap_explanation: shap.Explanation (n, features, classes) of the exact
    values, adding up to each margin, by dimension or by tap, from embeddings or images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    from cellclf.families.lr import linear_shap

    classifier = lr_classifier
    paths = awkward_images(tmp_path / "images")
    vectors, errors = classifier.embed_images(paths)
    assert not errors
    predictor = classifier.predictor
    matrix = predictor.model_input(vectors, classifier.embedder.spec)
    explained = classifier.shap_explanation(paths)
    assert isinstance(explained, shap.Explanation)
    assert explained.values.shape == (3, predictor.n_features, 3) and list(explained.output_names) == CLASSES
    assert list(explained.feature_names) == predictor.feature_names
    closed = linear_shap(predictor.model, matrix)
    np.testing.assert_allclose(explained.values, closed.values.transpose(0, 2, 1), rtol=1e-6, atol=1e-7)
    margin = predictor.model.decision_function(matrix)
    np.testing.assert_allclose(explained.values.sum(axis=1) + explained.base_values, margin, rtol=1e-4, atol=1e-4)
    from_embeddings = classifier.shap_explanation(vectors, classifier.embedder.spec)
    np.testing.assert_allclose(from_embeddings.values, explained.values, rtol=1e-6, atol=1e-7)

    layers = classifier.shap_explanation(paths, by="tap")
    assert list(layers.feature_names) == list(dict.fromkeys(n.rsplit(":", 1)[0] for n in predictor.feature_names))
    np.testing.assert_allclose(layers.values.sum(axis=1), explained.values.sum(axis=1), rtol=1e-5, atol=1e-5)
    shap.plots.beeswarm(explained[:, :, 1], show=False)  # shap's plots take it as it is
    plt.close("all")

    with pytest.raises(ClassifierInputError, match="by must be"):
        classifier.shap_explanation(paths, by="pixel")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ClassifierInputError, match="broken.png"):
        classifier.shap_explanation([paths[0], broken])


def test_the_report_plot_is_shaps_beeswarm_per_class_and_layer(lr_classifier, tmp_path):
    from cellclf.families import get_family
    from cellclf.shap_values import plot_summary

    classifier = lr_classifier
    paths = awkward_images(tmp_path / "images")
    vectors, _ = classifier.embed_images(paths)
    predictor = classifier.predictor
    matrix = predictor.model_input(vectors, classifier.embedder.spec)
    values = get_family("lr").explain(predictor.model, matrix, 1)
    figure = plot_summary(values, matrix, np.array([0, 1, 2]), CLASSES, predictor.feature_names, "lr")
    titles = [axis.get_title() for axis in figure.axes]
    for name in CLASSES:
        assert f"{name}: each layer (red: {name} images)" in titles
        assert f"{name}: top 6 embedding dimensions" in titles
    # shap's beeswarm names the features it shows on the y axis: the layers, and the top dimensions
    layer_axis = figure.axes[titles.index("red: each layer (red: red images)")]
    shown = {label.get_text() for label in layer_axis.get_yticklabels()}
    assert shown == {n.rsplit(":", 1)[0] for n in predictor.feature_names}
    dimension_axis = figure.axes[titles.index("red: top 6 embedding dimensions")]
    assert {label.get_text() for label in dimension_axis.get_yticklabels()} <= set(predictor.feature_names)
    assert len(dimension_axis.get_yticklabels()) == 6
