"""The RUN_DIR of ``cellclf fit``: its file names and columns (the layout; no I/O here).

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
      model.skops            the best model (cellclf.CellClassifier) in the safe format: loading
                             it cannot run code (cellclf.persistence; what predict loads)
      model.joblib           the same model as a pickle + model.joblib.sha256
      models/<m>.skops       each family's model, safe format
      models/<m>.joblib      each family's model as a pickle + .sha256
      shap/                  <m>_mean_abs.csv, <m>_by_tap.csv, <m>_top20.csv (columns in
                             cellclf.shap_values), <m>_summary.png, summary.json (facts per model)
      label_issues.csv       the label audit's suggested relabels (cellclf.label_audit), in the
                             corrections format (cellclf.corrections) plus split and
                             given_probability; absent with --no-label-audit
      report.html            the HTML report (cellreports; written by the cellclf command)

Written by :mod:`cellclf.rundir.writer`, read by :mod:`cellclf.rundir.reader`; the records
both exchange are :mod:`cellclf.rundir.records`.
"""

from __future__ import annotations

from cellclf.errors import ClassifierInputError

METRICS = "metrics.json"
SPLIT = "split.csv"
TUNING = "tuning.csv"
PER_CLASS = "per_class.csv"
CONFUSION = "confusion_matrix.csv"
PREDICTIONS = "predictions_test.csv"
LABEL_ISSUES = "label_issues.csv"
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
                "score_name", "params", "set", "given_label", "model_label", "reviewer", "time", "source",
                "embeddings", "note")


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
