"""Section builders shared by the run report and the evaluation report.

Each builder takes plain data (DataFrames in the cellclf file formats, dicts from
metrics.json) and returns a :class:`~cellreports.html.Section` with a fixed ``id``.
A section whose data is missing says why instead of showing nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from cellembed import EmbeddingSpec
from cellreports import figures
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot, gallery
from cellreports.html import Markup, Section, concat, element, figure, image, note, paragraph, preformatted, side_by_side, table

#: Main XGBoost parameters plotted against the validation score (when tuning.csv has them).
XGB_TUNING_PARAMS = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree")
SHAP_TOP_SHOWN = 5


@dataclass
class ModelEvaluation:
    """One model scored on one labelled set, in the cellclf formats.

    Attributes:
        key: short name (``lr``, ``xgb``).
        title: name for people (``logistic regression (lr)``).
        overall: accuracy, balanced_accuracy, macro_f1, log_loss, roc_auc_ovr_macro, n.
        per_class: ``class, precision, recall, f1, support, roc_auc``.
        confusion: ``true, predicted, count, rate``.
        predictions: ``path, label, predicted, proba_<class>...``.
        extra: optional columns for the comparison table (validation macro-F1, fit seconds...),
            ``None`` values show as "n/a".
        best: whether this is the selected model.
    """

    key: str
    title: str
    overall: dict[str, Any]
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)
    best: bool = False


def number(value: Any, digits: int = 4) -> str:
    """A table cell for a number: fixed decimals, ints as they are, missing as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def data_section(
    classes: Sequence[str],
    counts: dict[str, dict[str, int]],
    spec: EmbeddingSpec | None,
    facts: Sequence[tuple[str, object]],
    spec_missing: str = "the embedding spec was not recorded",
) -> Section:
    """Images per class and split, facts about the input, and the embedding spec."""
    splits = list(counts)
    rows = [[name, *(counts[s].get(name, 0) for s in splits), sum(counts[s].get(name, 0) for s in splits)] for name in classes]
    totals = [sum(counts[s].get(name, 0) for name in classes) for s in splits]
    rows.append([Markup("<b>total</b>"), *totals, sum(totals)])
    numeric = range(1, len(splits) + 2)
    parts = [
        table(["class", *splits, "total"], rows, numeric=numeric, caption="Images per class and split", id="counts-table"),
        table(["", ""], [[name, value] for name, value in facts], caption="Input", id="facts-table"),
        element("h3", "Embedding spec"),
        preformatted(spec.describe()) if spec is not None else note(f"Not available because {spec_missing}."),
    ]
    return Section("data", "Data", concat(parts))


METRIC_COLUMNS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro-F1"),
    ("log_loss", "log loss"),
    ("roc_auc_ovr_macro", "ROC-AUC (macro, one-vs-rest)"),
)


def models_section(models: Sequence[ModelEvaluation], intro: str) -> Section:
    """Comparison table: test metrics and the models' extra facts, best model highlighted."""
    extra_names = list(dict.fromkeys(name for m in models for name in m.extra))
    columns = ["model", "test images", *(label for _, label in METRIC_COLUMNS), *extra_names]
    rows = []
    for model in models:
        title = model.title + (" ★ selected" if model.best else "")
        rows.append(
            [
                title,
                number(model.overall.get("n")),
                *(number(model.overall.get(key)) for key, _ in METRIC_COLUMNS),
                *(_cell(model.extra.get(name)) for name in extra_names),
            ]
        )
    body = [
        paragraph(intro),
        table(
            columns, rows, numeric=range(1, 2 + len(METRIC_COLUMNS)), id="models-table",
            row_classes=["best" if m.best else None for m in models],
        ),
    ]
    return Section("models", "Model comparison", concat(body))


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return number(value, 4 if abs(value) < 100 else 1)
    return number(value)


def per_class_section(models: Sequence[ModelEvaluation]) -> Section:
    """Precision, recall, F1, support and one-vs-rest ROC-AUC per class, one table per model."""
    parts = []
    for model in models:
        rows = [
            [r["class"], number(r["precision"]), number(r["recall"]), number(r["f1"]), number(int(r["support"])), number(_float(r["roc_auc"]))]
            for r in model.per_class.to_dict("records")
        ]
        parts.append(element("h3", model.title))
        parts.append(
            table(["class", "precision", "recall", "F1", "support", "ROC-AUC"], rows, numeric=range(1, 6),
                  id=f"per-class-{model.key}")
        )
    parts.append(paragraph("ROC-AUC is n/a for a class without test images (or with only that class)."))
    return Section("per-class", "Per-class metrics", concat(parts))


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def confusion_section(models: Sequence[ModelEvaluation], classes: Sequence[str]) -> Section:
    """Row-normalised confusion matrices (each row sums to 1: the recall is on the diagonal)."""
    plots = [
        figure(image(figures.confusion_heatmap(m.confusion, classes, m.title), f"confusion matrix of {m.title}", class_="plot"))
        for m in models
    ]
    intro = paragraph("Each row shows how the test images of one true class were classified, as shares of that class.")
    return Section("confusion", "Confusion matrices", concat([intro, side_by_side(*plots)]))


