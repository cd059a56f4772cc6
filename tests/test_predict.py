"""cellclf predict: classify a folder with a saved predictor, reuse the cache, score folders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cellembed import embedding_matrix, extract, load_embeddings
from cellclf.errors import ClassifierInputError
from cellclf.prediction import default_cache_for, predict_folder, write_predictions
from cellclf.estimator import CellClassifier
from cellclf.persistence import save, load_classifier
from conftest import SMALL


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)
TINTS = {"red": (1.0, 0.3, 0.3), "blue": (0.3, 0.3, 1.0), "green": (0.3, 1.0, 0.3)}


def tinted_folder(root, counts: dict[str, int], seed: int = 0):
    """Noise images tinted per class, so even random-weight embeddings separate them."""
    rng = np.random.default_rng(seed)
    for label, count in counts.items():
        tint = np.array(TINTS.get(label, (0.6, 0.6, 0.6)))
        folder = root / label if label else root
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = (rng.uniform(0, 255, (40, 44, 3)) * tint).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{label or 'loose'}_{seed}_{k}.png")
    return root


def tinted_predictor(root, counts: dict[str, int], weights, layers: str | None = None):
    """A logistic regression trained on the embeddings of a tinted folder made in ``root``:
    ``(predictor, folder, embeddings file)``."""
    folder = tinted_folder(root / "images", counts)
    train = root / "train.parquet"
    extract(folder, train, weights=weights, input_size=SMALL, layers=layers, progress=False)
    frame, spec = load_embeddings(train)
    X, labels = embedding_matrix(frame, spec)
    classes = sorted(set(labels))
    codes = np.array([classes.index(label) for label in labels])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X, codes)
    return CellClassifier.from_fitted(model, classes, spec, family="lr"), folder, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, random_weights):
    """A predictor trained on embeddings of a tinted training folder."""
    root = tmp_path_factory.mktemp("train")
    predictor, _, _ = tinted_predictor(root, {"red": 8, "blue": 8, "green": 8}, random_weights)
    path = root / "model.joblib"
    save(predictor, path)
    return load_classifier(path), path


def test_predicts_every_image_and_scores_known_folders(tmp_path, trained, random_weights):
    predictor, _ = trained
    folder = tinted_folder(tmp_path / "new", {"red": 3, "blue": 3, "green": 3, "mystery": 2, "": 1}, seed=1)
    (folder / "red" / "broken.png").write_bytes(b"not a png")
    run = predict_folder(predictor, folder, tmp_path / "cache.parquet", weights=random_weights,
                         min_confidence=0.9, progress=False)
    table = run.table
    assert len(table) == 13 and table["path"].is_monotonic_increasing
    assert list(table.columns) == ["path", "label", "predicted", "confidence",
                                   "proba_blue", "proba_green", "proba_red", "set", "set_size", "uncertain", "error"]
    ok = table[table["error"].isna()]
    proba = ok[["proba_blue", "proba_green", "proba_red"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert (ok["predicted"] == np.array(["blue", "green", "red"])[proba.argmax(axis=1)]).all()
    np.testing.assert_allclose(ok["confidence"], proba.max(axis=1))
    assert (ok["uncertain"] == (ok["confidence"] < 0.9)).all()
    # an uncalibrated model (fitted without cellclf fit) has no conformal sets: the top class
    assert (ok["set"] == ok["predicted"]).all() and (ok["set_size"] == 1).all()
    broken = table.set_index("path").loc["red/broken.png"]
    assert broken["error"].startswith("not an image") and pd.isna(broken["predicted"])

    assert run.unknown_folders == {"mystery": 2}
    scored = run.evaluation.scored
    assert sorted(scored["label"].unique()) == ["blue", "green", "red"] and len(scored) == 9
    assert run.evaluation.overall["accuracy"] == pytest.approx(accuracy_score(scored["label"], scored["predicted"]))
    assert run.evaluation.overall["macro_f1"] == pytest.approx(
        f1_score(scored["label"], scored["predicted"], average="macro")
    )
    assert run.evaluation.overall["accuracy"] >= 8 / 9  # tints are easy

    again = predict_folder(predictor, folder, tmp_path / "cache.parquet", weights=random_weights, progress=False)
    assert again.extraction.embedded == 0 and again.extraction.reused == 12
    pd.testing.assert_frame_equal(again.table.drop(columns=["uncertain"], errors="ignore"),
                                  table.drop(columns=["uncertain"]))


def test_json_format_and_unlabelled_folder(tmp_path, trained, random_weights):
    predictor, _ = trained
    folder = tinted_folder(tmp_path / "flat", {"": 3}, seed=2)
    run = predict_folder(predictor, folder, tmp_path / "c.parquet", weights=random_weights, progress=False)
    assert run.evaluation is None and run.unknown_folders == {}
    assert "label" not in run.table.columns
    out = write_predictions(run, tmp_path / "p.json", "json")
    document = json.loads(out.read_text())
    assert sorted(document) == sorted(run.table["path"])
    entry = document[run.table["path"][0]]
    assert set(entry["predictions"]) == {"blue", "green", "red"}
    assert entry["predicted"] == max(entry["predictions"], key=entry["predictions"].get)
    assert "label" not in entry and entry["set"] == [entry["predicted"]] and entry["uncertain"] is False
    assert sum(entry["predictions"].values()) == pytest.approx(1.0, abs=2e-6)  # each rounded to 6 places


def test_other_weights_are_refused_naming_both(tmp_path, trained):
    predictor, _ = trained
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not the training weights")  # refused by SHA-256, before any loading
    folder = tinted_folder(tmp_path / "x", {"red": 1})
    with pytest.raises(ClassifierInputError, match=r"other.weights.h5 .*not the ones this model was trained with"):
        predict_folder(predictor, folder, tmp_path / "c.parquet", weights=other, progress=False)
    assert not (tmp_path / "c.parquet").exists()


def test_a_folder_is_embedded_once_whatever_the_output(tmp_path, trained, random_weights):
    """Issue 24 §5: the default cache belongs to the folder and the model's spec, not to -o."""
    predictor, model_path = trained
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 1}, seed=4)
    cache = default_cache_for(folder, predictor.spec)
    assert cache.parent.parent == Path(os.environ["CELLEMBED_CACHE_DIR"]) and cache.name.startswith("new-")
    assert default_cache_for(tmp_path / "other" / "new", predictor.spec) != cache  # another folder, same name
    first = cli("predict", model_path, folder, "-o", tmp_path / "a.csv", "--weights", random_weights)
    assert first.exit_code == 0, first.output
    assert f"embeddings cached in {cache}" in first.output and "(3 embedded now, 0 from the cache)" in first.output
    second = cli("predict", model_path, folder, "-o", tmp_path / "elsewhere" / "b.csv", "--weights", random_weights)
    assert second.exit_code == 0 and "(0 embedded now, 3 from the cache)" in second.output
    assert not (tmp_path / "a.embeddings.parquet").exists()


