"""CellClassifier: spec check, checksum, bad files, versions; SHAP additivity; metrics module."""

from __future__ import annotations

import dataclasses

import joblib
import numpy as np
import pytest
from sklearn import metrics as skm

from cellembed import load_embeddings
from cellclf import CellClassifier, PredictorLoadError
from cellclf.calibration import Calibration
from cellclf.errors import ClassifierInputError
from cellclf.shap_values import summarise
from cellclf.families.lr import fit_lr, linear_shap
from cellclf.metrics import evaluate
from cellembed.shared.hashing import sha256_file
from cellclf.families.xgb import fit_xgb, tree_shap
from cellclf.persistence import save, load_classifier
from test_clf_support import labelled_arrays, make_spec, write_synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    data = write_synthetic(root / "emb.parquet", counts={"a": 40, "b": 40, "c": 40}, separation=0.5)
    X, y, classes, spec = labelled_arrays(data)
    frame, _ = load_embeddings(data)
    model = fit_lr(X, y, {"C": 0.1, "class_weight": None})
    predictor = CellClassifier.from_fitted(model, classes, spec, family="lr", summary={"note": "test"})
    return root, frame, spec, X, y, classes, predictor


def test_refuses_embeddings_of_another_spec_naming_both(trained):
    _, frame, spec, X, _, _, predictor = trained
    other = dataclasses.replace(spec, weights_sha256="cd" * 32, input_size=299)
    with pytest.raises(ClassifierInputError) as error:
        predictor.predict(X, spec=other)
    message = str(error.value)
    assert "weights_sha256" in message and "input_size: 71 vs 299" in message
    assert "model: xception 71x71, weights abababababab" in message
    assert "embeddings: xception 299x299, weights cdcdcdcdcdcd" in message
    renamed = frame.copy()
    renamed.attrs["cellembed_spec"] = other
    with pytest.raises(ClassifierInputError, match="input_size"):
        predictor.predict_proba(renamed)
    with pytest.raises(ClassifierInputError, match="X has 25 features, but CellClassifier is expecting 30 features"):
        predictor.predict(X[:, :25])
    assert predictor.predict(frame).shape == (len(frame),)


def test_save_load_and_checksum(trained, tmp_path):
    _, frame, _, X, _, _, predictor = trained
    path = tmp_path / "model.joblib"
    digest = save(predictor, path)
    assert (tmp_path / "model.joblib.sha256").read_text() == f"{digest}  model.joblib\n"
    loaded = load_classifier(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), predictor.predict_proba(X))
    assert loaded.summary["note"] == "test" and "created" in loaded.summary

    (tmp_path / "model.skops").unlink()  # the pickle alone (see test_faults_model for the safe file)
    np.testing.assert_array_equal(load_classifier(path, trust_pickle=True).predict_proba(X), predictor.predict_proba(X))
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(PredictorLoadError, match="does not match model.joblib.sha256.*do not load it"):
        load_classifier(path, trust_pickle=True)
    (tmp_path / "model.joblib.sha256").unlink()
    with pytest.raises(PredictorLoadError, match="no checksum file"):
        load_classifier(path, trust_pickle=True)


def test_refuses_files_that_are_not_predictors(trained, tmp_path):
    _, _, _, _, _, _, predictor = trained
    plain = tmp_path / "plain.joblib"
    joblib.dump({"not": "a predictor"}, plain)
    (tmp_path / "plain.joblib.sha256").write_text(sha256_file(plain))
    with pytest.raises(PredictorLoadError, match="not a cellclf predictor .*builtins.dict"):
        load_classifier(plain, trust_pickle=True)
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(PredictorLoadError, match="cannot be read as a cellclf predictor"):
        load_classifier(garbage, trust_pickle=True, verify=False)
    with pytest.raises(PredictorLoadError, match="no such model file"):
        load_classifier(tmp_path / "missing.joblib")


def test_refuses_incompatible_versions(trained, tmp_path):
    _, _, _, X, _, _, predictor = trained
    old = CellClassifier.from_fitted(predictor.model, predictor.classes, predictor.spec, family="lr")
    old.versions_ = {**old.versions, "scikit-learn": "0.24.2"}
    save(old, tmp_path / "old.joblib")
    with pytest.raises(PredictorLoadError, match="made with scikit-learn 0.24.2 but scikit-learn .* is installed"):
        load_classifier(tmp_path / "old.joblib")
    assert load_classifier(tmp_path / "old.joblib", allow_version_mismatch=True).predict(X).shape == (len(X),)
    old.format_ = 99
    save(old, tmp_path / "future.joblib")
    with pytest.raises(PredictorLoadError, match="format 99"):
        load_classifier(tmp_path / "future.joblib")


