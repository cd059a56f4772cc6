"""Which calibration? Temperature scaling against scikit-learn's CalibratedClassifierCV.

On the split `cellclf fit` makes (seed 0, 70/15/15 of a labelled embeddings file) the model
is a run's selected setting (RUN_DIR/metrics.json: family and parameters; logistic
regression or XGBoost) trained on the training split only. Its validation probabilities
fit each calibrator:

- temperature scaling (cellclf.calibration: one number, the predicted class unchanged);
- CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid") (one-vs-rest Platt
  scaling, 2 parameters per class, renormalised);
- CalibratedClassifierCV(FrozenEstimator(model), method="isotonic") (one-vs-rest isotonic
  regression, renormalised).

Printed for each, on validation (where it was fitted) and test (never seen): accuracy, log
loss and top-label ECE (15 bins), and the test coverage / mean set size of split-conformal
sets at alpha 0.1, 0.05, 0.01 built on each calibrator's validation probabilities.

Usage:
    python bench/calibration.py --run RUN_DIR [--embeddings FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, default=None, help="default: the run's input file")
    args = parser.parse_args()

    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    from cellclf.calibration import (REPORTED_ALPHAS, conformal_threshold, coverage, expected_calibration_error,
                                     fit_temperature, log_loss_of, tempered)
    from cellclf.data import load_labelled
    from cellclf.families import get_family
    from cellclf.split import split_rows

    metrics = json.loads((args.run / "metrics.json").read_text())
    key = metrics["best_model"]
    params = metrics["models"][key]["params"]
    config = metrics["config"]
    data = load_labelled(args.embeddings or metrics["data"]["input"])
    classes = sorted(set(data.labels))
    y = np.array([classes.index(v) for v in data.labels])
    splits = split_rows(data.meta, seed=config["seed"], val_fraction=config["val_fraction"],
                        test_fraction=config["test_fraction"])
    part = {name: np.flatnonzero(splits == name) for name in ("train", "validation", "test")}
    family = get_family(key)
    options = {k[len(key) + 1:]: v for k, v in config.items() if k.startswith(key + "_")}
    model = family.refit(data.X[part["train"]], y[part["train"]], params, options, seed=config["seed"], n_jobs=2)
    raw = {name: np.asarray(model.predict_proba(data.X[rows]), dtype=np.float64) for name, rows in part.items()
           if name != "train"}
    y_val, y_test = y[part["validation"]], y[part["test"]]
    print(f"model: {key} {params}, trained on {len(part['train'])} images; validation {len(y_val)}, test {len(y_test)}")

    temperature = fit_temperature(raw["validation"], y_val)
    calibrators = {
        "none (the model's own)": lambda p, name: p,
        f"temperature (T={temperature:.3f})": lambda p, name: tempered(p, temperature),
    }
    for method in ("sigmoid", "isotonic"):
        fitted = CalibratedClassifierCV(FrozenEstimator(model), method=method).fit(data.X[part["validation"]], y_val)
        calibrators[f"CalibratedClassifierCV {method}"] = (
            lambda p, name, fitted=fitted: np.asarray(fitted.predict_proba(data.X[part[name]]), dtype=np.float64))

    print(f"\n{'calibration':<32} {'val acc':>8} {'val logloss':>11} {'val ECE':>8} "
          f"{'test acc':>8} {'test logloss':>12} {'test ECE':>8}   test coverage / mean set size at alpha "
          + ", ".join(f"{a:g}" for a in REPORTED_ALPHAS))
    for name, calibrate in calibrators.items():
        val = calibrate(raw["validation"], "validation")
        test = calibrate(raw["test"], "test")
        val, test = val / val.sum(axis=1, keepdims=True), test / test.sum(axis=1, keepdims=True)
        sets = []
        for alpha in REPORTED_ALPHAS:
            covered, size = coverage(test, y_test, conformal_threshold(val, y_val, alpha))
            sets.append(f"{covered:.3f}/{size:.2f}")
        print(f"{name:<32} {np.mean(val.argmax(1) == y_val):>8.4f} {log_loss_of(val, y_val):>11.4f} "
              f"{expected_calibration_error(val, y_val):>8.4f} {np.mean(test.argmax(1) == y_test):>8.4f} "
              f"{log_loss_of(test, y_test):>12.4f} {expected_calibration_error(test, y_test):>8.4f}   {'  '.join(sets)}")


if __name__ == "__main__":
    main()