def cli(*args):
    from click.testing import CliRunner

    from cellclf.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_predict_command_writes_outputs_and_exit_statuses(tmp_path, trained, random_weights):
    _, model_path = trained
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2, "green": 2, "mystery": 1}, seed=3)
    out = tmp_path / "out" / "predictions.json"
    common = ["--weights", random_weights, "-q"]
    result = cli("predict", model_path, folder, "-o", out, "--format", "json", "--min-confidence", "0.5",
                 "--report", tmp_path / "eval.html", *common)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "not scored" in result.output and "mystery (1)" in result.output
    document = json.loads(out.read_text())
    assert len(document) == 7 and all("uncertain" in entry for entry in document.values())
    assert default_cache_for(folder, trained[0].spec).exists()
    per_class = pd.read_csv(tmp_path / "out" / "predictions.per_class.csv")
    assert sorted(per_class["class"]) == ["blue", "green", "red"] and per_class["support"].sum() == 6
    html = (tmp_path / "eval.html").read_text()
    assert "<title>cellclf evaluation — model.joblib</title>" in html and "data:image/png;base64," in html
    for section in ("data", "models", "per-class", "confusion", "roc", "gallery"):
        assert f'<section id="{section}">' in html
    facts = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", html.split('id="facts-table"', 1)[1]))
    assert facts["scored (label is a model class)"] == "6"
    assert facts["not scored: folder is not a model class"] == "1"  # the mystery folder
    assert facts["images in the predictions table"] == "7"
    printed = re.search(r"accuracy ([0-9.]+) \(95% CI [0-9.]+-[0-9.]+\), macro-F1 ([0-9.]+) \((95% CI|no bootstrap)", result.output)
    assert f"accuracy {printed[1]}, macro-F1 {printed[2]}" in html  # the scores predict printed

    (folder / "red" / "zero.png").write_bytes(b"")
    csv_out = tmp_path / "p.csv"
    skipped = cli("predict", model_path, folder, "-o", csv_out, *common)
    assert skipped.exit_code == 3 and "zero.png" in skipped.output
    assert "red/zero.png" in set(pd.read_csv(csv_out)["path"])
    assert cli("predict", model_path, folder, "-o", csv_out, "--allow-skips", *common).exit_code == 0


