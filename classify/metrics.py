"""Test-set metrics from predicted probabilities, using scikit-learn's own functions."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def evaluate(
    y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Overall, per-class and confusion metrics of one model on one labelled set.

    Args:
        y_true: (n,) true class names.
        proba: (n, k) predicted probabilities, columns in the order of ``classes``.
        classes: the k class names the model knows.

    Returns:
        ``(overall, per_class, confusion)``:

        - overall: accuracy, balanced_accuracy, macro_f1, weighted_f1, log_loss,
          roc_auc_ovr_macro (mean of the defined per-class AUCs) and n.
        - per_class: one row per class with precision, recall, f1, support and roc_auc
          (one-vs-rest; NaN when the class is absent from y_true).
        - confusion: long table ``true, predicted, count, rate`` where rate is the count
          divided by the row total (the recall of ``true`` on the diagonal).
    """
    classes = list(classes)
    y_true = np.asarray(y_true, dtype=object)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    aucs = []
    for k, name in enumerate(classes):
        positive = y_true == name
        aucs.append(float(roc_auc_score(positive, proba[:, k])) if 0 < positive.sum() < len(y_true) else np.nan)
    per_class = pd.DataFrame(
        {
            "class": classes,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(int),
            "roc_auc": aucs,
        }
    )
    with warnings.catch_warnings():
        # Scoring a folder that holds only some classes: balanced accuracy averages the
        # recall of the classes present, as defined; scikit-learn's warning would only
        # alarm the reader.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = float(balanced_accuracy_score(y_true, y_pred))
    overall = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy,
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y_true, proba, labels=classes)),
        "roc_auc_ovr_macro": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else None,
    }
    counts = confusion_matrix(y_true, y_pred, labels=classes)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    true_idx, pred_idx = np.meshgrid(np.arange(len(classes)), np.arange(len(classes)), indexing="ij")
    confusion = pd.DataFrame(
        {
            "true": np.asarray(classes, dtype=object)[true_idx.ravel()],
            "predicted": np.asarray(classes, dtype=object)[pred_idx.ravel()],
            "count": counts.ravel().astype(int),
            "rate": rates.ravel(),
        }
    )
    return overall, per_class, confusion
