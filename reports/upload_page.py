"""The pages of ``cellclf serve``: an upload form and its results, without any script.

The form posts the chosen images to ``/`` (multipart); the result page shows, per image, the
heat map (the image as the network saw it with the maps of the predicted class and the
runner-up), the predicted class with its calibrated probability, the prediction set, and
every class's probability, then the form again. Same safe building blocks and style as the
reports (:mod:`cellreports.html`): text is escaped once, images are ``data:`` URIs.
"""

from __future__ import annotations

from typing import Any, Sequence

from cellreports.figures import bytes_data_uri
from cellreports.html import Markup, Section, drift_paragraph, element, image, note, page, paragraph, table


def _form(facts: dict[str, Any]) -> Markup:
    limits = facts.get("limits", {})
    return element(
        "form",
        element("p", element("label", "Cell images (JPEG, PNG, TIFF...): ",
                             Markup('<input type="file" name="files" accept="image/*" multiple required>'))),
        element("p", Markup('<button type="submit">Classify</button>'),
                f" up to {limits.get('max_batch', '?')} images of at most {limits.get('max_upload_mb', 0):g} MB each"),
        method="post", action="/", enctype="multipart/form-data", id="upload-form",
    )


def _model_paragraph(facts: dict[str, Any]) -> Markup:
    test = facts.get("test") or {}
    accuracy = ""
    if test.get("accuracy") is not None:
        ci = test.get("accuracy_ci")
        accuracy = f" Test accuracy {test['accuracy']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "") + \
            f" on {test.get('n', '?')} held-out images."
    calibration = facts.get("calibration")
    sets = (f" Prediction sets are made to hold the true class for {1 - calibration['alpha']:.0%} of cells like "
            "the model's validation images."
            if calibration else " This model has no calibration or prediction sets (fitted by an earlier cellclf).")
    return paragraph(f"Model: {facts.get('family')} on {len(facts.get('classes', []))} classes "
                     f"({', '.join(facts.get('classes', []))}).{accuracy}{sets}")


def upload_page(facts: dict[str, Any], error: str | None = None) -> str:
    """The upload form (``GET /``), with ``error`` said first when a post was refused."""
    body = [_model_paragraph(facts)]
    if error:
        body.insert(0, note(f"Not classified: {error}"))
    body.append(_form(facts))
    return page("cellclf — classify blood-cell images", "Upload images; nothing is kept after the answer.",
                [Section("upload", "Upload", Markup("".join(body)))])


def result_page(facts: dict[str, Any], results: Sequence[tuple[dict[str, Any], bytes | None]],
                drift: dict[str, Any] | None = None) -> str:
    """The results of a post to ``/``: the batch drift test (``drift``, None for a model
    without it), one block per image, then the form again."""
    blocks = []
    for position, (result, png) in enumerate(results):
        rows = sorted(result["predictions"].items(), key=lambda item: -item[1])
        parts = [
            element("h3", result["image"]),
            paragraph(element("b", result["predicted"]), f" {result['confidence']:.3f}; set: ",
                      " | ".join(result["set"]),
                      *([" ", element("span", "uncertain", class_="badge")] if result["uncertain"] else []),
                      *([" ", element("span", "unlike the training images", class_="badge"),
                         f" (p = {result['novelty_p']:.3g})"] if result.get("unlike_training") else [])),
        ]
        if png is not None:
            parts.append(image(bytes_data_uri(png, "image/png"), f"heat map of {result['image']}", class_="plot"))
        else:
            parts.append(note(f"No heat map: {facts.get('heatmaps_missing') or 'not available'}."))
        parts.append(table(["class", "probability"], [[name, f"{p:.4f}"] for name, p in rows], numeric=[1]))
        blocks.append(element("div", *parts, class_="result", id=f"result-{position}"))
    intro = drift_paragraph(drift) + paragraph(
        "Red on a map pushes towards the class, blue away from it. The probabilities are calibrated; a cell is "
        "uncertain when its prediction set holds more than one class, no class reaches the set's threshold, or "
        "it is unlike the model's training images (p < 0.01: another lab, stain or cell type?)."
    )
    sections = [
        Section("results", f"Results ({len(results)} image{'' if len(results) == 1 else 's'})",
                Markup(intro + "".join(blocks))),
        Section("upload", "Classify more", Markup(_model_paragraph(facts) + _form(facts))),
    ]
    return page("cellclf — results", f"{len(results)} image{'' if len(results) == 1 else 's'} classified", sections)
