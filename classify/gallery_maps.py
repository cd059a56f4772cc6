"""The heat-map galleries of a fit: the worst mistakes and typical correct images, with maps.

``cellclf fit`` (after the run is written) explains, with the selected model, the most
confident mistakes on the test set and the most confident correct images of each class,
and keeps in ``RUN_DIR/gallery/`` for each one three JPEGs: the image as the network saw
it, and the heat map (:mod:`cellclf.heatmaps`) of the true class and of the predicted class
(of the runner-up for a correct image, whose predicted class is the true one) overlaid on
it, on one colour scale; ``gallery.json`` lists them with their facts, or says
why there are no maps (no images folder, no weights, ``--no-heatmaps``). The report shows
them (:mod:`cellreports`); nothing here needs the report.

"Worst" means most confident mistakes first (:func:`worst_misclassified`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cellembed.shared.atomic import atomic_path
from cellclf.gallery_ranking import most_confident_correct, worst_misclassified
from cellclf.rundir.layout import GALLERY_DIR, GALLERY_INDEX

MISTAKES_LIMIT = 24
TYPICAL_PER_CLASS = 2
#: Side of the stored pictures (the report shows them at 240 px and this size on click).
PICTURE_SIZE = 448


def write_unavailable(run_dir: Path, reason: str) -> None:
    """Record in ``gallery.json`` why the run has no heat maps."""
    folder = Path(run_dir) / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    with atomic_path(folder / GALLERY_INDEX) as tmp:
        tmp.write_text(json.dumps({"unavailable": reason}, indent=1))


def write_gallery_maps(
    run_dir: Path,
    predictor: Any,
    predictions: pd.DataFrame,
    images_root: Path,
    *,
    weights: Any = None,
    n_jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Explain the gallery images of ``predictions`` (the selected model's test rows:
    ``path, label, predicted, proba_<class>``) and write ``RUN_DIR/gallery/``.

    Returns the index written to ``gallery.json``.

    Raises:
        cellembed.InputError / ClassifierInputError: no such weights, or weights other
            than the model's (nothing written).
    """
    from cellclf.evidence import DENSITY_LIMIT, decision_evidence
    from cellclf.heatmap_files import Explainer
    from cellclf.heatmap_images import colour_limit, jpeg_bytes, outlined, overlay
    from cellclf.heatmaps import upsample

    classes = list(predictor.classes)
    proba = predictions[[f"proba_{c}" for c in classes]].to_numpy(dtype=float)
    chosen = [("mistake", worst_misclassified(predictions, proba, classes, MISTAKES_LIMIT)),
              ("typical", most_confident_correct(predictions, proba, classes, TYPICAL_PER_CLASS))]
    started = time.perf_counter()
    total = sum(len(rows) for _, rows in chosen)
    explainer = Explainer(predictor, weights, n_jobs) if total else None
    folder = Path(run_dir) / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    items, missing, result = [], [], None
    for kind, rows in chosen:
        for row in rows.itertuples(index=False):
            if log is not None and (len(items) + len(missing)) % 10 == 0 and len(items) + len(missing):
                elapsed = time.perf_counter() - started
                done = len(items) + len(missing)
                log(f"{done}/{total} images, {done / elapsed:.2f} img/s, ETA {(total - done) * elapsed / done:.0f}s")
            source = (images_root / str(row.path)).resolve()
            if not source.is_relative_to(images_root.resolve()) or not source.is_file():
                missing.append(str(row.path))
                continue
            image = explainer.network.load(source)
            if image.pixels is None:
                missing.append(str(row.path))
                continue
            result, proba = explainer.explain(image.pixels[None])
            true = classes.index(str(row.label))
            other = classes.index(str(row.predicted))
            if other == true:  # a correct image: its runner-up says more than the same map twice
                other = int(next(k for k in np.argsort(-proba[0], kind="stable") if k != true))
            codes = [true, other]
            size = image.pixels.shape[0]
            maps = sum(upsample(m[0, codes], size) for m in result.tap_maps)
            limit = colour_limit(*maps)
            pixels = np.clip(image.pixels, 0, 255).astype(np.uint8)
            stem = f"{len(items):03d}"
            # what decided the call: the predicted class against the true class (a mistake) or the runner-up
            decided = (maps[1], maps[0]) if kind == "mistake" else (maps[0], maps[1])
            evidence = decision_evidence(pixels, *decided, result.coarsest_grid)
            files = {"image": f"{stem}-image.jpg", "why": f"{stem}-why.jpg", "true": f"{stem}-true.jpg",
                     "other": f"{stem}-other.jpg"}
            why = outlined(overlay(pixels, evidence.density, DENSITY_LIMIT), evidence.nucleus, evidence.cell)
            for name, picture in (("image", pixels), ("why", why), ("true", overlay(pixels, maps[0], limit)),
                                  ("other", overlay(pixels, maps[1], limit))):
                with atomic_path(folder / files[name]) as tmp:
                    tmp.write_bytes(jpeg_bytes(picture, PICTURE_SIZE))
            items.append({
                "kind": kind, "path": str(row.path), "label": str(row.label), "predicted": str(row.predicted),
                "confidence": float(row.confidence), "proba_true": float(row.proba_true), "files": files,
                "other_class": classes[other], "other_role": "predicted" if kind == "mistake" else "runner-up",
                "map_sum_true": float(maps[0].sum()), "map_sum_other": float(maps[1].sum()),
                "why": {"for": str(row.predicted), "against": classes[true] if kind == "mistake" else classes[other],
                        **evidence.facts()},
            })
    index = {
        "model": predictor.family, "exact": bool(result.exact) if result is not None else None,
        "method": result.method if result is not None else None, "images_root": str(images_root),
        "items": items, "missing": missing, "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(folder / GALLERY_INDEX) as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    if log is not None:
        log(f"heat maps of {len(items)} gallery images in {index['seconds']:.1f} s "
            "(a network pass per image and view; cellclf fit --no-heatmaps skips them)")
    return index
