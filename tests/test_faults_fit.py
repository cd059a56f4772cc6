"""Faults of ``cellclf fit`` and of scoring found by the hostile-input probe of issue 9.

Item 5 (the output is checked before any training), item 6 (a damaged Parquet file is a
one-line error in every command that reads it), item 8 (macro-F1 over the classes present,
no scikit-learn warning) and the fit parts of item 9 (split fractions as options, checked
before splitting; negative seeds; Ctrl-C exits 130; a second run on the same output is
refused).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cellembed import load_embeddings
from cellembed.cli import main as cellembed_main
from cellembed.errors import InputError
from cellclf.cli import main
from cellclf.errors import ClassifierInputError
from cellclf.metrics import evaluate
from cellclf.fitting import FitConfig, fit
from conftest import held_by_another_process, interruptible
from test_clf_support import make_spec, write_synthetic

FAST = ["--cv", "3", "--lr-c", "0.1", "--xgb-trials", "1", "--xgb-max-trees", "10", "--no-shap", "--jobs", "1"]
BIN = Path(sys.executable).parent


def _fit(data, run_dir, *extra):
    return CliRunner().invoke(main, ["fit", str(data), "-o", str(run_dir), *FAST, *extra])


def _one_line_error(result, *fragments, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})


# ------------------------------------------------------------------ item 5: -o first


def test_output_under_a_file_is_refused_before_any_training(tmp_path, data):
    """`-o existing_file/run` trained everything, then exited 1 with a traceback."""
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    result = _fit(data, blocker / "run")
    message = _one_line_error(result, "-o", str(blocker))
    assert "load" not in result.stdout and "tune" not in result.stdout  # nothing was done
    assert blocker.read_text() == "mine"
    assert "is not a folder" in message
    with pytest.raises(ClassifierInputError, match="-o"):
        fit(data, blocker / "deeper" / "run")


@pytest.mark.parametrize("name", [".", ".."])
def test_output_that_names_no_folder_of_its_own_is_refused_before_any_training(tmp_path, data, monkeypatch, name):
    """`-o .` trained, then failed with a traceback (a folder with no name cannot be
    renamed into place)."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    result = _fit(data, Path(name))
    _one_line_error(result, f"-o {name}", "run")
    assert "tune" not in result.stdout


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where nothing can be created")
def test_output_where_nothing_can_be_written_is_refused_before_any_training(tmp_path, data):
    result = _fit(data, Path("/proc/cellclf-probe/run"))
    _one_line_error(result, "-o", "/proc/cellclf-probe")
    assert "tune" not in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_output_in_a_read_only_folder_is_refused_before_any_training(tmp_path, data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _fit(data, locked / "run")
    finally:
        locked.chmod(0o700)
    _one_line_error(result, "-o", "not writable")
    assert "tune" not in result.stdout


# ------------------------------------------------------------------ item 8: honest scores


def test_macro_f1_of_a_perfect_single_class_folder_is_one_and_quiet():
    """It was 0.125 (7 absent classes counted as F1 0) with a raw scikit-learn warning."""
    classes = list("abcdefgh")
    proba = np.full((5, len(classes)), 0.01)
    proba[:, 2] = 0.93
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overall, per_class, _ = evaluate(["c"] * 5, proba, classes)
    assert [str(w.message) for w in caught] == []
    assert overall["accuracy"] == 1.0 and overall["balanced_accuracy"] == 1.0
    assert overall["macro_f1"] == 1.0
    assert overall["classes_present"] == 1
    rows = per_class.set_index("class")
    assert list(rows.index) == classes  # absent classes are still listed...
    absent = rows.drop(index="c")
    assert (absent["support"] == 0).all()  # ... with no support and no made-up scores
    assert absent[["precision", "recall", "f1"]].isna().all().all()
    assert rows.loc["c", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]


def test_macro_f1_counts_wrong_predictions_into_absent_classes():
    classes = ["a", "b", "c"]
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overall, per_class, _ = evaluate(["a", "a", "a", "b"], proba, classes)
    assert [str(w.message) for w in caught] == []
    # a: precision 1, recall 2/3 -> F1 0.8; b: F1 1; c (absent, predicted once) is not averaged
    assert overall["macro_f1"] == pytest.approx((0.8 + 1.0) / 2)
    assert overall["classes_present"] == 2
    row_c = per_class.set_index("class").loc["c"]
    assert row_c["support"] == 0 and row_c["precision"] == 0.0  # its one prediction is wrong
    assert np.isnan(row_c["recall"]) and np.isnan(row_c["f1"])


# ------------------------------------------------------------------ item 9: fractions, seeds


def test_split_fractions_are_options_and_are_recorded(tmp_path, data):
    run_dir = tmp_path / "run"
    result = _fit(data, run_dir, "--models", "lr", "--val-fraction", "0.2", "--test-fraction", "0.3", "--no-report")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["val_fraction"] == 0.2 and metrics["config"]["test_fraction"] == 0.3
    counts = re.search(r"train (\d+) / validation (\d+) / test (\d+)", result.stdout).groups()
    train, val, test = map(int, counts)
    assert test == 18 and val in (12, 13) and train + val + test == 60  # ceil(0.3 x 60), about 0.2 x 60


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--val-fraction", "0"], ["--val-fraction"]),
        (["--test-fraction", "1"], ["--test-fraction"]),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], ["--val-fraction 0.5", "--test-fraction 0.5", "less than 1"]),
        (["--seed", "-5"], ["--seed", "-5"]),
    ],
)
def test_bad_fractions_and_seeds_are_refused_naming_the_option(tmp_path, data, options, fragments):
    result = _fit(data, tmp_path / "run", *options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "split fractions" not in result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, result.output
    assert not (tmp_path / "run").exists()


def test_negative_seed_in_the_library_has_its_own_message():
    with pytest.raises(ClassifierInputError, match=r"seed must be .*0.*got -5"):
        FitConfig.build(seed=-5)
    with pytest.raises(ClassifierInputError, match="--val-fraction must be a share"):
        FitConfig(val_fraction=1.5)
    from cellclf.split import check_fractions

    with pytest.raises(ClassifierInputError, match="--val-fraction 0.6 and --test-fraction 0.4"):
        check_fractions(0.6, 0.4)


def test_with_a_test_file_a_too_large_val_fraction_names_only_val_fraction(tmp_path, data):
    """Found by review: the message named --test-fraction, which the same command refuses with --test."""
    test = write_synthetic(tmp_path / "t.parquet", counts={"a": 5, "b": 5}, name_prefix="t")
    message = _one_line_error(_fit(data, tmp_path / "run", "--test", str(test), "--val-fraction", "0.85"), "--val-fraction 0.85")
    assert "--test-fraction" not in message and "below 0.85" in message


def test_tiny_class_is_refused_before_splitting_naming_the_fraction_options(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30, "rare": 2})
    message = _one_line_error(_fit(data, tmp_path / "run", "--cv", "2"), "'rare' has 2")
    assert "--val-fraction 0.15" in message and "--test-fraction 0.15" in message
    assert "split fractions" not in message


