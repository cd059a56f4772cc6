"""The gallery of the worst misclassified images: selection, thumbnails and its markup.

"Worst" means most confident mistakes first: the model record ranks them
(``record.worst_misclassified``, the same order as the fit's heat-map gallery).
Thumbnails are small JPEGs inlined as ``data:`` URIs; only files inside the images folder
are read (a ``path`` such as ``../../x`` in a predictions table is refused).

A run with heat maps (``RUN_DIR/gallery/``, :mod:`cellclf.gallery_maps`) gets
:func:`heatmap_gallery` instead: each image beside the maps of its true and its predicted
class (its runner-up when correct), 240 px wide, shown at full size when clicked (a CSS ``:target``, no script).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from cellreports.figures import bytes_data_uri
from cellreports.html import Markup, element, image, note, paragraph

GALLERY_LIMIT = 24
THUMBNAIL_SIZE = 112
JPEG_QUALITY = 80


@dataclass(frozen=True)
class ImagesRoot:
    """Where the images of the predictions are, or why that is unknown.

    Attributes:
        path: the folder the ``path`` values are relative to; None when not reachable.
        origin: how it was found (e.g. "given explicitly") or, when ``path`` is None, why
            the images are not reachable (a sentence fragment shown in the report).
    """

    path: Path | None
    origin: str


def image_file(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it is an existing file inside ``root``, else None."""
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_SIZE, quality: int = JPEG_QUALITY) -> str | None:
    """A JPEG thumbnail (longest side ``size`` px) as a data URI; None if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as source:
            picture = ImageOps.exif_transpose(source)
            if picture.mode in ("RGBA", "LA", "P"):
                picture = picture.convert("RGBA")
                background = Image.new("RGBA", picture.size, "white")
                picture = Image.alpha_composite(background, picture)
            picture = picture.convert("RGB")
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return bytes_data_uri(buffer.getvalue(), "image/jpeg")


def gallery(
    record: object,
    classes: Sequence[str],
    images: ImagesRoot,
    model_title: str,
    limit: int = GALLERY_LIMIT,
) -> Markup:
    """The gallery markup: an introduction and one captioned thumbnail per mistake of
    ``record`` (a ``cellclf.rundir.ModelRecord``: its ``predictions`` and its ranking
    ``worst_misclassified(classes, limit)``).

    When the images are not reachable, a note says why instead.
    """
    predictions = record.predictions
    mistakes = record.worst_misclassified(classes, limit)
    n_wrong = int((predictions["label"].astype(str) != predictions["predicted"].astype(str)).sum())
    if n_wrong == 0:
        return paragraph(f"The {model_title} classified all {len(predictions)} test images correctly: no mistakes to show.")
    intro = paragraph(
        f"The {len(mistakes)} most confident mistakes of the {model_title} "
        f"(of {n_wrong} misclassified out of {len(predictions)} images), sorted by the probability "
        "of the predicted class, highest first."
    )
    if images.path is None:
        return Markup(intro + note(f"Thumbnails are not available because {images.origin}."))

    tiles, missing = [], 0
    for row in mistakes.itertuples(index=False):
        found = image_file(images.path, str(row.path))
        uri = thumbnail_data_uri(found) if found is not None else None
        caption = [
            element("div", "true: ", element("b", row.label)),
            element("div", "predicted: ", element("span", row.predicted, class_="bad")),
            element("div", f"confidence {row.confidence:.3f}; P(true) {row.proba_true:.3f}"),
            element("div", row.path, class_="path"),
        ]
        if uri is None:
            missing += 1
            picture = element("div", "(image not found or unreadable)", class_="path")
        else:
            picture = image(uri, f"{row.path}: true {row.label}, predicted {row.predicted}")
        tiles.append(element("figure", picture, element("figcaption", *caption)))
    parts = [intro, paragraph(f"Images from {images.path} ({images.origin}).")]
    if missing == len(mistakes):
        parts.append(note(f"Thumbnails are not available because none of these {missing} images was found under {images.path}."))
    elif missing:
        parts.append(note(f"{missing} of the {len(mistakes)} images were not found or could not be read under {images.path}."))
    parts.append(element("div", *tiles, class_="gallery"))
    return Markup("".join(parts))


HEATMAP_THUMBNAIL = 240
KINDS = {
    "mistake": ("Worst misclassified images",
                "The most confident mistakes on the test set, most confident first."),
    "typical": ("Typical correct images",
                "The most confident correct images of each class: what the model looks at when it is right."),
}


def heatmap_gallery(index: dict, model_title: str) -> Markup:
    """The galleries of ``gallery.json`` (see :func:`cellclf.gallery_maps.read_gallery`)."""
    exact = index.get("exact")
    how = (
        "The maps add up exactly to each class's logit (minus its value at the training mean)."
        if exact else
        "APPROXIMATION: the model's TreeSHAP values spread over the image in proportion to each "
        "location's share of each embedding dimension; the maps add up to the logit, but where they put "
        "the contribution is approximate."
    )
    parts = [
        paragraph(
            f"Where the {model_title} found its evidence. For each image: the image as the network saw it "
            "(after colour normalisation and crop); what decided the call: the map of the predicted class minus "
            "that of the true class (a mistake) or of the runner-up (a correct image), red for the predicted class, "
            "blue for the other, on one scale for every image (full colour: four times an even share of the "
            "evidence per 1% of the picture), with the nucleus and the cell (the nucleus widened for its "
            "cytoplasm) outlined and the share of the evidence for the predicted class that lies on the cell; then "
            "the heat map of the true class and of the predicted class (of the runner-up for a correct image) on "
            "one colour scale; red pushes the logit towards the class, blue away from it, and locations that do "
            "not matter are left clear. Click an image to see it larger. " + how
        )
    ]
    if index.get("missing"):
        parts.append(note(f"{len(index['missing'])} gallery images were not found or could not be read "
                          f"under {index.get('images_root')}."))
    for kind, (title, intro) in KINDS.items():
        items = [item for item in index.get("items", []) if item.get("kind") == kind]
        parts.append(element("h3", title))
        if not items:
            parts.append(paragraph("None." if kind == "mistake" else "No correct images to show."))
            continue
        parts.append(paragraph(intro))
        parts.append(element("div", *(_map_card(item, f"{kind}-{i}") for i, item in enumerate(items)), class_="mapgallery"))
    return Markup("".join(parts))


def _map_card(item: dict, anchor: str) -> Markup:
    right = item["label"] == item["predicted"]
    panels = []
    why = item.get("why")
    shown = [("image", "image")]
    if why and "why" in item["files"]:  # a gallery drawn before the contrast has none
        on_cell = f"; {why['on_cell']:.0%} of it on the cell" if why.get("on_cell") is not None else ""
        shown.append(("why", f"why {why['for']}, not {why['against']}{on_cell}"))
    shown += [("true", f"map: {item['label']} (true)"), ("other", f"map: {item['other_class']} ({item['other_role']})")]
    for key, label in shown:
        uri = bytes_data_uri(Path(item["files"][key]).read_bytes(), "image/jpeg")
        picture = image(uri, f"{item['path']}: {label}", width=str(HEATMAP_THUMBNAIL), height=str(HEATMAP_THUMBNAIL))
        panels.append(element("a", element("div", picture, element("div", label, class_="panel")), href=f"#{anchor}"))
    caption = [
        element("span", "true: ", element("b", item["label"])), " · ",
        element("span", "predicted: ", element("span", item["predicted"], class_="" if right else "bad")), " · ",
        element("span", f"confidence {item['confidence']:.3f}"),
        *([] if right else [" · ", element("span", f"P(true) {item['proba_true']:.3f}")]),
        element("div", item["path"], class_="path"),
    ]
    return element("figure", element("div", *panels, class_="panels"), element("figcaption", *caption),
                   id=anchor, class_="mapcard")
