"""cellclf.CellClassifier is a scikit-learn classifier: its conformance battery, and its shape."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from cellclf.estimator import CellClassifier, EmbeddingsError, LabAdapter, TapSelector, TemperatureScaling
from cellembed import EmbeddingSpec

#: scikit-learn's checks that do not apply, and why (every other check runs and passes).
NOT_APPLICABLE = {
    "LabAdapter(adapt=True)": {
        "check_methods_subset_invariance": "adapting re-centres a batch on its own statistics: each row depends "
                                           "on the others by design, and fewer than 20 distinct rows are refused",
    },
}
ESTIMATORS = {
    "CellClassifier()": CellClassifier(),
    "TapSelector()": TapSelector(),
    "LabAdapter()": LabAdapter(),
    "LabAdapter(adapt=True)": LabAdapter(adapt=True),
    "TemperatureScaling()": TemperatureScaling(),
    "TemperatureScaling(temperature=2.0)": TemperatureScaling(temperature=2.0),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_scikit_learn_conformance(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(ESTIMATORS[name], on_fail=None, expected_failed_checks=NOT_APPLICABLE.get(name, {}))
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40


SPEC = EmbeddingSpec.from_widths([("a", 3), ("b", 2)], backbone="b", weights_sha256="0", input_size=8)


def _cells(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.array(["lymphocyte", "neutrophil", "monocyte"])[np.arange(n) % 3]
    X = rng.normal(0, 1, (n, SPEC.dim)).astype(np.float32)
    X[:, 3] += (y == "neutrophil") * 6.0  # tap b separates the classes
    X[:, 4] += (y == "monocyte") * 6.0
    return X, y


def test_a_classifier_of_embeddings_is_a_pipeline_of_small_estimators():
    X, y = _cells()
    classifier = CellClassifier(spec=SPEC, taps=("b",)).fit(X, y)
    assert [name for name, _ in classifier.pipeline_.steps] == ["taps", "adapt", "model"]
    assert isinstance(classifier.pipeline_[-1], TemperatureScaling) and classifier.pipeline_[-1].temperature is None
    assert list(classifier.classes_) == ["lymphocyte", "monocyte", "neutrophil"]
    assert classifier.n_features_in_ == 5 and classifier.n_features == 2
    assert list(classifier.feature_names_in_) == ["a:0", "a:1", "a:2", "b:0", "b:1"]
    assert classifier.feature_names == ["b:0", "b:1"] == SPEC.feature_names(["b"])
    assert (classifier.predict(X) == y).mean() > 0.9
    # the full embedding or the taps' columns alone give the same probabilities
    np.testing.assert_array_equal(classifier.predict_proba(X), classifier.predict_proba(X[:, 3:]))
    with pytest.raises(EmbeddingsError, match="X has 4 features, but CellClassifier is expecting 5"):
        classifier.predict_proba(X[:, :4])
    # clone keeps the parameters untouched and nothing fitted
    copy = clone(classifier)
    assert copy.get_params()["taps"] == ("b",) and copy.get_params()["spec"] == SPEC  # deep copies
    assert not hasattr(copy, "pipeline_")
    # the training statistics are the adapter's
    mean, std = classifier.reference
    np.testing.assert_allclose(mean, X[:, 3:].mean(axis=0), rtol=1e-5)


def test_an_embeddings_frame_is_checked_against_the_spec():
    import dataclasses

    X, y = _cells()
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(len(X))], "embedding": list(X), "label": y})
    frame.attrs["cellembed_spec"] = SPEC
    classifier = CellClassifier(spec=SPEC).fit(frame, y)
    np.testing.assert_array_equal(classifier.predict_proba(frame), classifier.predict_proba(X))
    other = frame.copy()
    other.attrs["cellembed_spec"] = dataclasses.replace(SPEC, views=4)
    with pytest.raises(Exception, match="made differently from the model's training embeddings.*views"):
        classifier.predict_proba(other)


def test_from_fitted_is_the_same_model_as_fit():
    X, y = _cells()
    fitted = CellClassifier(spec=SPEC).fit(X, y)
    parts = CellClassifier.from_fitted(fitted.model, fitted.classes, SPEC, family="lr", reference=fitted.reference)
    np.testing.assert_array_equal(parts.predict_proba(X), fitted.predict_proba(X))
    assert parts.used_taps == fitted.used_taps == ("a", "b")
    np.testing.assert_array_equal(parts.predict(X), fitted.predict(X))


def test_the_temperature_is_the_pipelines_last_step_and_the_conformal_threshold_is_beside_it():
    from cellclf.calibration import Calibration, tempered

    X, y = _cells(90)
    classifier = CellClassifier(spec=SPEC).fit(X[:60], y[:60])
    raw = classifier.predict_proba(X[60:])
    np.testing.assert_array_equal(raw, classifier.predict_proba(X[60:], calibrated=False))
    codes = np.searchsorted(classifier.classes_, y[60:])
    calibration = Calibration.fit(raw, codes, alpha=0.1)
    classifier.calibration = calibration
    last = classifier.pipeline_.named_steps["model"]
    assert last.temperature == calibration.temperature != 1.0 and classifier.calibration_ is calibration
    np.testing.assert_allclose(classifier.predict_proba(X[60:]), tempered(raw, calibration.temperature), rtol=1e-12)
    np.testing.assert_array_equal(classifier.predict_proba(X[60:], calibrated=False), raw)
    np.testing.assert_array_equal(classifier.pipeline_.predict_proba(classifier.matrix(X[60:])),
                                  classifier.predict_proba(X[60:]))  # the pipeline alone is the classifier
    # a classifier assembled from parts puts the recorded temperature in the same step
    parts = CellClassifier.from_fitted(classifier.model, classifier.classes, SPEC, family="lr",
                                       calibration=calibration)
    np.testing.assert_array_equal(parts.predict_proba(X), classifier.predict_proba(X))


def test_a_pickled_classifier_whose_pipeline_ended_in_the_bare_model_is_upgraded(tmp_path):
    """The shape of the previous version (its model the last step, the temperature applied
    from calibration_) loads as today's, with the same probabilities."""
    from sklearn.pipeline import Pipeline

    from cellclf.calibration import Calibration
    from cellclf.persistence import upgrade

    X, y = _cells(90)
    today = CellClassifier(spec=SPEC).fit(X[:60], y[:60])
    today.calibration = Calibration.fit(today.predict_proba(X[60:]), np.searchsorted(today.classes_, y[60:]), 0.1)
    before = clone(today)
    before.__dict__.update({k: v for k, v in vars(today).items() if k.endswith("_")})
    before.pipeline_ = Pipeline(today.pipeline_.steps[:-1] + [("model", today.model)])
    upgraded = upgrade(before, tmp_path / "model.joblib")
    assert upgraded is before and isinstance(upgraded.pipeline_[-1], TemperatureScaling)  # only the step changes
    np.testing.assert_array_equal(upgraded.predict_proba(X), today.predict_proba(X))
    assert upgrade(today, tmp_path / "model.joblib") is today
