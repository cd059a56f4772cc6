"""Which images a gallery shows, in which order: the fit's heat-map gallery
(:mod:`cellclf.gallery_maps`) and the reports' galleries (through
:meth:`cellclf.rundir.records.ModelRecord.worst_misclassified`) rank the same way."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def worst_misclassified(
    predictions: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], limit: int = 24
) -> pd.DataFrame:
    """The misclassified rows, most confident first, at most ``limit``.

    Args:
        predictions: ``path, label, predicted`` columns, one row per image.
        proba: (n, k) predicted probabilities of those rows, columns in ``classes`` order.
        classes: the model's classes.
    Returns:
        those rows (original columns) plus ``confidence`` (probability of the predicted
        class) and ``proba_true`` (probability of the true class).
    """
    mistaken = (predictions["label"].astype(str) != predictions["predicted"].astype(str)).to_numpy()
    return _ranked(predictions[mistaken], np.asarray(proba, dtype=float)[mistaken], classes).head(limit).reset_index(drop=True)


def most_confident_correct(
    predictions: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], per_class: int = 2
) -> pd.DataFrame:
    """The ``per_class`` most confident correct rows of each class (classes in order)."""
    right = (predictions["label"].astype(str) == predictions["predicted"].astype(str)).to_numpy()
    ranked = _ranked(predictions[right], np.asarray(proba, dtype=float)[right], classes)
    parts = [ranked[ranked["label"].astype(str) == c].head(per_class) for c in classes]
    return pd.concat(parts, ignore_index=True) if parts else ranked.head(0)


def _ranked(rows: pd.DataFrame, proba: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    rows = rows.copy()
    column = {c: k for k, c in enumerate(classes)}
    index = np.arange(len(rows))
    rows["confidence"] = proba[index, [column[p] for p in rows["predicted"].astype(str)]] if len(rows) else []
    true_columns = [column.get(t, -1) for t in rows["label"].astype(str)]
    rows["proba_true"] = [proba[r, k] if k >= 0 else np.nan for r, k in zip(index, true_columns)]
    return rows.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
