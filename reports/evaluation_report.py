"""The HTML report of one model scored on labelled images (``cellclf predict --report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec
from cellclf.errors import ClassifierInputError
from cellreports import sections
from cellreports.figures import PROBA_PREFIX
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot
from cellreports.html import page
from cellreports.writing import write_html


def scored_rows(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Rows that can be scored: a label that is one of ``classes`` and a prediction."""
    columns = [PROBA_PREFIX + c for c in classes]
    missing = [c for c in ["path", "label", "predicted", *columns] if c not in predictions.columns]
    if missing:
        raise ClassifierInputError(f"the predictions table lacks the columns {', '.join(missing)}")
    keep = predictions["label"].isin(list(classes)) & predictions["predicted"].notna() & predictions[columns].notna().all(axis=1)
    return predictions[keep].reset_index(drop=True)


def evaluation_model(predictions: pd.DataFrame, classes: Sequence[str], model_name: str) -> sections.ModelEvaluation:
    """Score the labelled rows with cellclf's metrics (the same as ``cellclf predict`` prints)."""
    from cellclf.metrics import evaluate

    scored = scored_rows(predictions, classes)
    if scored.empty:
        raise ClassifierInputError(
            "no image has a class label the model knows (sub-folders named like its classes); nothing to report"
        )
    proba = scored[[PROBA_PREFIX + c for c in classes]].to_numpy(dtype=np.float64)
    overall, per_class, confusion = evaluate(scored["label"].astype(str).tolist(), proba, classes)
    return sections.ModelEvaluation("model", model_name, overall, per_class, confusion, scored, best=True)


def render_evaluation_report(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    spec: EmbeddingSpec | None,
    model_name: str,
    *,
    images_root: str | Path | None = None,
    source: str | None = None,
    title: str | None = None,
) -> str:
    """The evaluation report as an HTML string (see :func:`write_evaluation_report`)."""
    classes = [str(c) for c in classes]
    model = evaluation_model(predictions, classes, model_name)
    scored = model.predictions
    counts = {"evaluated": scored["label"].astype(str).value_counts().reindex(classes, fill_value=0).astype(int).to_dict()}
    labels = predictions["label"] if "label" in predictions.columns else pd.Series([None] * len(predictions))
    unknown = labels.notna() & ~labels.isin(classes)
    facts = [
        ("model", model_name),
        ("images", source if source is not None else (str(images_root) if images_root is not None else "not recorded")),
        ("images in the predictions table", len(predictions)),
        ("scored (label is a model class)", len(scored)),
        ("not scored: folder is not a model class", int(unknown.sum())),
        ("not scored: no folder, or no prediction", int(len(predictions) - len(scored) - unknown.sum())),
    ]
    if images_root is None:
        images = ImagesRoot(None, "no images folder was given for the report")
    elif not Path(images_root).is_dir():
        images = ImagesRoot(None, f"the images folder {images_root} does not exist")
    else:
        images = ImagesRoot(Path(images_root), "the folder that was classified")
    body = [
        sections.data_section(classes, counts, spec, facts),
        sections.models_section([model], "Scores of the model's predictions against the class sub-folders."),
        sections.per_class_section([model]),
        sections.confusion_section([model], classes),
        sections.roc_section([model], classes),
        sections.gallery_section(model, classes, images, GALLERY_LIMIT),
    ]
    heading = title or f"cellclf evaluation — {Path(str(source)).name if source else model_name}"
    subtitle = (
        f"{model_name} on {len(scored)} labelled images, {len(classes)} classes; "
        f"accuracy {sections.number(model.overall['accuracy'])}, macro-F1 {sections.number(model.overall['macro_f1'])}"
    )
    return page(heading, subtitle, body)


def write_evaluation_report(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    spec: EmbeddingSpec | None,
    model_name: str,
    out_path: str | Path,
    *,
    images_root: str | Path | None = None,
    source: str | None = None,
    title: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a model scored on labelled images.

    Args:
        predictions: one row per image with ``path`` (relative to ``images_root``),
            ``label`` (true class; rows whose label is not one of ``classes`` are left out),
            ``predicted`` and one ``proba_<class>`` column per class, e.g. the table of
            ``cellclf.prediction.PredictionRun``.
        classes: the model's classes, in its probability-column order.
        spec: the model's embedding spec (None: the report says it is unknown).
        model_name: how to name the model (e.g. the model file).
        out_path: the HTML file to write (atomically).
        images_root: the folder the paths are relative to (thumbnails of the mistakes).
        source: how to name the images in the report (default: ``images_root``).
        title: page title (default ``cellclf evaluation — <folder name>``).

    Raises:
        ClassifierInputError: no row has a label among ``classes``, or columns are missing.
    """
    document = render_evaluation_report(
        predictions, classes, spec, model_name, images_root=images_root, source=source, title=title
    )
    return write_html(document, out_path)
