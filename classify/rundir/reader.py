"""Reading a RUN_DIR back into its :class:`~cellclf.rundir.records.RunRecord` (:func:`read_run`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cellembed import EmbeddingSpec, InputError
from cellclf.rundir.layout import (
    METRICS,
    SPLIT,
    TUNING,
    PER_CLASS,
    CONFUSION,
    PREDICTIONS,
    LABEL_ISSUES,
    GALLERY_DIR,
    GALLERY_INDEX,
    SHAP_SUMMARY,
    REQUIRED_FILES,
    PNG_SIGNATURE,
    MODEL,
    TEXT_COLUMNS,
    tuning_plot_file,
    shap_file,
    NotARunError,
)
from cellclf.rundir.records import DataFacts, ModelRecord, RunRecord, ShapSummary


def _per_model(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame[frame[MODEL] == key].drop(columns=MODEL).reset_index(drop=True)


def read_csv(path: Path) -> pd.DataFrame:
    """A RUN_DIR CSV with its name columns as text (only empty cells are missing)."""
    return _text_table(Path(path).read_text(encoding="utf-8"))


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as :func:`read_csv` gives it back once written (the same dtypes), so that a
    run's record in memory equals the one read from its folder."""
    return _text_table(frame.to_csv(index=False))


def _text_table(text: str) -> pd.DataFrame:
    import io

    header = pd.read_csv(io.StringIO(text), nrows=0).columns
    dtypes = {c: str for c in header if c in TEXT_COLUMNS}
    return pd.read_csv(io.StringIO(text), dtype=dtypes, keep_default_na=False, na_values=[""])


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
    """Read the RunRecord of a RUN_DIR written by ``write_run``.

    Files that are gone (or, for plots, are not PNG images) make the matching parts None
    (``tuning_missing`` says why for tuning.csv); the required ones (metrics.json and the
    per-model CSVs) raise. Only files inside ``run_dir`` are read.

    Parameters
    ----------
    run_dir : str or Path
        The RUN_DIR (the ``-o`` folder of ``cellclf fit``).

    Returns
    -------
    RunRecord
        The run's record.

    Raises
    ------
    NotARunError
        Not a folder, a required file is missing, or metrics.json is not a cellclf document.
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
        label_issues=_optional_csv(run_dir, LABEL_ISSUES),
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
        grouping=doc.get("grouping") if isinstance(doc.get("grouping"), dict) else None,
        labels=doc.get("labels") if isinstance(doc.get("labels"), dict) else None,
        label_audit=doc.get("label_audit") if isinstance(doc.get("label_audit"), dict) else None,
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
