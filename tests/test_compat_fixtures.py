"""Files written by earlier versions keep working: one battery over every folder of
tests/fixtures (written by tests/fixtures/make_fixtures.py with that version's code; the
folder is named after the version and commit).

- v0.1.0-31ecc94: before rows carried their spec's digest (issue 20);
- v0.1.0-bd37a81: the code before the redesign of issue 21.

A new fixture folder gets the whole battery by being there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellclf.cli import main as cellclf_main
from cellclf.persistence import load_classifier
from cellclf.rundir import read_run
from cellembed import embedding_matrix, load_embeddings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = sorted(p.name for p in FIXTURES.iterdir() if (p / "version.json").is_file())
#: What these files test is cellclf's format; a newer scikit-learn or XGBoost (which a
#: user's model would be refused under, by design) must not fail them.
SCIKIT_LEARN_MAY_MOVE = True


def test_there_are_fixtures_of_each_kept_version():
    assert {"v0.1.0-31ecc94", "v0.1.0-bd37a81"} <= set(VERSIONS)


@pytest.fixture(params=VERSIONS)
def fixture(request, tmp_path) -> Path:
    """A private copy of one version's files (tests write next to them)."""
    copy = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, copy)
    return copy


def test_the_embeddings_file_loads(fixture):
    frame, spec = load_embeddings(fixture / "embeddings.parquet")
    assert len(frame) == 44 and frame["label"].notna().sum() == 42
    assert list(frame.columns[:5]) == ["path", "label", "sha256", "width", "height"]
    X, labels = embedding_matrix(frame, spec)
    assert X.shape == (44, 20) and spec.tap_names == ["add_2", "add_6"] and np.isfinite(X).all()


def test_the_run_folder_reads_and_its_models_predict_what_it_recorded(fixture):
    run = read_run(fixture / "run")
    assert [m.key for m in run.models] == ["lr", "xgb"] and run.best_model in ("lr", "xgb")
    frame, spec = load_embeddings(fixture / "embeddings.parquet")
    for model in run.models:
        recorded = model.predictions.set_index("path")
        rows = frame.set_index("path").loc[recorded.index].reset_index()
        rows.attrs["cellembed_spec"] = spec
        classes = list(run.classes)
        models = fixture / "run" / "models"
        for predictor in (load_classifier(models / f"{model.key}.skops", allow_version_mismatch=SCIKIT_LEARN_MAY_MOVE),
                          load_classifier(models / f"{model.key}.joblib", trust_pickle=True,
                                         allow_version_mismatch=SCIKIT_LEARN_MAY_MOVE)):
            proba = predictor.predict_proba(rows)
            expected = recorded[[f"proba_{name}" for name in classes]].to_numpy()
            np.testing.assert_allclose(proba, expected, atol=1e-6)


def test_the_safe_model_of_the_run_is_what_predict_loads(fixture):
    predictor = load_classifier(fixture / "run", allow_version_mismatch=SCIKIT_LEARN_MAY_MOVE)
    assert predictor.source.name == "model.skops" and predictor.family in ("lr", "xgb")
    metrics = json.loads((fixture / "run" / "metrics.json").read_text())
    assert predictor.family == metrics["best_model"]


def test_report_rewrites_the_page_of_the_run(fixture, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cellclf_main, ["report", str(fixture / "run"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000 and "alpha" in out.read_text(encoding="utf-8")


def test_fit_trains_on_the_embeddings_file(fixture, tmp_path):
    result = CliRunner().invoke(cellclf_main, [
        "fit", str(fixture / "embeddings.parquet"), "-o", str(tmp_path / "again"), "--models", "lr", "--cv", "2",
        "--no-shap", "--no-heatmaps", "--no-report", "-q"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "again" / "per_class.csv")["class"].tolist() == ["alpha", "beta", "gamma"]