def test_predict_and_report_refuse_bad_input_in_one_line(tmp_path, trained, random_weights):
    _, model_path = trained
    folder = tinted_folder(tmp_path / "imgs", {"red": 1})
    not_a_model = tmp_path / "model.joblib"
    not_a_model.write_text("hello")
    for result, fragment in [
        (cli("predict", not_a_model, folder, "-o", tmp_path / "p.csv"), "model.joblib"),
        (cli("predict", tmp_path / "missing.joblib", folder, "-o", tmp_path / "p.csv"), "missing.joblib"),
        (cli("predict", model_path, tmp_path / "nowhere", "-o", tmp_path / "p.csv", "--weights", random_weights, "-q"),
         "nowhere"),
        (cli("report", tmp_path / "imgs", "-o", tmp_path / "r.html"), "imgs"),
    ]:
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
    assert not (tmp_path / "p.csv").exists()


def test_report_on_a_folder_without_class_folders_is_refused_before_anything_is_written(tmp_path, trained, random_weights):
    _, model_path = trained
    flat = tinted_folder(tmp_path / "flat", {"": 2, "mystery": 1})
    out = tmp_path / "out" / "p.csv"
    result = cli("predict", model_path, flat, "-o", out, "--report", tmp_path / "r.html",
                 "--weights", random_weights, "-q")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--report needs images in sub-folders named like the model's classes" in lines[0]
    assert "its sub-folders are mystery" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.html").exists()


def test_fit_writes_the_report_unless_told_not_to(tmp_path):
    from test_clf_support import write_synthetic

    data = write_synthetic(tmp_path / "emb.parquet", counts={"a": 30, "b": 30, "c": 30})
    fast = ["--cv", "2", "--lr-c", "0.1", "--xgb-trials", "1", "--xgb-max-trees", "20", "--no-shap", "-q"]
    assert cli("fit", data, "-o", tmp_path / "run", *fast).exit_code == 0
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<title>cellclf report — run</title>" in report
    assert '<section id="per-class">' in report and '<table id="per-class-lr">' in report
    assert cli("fit", data, "-o", tmp_path / "run2", *fast, "--no-report").exit_code == 0
    assert not (tmp_path / "run2" / "report.html").exists()
    rerun = cli("report", tmp_path / "run2", "-o", tmp_path / "again.html")
    assert rerun.exit_code == 0 and (tmp_path / "again.html").stat().st_size > 10_000


def test_predict_adapt_reaches_the_model_and_says_what_it_needs(tmp_path, trained, random_weights):
    _, model_path = trained  # fitted without training statistics (as by an earlier cellclf)
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2}, seed=5)
    result = cli("predict", model_path, folder, "-o", tmp_path / "p.csv", "--weights", random_weights, "-q", "--adapt")
    assert result.exit_code == 2 and "re-run cellclf fit to use --adapt" in result.output, result.output
    assert not (tmp_path / "p.csv").exists()


