"""The second hostile-input probe (issue 20), as tests: each failed before its fix.

1. extract -o one of its own input images; no --overwrite advice for a file extract did not write.
2. fit on a full disk: one line, the trained models kept, the same command finishes.
3. one huge finite embedding value: a one-line error, as NaN and infinity get.
4. serve: the memory of uploads in flight is bounded (503 with Retry-After when full).
6. every message names only options of the command that prints it.
7. --adapt counts distinct images and refuses a folder whose spread is degenerate.
8. rows of two specs joined by hand into one file are refused.
9. long fit steps show progress; library warnings are not spilled.

The commands run in-process (click's CliRunner) on tiny tinted images with random weights,
or on synthetic embeddings.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cellembed import extract, load_embeddings
from cellembed.cli import main as cellembed_main
from cellembed.errors import InputError
from cellclf.cli import main as cellclf_main
from cellclf.persistence import save, load_classifier
from conftest import SMALL
from test_clf_support import make_spec, write_synthetic
from test_faults import one_line_error, predict, run, small_disk, trained, workspace  # noqa: F401 - fixtures
from test_predict import tinted_folder
from test_serve import served_model  # noqa: F401 - fixture
from test_explain_cli import model_dir  # noqa: F401 - fixture of served_model
from click.testing import CliRunner


def options_of(main: click.Group, command: str) -> set[str]:
    """Every flag of ``main``'s ``command`` (and --help)."""
    params = main.commands[command].params
    return {opt for param in params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}


def named_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))


def assert_names_only_own_options(main: click.Group, command: str, output: str) -> None:
    foreign = named_options(output) - options_of(main, command)
    assert not foreign, f"{command} names options it does not have: {sorted(foreign)} in {output!r}"


# -- 1. extract -o inside its images folder; no --overwrite for a file it did not write --------


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_extract_refuses_an_output_inside_the_images_folder(tmp_path, random_weights, overwrite):
    images = tinted_folder(tmp_path / "images", {"red": 2, "blue": 2})
    victim = next((images / "red").iterdir())
    original = victim.read_bytes()
    for out in (victim, images / "embeddings.parquet", images / "red" / "new.parquet"):
        result = run(cellembed_main, "extract", images, "-o", out, "--weights", random_weights,
                     "--input-size", SMALL, *(["--overwrite"] if overwrite else []))
        error = one_line_error(result, 2)
        assert "inside the images folder" in error and "--overwrite" not in error, error
        assert_names_only_own_options(cellembed_main, "extract", result.output)
        assert not out.with_name(out.stem + ".checkpoint").exists()
    assert victim.read_bytes() == original
    assert sorted(p.name for p in images.rglob("*") if p.is_file()) == sorted(
        p.name for p in images.rglob("*.png"))  # nothing written inside


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 a JPEG, not Parquet", None])
def test_extract_never_replaces_a_file_it_did_not_write_nor_advises_overwrite(tmp_path, random_weights, content):
    images = tinted_folder(tmp_path / "images", {"red": 2, "blue": 2})
    out = tmp_path / "notes.parquet"
    if content is None:  # a Parquet file of someone else's
        pq.write_table(pa.table({"x": [1, 2]}), out)
    else:
        out.write_bytes(content)
    original = out.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = run(cellembed_main, "extract", images, "-o", out, "--weights", random_weights, "--input-size", SMALL, *extra)
        error = one_line_error(result, 2)
        assert "refusing to replace it: cellembed did not write it" in error and "--overwrite" not in error, error
        assert out.read_bytes() == original


# -- 6. messages name only the options of the command that prints them ----------------------


@pytest.mark.slow
def test_predict_with_a_cache_of_another_preset_names_only_its_own_options(tmp_path, random_weights, workspace):
    train, model, new = workspace
    cache = tmp_path / "v1.parquet"
    extract(new, cache, weights=random_weights, input_size=SMALL, preset="v1", progress=False)
    result = predict(model, new, tmp_path / "p.csv", random_weights, "--cache", cache)
    error = one_line_error(result, 2)
    assert "another embedding spec" in error and "--cache" in error, error
    assert_names_only_own_options(cellclf_main, "predict", result.output)
    # extract itself still says which preset the file was made with
    result = run(cellembed_main, "extract", new, "-o", cache, "--weights", random_weights, "--input-size", SMALL)
    error = one_line_error(result, 2)
    assert "--preset v1" in error and "--overwrite" in error, error
    assert_names_only_own_options(cellembed_main, "extract", result.output)


