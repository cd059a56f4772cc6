"""Test-set metrics from predicted probabilities, using scikit-learn's own functions."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    recall_score,
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
          roc_auc_ovr_macro (mean of the defined per-class AUCs), n and classes_present,
          and 95% intervals: accuracy_ci (Wilson score interval) and macro_f1_ci (percentile
          bootstrap over the images, :data:`BOOTSTRAP_RESAMPLES` resamples, seed 0).
          Balanced accuracy and macro-F1 average over the ``classes_present`` classes that
          occur in ``y_true``: a folder holding some classes only is not scored 0 on the
          others (predictions of an absent class still count, as errors of the true class).
        - per_class: one row per class of ``classes`` with precision, recall, f1, support
          and roc_auc (one-vs-rest). A class absent from y_true (support 0) has no recall,
          F1 or ROC-AUC (NaN), and a precision only if it was predicted (then 0).
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
    present = [name for name, n in zip(classes, support) if n > 0]
    absent = support == 0
    predicted = np.isin(np.asarray(classes, dtype=object), y_pred)
    recall, f1 = np.where(absent, np.nan, recall), np.where(absent, np.nan, f1)
    precision = np.where(absent & ~predicted, np.nan, precision)
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
    overall = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # balanced_accuracy_score's own definition (mean recall of the classes in y_true),
        # but told the classes, so a folder of one class is no warning
        "balanced_accuracy": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "classes_present": len(present),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y_true, proba, labels=classes)),
        "roc_auc_ovr_macro": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else None,
    }
    overall["accuracy_ci"] = wilson_interval(int((y_true == y_pred).sum()), len(y_true))
    overall["macro_f1_ci"] = macro_f1_interval(y_true, y_pred, present)
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


#: Resamples of the macro-F1 bootstrap interval.
BOOTSTRAP_RESAMPLES = 1000
#: Classes with fewer test images than this are named as too few to judge.
FEW_IMAGES = 10


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a proportion (scipy's binomtest), or None for n = 0."""
    from scipy.stats import binomtest

    if n == 0:
        return None
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(interval.low), float(interval.high)]


def macro_f1_interval(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], confidence: float = 0.95, seed: int = 0,
) -> list[float] | None:
    """Percentile bootstrap interval of the macro-F1 over ``classes`` (scipy.stats.bootstrap,
    the images resampled with their predictions), or None for fewer than 2 images or when
    every prediction is right (every resample then scores 1, which would claim certainty)."""
    from scipy.stats import bootstrap

    if len(y_true) < 2 or not len(classes):
        return None
    code = {name: i for i, name in enumerate(classes)}
    k = len(classes)
    true = np.array([code.get(v, k) for v in y_true])  # k: a class outside ``classes``
    pred = np.array([code.get(v, k) for v in y_pred])

    def macro_f1(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
        # vectorised over resamples: t, p are (..., n); F1 per class = 2 TP / (2 TP + FP + FN),
        # averaged over the classes present in the resample's truth (as evaluate() does)
        total, present = 0.0, 0
        for c in range(k):
            tp = ((t == c) & (p == c)).sum(axis=axis)
            support = (t == c).sum(axis=axis)
            denominator = support + (p == c).sum(axis=axis)
            score = np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)
            total = total + np.where(support > 0, score, 0.0)
            present = present + (support > 0)
        return total / np.maximum(present, 1)

    if np.all(true == pred):  # every resample scores 1: the bootstrap says nothing (see macro_f1_text)
        return None
    result = bootstrap((true, pred), macro_f1, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                       confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def interval_text(interval: Sequence[float] | None) -> str:
    """`` (95% CI 0.951-0.972)``, or nothing when there is no interval."""
    return "" if not interval else f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})"


def accuracy_text(overall: dict[str, Any]) -> str:
    """``accuracy 0.9650 (95% CI 0.947-0.977)`` as the commands print it."""
    return f"accuracy {overall['accuracy']:.4f}{interval_text(overall.get('accuracy_ci'))}"


def few_images(per_class: pd.DataFrame, below: int = FEW_IMAGES) -> list[str]:
    """The classes present with fewer than ``below`` scored images (too few to judge)."""
    rows = per_class[(per_class["support"] > 0) & (per_class["support"] < below)]
    return [f"{name} ({int(n)})" for name, n in zip(rows["class"], rows["support"])]


def macro_f1_text(overall: dict[str, Any], n_classes: int) -> str:
    """``macro-F1 0.9512 (95% CI ...)`` as the commands print it, saying over which classes it
    is averaged when some of the model's ``n_classes`` are absent from the scored images."""
    text = f"macro-F1 {overall['macro_f1']:.4f}{interval_text(overall.get('macro_f1_ci'))}"
    if overall.get("macro_f1_ci") is None and overall.get("accuracy") == 1.0:
        text += " (no bootstrap interval: no mistake to resample; the accuracy's interval shows the uncertainty)"
    present = overall.get("classes_present", n_classes)
    if present < n_classes:
        text += f" over the {present} class{'' if present == 1 else 'es'} present (of the model's {n_classes})"
    return text
