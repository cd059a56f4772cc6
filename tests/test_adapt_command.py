"""`cellclf adapt`: a run adapted to another lab from a few labelled cells (issue 22 §2)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellclf.cli import main
from cellclf.persistence import load_classifier
from cellembed import load_embeddings
from cellembed.store import make_table, write_table
from test_clf_support import CLASSES, make_spec

SPEC = make_spec()
DIM = SPEC.dim


def _centres(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 1.0, DIM) for name in CLASSES}


def _lab_rows(n_per_class: int, seed: int, shift: np.ndarray | None = None, scale: np.ndarray | None = None):
    """Cells of every class around the shared centres; another lab moves and stretches them all alike."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for name, centre in _centres().items():
        X = centre + rng.normal(0, 1.0, (n_per_class, DIM))
        if scale is not None:
            X = X * scale
        if shift is not None:
            X = X + shift
        rows.append(X)
        labels += [name] * n_per_class
    return np.vstack(rows).astype(np.float32), labels


def _write(path: Path, X: np.ndarray, labels: list[str | None], prefix: str, spec=SPEC) -> Path:
    paths = [f"{label}/{prefix}{i:04d}.png" if label else f"{prefix}loose_{i:04d}.png" for i, label in enumerate(labels)]
    shas = [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(len(labels))]
    n = len(labels)
    write_table(make_table(spec, paths, labels, shas, [40] * n, [40] * n, X), path)
    return path