@pytest.mark.slow
def test_predict_with_a_foreign_cache_does_not_advise_deleting_it(tmp_path, random_weights, workspace):
    train, model, new = workspace
    cache = tmp_path / "theirs.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), cache)
    result = predict(model, new, tmp_path / "p.csv", random_weights, "--cache", cache)
    error = one_line_error(result, 2)
    assert "give another --cache file" in error and "delete" not in error, error
    assert_names_only_own_options(cellclf_main, "predict", result.output)


def test_every_option_cellembed_names_is_an_option_of_cellembed_extract():
    """Every ``--option`` in a string of cellembed's code (messages, help) is an option of
    ``cellembed extract``, the only cellembed command with options (cellclf's scan is in
    test_faults_fit); cellclf commands that reach those messages translate them (tested above)."""
    import cellembed
    from conftest import options_named_in_code

    options = options_of(cellembed_main, "extract") | {"--version"}
    named = options_named_in_code(cellembed)
    assert sorted((name, flag) for name, flag in named if flag not in options) == []


# -- 2. fit on a full disk: one line, the trained models kept, the same command finishes ------


def _fit_args(data: Path, run_dir: Path) -> list[str]:
    return ["fit", str(data), "-o", str(run_dir), "--models", "lr", "--cv", "3", "--lr-c", "0.1,1", "--no-report",
            "--no-heatmaps"]


@pytest.mark.parametrize("free_space_known", [True, False])
def test_fit_on_a_full_disk_keeps_the_trained_models_and_the_same_command_finishes(
        tmp_path, small_disk, monkeypatch, free_space_known):
    """The run (about 200 KB here) does not fit on a 64 KB disk: known before writing from the
    free space, or found when the disk fills up midway (free space not known)."""
    import subprocess

    import cellclf.rundir.writer
    from cellclf.checkpoint import FOLDER
    from cellembed.shared.cache import cache_dir

    subprocess.run(["mount", "-o", "remount,size=64k", str(small_disk)], check=True)
    if not free_space_known:
        monkeypatch.setattr(cellclf.rundir.writer, "_free_bytes", lambda folder: None)
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    run_dir = small_disk / "run"
    result = CliRunner().invoke(cellclf_main, _fit_args(data, run_dir))
    error = one_line_error(result, 1)
    assert f"the disk is full while writing {run_dir}" in error and "the run needs" in error, error
    assert f"MB are free in {small_disk}" in error and "the trained models are kept in" in error, error
    assert "Traceback" not in result.output and list(small_disk.iterdir()) == []  # no staging folder left
    [kept] = list((cache_dir() / FOLDER).iterdir())  # the rendered run, no pickle to load
    assert (kept / "manifest.json").is_file() and (kept / "models" / "lr.skops").is_file()
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
    again = CliRunner().invoke(cellclf_main, _fit_args(data, run_dir))
    assert again.exit_code == 0, again.output
    assert "resume" in again.output and "tune lr" not in again.output  # not trained again
    assert (run_dir / "model.skops").is_file() and (run_dir / "metrics.json").is_file()
    assert list((cache_dir() / FOLDER).iterdir()) == []  # the run holds them now
    fresh = CliRunner().invoke(cellclf_main, _fit_args(data, tmp_path / "fresh"))  # the same models as a fresh fit
    assert fresh.exit_code == 0 and "tune lr" in fresh.output
    resumed = pd.read_csv(run_dir / "predictions_test.csv")
    pd.testing.assert_frame_equal(resumed, pd.read_csv(tmp_path / "fresh" / "predictions_test.csv"))


def test_a_report_on_a_full_disk_says_the_run_is_complete(tmp_path, monkeypatch):
    import cellreports

    from cellembed.errors import DiskFull

    def full(record, path):
        raise DiskFull(f"the disk is full while writing {path} (...); advice", f"the disk is full while writing {path}")

    monkeypatch.setattr(cellreports, "write_run_report", full)
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    args = [a for a in _fit_args(data, tmp_path / "run") if a != "--no-report"]
    error = one_line_error(CliRunner().invoke(cellclf_main, args), 1)
    assert f"the run in {tmp_path / 'run'} is complete: write the report with cellclf report" in error, error
    assert (tmp_path / "run" / "model.skops").is_file()


# -- 3. one huge finite value is a one-line error, as NaN and infinity are -------------------


def _with_value(source: Path, target: Path, row: int, value: float) -> Path:
    table = pq.read_table(source)
    matrix = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    matrix[row, 3] = value
    column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), matrix.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"), column)
    pq.write_table(table, target)
    return target