def test_many_small_classes_are_refused_before_splitting_naming_the_fraction_options(tmp_path):
    """Eight classes of 5: the test split (6 images) cannot hold one image of each class;
    this ended in "change the split fractions", an option that did not exist."""
    data = write_synthetic(tmp_path / "e.parquet", counts={f"c{i}": 5 for i in range(8)})
    message = _one_line_error(_fit(data, tmp_path / "run", "--cv", "2"), "--test-fraction")
    assert "8 classes" in message and "split fractions" not in message


def test_test_fraction_does_not_apply_with_a_test_file(tmp_path, data):
    test = write_synthetic(tmp_path / "t.parquet", counts={"a": 5, "b": 5}, name_prefix="t")
    result = _fit(data, tmp_path / "run", "--test", str(test), "--test-fraction", "0.2")
    _one_line_error(result, "--test-fraction", "--test")


def test_no_error_message_names_an_option_that_does_not_exist():
    """Every ``--option`` named in a string of cellclf's code (messages, help) is an option
    of a cellclf command."""
    import cellclf
    from conftest import options_named_in_code

    options = {opt for command in main.commands.values() for param in command.params for opt in param.opts}
    options |= {"--help", "--version"}
    named = options_named_in_code(cellclf)
    assert sorted((name, flag) for name, flag in named if flag not in options) == []


# ------------------------------------------------------------------ item 9: Ctrl-C, two runs


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_and_leaves_nothing(tmp_path):
    data = write_synthetic(
        tmp_path / "big.parquet", counts={c: 400 for c in "abcdef"}, separation=0.1,
        spec=make_spec((("add_2", 400), ("add_6", 200))),
    )
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [str(BIN / "cellclf"), "fit", str(data), "-o", str(run_dir), "--models", "xgb", "--xgb-trials", "40",
         "--no-shap", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=interruptible,
    )
    try:
        progress = []
        for line in process.stdout:  # wait until the training has started
            progress.append(line)
            if line.startswith("split"):
                break
        time.sleep(1.5)
        assert process.poll() is None, "".join(progress)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not any(line.startswith("tune xgb") for line in progress + stdout.splitlines())  # mid-training
    assert process.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip() and "tune xgb" not in line] == [
        f"Error: interrupted; nothing was written to {run_dir}"]  # besides the tuning's progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]


