"""Writing a RUN_DIR: rendered in memory first (:func:`render_run`: its size is known before
a byte is written), then written atomically (:func:`write_files`).

:func:`write_run` builds the folder under a hidden sibling name (``.RUN_DIR.partial-*``) and
renames it to RUN_DIR only when complete, the best model last, so an interrupted fit never
leaves a model.skops or model.joblib that does not match its metrics.json (at worst a stale
hidden folder, safe to delete). An existing RUN_DIR is moved aside first and deleted after the rename.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cellembed.shared.atomic import install_folder, is_disk_full, staging_folder
from cellembed.errors import DiskFull
from cellclf.rundir.layout import (
    METRICS,
    SPLIT,
    TUNING,
    PER_CLASS,
    CONFUSION,
    PREDICTIONS,
    LABEL_ISSUES,
    BEST_MODEL,
    SHAP_SUMMARY,
    MODEL,
    model_file,
    shap_file,
)
from cellclf.errors import ClassifierInputError
from cellclf.rundir.records import ModelRecord, RunRecord


def _stacked(models: Sequence[ModelRecord], table: str) -> pd.DataFrame:
    """One table of every model (``model`` first) from each record's ``table`` attribute."""
    frame = pd.concat([getattr(m, table).assign(**{MODEL: m.key}) for m in models], ignore_index=True)
    return frame[[MODEL] + [c for c in frame.columns if c != MODEL]]


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
                "grouping": data.grouping,
                "labels": data.labels,
                "label_audit": data.label_audit,
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
        predictors: per model key, its fitted ``cellclf.CellClassifier`` (saved as
            ``cellclf.persistence.save`` does: the safe ``.skops`` file and the ``.joblib`` with its checksum).
        keep_note: added to a DiskFull message (where the caller kept the trained models).
    Returns:
        ``run_dir`` as a Path.
    """
    return write_files(render_run(record, predictors), run_dir, keep_note)


def render_run(record: RunRecord, predictors: Mapping[str, Any]) -> dict[str, bytes]:
    """Every file of the run, by its path inside RUN_DIR, as bytes, in writing order (the
    best model last: the run is complete when it is there)."""
    from cellclf.persistence import files as model_files

    files = _run_files(record)
    files.update({str(p): data for model in record.models
                  for p, data in model_files(predictors[model.key], Path(model_file(model.key))).items()})
    files.update({p.name: data for p, data in model_files(predictors[record.best_model], Path(BEST_MODEL)).items()})
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
    if record.label_issues is not None:
        csv(LABEL_ISSUES, record.label_issues)
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


def check_writable(run_dir: Path) -> None:
    """Refuse, before any work, a RUN_DIR that cannot be made: a real write probe in its
    parent (permission bits say nothing for root or on read-only mounts)."""
    if run_dir.name in ("", ".", ".."):  # the run is renamed into place: it needs a name of its own
        raise ClassifierInputError(
            f"-o {run_dir} is not a new folder of its own; name the run folder, e.g. -o {run_dir / 'run'}"
        )
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ClassifierInputError(f"-o {run_dir}: {folder} exists and is not a folder; choose another -o")
            break
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClassifierInputError(
            f"-o {run_dir}: cannot create the folder {run_dir.parent} ({exc.strerror or exc}); choose another -o"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=run_dir.parent):
            pass
    except OSError as exc:
        raise ClassifierInputError(
            f"-o {run_dir}: {run_dir.parent} is not writable ({exc.strerror or exc}); choose another -o"
        ) from None


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a RUN_DIR that holds files unless ``overwrite``."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ClassifierInputError(
            f"{run_dir} already exists and is not empty; choose another -o or pass --overwrite"
        )