@pytest.mark.parametrize("value", [3e38, -1e12, np.inf])
def test_a_huge_embedding_value_is_a_one_line_error_in_fit(tmp_path, value):
    data = _with_value(write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30}), tmp_path / "huge.parquet", 2,
                       value)
    result = CliRunner().invoke(cellclf_main, _fit_args(data, tmp_path / "run"))
    error = one_line_error(result, 2)
    assert "1 images have NaN, infinite or huge" in error and "a/img_0002.png" in error, error
    assert not (tmp_path / "run").exists()


def test_a_huge_embedding_value_is_refused_by_the_predictor():
    from cellclf.errors import ClassifierInputError
    from test_adapt import blobs

    model = _blob_predictor()
    X, _ = blobs(3, seed=2)
    X[1, 0] = 3e38
    with pytest.raises(ClassifierInputError, match="NaN, infinite or huge"):
        model.predict_proba(X)


# -- 4. serve bounds the memory of the uploads in flight --------------------------------------


@pytest.fixture
def budget_client(served_model, random_weights):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from cellclf.serve import ServeSettings, Service, create_app

    predictor, _ = served_model
    service = Service(predictor, random_weights, ServeSettings(max_upload_mb=0.05, max_batch=3, max_inflight_mb=0.1,
                                                               heatmaps=False))
    with TestClient(create_app(service)) as client:
        yield service, client
    service.close()


def test_serve_answers_503_with_retry_after_when_the_upload_budget_is_full(budget_client):
    from test_serve import png_bytes

    service, client = budget_client
    image = png_bytes(seed=3)
    raw = {"content": image, "headers": {"Content-Type": "image/png"}}
    assert client.post("/predict", **raw).status_code == 200
    assert service.budget.held == 0 and service.budget.requests == 0  # released once answered
    held = service.budget.limit - len(image) // 2
    service.budget.reserve(held)  # another request holds all but half an image of the budget
    try:
        busy = client.post("/predict", **raw)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2", busy.text
        assert "--max-inflight-mb 0.1" in busy.json()["detail"]
        page = client.post("/", files=[("files", ("a.png", image, "image/png"))])
        assert page.status_code == 503 and "retry" in page.text
        assert client.get("/health").json()["inflight_upload_mb"] == pytest.approx(0.1, abs=0.01)
    finally:
        service.budget.release(held)
    assert client.post("/predict", **raw).status_code == 200
    # one request larger than the whole budget can never fit: 413, not "retry"
    files = [("files", (f"{i}.bin", bytes(40_000) + image, "image/png")) for i in range(3)]
    big = client.post("/predict", files=files)
    assert big.status_code == 413 and "more than the server holds at once" in big.json()["detail"], big.text
    assert service.budget.held == 0


def test_concurrent_uploads_never_hold_more_than_the_budget(budget_client):
    from concurrent.futures import ThreadPoolExecutor

    from test_serve import png_bytes

    service, client = budget_client
    peaks = []
    reserve = service.budget.reserve

    def watched(size):
        reserve(size)
        peaks.append(service.budget.held)

    service.budget.reserve = watched
    image = png_bytes(seed=4) + bytes(30_000)  # still a PNG (trailing bytes are ignored), ~0.03 MB
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.post("/predict", content=image,
                                                       headers={"Content-Type": "image/png"}).status_code, range(16)))
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert max(peaks) <= service.budget.limit and service.budget.held == 0


def test_serve_refuses_a_budget_smaller_than_one_image():
    from cellclf.serve import ServeSettings
    from cellclf.errors import ClassifierInputError

    with pytest.raises(ClassifierInputError, match="--max-inflight-mb 5 is less than --max-upload-mb 20"):
        ServeSettings(max_inflight_mb=5)


# -- 7. --adapt counts distinct images and refuses a degenerate folder ------------------------


