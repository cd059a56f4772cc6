"""``cellclf fit``: split, tune, refit, evaluate, explain, and write RUN_DIR.

RUN_DIR layout (every CSV is tidy: one row per observation, header on the first line)::

    RUN_DIR/
      metrics.json           the run summary: data (input files, spec, taps, classes, images
                             per class and split), config, library versions, and per model:
                             chosen params, validation macro-F1, fit seconds, test metrics
                             (overall + per class), SHAP facts; "best_model" names the
                             model saved as model.joblib
      split.csv              path, sha256, label, split (train / validation / test)
      tuning.csv             one row per tuning trial: model, trial, score_name, score,
                             score_std, seconds, selected, params (JSON), param_* columns,
                             extras (lr: fold_scores, max_iter_used; xgb: val_logloss,
                             rounds_run)
      per_class.csv          model, class, precision, recall, f1, support, roc_auc (test)
      confusion_matrix.csv   model, true, predicted, count, rate (rate = count / row total)
      predictions_test.csv   model, path, sha256, label, predicted, proba_<class>...
      model.joblib           the best model (cellclf.Predictor) + model.joblib.sha256
      models/<m>.joblib      each family's model (lr, xgb) + .sha256
      shap/                  see cellclf.explain: <m>_mean_abs.csv, <m>_by_tap.csv,
                             <m>_top20.csv, <m>_summary.png, summary.json

Atomicity: everything is written into a hidden sibling folder ``.RUN_DIR.partial-*`` that is
renamed to RUN_DIR only when complete, so an interrupted fit never leaves a model.joblib
that does not match its metrics.json (at worst a stale hidden folder, safe to delete).
With ``overwrite`` an existing RUN_DIR is moved aside first and deleted after the rename.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cellembed.atomic import install_folder, staging_folder
from cellclf.data import LabelledEmbeddings, SplitData, check_same_spec, load_labelled
from cellclf.errors import ClassifierInputError
from cellclf.families import ModelFamily, families, get_family
from cellclf.predictor import Predictor, library_versions
from cellclf.split import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    SPLIT_NAMES,
    check_classes,
    check_no_leak,
    check_training_split,
    group_labels,
    split_rows,
    split_table,
)
from cellclf.tuning import TuningResult, tuning_table

DEFAULT_SHAP_ROWS = 1000


def _registered_keys() -> tuple[str, ...]:
    return tuple(family.key for family in families())


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit (the ``cellclf fit`` options).

    Attributes:
        models: keys of the model families to fit (default: every registered family).
        seed, cv, taps, shap, shap_max_rows, n_jobs, val_fraction, test_fraction: the
            settings every family shares.
        options: per family key, the values of its :class:`~cellclf.families.FamilyOption`
            settings; missing ones get their defaults and every value is checked, so after
            construction it holds every registered family's complete settings.

    Build one with :meth:`build`, which takes the family settings as ``<key>_<name>``
    keywords, e.g. ``FitConfig.build(cv=3, lr_Cs=(0.1, 1.0), xgb_trials=2)``.
    """

    models: tuple[str, ...] = field(default_factory=_registered_keys)
    seed: int = 0
    cv: int = 5
    taps: tuple[str, ...] | None = None
    shap: bool = True
    shap_max_rows: int = DEFAULT_SHAP_ROWS
    n_jobs: int = 2
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        known = _registered_keys()
        unknown = [m for m in self.models if m not in known]
        if unknown or not self.models:
            raise ClassifierInputError(f"unknown model {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
        if self.cv < 2:
            raise ClassifierInputError(f"--cv must be at least 2, got {self.cv}")
        strange = sorted(set(self.options) - set(known))
        if strange:
            raise ClassifierInputError(f"options for unknown model {', '.join(strange)}; choose from {', '.join(known)}")
        object.__setattr__(self, "options", {family.key: _family_values(family, self.options.get(family.key, {}))
                                             for family in families()})

    @classmethod
    def build(cls, **settings: Any) -> "FitConfig":
        """A FitConfig from shared settings and ``<family key>_<option name>`` keywords.

        Raises:
            TypeError: a keyword that is neither a shared setting nor a family option.
        """
        shared = {f.name for f in fields(cls)} - {"options"}
        options: dict[str, dict[str, Any]] = {}
        for family in families():
            for option in family.options:
                keyword = f"{family.key}_{option.name}"
                if keyword in settings:
                    options.setdefault(family.key, {})[option.name] = settings.pop(keyword)
        unknown = sorted(set(settings) - shared)
        if unknown:
            raise TypeError(f"FitConfig.build() got unexpected keyword arguments: {', '.join(unknown)}")
        return cls(**settings, options=options)

    def to_dict(self) -> dict[str, Any]:
        """The settings as metrics.json records them: shared ones and ``<key>_<name>`` ones."""
        document = {"models": list(self.models), "seed": self.seed, "cv": self.cv}
        for key, values in self.options.items():
            document.update({f"{key}_{name}": value for name, value in values.items()})
        document.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in document and f.name != "options"})
        return document


