"""Calibration, conformal prediction sets and the small-sample intervals (cellclf.calibration,
cellclf.metrics), and what `cellclf fit` records of them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellclf.calibration import (
    Calibration,
    conformal_threshold,
    coverage,
    expected_calibration_error,
    fit_temperature,
    prediction_sets,
    set_texts,
    tempered,
)
from cellclf.metrics import evaluate, macro_f1_interval, wilson_interval


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, k: int = 5, factor: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (the truth) and a model reporting softmax(factor * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, k))
    truth = _softmax(z)
    y = np.array([rng.choice(k, p=row) for row in truth])
    return _softmax(factor * z), truth, y


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    model, truth, y = _overconfident(6000)
    temperature = fit_temperature(model, y)
    assert temperature == pytest.approx(2.5, rel=0.08)
    calibrated = tempered(model, temperature)
    np.testing.assert_allclose(calibrated, truth, atol=0.06)
    assert (calibrated.argmax(axis=1) == model.argmax(axis=1)).all()  # never changes the predicted class
    assert expected_calibration_error(calibrated, y) < 0.03 < expected_calibration_error(model, y)
    np.testing.assert_allclose(tempered(model, 1.0), model, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.2, 0.1, 0.05])
def test_split_conformal_sets_cover_one_minus_alpha(alpha):
    model, _, y = _overconfident(8000, seed=1)
    calibration, test = slice(0, 3000), slice(3000, None)
    threshold = conformal_threshold(model[calibration], y[calibration], alpha)
    covered, size = coverage(model[test], y[test], threshold)
    assert 1 - alpha - 0.02 <= covered <= 1 - alpha + 0.03
    assert 1 < size < 5
    # a smaller alpha never gives smaller sets
    assert conformal_threshold(model[calibration], y[calibration], alpha / 2) >= threshold


def test_the_threshold_is_the_exact_finite_sample_rank():
    # scores 1 - p(true): 0.0, 0.1, ..., 0.9 (n = 10); rank ceil(11 * (1 - alpha))
    proba = np.stack([np.linspace(1.0, 0.1, 10), 1 - np.linspace(1.0, 0.1, 10)], axis=1)
    y = np.zeros(10, dtype=int)
    assert conformal_threshold(proba, y, 0.2) == pytest.approx(0.8)  # ceil(8.8) = 9th smallest
    assert conformal_threshold(proba, y, 0.5) == pytest.approx(0.5)  # ceil(5.5) = 6th
    assert conformal_threshold(proba, y, 0.09) == 1.0  # ceil(10.01) = 11 > n


def test_levels_with_many_digits_keep_their_own_threshold():
    model, _, y = _overconfident(400, seed=3)
    calibration = Calibration.fit(model, y, alpha=0.1000001)
    assert set(calibration.thresholds) == {"0.1", "0.05", "0.01", "0.1000001"}
    assert calibration.threshold == calibration.thresholds["0.1000001"]


def test_sets_hold_the_top_class_and_every_class_when_too_few_images():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    members = prediction_sets(proba, 0.6)  # classes with p >= 0.4, and the top one
    assert members.tolist() == [[True, False, False], [False, False, True], [True, False, False]]
    assert set_texts(prediction_sets(proba, 0.75), proba, ["a", "b", "c"]) == ["a|b", "c", "a|b|c"]
    # (n + 1)(1 - alpha) > n: no finite threshold has the guarantee, so every class is in
    assert conformal_threshold(proba, np.array([0, 2, 1]), 0.05) == 1.0
    assert prediction_sets(proba, 1.0).all()
    # uncertain: a set of several classes, or no class reaching 1 - q (the set then holds the top class alone)
    calibration = Calibration(temperature=1.0, alpha=0.1, threshold=0.45)  # sets: p >= 0.55
    assert calibration.uncertain(proba).tolist() == [True, False, True]
    assert calibration.sets(proba).sum(axis=1).tolist() == [1, 1, 1]


def test_calibration_round_trips_and_applies():
    model, _, y = _overconfident(800, seed=2)
    calibration = Calibration.fit(model, y, alpha=0.05)
    assert set(calibration.thresholds) == {"0.1", "0.05", "0.01"} and calibration.n == 800
    assert calibration.threshold == calibration.thresholds["0.05"]
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    np.testing.assert_allclose(again.apply(model), calibration.apply(model))
    assert (again.sets(again.apply(model)) == calibration.sets(calibration.apply(model))).all()


def test_wilson_and_bootstrap_intervals():
    low, high = wilson_interval(90, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)  # the textbook Wilson interval
    assert wilson_interval(0, 0) is None
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 300)
    predicted = np.where(rng.random(300) < 0.8, y, rng.choice(list("abc"), 300))
    interval = macro_f1_interval(y, predicted, ["a", "b", "c"])
    proba = np.eye(3)[[ "abc".index(v) for v in predicted]] * 0.9 + 0.1 / 3
    overall, _, _ = evaluate(y, proba, ["a", "b", "c"])
    assert interval[0] < overall["macro_f1"] < interval[1] and interval[1] - interval[0] < 0.15
    # a rare class absent from a resample does not count as F1 = 0 there (a biased-low interval)
    rare = np.array(["a"] * 20 + ["b"] * 19 + ["c"])
    guessed = rare.copy()
    guessed[[0, 21]] = ["b", "a"]
    low, high = macro_f1_interval(rare, guessed, ["a", "b", "c"])
    assert 0.8 < low < evaluate(rare, np.eye(3)[["abc".index(v) for v in guessed]], ["a", "b", "c"])[0]["macro_f1"] <= high
    assert overall["macro_f1_ci"] == interval and overall["accuracy_ci"] == wilson_interval(int((y == predicted).sum()), 300)
    # the same data and seed give the same interval; fewer images give a wider one
    assert macro_f1_interval(y, predicted, ["a", "b", "c"]) == interval
    small = macro_f1_interval(y[:30], predicted[:30], ["a", "b", "c"])
    assert small[1] - small[0] > interval[1] - interval[0]
    # no mistake: every resample scores 1, an interval that would claim certainty is not given
    assert macro_f1_interval(y, y, ["a", "b", "c"]) is None
    from cellclf.metrics import macro_f1_text

    perfect, _, _ = evaluate(y[:40], np.eye(3)[["abc".index(v) for v in y[:40]]], ["a", "b", "c"])
    assert "no bootstrap interval" in macro_f1_text(perfect, 3) and perfect["accuracy_ci"][0] < 0.95


def test_fit_calibrates_the_saved_model_and_records_coverage(tmp_path):
    from cellclf.persistence import load_classifier
    from cellclf.fitting import FitConfig, fit
    from test_clf_support import write_synthetic

    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 90, "b": 90, "c": 90, "d": 90}, separation=0.6)
    config = FitConfig.build(models=("lr",), shap=False, heatmaps=False, cv=3, alpha=0.1)
    result = fit(data, tmp_path / "run", config=config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    facts = metrics["models"]["lr"]["calibration"]
    assert facts["alpha"] == 0.1 and facts["validation_images"] == sum(result.record.data.counts["validation"].values())
    assert [row["alpha"] for row in facts["coverage_test"]] == [0.1, 0.05, 0.01]
    for row in facts["coverage_test"]:
        assert 0 <= row["coverage"] <= 1 and 1 <= row["mean_set_size"] <= 4
    assert facts["test"]["ece_after"] >= 0 and facts["temperature"] > 0
    assert set(metrics["models"]["lr"]["test"]["accuracy_ci"]) and len(metrics["models"]["lr"]["test"]["macro_f1_ci"]) == 2

    # too few validation images for alpha 0.01: the fit says so (every class would be in every set)
    lines = []
    fit(data, tmp_path / "run01", config=FitConfig.build(models=("lr",), shap=False, heatmaps=False, cv=3, alpha=0.01),
        log=lines.append)
    assert any("validation images: sets at alpha 0.01 need at least 99" in line for line in lines), lines
    predictor = load_classifier(tmp_path / "run")  # the safe file keeps the calibration
    assert predictor.calibration.temperature == pytest.approx(facts["temperature"], rel=1e-5)
    assert predictor.calibration.threshold == facts["threshold"]
    table = pd.read_csv(tmp_path / "run" / "predictions_test.csv", keep_default_na=False)
    from cellembed import load_embeddings

    frame, _ = load_embeddings(data)
    rows = frame.set_index("path").loc[table["path"]].reset_index()
    rows.attrs = frame.attrs
    proba = predictor.predict_proba(rows)
    np.testing.assert_allclose(proba, table[[f"proba_{c}" for c in predictor.classes]].to_numpy(), atol=1e-9)
    raw = predictor.predict_proba(rows, calibrated=False)
    assert not np.allclose(raw, proba) and (raw.argmax(axis=1) == proba.argmax(axis=1)).all()
    members = predictor.prediction_sets(proba)
    assert table["set"].tolist() == set_texts(members, proba, list(predictor.classes))
    assert (table["set_size"].to_numpy() == members.sum(axis=1)).all()
    assert all(p in s.split("|") for p, s in zip(table["predicted"], table["set"]))
