"""Section builders shared by the run report and the evaluation report.

Each builder takes the model records (see :mod:`cellreports` for the attributes read),
wrapped in a :class:`ModelView`, and returns a :class:`~cellreports.html.Section` with a
fixed ``id``. A section whose data is missing says why instead of showing nothing.
Nothing here computes a metric: every number shown comes from the records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Any, Sequence

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records' types, for type checkers only: cellreports does not import cellclf
    from cellclf.rundir.records import ModelRecord

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec
from cellreports import figures
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot, gallery
from cellreports.html import (
    Markup, Section, concat, element, figure, image, note, paragraph, preformatted, side_by_side, table, warning,
)

SHAP_TOP_SHOWN = 5
#: Classes with fewer scored images than this are named as too few to judge (as cellclf.metrics.FEW_IMAGES).
FEW_IMAGES = 10


@dataclass
class ModelView:
    """How a report shows one model record.

    Attributes:
        record: the model's record (a ``cellclf.rundir.ModelRecord``, read by attribute).
        title: the model's name on the page.
        proba: (n, k) predicted probabilities of ``record.predictions``, in class order.
        extra: optional columns for the comparison table (validation macro-F1, fit seconds...),
            ``None`` values show as "n/a".
    """

    record: "ModelRecord"
    title: str
    proba: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, record: "ModelRecord", classes: Sequence[str], title: str, extra: dict[str, Any] | None = None) -> "ModelView":
        return cls(record, title, record.probabilities(classes), extra or {})

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def best(self) -> bool:
        return bool(self.record.best)

    @property
    def overall(self) -> dict[str, Any]:
        return self.record.overall

    @property
    def per_class(self) -> pd.DataFrame:
        return self.record.per_class

    @property
    def predictions(self) -> pd.DataFrame:
        return self.record.predictions


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


def macro_f1_phrase(overall: dict[str, Any], n_classes: int) -> str:
    """``macro-F1 0.9512``, saying over which classes it is averaged when some of the
    ``n_classes`` have no scored images (``overall["classes_present"]``)."""
    text = f"macro-F1 {number(overall.get('macro_f1'))}"
    present = overall.get("classes_present")
    if present is not None and present < n_classes:
        text += f" over the {present} class{'' if present == 1 else 'es'} present (of the model's {n_classes})"
    return text


def data_section(
    classes: Sequence[str],
    counts: dict[str, dict[str, int]],
    spec: EmbeddingSpec | None,
    facts: Sequence[tuple[str, object]],
    spec_missing: str = "the embedding spec was not recorded",
    warning_text: str | None = None,
) -> Section:
    """Images per class and split, facts about the input, and the embedding spec
    (``warning_text``: a warning about the input shown first, e.g. an augmented folder)."""
    splits = list(counts)
    rows = [[name, *(counts[s].get(name, 0) for s in splits), sum(counts[s].get(name, 0) for s in splits)] for name in classes]
    totals = [sum(counts[s].get(name, 0) for name in classes) for s in splits]
    rows.append([Markup("<b>total</b>"), *totals, sum(totals)])
    numeric = range(1, len(splits) + 2)
    parts = [
        *([warning(warning_text)] if warning_text else []),
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


def models_section(models: Sequence[ModelView], intro: str) -> Section:
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
                *(_with_interval(model.overall, key) for key, _ in METRIC_COLUMNS),
                *(_cell(model.extra.get(name)) for name in extra_names),
            ]
        )
    body = [
        paragraph(intro, " Accuracy and macro-F1 carry a 95% interval: Wilson's for the accuracy, a bootstrap "
                  "over the test images for the macro-F1; with few test images they are wide."),
        table(
            columns, rows, numeric=range(1, 2 + len(METRIC_COLUMNS)), id="models-table",
            row_classes=["best" if m.best else None for m in models],
        ),
    ]
    return Section("models", "Model comparison", concat(body))


def _with_interval(overall: dict[str, Any], key: str) -> str:
    """``0.9683 (0.951-0.980)`` when the record holds ``<key>_ci``, else the number."""
    interval = overall.get(f"{key}_ci")
    text = number(overall.get(key))
    return text if not interval else f"{text} ({interval[0]:.3f}–{interval[1]:.3f})"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return number(value, 4 if abs(value) < 100 else 1)
    return number(value)


def per_class_section(models: Sequence[ModelView]) -> Section:
    """Precision, recall, F1, support and one-vs-rest ROC-AUC per class, one table per model."""
    parts = []
    for model in models:
        rows = [
            [r["class"], number(r["precision"]), number(r["recall"]), number(r["f1"]), number(int(r["support"])), number(_float(r["roc_auc"]))]
            for r in model.per_class.to_dict("records")
        ]
        parts.append(element("h3", model.title))
        few = model.per_class[(model.per_class["support"] > 0) & (model.per_class["support"] < FEW_IMAGES)]
        if len(few):
            listed = ", ".join(f"{name} ({int(n)})" for name, n in zip(few["class"], few["support"]))
            parts.append(note(f"Fewer than {FEW_IMAGES} test images: {listed}. Their precision, recall and F1 "
                              "rest on too few cells to judge; a single image moves them by 10 points or more."))
        parts.append(
            table(["class", "precision", "recall", "F1", "support", "ROC-AUC"], rows, numeric=range(1, 6),
                  id=f"per-class-{model.key}")
        )
    parts.append(paragraph(
        "Recall, F1 and ROC-AUC are n/a for a class with no test images (support 0), and its precision too "
        "unless it was predicted; macro-F1 and balanced accuracy average the classes with test images. "
        "ROC-AUC is also n/a when all the images are of that one class."
    ))
    return Section("per-class", "Per-class metrics", concat(parts))


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def confusion_section(models: Sequence[ModelView], classes: Sequence[str]) -> Section:
    """Row-normalised confusion matrices (each row sums to 1: the recall is on the diagonal)."""
    plots = [
        figure(image(figures.confusion_heatmap(m.record.confusion, classes, m.title), f"confusion matrix of {m.title}",
                     class_="plot"))
        for m in models
    ]
    intro = paragraph("Each row shows how the test images of one true class were classified, as shares of that class.")
    return Section("confusion", "Confusion matrices", concat([intro, side_by_side(*plots)]))


def roc_section(models: Sequence[ModelView], classes: Sequence[str]) -> Section:
    """One-vs-rest ROC curves of every class, one panel per model."""
    panels = []
    for m in models:
        aucs = m.per_class.set_index("class")["roc_auc"].reindex(list(classes))
        panels.append((m.title, m.predictions["label"], m.proba, [_float(v) for v in aucs]))
    uri = figures.roc_curves(panels, classes)
    intro = paragraph("One-vs-rest ROC curve of each class from the predicted probabilities (AUC in the legend).")
    return Section("roc", "ROC curves", concat([intro, image(uri, "one-vs-rest ROC curves", class_="plot")]))


def tuning_section(models: Sequence[ModelView], tuning: pd.DataFrame | None, missing: str) -> Section:
    """Each model's tuning plot (drawn by its family at fit time), and the table of trials.

    Args:
        tuning: the tuning.csv table (``model, trial, params, score_name, score, score_std,
            seconds, selected``), None when it is gone.
        missing: why ``tuning`` is None.
    """
    plotted = [m for m in models if m.record.tuning_plot_file]
    if (tuning is None or tuning.empty) and not any(m.record.tuning_plot for m in plotted):
        return Section("tuning", "Tuning", note(f"Not available because {missing}."))
    parts = []
    for model in plotted:
        record = model.record
        parts.append(element("h3", model.title))
        if record.tuning_plot:
            parts.append(image(figures.png_data_uri(record.tuning_plot), f"{record.key} tuning plot", class_="plot"))
        else:
            parts.append(note(f"The tuning plot is not available because {record.tuning_plot_file} is missing or not a PNG image."))
        if record.tuning_note:
            parts.append(paragraph(record.tuning_note))
    if tuning is None or tuning.empty:
        parts.append(note(f"The table of all trials is not available because {missing}."))
    else:
        parts.append(_trials_table(tuning))
    return Section("tuning", "Tuning", concat(parts))


def _trials_table(tuning: pd.DataFrame) -> Markup:
    rows = []
    for r in tuning.to_dict("records"):
        params = json.loads(r["params"]) if isinstance(r.get("params"), str) else {}
        rows.append(
            [r["model"], number(int(r["trial"])), " ".join(f"{k}={v}" for k, v in params.items()), str(r["score_name"]),
             number(_float(r["score"])), number(_float(r.get("score_std"))), number(_float(r["seconds"]), 1),
             "✔" if str(r["selected"]).lower() == "true" else ""]
        )
    return table(["model", "trial", "parameters", "score", "value", "std", "seconds", "selected"], rows,
                 numeric=(1, 4, 5, 6), caption="All trials (tuning.csv)", id="tuning-table")


def shap_section(models: Sequence[ModelView], missing: str, tap_roles: Mapping[str, str] | None = None) -> Section:
    """SHAP summary plots, facts of the computation, each layer's share, and the top
    dimensions per class.

    Args:
        missing: why a model has no SHAP summary at all.
        tap_roles: what each tap (layer) sees, by name (``Backbone.tap_role``).
    """
    parts = [_layer_shares(models, tap_roles or {})]
    for model in models:
        record = model.record
        shap = record.shap
        parts.append(element("h3", model.title))
        if shap is None:
            parts.append(note(f"Not available because {missing}."))
            continue
        facts = shap.facts
        if facts:
            parts.append(
                paragraph(
                    f"{facts.get('method', 'SHAP')} of the {facts.get('output', 'class margin')}, on "
                    f"{facts.get('rows_explained')} of {facts.get('test_rows')} test images; largest additivity "
                    f"error {_float(facts.get('max_additivity_error')) or 0.0:.1e}."
                )
            )
        if shap.plot:
            parts.append(image(figures.png_data_uri(shap.plot), f"SHAP summary of {model.title}", class_="plot"))
        else:
            parts.append(note(f"The summary plot is not available because {record.shap_plot_file} is missing or not a PNG image."))
        if shap.top is not None:
            parts.append(_top_dimensions(shap.top, record.key))
        else:
            parts.append(note(f"The top dimensions are not available because {record.shap_top_file} is missing."))
    intro = paragraph(
        "How each class's score (its margin: the model's log-odds for that class) is built from the "
        "embedding. The plots are shap's beeswarm plots, one row per class and one dot per test image. Left: the "
        "push of each layer (tap) of the network on that class's margin, the sum over its dimensions; red dots "
        "are the images of that class, blue the others, so a layer whose red dots sit right of zero and blue "
        "dots left is one the class is recognised by. Right: the six embedding dimensions (tap:index) with the "
        "largest mean |SHAP value| for that class, each dot coloured by the image's value of that dimension "
        "(red high, blue low). The values are exact (computed in closed form from the model, and checked to add "
        "up to each margin); the same numbers are in shap/<model>_*.csv and, from Python, "
        "ImageClassifier.shap_explanation gives them as a shap.Explanation. "
        f"The tables show the top {SHAP_TOP_SHOWN} dimensions per class (mean |SHAP|); "
        "the full top 20 are in shap/<model>_top20.csv."
    )
    return Section("shap", "SHAP explanations", concat([intro, *parts]))


def _layer_shares(models: Sequence[ModelView], tap_roles: Mapping[str, str]) -> Markup:
    """Each tap with what it sees and its share of the mean |SHAP| per model (mean over classes)."""
    shares = {}
    for model in models:
        by_tap = model.record.shap.by_tap if model.record.shap is not None else None
        if by_tap is not None and len(by_tap):
            shares[model.title] = by_tap.groupby("tap", sort=False)["share"].mean()
    taps = list(dict.fromkeys([*tap_roles, *(t for s in shares.values() for t in s.index)]))
    if not taps:
        return Markup("")
    rows = [[tap, tap_roles.get(tap, ""), *(f"{s.get(tap, float('nan')):.2f}" for s in shares.values())] for tap in taps]
    return table(["layer (Keras name)", "what it sees", *(f"share: {title}" for title in shares)], rows,
                 numeric=range(2, 2 + len(shares)),
                 caption="The layers (taps) of the embedding, from early to late, and their share of the mean |SHAP| "
                         "(averaged over the classes)")


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
    model: ModelView, classes: Sequence[str], images: ImagesRoot, limit: int = GALLERY_LIMIT,
    intro: str | None = None,
) -> Section:
    """Thumbnails of the most confident mistakes of ``model`` (or why there are none)."""
    body = gallery(model.record, classes, images, model.title, limit)
    return Section("gallery", "Worst misclassified images", concat([paragraph(intro), body] if intro else [body]))


def calibration_section(models: Sequence[ModelView]) -> Section:
    """Calibration (temperature, log loss and ECE before / after, reliability diagrams) and
    the conformal prediction sets' coverage on the test split, per model."""
    calibrated = [m for m in models if getattr(m.record, "calibration", None)]
    if not calibrated:
        return Section("calibration", "Calibration and prediction sets", note(
            "Not available because this run was made by a cellclf that did not calibrate its models; re-run cellclf fit."))
    first = calibrated[0].record.calibration
    parts = [paragraph(
        f"Probabilities are calibrated by {first['method']}: the model's log-probabilities are divided by one "
        "number, the temperature, chosen to minimise the validation images' log loss; this never changes the "
        "predicted class. The expected calibration error (ECE) is the average gap between confidence and "
        "accuracy over confidence bins (0 is perfect). Prediction sets: "
        f"{first['sets']}, fitted on the same {first['validation_images']} validation images; the test images "
        "measure them. A set is never empty, so its coverage is at least the accuracy: where the model is right "
        "more often than the target, the sets are single classes and the coverage is above the target. Bins "
        "with few images make the diagram jagged below the top bin."
    )]
    rows = []
    for m in calibrated:
        c = m.record.calibration
        for split in ("validation", "test"):
            f = c[split]
            rows.append([m.title, split, number(c["temperature"], 3), number(f["log_loss_before"]), number(f["log_loss_after"]),
                         number(f["ece_before"]), number(f["ece_after"]), number(f["n"])])
    parts.append(table(["model", "split", "temperature", "log loss before", "log loss after", "ECE before", "ECE after",
                        "images"], rows, numeric=range(2, 8), caption="Calibration", id="calibration-table"))
    rows = []
    for m in calibrated:
        for row in m.record.calibration["coverage_test"]:
            rows.append([m.title, f"{row['alpha']:g}", f"{100 * row['target']:g}%", f"{100 * row['coverage']:.1f}%",
                         number(row["mean_set_size"], 2), number(row["n"])])
    parts.append(table(["model", "alpha", "target coverage", "test coverage", "mean set size", "test images"], rows,
                       numeric=range(1, 6), caption="Prediction sets on the test split", id="coverage-table"))
    uri = figures.reliability_diagram([(m.title, m.record.calibration["reliability_test"]["before"],
                                        m.record.calibration["reliability_test"]["after"]) for m in calibrated])
    parts.append(figure(image(uri, "reliability diagrams of the test split", class_="plot"),
                        "Reliability of the test split: each dot is a confidence bin (its area ~ its images); "
                        "on the dashed line the confidence equals the accuracy."))
    novelty = first.get("novelty")
    if novelty:
        level = novelty["level"]
        parts.append(paragraph(
            "Drift signal (how unlike the training images a new cell is; cellclf predict's novelty_p): "
            f"{novelty['components']} directions of the training images, scored against {novelty['calibration_images']} "
            f"validation images ({novelty['size_mb']:g} MB in the model file). {100 * novelty['test_flagged']:.1f}% "
            f"of the test images (never seen, same lab) have novelty p < {level:g}, where about {100 * level:g}% is "
            "expected; calibration and prediction sets hold for cells like these, not for another lab's cells, "
            "which the signal flags."
            + (f" With {novelty['calibration_images']} validation images no cell can reach p < {level:g}."
               if novelty["smallest_p"] >= level else "")
        ))
    return Section("calibration", "Calibration and prediction sets", concat(parts))