def test_second_run_on_the_same_output_is_refused(tmp_path, data):
    run_dir = tmp_path / "run"
    holder = held_by_another_process(run_dir)
    try:
        result = _fit(data, run_dir)
        _one_line_error(result, str(run_dir), f"another run (pid {holder.pid})")
        assert "tune" not in result.stdout and not run_dir.exists()
    finally:
        holder.kill()
        holder.wait()
    result = _fit(data, run_dir, "--models", "lr", "--no-report", "-q")  # free again
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet", "run"]


# ------------------------------------------------------------------ item 6: damaged Parquet


def _damaged_copy(source: Path, target: Path, *, where: str) -> Path:
    """A copy of ``source`` with bytes of its embedding column overwritten; footer intact."""
    shutil.copy(source, target)
    group = pq.ParquetFile(source).metadata.row_group(0)
    column = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema.startswith("embedding"))
    start = column.dictionary_page_offset or column.data_page_offset
    offset = start if where == "page header" else start + column.total_compressed_size // 2
    with open(target, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x13" * 64)
    pq.ParquetFile(target).metadata  # the footer still reads
    return target


@pytest.mark.parametrize("where", ["page header", "page values"])
def test_damaged_parquet_is_a_one_line_error_in_fit_and_info(tmp_path, where):
    source = write_synthetic(tmp_path / "e.parquet", counts={"a": 200, "b": 200}, spec=make_spec((("add_2", 300),)))
    damaged = _damaged_copy(source, tmp_path / "damaged.parquet", where=where)
    with pytest.raises(InputError, match="damaged"):
        load_embeddings(damaged)
    fit_result = _fit(damaged, tmp_path / "run")
    _one_line_error(fit_result, str(damaged), "is damaged", "cellembed extract")
    info = CliRunner().invoke(cellembed_main, ["info", str(damaged)])
    _one_line_error(info, str(damaged), "is damaged", "cellembed extract")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_predict_on_a_one_class_folder_scores_the_class_present(tmp_path, random_weights):
    """A one-class folder printed "macro-F1 0.3333" (the absent classes as F1 0) and a raw
    scikit-learn warning."""
    from test_predict import tinted_folder, tinted_predictor

    predictor, _, _ = tinted_predictor(tmp_path, {"red": 6, "blue": 6, "green": 6}, random_weights)
    from cellclf.persistence import save_safe

    model_file = save_safe(predictor, tmp_path / "model.skops")
    only_red = tinted_folder(tmp_path / "new", {"red": 4}, seed=1)
    predicted = CliRunner().invoke(
        main, ["predict", str(model_file), str(only_red), "-o", str(tmp_path / "p.csv"), "--weights", str(random_weights), "-q"],
    )
    assert predicted.exit_code == 0, predicted.output
    assert "Warning" not in predicted.output, predicted.output
    line = next(line for line in predicted.stderr.splitlines() if line.startswith("against the sub-folders"))
    assert "macro-F1" in line and "over the 1 class present (of the model's 3)" in line, line


def test_evaluation_report_of_a_one_class_folder_says_what_macro_f1_averages():
    import html
    from types import SimpleNamespace

    import pandas as pd

    from cellclf.rundir import evaluation_record
    from cellreports.evaluation_report import render_evaluation_report

    classes = ["a", "b", "c"]
    proba = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    scored = pd.DataFrame({"path": ["a/1.png", "a/2.png", "a/3.png"], "label": ["a"] * 3, "predicted": ["a", "a", "b"]})
    for k, name in enumerate(classes):
        scored[f"proba_{name}"] = proba[:, k]
    overall, per_class, confusion = evaluate(scored["label"].tolist(), proba, classes)
    model = evaluation_record(SimpleNamespace(overall=overall, per_class=per_class, confusion=confusion, scored=scored), "m")
    document = html.unescape(render_evaluation_report(model, classes, None))
    assert "macro-F1 0.8000 over the 1 class present (of the model's 3)" in document
    assert "no test images" in document.split('id="per-class"', 1)[1].split("</section>", 1)[0]
