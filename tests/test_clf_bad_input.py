"""Bad input to `cellclf fit`: a one-line error, exit status 2, and no RUN_DIR left behind."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from cellclf.cli import main
from test_clf_support import make_spec, write_synthetic

FAST = ["--cv", "3", "--lr-c", "0.1", "--xgb-trials", "1", "--xgb-max-trees", "10", "--no-shap", "--jobs", "1"]


def _fails(tmp_path, data, *extra, run_dir=None):
    run_dir = run_dir or tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(run_dir), *FAST, *extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # progress lines go to stdout
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(f".{run_dir.name}.")]
    return lines[0]


def test_parquet_not_from_cellembed(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    assert "not a cellembed embeddings file" in _fails(tmp_path, path)
    text = tmp_path / "notes.parquet"
    text.write_text("hello")
    assert "not a readable Parquet file" in _fails(tmp_path, text)
    assert not (tmp_path / "run").exists()


def test_no_labelled_rows(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={}, unlabelled=20)
    assert "no labelled images" in _fails(tmp_path, data)


def test_single_class(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"alpha": 30})
    assert "only one class (alpha)" in _fails(tmp_path, data)


def test_class_too_small_for_cv_says_which_and_how_many(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"alpha": 30, "beta": 30, "rare": 6})
    message = _fails(tmp_path, data, "--cv", "5")
    assert "'rare' has 6" in message and "5-fold" in message and "lower --cv" in message


def test_mixed_specs(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    other = dataclasses.replace(make_spec(), weights_sha256="cd" * 32)
    test = write_synthetic(tmp_path / "t.parquet", counts={"a": 5, "b": 5}, spec=other, name_prefix="t")
    message = _fails(tmp_path, data, "--test", str(test))
    assert "embedded differently" in message and "weights_sha256" in message


def test_nan_embeddings(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30}, nan_rows=2)
    assert "2 images have NaN, infinite or huge (beyond +-1e+06) embedding values (e.g. a/img_0000.png)" in _fails(tmp_path, data)


def test_test_file_with_unknown_class(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    test = write_synthetic(tmp_path / "t.parquet", counts={"a": 5, "zeta": 5}, name_prefix="t")
    assert "has classes the training input lacks: zeta" in _fails(tmp_path, data, "--test", str(test))


def test_unknown_tap_and_model(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    assert "unknown tap add_99" in _fails(tmp_path, data, "--taps", "add_99")
    assert "unknown model svm" in _fails(tmp_path, data, "--models", "lr,svm")


def test_existing_run_dir_is_kept(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    assert "--overwrite" in _fails(tmp_path, data, run_dir=run_dir)
    assert (run_dir / "keep.txt").read_text() == "mine"


def test_interrupted_fit_leaves_no_partial_run(tmp_path, monkeypatch):
    """Ctrl-C while writing (the staging folder filled, before it becomes RUN_DIR): exit 130,
    one line, neither RUN_DIR nor a staging folder left; the trained models are kept and the
    same command finishes without training again."""
    import cellclf.rundir.writer

    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    staged = []

    def interrupted_install(staging, target):
        staged.append(sorted(p.name for p in staging.iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(cellclf.rundir.writer, "install_folder", interrupted_install)
    run_dir = tmp_path / "run"
    args = ["fit", str(data), "-o", str(run_dir), *FAST, "--models", "lr"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130, result.output
    [line] = [line for line in result.stderr.splitlines() if "Error" in line]  # besides the tuning's progress bar
    assert line.startswith(f"Error: interrupted; nothing was written to {run_dir}: run the same command again to "
                           "finish (the trained models are kept in ")
    assert line.endswith(": it will only write the run)")
    assert "metrics.json" in staged[0] and "model.skops" in staged[0]  # the staging folder was filled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]
    monkeypatch.undo()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "resume" in again.output and "tune lr" not in again.output
    assert (run_dir / "model.skops").is_file()


def test_overwrite_replaces_a_previous_run(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "old.txt").write_text("old")
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(run_dir), *FAST, "--models", "lr", "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    assert not (run_dir / "old.txt").exists() and (run_dir / "model.joblib").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet", "run"]