#: Lab B: every cell moved from class alpha's centre towards beta's (and stretched).
OTHER_LAB = {"shift": 1.2 * (_centres()["beta"] - _centres()["alpha"]) + np.linspace(-1, 1, DIM),
             "scale": np.linspace(0.7, 1.5, DIM)}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A run fitted on lab A, and lab B's cells (shifted and stretched): 10 labelled per
    class plus 120 unlabelled in one file, 60 per class held back for testing."""
    root = tmp_path_factory.mktemp("adapt")
    X, labels = _lab_rows(60, seed=1)
    source = _write(root / "lab_a.parquet", X, labels, "a")
    result = CliRunner().invoke(main, ["fit", str(source), "-o", str(root / "run"), "--models", "lr", "--no-shap",
                                       "--no-heatmaps", "--no-report", "--cv", "3", "--lr-c", "0.1,1", "-q"])
    assert result.exit_code == 0, result.output
    Xl, labelled = _lab_rows(10, seed=2, **OTHER_LAB)
    Xu, _ = _lab_rows(30, seed=3, **OTHER_LAB)
    new_lab = _write(root / "lab_b.parquet", np.vstack([Xl, Xu]), labelled + [None] * len(Xu), "b")
    Xt, test_labels = _lab_rows(60, seed=4, **OTHER_LAB)
    return root, source, new_lab, Xt, np.asarray(test_labels)


def _adapt(root: Path, run: Path, new_lab: Path, out: str, *extra: str):
    return CliRunner().invoke(main, ["adapt", str(run), str(new_lab), "-o", str(root / out), *extra])


def test_adapting_to_a_shifted_lab_improves_accuracy_and_writes_a_run_that_predicts(toy):
    root, _, new_lab, Xt, truth = toy
    result = _adapt(root, root / "run", new_lab, "adapted")
    assert result.exit_code == 0, result.output
    before = load_classifier(root / "run").predict(Xt)
    adapted = load_classifier(root / "adapted")  # the safe model.skops: lab statistics and all
    after = adapted.predict(Xt)
    assert adapted.lab is not None
    accuracy_before, accuracy_after = (before == truth).mean(), (after == truth).mean()
    assert accuracy_after > accuracy_before + 0.2 and accuracy_after > 0.9, (accuracy_before, accuracy_after)
    record = json.loads((root / "adapted" / "adapt.json").read_text())
    assert record["labelled_cells"] == 40 and record["unlabelled_cells"] == 120
    assert record["held_out"]["accuracy_after"] > record["held_out"]["accuracy_before"]
    cells = pd.read_csv(root / "adapted" / "adapt_cells.csv")
    assert set(cells["role"]) == {"refit", "calibration"}
    assert cells.groupby("group")["role"].nunique().max() == 1  # a cell's copies stay on one side
    # the pickle keeps the lab's statistics too, and an older cellclf (format 1) refuses the file
    pickled = load_classifier(root / "adapted" / "model.joblib", trust_pickle=True)
    assert list(pickled.predict(Xt)) == list(after) and adapted.format_ == 2
    # the drift reference is the new lab: its cells are no longer unlike the training images
    # (level 0.05: the toy run's 36 validation images give p-values of at least 1/37)
    flagged_after = (adapted.novelty_p(Xt) < 0.05).mean()
    flagged_before = (load_classifier(root / "run").novelty_p(Xt) < 0.05).mean()
    assert flagged_after < 0.15 and flagged_after < flagged_before / 2, (flagged_before, flagged_after)


def test_the_adapted_run_classifies_embeddings_through_the_prediction_path(toy, tmp_path, monkeypatch):
    """ImageClassifier (what predict and serve use) loads the adapted run folder and
    classifies its embeddings: the lab's mapping applied once, a matrix and a loaded frame
    alike. (The toy spec names no real weights file: the weights check is skipped.)"""
    from cellclf.classifier import ImageClassifier

    root, _, new_lab, Xt, truth = toy
    if not (root / "adapted").is_dir():
        assert _adapt(root, root / "run", new_lab, "adapted").exit_code == 0
    monkeypatch.setattr("cellclf.classifier.matching_weights", lambda predictor, weights: None)
    classifier = ImageClassifier(root / "adapted")
    result = classifier.classify(Xt)
    assert (result["predicted"].to_numpy() == truth).mean() > 0.9
    assert "unlike_training" in result.columns and result["unlike_training"].mean() < 0.15
    frame, _ = load_embeddings(_write(tmp_path / "t.parquet", Xt, [None] * len(Xt), "t"))
    assert list(classifier.classify(frame)["predicted"]) == list(result["predicted"])


@pytest.mark.parametrize("case, message", [
    ("unknown class", "classes the model does not know"),
    ("one cell per class", "too few labelled cells"),
    ("other spec", "embedded differently|made differently"),
])
def test_bad_new_lab_input_is_one_line_exit_2_and_writes_nothing(toy, tmp_path, case, message):
    root, _, _, _, _ = toy
    Xl, labels = _lab_rows(10, seed=5, **OTHER_LAB)
    Xu, _ = _lab_rows(30, seed=6, **OTHER_LAB)
    labels = list(labels)
    spec = SPEC
    if case == "unknown class":
        labels = ["epsilon" if label == "alpha" else label for label in labels]
    elif case == "one cell per class":
        keep = [i for i, label in enumerate(labels) if label != "beta" or i == labels.index("beta")]
        Xl, labels = Xl[keep], [labels[i] for i in keep]
    else:
        spec = make_spec(weights="cd" * 32)
    new_lab = _write(tmp_path / "lab.parquet", np.vstack([Xl, Xu]), labels + [None] * len(Xu), "x", spec)
    result = _adapt(tmp_path, root / "run", new_lab, "out")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_an_adapted_run(toy, tmp_path):
    root, _, new_lab, _, _ = toy
    first = _adapt(tmp_path, root / "run", new_lab, "adapted")
    assert first.exit_code == 0, first.output
    refused = _adapt(tmp_path, root / "run", new_lab, "adapted")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert _adapt(tmp_path, root / "run", new_lab, "adapted", "--overwrite").exit_code == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    result = _adapt(tmp_path, root / "run", new_lab, "notes", "--overwrite")
    assert result.exit_code == 2 and "not a folder written by cellclf adapt" in result.output
    assert (other / "mine.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1


def test_without_calibration_cells_the_run_keeps_its_calibration_and_says_so(toy, tmp_path):
    root, _, new_lab, Xt, truth = toy
    result = _adapt(tmp_path, root / "run", new_lab, "adapted", "--calibration-share", "0")
    assert result.exit_code == 0, result.output
    assert "coverage on the new lab is not guaranteed" in result.output
    record = json.loads((tmp_path / "adapted" / "adapt.json").read_text())
    assert record["held_out"] is None and record["calibration_cells"] == 0
    assert load_classifier(tmp_path / "adapted").calibration == load_classifier(root / "run").calibration


@pytest.mark.parametrize("option, value", [("--target-weight", "0.95"), ("--calibration-share", "0.9")])
def test_out_of_range_shares_are_refused(toy, tmp_path, option, value):
    root, _, new_lab, _, _ = toy
    result = _adapt(tmp_path, root / "run", new_lab, "out", option, value)
    assert result.exit_code == 2 and option in result.output and not (tmp_path / "out").exists()


def test_copies_of_a_few_cells_cannot_stand_for_a_lab(toy, tmp_path):
    root, _, _, _, _ = toy
    Xl, labels = _lab_rows(10, seed=7, **OTHER_LAB)
    few = Xl[:1] + np.random.default_rng(0).normal(0, 0.05, (len(Xl), DIM))  # one cell, re-saved 40 times
    new_lab = _write(tmp_path / "lab.parquet", few.astype(np.float32), labels, "c")
    result = _adapt(tmp_path, root / "run", new_lab, "out")
    assert result.exit_code == 2 and "nearly alike" in result.output and not (tmp_path / "out").exists()


def test_an_xgboost_run_adapts_with_its_own_family_and_a_labelled_only_file(toy, tmp_path):
    """The refit goes through the run's family (here XGBoost with its selected settings);
    a new-lab file of labelled cells only is enough (its statistics come from them)."""
    root, source, _, Xt, truth = toy
    result = CliRunner().invoke(main, ["fit", str(source), "-o", str(tmp_path / "run"), "--models", "xgb", "--no-shap",
                                       "--no-heatmaps", "--no-report", "--xgb-trials", "1", "--xgb-max-trees", "40",
                                       "-q"])
    assert result.exit_code == 0, result.output
    Xl, labelled = _lab_rows(15, seed=8, **OTHER_LAB)
    new_lab = _write(tmp_path / "lab.parquet", Xl, labelled, "l")
    result = _adapt(tmp_path, tmp_path / "run", new_lab, "adapted")
    assert result.exit_code == 0, result.output
    before = (load_classifier(tmp_path / "run").predict(Xt) == truth).mean()
    adapted = load_classifier(tmp_path / "adapted")
    assert adapted.family == "xgb" and json.loads((tmp_path / "adapted" / "adapt.json").read_text())["model"] == "xgb"
    assert (adapted.predict(Xt) == truth).mean() > before + 0.1


def test_corrections_label_the_new_labs_cells(toy, tmp_path):
    """A lab whose cells are all unlabelled (a predicted folder) adapts from a reviewer's
    corrections: labelled by SHA-256, one left out."""
    root, _, _, Xt, truth = toy
    X, labels = _lab_rows(10, seed=2, **OTHER_LAB)
    unlabelled = _write(tmp_path / "smear.parquet", X, [None] * len(labels), "s")
    frame, _ = load_embeddings(unlabelled)
    rows = [{"sha256": sha, "label": label, "reviewer": "Dr A"} for sha, label in zip(frame["sha256"], labels)]
    rows[0]["label"] = "(excluded)"
    pd.DataFrame(rows).to_csv(tmp_path / "corrections.csv", index=False)
    result = _adapt(tmp_path, root / "run", unlabelled, "adapted", "--labels", str(tmp_path / "corrections.csv"))
    assert result.exit_code == 0, result.output
    assert "39 unlabelled cells labelled, 1 left out" in result.output
    record = json.loads((tmp_path / "adapted" / "adapt.json").read_text())
    assert record["labelled_cells"] == 39 and record["unlabelled_cells"] == 0
    assert (load_classifier(tmp_path / "adapted").predict(Xt) == truth).mean() > 0.9
    without = _adapt(tmp_path, root / "run", unlabelled, "never")
    assert without.exit_code == 2 and "no labelled cells" in without.output
