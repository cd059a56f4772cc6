"""`--adapt`: cells of another lab moved onto the training statistics before classifying."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cellclf.errors import ClassifierInputError
from cellclf.estimator import CellClassifier, MIN_ADAPT_IMAGES, feature_reference
from cellclf.persistence import load_classifier
from cellclf.persistence import save, load_classifier
from cellembed.spec import EmbeddingSpec

SPEC = EmbeddingSpec.from_widths([("t", 6)], backbone="b", weights_sha256="0", input_size=8)


def blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 6) * 4.0
    X = np.concatenate([rng.normal(c, 1.0, (n_per_class, 6)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(3), n_per_class)


@pytest.fixture(scope="module")
def predictor() -> CellClassifier:
    X, y = blobs(60, seed=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    return CellClassifier.from_fitted(model, ["a", "b", "c"], SPEC, family="lr", reference=feature_reference(X))


def test_adapt_recovers_the_cells_of_a_lab_that_shifts_every_embedding(predictor):
    X, y = blobs(30, seed=1)
    other_lab = X * np.array([1.8, 0.5, 1.3, 1, 1, 1], np.float32) + np.array([-9, 7, 3, 1, 0, 0], np.float32)
    plain = (predictor.predict_proba(other_lab).argmax(1) == y).mean()
    adapted = (predictor.predict_proba(other_lab, adapt=True).argmax(1) == y).mean()
    assert plain < 0.6 and adapted > 0.9, (plain, adapted)
    # the adapted matrix has the training statistics
    mean, std = predictor.reference
    moved = predictor.adapted(other_lab)
    np.testing.assert_allclose(moved.mean(0), mean, atol=1e-4)
    np.testing.assert_allclose(moved.std(0), std, rtol=1e-4)


def test_adapt_refuses_too_few_images_and_models_without_statistics(predictor):
    X, _ = blobs(3, seed=2)
    with pytest.raises(ClassifierInputError, match=f"at least {MIN_ADAPT_IMAGES} distinct images, got 9"):
        predictor.predict_proba(X, adapt=True)
    old = CellClassifier.from_fitted(predictor.model, predictor.classes, SPEC, family="lr")
    with pytest.raises(ClassifierInputError, match="re-run cellclf fit to use --adapt"):
        old.predict_proba(blobs(10, seed=3)[0], adapt=True)


def test_the_safe_file_keeps_the_training_statistics(predictor, tmp_path):
    save(predictor, tmp_path / "model.joblib")
    loaded = load_classifier(tmp_path / "model.skops")
    for kept, original in zip(loaded.reference, predictor.reference):
        np.testing.assert_array_equal(kept, original)
    X, _ = blobs(30, seed=4)
    np.testing.assert_allclose(loaded.predict_proba(X, adapt=True), predictor.predict_proba(X, adapt=True))


def test_a_folder_too_small_to_adapt_is_refused_before_anything_is_embedded(predictor, tmp_path):
    from PIL import Image

    from cellclf.prediction import predict_folder

    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(MIN_ADAPT_IMAGES - 1):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
    cache = tmp_path / "cache.parquet"
    # the spec's backbone "b" cannot be built: reaching the network would fail otherwise
    with pytest.raises(ClassifierInputError, match=f"got {MIN_ADAPT_IMAGES - 1};"):
        predict_folder(predictor, folder, cache, adapt=True, progress=False)
    assert not cache.exists()
