"""End-to-end `cellclf fit` on small synthetic embeddings: files, records, metrics, SHAP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from cellembed import load_embeddings
from cellclf.cli import main
from cellclf.persistence import load_classifier
from test_clf_support import write_synthetic


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)
COUNTS = {"alpha": 60, "beta": 50, "gamma": 40, "delta": 30}
CS = ["0.01", "0.1"]
OPTIONS = ["--cv", "3", "--lr-c", ",".join(CS), "--xgb-trials", "2", "--xgb-max-trees", "60", "--jobs", "2", "--seed", "4"]
RUN_FILES = [
    "metrics.json", "split.csv", "tuning.csv", "per_class.csv", "confusion_matrix.csv",
    "predictions_test.csv", "model.joblib", "model.joblib.sha256", "models/lr.joblib",
    "models/lr.joblib.sha256", "models/xgb.joblib", "models/xgb.joblib.sha256",
]


def _fit(data: Path, run_dir: Path, *extra: str):
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(run_dir), *OPTIONS, *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same fit twice (reproducibility) on data with duplicates and unlabelled rows."""
    root = tmp_path_factory.mktemp("fit")
    data = write_synthetic(root / "emb.parquet", counts=COUNTS, separation=0.3, duplicates=8, unlabelled=4)
    first = _fit(data, root / "run1")
    _fit(data, root / "run2")
    return data, root / "run1", root / "run2", first.output


def _load(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / name)


def test_run_dir_layout_and_console(runs):
    data, run_dir, _, output = runs
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    for model in ("lr", "xgb"):
        for suffix in ("_mean_abs.csv", "_by_tap.csv", "_top20.csv", "_summary.png"):
            assert (run_dir / "shap" / f"{model}{suffix}").is_file()
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left
    umask = os.umask(0)
    os.umask(umask)
    assert run_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    for phase in ("load", "split", "tune lr", "refit+test lr", "tune xgb", "refit+test xgb", "shap lr", "shap xgb", "write"):
        assert any(line.lstrip().startswith(phase + " ") and "s  " in line for line in output.splitlines()), phase
    assert "test accuracy" in output and "test macro-F1" in output


def test_split_csv_matches_metrics_counts(runs):
    _, run_dir, _, _ = runs
    split = _load(run_dir, "split.csv")
    document = json.loads((run_dir / "metrics.json").read_text())
    assert len(split) == sum(COUNTS.values()) + 8  # unlabelled rows are not used
    assert document["data"]["unlabelled_rows_ignored"] == 4
    for name, counts in document["data"]["counts"].items():
        observed = split[split["split"] == name]["label"].value_counts().to_dict()
        assert observed == {k: v for k, v in counts.items() if v}
    assert split.groupby("sha256")["split"].nunique().max() == 1


def test_tuning_records_every_trial(runs):
    _, run_dir, _, _ = runs
    tuning = _load(run_dir, "tuning.csv")
    document = json.loads((run_dir / "metrics.json").read_text())
    lr, xgb = tuning[tuning["model"] == "lr"], tuning[tuning["model"] == "xgb"]
    assert len(lr) == len(CS) * 2 and len(xgb) == 2
    assert set(zip(lr["param_C"], lr["param_class_weight"])) == {(float(c), w) for c in CS for w in ("none", "balanced")}
    assert (lr["score_name"] == "cv_macro_f1").all() and (xgb["score_name"] == "val_macro_f1").all()
    assert (tuning["seconds"] > 0).all()
    assert all(len(json.loads(s)) == 3 for s in lr["fold_scores"])
    for name, rows in (("lr", lr), ("xgb", xgb)):
        assert rows["selected"].sum() == 1
        chosen = rows[rows["selected"]].iloc[0]
        assert chosen["score"] == rows["score"].max()
        assert json.loads(chosen["params"]) == document["models"][name]["params"]
        assert document["models"][name]["trials"] == len(rows)
    assert document["models"]["xgb"]["val_macro_f1"] == pytest.approx(xgb["score"].max())


