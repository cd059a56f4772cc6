"""Counts corrected for the classifier's known confusions ("adjusted classify and count",
Forman 2008; the quantification literature's baseline).

A classifier that calls 3% of true monocytes lymphocytes and 1% of lymphocytes monocytes
shifts a count of predicted classes by a known amount. With R the test confusion matrix as
rates (row i: of the true class i, the share predicted as each class), the expected
predicted counts are ``n_predicted = R^T n_true``; the corrected estimate is the
non-negative ``n_true`` that best explains the observed predicted counts (non-negative least
squares), scaled back to the number of cells counted.

What it assumes, and the page says: the classifier confuses the classes of these cells at the
rates it showed on its test images, i.e. the cells look like the test images (same lab,
stain and scanner) and only the mix of cell types differs ("prior shift"). It does not hold
for cells of another lab (the drift signal says when) and it is noisy where the test set had
few cells of a class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

METHOD = "adjusted classify and count: non-negative least squares through the model's test confusion rates"
ASSUMES = ("the model confuses these cells' types at the rates it showed on its test images, i.e. the cells look like "
           "the test images (same lab, stain and scanner) and only the mix of types differs")


def corrected_counts(predicted: Sequence[float], rates: np.ndarray) -> np.ndarray:
    """The true counts that best explain the ``predicted`` counts (k,) through ``rates``
    (k x k, row = true class, columns = predicted shares): non-negative, summing to the cells
    counted."""
    from scipy.optimize import nnls

    predicted = np.asarray(predicted, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    total = predicted.sum()
    if total == 0:
        return np.zeros_like(predicted)
    estimate, _ = nnls(rates.T, predicted)
    return estimate * (total / estimate.sum()) if estimate.sum() > 0 else predicted.copy()


def run_confusion_rates(model: str | Path, family: str, classes: Sequence[str]) -> np.ndarray | None:
    """The test confusion rates of ``family``'s model from the RUN_DIR holding ``model`` (a
    RUN_DIR, its model.skops/model.joblib, or models/<key>.skops), rows and columns in
    ``classes`` order; None where there is no such table (a model file on its own, an adapted
    run) or it does not cover every class."""
    from cellclf.rundir.layout import CONFUSION

    model = Path(model)
    folder = model if model.is_dir() else model.parent
    if folder.name == "models" and not (folder / CONFUSION).is_file():
        folder = folder.parent
    path = folder / CONFUSION
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"model": str, "true": str, "predicted": str}, keep_default_na=False)
        table = table[table["model"] == family]
        counts = table.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum", fill_value=0)
        counts = counts.reindex(index=list(classes), columns=list(classes))
    except (OSError, ValueError, KeyError):
        return None
    if counts.isna().any().any() or (counts.sum(axis=1) == 0).any():
        return None
    values = counts.to_numpy(dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)
