"""Adapting a fitted run to a new lab from a few labelled cells (``cellclf adapt``).

A run fitted in one lab meets another lab's microscope, stain and camera: every embedding
shifts alike, and its accuracy falls (pbc-dev -> bccd-train-sample: 47%). ``cellclf adapt
RUN_DIR NEW_LAB -o OUT`` takes the run's selected model and the embeddings of the new lab's
cells (a folder per class extracted with the run's spec; unlabelled cells of that lab may be
in the file too) and writes a new run folder whose classifier:

1. moves each cell from the new lab's per-dimension statistics onto the training images'
   (the lab's mean and spread over all its cells in the file, labelled or not, each distinct
   image once; kept in the classifier, so a single cell is classified the same alone or in
   a batch: :meth:`cellclf.estimator.LabAdapter.lab_mapped`);
2. is the run's model family refitted, with the run's selected parameters, on the run's
   training and validation images together with the new lab's labelled cells, the new lab
   weighted (``target_weight``: the share of the total weight its cells carry, by repeating
   them) so a few cells count;
3. is calibrated (temperature, conformal sets) on held-out labelled cells of the new lab
   when every class has enough of them (whole near-duplicate groups are held out, so a
   cell's copies are never on both sides); otherwise it keeps the run's calibration, and
   the coverage of its sets on the new lab is not guaranteed (the command says so);
4. has the new lab as its drift reference (:mod:`cellclf.novelty`), where the file holds
   enough of its cells.

Which of the measured methods this is and why: ``bench/adapt_learning_curve.py`` and the
README's "A new lab" section.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cellclf.errors import ClassifierInputError, first_few

#: Share of the total training weight the new lab's labelled cells carry, and the most it
#: may (the cells are repeated to weigh that much: 0.8 repeats them up to 4x the run's images).
DEFAULT_TARGET_WEIGHT = 0.5
MAX_TARGET_WEIGHT = 0.8
#: Share of each class's labelled groups held out to calibrate on the new lab (at most
#: :data:`MAX_CALIBRATION_SHARE`: the refit needs most of them).
DEFAULT_CALIBRATION_SHARE = 0.3
MAX_CALIBRATION_SHARE = 0.5
#: Groups a class needs before any are held out for calibration (fewer: the run's calibration).
MIN_CALIBRATION_GROUPS = 5
#: Distinct cells of the new lab needed to make it the drift reference (fewer: the run's).
MIN_DRIFT_IMAGES = 50
#: Distinct labelled cells each class of the new lab needs.
MIN_CELLS_PER_CLASS = 2
ADAPT_RECORD = "adapt.json"
ADAPT_CELLS = "adapt_cells.csv"


@dataclass
class AdaptResult:
    """What :func:`adapt` wrote and measured.

    Attributes:
        out: the new run folder.
        record: the contents of its ``adapt.json``.
        lines: the summary lines the command prints.
    """

    out: Path
    record: dict[str, Any]
    lines: list[str] = field(default_factory=list)


@dataclass
class _NewLab:
    """The new lab's cells, restricted to the run's taps."""

    X: np.ndarray  # all rows (labelled and not), taps only
    meta: pd.DataFrame  # path, sha256, label (None: unlabelled)
    source: str
    relabelled: str | None = None  # what --labels did, in words

    @property
    def labelled(self) -> np.ndarray:
        return self.meta["label"].notna().to_numpy()


def _load_new_lab(path: str | Path, predictor: Any, labels: str | Path | None = None) -> _NewLab:
    from cellembed import embedding_matrix, load_embeddings
    from cellclf.data import BAD_VALUES, bad_rows

    frame, spec = load_embeddings(path)
    predictor.check_spec(spec)
    if labels is not None:  # a reviewer's corrections: they label (or relabel, or leave out) the lab's cells
        from cellclf import corrections as fixes
        from cellclf.data import read_with_root  # noqa: I001

        table = fixes.read_corrections(labels)
        relabelling = fixes.Relabelling(str(labels))
        frame = fixes.relabel(frame, table, relabelling)
        added = fixes.added_rows(table, relabelling, spec, read_with_root)
        frame = pd.concat([frame, *added], ignore_index=True) if added else frame
        relabelled = relabelling.text()
    else:
        relabelled = None
    X, _ = embedding_matrix(frame, spec, taps=list(predictor.used_taps))
    bad = bad_rows(X)
    if bad.any():
        raise ClassifierInputError(f"{path}: {int(bad.sum())} images have {BAD_VALUES} (e.g. "
                                   f"{frame['path'][bad].iloc[0]}); delete the file and re-run cellembed extract")
    meta = frame[["path", "sha256", "label"]].reset_index(drop=True)
    lab = _NewLab(np.ascontiguousarray(X, dtype=np.float64), meta, str(path), relabelled)
    labels = meta["label"][lab.labelled]
    if not len(labels):
        raise ClassifierInputError(f"{path}: no labelled cells; put a few cells of each class of the new lab in one "
                                   "sub-folder per class and re-run cellembed extract")
    unknown = sorted(set(labels) - set(predictor.classes))
    if unknown:
        raise ClassifierInputError(
            f"{path} has classes the model does not know: {first_few(unknown)}; the model knows "
            f"{', '.join(predictor.classes)}: rename those folders or leave them out")
    distinct = meta[lab.labelled].drop_duplicates("sha256")["label"].value_counts()
    few = distinct[distinct < MIN_CELLS_PER_CLASS]
    if len(few):
        raise ClassifierInputError(
            f"{path}: too few labelled cells: {first_few([f'{name} has {n}' for name, n in few.items()])}; each class "
            f"needs at least {MIN_CELLS_PER_CLASS} different cells: add cells of those classes")
    return lab


def _source_rows(run: Any, taps: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The run's training and validation images (its test images left out), as the run's
    classifier saw them when it was refitted: (X, class names)."""
    from cellclf.data import load_labelled

    source = Path(run.data.input)
    if not source.is_file():
        raise ClassifierInputError(
            f"the run's training embeddings {source} are not here: adapt refits on them with the new lab's cells; "
            "put the file back at that path")
    data = load_labelled(source, taps)
    used = run.split[run.split["split"].isin(["train", "validation"])]
    keep = data.meta["path"].isin(set(used["path"])).to_numpy()
    return data.X[keep].astype(np.float64), np.asarray(data.labels[keep], dtype=object)


