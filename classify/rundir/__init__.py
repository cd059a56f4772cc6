"""The RUN_DIR of ``cellclf fit``, one module per job:

- :mod:`~cellclf.rundir.layout`: its file names and columns (the layout, documented there);
- :mod:`~cellclf.rundir.records`: the typed records, without I/O (the contract
  ``cellreports`` reads);
- :mod:`~cellclf.rundir.writer`: :func:`render_run` (every file in memory) and
  :func:`write_files` (atomically), :func:`write_run` both;
- :mod:`~cellclf.rundir.reader`: :func:`read_run`.

The names below are importable from ``cellclf.rundir`` itself.
"""

from __future__ import annotations

from cellclf.rundir.layout import (
    LABEL_ISSUES,
    BEST_MODEL,
    CONFUSION,
    GALLERY_DIR,
    GALLERY_INDEX,
    METRICS,
    MODEL,
    PER_CLASS,
    PREDICTIONS,
    PROBA_PREFIX,
    REPORT,
    REQUIRED_FILES,
    SHAP_DIR,
    SHAP_SUMMARY,
    SPLIT,
    TEXT_COLUMNS,
    TUNING,
    NotARunError,
    model_file,
    shap_file,
    tuning_plot_file,
)
from cellclf.rundir.reader import read_csv, read_gallery, read_run
from cellclf.rundir.records import (
    DataFacts,
    ModelRecord,
    RunRecord,
    ShapSummary,
    evaluation_record,
    predictions_table,
    tuning_table,
)
from cellclf.rundir.writer import (
    check_run_dir, check_writable, json_safe, metrics_document, render_run, write_files, write_run,
)

__all__ = [
    "check_run_dir",
    "check_writable",
    "BEST_MODEL", "CONFUSION", "LABEL_ISSUES", "GALLERY_DIR", "GALLERY_INDEX", "METRICS", "MODEL", "PER_CLASS", "PREDICTIONS",
    "PROBA_PREFIX", "REPORT", "REQUIRED_FILES", "SHAP_DIR", "SHAP_SUMMARY", "SPLIT", "TEXT_COLUMNS", "TUNING",
    "NotARunError", "model_file", "shap_file", "tuning_plot_file", "read_csv", "read_gallery", "read_run",
    "DataFacts", "ModelRecord", "RunRecord", "ShapSummary", "evaluation_record", "predictions_table",
    "tuning_table", "json_safe", "metrics_document", "render_run", "write_files", "write_run",
]
