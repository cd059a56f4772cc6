"""The RUN_DIR of ``cellclf fit``: its file names and columns, typed records, write and read.

Layout (every CSV is tidy: one row per observation, header on the first line)::

    RUN_DIR/
      metrics.json           the run summary: data (input files, spec, taps, classes, images
                             per class and split), config, library versions, and per model:
                             name, chosen params, validation macro-F1, fit and tuning
                             seconds, trials, selection, test metrics (overall + per class),
                             model file, SHAP facts, tuning plot file and note;
                             "best_model" names the model saved as model.joblib
      split.csv              path, sha256, label, split (train / validation / test)
      tuning.csv             one row per tuning trial: model, trial, score_name, score,
                             score_std, seconds, selected, params (JSON), param_* columns,
                             then each family's extras (lr: fold_scores, max_iter_used;
                             xgb: val_logloss, rounds_run)
      tuning_<m>.png         each family's tuning plot (when it draws one)
      per_class.csv          model, class, precision, recall, f1, support, roc_auc (test)
      confusion_matrix.csv   model, true, predicted, count, rate (rate = count / row total)
      predictions_test.csv   model, path, sha256, label, predicted, proba_<class>...
      model.skops            the best model (cellclf.Predictor) in the safe format: loading
                             it cannot run code (cellclf.predictor; what predict loads)
      model.joblib           the same model as a pickle + model.joblib.sha256
      models/<m>.skops       each family's model, safe format
      models/<m>.joblib      each family's model as a pickle + .sha256
      shap/                  <m>_mean_abs.csv, <m>_by_tap.csv, <m>_top20.csv (columns in
                             cellclf.explain), <m>_summary.png, summary.json (facts per model)
      report.html            the HTML report (cellreports; written by the cellclf command)

:func:`write_run` builds the folder under a hidden sibling name (``.RUN_DIR.partial-*``) and
renames it to RUN_DIR only when complete, the best model last, so an interrupted fit never
leaves a model.skops or model.joblib that does not match its metrics.json (at worst a stale
hidden folder, safe to delete). An existing RUN_DIR is moved aside first and deleted after the rename.
:func:`read_run` gives back the same :class:`RunRecord`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec, InputError
from cellembed.atomic import install_folder, is_disk_full, staging_folder
from cellembed.errors import DiskFull
from cellclf.calibration import set_texts
from cellclf.errors import ClassifierInputError
from cellclf.tuning import TuningResult

METRICS = "metrics.json"
SPLIT = "split.csv"
TUNING = "tuning.csv"
PER_CLASS = "per_class.csv"
CONFUSION = "confusion_matrix.csv"
PREDICTIONS = "predictions_test.csv"
#: Heat maps of the report's gallery images (cellclf.gallery_maps).
GALLERY_DIR = "gallery"
GALLERY_INDEX = "gallery.json"
BEST_MODEL = "model.joblib"
SHAP_DIR = "shap"
SHAP_SUMMARY = f"{SHAP_DIR}/summary.json"
#: The HTML report ``cellclf fit`` writes next to the other files (``cellclf report``'s default).
REPORT = "report.html"
REQUIRED_FILES = (METRICS, PER_CLASS, CONFUSION, PREDICTIONS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Column of every per-model CSV naming the model; then one ``proba_<class>`` per class.
MODEL = "model"
PROBA_PREFIX = "proba_"
#: Columns holding names (class names, paths): read as text, so a class called "NA" stays "NA".
TEXT_COLUMNS = ("model", "class", "true", "predicted", "label", "path", "sha256", "split", "feature", "tap",
                "score_name", "params", "set")


def model_file(key: str) -> str:
    """``models/<key>.joblib``."""
    return f"models/{key}.joblib"


def tuning_plot_file(key: str) -> str:
    """``tuning_<key>.png``."""
    return f"tuning_{key}.png"


def shap_file(key: str, part: str) -> str:
    """``shap/<key>_<part>`` with part ``mean_abs.csv``, ``by_tap.csv``, ``top20.csv`` or ``summary.png``."""
    return f"{SHAP_DIR}/{key}_{part}"


class NotARunError(ClassifierInputError):
    """The folder is not a complete ``cellclf fit`` RUN_DIR (one-line message, exit status 2)."""


# ----------------------------------------------------------------------------- records


@dataclass
class ShapSummary:
    """What a run keeps of one model's SHAP values (see :mod:`cellclf.explain`).

    Attributes:
        facts: method, output, rows_explained, test_rows, subsampled, subsample_seed,
            expected_value (per class), max_additivity_error, seconds.
        mean_abs, by_tap, top: the tables of shap/<m>_mean_abs.csv, _by_tap.csv, _top20.csv
            (None when the file is gone).
        plot: PNG bytes of the summary plot (None when the file is gone or not a PNG).
    """

    facts: dict[str, Any]
    mean_abs: pd.DataFrame | None = None
    by_tap: pd.DataFrame | None = None
    top: pd.DataFrame | None = None
    plot: bytes | None = None


@dataclass
class ModelRecord:
    """One model scored on a labelled set: a family of a run, or ``cellclf predict``'s model.

    Attributes:
        key: short name (``lr``); ``model`` for a predict evaluation.
        title: name for people (``logistic regression``, or the model file).
        overall: n, accuracy, balanced_accuracy, macro_f1, weighted_f1, log_loss,
            roc_auc_ovr_macro (metrics.json ``test``).
        per_class: ``class, precision, recall, f1, support, roc_auc``.
        confusion: ``true, predicted, count, rate``.
        predictions: one row per scored image: ``path, label, predicted`` (a run adds
            ``sha256``) and one ``proba_<class>`` column per class.
        params, val_macro_f1, fit_seconds, tuning_seconds, trials, selection: tuning facts
            of a run's family (None for a predict evaluation).
        shap: the SHAP summary (None: not computed, see RunRecord.shap_missing).
        tuning_plot: PNG bytes of the family's tuning plot; ``tuning_plot_file`` is where the
            run keeps it (None: the family draws none; file set but no bytes: the file is
            gone or not a PNG).
        tuning_note: the family's sentence about its tuning (None: nothing to add).
        best: whether this is the selected model.
        calibration: the family's calibration facts (metrics.json ``calibration``,
            :func:`cellclf.calibration.calibration_facts`; None for a predict evaluation or a
            run of an earlier cellclf).
    """

    key: str
    title: str
    overall: dict[str, Any]
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    val_macro_f1: float | None = None
    fit_seconds: float | None = None
    tuning_seconds: float | None = None
    trials: int | None = None
    selection: str | None = None
    shap: ShapSummary | None = None
    tuning_plot: bytes | None = None
    tuning_plot_file: str | None = None
    tuning_note: str | None = None
    best: bool = False
    calibration: dict[str, Any] | None = None

    def probabilities(self, classes: Sequence[str]) -> np.ndarray:
        """(n, k) float64 predicted probabilities of ``predictions``' rows, columns in ``classes`` order."""
        return self.predictions[[PROBA_PREFIX + str(c) for c in classes]].to_numpy(dtype=np.float64)

    def worst_misclassified(self, classes: Sequence[str], limit: int = 24) -> pd.DataFrame:
        """The most confident mistakes (see :func:`worst_misclassified`)."""
        return worst_misclassified(self.predictions, self.probabilities(classes), classes, limit)

    def most_confident_correct(self, classes: Sequence[str], per_class: int = 2) -> pd.DataFrame:
        """The most confident correct rows of each class (see :func:`most_confident_correct`)."""
        return most_confident_correct(self.predictions, self.probabilities(classes), classes, per_class)

    @property
    def shap_plot_file(self) -> str:
        return shap_file(self.key, "summary.png")

    @property
    def shap_top_file(self) -> str:
        return shap_file(self.key, "top20.csv")


