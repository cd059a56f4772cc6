"""Report figures: matplotlib / seaborn plots rendered to PNG ``data:`` URIs.

Figures come from :func:`cellembed.plotting.new_figure` (no pyplot) and are encoded with
:func:`cellembed.plotting.png_bytes` (no "Software" metadata, freed once encoded) at a
modest resolution, so the same data gives the same bytes and the report stays small.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from cellembed.plotting import class_colours, new_figure, png_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Resolution of the generated plots; the figures are sized in inches for ~1 px per CSS px.
DPI = 80
PROBA_PREFIX = "proba_"


def figure_data_uri(figure: "Figure", dpi: int = DPI) -> str:
    """Encode a figure as a PNG ``data:`` URI and release it."""
    return bytes_data_uri(png_bytes(figure, dpi), "image/png")


def bytes_data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` of some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_file_data_uri(path: Path) -> str:
    """An existing PNG file (e.g. a SHAP summary of the run), embedded as it is."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG file")
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


def roc_curves(panels: Sequence[tuple[str, pd.DataFrame]], classes: Sequence[str]) -> str:
    """One-vs-rest ROC curves of every class, one panel per model.

    Args:
        panels: ``(title, predictions)`` pairs; predictions have a ``label`` column and one
            ``proba_<class>`` column per class.
        classes: the classes, in legend order.
    """
    from sklearn.metrics import auc, roc_curve

    classes = list(classes)
    colours = class_colours(len(classes))
    figure = new_figure(5.2 * len(panels), 5.0)
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for axes, (title, predictions) in zip(axes_list, panels):
        labels = predictions["label"].astype(str).to_numpy()
        for k, name in enumerate(classes):
            positive = labels == name
            if positive.all() or not positive.any():
                continue  # the curve is undefined without both positives and negatives
            fpr, tpr, _ = roc_curve(positive, predictions[PROBA_PREFIX + name].to_numpy(dtype=float))
            axes.plot(fpr, tpr, color=colours[k], lw=1.4, label=f"{plain(name)} (AUC {auc(fpr, tpr):.3f})")
        axes.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        axes.set_xlim(-0.01, 1.01)
        axes.set_ylim(-0.01, 1.01)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title(plain(title))
        axes.set_aspect("equal")
        axes.legend(fontsize=7, loc="lower right")
    return figure_data_uri(figure)


def lr_tuning_plot(trials: pd.DataFrame) -> str:
    """Logistic regression: CV macro-F1 (± fold std) against C (log scale), per class weight.

    Args:
        trials: the ``lr`` rows of tuning.csv (``param_C, param_class_weight, score,
            score_std, selected``).
    """
    figure = new_figure(6.0, 3.8)
    axes = figure.subplots()
    weights = trials["param_class_weight"].fillna("none").astype(str)
    for weight in sorted(weights.unique()):
        rows = trials[weights == weight].sort_values("param_C")
        axes.errorbar(
            rows["param_C"].astype(float), rows["score"].astype(float), yerr=rows["score_std"].astype(float).fillna(0.0),
            marker="o", capsize=3, label=f"class_weight={plain(weight)}",
        )
    chosen = trials[trials["selected"].astype(str).str.lower() == "true"]
    if len(chosen):
        axes.scatter(chosen["param_C"].astype(float), chosen["score"].astype(float), s=160, facecolors="none",
                     edgecolors="#c00", linewidths=1.5, label="selected", zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel("C (inverse regularisation strength)")
    axes.set_ylabel(plain(_score_label(trials)))
    axes.set_title("logistic regression tuning")
    axes.legend(fontsize=8)
    return figure_data_uri(figure)


def xgb_tuning_plot(trials: pd.DataFrame, params: Sequence[str]) -> str:
    """XGBoost: validation score against each main parameter (one scatter per parameter).

    Args:
        trials: the ``xgb`` rows of tuning.csv.
        params: parameter names whose ``param_<name>`` columns to plot.
    """
    figure = new_figure(3.0 * len(params), 3.2)
    axes_list = figure.subplots(1, len(params), squeeze=False, sharey=True)[0]
    selected = trials["selected"].astype(str).str.lower() == "true"
    for axes, name in zip(axes_list, params):
        x = trials[f"param_{name}"].astype(float)
        axes.scatter(x[~selected], trials["score"][~selected].astype(float), color="#3a6ea5", s=30, label="trial")
        axes.scatter(x[selected], trials["score"][selected].astype(float), color="#c00", s=60, marker="*", label="selected")
        # Linear axes throughout: the sampled learning rates span less than a decade, where a
        # log axis shows either crowded minor labels or none.
        axes.tick_params(axis="x", labelsize=7)
        axes.set_xlabel(plain(name))
    axes_list[0].set_ylabel(plain(_score_label(trials)))
    axes_list[0].legend(fontsize=7)
    figure.suptitle("XGBoost tuning")
    return figure_data_uri(figure)


def _score_label(trials: pd.DataFrame) -> str:
    names = trials["score_name"].dropna().unique()
    return {"cv_macro_f1": "CV macro-F1", "val_macro_f1": "validation macro-F1"}.get(
        str(names[0]) if len(names) else "", "score"
    )