def test_predict_with_a_cached_onnx_network_never_imports_tensorflow(tmp_path, trained, random_weights):
    """Resizing is NumPy and the converted network is ONNX: once the conversion is cached,
    predict runs with TensorFlow and Keras impossible to import (it used to resize with
    TensorFlow)."""
    import subprocess
    import sys

    predictor, path = trained
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2}, seed=3)
    predict_folder(predictor, folder, tmp_path / "warm.parquet", weights=random_weights, progress=False)  # converts
    script = ("import sys\nsys.modules['tensorflow'] = sys.modules['keras'] = None  # import fails\n"
              "from cellclf.cli import main\nmain(sys.argv[1:])\n")
    done = subprocess.run(
        [sys.executable, "-c", script, "predict", str(path), str(folder), "-o", str(tmp_path / "p.csv"),
         "--weights", str(random_weights), "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 4


def test_explain_and_serve_with_a_cached_onnx_network_never_import_tensorflow(tmp_path, trained, random_weights):
    """The heat maps come from the network that embeds (ONNX Runtime): explain, and the
    server with its heat maps, run with TensorFlow and Keras impossible to import (the maps
    used to come from a Keras model of their own)."""
    import subprocess
    import sys

    from cellclf.estimator import CellClassifier, feature_reference
    from cellclf.persistence import save

    predictor, _ = trained
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2}, seed=3)
    run = predict_folder(predictor, folder, tmp_path / "warm.parquet", weights=random_weights, progress=False)
    from cellclf.families.lr import make_lr

    frame, spec = load_embeddings(tmp_path / "warm.parquet")
    X, labels = embedding_matrix(frame, spec)
    classes = sorted(set(labels))
    fitted = make_lr(0.1).fit(X, [classes.index(label) for label in labels])  # the lr family's model
    model = tmp_path / "model" / "model.joblib"
    model.parent.mkdir()
    save(CellClassifier.from_fitted(fitted, classes, spec, family="lr", reference=feature_reference(X)), model)
    image = next((folder / "red").iterdir())
    script = (
        "import json, sys\nsys.modules['tensorflow'] = sys.modules['keras'] = None  # import fails\n"
        "from cellclf.cli import main\n"
        "model, folder, out, weights, image = sys.argv[1:]\n"
        "try:\n    main(['explain', model, folder, '-o', out, '--weights', weights, '-q'])\n"
        "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
        "from fastapi.testclient import TestClient\n"
        "from cellclf.persistence import load_classifier\n"
        "from cellclf.serve import Service, create_app\n"
        "service = Service(load_classifier(model), weights)\n"
        "with TestClient(create_app(service)) as client:\n"
        "    files = [('files', ('a.png', open(image, 'rb').read(), 'image/png'))]\n"
        "    answer = client.post('/predict', files=files).json()\n"
        "    page = client.post('/', files=files)\n"
        "service.close()\n"
        "print(json.dumps({'predicted': answer['results'][0]['predicted'],\n"
        "                  'page': page.status_code,\n"
        "                  'heat map': any(f'data:image/{kind};base64' in page.text for kind in ('png', 'jpeg')),\n"
        "                  'imported': [m for m in ('tensorflow', 'keras') if sys.modules.get(m) is not None]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(model.parent), str(folder), str(tmp_path / "maps"),
                           str(random_weights), str(image)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["page"] == 200 and facts["heat map"] is True and facts["imported"] == []
    assert facts["predicted"] in classes
    assert len(list((tmp_path / "maps").rglob("*.heatmap.json"))) == 4
    assert run.evaluation is not None


def test_predict_says_which_images_the_model_was_fitted_on(tmp_path):
    """Issue 24 §5: predicting the training folder scores recall, not accuracy on new
    cells; predict counts the images whose SHA-256 is a train or validation row of the run."""
    from cellclf.prediction import seen_in_fit
    from cellembed.shared.hashing import sha256_file

    folder = tinted_folder(tmp_path / "images", {"red": 3, "blue": 2})
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("*/*.png"))}
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.skops").write_bytes(b"")
    paths = sorted(files)
    pd.DataFrame({"path": paths, "sha256": [sha256_file(files[p]) for p in paths], "label": "x",
                  "split": ["train", "validation", "test", "train", "test"]}).to_csv(run / "split.csv", index=False)
    assert seen_in_fit(run, files) == (3, run / "split.csv")  # the test rows are not "seen"
    assert seen_in_fit(run / "model.skops", files) == (3, run / "split.csv")
    other = {"new.png": tinted_folder(tmp_path / "new", {"red": 1}) / "red" / "red_0_0.png"}
    other["new.png"].write_bytes(other["new.png"].read_bytes() + b"\0")  # another file
    assert seen_in_fit(run, other) is None
    (run / "split.csv").unlink()
    assert seen_in_fit(run, files) is None  # a model file alone: nothing to compare with
