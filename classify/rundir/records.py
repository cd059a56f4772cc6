"""The typed records of a run (no I/O): what the writer renders, the reader gives back and
the reports (``cellreports``) read by attribute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec
from cellclf.calibration import set_texts
from cellclf.gallery_ranking import most_confident_correct, worst_misclassified
from cellclf.rundir.layout import (
    SHAP_DIR,
    MODEL,
    PROBA_PREFIX,
    shap_file,
)
from cellclf.tuning import TuningResult



@dataclass
class ShapSummary:
    """What a run keeps of one model's SHAP values (see :mod:`cellclf.shap_values`).

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
        """The most confident mistakes (see :func:`cellclf.gallery_ranking.worst_misclassified`)."""
        return worst_misclassified(self.predictions, self.probabilities(classes), classes, limit)

    def most_confident_correct(self, classes: Sequence[str], per_class: int = 2) -> pd.DataFrame:
        """The most confident correct rows of each class (see :func:`cellclf.gallery_ranking.most_confident_correct`)."""
        return most_confident_correct(self.predictions, self.probabilities(classes), classes, per_class)

    @property
    def shap_plot_file(self) -> str:
        return shap_file(self.key, "summary.png")

    @property
    def shap_top_file(self) -> str:
        return shap_file(self.key, "top20.csv")


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
        grouping: the near-duplicate groups the split kept whole
            (:meth:`cellclf.near_duplicates.Grouping.facts`; None in runs made before them).
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
    grouping: dict[str, Any] | None = None
    #: What ``--labels`` did (:meth:`cellclf.corrections.Relabelling.facts`; None: no corrections file).
    labels: dict[str, Any] | None = None
    #: The label audit's facts (:func:`cellclf.label_audit.audit`; None: not run).
    label_audit: dict[str, Any] | None = None

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
    #: label_issues.csv (:mod:`cellclf.label_audit`); None when the audit did not run or found the file gone.
    label_issues: pd.DataFrame | None = None

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
