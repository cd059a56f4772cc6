"""The RUN_DIR schema: write_run then read_run gives the same record; bad folders are refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from cellclf.rundir import PROBA_PREFIX, ModelRecord, NotARunError, RunRecord, read_run, write_run
from cellclf.fitting import FitConfig, fit
from test_clf_support import write_synthetic


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    data = write_synthetic(root / "e.parquet", counts={"a": 30, "b": 25, "NA": 20}, separation=0.4, duplicates=3)
    config = FitConfig.build(cv=2, lr_Cs=(0.1, 1.0), xgb_trials=2, xgb_max_trees=20, n_jobs=1, shap_max_rows=15)
    return fit(data, root / "run", config=config)


def assert_same(mine, theirs, where="record"):
    """Field by field: DataFrames exactly (values and dtypes), everything else by ==."""
    if dataclasses.is_dataclass(mine) and not isinstance(mine, type) and not hasattr(mine, "to_dict"):
        assert type(mine) is type(theirs), where
        for f in dataclasses.fields(mine):
            assert_same(getattr(mine, f.name), getattr(theirs, f.name), f"{where}.{f.name}")
    elif isinstance(mine, pd.DataFrame):
        assert isinstance(theirs, pd.DataFrame), where
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True, obj=where)
    elif isinstance(mine, list) and mine and dataclasses.is_dataclass(mine[0]):
        assert len(mine) == len(theirs), where
        for k, (a, b) in enumerate(zip(mine, theirs)):
            assert_same(a, b, f"{where}[{k}]")
    else:
        assert mine == theirs, where


def test_write_run_then_read_run_gives_the_same_record(fitted, tmp_path):
    record = fitted.record
    copy = write_run(record, tmp_path / "copy", fitted.predictors)
    again = read_run(copy)
    assert again.run_dir == copy
    assert_same(dataclasses.replace(record, run_dir=copy, gallery=None), again)  # fit draws the gallery after
    assert record.gallery is not None
    # and what fit wrote reads back as what fit held
    assert_same(record, read_run(fitted.run_dir))
    # the parts the reports use are all there
    assert all(isinstance(m.tuning_plot, bytes) and m.tuning_plot.startswith(b"\x89PNG") for m in again.models)
    assert all(m.shap is not None and m.shap.plot.startswith(b"\x89PNG") for m in again.models)
    assert again.data.classes == ["NA", "a", "b"] and again.best.best and again.best.key == fitted.best
    assert json.loads((copy / "metrics.json").read_text())["run_dir"] == str(fitted.run_dir)
    assert (copy / "model.joblib").is_file() and (copy / "models" / "xgb.joblib.sha256").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_probabilities_in_class_order(fitted):
    model: ModelRecord = fitted.record.models[0]
    classes = fitted.record.classes
    proba = model.probabilities(list(reversed(classes)))
    np.testing.assert_array_equal(proba[:, 0], model.predictions[PROBA_PREFIX + classes[-1]].to_numpy())
    assert proba.shape == (len(model.predictions), len(classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_a_class_named_like_a_missing_value_stays_text(fitted):
    run: RunRecord = read_run(fitted.run_dir)
    for model in run.models:
        assert "NA" in set(model.per_class["class"]) and not model.per_class["class"].isna().any()
        assert PROBA_PREFIX + "NA" in model.predictions.columns


def test_folders_that_are_not_runs_are_refused_in_one_line(fitted, tmp_path):
    with pytest.raises(NotARunError, match="is not a folder"):
        read_run(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    write_run(fitted.record, broken, fitted.predictors)
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(NotARunError, match="is not a cellclf metrics file.*re-run cellclf fit") as info:
        read_run(broken)
    assert "\n" not in str(info.value)
    (broken / "metrics.json").write_text(json.dumps({"data": {"classes": []}, "models": {}}))
    with pytest.raises(NotARunError, match="lists no classes or models"):
        read_run(broken)
    write_run(fitted.record, broken, fitted.predictors)
    (broken / "confusion_matrix.csv").write_text("a,b\n1,2\n")
    with pytest.raises(NotARunError, match="holds a damaged cellclf run file"):
        read_run(broken)
    (broken / "per_class.csv").unlink()
    with pytest.raises(NotARunError, match=r"missing per_class.csv"):
        read_run(broken)


def test_only_png_files_inside_the_run_are_read(fitted, tmp_path):
    run_dir = write_run(fitted.record, tmp_path / "run", fitted.predictors)
    outside = tmp_path / "outside.png"
    outside.write_bytes(fitted.record.models[0].tuning_plot)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["models"]["lr"]["tuning_plot"] = "../outside.png"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "shap" / "xgb_summary.png").write_text("not a png")
    run = read_run(run_dir)
    lr, xgb = run.models
    assert lr.tuning_plot is None and lr.tuning_plot_file == "../outside.png"
    assert xgb.shap.plot is None and xgb.shap.top is not None and xgb.tuning_plot is not None