def _family_values(family: ModelFamily, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of ``family``: the given value or the default, checked by its parser."""
    names = {option.name for option in family.options}
    strange = sorted(set(given) - names)
    if strange:
        raise ClassifierInputError(
            f"{family.key} has no option {', '.join(strange)}; its options are {', '.join(sorted(names))}"
        )
    values = {}
    for option in family.options:
        try:
            values[option.name] = option.parse(given.get(option.name, option.default))
        except ValueError as exc:
            raise ClassifierInputError(f"{option.flag or f'{family.key}_{option.name}'} {exc}") from None
    return values


@dataclass
class ModelResult:
    """One tuned, refitted and tested model family."""

    family: str
    tuning: TuningResult
    params: dict[str, Any]
    val_macro_f1: float
    fit_seconds: float
    test_metrics: dict[str, Any]
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    test_proba: np.ndarray
    predictor: Predictor
    shap: dict[str, Any] | None = None


@dataclass
class FitResult:
    """What :func:`fit` produced; ``run_dir`` holds the files."""

    run_dir: Path
    best: str
    models: dict[str, ModelResult]
    metrics: dict[str, Any] = field(repr=False)

    def table(self) -> str:
        """A small text table of validation and test scores per model."""
        lines = [f"{'model':<6} {'val macro-F1':>12} {'test accuracy':>13} {'test macro-F1':>13} {'fit s':>7}"]
        for name, result in self.models.items():
            star = "*" if name == self.best else " "
            lines.append(
                f"{name + star:<6} {result.val_macro_f1:>12.4f} {result.test_metrics['accuracy']:>13.4f} "
                f"{result.test_metrics['macro_f1']:>13.4f} {result.fit_seconds:>7.1f}"
            )
        lines.append(f"* best validation macro-F1, saved as {self.run_dir / 'model.joblib'}")
        return "\n".join(lines)


class _PhaseLog:
    """Prints one line per phase with its wall time."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log or (lambda message: None)
        self.start = time.perf_counter()

    def __call__(self, phase: str, message: str) -> None:
        now = time.perf_counter()
        self.log(f"{phase:<18} {now - self.start:7.1f}s  {message}")
        self.start = now


def fit(
    embeddings: str | Path,
    run_dir: str | Path,
    *,
    test: str | Path | None = None,
    config: FitConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    on_complete: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """Fit, evaluate and explain the configured models on a cellembed embeddings file.

    Args:
        embeddings: Parquet file from ``cellembed extract``; its labelled rows are used.
        run_dir: output folder (layout in this module's docstring); must not exist or be
            empty unless ``overwrite``.
        test: optional separate embeddings file used as the test set (then the input is
            split into train / validation only).
        config: tuning budget, seed, models, taps... (default: ``FitConfig()``).
        log: called with one line per phase (e.g. ``click.echo``).
        on_complete: called with the FitResult once RUN_DIR is in place (e.g. to write
            a report).

    Raises:
        ClassifierInputError / cellembed.InputError: bad input (one-line message).
    """
    run_dir = Path(run_dir)
    config = config if config is not None else FitConfig()
    _check_run_dir(run_dir, overwrite)
    phase = _PhaseLog(log)

    data = load_labelled(embeddings, config.taps)
    test_data = load_labelled(test, config.taps) if test is not None else None
    if test_data is not None:
        check_same_spec(data, test_data)
        check_no_leak(data.meta, test_data.meta, data.source, test_data.source)
    classes = sorted(set(data.labels))
    phase(
        "load",
        f"{len(data.meta)} labelled images, {len(classes)} classes, {data.X.shape[1]} dims "
        f"(taps {','.join(data.taps)})" + (f"; test file: {len(test_data.meta)} images" if test_data else ""),
    )

    splits = _split(data, test_data, classes, config)
    parts = _arrays(data, test_data, splits, classes)
    counts = {name: _class_counts(parts[name].labels, classes) for name in SPLIT_NAMES}
    phase("split", " / ".join(f"{name} {len(parts[name].labels)}" for name in SPLIT_NAMES) + f" (seed {config.seed})")

    results: dict[str, ModelResult] = {}
    for key in config.models:
        results[key] = _fit_family(get_family(key), parts, classes, data, config, phase)

    best = max(config.models, key=lambda m: (results[m].val_macro_f1, -config.models.index(m)))

    staging = staging_folder(run_dir)
    try:
        if config.shap:
            from cellclf.explain import explain

            shap_records = {}
            for family, result in results.items():
                shap_records[family] = explain(
                    get_family(family), result.predictor.model, parts["test"].X, classes, data.feature_names,
                    staging / "shap", max_rows=config.shap_max_rows, seed=config.seed, n_jobs=config.n_jobs,
                )
                result.shap = shap_records[family]
                phase(
                    f"shap {family}",
                    f"{shap_records[family]['rows_explained']} of {shap_records[family]['test_rows']} test rows, "
                    f"additivity error {shap_records[family]['max_additivity_error']:.1e}",
                )
            _write_json(staging / "shap" / "summary.json", shap_records)
        metrics = _metrics_document(data, test_data, classes, counts, config, results, best, run_dir)
        _write_run(staging, run_dir, data, test_data, splits, parts, classes, results, best, metrics)
        install_folder(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    phase("write", f"{run_dir} (best: {best})")
    result = FitResult(run_dir, best, results, metrics)
    if on_complete is not None:
        on_complete(result)
    return result


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ClassifierInputError(f"{run_dir} is a file, not a folder; choose another -o")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ClassifierInputError(
            f"{run_dir} already exists and is not empty; choose another -o or pass --overwrite"
        )


def _split(
    data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, classes: list[str], config: FitConfig
) -> np.ndarray:
    """Split name per row of ``data`` (the test rows come from ``test_data`` when given)."""
    unique_labels = group_labels(data.meta).to_numpy()
    if test_data is None:
        train_fraction = 1.0 - config.val_fraction - config.test_fraction
        held_out = 2
        test_fraction = config.test_fraction
    else:
        unknown = sorted(set(test_data.labels) - set(classes))
        if unknown:
            raise ClassifierInputError(
                f"the test set {test_data.source} has classes the training input lacks: "
                f"{', '.join(unknown)}; add training images of them or remove them from the test set"
            )
        train_fraction = 1.0 - config.val_fraction / (1.0 - DEFAULT_TEST_FRACTION)
        held_out = 1
        test_fraction = 0.0
    check_classes(unique_labels, cv=config.cv, train_fraction=train_fraction, held_out_splits=held_out)
    splits = split_rows(data.meta, seed=config.seed, val_fraction=config.val_fraction, test_fraction=test_fraction)
    check_training_split(data.meta, splits, config.cv)
    return splits


def _arrays(
    data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, splits: np.ndarray, classes: list[str]
) -> dict[str, SplitData]:
    """The rows of each split (the test rows come from ``test_data`` when given)."""
    code = {name: i for i, name in enumerate(classes)}
    parts = {}
    for name in SPLIT_NAMES:
        if name == "test" and test_data is not None:
            X, labels, meta = test_data.X, test_data.labels, test_data.meta
        else:
            rows = np.flatnonzero(splits == name)
            X, labels, meta = data.X[rows], data.labels[rows], data.meta.iloc[rows].reset_index(drop=True)
        parts[name] = SplitData(X, np.array([code[v] for v in labels], dtype=np.int64), labels, meta)
    return parts


def _fit_family(
    family: ModelFamily, parts: dict[str, SplitData], classes: list[str], data: LabelledEmbeddings,
    config: FitConfig, phase: _PhaseLog,
) -> ModelResult:
    """Tune on train (+ validation), score on validation, refit on train + validation, test."""
    from cellclf.metrics import evaluate

    train, val, test = parts["train"], parts["validation"], parts["test"]
    options = config.options[family.key]
    start = time.perf_counter()
    tuning = family.tune(train, val, options, cv=config.cv, seed=config.seed, n_jobs=config.n_jobs)
    params = tuning.best_params
    phase(
        f"tune {family.key}",
        f"{len(tuning.trials)} settings, best {_params_text(params)}, {family.selection} {tuning.best_trial.score:.4f}",
    )
    val_f1 = family.validation_score(tuning, train, val, options, seed=config.seed, n_jobs=config.n_jobs)
    model = family.refit(
        np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y]), params, options,
        seed=config.seed, n_jobs=config.n_jobs,
    )
    fit_seconds = time.perf_counter() - start
    summary = {"family": family.key, "params": params, "val_macro_f1": float(val_f1), "seed": config.seed}
    predictor = Predictor(model, classes, data.spec, data.taps, family=family.key, summary=summary)
    proba = predictor.predict_proba(test.X)
    overall, per_class, confusion = evaluate(test.labels, proba, classes)
    phase(
        f"refit+test {family.key}",
        f"val macro-F1 {val_f1:.4f}; test accuracy {overall['accuracy']:.4f}, macro-F1 {overall['macro_f1']:.4f}",
    )
    predictor.summary.update(
        {
            "test": overall,
            "counts": {name: _class_counts(parts[name].labels, classes) for name in SPLIT_NAMES},
            "trained_on": "train + validation",
            "input": data.source,
        }
    )
    return ModelResult(family.key, tuning, params, float(val_f1), fit_seconds, overall, per_class, confusion, proba, predictor)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _class_counts(labels: Sequence[str], classes: list[str]) -> dict[str, int]:
    values = pd.Series(np.asarray(labels, dtype=object)).value_counts()
    return {name: int(values.get(name, 0)) for name in classes}


def _metrics_document(
    data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, classes: list[str],
    counts: dict, config: FitConfig, results: dict[str, ModelResult], best: str, run_dir: Path,
) -> dict[str, Any]:
    models = {}
    for family, result in results.items():
        models[family] = {
            "name": get_family(family).title,
            "params": result.params,
            "val_macro_f1": result.val_macro_f1,
            "fit_seconds": round(result.fit_seconds, 3),
            "tuning_seconds": round(result.tuning.seconds, 3),
            "trials": len(result.tuning.trials),
            "selection": get_family(family).selection,
            "test": result.test_metrics,
            "test_per_class": result.per_class.set_index("class").to_dict(orient="index"),
            "model_file": f"models/{family}.joblib",
            "shap": result.shap,
        }
    duplicates = int(data.meta["sha256"].duplicated(keep=False).sum())
    return _json_safe(
        {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(run_dir),
            "best_model": best,
            "best_by": "validation macro-F1",
            "data": {
                "input": str(data.source),
                "test_input": None if test_data is None else str(test_data.source),
                "split": "70/15/15 stratified" if test_data is None else "train/validation from input, test from test_input",
                "classes": classes,
                "counts": counts,
                "total": {name: int(sum(c.values())) for name, c in counts.items()},
                "unlabelled_rows_ignored": data.n_unlabelled + (test_data.n_unlabelled if test_data else 0),
                "rows_with_duplicate_images": duplicates,
                "taps": list(data.taps),
                "n_features": int(data.X.shape[1]),
                "spec": data.spec.to_dict(),
            },
            "config": config.to_dict(),
            "versions": library_versions(),
            "models": models,
        }
    )


def _write_run(
    staging: Path, run_dir: Path, data: LabelledEmbeddings, test_data: LabelledEmbeddings | None,
    splits: np.ndarray, parts: dict, classes: list[str], results: dict[str, ModelResult], best: str,
    metrics: dict[str, Any],
) -> None:
    metas, split_columns = [data.meta], [splits]
    if test_data is not None:
        metas.append(test_data.meta)
        split_columns.append(np.full(len(test_data.meta), "test", dtype=object))
    split_table(metas, split_columns).to_csv(staging / "split.csv", index=False)
    tuning_table([r.tuning for r in results.values()]).to_csv(staging / "tuning.csv", index=False)
    pd.concat([r.per_class.assign(model=f) for f, r in results.items()], ignore_index=True).pipe(
        _model_first
    ).to_csv(staging / "per_class.csv", index=False)
    pd.concat([r.confusion.assign(model=f) for f, r in results.items()], ignore_index=True).pipe(
        _model_first
    ).to_csv(staging / "confusion_matrix.csv", index=False)
    test_meta = parts["test"].meta
    frames = []
    for family, result in results.items():
        frame = pd.DataFrame(
            {
                "model": family,
                "path": test_meta["path"].to_numpy(),
                "sha256": test_meta["sha256"].to_numpy(),
                "label": parts["test"].labels,
                "predicted": np.asarray(classes, dtype=object)[result.test_proba.argmax(axis=1)],
            }
        )
        for k, name in enumerate(classes):
            frame[f"proba_{name}"] = result.test_proba[:, k]
        frames.append(frame)
    pd.concat(frames, ignore_index=True).to_csv(staging / "predictions_test.csv", index=False)
    _write_json(staging / "metrics.json", metrics)
    (staging / "models").mkdir(exist_ok=True)
    for family, result in results.items():
        result.predictor.summary["run_dir"] = str(run_dir)
        result.predictor.save(staging / "models" / f"{family}.joblib")
    results[best].predictor.save(staging / "model.joblib")  # last: the run is complete


def _model_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["model"] + [c for c in frame.columns if c != "model"]]


def _write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(document), indent=2, sort_keys=False) + "\n")


def _json_safe(value: Any) -> Any:
    """NaN -> null and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
