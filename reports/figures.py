"""Report figures: matplotlib / seaborn plots rendered to PNG ``data:`` URIs.

Figures come from :func:`cellembed.shared.plotting.new_figure` (no pyplot) and are encoded with
:func:`cellembed.shared.plotting.png_bytes` (no "Software" metadata, freed once encoded) at a
modest resolution, so the same data gives the same bytes and the report stays small.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from cellembed.shared.plotting import class_colours, new_figure, png_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Resolution of the generated plots; the figures are sized in inches for ~1 px per CSS px.
DPI = 80


def figure_data_uri(figure: "Figure", dpi: int = DPI) -> str:
    """Encode a figure as a PNG ``data:`` URI and release it."""
    return bytes_data_uri(png_bytes(figure, dpi), "image/png")


def bytes_data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` of some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_uri(data: bytes) -> str:
    """A PNG made elsewhere (a run's tuning or SHAP plot), embedded as it is."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG image")
    return bytes_data_uri(data, "image/png")


def plain(text: object) -> str:
    """Text for a matplotlib label: ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def confusion_heatmap(confusion: pd.DataFrame, classes: Sequence[str], title: str) -> str:
    """Row-normalised confusion matrix (``rate`` of the long table) as a seaborn heatmap.

    Args:
        confusion: long table with columns ``true, predicted, rate`` (cellclf format).
        classes: row and column order.
        title: plot title (the model).
    """
    import seaborn as sns

    classes = list(classes)
    matrix = (
        confusion.pivot_table(index="true", columns="predicted", values="rate", aggfunc="sum")
        .reindex(index=classes, columns=classes)
        .fillna(0.0)
    )
    size = 1.6 + 0.55 * len(classes)
    figure = new_figure(size + 1.2, size)
    axes = figure.subplots()
    labels = [plain(c) for c in classes]
    sns.heatmap(
        matrix.to_numpy(), ax=axes, annot=len(classes) <= 12, fmt=".2f", cmap="Blues", vmin=0, vmax=1,
        square=True, cbar_kws={"label": "share of the true class", "shrink": 0.8},
        xticklabels=labels, yticklabels=labels, annot_kws={"fontsize": 8},
    )
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(plain(title))
    axes.tick_params(axis="x", labelrotation=45)
    axes.tick_params(axis="y", labelrotation=0)
    for label in axes.get_xticklabels():
        label.set_horizontalalignment("right")
    return figure_data_uri(figure)


def roc_curves(panels: Sequence[tuple[str, Sequence[str], np.ndarray, Sequence[float | None]]], classes: Sequence[str]) -> str:
    """One-vs-rest ROC curves of every class, one panel per model.

    Args:
        panels: ``(title, labels, proba, aucs)`` per model: the (n,) true class names, the
            (n, k) predicted probabilities in ``classes`` order, and the k ROC-AUCs the
            model's record holds (shown in the legend; None where undefined).
        classes: the classes, in legend order.
    """
    from sklearn.metrics import roc_curve

    classes = list(classes)
    colours = class_colours(len(classes))
    figure = new_figure(5.2 * len(panels), 5.0)
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for axes, (title, labels, proba, aucs) in zip(axes_list, panels):
        labels = np.asarray(labels, dtype=object).astype(str)
        for k, name in enumerate(classes):
            positive = labels == name
            if positive.all() or not positive.any():
                continue  # the curve is undefined without both positives and negatives
            fpr, tpr, _ = roc_curve(positive, proba[:, k])
            axes.plot(fpr, tpr, color=colours[k], lw=1.4, label=f"{plain(name)} (AUC {_auc_text(aucs[k])})")
        axes.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        axes.set_xlim(-0.01, 1.01)
        axes.set_ylim(-0.01, 1.01)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title(plain(title))
        axes.set_aspect("equal")
        if axes.get_legend_handles_labels()[0]:  # no curve at all when the images are of one class
            axes.legend(fontsize=7, loc="lower right")
    return figure_data_uri(figure)


def _auc_text(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def reliability_diagram(panels: Sequence[tuple[str, Sequence[dict], Sequence[dict]]]) -> str:
    """Reliability diagrams, one panel per model: the test images binned by their top
    probability, each bin's accuracy against its mean confidence, before and after
    calibration (marker area ~ images in the bin); the diagonal is perfect calibration.

    Args:
        panels: ``(title, before, after)`` per model; ``before``/``after`` are the bins of
            ``cellclf.calibration.reliability`` (dicts with ``confidence, accuracy, n``).
    """
    figure = new_figure(4.4 * len(panels), 4.4)
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for axes, (title, before, after) in zip(axes_list, panels):
        axes.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--", label="perfectly calibrated")
        for bins, colour, name in ((before, "#c0504d", "model's own"), (after, "#3a6ea5", "calibrated")):
            if not bins:
                continue
            total = sum(b["n"] for b in bins)
            axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "-", color=colour, lw=1.0)
            axes.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=colour,
                         s=[12 + 300 * b["n"] / total for b in bins], alpha=0.75, label=name)
        axes.set_xlim(0, 1.01)
        axes.set_ylim(0, 1.01)
        axes.set_xlabel("confidence (top probability)")
        axes.set_ylabel("accuracy")
        axes.set_title(plain(title))
        axes.set_aspect("equal")
        axes.legend(fontsize=7, loc="upper left")
    return figure_data_uri(figure)
