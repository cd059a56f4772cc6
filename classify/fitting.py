"""``cellclf fit``: split, tune, refit, evaluate, explain, and write RUN_DIR.

Every model family of :mod:`cellclf.families` named in ``FitConfig.models`` is tuned on the
training split, scored on the validation split, refitted on both, tested once on the test
split, explained with SHAP and plotted; the one with the best validation macro-F1 is the
run's model.joblib. The RUN_DIR layout, its records and the atomic write are in
:mod:`cellclf.rundir`. The trained run is rendered and kept (:mod:`cellclf.checkpoint`)
before RUN_DIR is written, so a full disk or Ctrl-C there costs no training: the same
command writes it.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from cellembed.shared.atomic import output_lock
from cellembed.shared.plotting import png_bytes
from cellclf.calibration import DEFAULT_ALPHA, Calibration, calibration_facts, check_alpha
from cellclf.defaults import DEFAULT_SHAP_ROWS
from cellclf.data import LabelledEmbeddings, SplitData, check_same_spec, load_labelled
from cellclf.errors import ClassifierInputError, first_few
from cellclf.metrics import FEW_IMAGES, few_images
from cellclf.near_duplicates import METHODS as NEAR_DUPLICATE_METHODS, augmented_warning, describe, near_duplicate_groups
from cellclf.novelty import DEFAULT_NOVELTY_LEVEL, NoveltyDetector, novelty_facts
from cellclf.families import ModelFamily, families, get_family
from cellclf.estimator import CellClassifier, feature_reference, library_versions
from cellclf.persistence import load_classifier, safe_path
from cellclf.rundir import (
    check_run_dir,
    check_writable,
    model_file,
    read_gallery,
    read_run,
    render_run,
    write_files,
    BEST_MODEL,
    LABEL_ISSUES,
    DataFacts,
    ModelRecord,
    RunRecord,
    json_safe,
    predictions_table,
    tuning_plot_file,
    tuning_table,
)
from cellclf.split import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    SPLIT_NAMES,
    check_classes,
    check_fraction_ranges,
    check_no_leak,
    check_training_split,
    group_labels,
    split_rows,
    split_table,
)
from cellclf.tuning import TuningResult, showing_progress

#: Largest seed: scikit-learn and XGBoost take seeds from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Resolution of the tuning plots (sized in inches for ~1 px per CSS px in the report).
TUNING_PLOT_DPI = 80


def _registered_keys() -> tuple[str, ...]:
    return tuple(family.key for family in families())


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit (the ``cellclf fit`` options).

    Build one with ``build``, which takes the family settings as ``<key>_<name>``
    keywords, e.g. ``FitConfig.build(cv=3, lr_Cs=(0.1, 1.0), xgb_trials=2)``. Every value
    is checked when the object is made (``ClassifierInputError`` names the bad one).

    Parameters
    ----------
    models : tuple of str, default every registered family
        Keys of the model families to fit (``"lr"``, ``"xgb"``).
    seed : int, default 0
        Seed of the split, the CV folds and the models (0 to 4294967295).
    cv : int, default 5
        Cross-validation folds of the tuning (at least 2).
    taps : tuple of str, optional
        The embedding layers to train on; None: all of the embedding's taps.
    shap : bool, default True
        Compute the SHAP values of each model on the test images.
    heatmaps : bool, default True
        Draw heat maps of the report's gallery images (``cellclf.gallery_maps``; needs
        the images and the network's weights).
    shap_max_rows : int, default 1000
        Most test images explained per model (a seeded subsample beyond).
    n_jobs : int, default 2
        CPU cores to use.
    val_fraction, test_fraction : float, default 0.15 and 0.15
        Shares of the labelled images held out for validation and test (each in (0, 1),
        together less than 1). With a separate test file no test split is made;
        validation then takes ``val_fraction / (1 - test_fraction)`` of the input, the
        train:validation ratio of the three-way split.
    alpha : float, default 0.05
        Miscoverage level of the saved models' conformal prediction sets: each set holds
        the true class with probability >= 1 - alpha (``cellclf.calibration``).
    near_duplicates : {"embeddings", "images", "both", "off"}, default "embeddings"
        How copies of one cell are found, to keep them in one split and one fold.
    label_audit : bool, default True
        Look for likely label errors (``cellclf.label_audit``, label_issues.csv).
    options : mapping of str to mapping, optional
        Per family key, the values of its ``FamilyOption`` settings; missing ones get
        their defaults and every value is checked, so after construction it holds every
        registered family's complete settings.
    """

    models: tuple[str, ...] = field(default_factory=_registered_keys)
    seed: int = 0
    cv: int = 5
    taps: tuple[str, ...] | None = None
    shap: bool = True
    heatmaps: bool = True
    shap_max_rows: int = DEFAULT_SHAP_ROWS
    n_jobs: int = 2
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    alpha: float = DEFAULT_ALPHA
    near_duplicates: str = "embeddings"
    label_audit: bool = True
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        known = _registered_keys()
        unknown = [m for m in self.models if m not in known]
        if unknown or not self.models:
            raise ClassifierInputError(f"unknown model {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
        if self.cv < 2:
            raise ClassifierInputError(f"--cv must be at least 2, got {self.cv}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ClassifierInputError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        check_fraction_ranges(self.val_fraction, self.test_fraction)  # the sum is checked with the data
        if self.near_duplicates not in NEAR_DUPLICATE_METHODS:
            raise ClassifierInputError(f"--near-duplicates must be one of {', '.join(NEAR_DUPLICATE_METHODS)}, "
                                       f"got {self.near_duplicates!r}")
        try:
            check_alpha(self.alpha)
        except ValueError as exc:
            raise ClassifierInputError(str(exc)) from None
        strange = sorted(set(self.options) - set(known))
        if strange:
            raise ClassifierInputError(f"options for unknown model {', '.join(strange)}; choose from {', '.join(known)}")
        object.__setattr__(self, "options", {family.key: _family_values(family, self.options.get(family.key, {}))
                                             for family in families()})

    @classmethod
    def build(cls, **settings: Any) -> "FitConfig":
        """A FitConfig from shared settings and ``<family key>_<option name>`` keywords.

        Parameters
        ----------
        **settings
            The shared settings by name (``cv=3``) and each family's options as
            ``<family key>_<option name>`` (``lr_Cs=(0.1, 1.0)``, ``xgb_trials=2``).

        Returns
        -------
        FitConfig
            The checked settings.

        Raises
        ------
        TypeError
            A keyword that is neither a shared setting nor a family option.
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
        """The settings as metrics.json records them.

        Returns
        -------
        dict
            JSON values: the shared settings and the families' as ``<key>_<name>``.
        """
        document = {"models": list(self.models), "seed": self.seed, "cv": self.cv}
        for key, values in self.options.items():
            document.update({f"{key}_{name}": value for name, value in values.items()})
        document.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in document and f.name != "options"})
        return json_safe(document)


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
class FitResult:
    """What :func:`fit` produced: the run's record (also in ``run_dir``) and the fitted models."""

    run_dir: Path
    record: RunRecord = field(repr=False)
    predictors: dict[str, CellClassifier] = field(repr=False)

    @property
    def best(self) -> str:
        """Key of the model saved as model.skops and model.joblib."""
        return self.record.best_model

    def table(self) -> str:
        """A small text table of validation and test scores per model."""
        width = max(6, *(len(m.key) + 1 for m in self.record.models))
        lines = [f"{'model':<{width}} {'val macro-F1':>12} {'test accuracy (95% CI)':>24} "
                 f"{'test macro-F1 (95% CI)':>24} {'fit s':>7}"]
        for model in self.record.models:
            star = "*" if model.best else " "
            lines.append(
                f"{model.key + star:<{width}} {model.val_macro_f1:>12.4f} {_with_ci(model.overall, 'accuracy'):>24} "
                f"{_with_ci(model.overall, 'macro_f1'):>24} {model.fit_seconds:>7.1f}"
            )
        unbounded = [m.key for m in self.record.models
                     if m.overall.get("macro_f1_ci") is None and m.overall.get("accuracy") == 1.0]
        if unbounded:
            lines.append(f"{', '.join(unbounded)}: no macro-F1 interval: no test mistake to resample (the "
                         "accuracy's interval shows the uncertainty)")
        few = {m.key: few_images(m.per_class) for m in self.record.models}
        for key, listed in few.items():
            if listed:
                lines.append(f"{key}: fewer than {FEW_IMAGES} test images of {first_few(listed)}: too few to judge those classes")
        lines.append(
            f"* best validation macro-F1, saved as {safe_path(self.run_dir / BEST_MODEL)} "
            f"(and {BEST_MODEL}, a pickle; see cellclf predict --help)"
        )
        return "\n".join(lines)


def _with_ci(overall: Mapping[str, Any], key: str) -> str:
    interval = overall.get(f"{key}_ci")
    return f"{overall[key]:.4f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


class _PhaseLog:
    """Prints one line per phase with its wall time; :meth:`bars` shows the progress of
    the searches inside a phase (when there is a log to print to)."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log or (lambda message: None)
        self.shown = log is not None
        self.start = time.perf_counter()
        self.caught: list[warnings.WarningMessage] | None = None
        self.said: set[tuple[str, str]] = set()

    @contextmanager
    def warnings_as_lines(self) -> Iterator[None]:
        """Inside, each distinct warning of the libraries (or of the fit itself) becomes one
        line after the phase line that follows it, instead of a multi-line report on stderr;
        without a log, warnings go their usual way."""
        if not self.shown:
            yield
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            self.caught = caught
            try:
                yield
            finally:
                self.flush()
                self.caught = None

    def flush(self) -> None:
        """Say the warnings caught since the last phase line, each distinct one once."""
        for caught in self.caught or ():
            key = (caught.category.__name__, " ".join(str(caught.message).split()))
            if key not in self.said:
                self.said.add(key)
                self.log(f"{'warning':<18} {'':>7}   {key[0]}: {key[1]}")
        if self.caught:
            self.caught.clear()

    def bars(self, phase: str) -> Any:
        """A context showing each search run inside it as a bar on stderr named ``phase``
        (steps done / total, rate, ETA)."""
        import contextlib
        import sys

        if not self.shown:
            return contextlib.nullcontext()
        from tqdm import tqdm

        return showing_progress(lambda total, unit: tqdm(
            total=total, unit=unit, desc=phase, file=sys.stderr, leave=False, dynamic_ncols=True, smoothing=0.1,
        ))

    def __call__(self, phase: str, message: str) -> None:
        now = time.perf_counter()
        self.log(f"{phase:<18} {now - self.start:7.1f}s  {message}")
        self.flush()
        self.start = now


def fit(
    embeddings: str | Path,
    run_dir: str | Path,
    *,
    test: str | Path | None = None,
    config: FitConfig | None = None,
    labels: str | Path | None = None,
    overwrite: bool = False,
    weights: Any = None,
    log: Callable[[str], None] | None = None,
    on_complete: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """Fit, evaluate and explain the configured models on a cellembed embeddings file.

    The labelled images are split (copies of one cell kept together), each family is
    tuned, calibrated, refitted and tested once, explained (SHAP), the labels audited,
    and everything is written to ``run_dir`` (its layout: ``cellclf.rundir``).

    Parameters
    ----------
    embeddings : str or Path
        Parquet file from ``cellembed extract``; its labelled rows are used.
    run_dir : str or Path
        Output folder; must not exist or be empty unless ``overwrite``.
    test : str or Path, optional
        A separate embeddings file used as the test set (then the input is split into
        train / validation only).
    config : FitConfig, optional
        Tuning budget, seed, models, taps... (default: ``FitConfig()``).
    labels : str or Path, optional
        A corrections file (``cellclf.corrections``: the served review's, or a run's
        label_issues.csv) whose labels override or add to those of the embeddings files,
        by SHA-256; its cells not in ``embeddings`` or ``test`` are taken from the
        embeddings files its rows name.
    overwrite : bool, default False
        Replace a non-empty ``run_dir``.
    weights : str or PathLike, optional
        The network's weights file, for the heat maps of the gallery images (None:
        ``$CELLEMBED_WEIGHTS``); when they cannot be made, the run says why.
    log : callable, optional
        Called with one line per phase (e.g. ``click.echo``).
    on_complete : callable, optional
        Called with the FitResult once RUN_DIR is in place (e.g. to write a report).

    Returns
    -------
    FitResult
        The run folder, its record (``RunRecord``, also written there) and the fitted
        classifiers by family key.

    Raises
    ------
    ClassifierInputError
        Bad input (a one-line message), among them ``run_dir`` unwritable (checked before
        any work); a ``cellembed.InputError`` subclass.
    cellembed.errors.OutputBusy
        Another run is writing ``run_dir`` now (its lock, ``.NAME.lock`` next to it, is
        held for the whole run).
    """
    from cellclf.corrections import read_corrections

    run_dir = Path(run_dir)
    config = config if config is not None else FitConfig()
    corrections = (str(labels), read_corrections(labels)) if labels is not None else None
    check_writable(run_dir)
    with output_lock(run_dir):
        check_run_dir(run_dir, overwrite)  # under the lock: a run that just finished counts
        phase = _PhaseLog(log)
        with phase.warnings_as_lines():
            return _fit(embeddings, run_dir, test, config, phase, on_complete, weights, corrections)


def _fit(
    embeddings: str | Path, run_dir: Path, test: str | Path | None, config: FitConfig,
    phase: _PhaseLog, on_complete: Callable[[FitResult], None] | None, weights: Any = None,
    corrections: tuple[str, pd.DataFrame] | None = None,
) -> FitResult:
    from cellclf import checkpoint
    from cellclf.corrections import digest

    settings = {**config.to_dict(), "labels": digest(corrections[0]) if corrections else None}
    kept = checkpoint.checkpoint_path(run_dir, embeddings, test, settings, library_versions())
    files = checkpoint.load(kept)
    if files is not None:
        phase("resume", f"the run an earlier run of this command trained, tested and kept in {kept}")
        run, predictors = None, {}
    else:
        run, predictors = _train(embeddings, test, config, phase, corrections)
        run.run_dir = run_dir
        for predictor in predictors.values():
            predictor.summary["run_dir"] = str(run_dir)
        files = render_run(run, predictors)
        checkpoint.save(kept, files, lambda line: phase("checkpoint", line))
    keep_note = f" (the trained models are kept in {kept}: it will only write the run)" if kept.is_dir() else ""
    try:
        write_files(files, run_dir, keep_note)
    except KeyboardInterrupt:
        from cellembed.errors import Interrupted

        raise Interrupted(f"interrupted; nothing was written to {run_dir}"
                          + (f": run the same command again to finish{keep_note}" if keep_note else "")) from None
    checkpoint.discard(kept)  # the run holds them now
    if run is None:  # resumed: the record and the models as written (the models from their safe files)
        run = read_run(run_dir)
        predictors = {model.key: load_classifier(run_dir / model_file(model.key)) for model in run.models}
    best = run.best
    phase("write", f"{run_dir} (best: {best.key})")
    drawn = _gallery_maps(run_dir, predictors[best.key], best.predictions, test or embeddings, config, weights, phase)
    run.gallery = read_gallery(run_dir)
    result = FitResult(run_dir, run, predictors)
    if on_complete is not None:
        on_complete(result)
    if not drawn:
        from cellembed.errors import Interrupted

        raise Interrupted(
            f"interrupted while drawing the heat maps; the run in {run_dir} is complete, its report "
            "shows the mistakes without them"
        )
    return result


@dataclass
class _Loaded:
    """Step 1 of a fit: the labelled embeddings (and the separate test file's), their classes."""

    data: LabelledEmbeddings
    test_data: LabelledEmbeddings | None
    classes: list[str]
    relabelling: Any = None  # cellclf.corrections.Relabelling, with --labels


@dataclass
class _Split:
    """Step 2: the split name of each input row, the rows of each split, and the
    near-duplicate grouping the split kept whole (:meth:`Grouping.facts`)."""

    splits: np.ndarray
    parts: dict[str, SplitData]
    counts: dict[str, dict[str, int]]
    grouping: dict[str, Any]


def _train(
    embeddings: str | Path, test: str | Path | None, config: FitConfig, phase: "_PhaseLog",
    corrections: tuple[str, pd.DataFrame] | None = None,
) -> tuple[RunRecord, dict[str, CellClassifier]]:
    """Load, split, fit every configured family (tune, calibrate, refit, test), explain, audit
    the labels: the run's record (without its folder) and the fitted classifiers."""
    loaded = _load(embeddings, test, config, phase, corrections)
    split = _split(loaded, config, phase)
    novelty = _novelty(split.parts, phase)
    models: list[ModelRecord] = []
    predictors: dict[str, CellClassifier] = {}
    tunings: dict[str, TuningResult] = {}
    tuned: dict[str, _Tuned] = {}
    for key in config.models:
        record, predictors[key], tuned[key] = _fit_family(get_family(key), split.parts, loaded, config, phase)
        tunings[key] = tuned[key].tuning
        predictors[key].novelty_ = novelty
        predictors[key].summary["novelty"] = novelty_facts(novelty, split.parts["test"].X)
        if record.calibration is not None:  # the report shows it beside the calibration
            record.calibration["novelty"] = predictors[key].summary["novelty"]
        models.append(record)
    best = max(models, key=lambda m: (m.val_macro_f1, -models.index(m)))
    best.best = True
    if config.shap:
        _explain(models, predictors, split.parts["test"], loaded, config, phase)
    issues, audit_facts = _label_audit(split.parts, tuned, predictors, best.key, loaded.classes, config, phase)
    data_facts = _data_facts(loaded.data, loaded.test_data, loaded.classes, split.counts, config, split.grouping)
    data_facts.labels = loaded.relabelling.facts() if loaded.relabelling is not None else None
    data_facts.label_audit = audit_facts
    return RunRecord(
        run_dir=Path(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data=data_facts,
        config=config.to_dict(),
        versions=library_versions(),
        models=models,
        best_model=best.key,
        split=_split_table(loaded.data, loaded.test_data, split.splits),
        tuning=tuning_table(list(tunings.values())),
        label_issues=issues,
    ), predictors


def _label_audit(parts: dict[str, SplitData], tuned: Mapping[str, "_Tuned"], predictors: Mapping[str, CellClassifier],
                 best: str, classes: list[str], config: FitConfig, phase: _PhaseLog) -> tuple[Any, dict[str, Any] | None]:
    """Step 5: the label audit (:mod:`cellclf.label_audit`) on every labelled image, with the
    out-of-sample probabilities of the best model's family when its search cross-validates,
    else of the first that does; (issues, facts), or (None, facts saying why not)."""
    from cellclf import label_audit

    if not config.label_audit:
        return None, None
    keys = sorted(tuned, key=lambda key: key != best)
    key = next((k for k in keys if tuned[k].tuning.oof_proba is not None), None)
    if key is None:
        facts = {"skipped": f"no model of this fit ({', '.join(tuned)}) cross-validates its settings: add lr to --models"}
        phase("label audit", label_audit.describe(facts))
        return None, facts
    train, val, test = parts["train"], parts["validation"], parts["test"]
    proba = np.concatenate([tuned[key].tuning.oof_proba, tuned[key].val_proba,
                            predictors[key].predict_proba(test.X, calibrated=False)])
    meta = pd.concat([train.meta, val.meta, test.meta], ignore_index=True)
    split = np.repeat(np.array(SPLIT_NAMES, dtype=object), [len(train.y), len(val.y), len(test.y)])
    evidence = (f"{key}: training images out-of-fold ({config.cv}-fold CV of the selected setting), validation "
                "images by the model fitted on the training images, test images by the refitted model")
    issues, facts = label_audit.audit(meta, np.concatenate([train.y, val.y, test.y]), proba, classes, split, evidence,
                                      n_jobs=config.n_jobs)
    phase("label audit", label_audit.describe(facts) + (f"; see {LABEL_ISSUES}" if len(issues) else ""))
    from cellclf.rundir.reader import as_read

    return as_read(issues), facts


def _load(embeddings: str | Path, test: str | Path | None, config: FitConfig, phase: "_PhaseLog",
          corrections: tuple[str, pd.DataFrame] | None = None) -> _Loaded:
    from cellclf.corrections import Relabelling

    relabelling = Relabelling(corrections[0]) if corrections else None
    fixes = corrections[1] if corrections else None
    test_data = load_labelled(test, config.taps, fixes, relabelling) if test is not None else None
    data = load_labelled(embeddings, config.taps, fixes, relabelling, add_corrected=fixes is not None)
    if relabelling is not None:
        phase("labels", relabelling.text())
    if test_data is not None:
        check_same_spec(data, test_data)
        check_no_leak(data.meta, test_data.meta, data.source, test_data.source)
    classes = sorted(set(data.labels))
    phase(
        "load",
        f"{len(data.meta)} labelled images, {len(classes)} classes, {data.X.shape[1]} dims "
        f"(taps {','.join(data.taps)})" + (f"; test file: {len(test_data.meta)} images" if test_data else ""),
    )
    return _Loaded(data, test_data, classes, relabelling)


def _split(loaded: _Loaded, config: FitConfig, phase: "_PhaseLog") -> _Split:
    grouping = _group(loaded.data, config, phase)
    try:
        splits = _split_rows(loaded.data, loaded.test_data, loaded.classes, config)
    except ClassifierInputError as exc:
        if "group" not in loaded.data.meta or grouping["groups"] == grouping["distinct_images"]:
            raise
        loaded.data.meta = loaded.data.meta.drop(columns="group")  # identical files only; its error stands
        splits = _split_rows(loaded.data, loaded.test_data, loaded.classes, config)
        unused = (f"the {grouping['groups']} groups of near-duplicates are too few to split ({exc}); the split keeps "
                  "only identical files together instead, so validation and test may hold copies of training cells "
                  "and flatter the model")
        grouping.update(unused=unused, description=f"{grouping['description']}; NOT USED: {unused}",
                        warning=unused if not grouping.get("warning") else f"{grouping['warning']}. Also, {unused}")
        phase("warning", unused)
    parts = _arrays(loaded.data, loaded.test_data, splits, loaded.classes)
    counts = {name: _class_counts(parts[name].labels, loaded.classes) for name in SPLIT_NAMES}
    phase("split", " / ".join(f"{name} {len(parts[name].labels)}" for name in SPLIT_NAMES) + f" (seed {config.seed})")
    return _Split(splits, parts, counts, grouping)


def _group(data: LabelledEmbeddings, config: FitConfig, phase: "_PhaseLog") -> dict[str, Any]:
    """Near-duplicate groups of the input (:mod:`cellclf.near_duplicates`), added to its rows
    as the ``group`` column the split and the CV folds keep whole; their facts."""
    from cellembed import read_images_root

    root = read_images_root(data.source) if config.near_duplicates in ("images", "both") else None
    grouping = near_duplicate_groups(data.X, data.meta, config.near_duplicates, root)
    data.meta = data.meta.assign(group=grouping.groups)
    facts = grouping.facts(distinct=data.meta["sha256"].nunique())
    facts.update(description=describe(facts), warning=augmented_warning(facts))
    phase("groups", facts["description"])
    if facts["warning"]:
        phase("warning", facts["warning"])
    return facts


def _novelty(parts: dict[str, SplitData], phase: "_PhaseLog") -> NoveltyDetector:
    """The drift signal's reference: fitted on the training split, calibrated on the
    validation split (:mod:`cellclf.novelty`), shared by every family's classifier."""
    detector = NoveltyDetector().fit(parts["train"].X).calibrate(parts["validation"].X)
    facts = novelty_facts(detector, parts["test"].X)
    message = (f"{facts['components']} directions of the training images, {facts['calibration_images']} validation "
               f"scores; test cells unlike them at p < {DEFAULT_NOVELTY_LEVEL:g}: {facts['test_flagged']:.1%}")
    if facts["smallest_p"] >= DEFAULT_NOVELTY_LEVEL:
        message += (f" (with {facts['calibration_images']} validation images the smallest p-value is "
                    f"{facts['smallest_p']:.2g}: no cell can be flagged at {DEFAULT_NOVELTY_LEVEL:g}; give more images)")
    phase("drift reference", message)
    return detector


def _explain(models: list[ModelRecord], predictors: dict[str, CellClassifier], test: SplitData, loaded: _Loaded,
             config: FitConfig, phase: "_PhaseLog") -> None:
    """The last step of each family: SHAP values of its test predictions, in its record."""
    from cellclf.shap_values import explain

    for record in models:
        record.shap = explain(
            get_family(record.key), predictors[record.key].model, test.X, loaded.classes, loaded.data.feature_names,
            max_rows=config.shap_max_rows, seed=config.seed, n_jobs=config.n_jobs, y=test.y,
        )
        facts = record.shap.facts
        phase(
            f"shap {record.key}",
            f"{facts['rows_explained']} of {facts['test_rows']} test rows, "
            f"additivity error {facts['max_additivity_error']:.1e}",
        )


def _gallery_maps(run_dir: Path, predictor: CellClassifier, predictions: Any, source: str | Path, config: FitConfig,
                  weights: Any, phase: Callable[[str, str], None]) -> bool:
    """Heat maps of the gallery images, after the run is written: whatever happens here,
    the run stays complete and records why it has no maps. Returns False when Ctrl-C
    stopped the drawing (the caller still writes the report, then stops)."""
    import os

    from cellclf.gallery_maps import write_gallery_maps, write_unavailable
    from cellembed import read_images_root
    from cellembed.backbones import backbone_for_spec
    from cellembed.weights import remembered_weights

    def without(reason: str) -> None:
        try:
            write_unavailable(run_dir, reason)
        except OSError as exc:  # a full disk: the run is complete and its report says no maps
            reason += f" (and the note saying so could not be written: {' '.join(str(exc).split())})"
        phase("heat maps", f"none: {reason}")

    if not config.heatmaps:
        write_unavailable(run_dir, "the run was fitted with --no-heatmaps")
        return True
    try:
        root = read_images_root(source)
    except Exception as exc:  # noqa: BLE001 - an old or foreign file: the run is complete regardless
        without(f"the images folder could not be read from {source} ({exc})")
        return True
    if root is None or not root.is_dir():
        without(f"the images folder of {source} is not recorded or not here ({root})")
        return True
    if weights is None:  # the environment's or remembered weights, never a download behind the user's back
        try:
            backbone = backbone_for_spec(predictor.spec)
        except Exception as exc:  # noqa: BLE001
            without(f"the network of the embeddings is not known here ({exc})")
            return True
        if not os.environ.get(backbone.weights_env) and remembered_weights(backbone) is None:
            without(f"no weights file was given (--weights, or ${backbone.weights_env})")
            return True
    try:
        write_gallery_maps(run_dir, predictor, predictions, root, weights=weights, n_jobs=config.n_jobs,
                           log=lambda line: phase("heat maps", line))
    except KeyboardInterrupt:
        write_unavailable(run_dir, "drawing them was interrupted")
        return False
    except Exception as exc:  # noqa: BLE001 - the fitted run must not be lost to a drawing failure
        without(f"they could not be drawn ({type(exc).__name__}: {exc})")
    return True


def _split_rows(
    data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, classes: list[str], config: FitConfig
) -> np.ndarray:
    """Split name per row of ``data`` (the test rows come from ``test_data`` when given)."""
    unique_labels = group_labels(data.meta).to_numpy()
    if test_data is not None:
        unknown = sorted(set(test_data.labels) - set(classes))
        if unknown:
            raise ClassifierInputError(
                f"the test set {test_data.source} has classes the training input lacks: "
                f"{', '.join(unknown)}; add training images of them or remove them from the test set"
            )
    fractions = {"val_fraction": config.val_fraction, "test_fraction": config.test_fraction,
                 "separate_test": test_data is not None}
    check_classes(unique_labels, cv=config.cv, unit="groups" if "group" in data.meta else "distinct images",
                  **fractions)
    splits = split_rows(data.meta, seed=config.seed, **fractions)
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


@dataclass
class _Tuned:
    """A family tuned on the training split: its search, and its validation probabilities
    (rows renormalised) and macro-F1."""

    tuning: TuningResult
    val_proba: np.ndarray
    val_macro_f1: float


@dataclass
class _Tested:
    """A refitted family on the test split: calibrated probabilities and their scores."""

    proba: np.ndarray
    overall: dict[str, Any]
    per_class: Any
    confusion: Any
    calibration: dict[str, Any]


def _fit_family(
    family: ModelFamily, parts: dict[str, SplitData], loaded: _Loaded, config: FitConfig, phase: _PhaseLog,
) -> tuple[ModelRecord, CellClassifier, "_Tuned"]:
    """One family's steps: tune on train (+ validation), calibrate on validation, refit on
    train + validation, test; then its record."""
    start = time.perf_counter()
    tuned = _tune(family, parts, len(loaded.classes), config, phase)
    calibration = Calibration.fit(tuned.val_proba, parts["validation"].y, config.alpha)
    model, X = _refit(family, tuned, parts, config)
    fit_seconds = time.perf_counter() - start
    summary = {"family": family.key, "params": tuned.tuning.best_params, "val_macro_f1": tuned.val_macro_f1,
               "seed": config.seed}
    predictor = CellClassifier.from_fitted(model, loaded.classes, loaded.data.spec, loaded.data.taps, family=family.key,
                                           summary=summary, reference=feature_reference(X), calibration=calibration)
    tested = _test(family, predictor, tuned, parts, loaded.classes, config, phase)
    predictor.summary.update(
        {
            "test": tested.overall,
            "counts": {name: _class_counts(parts[name].labels, loaded.classes) for name in SPLIT_NAMES},
            "trained_on": "train + validation",
            "input": loaded.data.source,
        }
    )
    return _model_record(family, tuned, tested, predictor, parts["test"], loaded.classes, fit_seconds), predictor, tuned


def _tune(family: ModelFamily, parts: dict[str, SplitData], n_classes: int, config: FitConfig,
          phase: _PhaseLog) -> _Tuned:
    train, val = parts["train"], parts["validation"]
    options = config.options[family.key]
    with phase.bars(f"tune {family.key}"):
        tuning = family.tune(train, val, options, cv=config.cv, seed=config.seed, n_jobs=config.n_jobs)
    phase(
        f"tune {family.key}",
        f"{len(tuning.trials)} settings, best {_params_text(tuning.best_params)}, {family.selection} "
        f"{tuning.best_trial.score:.4f}",
    )
    val_proba = np.asarray(family.validation_proba(tuning, train, val, options, seed=config.seed, n_jobs=config.n_jobs),
                           dtype=np.float64)
    val_proba /= val_proba.sum(axis=1, keepdims=True)
    return _Tuned(tuning, val_proba, _macro_f1(val.y, val_proba.argmax(axis=1), n_classes))


def _refit(family: ModelFamily, tuned: _Tuned, parts: dict[str, SplitData], config: FitConfig) -> tuple[Any, np.ndarray]:
    """The family's model refitted on train + validation with the tuned settings, and that
    matrix (whose statistics the classifier records)."""
    train, val = parts["train"], parts["validation"]
    X, y = np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y])
    model = family.refit(X, y, tuned.tuning.best_params, config.options[family.key], seed=config.seed,
                         n_jobs=config.n_jobs)
    return model, X


def _test(family: ModelFamily, predictor: CellClassifier, tuned: _Tuned, parts: dict[str, SplitData],
          classes: list[str], config: FitConfig, phase: _PhaseLog) -> _Tested:
    from cellclf.metrics import accuracy_text, evaluate

    val, test = parts["validation"], parts["test"]
    calibration = predictor.calibration
    raw_test = predictor.predict_proba(test.X, calibrated=False)
    proba = calibration.apply(raw_test)
    overall, per_class, confusion = evaluate(test.labels, proba, classes)
    calibrated = calibration_facts(calibration, tuned.val_proba, val.y, raw_test, test.y)
    covered = next(row for row in calibrated["coverage_test"] if math.isclose(row["alpha"], config.alpha))
    phase(
        f"refit+test {family.key}",
        f"val macro-F1 {tuned.val_macro_f1:.4f}; test {accuracy_text(overall)}, macro-F1 {overall['macro_f1']:.4f}",
    )
    too_few = ""
    if calibration.threshold >= 1.0:  # (n + 1)(1 - alpha) > n: no finite threshold has the guarantee
        too_few = (f" (only {calibration.n} validation images: sets at alpha {config.alpha:g} need at least "
                   f"{math.ceil(1 / config.alpha) - 1}, so every class is in every set and every cell is uncertain; "
                   "give more images, a larger --val-fraction or a larger --alpha)")
    phase(
        f"calibrate {family.key}",
        f"temperature {calibration.temperature:.3f}: test ECE {calibrated['test']['ece_before']:.4f} -> "
        f"{calibrated['test']['ece_after']:.4f}; sets at alpha {config.alpha:g}: test coverage "
        f"{covered['coverage']:.3f}, mean size {covered['mean_set_size']:.2f}{too_few}",
    )
    return _Tested(proba, overall, per_class, confusion, calibrated)


def _model_record(family: ModelFamily, tuned: _Tuned, tested: _Tested, predictor: CellClassifier, test: SplitData,
                  classes: list[str], fit_seconds: float) -> ModelRecord:
    tuning = tuned.tuning
    record = ModelRecord(
        key=family.key,
        title=family.title,
        overall=json_safe(tested.overall),
        per_class=tested.per_class,
        confusion=tested.confusion,
        predictions=predictions_table(test.meta, test.labels, tested.proba, classes,
                                      sets=predictor.calibration.sets(tested.proba)),
        params=json_safe(tuning.best_params),
        val_macro_f1=tuned.val_macro_f1,
        fit_seconds=round(fit_seconds, 3),
        tuning_seconds=round(tuning.seconds, 3),
        trials=len(tuning.trials),
        selection=family.selection,
        tuning_note=family.tuning_note(tuning),
        calibration=tested.calibration,
    )
    figure = family.tuning_plot(tuning)
    if figure is not None:
        record.tuning_plot, record.tuning_plot_file = png_bytes(figure, TUNING_PLOT_DPI), tuning_plot_file(family.key)
    return record


def _macro_f1(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, predicted, average="macro", labels=np.arange(n_classes), zero_division=0))


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _class_counts(labels: Sequence[str], classes: list[str]) -> dict[str, int]:
    values = pd.Series(np.asarray(labels, dtype=object)).value_counts()
    return {name: int(values.get(name, 0)) for name in classes}


def _data_facts(
    data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, classes: list[str],
    counts: dict[str, dict[str, int]], config: FitConfig, grouping: dict[str, Any] | None = None,
) -> DataFacts:
    val, test = config.val_fraction, config.test_fraction
    return DataFacts(
        input=str(data.source),
        test_input=None if test_data is None else str(test_data.source),
        split=f"{100 * (1 - val - test):g}/{100 * val:g}/{100 * test:g} stratified" if test_data is None
        else "train/validation from input, test from test_input",
        classes=classes,
        counts=counts,
        unlabelled_rows_ignored=data.n_unlabelled + (test_data.n_unlabelled if test_data else 0),
        rows_with_duplicate_images=int(data.meta["sha256"].duplicated(keep=False).sum()),
        grouping=grouping,
        taps=list(data.taps),
        n_features=int(data.X.shape[1]),
        spec=data.spec,
    )


def _split_table(data: LabelledEmbeddings, test_data: LabelledEmbeddings | None, splits: np.ndarray) -> pd.DataFrame:
    metas, split_columns = [data.meta], [splits]
    if test_data is not None:
        metas.append(test_data.meta)
        split_columns.append(np.full(len(test_data.meta), "test", dtype=object))
    return split_table(metas, split_columns)
