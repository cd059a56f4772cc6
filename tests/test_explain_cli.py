"""`cellclf explain`: a heat map PNG and JSON per image, with predict's exit statuses and file care."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cellclf.cli import main as cellclf_main
from cellclf.families.lr import make_lr
from cellclf.estimator import CellClassifier, feature_reference
from cellclf.persistence import save
from cellembed import embedding_matrix, extract, load_embeddings
from conftest import SMALL
from test_predict import tinted_folder

pytestmark = pytest.mark.slow  # builds networks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, random_weights):
    """A run-like folder holding a logistic regression (with training statistics) of
    tinted images embedded with the default preset."""
    root = tmp_path_factory.mktemp("explain")
    folder = tinted_folder(root / "images", {"red": 6, "blue": 6, "green": 6})
    extract(folder, root / "train.parquet", weights=random_weights, input_size=SMALL, progress=False)
    frame, spec = load_embeddings(root / "train.parquet")
    X, labels = embedding_matrix(frame, spec)
    classes = sorted(set(labels))
    model = make_lr(0.1).fit(X, [classes.index(c) for c in labels])
    (root / "run").mkdir()
    save(CellClassifier.from_fitted(model, classes, spec, family="lr", reference=feature_reference(X)), root / "run" / "model.joblib")
    return root / "run"


def run(*args):
    return CliRunner().invoke(cellclf_main, ["explain", *map(str, args)])


def test_explains_a_folder_and_a_file_exactly_and_resumes(tmp_path, model_dir, random_weights):
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 1}, seed=3)
    single = tmp_path / "one$_$.png"  # "$" would be maths markup in a matplotlib title
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(single)
    out = tmp_path / "maps"
    result = run(model_dir, folder, single, "-o", out, "--weights", random_weights, "-q")
    assert result.exit_code == 0, result.output
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.heatmap.json"))
    assert names == ["new/blue/blue_3_0.png.heatmap.json", "new/red/red_3_0.png.heatmap.json",
                     "new/red/red_3_1.png.heatmap.json", "one$_$.png.heatmap.json"]
    record = json.loads((out / "one$_$.png.heatmap.json").read_text())
    assert record["exact"] is True and record["additivity_error"] < 1e-4
    assert set(record["probabilities"]) == {"blue", "green", "red"}
    assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)
    for c in record["logit"]:  # per-tap sums + baseline = logit, for every class
        assert abs(sum(record["tap_sums"][c].values()) + record["baseline"][c] - record["logit"][c]) < 1e-4
    assert set(record["taps"]) == {"add_2", "add_6", "add_10", "add_11"} and "middle" in record["taps"]["add_6"]
    # what decided the call: the contrast against the runner-up sums to the gap of their logits beyond the baselines'
    predicted, other = record["predicted"], record["runner_up"]
    gap = (record["logit"][predicted] - record["baseline"][predicted]) - (record["logit"][other] - record["baseline"][other])
    assert record["evidence"]["against"] == other and abs(record["evidence"]["margin"] - gap) < 1e-3
    assert 0 <= record["evidence"]["grid_corners"] <= 1
    with Image.open(out / "one$_$.png.heatmap.png") as png:
        assert png.size[0] > 600 and png.info.get("Software") == "cellclf explain"
    again = run(model_dir, folder, single, "-o", out, "--weights", random_weights, "-q")
    assert again.exit_code == 0 and "wrote 0 heat maps" in again.output and "(4 already there)" in again.output
    older = out / "new" / "blue" / "blue_3_0.png.heatmap.json"  # a picture of an older format is drawn again
    older.write_text(json.dumps({**json.loads(older.read_text()), "cellclf_explain": 1}))
    redrawn = run(model_dir, folder, single, "-o", out, "--weights", random_weights, "-q")
    assert "wrote 1 heat maps" in redrawn.output and json.loads(older.read_text())["cellclf_explain"] == 2
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(single)  # the same name, another image
    changed = run(model_dir, folder, single, "-o", out, "--weights", random_weights, "-q")
    assert changed.exit_code == 0 and "wrote 1 heat maps" in changed.output and "(3 already there)" in changed.output
    assert json.loads((out / "one$_$.png.heatmap.json").read_text())["image_sha256"] != record["image_sha256"]


def test_bad_inputs_exit_like_predict_and_foreign_files_are_kept(tmp_path, model_dir, random_weights):
    folder = tinted_folder(tmp_path / "new", {"red": 2}, seed=4)
    (folder / "red" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "maps"
    skipped = run(model_dir, folder, "-o", out, "--weights", random_weights, "-q")
    assert skipped.exit_code == 3 and "skipped red/broken.png:" in skipped.output, skipped.output
    assert len(list(out.rglob("*.heatmap.png"))) == 2
    assert run(model_dir, folder, "-o", out, "--weights", random_weights, "-q", "--allow-skips").exit_code == 0
    theirs = out / "red" / "red_4_0.png.heatmap.json"
    theirs.write_text("my notes")
    refused = run(model_dir, folder / "red" / "red_4_1.png", folder / "red" / "red_4_0.png", "-o", out / "red",
                  "--weights", random_weights, "-q")
    assert refused.exit_code == 2 and "was not written by cellclf; give another -o folder or --overwrite" in refused.output, refused.output
    assert theirs.read_text() == "my notes"
    inside = run(model_dir, folder, "-o", folder / "maps", "--weights", random_weights, "-q")
    assert inside.exit_code == 2 and "inside the images folder" in inside.output and not (folder / "maps").exists()
    missing = run(model_dir, tmp_path / "nothing.jpg", "-o", out, "-q")
    assert missing.exit_code == 2 and "nothing.jpg does not exist" in missing.output


def test_predict_writes_the_heatmaps_of_its_predictions(tmp_path, model_dir, random_weights):
    folder = tinted_folder(tmp_path / "new", {"red": 2, "green": 1}, seed=5)
    maps = tmp_path / "maps"
    args = ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "p.csv"), "--weights", str(random_weights), "-q"]
    result = CliRunner().invoke(cellclf_main, [*args, "--heatmaps", str(maps)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv")
    for row in table.itertuples():
        record = json.loads((maps / f"{row.path}.heatmap.json").read_text())
        assert record["predicted"] == row.predicted  # the same prediction, explained
        assert abs(record["probabilities"][row.predicted] - row.confidence) < 1e-3
    both = CliRunner().invoke(cellclf_main, [*args, "--heatmaps", str(maps), "--adapt"])
    assert both.exit_code == 2 and "--heatmaps" in both.output
