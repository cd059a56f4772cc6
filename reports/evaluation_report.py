"""The HTML report of one model scored on labelled images (``cellclf predict --report``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records' types, for type checkers only: cellreports does not import cellclf
    from cellclf.rundir.records import ModelRecord
from typing import Mapping, Sequence

from cellembed import EmbeddingSpec
from cellreports import sections
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot
from cellreports.html import Section, drift_paragraph, page, warning
from cellreports.writing import write_html


def render_evaluation_report(
    model: "ModelRecord",
    classes: Sequence[str],
    spec: EmbeddingSpec | None,
    *,
    images_root: str | Path | None = None,
    not_scored: Mapping[str, int] | None = None,
    source: str | None = None,
    title: str | None = None,
    drift: Mapping[str, object] | None = None,
    warning_text: str | None = None,
) -> str:
    """The evaluation report as an HTML string (see :func:`write_evaluation_report`)."""
    classes = [str(c) for c in classes]
    if len(model.predictions) == 0:
        raise ValueError("the model record has no scored images; there is nothing to report")
    view = sections.ModelView.of(model, classes, model.title)
    scored = model.predictions
    not_scored = dict(not_scored or {})
    counts = {"evaluated": scored["label"].astype(str).value_counts().reindex(classes, fill_value=0).astype(int).to_dict()}
    facts = [
        ("model", model.title),
        ("images", source if source is not None else (str(images_root) if images_root is not None else "not recorded")),
        ("images in the predictions table", len(scored) + sum(not_scored.values())),
        ("scored (label is a model class)", len(scored)),
        *((f"not scored: {reason}", n) for reason, n in not_scored.items()),
    ]
    if images_root is None:
        images = ImagesRoot(None, "no images folder was given for the report")
    elif not Path(images_root).is_dir():
        images = ImagesRoot(None, f"the images folder {images_root} does not exist")
    else:
        images = ImagesRoot(Path(images_root), "the folder that was classified")
    body = [
        *([Section("fitted-on", "Images the model was fitted on", warning(warning_text))] if warning_text else []),
        *([Section("drift", "Like the training images?", drift_paragraph(dict(drift)))] if drift is not None else []),
        sections.data_section(classes, counts, spec, facts),
        sections.models_section([view], "Scores of the model's predictions against the class sub-folders."),
        sections.per_class_section([view]),
        sections.confusion_section([view], classes),
        sections.roc_section([view], classes),
        sections.gallery_section(view, classes, images, GALLERY_LIMIT),
    ]
    heading = title or f"cellclf evaluation — {Path(str(source)).name if source else model.title}"
    subtitle = (
        f"{model.title} on {len(scored)} labelled images, {len(classes)} classes; "
        f"accuracy {sections.number(model.overall['accuracy'])}, {sections.macro_f1_phrase(model.overall, len(classes))}"
    )
    return page(heading, subtitle, body)


def write_evaluation_report(
    model: "ModelRecord",
    classes: Sequence[str],
    spec: EmbeddingSpec | None,
    out_path: str | Path,
    *,
    images_root: str | Path | None = None,
    not_scored: Mapping[str, int] | None = None,
    source: str | None = None,
    title: str | None = None,
    drift: Mapping[str, object] | None = None,
    warning_text: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a model scored on labelled images.

    Parameters
    ----------
    model : ModelRecord
        The model's record (``cellclf.rundir.evaluation_record``): its metrics, and its
        ``predictions``, the scored rows (``path`` relative to ``images_root``, ``label``,
        ``predicted``, probabilities); attributes listed in ``cellreports``.
    classes : sequence of str
        The model's classes, in its probability order.
    spec : EmbeddingSpec or None
        The model's embedding spec (None: the report says it is unknown).
    out_path : str or Path
        The HTML file to write (atomically).
    images_root : str or Path, optional
        The folder the paths are relative to (thumbnails of the mistakes).
    not_scored : mapping of str to int, optional
        Images left out of the scores, per reason (e.g. ``{"folder is not a model class": 3}``),
        listed with the input facts.
    source : str, optional
        How to name the images in the report (default: ``images_root``).
    title : str, optional
        Page title (default ``cellclf evaluation — <folder name>``).
    drift : mapping of str to object, optional
        The batch drift test of the images (``cellclf.novelty.batch_report``), shown first
        (None: no such section; a model without the signal, which predict says).
    warning_text : str, optional
        A warning shown first (``cellclf predict``: some images were the model's own
        training or validation images).

    Returns
    -------
    Path
        The path of the HTML file written.

    Raises
    ------
    ValueError
        The record has no scored images.
    """
    document = render_evaluation_report(
        model, classes, spec, images_root=images_root, not_scored=not_scored, source=source, title=title,
        drift=drift, warning_text=warning_text,
    )
    return write_html(document, out_path)