def test_metrics_equal_sklearn_on_predictions(runs):
    _, run_dir, _, _ = runs
    predictions = _load(run_dir, "predictions_test.csv")
    document = json.loads((run_dir / "metrics.json").read_text())
    classes = document["data"]["classes"]
    per_class, confusion = _load(run_dir, "per_class.csv"), _load(run_dir, "confusion_matrix.csv")
    for model in ("lr", "xgb"):
        rows = predictions[predictions["model"] == model]
        assert len(rows) == document["data"]["total"]["test"]
        y, predicted = rows["label"].to_numpy(), rows["predicted"].to_numpy()
        proba = rows[[f"proba_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
        assert (np.asarray(classes)[proba.argmax(axis=1)] == predicted).all()
        test = document["models"][model]["test"]
        assert test["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
        assert test["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, predicted))
        assert test["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
        assert test["weighted_f1"] == pytest.approx(skm.f1_score(y, predicted, average="weighted"))
        assert test["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes))
        mine = per_class[per_class["model"] == model].set_index("class").loc[classes]
        p, r, f, s = skm.precision_recall_fscore_support(y, predicted, labels=classes)
        np.testing.assert_allclose(mine[["precision", "recall", "f1"]].to_numpy().T, [p, r, f])
        assert (mine["support"].to_numpy() == s).all()
        for k, name in enumerate(classes):
            assert mine.loc[name, "roc_auc"] == pytest.approx(skm.roc_auc_score(y == name, proba[:, k]))
        counts = confusion[confusion["model"] == model].pivot(index="true", columns="predicted", values="count")
        expected = skm.confusion_matrix(y, predicted, labels=classes)
        assert (counts.loc[classes, classes].to_numpy() == expected).all()
        rates = confusion[confusion["model"] == model].pivot(index="true", columns="predicted", values="rate")
        np.testing.assert_allclose(rates.loc[classes, classes].to_numpy(), expected / expected.sum(axis=1, keepdims=True))
    # synthetic clusters are learnable but not trivially: metrics are informative
    assert 0.5 < document["models"]["lr"]["test"]["accuracy"] < 1.0


def test_same_seed_same_results(runs):
    _, run1, run2, _ = runs
    for name in ("split.csv", "per_class.csv", "confusion_matrix.csv", "predictions_test.csv"):
        pd.testing.assert_frame_equal(_load(run1, name), _load(run2, name))
    pd.testing.assert_frame_equal(
        _load(run1, "tuning.csv").drop(columns="seconds"), _load(run2, "tuning.csv").drop(columns="seconds")
    )
    first, second = (json.loads((r / "metrics.json").read_text()) for r in (run1, run2))
    for model in ("lr", "xgb"):
        for key in ("params", "val_macro_f1", "test", "test_per_class"):
            assert first["models"][model][key] == second["models"][model][key]
    assert first["data"] == second["data"] and first["best_model"] == second["best_model"]
    for name in ("lr", "xgb"):
        for suffix in ("_mean_abs.csv", "_top20.csv"):
            pd.testing.assert_frame_equal(_load(run1, f"shap/{name}{suffix}"), _load(run2, f"shap/{name}{suffix}"))


def test_saved_predictor_reproduces_test_predictions(runs):
    data, run_dir, _, _ = runs
    document = json.loads((run_dir / "metrics.json").read_text())
    predictor = load_classifier(run_dir / "model.joblib")
    assert predictor.family == document["best_model"]
    assert list(predictor.classes) == document["data"]["classes"]
    saved = document["models"][predictor.family]["test"]
    assert set(predictor.summary["test"]) == set(saved)
    for key, value in saved.items():
        assert predictor.summary["test"][key] == pytest.approx(value), key
    assert {"scikit-learn", "xgboost", "numpy"} <= set(predictor.versions)
    frame, _ = load_embeddings(data)
    predictions = _load(run_dir, "predictions_test.csv")
    rows = predictions[predictions["model"] == predictor.family]
    test_frame = frame.set_index("path").loc[rows["path"]].reset_index()
    test_frame.attrs = frame.attrs
    proba = predictor.predict_proba(test_frame)
    classes = document["data"]["classes"]
    np.testing.assert_allclose(proba, rows[[f"proba_{c}" for c in classes]].to_numpy(), rtol=1e-6, atol=1e-9)
    assert (predictor.predict(test_frame) == rows["predicted"].to_numpy()).all()
    assert load_classifier(run_dir / "models" / "xgb.joblib").family == "xgb"


def test_shap_summaries(runs):
    _, run_dir, _, _ = runs
    document = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "shap" / "summary.json").read_text())
    classes, dims = document["data"]["classes"], document["data"]["n_features"]
    for model in ("lr", "xgb"):
        record = summary[model]
        assert record["rows_explained"] == record["test_rows"] == document["data"]["total"]["test"]
        assert record["max_additivity_error"] < 1e-3
        assert document["models"][model]["shap"]["rows_explained"] == record["rows_explained"]
        per_dim = _load(run_dir, f"shap/{model}_mean_abs.csv")
        assert len(per_dim) == dims
        assert per_dim["feature"].iloc[0] == "add_2:0" and per_dim["feature"].iloc[-1] == "block14_sepconv2_act:7"
        assert set(classes) <= set(per_dim.columns)
        by_tap = _load(run_dir, f"shap/{model}_by_tap.csv")
        np.testing.assert_allclose(by_tap.groupby("class")["share"].sum(), 1.0)
        for name in classes:
            sums = by_tap[by_tap["class"] == name].set_index("tap")["mean_abs_shap_sum"]
            np.testing.assert_allclose(sums.to_numpy(), per_dim.groupby("tap", sort=False)[name].sum().loc[sums.index])
        top = _load(run_dir, f"shap/{model}_top20.csv")
        assert len(top) == 20 * len(classes)
        best = top[top["rank"] == 1].set_index("class")["feature"]
        for name in classes:
            assert best[name] == per_dim.loc[per_dim[name].idxmax(), "feature"]


def test_taps_subset_and_shap_subsample(tmp_path):
    data = write_synthetic(tmp_path / "emb.parquet", counts={"a": 40, "b": 40, "c": 40}, separation=0.4)
    run_dir = tmp_path / "run"
    _fit(data, run_dir, "--taps", "add_6,add_2", "--models", "lr", "--shap-rows", "7")
    predictor = load_classifier(run_dir / "model.joblib")
    assert predictor.taps == ("add_6", "add_2") and predictor.n_features == 22
    assert predictor.feature_names[0] == "add_6:0"
    frame, spec = load_embeddings(data)
    full = np.stack(frame["embedding"].to_numpy())
    np.testing.assert_allclose(predictor.predict_proba(frame), predictor.predict_proba(full, spec=spec))
    np.testing.assert_allclose(predictor.predict_proba(full), predictor.predict_proba(np.hstack([full[:, 12:22], full[:, :12]])))
    summary = json.loads((run_dir / "shap" / "summary.json").read_text())
    assert summary["lr"]["rows_explained"] == 7 and summary["lr"]["subsampled"]
    assert set(pd.read_csv(run_dir / "shap" / "lr_by_tap.csv")["tap"]) == {"add_6", "add_2"}
    assert json.loads((run_dir / "metrics.json").read_text())["data"]["taps"] == ["add_6", "add_2"]


def test_the_near_duplicate_grouping_is_recorded_and_each_group_sits_in_one_split(runs):
    _, run1, _, output = runs
    grouping = json.loads((run1 / "metrics.json").read_text())["data"]["grouping"]
    assert grouping["method"] == "embeddings" and not grouping["fallback"]  # the default detector
    assert "groups of near-duplicates" in output
    split = _load(run1, "split.csv")
    assert split.groupby("group")["split"].nunique().max() == 1
    assert split.groupby("sha256")["group"].nunique().max() == 1  # identical files share a group
    assert grouping["groups"] == split["group"].nunique()
