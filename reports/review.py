"""The review page of ``cellclf predict``: every classified cell on one self-contained page.

A summary first: the differential the way hematology reports it (percentages of white
cells with intervals, nucleated red cells per 100 white cells, platelets apart; when the
model's classes are white-cell types: ``cellclf.differential``), the cells per predicted
class with their share, and how many are uncertain (prediction set of more than one class, or confidence under the
``--min-confidence`` given). Then, when the folder had class sub-folders, the evaluation
sections of :mod:`cellreports.evaluation_report`. Then every image as a card (a 160 px
thumbnail, the predicted class, its calibrated probability, the prediction set, the heat map
when one was drawn), grouped by predicted class, uncertain cards first within a group, then
by increasing confidence. Files that could not be read are listed at the end.

For thousands of images the page stays usable: thumbnails are small JPEGs with fixed sizes,
and each card is laid out only when scrolled near (CSS ``content-visibility: auto``), so the
browser does not render 5,000 cards at once. No script, no network (like every report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from cellembed import EmbeddingSpec
from cellreports import sections
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot, thumbnail_data_uri
from cellreports.html import Markup, Section, concat, drift_paragraph, element, image, note, page, paragraph, table, warning
from cellreports.writing import write_html

CARD_THUMBNAIL = 160
CARD_QUALITY = 70
#: Width of a heat map shown inside a card's "heat map" disclosure.
CARD_HEATMAP = 480
PROBA_PREFIX = "proba_"


@dataclass
class ReviewInput:
    """What the review page shows (``cellclf predict`` fills it).

    Attributes:
        table: the predictions, one row per image: ``path``, ``predicted``, ``confidence``,
            ``proba_<class>``..., ``set``, ``set_size``, ``uncertain``, optionally ``label``
            (the image's class folder) and ``error`` (why an image has no prediction).
        classes: the model's classes, in its probability order.
        image_file: the file of a table ``path`` (None when it cannot be shown).
        heatmap_file: the heat-map PNG of a ``path``, when one was drawn.
        model: how to name the model (its file).
        source: how to name the images (the folder or files given).
        alpha: the prediction sets' miscoverage level (None: the model has no sets).
        min_confidence: the ``--min-confidence`` given, if any.
        evaluation: the model record scored against the class folders (None: unlabelled).
        spec: the model's embedding spec, shown with the evaluation.
        not_scored: images left out of the evaluation, per reason.
        drift: the batch drift test of the images (``cellclf.novelty.BatchDrift.to_dict``;
            None: the model has no drift signal), said at the top of the page.
        differential: the hematology differential of the predictions
            (``cellclf.differential.differential``; None: plain counts only).
        samples: one differential per sample (``cellclf predict --samples``), shown in a section
            of their own.
        warning_text: a warning shown first (some images were the model's own training images).
        correct_with: the command that serves these cells for correction (this page has no
            script and saves nothing: it says where corrections are made).
    """

    table: pd.DataFrame
    classes: Sequence[str]
    image_file: Callable[[str], Path | None]
    model: str
    source: str
    heatmap_file: Callable[[str], Path | None] = lambda path: None
    alpha: float | None = None
    min_confidence: float | None = None
    evaluation: Any = None
    spec: EmbeddingSpec | None = None
    not_scored: Mapping[str, int] = field(default_factory=dict)
    drift: Mapping[str, Any] | None = None
    differential: Mapping[str, Any] | None = None
    warning_text: str | None = None
    correct_with: str | None = None
    samples: Mapping[str, Mapping[str, Any]] | None = None


def render_review(review: ReviewInput) -> str:
    """The review page as an HTML string."""
    classes = [str(c) for c in review.classes]
    table_ = review.table
    failed = table_["error"].notna() if "error" in table_ else pd.Series(False, index=table_.index)
    done = table_[~failed]
    body = [_summary(review, done, int(failed.sum()))]
    if review.samples:
        body.append(Section("samples", "Per sample", concat([
            paragraph(f"{len(review.samples)} samples (the sub-folders of {review.source}), one differential each."),
            *(_differential(counted, sample) for sample, counted in review.samples.items())])))
    if review.evaluation is not None:
        view = sections.ModelView.of(review.evaluation, classes, review.evaluation.title)
        body += [
            sections.models_section([view], "Scores of the predictions against the class sub-folders."),
            sections.per_class_section([view]),
            sections.confusion_section([view], classes),
        ]
    body.append(_cards(review, done, classes))
    if failed.any():
        rows = [[row["path"], row["error"]] for _, row in table_[failed].iterrows()]
        body.append(Section("unreadable", "Files not classified", table(["file", "reason"], rows, id="unreadable-table")))
    n = len(done)
    uncertain = int(done["uncertain"].sum()) if "uncertain" in done else 0
    subtitle = (f"{review.model} on {n} image{'' if n == 1 else 's'} of {review.source}; "
                f"{uncertain} uncertain" + (f"; {int(failed.sum())} not readable" if failed.any() else ""))
    return page(f"cellclf review — {Path(review.source).name or review.source}", subtitle, body)


def write_review(review: ReviewInput, out_path: str | Path) -> Path:
    """Write the review page (atomically); see the module docstring."""
    return write_html(render_review(review), out_path)


def _uncertain_rule(review: ReviewInput) -> str:
    rules = []
    if review.alpha is not None:
        rules.append(f"its prediction set holds more than one class, or no class reaches the set's threshold "
                     f"(sets are made to hold the true class for {1 - review.alpha:.0%} of cells like the model's "
                     "validation images; a set is never empty, so it then holds the top class alone)")
    if review.drift is not None:
        rules.append(f"it is unlike the model's training images (novelty p < {review.drift['alpha']:g})")
    if review.min_confidence is not None:
        rules.append(f"its probability is under {review.min_confidence:g} (--min-confidence)")
    return " or ".join(rules) if rules else "never (this model has no prediction sets and no --min-confidence was given)"


def _summary(review: ReviewInput, done: pd.DataFrame, n_failed: int) -> Section:
    classes = [str(c) for c in review.classes]
    n = len(done)
    counts = done["predicted"].astype(str).value_counts()
    unsure = done[done["uncertain"].astype(bool)]["predicted"].astype(str).value_counts() if "uncertain" in done else pd.Series(dtype=int)
    rows = []
    for position, name in enumerate(classes):
        c = int(counts.get(name, 0))
        u = int(unsure.get(name, 0))
        link = element("a", name, href=f"#class-{position}") if c else name
        rows.append([link, c, f"{100 * c / n:.1f}%" if n else "n/a", u])
    rows.append([Markup("<b>total</b>"), n, "100%" if n else "n/a", int(unsure.sum())])
    parts = [
        warning(review.warning_text) if review.warning_text else Markup(""),
        drift_paragraph(None if review.drift is None else dict(review.drift)),
        _differential(review.differential),
        table(["predicted class", "cells", "share", "uncertain"], rows, numeric=range(1, 4),
              caption="Cells per predicted class" if review.differential is not None
              else "Differential count (predicted classes)", id="count-table"),
        paragraph(f"A cell is uncertain when {_uncertain_rule(review)}; review those first: they are at the top "
                  "of each class's cards, with a yellow frame. "
                  + ("Probabilities are the model's calibrated probabilities." if review.alpha is not None else
                     "This model was fitted by an earlier cellclf: its probabilities are not calibrated and it "
                     "has no prediction sets (re-run cellclf fit to get both).")),
    ]
    if review.correct_with:
        parts.append(note("This page is read-only (no script, nothing saved). To confirm or correct each cell from the "
                          "keyboard and refit on the corrections, open the served review: ",
                          element("code", review.correct_with), " and open its page /review (port 8000 unless --port)."))
    if n_failed:
        parts.append(note(f"{n_failed} file{'' if n_failed == 1 else 's'} could not be read: listed at the end."))
    return Section("summary", "Summary", concat(parts))


def _differential(counted: Mapping[str, Any] | None, sample: str | None = None) -> Markup:
    """The differential the way hematology reports it (nothing for a model of other cells);
    the explanations with the whole folder's (``sample`` None), not repeated per sample."""
    if counted is None:
        return Markup("")
    n = counted["white_cells"]
    corrected = counted.get("corrected")

    def fixed(value: Any, unit: str = "%") -> list[str]:
        return ([] if corrected is None else ["n/a" if value is None else f"{value:.1f}{unit}"])

    rows = [[row["class"], row["cells"], "n/a" if row["percent"] is None else f"{row['percent']:.1f}%",
             "n/a" if row["ci"] is None else f"{row['ci'][0]:.1f}-{row['ci'][1]:.1f}%",
             *fixed(row.get("corrected_percent"))] for row in counted["rows"]]
    rows.append([Markup("<b>white cells</b>"), n, "100%" if n else "n/a", "", *fixed(100.0 if n else None)])
    red, platelets = counted["nucleated_red"], counted["platelets"]
    if red is not None:
        value = "n/a" if red["per_100_white"] is None else f"{red['per_100_white']:.1f} per 100 white cells"
        interval = "n/a" if red["ci"] is None else f"{red['ci'][0]:.1f}-{red['ci'][1]:.1f}"
        rows.append([f"nucleated red cells ({', '.join(red['classes'])})", red["cells"], value, interval,
                     *fixed(red.get("corrected_per_100_white"), " per 100")])
    if platelets is not None:
        rows.append([f"platelets ({', '.join(platelets['classes'])})", platelets["cells"], "counted apart", "",
                     *fixed(None if corrected is None else sum(corrected["counts"][c] for c in platelets["classes"]), "")])
    for name, cells in counted["other"].items():
        rows.append([f"{name} (not in the differential)", cells, "", "",
                     *fixed(None if corrected is None else corrected["counts"][name], "")])
    columns = ["cell type", "cells", "of white cells", "95% CI", *(["corrected for known confusions"] if corrected else [])]
    caption = "Differential (hematology convention)" + (f": sample {sample}" if sample is not None else "")
    table_id = "differential-table" if sample is None else f"differential-{sample}"
    table_ = table(columns, rows, numeric=range(1, len(columns)), caption=caption, id=table_id)
    if sample is not None:
        return table_
    return concat([
        table_,
        paragraph("The corrected column estimates the counts once the model's known confusions are undone "
                  f"({corrected['method']}); it assumes {corrected['assumes']}. Where the two columns differ much, "
                  "review the cells of those classes.") if corrected else Markup(""),
        paragraph("Percentages are of the white cells only, as a manual differential is; nucleated red cells "
                  "(erythroblasts) are given per 100 white cells and platelets are counted apart. The intervals "
                  "are for sampling (how many cells were counted), not for the model's mistakes; uncertain cells "
                  "count as their predicted class, so review them first."),
    ])


def _cards(review: ReviewInput, done: pd.DataFrame, classes: list[str]) -> Section:
    parts = []
    missing = 0
    order = done.assign(_u=~done["uncertain"].astype(bool) if "uncertain" in done else True)
    for number, name in enumerate(classes):
        group = order[order["predicted"].astype(str) == name].sort_values(["_u", "confidence", "path"], kind="stable")
        if group.empty:
            continue
        cards = []
        for position, row in enumerate(group.to_dict("records")):
            card, found = _card(review, row, classes, f"card-{number}-{position}")
            cards.append(card)
            missing += not found
        uncertain = int((~group["_u"]).sum())
        parts.append(element("h3", f"{name}: {len(group)} cell{'' if len(group) == 1 else 's'}"
                             + (f", {uncertain} uncertain" if uncertain else ""), id=f"class-{number}"))
        parts.append(element("div", *cards, class_="cards"))
    intro = [paragraph("Every classified image, grouped by predicted class; within a class the uncertain ones "
                       "come first, then by increasing probability.")]
    if missing:
        intro.append(note(f"{missing} image{'' if missing == 1 else 's'} could not be shown (not found or unreadable)."))
    return Section("cells", "Cells", concat(intro + parts))


def set_members(row: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """A row's prediction set as a list: its ``set_size`` most probable classes (a conformal
    set is every class above a probability threshold), so a class name holding ``|`` is safe."""
    size = row.get("set_size")
    if size is None or pd.isna(size):
        return []
    ranked = sorted(classes, key=lambda c: -float(row[PROBA_PREFIX + c]))
    return ranked[: int(size)]


def _card(review: ReviewInput, row: Mapping[str, Any], classes: list[str], anchor: str) -> tuple[Markup, bool]:
    path = str(row["path"])
    file = review.image_file(path)
    uri = thumbnail_data_uri(file, CARD_THUMBNAIL, CARD_QUALITY) if file is not None else None
    picture = (image(uri, f"{path}: predicted {row['predicted']}", width=str(CARD_THUMBNAIL), height=str(CARD_THUMBNAIL))
               if uri else element("div", "(image not found or unreadable)", class_="path"))
    uncertain = bool(row.get("uncertain", False))
    lines = [
        element("div", element("b", row["predicted"]), f" {float(row['confidence']):.3f}",
                *([" ", element("span", "uncertain", class_="badge")] if uncertain else [])),
    ]
    if row.get("unlike_training") in (True,):  # numpy or Python True; not NaN or None
        lines.append(element("div", element("span", "unlike training", class_="badge"),
                             f" novelty p {float(row['novelty_p']):.3g}"))
    members = set_members(row, classes)
    if members:
        lines.append(element("div", "set: ", " | ".join(members)))
    runner = sorted(((float(row[PROBA_PREFIX + c]), c) for c in classes if c != row["predicted"]), reverse=True)[:1]
    if runner:
        lines.append(element("div", f"next: {runner[0][1]} {runner[0][0]:.3f}"))
    label = row.get("label")
    if isinstance(label, str):
        lines.append(element("div", "folder: ", element("span", label, class_="" if label == row["predicted"] else "bad")))
    heatmap = review.heatmap_file(path)
    heatmap_uri = thumbnail_data_uri(heatmap, CARD_HEATMAP, CARD_QUALITY) if heatmap is not None else None
    if heatmap_uri is not None:  # a JPEG copy of explain's PNG, a few tens of kB
        lines.append(element("details", element("summary", "heat map"), image(heatmap_uri, f"heat map of {path}")))
    lines.append(element("div", path, class_="path"))
    return element("div", picture, *lines, class_="card uncertain" if uncertain else "card", id=anchor), uri is not None
