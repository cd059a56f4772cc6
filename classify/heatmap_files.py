"""``cellclf explain`` (and ``cellclf predict --heatmaps``): a heat map of each prediction.

For every image: ``<name>.heatmap.png`` (the image as the network saw it, the maps of the
predicted class and of the runner-up overlaid, the probabilities, and the predicted class's
map per tap) and ``<name>.heatmap.json`` (probabilities, baseline and logit of every class,
each tap's share of each logit, the method and whether it is exact), where ``<name>`` is
the image's path inside its folder (or its file name for a file given directly).

The maps are computed by :mod:`cellclf.heatmaps` from the taps before pooling
(:meth:`cellembed.network.Network.maps`, the network that embeds): about one forward pass
per view and image.

Files: a PNG or JSON of that name is replaced only when it is one this command wrote (the
PNG's text chunk and the JSON's ``cellclf_explain`` key say so), or with ``overwrite``; the
output folder must not be inside an images folder. Each image's files are written
atomically as it finishes; a rerun skips images whose JSON records the same image and
model (an interrupted run resumes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellclf.errors import ClassifierInputError
from cellclf.evidence import decision_evidence
from cellclf.heatmap_images import explanation_figure, figure_png, is_explanation_png, short_tap_labels
from cellclf.heatmaps import LocationAttribution, attribute, upsample
from cellclf.inputs import InputImage, input_images
from cellembed.shared.atomic import atomic_path
from cellembed.decoding import DEFAULT_MAX_PIXELS
from cellembed.errors import Interrupted
from cellembed.shared.hashing import sha256_file

JSON_MARK = "cellclf_explain"
#: 2: the picture shows the contrast against the runner-up and the JSON its ``evidence``; a
#: file of an older format is drawn again.
JSON_FORMAT = 2
PNG_SUFFIX = ".heatmap.png"
JSON_SUFFIX = ".heatmap.json"
BATCH = 4  # images per forward pass: the maps before pooling take ~25 MB per image


@dataclass
class ExplainRun:
    """What :func:`explain_images` did."""

    explained: list[dict[str, Any]] = field(default_factory=list)  # the JSON of each image explained now
    reused: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(len(self.explained), 1)


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / (name + PNG_SUFFIX), out_dir / (name + JSON_SUFFIX)


def _own_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and JSON_MARK in data else None


def check_outputs(
    out_dir: Path, items: Sequence[InputImage], inputs: Sequence[str | Path], overwrite: bool, option: str = "-o"
) -> None:
    """Refuse, before any work, an output folder inside an images folder or holding one, or
    an existing file this command did not write (unless ``overwrite``); ``option`` is the
    option that named ``out_dir``."""
    out = Path(out_dir).resolve()
    for path in inputs:
        folder = Path(path).resolve()
        if folder.is_dir() and (out.is_relative_to(folder) or folder.is_relative_to(out)):
            where = "inside the images folder" if out.is_relative_to(folder) else "around the images folder"
            raise ClassifierInputError(f"{option} {out_dir} is {where} {path}; give a folder apart from the images")
    if out_dir.exists() and not out_dir.is_dir():
        raise ClassifierInputError(f"{option} {out_dir} is a file; give a folder for the heat maps")
    if overwrite:
        return
    for item in items:
        png, js = output_paths(out_dir, item.name)
        theirs = next((f for f, ours in ((js, _own_json), (png, is_explanation_png)) if f.exists() and not ours(f)), None)
        if theirs is not None:
            raise ClassifierInputError(
                f"{theirs} exists and was not written by cellclf; give another {option} folder or --overwrite"
            )


class Explainer:
    """A predictor with the network that gives its maps (built once)."""

    def __init__(self, predictor: Any, weights: Any = None, n_jobs: int = 1, engine: str | None = None,
                 network: Any = None):
        from cellembed.embedder import embedder_from_spec
        from cellembed.engines import DEFAULT_ENGINE

        self.predictor = predictor
        self.network = network or embedder_from_spec(predictor.spec, weights, engine or DEFAULT_ENGINE)
        self.roles = self.network.tap_roles(predictor.used_taps)
        self.n_jobs = n_jobs

    def explain(self, pixels: np.ndarray) -> tuple[LocationAttribution, np.ndarray]:
        """(attribution, (n, k) probabilities) of (n, S, S, 3) prepared pixels."""
        result, embedding = self.explain_embedded(pixels)
        return result, self.predictor.predict_proba(embedding)

    def explain_embedded(self, pixels: np.ndarray) -> tuple[LocationAttribution, np.ndarray]:
        """(attribution, (n, dim) embeddings) of (n, S, S, 3) prepared pixels: one forward pass."""
        maps = self.network.maps(pixels)
        return attribute(self.predictor, maps, n_jobs=self.n_jobs), maps.embedding().astype(np.float32)


def explain_images(
    predictor: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    weights: Any = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    explainer: Explainer | None = None,
    option: str = "-o",
    n_jobs: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExplainRun:
    """Write the heat map PNG and JSON of every image of ``inputs`` into ``out_dir``.

    Raises:
        ClassifierInputError / cellembed.InputError: a bad input, an output that is not
            this command's, weights other than the model's (nothing written).
        cellembed.Interrupted: Ctrl-C; the images finished so far are written and kept, and
            the same call again finishes the others.
    """
    out_dir = Path(out_dir)
    items, _ = input_images(inputs, several_folders=True, verb="explain")
    check_outputs(out_dir, items, inputs, overwrite, option)
    model_sha = sha256_file(predictor.source) if getattr(predictor, "source", None) else None
    run = ExplainRun()
    todo = []
    for item in items:
        png, js = output_paths(out_dir, item.name)
        done = _own_json(js) if js.exists() and is_explanation_png(png) else None
        if done is not None and model_sha and done.get("model_sha256") == model_sha \
                and done.get(JSON_MARK) == JSON_FORMAT and done.get("image_sha256") == sha256_file(item.file):
            run.reused += 1
        else:
            todo.append(item)
    if not todo:
        return run
    explainer = explainer or Explainer(predictor, weights, n_jobs)
    started = time.perf_counter()
    bar = _progress_bar(len(todo), progress)
    try:
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            loaded = [(item, explainer.network.load(item.file, max_pixels)) for item in batch]
            good = [(item, image) for item, image in loaded if image.pixels is not None]
            run.errors += [{"path": item.name, "reason": image.error} for item, image in loaded if image.pixels is None]
            if good:
                pixels = np.stack([image.pixels for _, image in good])
                result, proba = explainer.explain(pixels)
                for i, (item, _) in enumerate(good):
                    run.explained.append(_write_one(explainer, item, pixels[i], result, proba, i, out_dir, model_sha))
            bar.update(len(batch))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the {len(run.explained)} heat maps written to {out_dir} now are kept: "
            "run the same command again to finish"
        ) from None
    finally:
        bar.close()
        run.seconds = time.perf_counter() - started
    if log is not None:
        log(f"explained {len(run.explained)} images in {run.seconds:.1f} s ({run.seconds_per_image:.2f} s per image)")
    return run


def image_record(explainer: Explainer, result: LocationAttribution, proba: np.ndarray, i: int) -> dict[str, Any]:
    """The JSON facts of image ``i`` of a batch (without the file names)."""
    classes = list(explainer.predictor.classes)
    order = np.argsort(-proba[i], kind="stable")
    sums = result.tap_sums()[i]  # (taps, k)
    return {
        JSON_MARK: JSON_FORMAT,
        "predicted": classes[order[0]],
        "runner_up": classes[order[1]] if len(classes) > 1 else None,
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba[i])},
        "family": explainer.predictor.family,
        "exact": result.exact,
        "method": result.method,
        "baseline": {c: float(b) for c, b in zip(classes, result.baseline)},
        "logit": {c: float(m) for c, m in zip(classes, result.margin[i])},
        "tap_sums": {c: {t: float(sums[j, k]) for j, t in enumerate(result.taps)} for k, c in enumerate(classes)},
        "taps": {t: explainer.roles.get(t, "") for t in result.taps},
        "additivity_error": float(np.abs(sums.sum(axis=0) + result.baseline - result.margin[i]).max()),
        "map_size": explainer.network.spec.input_size,
        "maps_cover": "the network input: the image after the spec's colour normalisation "
                      f"({explainer.network.spec.stain}) and crop ({explainer.network.spec.crop})",
    }


def explanation_png(explainer: Explainer, name: str, pixels: np.ndarray, result: LocationAttribution,
                    proba: np.ndarray, i: int) -> tuple[bytes, dict[str, Any]]:
    """The heat-map PNG of image ``i`` of a batch (``pixels``: that image's prepared pixels)
    and its JSON facts (:func:`image_record`)."""
    record = image_record(explainer, result, proba, i)
    classes = list(explainer.predictor.classes)
    shown = [record["predicted"]] + ([record["runner_up"]] if record["runner_up"] else [])
    codes = [classes.index(c) for c in shown]
    size = explainer.network.spec.input_size
    maps = sum(upsample(m[i, codes], size) for m in result.tap_maps)
    tap_maps = {t: upsample(result.tap_maps[j][i, codes[0]], size) for j, t in enumerate(result.taps)}
    evidence = None
    if len(codes) > 1:
        evidence = decision_evidence(pixels, maps[0], maps[1], result.coarsest_grid)
        record["evidence"] = {"against": record["runner_up"], **evidence.facts()}
    figure = explanation_figure(
        np.clip(pixels, 0, 255).astype(np.uint8), dict(zip(shown, maps)), record["probabilities"], tap_maps,
        short_tap_labels(result.taps, explainer.roles), title=name, exact=result.exact, evidence=evidence,
    )
    return figure_png(figure), record


def _write_one(explainer: Explainer, item: InputImage, pixels: np.ndarray, result: LocationAttribution,
               proba: np.ndarray, i: int, out_dir: Path, model_sha: str | None) -> dict[str, Any]:
    picture, record = explanation_png(explainer, item.name, pixels, result, proba, i)
    png, js = output_paths(out_dir, item.name)
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        tmp.write_bytes(picture)
    record = {"image": item.name, "file": str(item.file), "image_sha256": sha256_file(item.file),
              "model_sha256": model_sha, **record}
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="explaining", disable=not enabled, leave=False,
                bar_format="{desc}: {n}/{total} images [{elapsed}<{remaining}, {rate_fmt}]")