def _hold_out(meta: pd.DataFrame, groups: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, str]:
    """(n,) bool of the labelled rows held out to calibrate on (whole groups, ``share`` of
    each class's groups), and why none are where none are."""
    held = np.zeros(len(meta), dtype=bool)
    labels = meta["label"].to_numpy(dtype=object)
    counts = {name: len(set(groups[labels == name])) for name in sorted(set(labels))}
    few = {name: n for name, n in counts.items() if n < MIN_CALIBRATION_GROUPS}
    if few or share <= 0:
        why = ("no calibration share asked" if share <= 0 else
               f"{first_few([f'{name} has {n}' for name, n in few.items()])} different cells (groups of copies), "
               f"under the {MIN_CALIBRATION_GROUPS} a class needs to hold some out")
        return held, why
    rng = np.random.default_rng(seed)
    for name in sorted(counts):
        class_groups = np.unique(groups[labels == name])
        n_held = min(len(class_groups) - 1, max(1, int(round(share * len(class_groups)))))
        chosen = rng.choice(class_groups, size=n_held, replace=False)
        held |= np.isin(groups, chosen) & (labels == name)
    return held, ""


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds files, unless ``overwrite`` and it is an adapted
    run (its adapt.json): adapt never replaces files it did not write."""
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise ClassifierInputError(f"{out} already exists and is not empty; choose another -o or pass --overwrite")
    if not (out / ADAPT_RECORD).is_file():
        raise ClassifierInputError(f"{out} is not a folder written by cellclf adapt (no {ADAPT_RECORD} in it); "
                                   "--overwrite only replaces an adapted run: choose another -o")


def _check_spread(lab_std: np.ndarray, training_std: np.ndarray, path: str | Path) -> None:
    """Refuse a new lab whose cells barely vary (copies or views of a few cells): moving
    their small spread onto the training spread would turn noise into classes (the check of
    ``predict --adapt``, :data:`cellclf.estimator.MIN_ADAPT_SPREAD`)."""
    from cellclf.estimator import MIN_ADAPT_SPREAD

    training_std = np.asarray(training_std, dtype=np.float64)
    varies = training_std > 1e-6
    relative = float(np.median(np.asarray(lab_std, np.float64)[varies] / training_std[varies])) if varies.any() else 1.0
    if relative < MIN_ADAPT_SPREAD:
        raise ClassifierInputError(
            f"{path}: the new lab's cells are nearly alike (their spread is {relative:.2f} of the training images', "
            f"under {MIN_ADAPT_SPREAD:g}): copies or views of a few cells cannot stand for a lab; add different cells")


def _statistics(X: np.ndarray, sha256: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and spread, each distinct image once."""
    from cellclf.estimator import feature_reference

    distinct = X[~sha256.duplicated().to_numpy()]
    return feature_reference(distinct.astype(np.float32))