def test_linear_shap_adds_up_to_the_margin(trained):
    _, _, _, X, _, classes, predictor = trained
    values = linear_shap(predictor.model, X[:5])
    assert values.values.shape == (5, len(classes), X.shape[1])
    margin = predictor.model.decision_function(X[:5])
    row = 3
    np.testing.assert_allclose(values.values[row].sum(axis=1) + values.expected, margin[row], rtol=1e-5, atol=1e-5)
    assert values.additivity_error < 1e-5
    # the shap package's own linear explainer agrees (interventional, training-mean background)
    shap = pytest.importorskip("shap")
    scaled = predictor.model.named_steps["scale"].transform(X)
    # full background: shap's default keeps a random 100 rows, whose mean is not exactly 0
    background = shap.maskers.Independent(scaled, max_samples=len(scaled))
    explainer = shap.LinearExplainer(predictor.model.named_steps["logreg"], background)
    theirs = np.asarray(explainer.shap_values(scaled[:5]))
    theirs = theirs if theirs.shape == values.values.shape else np.moveaxis(theirs, -1, 1)
    np.testing.assert_allclose(theirs, values.values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(explainer.expected_value, values.expected, atol=1e-5)


def test_tree_shap_adds_up_to_the_margin(trained):
    _, _, _, X, y, classes, _ = trained
    model = fit_xgb(X, y, {"max_depth": 3, "learning_rate": 0.3}, n_trees=15)
    values = tree_shap(model, X[:6])
    assert values.values.shape == (6, len(classes), X.shape[1])
    margin = model.named_steps["xgb"].predict(X[:6], output_margin=True)
    np.testing.assert_allclose(values.values.sum(axis=2) + values.expected, margin, rtol=1e-4, atol=1e-4)
    per_dim, by_tap, top = summarise(values.values, classes, make_spec().feature_names(), top_n=5)
    assert len(per_dim) == X.shape[1] and len(top) == 5 * len(classes)
    assert set(by_tap["tap"]) == {"add_2", "add_6", "block14_sepconv2_act"}


def test_evaluate_matches_sklearn():
    rng = np.random.default_rng(0)
    classes = ["x", "y", "z"]
    y = rng.choice(classes, 90)
    proba = rng.dirichlet(np.ones(3), 90)
    overall, per_class, confusion = evaluate(y, proba, classes)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    assert overall["accuracy"] == skm.accuracy_score(y, predicted)
    assert overall["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    assert overall["classes_present"] == 3
    assert overall["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes))
    assert overall["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    assert per_class["support"].sum() == 90
    assert confusion["count"].sum() == 90 and len(confusion) == 9


def test_two_classes_work_for_both_families(trained):
    _, _, spec, X, y, _, _ = trained
    keep = y < 2
    Xb, yb = X[keep], y[keep]
    for model, explain in (
        (fit_lr(Xb, yb, {"C": 0.1, "class_weight": "balanced"}), linear_shap),
        (fit_xgb(Xb, yb, {"max_depth": 2}, n_trees=10), tree_shap),
    ):
        predictor = CellClassifier.from_fitted(model, ["a", "b"], spec, family="x")
        assert predictor.predict_proba(Xb).shape == (len(Xb), 2)
        values = explain(model, Xb[:4])
        assert values.values.shape == (4, 2, Xb.shape[1]) and values.additivity_error < 1e-4
        np.testing.assert_allclose(values.values[:, 0], -values.values[:, 1])


def test_uncertain_is_the_calibration_rule_or_a_top_probability_under_min_confidence(trained):
    *_, classes, predictor = trained
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    assert predictor.uncertain(proba).tolist() == [False, False, False]  # no calibration: never by itself
    assert predictor.uncertain(proba, min_confidence=0.6).tolist() == [True, False, True]
    calibrated = CellClassifier.from_fitted(predictor.model, classes, predictor.spec, family="lr",
                           calibration=Calibration(temperature=1.0, alpha=0.1, threshold=0.45))
    assert calibrated.uncertain(proba).tolist() == [True, False, True]
    assert calibrated.uncertain(proba, min_confidence=0.85).tolist() == [True, True, True]