def _blob_predictor():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cellclf.estimator import CellClassifier, feature_reference
    from test_adapt import SPEC, blobs

    X, y = blobs(60, seed=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    return CellClassifier.from_fitted(model, ["a", "b", "c"], SPEC, family="lr", reference=feature_reference(X))


def test_adapt_counts_copies_of_one_image_once():
    from cellclf.errors import ClassifierInputError
    from test_adapt import blobs

    predictor = _blob_predictor()
    one_cell = np.repeat(blobs(1, seed=5)[0][:1], 25, axis=0)
    with pytest.raises(ClassifierInputError, match=r"at least 20 distinct images, got 1 \(25 files, copies counted once\)"):
        predictor.predict_proba(one_cell, adapt=True)


def test_adapt_refuses_near_copies_of_a_few_cells():
    from cellclf.errors import ClassifierInputError
    from test_adapt import blobs

    predictor = _blob_predictor()
    rng = np.random.default_rng(6)
    near = blobs(1, seed=7)[0][:1] + rng.normal(0, 0.01, (25, 6)).astype(np.float32)  # 25 re-encodings of one cell
    with pytest.raises(ClassifierInputError, match="nearly alike"):
        predictor.predict_proba(near, adapt=True)
    X, y = blobs(10, seed=8)  # 30 different cells of three kinds: adapted as before
    assert (predictor.predict_proba(X, adapt=True).argmax(1) == y).mean() > 0.8


@pytest.mark.slow
def test_predict_adapt_on_copies_of_one_cell_is_refused_before_embedding(tmp_path, random_weights, workspace):
    from cellembed import embedding_matrix
    from cellclf.estimator import CellClassifier, feature_reference

    train, model, new = workspace
    loaded = load_classifier(model)
    predictor = CellClassifier.from_fitted(  # with the training statistics fit records
        loaded.model, loaded.classes, loaded.spec, loaded.used_taps, family=loaded.family,
        reference=feature_reference(embedding_matrix(*load_embeddings(train))[0]), calibration=loaded.calibration)
    model = tmp_path / "model.joblib"
    save(predictor, model)
    folder = tmp_path / "copies"
    folder.mkdir()
    source = next((new / "red").iterdir())
    for i in range(20):
        shutil.copy(source, folder / f"copy_{i}.png")
    result = predict(model, folder, tmp_path / "p.csv", random_weights, "--adapt")
    error = one_line_error(result, 2)
    assert "distinct images, got 1 (20 files" in error, error
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.embeddings.parquet").exists()


# -- 8. rows of two specs joined by hand are refused ------------------------------------------


def _joined(tmp_path: Path) -> tuple[Path, Path]:
    import dataclasses

    first = write_synthetic(tmp_path / "a.parquet", counts={"a": 20, "b": 20})
    other = dataclasses.replace(make_spec(), stain="reinhard")  # same width, another spec
    second = write_synthetic(tmp_path / "b.parquet", counts={"a": 20, "b": 20}, spec=other, name_prefix="o")
    joined = pa.concat_tables([pq.read_table(first), pq.read_table(second)])  # keeps the first file's metadata
    pq.write_table(joined, tmp_path / "joined.parquet")
    return tmp_path / "joined.parquet", first


def test_rows_of_another_spec_joined_into_a_file_are_refused(tmp_path, random_weights):
    joined, first = _joined(tmp_path)
    assert pq.read_schema(joined).metadata == pq.read_schema(first).metadata
    result = CliRunner().invoke(cellclf_main, _fit_args(joined, tmp_path / "run"))
    error = one_line_error(result, 2)
    assert "40 of its 80 rows were embedded with another spec than the file's" in error, error
    info = CliRunner().invoke(cellembed_main, ["info", str(joined)])
    assert "40 of its 80 rows" in one_line_error(info, 2)
    with pytest.raises(InputError, match="40 of its 80 rows"):
        load_embeddings(joined)
    # a file of one spec, and its rows filtered by hand, still load
    assert len(load_embeddings(first)[0]) == 40
    pq.write_table(pq.read_table(first).slice(5, 10), tmp_path / "some.parquet")
    assert len(load_embeddings(tmp_path / "some.parquet")[0]) == 10


@pytest.mark.slow
def test_extract_never_extends_a_file_of_mixed_rows(tmp_path, random_weights):
    images = tinted_folder(tmp_path / "images", {"red": 2, "blue": 2})
    out = tmp_path / "emb.parquet"
    extract(images, out, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    table = pq.read_table(out)
    digests = table.column("spec_digest").to_pylist()
    forged = table.set_column(table.schema.get_field_index("spec_digest"), "spec_digest",
                              pa.array(digests[:-1] + ["0" * 16], pa.string()))
    pq.write_table(forged, out)
    original = out.read_bytes()
    args = ["extract", images, "-o", out, "--weights", random_weights, "--input-size", SMALL, "--layers", "final"]
    error = one_line_error(run(cellembed_main, *args), 2)
    assert "1 of its 4 rows were embedded with another spec" in error and "--overwrite" in error, error
    assert out.read_bytes() == original
    assert run(cellembed_main, *args, "--overwrite").exit_code == 0  # a file cellembed wrote: replaceable
    assert len(load_embeddings(out)[0]) == 4


# -- 9. long steps show progress; library warnings are one line each --------------------------


def test_a_fit_of_many_small_classes_shows_its_progress_and_no_raw_warnings(tmp_path):
    data = write_synthetic(tmp_path / "many.parquet", counts={f"c{i:03d}": 6 for i in range(120)},
                           spec=make_spec((("add_2", 24), ("add_6", 16))))
    result = CliRunner().invoke(cellclf_main, [
        "fit", str(data), "-o", str(tmp_path / "run"), "--cv", "2", "--val-fraction", "0.2", "--test-fraction", "0.2",
        "--xgb-trials", "2", "--xgb-max-trees", "5", "--no-heatmaps"])
    assert result.exit_code == 0, result.output
    stderr = result.stderr
    assert re.search(r"tune lr: +\d+%.*\| \d+/24 \[\d\d:\d\d<", stderr), stderr  # 12 settings x 2 folds, ETA
    assert re.search(r"tune xgb: +\d+%.*\| \d/2 \[", stderr), stderr  # how often it redraws depends on speed
    for raw in ("Warning:", "warnings.warn", "check_classification_targets", "PerformanceWarning", "UserWarning"):
        assert raw not in stderr, stderr
    warned = [line for line in result.stdout.splitlines() if line.startswith("warning")]
    assert len(warned) == len(set(warned)) and all(len(line) < 300 for line in warned), warned
    summary = [line for line in result.stdout.splitlines() if "fewer than 10 test images" in line]
    assert summary and all(line.endswith("and 112 more: too few to judge those classes") for line in summary), summary


def test_each_family_reports_every_step_of_its_search(tmp_path):
    """What the bars are fed, whatever the speed: every fold of the lr grid, every xgb
    trial, and the round of the running trial."""
    from cellclf.families.lr import tune_lr
    from cellclf.families.xgb import tune_xgb
    from cellclf.tuning import showing_progress

    class Recorder:
        def __init__(self, total, unit):
            self.total, self.unit, self.done, self.notes = total, unit, 0, []
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def set_postfix_str(self, text, refresh=True):
            self.notes.append(text)

        def close(self):
            self.closed = True

    bars: list[Recorder] = []
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (20, 6)) for c in (0.0, 2.0, 4.0)]).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    with showing_progress(Recorder):
        tune_lr(X, y, np.array([f"{i}" for i in range(60)]), Cs=(0.1, 1.0), cv=3, n_jobs=1)
        tune_xgb(X[::2], y[::2], X[1::2], y[1::2], trials=2, max_trees=7, early_stopping_rounds=50)
    lr, xgb = bars
    assert (lr.total, lr.unit, lr.done, lr.closed) == (12, "fit", 12, True)  # 2 C x 2 weights x 3 folds
    assert (xgb.total, xgb.unit, xgb.done, xgb.closed) == (2, "trial", 2, True)
    assert "trial 1: round 1" in xgb.notes and "trial 2: round 7" in xgb.notes, xgb.notes
    assert tune_lr(X, y, np.arange(60).astype(str), Cs=(0.1,), cv=3).best == 0  # no bar asked for: silent