def adapt(
    run_dir: str | Path,
    new_lab: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    target_weight: float = DEFAULT_TARGET_WEIGHT,
    calibration_share: float = DEFAULT_CALIBRATION_SHARE,
    overwrite: bool = False,
    labels: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Adapt the selected classifier of ``run_dir`` to the lab of ``new_lab`` and write it
    to the run folder ``out`` (see the module docstring). ``labels``: a corrections file
    (:mod:`cellclf.corrections`, e.g. the served review's) whose classes label, relabel or
    leave out cells of ``new_lab`` (and add its cells held in other embeddings files).

    Raises:
        ClassifierInputError: bad input (one line; nothing is written): classes the model
            does not know, fewer than two cells of a class, another embedding spec, no
            labelled cells, the run's training embeddings missing, ``out`` not empty.
    """
    from cellembed.shared.atomic import install_folder, output_lock, staging_folder
    from cellclf.calibration import Calibration, coverage
    from cellclf.estimator import MIN_ADAPT_IMAGES, CellClassifier
    from cellclf.families import get_family
    from cellclf.near_duplicates import near_duplicate_groups
    from cellclf.novelty import NoveltyDetector, novelty_facts
    from cellclf.persistence import load_classifier, save
    from cellclf.rundir import BEST_MODEL, check_writable, read_run

    say = log or (lambda line: None)
    if not 0 < target_weight <= MAX_TARGET_WEIGHT:
        raise ClassifierInputError(f"--target-weight must be above 0 and at most {MAX_TARGET_WEIGHT:g} (e.g. 0.5), "
                                   f"got {target_weight}")
    if not 0 <= calibration_share <= MAX_CALIBRATION_SHARE:
        raise ClassifierInputError(f"--calibration-share must be from 0 to {MAX_CALIBRATION_SHARE:g}, got {calibration_share}")
    run_dir, out = Path(run_dir), Path(out)
    predictor = load_classifier(run_dir)
    if predictor.reference is None:
        raise ClassifierInputError(f"{run_dir}: the model has no record of its training statistics (fitted by an "
                                   "earlier cellclf); re-run cellclf fit, then adapt")
    if predictor.lab is not None:
        raise ClassifierInputError(f"{run_dir} is already adapted to a lab; adapt the run it was made from")
    run = read_run(run_dir)
    lab = _load_new_lab(new_lab, predictor, labels)
    if lab.relabelled:
        say(f"labels: {lab.relabelled}")
    distinct_all = int(lab.meta["sha256"].nunique())
    if distinct_all < MIN_ADAPT_IMAGES:
        raise ClassifierInputError(
            f"{new_lab}: {distinct_all} different cells; adapting to a lab needs at least {MIN_ADAPT_IMAGES} of its cells "
            "(labelled or not) to measure its statistics: add cells of the new lab, unlabelled ones count too")
    check_writable(out)
    _check_out(out, overwrite)
    X_source, y_source = _source_rows(run, predictor.used_taps)
    classes = list(predictor.classes)
    code = {name: i for i, name in enumerate(classes)}

    labelled = lab.labelled
    meta = lab.meta[labelled].reset_index(drop=True).astype({"label": str})
    X_target = lab.X[labelled]
    grouping = near_duplicate_groups(X_target, meta, "embeddings")
    held, no_calibration = _hold_out(meta, grouping.groups, calibration_share, seed)
    fit_rows = ~held
    say(f"new lab: {len(meta)} labelled cells ({meta['sha256'].nunique()} different, {len(set(grouping.groups))} "
        f"groups of copies), {int((~labelled).sum())} unlabelled; refit on {int(fit_rows.sum())}, "
        + (f"calibrate on {int(held.sum())} held out" if held.any() else f"no calibration cells ({no_calibration})"))

    mean, std = _statistics(lab.X, lab.meta["sha256"])
    _check_spread(std, predictor.reference[1], new_lab)
    adapted = CellClassifier.from_fitted(
        predictor.model, classes, predictor.spec, predictor.used_taps, family=predictor.family,
        reference=predictor.reference, lab=(mean, std))
    mapped = adapted.pipeline_.named_steps["adapt"].lab_mapped(X_target)
    y_target = np.array([code[v] for v in meta["label"]], dtype=np.int64)
    y_source_codes = np.array([code[v] for v in y_source], dtype=np.int64)
    n_fit = int(fit_rows.sum())
    repeats = max(1, int(round(target_weight / (1 - target_weight) * len(y_source_codes) / n_fit)))
    X_fit = np.vstack([X_source, np.repeat(mapped[fit_rows], repeats, axis=0)]).astype(np.float32)
    y_fit = np.concatenate([y_source_codes, np.repeat(y_target[fit_rows], repeats)])
    family = get_family(predictor.family)
    model_record = next(m for m in run.models if m.key == run.best_model)
    family_options = {opt.name: run.config.get(f"{family.key}_{opt.name}", opt.default) for opt in family.options}
    say(f"refit {family.title} with {model_record.params} on {len(y_source_codes)} training images of the run and "
        f"{n_fit} of the new lab (each repeated {repeats}x: the new lab carries {target_weight:.0%} of the weight)")
    model = family.refit(X_fit, y_fit, model_record.params, family_options, seed=seed, n_jobs=2)
    result = CellClassifier.from_fitted(
        model, classes, predictor.spec, predictor.used_taps, family=predictor.family,
        reference=predictor.reference, lab=(mean, std), versions=None,
        summary={**predictor.summary, "adapted_from": str(run_dir), "new_lab": str(new_lab)})

    record: dict[str, Any] = {
        "run": str(run_dir), "new_lab": str(new_lab), "model": run.best_model, "params": model_record.params,
        "seed": seed, "target_weight": target_weight, "repeats": repeats,
        "source_images": int(len(y_source_codes)), "labelled_cells": int(len(meta)),
        "refit_cells": n_fit, "calibration_cells": int(held.sum()), "unlabelled_cells": int((~labelled).sum()),
        "groups": grouping.facts(int(meta["sha256"].nunique())),
        "method": "per-lab standardisation (the new lab's statistics kept in the classifier) + refit on the run's "
                  "training images and the new lab's labelled cells, the new lab weighted",
    }
    lines = []
    if held.any():
        raw_held = result.predict_proba(X_target[held], calibrated=False)
        before = predictor.predict_proba(X_target[held], calibrated=False)
        calibration = Calibration.fit(raw_held, y_target[held], predictor.calibration.alpha if predictor.calibration
                                      else 0.05)
        calibration.method = "temperature scaling on held-out labelled cells of the new lab"
        result.calibration = calibration
        calibrated = calibration.apply(raw_held)
        covered, size = coverage(calibrated, y_target[held], calibration.threshold)
        record["held_out"] = {
            "cells": int(held.sum()),
            "accuracy_before": float((before.argmax(1) == y_target[held]).mean()),
            "accuracy_after": float((raw_held.argmax(1) == y_target[held]).mean()),
            "temperature": calibration.temperature,
            "coverage_in_sample": covered, "mean_set_size": size,
            "note": "the sets' threshold is fitted on these same cells: their coverage here is in-sample",
        }
        lines.append(f"held-out cells of the new lab ({int(held.sum())}): accuracy {record['held_out']['accuracy_before']:.1%} "
                     f"before adapting, {record['held_out']['accuracy_after']:.1%} after")
        if size > 2:
            lines.append(f"note: with {int(held.sum())} calibration cells the prediction sets are wide (mean size "
                         f"{size:.1f} of {len(classes)} classes here): they keep their coverage by holding many classes; "
                         "label more cells of the new lab to narrow them")
    else:
        result.calibration = predictor.calibration
        record["held_out"] = None
        record["calibration_note"] = (f"the run's calibration is kept ({no_calibration}): the prediction sets' coverage "
                                      "on the new lab is not guaranteed; label more cells of each class to calibrate")
        lines.append("warning: " + record["calibration_note"])

    all_mapped = result.pipeline_.named_steps["adapt"].lab_mapped(lab.X[~lab.meta["sha256"].duplicated().to_numpy()])
    if len(all_mapped) >= MIN_DRIFT_IMAGES:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(all_mapped))
        half = len(order) // 2
        detector = NoveltyDetector().fit(all_mapped[order[half:]]).calibrate(all_mapped[order[:half]])
        result.novelty_ = detector
        result.summary["novelty"] = novelty_facts(detector)
        record["drift_reference"] = (f"the new lab: {len(all_mapped) - half} of its cells, calibrated on {half} others")
    else:
        result.novelty_ = predictor.novelty
        record["drift_reference"] = (f"the run's training images ({len(all_mapped)} cells of the new lab, under the "
                                     f"{MIN_DRIFT_IMAGES} needed to describe it)")
    lines.append(f"drift reference: {record['drift_reference']}")

    table = meta.assign(group=grouping.groups, role=np.where(held, "calibration", "refit"))
    with output_lock(out):
        _check_out(out, overwrite)  # again under the lock: a run that just finished counts
        staging = staging_folder(out)  # built aside, renamed into place whole: never half a folder
        try:
            save(result, staging / BEST_MODEL)
            (staging / ADAPT_CELLS).write_text(table.to_csv(index=False), encoding="utf-8")
            (staging / ADAPT_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
            install_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    lines.append(f"wrote {out} (cellclf predict {out} ... uses it)")
    return AdaptResult(out, record, lines)