def worst_misclassified(
    predictions: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], limit: int = 24
) -> pd.DataFrame:
    """The misclassified rows, most confident first, at most ``limit``.

    Args:
        predictions: ``path, label, predicted`` columns, one row per image.
        proba: (n, k) predicted probabilities of those rows, columns in ``classes`` order.
        classes: the model's classes.
    Returns:
        those rows (original columns) plus ``confidence`` (probability of the predicted
        class) and ``proba_true`` (probability of the true class).
    """
    mistaken = (predictions["label"].astype(str) != predictions["predicted"].astype(str)).to_numpy()
    return _ranked(predictions[mistaken], np.asarray(proba, dtype=float)[mistaken], classes).head(limit).reset_index(drop=True)


def most_confident_correct(
    predictions: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], per_class: int = 2
) -> pd.DataFrame:
    """The ``per_class`` most confident correct rows of each class (classes in order)."""
    right = (predictions["label"].astype(str) == predictions["predicted"].astype(str)).to_numpy()
    ranked = _ranked(predictions[right], np.asarray(proba, dtype=float)[right], classes)
    parts = [ranked[ranked["label"].astype(str) == c].head(per_class) for c in classes]
    return pd.concat(parts, ignore_index=True) if parts else ranked.head(0)


def _ranked(rows: pd.DataFrame, proba: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    rows = rows.copy()
    column = {c: k for k, c in enumerate(classes)}
    index = np.arange(len(rows))
    rows["confidence"] = proba[index, [column[p] for p in rows["predicted"].astype(str)]] if len(rows) else []
    true_columns = [column.get(t, -1) for t in rows["label"].astype(str)]
    rows["proba_true"] = [proba[r, k] if k >= 0 else np.nan for r, k in zip(index, true_columns)]
    return rows.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")


def evaluation_record(evaluation: Any, title: str) -> ModelRecord:
    """The ModelRecord of a model scored on labelled images.

    Args:
        evaluation: ``cellclf.prediction.Evaluation`` (overall, per_class, confusion and the
            ``scored`` rows of the predictions table, with their ``proba_<class>`` columns).
        title: how to name the model (e.g. its file name).
    """
    return ModelRecord(
        key="model", title=title, overall=dict(evaluation.overall), per_class=evaluation.per_class,
        confusion=evaluation.confusion, predictions=evaluation.scored, best=True,
    )


@dataclass
class DataFacts:
    """The data of a run (metrics.json ``data``).

    Attributes:
        input, test_input: the embeddings files (test_input None: test held out of input).
        split: how the split was made, in words.
        classes: class names, in the models' order.
        counts: images per split and class ``{split: {class: n}}``.
        unlabelled_rows_ignored, rows_with_duplicate_images: counts.
        taps, n_features: the embedding layers used and their total width.
        spec: the embedding spec (None when metrics.json has none readable: ``spec_missing``).
    """

    input: str
    test_input: str | None
    split: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    unlabelled_rows_ignored: int
    rows_with_duplicate_images: int
    taps: list[str]
    n_features: int
    spec: EmbeddingSpec | None
    spec_missing: str = ""

    @property
    def total(self) -> dict[str, int]:
        """Images per split."""
        return {name: int(sum(counts.values())) for name, counts in self.counts.items()}


@dataclass
class RunRecord:
    """Everything a RUN_DIR holds except the fitted models.

    Attributes:
        run_dir: the folder (where it was written, or where it was read from).
        created: ISO time of the fit.
        data: the data facts.
        config: the fit settings (``FitConfig.to_dict()``).
        versions: library versions of the fit.
        models: one record per family, in fit order.
        best_model: key of the model saved as model.skops and model.joblib; ``best_by`` says how it won.
        split: the split.csv table (None when the file is gone).
        tuning: the tuning.csv table (None when the file is gone: ``tuning_missing`` says so).
        gallery: see below.
    """

    run_dir: Path
    created: str
    data: DataFacts
    config: dict[str, Any]
    versions: dict[str, str]
    models: list[ModelRecord]
    best_model: str
    best_by: str = "validation macro-F1"
    split: pd.DataFrame | None = None
    tuning: pd.DataFrame | None = None
    tuning_missing: str = ""
    #: gallery/gallery.json (:func:`read_gallery`, written by :mod:`cellclf.gallery_maps`): the heat maps of
    #: the gallery images, or why there are none; None for a run without it.
    gallery: dict[str, Any] | None = None

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def best(self) -> ModelRecord:
        """The selected model's record."""
        return next((m for m in self.models if m.key == self.best_model), self.models[0])

    @property
    def shap_missing(self) -> str:
        """Why a model has no SHAP summary."""
        if not self.config.get("shap", True):
            return "the run was fitted without SHAP (--no-shap)"
        return f"{Path(self.run_dir).name}/{SHAP_DIR} has no results for this model"


# ----------------------------------------------------------------------------- tables


def predictions_table(
    meta: pd.DataFrame, labels: Sequence[str], proba: np.ndarray, classes: Sequence[str], sets: np.ndarray | None = None,
) -> pd.DataFrame:
    """``path, sha256, label, predicted, proba_<class>...`` of one model's test predictions,
    then ``set`` and ``set_size`` when the (n, k) bool prediction ``sets`` are given."""
    columns = {
        "path": meta["path"].to_numpy(),
        "sha256": meta["sha256"].to_numpy(),
        "label": np.asarray(labels, dtype=object),
        "predicted": np.asarray(classes, dtype=object)[proba.argmax(axis=1)],
        **{PROBA_PREFIX + name: proba[:, k] for k, name in enumerate(classes)},
    }
    if sets is not None:
        columns["set"] = set_texts(sets, proba, classes)
        columns["set_size"] = sets.sum(axis=1).astype(int)
    return pd.DataFrame(columns)  # built at once: one column per class


def tuning_table(results: Sequence[TuningResult]) -> pd.DataFrame:
    """The ``tuning.csv`` table: one row per trial of every family.

    Columns: ``model, trial, score_name, score, score_std, seconds, selected, params``
    (JSON), one ``param_<name>`` column per hyper-parameter, then the family's extra columns.
    """
    rows = []
    for result in results:
        for trial in result.trials:
            row: dict[str, Any] = {
                MODEL: result.family,
                "trial": trial.number,
                "score_name": trial.score_name,
                "score": trial.score,
                "score_std": trial.score_std,
                "seconds": round(trial.seconds, 3),
                "selected": trial.number == result.best_trial.number,
                "params": json.dumps(trial.params, sort_keys=True),
            }
            row.update({f"param_{k}": _cell(v) for k, v in trial.params.items()})
            row.update({k: _cell(v) for k, v in trial.extra.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _stacked(models: Sequence[ModelRecord], table: str) -> pd.DataFrame:
    """One table of every model (``model`` first) from each record's ``table`` attribute."""
    frame = pd.concat([getattr(m, table).assign(**{MODEL: m.key}) for m in models], ignore_index=True)
    return frame[[MODEL] + [c for c in frame.columns if c != MODEL]]


def _per_model(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame[frame[MODEL] == key].drop(columns=MODEL).reset_index(drop=True)


# ----------------------------------------------------------------------------- metrics.json


def metrics_document(record: RunRecord) -> dict[str, Any]:
    """The metrics.json document of a run (strict JSON: NaN as null)."""
    data = record.data
    models = {}
    for model in record.models:
        models[model.key] = {
            "name": model.title,
            "params": model.params,
            "val_macro_f1": model.val_macro_f1,
            "fit_seconds": model.fit_seconds,
            "tuning_seconds": model.tuning_seconds,
            "trials": model.trials,
            "selection": model.selection,
            "test": model.overall,
            "test_per_class": model.per_class.set_index("class").to_dict(orient="index"),
            "model_file": model_file(model.key),
            "shap": model.shap.facts if model.shap is not None else None,
            "tuning_plot": model.tuning_plot_file,
            "tuning_note": model.tuning_note,
            "calibration": model.calibration,
        }
    return json_safe(
        {
            "created": record.created,
            "run_dir": str(record.run_dir),
            "best_model": record.best_model,
            "best_by": record.best_by,
            "data": {
                "input": data.input,
                "test_input": data.test_input,
                "split": data.split,
                "classes": data.classes,
                "counts": data.counts,
                "total": data.total,
                "unlabelled_rows_ignored": data.unlabelled_rows_ignored,
                "rows_with_duplicate_images": data.rows_with_duplicate_images,
                "taps": data.taps,
                "n_features": data.n_features,
                "spec": data.spec.to_dict() if data.spec is not None else None,
            },
            "config": record.config,
            "versions": record.versions,
            "models": models,
        }
    )


def json_safe(value: Any) -> Any:
    """NaN -> null, tuples -> lists and numpy scalars -> Python, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- write


def write_run(record: RunRecord, run_dir: str | Path, predictors: Mapping[str, Any], keep_note: str = "") -> Path:
    """Write a complete RUN_DIR atomically (see the module docstring): :func:`render_run`,
    then :func:`write_files`.

    Args:
        record: the run; ``record.run_dir`` is recorded in metrics.json.
        run_dir: the folder to create or replace.
        predictors: per model key, its fitted ``cellclf.Predictor`` (saved as
            ``Predictor.save`` does: the safe ``.skops`` file and the ``.joblib`` with its checksum).
        keep_note: added to a DiskFull message (where the caller kept the trained models).
    Returns:
        ``run_dir`` as a Path.
    """
    return write_files(render_run(record, predictors), run_dir, keep_note)


def render_run(record: RunRecord, predictors: Mapping[str, Any]) -> dict[str, bytes]:
    """Every file of the run, by its path inside RUN_DIR, as bytes, in writing order (the
    best model last: the run is complete when it is there)."""
    files = _run_files(record)
    files.update({str(p): data for model in record.models
                  for p, data in predictors[model.key].files(Path(model_file(model.key))).items()})
    files.update({p.name: data for p, data in predictors[record.best_model].files(Path(BEST_MODEL)).items()})
    return files


def write_files(files: Mapping[str, bytes], run_dir: str | Path, keep_note: str = "") -> Path:
    """Write rendered run ``files`` as the folder ``run_dir``, atomically.

    The size is known before a byte is written: a disk without that much free space, or one
    that fills up meanwhile, is a :class:`~cellembed.errors.DiskFull` naming the file, the
    size needed and the free space (``keep_note`` added), and ``run_dir`` is left as it was.
    """
    run_dir = Path(run_dir)
    needed = sum(len(data) for data in files.values())
    free = _free_bytes(run_dir.parent)
    if free is not None and free < needed:
        raise _run_disk_full(run_dir, run_dir, needed, keep_note)
    staging = staging_folder(run_dir)
    name = ""
    try:
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        install_folder(staging, run_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_disk_full(exc):
            raise
        raise _run_disk_full(run_dir, run_dir / name, needed, keep_note) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _run_disk_full(run_dir: Path, target: Path, needed: int, keep_note: str) -> DiskFull:
    free = _free_bytes(run_dir.parent) or 0
    facts = (f"the disk is full while writing {target} (the run needs {needed / 1e6:.1f} MB; {free / 1e6:.1f} MB "
             f"are free in {run_dir.parent})")
    return DiskFull(f"{facts}; {run_dir} was left as it was: free space in {run_dir.parent} and run the same command "
                    f"again{keep_note}", facts)


def _run_files(record: RunRecord) -> dict[str, bytes]:
    """Every file of the run but the models, by path inside RUN_DIR, as bytes."""
    files: dict[str, bytes] = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        files[name] = frame.to_csv(index=False).encode("utf-8")

    if record.split is not None:
        csv(SPLIT, record.split)
    if record.tuning is not None:
        csv(TUNING, record.tuning)
    csv(PER_CLASS, _stacked(record.models, "per_class"))
    csv(CONFUSION, _stacked(record.models, "confusion"))
    csv(PREDICTIONS, _stacked(record.models, "predictions"))
    for model in record.models:
        if model.tuning_plot is not None and model.tuning_plot_file is not None:
            files[model.tuning_plot_file] = model.tuning_plot
        if model.shap is not None:
            for part, table in (("mean_abs.csv", model.shap.mean_abs), ("by_tap.csv", model.shap.by_tap),
                                ("top20.csv", model.shap.top)):
                if table is not None:
                    csv(shap_file(model.key, part), table)
            if model.shap.plot is not None:
                files[shap_file(model.key, "summary.png")] = model.shap.plot
    explained = {m.key: m.shap.facts for m in record.models if m.shap is not None}
    if explained:
        files[SHAP_SUMMARY] = _json_bytes(explained)
    files[METRICS] = _json_bytes(metrics_document(record))
    return files


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(json_safe(document), indent=2) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------- read


def read_csv(path: Path) -> pd.DataFrame:
    """A RUN_DIR CSV with its name columns as text (only empty cells are missing)."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in header if c in TEXT_COLUMNS}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])


def _run_file(run_dir: Path, name: str) -> Path | None:
    """``run_dir / name`` if it is a file inside run_dir (metrics.json names some files)."""
    path = run_dir / name
    return path if path.resolve().is_relative_to(run_dir.resolve()) and path.is_file() else None


def _optional_csv(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = _run_file(run_dir, name)
    return read_csv(path) if path is not None else None


def _optional_png(run_dir: Path, name: str | None) -> bytes | None:
    path = _run_file(run_dir, name) if name else None
    data = path.read_bytes() if path is not None else b""
    return data if data.startswith(PNG_SIGNATURE) else None


def read_gallery(run_dir: Path) -> dict[str, Any] | None:
    """``gallery.json`` of a run (None when the run has none), with each item's pictures'
    paths made absolute; pictures that are gone are dropped from ``items``."""
    path = Path(run_dir) / GALLERY_DIR / GALLERY_INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    kept = []
    for item in index.get("items", []):
        files = {k: Path(run_dir) / GALLERY_DIR / Path(v).name for k, v in item.get("files", {}).items()}
        if files and all(f.is_file() for f in files.values()):
            kept.append({**item, "files": files})
    index["items"] = kept
    return index


def read_run(run_dir: str | Path) -> RunRecord:
    """The RunRecord of a RUN_DIR written by :func:`write_run`.

    Files that are gone (or, for plots, are not PNG images) make the matching parts None
    (``tuning_missing`` says why for tuning.csv); the required ones (metrics.json and the
    per-model CSVs) raise. Only files inside ``run_dir`` are read.

    Raises:
        NotARunError: not a folder, a required file is missing, or metrics.json is not a
            cellclf document.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a folder; give the -o folder of a `cellclf fit` run")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise NotARunError(
            f"{run_dir} is not a complete cellclf run (missing {', '.join(missing)}); give the -o folder of `cellclf fit`"
        )
    try:
        metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
        data = _data_facts(metrics["data"])
        model_docs: dict[str, Any] = metrics["models"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotARunError(f"{run_dir / METRICS} is not a cellclf metrics file ({exc!r}); re-run cellclf fit") from None
    if not data.classes or not model_docs:
        raise NotARunError(f"{run_dir / METRICS} lists no classes or models; re-run cellclf fit")

    shap_summary = _shap_summary_file(run_dir)
    best = metrics.get("best_model")
    try:
        tables = {name: read_csv(run_dir / name) for name in (PER_CLASS, CONFUSION, PREDICTIONS)}
        models = [
            _model_record(key, doc, tables, shap_summary.get(key), run_dir, best == key) for key, doc in model_docs.items()
        ]
    except (KeyError, ValueError, AttributeError) as exc:  # pandas' parser errors are ValueErrors
        raise NotARunError(f"{run_dir} holds a damaged cellclf run file ({exc!r}); re-run cellclf fit") from None
    tuning = _optional_csv(run_dir, TUNING)
    return RunRecord(
        run_dir=run_dir,
        created=metrics.get("created", ""),
        data=data,
        config=metrics.get("config") or {},
        versions=metrics.get("versions") or {},
        models=models,
        best_model=best if best in model_docs else next(iter(model_docs)),
        best_by=metrics.get("best_by", "validation macro-F1"),
        split=_optional_csv(run_dir, SPLIT),
        tuning=tuning,
        tuning_missing="" if tuning is not None else f"{run_dir.name}/{TUNING} is missing",
        gallery=read_gallery(run_dir),
    )


def _data_facts(doc: dict[str, Any]) -> DataFacts:
    spec, spec_missing = None, ""
    try:
        spec = EmbeddingSpec.from_dict(doc["spec"])
    except InputError as exc:
        spec_missing = str(exc)
    except (KeyError, TypeError, AttributeError) as exc:
        spec_missing = f"metrics.json has no readable embedding spec ({exc!r})"
    return DataFacts(
        input=doc.get("input"),
        test_input=doc.get("test_input"),
        split=doc.get("split"),
        classes=[str(c) for c in doc["classes"]],
        counts=doc.get("counts") or {},
        unlabelled_rows_ignored=doc.get("unlabelled_rows_ignored"),
        rows_with_duplicate_images=doc.get("rows_with_duplicate_images"),
        taps=list(doc.get("taps") or []),
        n_features=doc.get("n_features"),
        spec=spec,
        spec_missing=spec_missing,
    )


def _shap_summary_file(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / SHAP_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _model_record(
    key: str, doc: dict[str, Any], tables: dict[str, pd.DataFrame], shap_facts: dict | None, run_dir: Path, best: bool
) -> ModelRecord:
    # A run of an earlier cellclf has no "tuning_plot" key: expect the usual file, so the
    # report says the plot is missing instead of leaving it out without a word.
    plot_file = doc["tuning_plot"] if "tuning_plot" in doc else tuning_plot_file(key)
    return ModelRecord(
        key=key,
        title=doc.get("name", key),
        overall=dict(doc.get("test") or {}),
        per_class=_per_model(tables[PER_CLASS], key),
        confusion=_per_model(tables[CONFUSION], key),
        predictions=_per_model(tables[PREDICTIONS], key),
        params=doc.get("params") or {},
        val_macro_f1=doc.get("val_macro_f1"),
        fit_seconds=doc.get("fit_seconds"),
        tuning_seconds=doc.get("tuning_seconds"),
        trials=doc.get("trials"),
        selection=doc.get("selection"),
        shap=_read_shap(key, doc.get("shap") or shap_facts, run_dir),
        tuning_plot=_optional_png(run_dir, plot_file),
        tuning_plot_file=plot_file,
        tuning_note=doc.get("tuning_note"),
        best=best,
        calibration=doc.get("calibration"),
    )


def _read_shap(key: str, facts: dict | None, run_dir: Path) -> ShapSummary | None:
    shap = ShapSummary(
        facts=facts or {},
        mean_abs=_optional_csv(run_dir, shap_file(key, "mean_abs.csv")),
        by_tap=_optional_csv(run_dir, shap_file(key, "by_tap.csv")),
        top=_optional_csv(run_dir, shap_file(key, "top20.csv")),
        plot=_optional_png(run_dir, shap_file(key, "summary.png")),
    )
    if not facts and all(part is None for part in (shap.mean_abs, shap.by_tap, shap.top, shap.plot)):
        return None
    return shap
