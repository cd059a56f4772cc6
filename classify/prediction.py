"""``cellclf predict``: classify a folder of images with a saved predictor.

The images are embedded with exactly the predictor's embedding spec (same weights file,
input size, taps, preprocessing) into a Parquet cache, so a second run on the same folder
embeds nothing. The cache is add-only: images it does not hold are added, its rows of
other images are kept (it may be the training embeddings file). They are classified by an :class:`~cellclf.classifier.ImageClassifier`. When
the folder has class sub-folders named like the model's classes, the predictions are also
scored against them.

Every file predict writes is named and checked before any work by one
:class:`PredictionOutputs` (the section "the files predict writes"), and
:func:`predict_run` is the whole command as a library call.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cellembed import ExtractOptions, ExtractResult, EmbeddingSpec, load_embeddings, run_extraction
from cellembed.embedder import spec_weights
from cellembed.shared.csv_cells import inert_frame
from cellembed.decoding import DEFAULT_MAX_PIXELS
from cellembed.errors import OutputConflict
from cellembed.shared.atomic import atomic_path, output_lock
from cellembed.engines import DEFAULT_ENGINE
from cellclf.classifier import DECIMALS, NOVELTY_COLUMNS, ImageClassifier, prediction_record
from cellclf.errors import ClassifierInputError
from cellclf.inputs import input_images
from cellclf.metrics import evaluate
from cellclf.novelty import DEFAULT_NOVELTY_LEVEL
from cellclf.estimator import CellClassifier
from cellclf.rundir import PROBA_PREFIX



@dataclass
class Evaluation:
    """Scores against the class sub-folders (only images whose folder is a model class)."""

    overall: dict[str, Any]
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    scored: pd.DataFrame  # the scored rows of the predictions table


@dataclass
class PredictionRun:
    """Everything ``predict_folder`` produced.

    ``table`` has one row per image: path, label (the sub-folder, when there are any),
    predicted, confidence, one ``proba_<class>`` column per class, ``uncertain`` when a
    minimum confidence was given, and ``error`` (the reason an unreadable file has no
    prediction).
    """

    table: pd.DataFrame
    classes: list[str]
    extraction: ExtractResult | None  # None: embedded in memory (image files, or no cache)
    embed_seconds: float
    classify_seconds: float
    evaluation: Evaluation | None = None
    unknown_folders: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # the image file of each table ``path``
    memory_errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, str]]:
        """The files that could not be read: ``path`` and ``reason``."""
        return self.extraction.errors if self.extraction is not None else self.memory_errors

    @property
    def embedded(self) -> int:
        return self.extraction.embedded if self.extraction is not None else len(self.table) - len(self.memory_errors)

    @property
    def reused(self) -> int:
        return self.extraction.reused if self.extraction is not None else 0


def default_cache_for(folder: str | Path, spec: EmbeddingSpec) -> Path:
    """Where a folder's embeddings are cached when ``--cache`` is not given: one file per
    images folder and embedding spec in the cache folder (``$CELLEMBED_CACHE_DIR``, default
    ``~/.cache/cellembed``), ``predict/<folder name>-<digest>.parquet``, so predicting the
    same folder again, to another ``-o`` or with another model of the same spec, embeds
    nothing."""
    import hashlib
    import os

    from cellembed.shared.cache import cache_dir

    folder = Path(folder).resolve()
    key = hashlib.sha256(os.fsencode(folder) + b"\0" + spec.digest().encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder.name)[:40] or "images"
    return cache_dir() / "predict" / f"{name}-{key}.parquet"


def check_scorable(images: str | Path, classes: list[str]) -> None:
    """Refuse, before any work, a folder with no sub-folder named like a model class
    (what ``--report`` needs); a missing or empty folder is refused as extract would."""
    from cellembed.discovery import find_images

    folders = sorted({image.label for image in find_images(images) if image.label is not None})
    if not set(folders) & set(classes):
        found = f"its sub-folders are {', '.join(folders[:8])}" if folders else "it has no sub-folders"
        raise ClassifierInputError(
            f"--report needs images in sub-folders named like the model's classes ({', '.join(classes)}), "
            f"but {found}; drop --report or sort the images into class folders"
        )


def predict_folder(predictor: CellClassifier | ImageClassifier, images: str | Path, cache: str | Path,
                   **options: Any) -> PredictionRun:
    """Embed (with the add-only Parquet ``cache``) and classify every image under the folder
    ``images``: :func:`predict_inputs` of one folder, same options."""
    return predict_inputs(predictor, [images], cache, **options)


def _cached_folder(classifier: ImageClassifier, images: Path, cache: str | Path, min_confidence: float | None,
                   max_pixels: int, adapt: bool, progress: bool, log: Callable[[str], None] | None,
                   novelty_level: float = DEFAULT_NOVELTY_LEVEL) -> PredictionRun:
    """A folder embedded through the add-only ``cache`` (rows of other images are kept)."""
    started = time.perf_counter()
    with output_lock(cache):  # held until the rows are read: no other run changes them meanwhile
        try:
            options = ExtractOptions(batch_size=classifier.batch_size, engine=classifier.engine, add_only=True,
                                     max_pixels=max_pixels, progress=progress)
            options.check()
            weights = spec_weights(classifier.spec, classifier.weights)
            extraction = run_extraction(images, cache, classifier.spec, weights, options, log=log)
        except OutputConflict as exc:
            advice = "give another --cache file, or delete that one" if exc.replaceable else "give another --cache file"
            raise ClassifierInputError(f"{exc.problem}: {advice}") from None
        embed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        frame, frame_spec = _folder_rows(extraction)
    classes = classifier.classes
    predicted = classifier.classify(frame, frame_spec, adapt=adapt, min_confidence=min_confidence,
                                    novelty_level=novelty_level)
    classify_seconds = time.perf_counter() - started

    table = _predictions_table(frame, predicted, extraction.errors)
    proba = predicted[[PROBA_PREFIX + name for name in classes]].to_numpy(dtype=np.float64)
    evaluation, unknown = _evaluate_folders(table, proba, frame, classes)
    files = {path: images / path for path in frame["path"]}
    files.update({e["path"]: images / e["path"] for e in extraction.errors})
    return PredictionRun(table, classes, extraction, embed_seconds, classify_seconds, evaluation, unknown, files)


def predict_inputs(
    predictor: CellClassifier | ImageClassifier,
    inputs: Sequence[str | Path],
    cache: str | Path | None,
    *,
    weights: str | Path | None = None,
    batch_size: int = 32,
    engine: str = DEFAULT_ENGINE,
    min_confidence: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    adapt: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    novelty_level: float = DEFAULT_NOVELTY_LEVEL,
) -> PredictionRun:
    """Classify one folder or image files with ``predictor``.

    A folder is embedded through the add-only Parquet ``cache`` when one is given (a second
    run embeds nothing; the cache's rows of other images are kept); image files, or a folder
    without a cache, are embedded in memory.

    Parameters
    ----------
    predictor : CellClassifier or ImageClassifier
        The model. It may be an ImageClassifier already made (then ``weights``, ``engine``
        and ``batch_size`` are its own).
    inputs : sequence of str or Path
        One folder, or image files (read by ``cellclf.inputs.input_images``).
    cache : str or Path or None
        The add-only Parquet cache a folder is embedded through (None: embedded in memory).
    weights : str or Path, optional
        The weights file the model was trained with (None: ``$CELLEMBED_WEIGHTS``; unused
        when ``predictor`` is an ImageClassifier).
    batch_size : int, default 32
        Images embedded per step (unused when ``predictor`` is an ImageClassifier).
    engine : str, default DEFAULT_ENGINE
        The embedding engine (unused when ``predictor`` is an ImageClassifier).
    min_confidence : float, optional
        A floor on the top probability: images under it are marked ``uncertain``.
    max_pixels : int, default DEFAULT_MAX_PIXELS
        See ``cellembed.extract``.
    adapt : bool, default False
        Classify the images after moving them onto the training statistics
        (``cellclf.estimator.CellClassifier.adapted``; cells from another lab).
    progress : bool, default True
        Show a progress bar while embedding.
    log : callable, optional
        Receives log lines (e.g. when the network is converted for the first time).
    novelty_level : float, default DEFAULT_NOVELTY_LEVEL
        ``unlike_training`` is a ``novelty_p`` under it (``cellclf.novelty``).

    Returns
    -------
    PredictionRun
        The predictions table, with the scores against the class sub-folders when there are any.

    Raises
    ------
    ClassifierInputError or cellembed.InputError
        Bad inputs (``cellclf.inputs.input_images``) or cache, weights other than the
        model's, a cache made with another spec.
    cellembed.Interrupted
        Ctrl-C (finished embeddings are checkpointed in the cache).
    """
    images, folder = input_images(inputs)
    if adapt:  # before building the network: too few images for --adapt fail at once
        model = predictor.predictor if isinstance(predictor, ImageClassifier) else predictor
        model.check_adaptable(_distinct_files([image.file for image in images]), len(images))
    classifier = predictor if isinstance(predictor, ImageClassifier) else ImageClassifier(
        predictor, weights=weights, engine=engine, batch_size=batch_size, log=log
    )
    if folder is not None and cache is not None:
        return _cached_folder(classifier, folder, cache, min_confidence, max_pixels, adapt, progress, log,
                              novelty_level)
    started = time.perf_counter()
    names = [image.name for image in images]
    from tqdm import tqdm

    with tqdm(total=len(images), unit="img", desc="embedding", disable=not progress, leave=False) as bar:
        vectors, reasons = classifier.embed_images([image.file for image in images], max_pixels, bar.update)
    ok = [i for i in range(len(images)) if i not in reasons]
    predicted = classifier.classify(vectors[ok], classifier.embedder.spec, adapt=adapt, min_confidence=min_confidence,
                                    novelty_level=novelty_level)
    embed_seconds = time.perf_counter() - started
    frame = pd.DataFrame({"path": pd.Series([names[i] for i in ok], dtype=object),
                          "label": pd.Series([images[i].label for i in ok], dtype=object)})
    errors = [{"path": names[i], "reason": reasons[i]} for i in sorted(reasons)]
    table = _predictions_table(frame, predicted.reset_index(drop=True), errors,
                               labelled=any(image.label is not None for image in images))
    proba = predicted[[PROBA_PREFIX + name for name in classifier.classes]].to_numpy(dtype=np.float64)
    evaluation, unknown = _evaluate_folders(table, proba, frame, classifier.classes)
    files = {image.name: image.file for image in images}
    return PredictionRun(table, classifier.classes, None, embed_seconds, 0.0, evaluation, unknown, files, errors)


def _distinct_files(files: Sequence[Path]) -> int:
    """How many of ``files`` differ in content (SHA-256); an unreadable file counts as
    distinct (it is reported as an error when embedded)."""
    from cellembed.shared.hashing import sha256_file

    seen = set()
    for file in files:
        try:
            seen.add(sha256_file(file))
        except OSError:
            seen.add(str(file))
    return len(seen)


def _folder_rows(extraction: ExtractResult) -> tuple[pd.DataFrame, EmbeddingSpec]:
    """The cache's rows of the folder's images, with their paths and labels in this folder
    (the add-only cache may hold the same image under another path, and other images)."""
    cached, spec = load_embeddings(extraction.out)
    first_row = pd.Series(np.arange(len(cached)), index=cached["sha256"])
    first_row = first_row[~first_row.index.duplicated()]
    paths, labels, sha256s = (list(column) for column in zip(*extraction.members)) if extraction.members else ([], [], [])
    frame = cached.iloc[first_row.loc[sha256s].to_numpy()].reset_index(drop=True)
    frame["path"], frame["label"] = paths, labels
    frame.attrs["cellembed_spec"] = spec
    return frame, spec


def _predictions_table(
    frame: pd.DataFrame,
    predicted: pd.DataFrame,
    errors: list[dict[str, str]],
    labelled: bool | None = None,
) -> pd.DataFrame:
    """One row per image: path, label (with class folders), predicted, confidence,
    proba_<class>..., set, set_size, uncertain (as ``predicted`` says; False for a file that
    could not be read), and error for the files that could not be read."""
    if labelled is None:
        labelled = frame["label"].notna().any() or any("/" in e["path"] for e in errors)
    table = pd.DataFrame({"path": frame["path"].astype(object)})
    if labelled:
        table["label"] = frame["label"].astype(object).where(frame["label"].notna(), None)
    table = pd.concat([table, predicted], axis=1)
    table["uncertain"] = table["uncertain"].fillna(False).astype(bool)
    if errors:
        table["error"] = None
        failed = pd.DataFrame({"path": [e["path"] for e in errors], "error": [e["reason"] for e in errors]})
        if labelled:
            failed["label"] = [e["path"].split("/", 1)[0] if "/" in e["path"] else None for e in errors]
        table = pd.concat([table, failed], ignore_index=True).sort_values("path", ignore_index=True)
    return table


def _evaluate_folders(
    table: pd.DataFrame, proba: np.ndarray, frame: pd.DataFrame, classes: list[str]
) -> tuple[Evaluation | None, dict[str, int]]:
    labels = frame["label"]
    known = labels.isin(classes).to_numpy()
    unknown = labels[labels.notna() & ~labels.isin(classes)].value_counts().sort_index()
    if not known.any():
        return None, {str(k): int(v) for k, v in unknown.items()}
    overall, per_class, confusion = evaluate(labels[known].tolist(), proba[known], classes)
    scored = table[table["path"].isin(set(frame["path"][known]))].reset_index(drop=True)
    return Evaluation(overall, per_class, confusion, scored), {str(k): int(v) for k, v in unknown.items()}


#: Decimals of the probabilities written (CSV, JSON).


def predictions_text(run: PredictionRun, fmt: str = "csv") -> str:
    """The predictions table as CSV text, or as JSON ``{path: {"predictions": {class: p},
    "predicted": ..., "confidence": ..., "set": [...], "uncertain": ..., "label": folder}}``.
    Probabilities are rounded to :data:`DECIMALS` decimals.

    In the CSV, text cells a spreadsheet would run as a formula get a leading apostrophe
    (:mod:`cellembed.shared.csv_cells`); the JSON keeps every name as it is.
    """
    if fmt == "csv":
        rounded = run.table.copy()
        numbers = ["confidence", *(PROBA_PREFIX + name for name in run.classes),
                   *([NOVELTY_COLUMNS[0]] if NOVELTY_COLUMNS[0] in rounded else [])]
        rounded[numbers] = rounded[numbers].astype(float).round(DECIMALS)
        if "set_size" in rounded:
            rounded["set_size"] = rounded["set_size"].astype("Int64")
        return inert_frame(rounded).to_csv(index=False)
    if fmt == "json":
        return json.dumps(_json_document(run), indent=2) + "\n"
    raise ClassifierInputError(f"--format {fmt!r} is not csv or json")


def write_predictions(run: PredictionRun, out: str | Path, fmt: str = "csv") -> Path:
    """Write :func:`predictions_text` to ``out`` atomically."""
    out = Path(out)
    text = predictions_text(run, fmt)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def _json_document(run: PredictionRun) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for row in run.table.to_dict("records"):
        if isinstance(row.get("error"), str):
            document[row["path"]] = {"error": row["error"]}
            continue
        # the set from its size (exact even for a class name holding the text column's "|")
        set_size = row.get("set_size")
        novelty = row.get(NOVELTY_COLUMNS[0])
        entry = prediction_record(
            [float(row[PROBA_PREFIX + name]) for name in run.classes], run.classes,
            None if set_size is None or pd.isna(set_size) else int(set_size), bool(row.get("uncertain", False)),
            None if novelty is None or pd.isna(novelty) else float(novelty),
        )
        if novelty is not None and not pd.isna(novelty):
            entry[NOVELTY_COLUMNS[1]] = bool(row[NOVELTY_COLUMNS[1]])  # at the run's level
        for key in ("label", "sample"):
            if isinstance(row.get(key), str):
                entry[key] = row[key]
        document[row["path"]] = entry
    return document


def write_evaluation_tables(evaluation: Evaluation, out: Path) -> list[Path]:
    """Per-class metrics and confusion matrix next to the predictions file."""
    outputs = PredictionOutputs.of(out)
    for frame, path in ((evaluation.per_class, outputs.per_class), (evaluation.confusion, outputs.confusion)):
        with atomic_path(path) as tmp:
            inert_frame(frame).to_csv(tmp, index=False)
    return [outputs.per_class, outputs.confusion]


# ----------------------------------------------------------------------------- the files predict writes
# The files ``cellclf predict`` writes, checked before any work.
# 
# ``predict`` writes the predictions file (``-o``; ``-o -`` is standard output), the
# per-class metrics and confusion matrix next to it (when the folder is scored), the review
# page (``--review``, by default ``<OUT name>.review.html`` next to OUT), the HTML report
# (``--report``) and the embeddings cache (``--cache``; by default next to OUT, none for
# ``-o -`` or image files). It never writes inside the images folder, and it replaces
# a file only when it is one that ``predict`` wrote (a predictions CSV or JSON, its tables,
# a cellreports page), or with ``--overwrite``. The cache is add-only and its own checks
# are :func:`cellembed.extract`'s (a cellembed file of the model's spec, or nothing).


#: ``-o -``: the predictions go to standard output.
STDOUT = "-"
#: Columns every predictions CSV has (the first one is ``path``).
PREDICTIONS_COLUMNS = ("path", "predicted", "confidence")
PER_CLASS_COLUMNS = ("class", "precision", "recall")
CONFUSION_COLUMNS = ("true", "predicted", "count")


@dataclass(frozen=True)
class PredictionOutputs:
    """Every path one ``predict`` run may write."""

    predictions: Path | None  # None: standard output
    cache: Path | None
    per_class: Path | None
    confusion: Path | None
    report: Path | None = None
    review: Path | None = None

    @classmethod
    def of(
        cls, out: str | Path, cache: str | Path | None = None, report: str | Path | None = None,
        review: str | Path | None = None, no_review: bool = False,
    ) -> "PredictionOutputs":
        """The outputs of ``-o out`` (``-`` = standard output). Next to a file OUT: the
        tables and the review page ``<OUT stem>.review.html`` (unless ``no_review``). The
        cache is ``cache`` when given; a folder's default one (:func:`default_cache_for`)
        needs the model's spec and is set by :func:`predict_run`."""
        if str(out) == STDOUT:
            return cls(None, Path(cache) if cache is not None else None, None, None,
                       Path(report) if report is not None else None, None if no_review or review is None else Path(review))
        out = Path(out)
        return cls(
            predictions=out,
            cache=Path(cache) if cache is not None else None,
            per_class=out.with_name(out.stem + ".per_class.csv"),
            confusion=out.with_name(out.stem + ".confusion_matrix.csv"),
            report=Path(report) if report is not None else None,
            review=None if no_review else Path(review) if review is not None else out.with_name(out.stem + ".review.html"),
        )

    def check(
        self, images: str | Path, overwrite: bool = False, is_report: Callable[[Path], bool] = lambda path: False,
    ) -> None:
        """Refuse, before any work, an output inside ``images`` or an existing file that
        predict did not write (unless ``overwrite``). ``is_report`` tells a report page
        predict wrote (``cellreports.is_report``, passed in by the command: the library does not
        import cellreports).

        Raises:
            ClassifierInputError: naming the file and the option to change.
        """
        folders = [Path(p).resolve() for p in ([images] if isinstance(images, (str, Path)) else images) if Path(p).is_dir()]
        named = [(option, path) for option, path in (
            ("-o", self.predictions), ("--cache", self.cache), ("-o", self.per_class), ("-o", self.confusion),
            ("--report", self.report), ("--review", self.review)) if path is not None]
        resolved = [(option, path, path.resolve()) for option, path in named]
        for i, (option, path, where) in enumerate(resolved):
            for other_option, other, other_where in resolved[:i]:
                if where == other_where:
                    raise ClassifierInputError(
                        f"{option} {path} and {other_option} {other} are the same file; give each its own path"
                    )
        for (option, path), images in ((pair, folder) for pair in named for folder in folders):
            if path.resolve().is_relative_to(images):
                raise ClassifierInputError(
                    f"{option} {path} is inside the images folder {images}; predict never writes there: "
                    f"give {option} a path outside it"
                )
        if overwrite:
            return
        for option, path, ours in (
            ("-o", self.predictions, _is_predictions),
            ("-o", self.per_class, lambda p: _csv_has(p, PER_CLASS_COLUMNS)),
            ("-o", self.confusion, lambda p: _csv_has(p, CONFUSION_COLUMNS)),
            ("--report", self.report, lambda path: path.is_file() and is_report(path)),
            ("--review", self.review, lambda path: path.is_file() and is_report(path)),
        ):
            if path is not None and (path.exists() or path.is_symlink()) and not ours(path):
                raise ClassifierInputError(
                    f"{path} exists and is not a file cellclf predict wrote; refusing to replace it: "
                    f"give {option} another path, or pass --overwrite to replace it"
                )


def _is_predictions(path: Path) -> bool:
    if _csv_has(path, PREDICTIONS_COLUMNS):
        return True
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and all(
        isinstance(entry, dict) and ("predictions" in entry or "error" in entry) for entry in document.values()
    )


def _csv_has(path: Path, columns: tuple[str, ...]) -> bool:
    """True when ``path`` is a regular file whose CSV header starts with ``columns[0]``
    and holds all of ``columns``."""
    if not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader([handle.readline(65536)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool(header) and header[0] == columns[0] and set(columns) <= set(header)


# ----------------------------------------------------------------------------- predict_run


@dataclass(frozen=True)
class PredictRequest:
    """What ``cellclf predict`` is asked (its options, by name; see the command's help)."""

    model: Path
    images: tuple[Path, ...]
    out: Path
    fmt: str = "csv"
    min_confidence: float | None = None
    review: Path | None = None
    no_review: bool = False
    cache: Path | None = None
    weights: str | None = None
    batch_size: int = 32
    engine: str = DEFAULT_ENGINE
    max_pixels: int = DEFAULT_MAX_PIXELS
    report: Path | None = None
    heatmaps: Path | None = None
    adapt: bool = False
    trust_pickle: bool = False
    overwrite: bool = False
    progress: bool = True
    novelty_level: float = DEFAULT_NOVELTY_LEVEL
    samples: bool = False  # the folder's sub-folders are samples, not classes

    @property
    def to_stdout(self) -> bool:
        return str(self.out) == "-"


class Pages:
    """The HTML pages of a predict run, drawn by a front end (the cellclf library draws no
    page): ``cellclf.cli`` passes one made of cellreports. This base draws none."""

    def is_page(self, path: Path) -> bool:
        """Whether ``path`` is a page a front end wrote (may be replaced)."""
        return False

    def write_report(self, result: "PredictResult", path: Path) -> None:
        raise ClassifierInputError("--report needs the HTML reports (cellreports), which this front end lacks")

    def write_review(self, result: "PredictResult", path: Path) -> Path:
        raise ClassifierInputError("--review needs the HTML reports (cellreports), which this front end lacks")


@dataclass
class PredictResult:
    """What :func:`predict_run` did: the run, the model, and what it wrote."""

    request: PredictRequest
    predictor: CellClassifier
    outputs: PredictionOutputs
    run: PredictionRun
    folder: Path | None = None  # the images folder (None for image files)
    not_scored: dict[str, int] = field(default_factory=dict)
    heatmaps: Any = None  # cellclf.heatmap_files.ExplainRun with --heatmaps
    seen_warning: str | None = None  # some images were the model's training/validation images


def predict_run(request: PredictRequest, pages: Pages | None = None, *, log: Callable[[str], None] | None = None,
                tell: Callable[[str], None] | None = None, stdout: Any = None) -> PredictResult:
    """``cellclf predict`` as a library call: check every output, load the model, embed and
    classify, score, and write the predictions, tables, report, heat maps and review page.

    ``pages`` draws the report and the review page; ``log`` receives progress lines (the
    command's ``-q`` silences them); ``tell`` the lines that say what was written, as each
    is done; ``stdout`` the predictions of ``-o -`` (default ``sys.stdout``).

    Raises:
        ClassifierInputError / cellembed.InputError: bad input or an output that is not
            predict's (nothing written); cellembed.Interrupted: Ctrl-C (embeddings kept in
            the cache).
    """
    from contextlib import ExitStack

    from cellembed.shared.atomic import prepare_output
    from cellclf.persistence import load_classifier

    pages = pages or Pages()
    say = log or (lambda message: None)
    tell = tell or (lambda message: None)
    found, folder = input_images(request.images)
    outputs = PredictionOutputs.of(request.out, request.cache, request.report, request.review, request.no_review)
    _check_request(request, outputs, found, folder, pages)
    started = time.perf_counter()
    predictor = load_classifier(request.model, trust_pickle=request.trust_pickle)
    say(f"loaded {predictor.source} ({predictor.family}, {len(predictor.classes)} classes) in "
        f"{time.perf_counter() - started:.1f} s")
    if outputs.cache is None and folder is not None:
        outputs = dataclasses.replace(outputs, cache=default_cache_for(folder, predictor.spec))
        say(f"embeddings cached in {outputs.cache} (reused by any later predict of this folder; safe to delete)")
    if request.report is not None:  # before anything is written
        if folder is None:
            raise ClassifierInputError("--report needs a folder with class sub-folders, not image files")
        check_scorable(folder, list(predictor.classes))
    for option, path, example in (("-o", outputs.predictions, "predictions.csv"), ("--cache", outputs.cache, "cache.parquet"),
                                  ("--report", request.report, "report.html"), ("--review", outputs.review, "review.html")):
        if path is not None:  # before any work: a place nothing can be written is refused now
            prepare_output(path, option, example)
    with ExitStack() as stack:  # a second run writing the same -o waits for nothing: it is refused
        if outputs.predictions is not None:
            stack.enter_context(output_lock(outputs.predictions))
        run = predict_inputs(
            predictor, request.images, outputs.cache, weights=request.weights, batch_size=request.batch_size,
            engine=request.engine, min_confidence=request.min_confidence, max_pixels=request.max_pixels,
            adapt=request.adapt, progress=request.progress, log=say, novelty_level=request.novelty_level,
        )
        if request.samples:
            run = as_samples(run)
        result = PredictResult(request, predictor, outputs, run, folder, _not_scored(run))
        _write_outputs(result, pages, say, tell, stdout)
    return result


def seen_in_fit(model: str | Path, files: Mapping[str, Path]) -> tuple[int, Path] | None:
    """How many of the image ``files`` the model's fit trained or validated on (same
    SHA-256 as a train or validation row of the run's split.csv), and that file; None when
    none, or when MODEL is not in a run folder with its split.csv."""
    from cellclf.rundir.layout import SPLIT
    from cellembed.shared.hashing import sha256_file

    model = Path(model)
    split_csv = (model if model.is_dir() else model.parent) / SPLIT
    if not files or not split_csv.is_file():
        return None
    try:
        split = pd.read_csv(split_csv, usecols=["sha256", "split"])
    except (OSError, ValueError):
        return None
    fitted = set(split.loc[split["split"].isin(["train", "validation"]), "sha256"].astype(str))
    count = 0
    for path in files.values():
        try:
            count += sha256_file(path) in fitted
        except OSError:
            continue
    return (count, split_csv) if count else None


def _check_request(request: PredictRequest, outputs: PredictionOutputs, found: Sequence[Any], folder: Path | None,
                   pages: Pages) -> None:
    """Refuse contradictory options and outputs that are not predict's, before any work."""
    if request.review is not None and request.no_review:
        raise ClassifierInputError("--review and --no-review contradict each other; give one of them")
    outputs.check(request.images, request.overwrite, pages.is_page)
    if request.heatmaps is not None and request.adapt:
        raise ClassifierInputError("--heatmaps explains predictions made without --adapt; leave out one of the two")
    if request.samples and folder is None:
        raise ClassifierInputError("--samples groups a folder's cells by its sub-folders; give one folder, not image files")
    if request.samples and request.report is not None:
        raise ClassifierInputError("--report scores class sub-folders and --samples says the sub-folders are samples; "
                                   "leave out one of the two")
    if request.cache is not None and folder is None:
        raise ClassifierInputError(
            "--cache caches a folder's embeddings; image files are embedded without one: leave --cache out")
    if request.heatmaps is not None:
        from cellclf.heatmap_files import check_outputs

        check_outputs(request.heatmaps, found, request.images, request.overwrite, "--heatmaps")


def _write_outputs(result: PredictResult, pages: Pages, say: Callable[[str], None], tell: Callable[[str], None],
                   stdout: Any) -> None:
    """Every output of a finished run, in order, each line told as it is written."""
    import sys

    from cellclf.metrics import accuracy_text, macro_f1_text

    request, run = result.request, result.run
    if request.to_stdout:
        (stdout or sys.stdout).write(predictions_text(run, request.fmt))
    else:
        write_predictions(run, request.out, request.fmt)
    classified = len(run.table) - len(run.errors)
    per_image = (run.embed_seconds + run.classify_seconds) / max(classified, 1)
    uncertain = int(run.table["uncertain"].sum())
    tell(f"{'wrote ' + str(request.out) if not request.to_stdout else 'predictions written to standard output'}: "
         f"{classified} images classified ({run.embedded} embedded now, {run.reused} from the cache) in "
         f"{run.embed_seconds + run.classify_seconds:.1f} s, {1000 * per_image:.0f} ms per image after loading "
         f"the model; {uncertain} uncertain")
    tell(drift_text(result))
    from cellclf.differential import corrected_line, differential_line

    counted = differential_of(result)
    if counted is not None:
        tell(differential_line(counted))
        if counted.get("corrected"):
            tell(corrected_line(counted))
    for sample, per_sample in (samples_of(result) or {}).items():
        tell(f"sample {sample} ({int((run.table['sample'] == sample).sum())} cells): {differential_line(per_sample)}")
    if run.unknown_folders:
        listed = ", ".join(f"{name} ({n})" for name, n in run.unknown_folders.items())
        tell(f"not scored: sub-folders that are not classes of the model: {listed}")
    seen = seen_in_fit(request.model, run.files)
    if seen:
        result.seen_warning = (
            f"{seen[0]} of {len(run.files)} images were used to fit this model (train or validation in {seen[1]}): "
            "they say how well it recalls them, not how it does on new cells; for that, see the test scores in its "
            "report or predict on cells it has not seen")
        tell(f"warning: {result.seen_warning}")
    if run.evaluation is not None:
        overall, where = run.evaluation.overall, ""
        if result.outputs.per_class is not None:
            where = f"; per-class metrics in {write_evaluation_tables(run.evaluation, request.out)[0]}"
        tell(f"against the sub-folders ({overall['n']} images): {accuracy_text(overall)}, "
             f"{macro_f1_text(overall, len(result.predictor.classes))}{where}")
    if request.report is not None:
        if run.evaluation is None:
            raise ClassifierInputError("--report needs images in sub-folders named like the model's classes")
        pages.write_report(result, request.report)
        tell(f"report: {request.report}")
    if request.heatmaps is not None:
        from cellclf.heatmap_files import explain_images

        result.heatmaps = explain_images(
            result.predictor, request.images, request.heatmaps, weights=request.weights, overwrite=request.overwrite,
            max_pixels=request.max_pixels, option="--heatmaps", progress=request.progress, log=say)
        tell(f"heat maps: {len(result.heatmaps.explained)} written to {request.heatmaps}"
             + (f" ({result.heatmaps.reused} already there)" if result.heatmaps.reused else ""))
    if result.outputs.review is not None:
        page = pages.write_review(result, result.outputs.review)
        tell(f"review page: {result.outputs.review} ({page.stat().st_size / 1e6:.1f} MB)")


def drift_of(result: "PredictResult") -> dict[str, Any] | None:
    """The batch test of a predict run's cells at its ``--novelty-level``
    (:func:`cellclf.novelty.batch_report`); None for a model without the drift signal."""
    from cellclf.novelty import batch_report

    table = result.run.table
    if NOVELTY_COLUMNS[0] not in table:
        return None
    values = pd.to_numeric(table[NOVELTY_COLUMNS[0]], errors="coerce").dropna().to_numpy()
    detector = result.predictor.novelty
    return batch_report(values, table["predicted"].dropna(), result.predictor.summary, result.request.novelty_level,
                        detector.smallest_p if detector is not None else 0.0)


def differential_of(result: "PredictResult", predicted: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The hematology differential of a predict run's cells (:mod:`cellclf.differential`;
    None where the model's classes are not white-cell types), with the counts corrected for
    the model's test confusions where its RUN_DIR has them and it was not adapted to another
    lab (:mod:`cellclf.count_correction`)."""
    from cellclf.count_correction import run_confusion_rates
    from cellclf.differential import differential

    predictor = result.predictor
    rates = None
    if getattr(predictor, "lab", None) is None and not result.request.adapt:
        rates = run_confusion_rates(result.request.model, predictor.family, predictor.classes)
    if predicted is None:
        predicted = result.run.table["predicted"].dropna().astype(str).tolist()
    return differential(predicted, predictor.classes, rates)


#: The sample of the images at the top of a --samples folder (not in a sub-folder).
TOP_FOLDER = "(top folder)"


def as_samples(run: PredictionRun) -> PredictionRun:
    """The run of a folder whose sub-folders are samples: their name in a ``sample`` column
    (:data:`TOP_FOLDER` for images not in one), no ``label`` and no scores against them."""
    table = run.table.copy()
    labels = table.pop("label") if "label" in table else pd.Series(None, index=table.index, dtype=object)
    table.insert(1, "sample", labels.where(labels.notna(), TOP_FOLDER).astype(object))
    return dataclasses.replace(run, table=table, evaluation=None, unknown_folders={})


def samples_of(result: "PredictResult") -> dict[str, dict[str, Any]] | None:
    """One differential per sample of a ``--samples`` run (None otherwise, or where the model's
    classes are not white-cell types)."""
    table = result.run.table
    if "sample" not in table:
        return None
    done = table[table["predicted"].notna()]
    counted = {str(sample): differential_of(result, group["predicted"].astype(str).tolist())
               for sample, group in done.groupby("sample", sort=True)}
    return counted if all(value is not None for value in counted.values()) and counted else None


def drift_text(result: "PredictResult") -> str:
    """The console's line on the drift signal (:func:`drift_of`)."""
    from cellclf.novelty import report_line

    report = drift_of(result)
    if report is None:
        return ("no drift signal: this model was fitted before cellclf had one (no novelty_p column); "
                "re-run cellclf fit to get it")
    return report_line(report)


def _not_scored(run: PredictionRun) -> dict[str, int]:
    if run.evaluation is None:
        return {}
    unknown = sum(run.unknown_folders.values())
    return {"folder is not a model class": unknown,
            "no folder, or no prediction": len(run.table) - len(run.evaluation.scored) - unknown}