def roc_section(models: Sequence[ModelEvaluation], classes: Sequence[str]) -> Section:
    """One-vs-rest ROC curves of every class, one panel per model."""
    uri = figures.roc_curves([(m.title, m.predictions) for m in models], classes)
    intro = paragraph("One-vs-rest ROC curve of each class from the predicted probabilities (AUC in the legend).")
    return Section("roc", "ROC curves", concat([intro, image(uri, "one-vs-rest ROC curves", class_="plot")]))


def tuning_section(tuning: pd.DataFrame | None, missing: str = "tuning.csv is missing") -> Section:
    """Score against the main hyper-parameters, and the table of trials."""
    if tuning is None or tuning.empty:
        return Section("tuning", "Tuning", note(f"Not available because {missing}."))
    parts = []
    lr = tuning[tuning["model"] == "lr"]
    if len(lr) and {"param_C", "param_class_weight"} <= set(lr.columns):
        parts += [element("h3", "logistic regression (lr)"), image(figures.lr_tuning_plot(lr), "lr tuning plot", class_="plot")]
    xgb = tuning[tuning["model"] == "xgb"]
    shown = [p for p in XGB_TUNING_PARAMS if f"param_{p}" in xgb.columns and xgb[f"param_{p}"].notna().any()]
    if len(xgb) and shown:
        parts += [element("h3", "XGBoost (xgb)"), image(figures.xgb_tuning_plot(xgb, shown), "xgb tuning plot", class_="plot")]
        if len(xgb) < 3:
            parts.append(paragraph(f"Only {len(xgb)} XGBoost setting(s) tried, so these plots say little about the parameters."))
    rows = []
    for r in tuning.to_dict("records"):
        params = json.loads(r["params"]) if isinstance(r.get("params"), str) else {}
        rows.append(
            [r["model"], number(int(r["trial"])), " ".join(f"{k}={v}" for k, v in params.items()), str(r["score_name"]),
             number(_float(r["score"])), number(_float(r.get("score_std"))), number(_float(r["seconds"]), 1),
             "✔" if str(r["selected"]).lower() == "true" else ""]
        )
    parts.append(
        table(["model", "trial", "parameters", "score", "value", "std", "seconds", "selected"], rows,
              numeric=(1, 4, 5, 6), caption="All trials (tuning.csv)", id="tuning-table")
    )
    return Section("tuning", "Tuning", concat(parts))


def shap_section(shap_dir: Path, models: Sequence[ModelEvaluation], records: dict[str, Any], missing: str) -> Section:
    """SHAP summary plots of the run, facts of the computation and the top dimensions per class.

    Args:
        shap_dir: the run's ``shap/`` folder.
        records: per model key, its record of ``shap/summary.json`` (None when not computed).
        missing: why there are no SHAP results at all (used when no model has any).
    """
    parts = []
    for model in models:
        record = records.get(model.key)
        top_file = shap_dir / f"{model.key}_top20.csv"
        plot_file = shap_dir / f"{model.key}_summary.png"
        parts.append(element("h3", model.title))
        if not record and not top_file.is_file():
            parts.append(note(f"Not available because {missing}."))
            continue
        if record:
            parts.append(
                paragraph(
                    f"{record.get('method', 'SHAP')} of the {record.get('output', 'class margin')}, on "
                    f"{record.get('rows_explained')} of {record.get('test_rows')} test images; largest additivity "
                    f"error {_float(record.get('max_additivity_error')) or 0.0:.1e}."
                )
            )
        if plot_file.is_file():
            parts.append(image(figures.png_file_data_uri(plot_file), f"SHAP summary of {model.title}", class_="plot"))
        else:
            parts.append(note(f"The summary plot is not available because {plot_file.name} is missing."))
        if top_file.is_file():
            parts.append(_top_dimensions(pd.read_csv(top_file, keep_default_na=False, na_values=[""]), model.key))
        else:
            parts.append(note(f"The top dimensions are not available because {top_file.name} is missing."))
    intro = paragraph(
        "Mean |SHAP value| of each embedding dimension (tap:index) for each class's margin. "
        f"The tables show the top {SHAP_TOP_SHOWN} dimensions per class (mean |SHAP|); "
        "the full top 20 are in shap/<model>_top20.csv."
    )
    return Section("shap", "SHAP explanations", concat([intro, *parts]))


def _top_dimensions(top: pd.DataFrame, key: str) -> Markup:
    top = top.astype({"class": str})
    rows = []
    for name, group in top.groupby("class", sort=False):
        group = group.sort_values("rank").head(SHAP_TOP_SHOWN)
        rows.append([name, *(f"{f} ({v:.3g})" for f, v in zip(group["feature"], group["mean_abs_shap"]))])
    width = max((len(r) for r in rows), default=1)
    rows = [r + [""] * (width - len(r)) for r in rows]
    return table(["class", *(f"#{k}" for k in range(1, width))], rows, id=f"shap-top-{key}",
                 caption="Top dimensions per class")


def gallery_section(
    model: ModelEvaluation, classes: Sequence[str], images: ImagesRoot, limit: int = GALLERY_LIMIT,
    intro: str | None = None,
) -> Section:
    """Thumbnails of the most confident mistakes of ``model`` (or why there are none)."""
    body = gallery(model.predictions, classes, images, model.title, limit)
    return Section("gallery", "Worst misclassified images", concat([paragraph(intro), body] if intro else [body]))
