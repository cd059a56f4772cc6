"""MLflow tracking (`cellclf fit --mlflow`, `cellclf track`) into a local SQLite tracking store:
the logged metrics equal metrics.json, the logged model predicts what `cellclf predict` does
(in Python and through `mlflow models serve`), a missing extra or a failing store loses nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import SAMPLE, SMALL, free_port

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

FIT = ["--models", "lr", "--cv", "2", "--lr-c", "0.1", "--no-shap", "--no-heatmaps", "--no-label-audit", "--jobs", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def no_store_in_the_working_folder(store, monkeypatch):
    """MLflow's default store is ./mlflow.db: every test here names the temporary one instead."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, random_weights, store):
    """data/sample embedded with random weights and fitted with --mlflow: (run dir, embeddings
    file, the MLflow run, the CLI output)."""
    from cellembed import extract
    from cellclf.cli import main

    root = tmp_path_factory.mktemp("tracked")
    images = root / "images"
    shutil.copytree(SAMPLE, images)
    embeddings = root / "sample.parquet"
    extract(images, embeddings, weights=random_weights, input_size=SMALL, progress=False)
    env = {"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "cells", "CELLEMBED_WEIGHTS": str(random_weights)}
    result = CliRunner(env=env).invoke(main, ["fit", str(embeddings), "-o", str(root / "run"), *FIT, "--mlflow"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("cells")
    (run,) = client.search_runs([experiment.experiment_id])
    return root / "run", embeddings, run, result.output


def test_logged_metrics_params_and_tags_are_the_runs(tracked, store, tmp_path):
    run_dir, embeddings, run, output = tracked
    document = json.loads((run_dir / "metrics.json").read_text())
    lr = document["models"]["lr"]
    metrics = run.data.metrics
    assert metrics["lr.test.accuracy"] == lr["test"]["accuracy"]
    assert (metrics["lr.test.macro_f1_ci_low"], metrics["lr.test.macro_f1_ci_high"]) == tuple(lr["test"]["macro_f1_ci"])
    assert metrics["lr.val_macro_f1"] == lr["val_macro_f1"]
    for name, scores in lr["test_per_class"].items():
        assert metrics[f"lr.test.f1.{name}"] == scores["f1"]
    assert metrics["lr.test.ece"] == lr["calibration"]["test"]["ece_after"]
    coverage = {f"lr.test.coverage_{row['target']:g}": row["coverage"] for row in lr["calibration"]["coverage_test"]}
    assert {name: value for name, value in metrics.items() if name.startswith("lr.test.coverage_")} == coverage
    assert metrics["best.test.accuracy"] == lr["test"]["accuracy"]

    params = run.data.params
    assert params["config.seed"] == "0" and params["config.cv"] == "2" and params["lr.C"] == "0.1"
    assert params["spec.input_size"] == str(SMALL) and params["split"] == document["data"]["split"]

    tags = run.data.tags
    assert tags["cellclf.embeddings.file"] == embeddings.name
    assert tags["cellclf.embeddings.sha256"] == hashlib.sha256(embeddings.read_bytes()).hexdigest()
    assert tags["cellclf.best_model"] == "lr"
    assert not [value for value in tags.values() if str(embeddings.parent) in value]  # no absolute paths in tags
    assert not [name for name, value in tags.items() if value.startswith("/")], tags  # not even MLflow's own
    assert tags["mlflow.source.name"] == "cellclf"

    client = mlflow.MlflowClient(store)
    logged = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert "tuning.json" in logged
    files = {item.path for item in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/metrics.json", "run/model.skops", "run/report.html", "run/tuning.csv"} <= files
    assert f"runs:/{run.info.run_id}/model" in output


def test_logged_model_predicts_what_cellclf_predict_does(tracked, random_weights, tmp_path, monkeypatch):
    from cellclf.cli import main

    run_dir, _, run, _ = tracked
    folder = tmp_path / "new"
    folder.mkdir()
    for image in sorted(SAMPLE.glob("*/*.jpg"))[::9]:
        shutil.copy(image, folder / image.name)
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(folder), "-o", str(tmp_path / "p.csv"),
                                       "--weights", str(random_weights), "-q"])
    assert result.exit_code == 0, result.output
    expected = pd.read_csv(tmp_path / "p.csv").sort_values("path").reset_index(drop=True)

    monkeypatch.setenv("CELLEMBED_WEIGHTS", str(random_weights))
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    files = sorted(folder.iterdir())
    by_path = model.predict(pd.DataFrame({"path": [str(f) for f in files]}))
    by_bytes = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    proba = [c for c in expected.columns if c.startswith("proba_")]
    assert list(by_path.columns[:3]) == ["path", "predicted", "confidence"] and proba
    assert [Path(p).name for p in by_path["path"]] == list(expected["path"]) and by_bytes["path"][0] == "#0"
    for got in (by_path, by_bytes):
        assert list(got["predicted"]) == list(expected["predicted"])
        np.testing.assert_allclose(got[proba].to_numpy(float), expected[proba].to_numpy(float), atol=1e-6)
        assert list(got["set"]) == list(expected["set"])
    with pytest.raises(Exception, match="exactly one of 'path'"):
        model.predict(pd.DataFrame({"path": [str(files[0])], "image": [files[0].read_bytes()]}))


def test_mlflow_models_serve_answers_like_predict(tracked, random_weights, tmp_path, store):
    run_dir, _, run, _ = tracked
    image = sorted(SAMPLE.glob("monocyte/*.jpg"))[0]
    from cellclf.classifier import ImageClassifier

    expected = ImageClassifier(run_dir, weights=random_weights).predict_images([image])
    port = free_port()
    bin_dir = Path(sys.executable).parent  # an activated environment: mlflow runs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "CELLEMBED_WEIGHTS": str(random_weights),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.25)
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(image.read_bytes()).decode()]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(),
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
    finally:
        server.terminate()
        server.wait(20)
    assert answer["predicted"] == expected["predicted"][0]
    for column in [c for c in expected.columns if c.startswith("proba_")]:
        assert answer[column] == pytest.approx(expected[column][0], abs=1e-6)


def test_missing_extra_is_one_line_before_any_fitting(tracked, tmp_path, monkeypatch):
    from cellclf.cli import main

    _, embeddings, _, _ = tracked
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    result = CliRunner().invoke(main, ["fit", str(embeddings), "-o", str(tmp_path / "run"), *FIT, "--mlflow"])
    assert result.exit_code == 2
    assert "cellembed[mlflow]" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_failing_store_keeps_the_run_and_track_logs_it_later(tracked, tmp_path, store, random_weights):
    from cellclf.cli import main

    _, embeddings, _, _ = tracked
    run_dir = tmp_path / "run"
    bad = {"MLFLOW_TRACKING_URI": "nosuchscheme://nowhere", "CELLEMBED_WEIGHTS": str(random_weights)}
    result = CliRunner(env=bad).invoke(main, ["fit", str(embeddings), "-o", str(run_dir), *FIT, "--no-report",
                                              "--mlflow"])
    assert result.exit_code == 1
    assert f"the run in {run_dir} is complete: log it with cellclf track {run_dir}" in result.output
    assert (run_dir / "model.skops").is_file() and (run_dir / "metrics.json").is_file()

    good = {"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "later", "CELLEMBED_WEIGHTS": str(random_weights)}
    result = CliRunner(env=good).invoke(main, ["track", str(run_dir), "--no-model"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("later").experiment_id])
    document = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["lr.test.accuracy"] == document["models"]["lr"]["test"]["accuracy"]
    assert "model" not in {item.path for item in client.list_artifacts(run.info.run_id)}

    again = CliRunner(env=good).invoke(main, ["track", str(run_dir), "--no-model"])  # idempotent
    assert again.exit_code == 0 and again.output.startswith(f"already logged: MLflow run {run.info.run_id}")
    assert len(client.search_runs([client.get_experiment_by_name("later").experiment_id])) == 1

    result = CliRunner(env=good).invoke(main, ["track", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "nothing" in result.output
    folder_store = {**good, "MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}"}  # MLflow 3 refuses a folder
    result = CliRunner(env=folder_store).invoke(main, ["track", str(run_dir), "--no-model"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "MLFLOW_TRACKING_URI must name a database (sqlite:///mlflow.db)" in result.output
