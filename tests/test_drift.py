"""The drift signal end to end: cellclf fit records a calibrated detector, predict writes
``novelty_p`` / ``unlike_training`` and warns when a batch is unlike the training images,
and a model fitted before the signal existed still predicts and says it has none."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellembed import extract
from cellclf.fitting import FitConfig, fit
from cellclf.persistence import load_classifier
from cellclf.prediction import PredictRequest, predict_run
from conftest import SMALL
from test_predict import tinted_folder

pytestmark = pytest.mark.slow  # embeds images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_weights):
    """A fit of 3 tinted classes x 100 images, 40% validation: about 120 validation scores,
    so a cell can be flagged at p < 0.01. (Noise images of one tint look alike to a random
    network: near-duplicate grouping would lump them, so the split keeps files apart.)"""
    root = tmp_path_factory.mktemp("drift")
    folder = tinted_folder(root / "images", {"red": 100, "blue": 100, "green": 100})
    extract(folder, root / "train.parquet", weights=random_weights, input_size=SMALL, preset="v1", progress=False)
    config = FitConfig.build(models=("lr",), shap=False, heatmaps=False, cv=2, lr_Cs="1", val_fraction=0.4,
                             test_fraction=0.1, near_duplicates="off")
    fit(root / "train.parquet", root / "run", config=config)
    return root / "run"


def _predict(tmp_path, run_dir, folder, weights, pages=None, **options):
    lines: list[str] = []
    options.setdefault("no_review", pages is None)
    request = PredictRequest(model=run_dir, images=(folder,), out=tmp_path / "p.csv", weights=str(weights),
                             progress=False, **options)
    result = predict_run(request, pages, tell=lines.append)
    return result, lines


def test_fit_records_a_calibrated_detector_in_the_safe_file(run_dir, tmp_path, random_weights):
    classifier = load_classifier(run_dir)
    detector = classifier.novelty
    m = len(detector.calibration_scores_)
    assert detector is not None and 110 <= m <= 130  # the validation split
    facts = classifier.summary["novelty"]
    assert facts["calibration_images"] == m and facts["smallest_p"] == pytest.approx(1 / (m + 1))
    pickled = load_classifier(run_dir / "model.joblib", trust_pickle=True)
    rows = np.random.default_rng(0).normal(0, 1, (5, classifier.spec.dim)).astype(np.float32)
    np.testing.assert_allclose(pickled.novelty_p(rows), classifier.novelty_p(rows))


def test_predict_writes_the_drift_columns_and_is_quiet_on_cells_like_the_training_ones(run_dir, tmp_path, random_weights):
    folder = tinted_folder(tmp_path / "same", {"red": 10, "blue": 10, "green": 10}, seed=5)
    result, lines = _predict(tmp_path, run_dir, folder, random_weights)
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"novelty_p", "unlike_training"} <= set(table.columns)
    assert table["novelty_p"].between(1 / 131, 1.0).all() and table["unlike_training"].sum() <= 2
    assert any("no sign of another lab" in line for line in lines), lines
    assert (table.loc[table["unlike_training"], "uncertain"]).all()
    # the level is the user's: at 0.5 about half of in-domain cells are under it, and all are uncertain
    _predict(tmp_path, run_dir, folder, random_weights, novelty_level=0.5, overwrite=True)
    table = pd.read_csv(tmp_path / "p.csv")
    assert (table["unlike_training"] == (table["novelty_p"] < 0.5)).all() and 5 <= table["unlike_training"].sum() <= 25
    assert table.loc[table["unlike_training"], "uncertain"].all()


def test_a_batch_unlike_the_training_images_fires_the_warning_and_its_cells_are_uncertain(run_dir, tmp_path,
                                                                                          random_weights):
    from cellclf.cli import _ReportPages

    folder = tinted_folder(tmp_path / "other", {"": 20}, seed=6)  # grey noise: no training tint
    result, lines = _predict(tmp_path, run_dir, folder, random_weights, _ReportPages(), fmt="json")
    page = result.outputs.review.read_text()
    assert 'class="warning"' in page and "unlike training" in page and "novelty p &lt; 0.01" in page
    document = json.loads((tmp_path / "p.csv").read_text())
    flagged = [entry for entry in document.values() if entry["unlike_training"]]
    assert len(flagged) >= 15 and all(entry["uncertain"] for entry in flagged)
    assert all(0 < entry["novelty_p"] < 0.01 for entry in flagged)
    warning = next(line for line in lines if line.startswith("warning: these images look unlike"))
    assert "of 20 cells" in warning and "adapt the model" in warning


def test_a_model_fitted_before_the_drift_signal_predicts_and_says_it_has_none(run_dir, tmp_path, random_weights):
    from cellclf.persistence import save

    classifier = load_classifier(run_dir)
    classifier.novelty_ = None  # what a model.skops of an earlier cellclf loads as
    (tmp_path / "old").mkdir()
    save(classifier, tmp_path / "old" / "model.joblib")
    folder = tinted_folder(tmp_path / "same", {"red": 3}, seed=7)
    result, lines = _predict(tmp_path, tmp_path / "old", folder, random_weights)
    table = pd.read_csv(tmp_path / "p.csv")
    assert "novelty_p" not in table.columns and len(table) == 3
    assert any(line.startswith("no drift signal: this model was fitted before cellclf had one") for line in lines)


def test_the_server_answers_the_drift_signal_per_cell_and_per_request(run_dir, random_weights):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from cellclf.serve import Service, create_app

    def png(tint, seed):
        pixels = (np.random.default_rng(seed).uniform(0, 255, (40, 44, 3)) * np.array(tint)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    def upload(tint):
        return [("files", (f"{i}.png", png(tint, 50 + i), "image/png")) for i in range(3)]

    service = Service(load_classifier(run_dir), random_weights)
    try:
        with TestClient(create_app(service)) as client:
            same = client.post("/predict", files=upload((1.0, 0.3, 0.3))).json()
            other = client.post("/predict", files=upload((0.6, 0.6, 0.6))).json()
            page = client.post("/", files=upload((0.6, 0.6, 0.6))).text
            single = client.post("/predict", content=png((0.6, 0.6, 0.6), 9), headers={"Content-Type": "image/png"})
    finally:
        service.close()
    assert all({"novelty_p", "unlike_training"} <= set(r) for r in same["results"] + other["results"])
    assert not same["drift"]["fires"] and not any(r["unlike_training"] for r in same["results"])
    assert other["drift"]["fires"] and other["drift"]["flagged"] == 3 and all(r["uncertain"] for r in other["results"])
    assert 0 <= same["drift"]["class_shift"] <= 1  # three red cells against a third of each colour: 2/3
    assert same["drift"]["class_shift"] == pytest.approx(2 / 3, abs=0.02) or not all(
        r["predicted"] == "red" for r in same["results"])
    assert 'class="warning"' in page and "look unlike the model&#x27;s training images" in page.replace("&#39;", "&#x27;")
    assert "unlike the training images" in page
    assert single.json()["unlike_training"] is True and "drift" not in single.json()