def test_too_few_images_in_many_classes_is_a_short_line(tmp_path):
    data = write_synthetic(tmp_path / "many.parquet", counts={f"c{i:03d}": 6 for i in range(120)},
                           spec=make_spec((("add_2", 8),)))
    error = one_line_error(CliRunner().invoke(cellclf_main, ["fit", str(data), "-o", str(tmp_path / "run")]), 2)
    assert "'c007' has 6 and 112 more;" in error and len(error) < 400, error


@pytest.mark.slow
def test_the_stain_normalisation_warns_nothing_into_the_progress_bar(tmp_path, random_weights):
    """skimage's lab2rgb warned "negative Z values that have been clipped" into extract's bar
    for strongly coloured images; the conversion now stays in gamut, same pixels."""
    import warnings

    from PIL import Image

    from cellembed.stain import reinhard

    vivid = np.full((40, 40, 3), 128, np.uint8)  # grey: b* spread tiny, so the scaling blows up the
    vivid[:2, :2] = (255, 255, 0)                 # few yellow pixels past what XYZ holds (Z < 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalised = reinhard(vivid)
    assert normalised.shape == vivid.shape and normalised.dtype == np.uint8
    folder = tmp_path / "images" / "yellow"
    folder.mkdir(parents=True)
    Image.fromarray(vivid).save(folder / "vivid.png")
    result = run(cellembed_main, "extract", tmp_path / "images", "-o", tmp_path / "e.parquet", "--weights",
                 random_weights, "--input-size", SMALL, "--stain", "reinhard")
    assert result.exit_code == 0 and "Warning" not in result.output and "negative Z" not in result.output, result.output
