"""The report's "Suggested relabels" section: the label audit of a fit (RUN_DIR/label_issues.csv)
with thumbnails, the given and the suggested class, and the evidence; and how to act on it."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from cellreports.gallery import ImagesRoot, image_file, thumbnail_data_uri
from cellreports.html import Markup, Section, concat, element, image, note, paragraph, table

#: Suggested relabels shown with thumbnails (the CSV holds them all).
SHOWN = 40


def label_audit_section(facts: Mapping[str, Any] | None, issues: pd.DataFrame | None, images: ImagesRoot,
                        run_dir: str, data_input: str) -> Section | None:
    """The section, or None for a run without an audit (made before it, or --no-label-audit)."""
    if not facts:
        return None
    title = "Suggested relabels (label audit)"
    if facts.get("skipped"):
        return Section("label-audit", title, paragraph(f"The label audit did not run: {facts['skipped']}."))
    n, audited = int(facts.get("issues", 0)), int(facts.get("audited", 0))
    intro = paragraph(
        f"Every labelled image was scored by a model that did not learn from it ({facts.get('evidence', '')}). "
        f"Confident learning (cleanlab's find_label_issues) flags {n} of {audited} images "
        f"({100 * n / max(audited, 1):.1f}%) whose folder label is unlikely given the others: a mislabelled cell, "
        "an ambiguous one (between two stages of maturation, say), or an image that is not a usable cell. "
        "They are suggestions for a person to look at, not corrections.")
    how = paragraph(
        "To accept them: open ", element("code", f"{run_dir}/label_issues.csv"), ", delete the rows you disagree "
        "with (or change their label; ", element("code", "(excluded)"), " leaves a cell out), then refit: ",
        element("code", f"cellclf fit {data_input} -o NEW_RUN --labels {run_dir}/label_issues.csv"), ".")
    if n == 0 or issues is None or not len(issues):
        return Section("label-audit", title, concat([intro, paragraph("No image was flagged.")]))
    per_class = facts.get("per_class") or {}
    counts = table(["given label", "flagged"], [[name, int(n)] for name, n in per_class.items()], numeric=[1],
                   caption="Flagged images per given label", id="label-audit-counts")
    return Section("label-audit", title, concat([intro, how, counts, _tiles(issues.head(SHOWN), images, n)]))


def _tiles(shown: pd.DataFrame, images: ImagesRoot, n: int) -> Markup:
    parts = [paragraph(f"The {len(shown)} most doubtful of {n}, least likely label first:" if n > len(shown)
                       else "Least likely label first:")]
    if images.path is None:
        parts.append(note(f"Thumbnails are not available because {images.origin}."))
    tiles = []
    for row in shown.itertuples(index=False):
        found = image_file(images.path, str(row.path)) if images.path is not None else None
        uri = thumbnail_data_uri(found) if found is not None else None
        picture = (image(uri, f"{row.path}: labelled {row.given_label}, suggested {row.label}") if uri
                   else element("div", "(image not found)", class_="path"))
        caption = [
            element("div", "labelled: ", element("b", row.given_label)),
            element("div", "suggested: ", element("span", row.label, class_="bad")),
            element("div", f"P(label) {float(row.given_probability):.2f}, P(suggested) "
                           f"{float(row.model_confidence):.2f}; {row.split}"),
            element("div", row.path, class_="path"),
        ]
        tiles.append(element("figure", picture, element("figcaption", *caption)))
    parts.append(element("div", *tiles, class_="gallery"))
    return concat(parts)
