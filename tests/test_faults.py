"""The hostile-input probe of issue 9, as tests: outputs predict must not overwrite, the
add-only cache, interrupted runs of another spec, a full disk, a damaged file, concurrent
runs and CSV injection. Each test ran and failed before its fix.

The commands run in-process (click's CliRunner) on tiny tinted images with random weights,
so the whole file takes well under a minute after the network is built once.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from cellembed import extract, load_embeddings
from cellembed.cli import main as cellembed_main
from cellclf.cli import main as cellclf_main
from cellclf.persistence import save
from conftest import SMALL, held_by_another_process
from test_predict import tinted_folder, tinted_predictor

pytestmark = pytest.mark.slow  # builds a (small, random) network


def run(main, *args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, random_weights):
    """A training folder's embeddings file and a model (model.joblib + model.skops)."""
    root = tmp_path_factory.mktemp("train")
    predictor, _, train = tinted_predictor(root, {"red": 6, "blue": 6}, random_weights, layers="final")
    path = root / "run" / "model.joblib"
    path.parent.mkdir()
    save(predictor, path)
    return root, train, path


@pytest.fixture
def workspace(tmp_path, trained):
    """A private copy of the training file (tests change it) and a new folder to classify."""
    root, train, model = trained
    copy = tmp_path / "train.parquet"
    shutil.copy(train, copy)
    new = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2}, seed=7)
    return copy, model, new


def predict(model, images, out, weights, *extra):
    return run(cellclf_main, "predict", model, images, "-o", out, "--weights", weights, "-q", *extra)


# -- 2. predict overwrites files it did not write ------------------------------------------

def test_predict_refuses_to_replace_a_file_it_did_not_write(workspace, random_weights, tmp_path):
    train, model, new = workspace
    before = train.read_bytes()
    error = one_line_error(predict(model, new, train, random_weights), 2)
    assert f"{train} exists and is not a file cellclf predict wrote" in error and "--overwrite" in error
    assert train.read_bytes() == before

    notes = tmp_path / "notes.csv"
    notes.write_text("patient,comment\n1,keep me\n")
    one_line_error(predict(model, new, notes, random_weights), 2)
    assert notes.read_text() == "patient,comment\n1,keep me\n"
    assert predict(model, new, notes, random_weights, "--overwrite").exit_code == 0
    assert pd.read_csv(notes)["predicted"].notna().all()

    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>a page of the lab's wiki</body></html>")
    error = one_line_error(predict(model, new, tmp_path / "p.csv", random_weights, "--report", page), 2)
    assert f"{page} exists and is not a file cellclf predict wrote" in error and "--report" in error
    report = tmp_path / "report.html"
    for _ in range(2):  # its own report is replaced
        result = predict(model, new, tmp_path / "p.csv", random_weights, "--report", report)
        assert result.exit_code == 0, result.output


def test_predict_replaces_its_own_predictions(workspace, random_weights, tmp_path):
    train, model, new = workspace
    for fmt in ("csv", "json"):
        out = tmp_path / f"predictions.{fmt}"
        for _ in range(2):  # the second run replaces the file the first one wrote
            result = predict(model, new, out, random_weights, "--format", fmt)
            assert result.exit_code == 0, result.output


def test_predict_never_writes_inside_the_images_folder(workspace, random_weights):
    train, model, new = workspace
    image = new / "red" / "red_7_0.png"
    before = image.read_bytes()
    for args in ((image,), (new / "predictions.csv",), (new.parent / "p.csv", "--cache", new / "c.parquet"),
                 (new.parent / "p.csv", "--report", new / "red" / "r.html")):
        error = one_line_error(predict(model, new, *args[:1], random_weights, *args[1:], "--overwrite"), 2)
        assert "is inside the images folder" in error
    assert image.read_bytes() == before
    assert sorted(p.name for p in new.rglob("*") if p.is_file()) == sorted(
        ["red_7_0.png", "red_7_1.png", "blue_7_0.png", "blue_7_1.png"])


def test_the_cache_is_add_only(workspace, random_weights, tmp_path):
    """--cache train.parquet on another folder used to cut the training file to that folder."""
    train, model, new = workspace
    trained_rows = load_embeddings(train)[0]
    out = tmp_path / "predictions.csv"
    result = predict(model, new, out, random_weights, "--cache", train)
    assert result.exit_code == 0, result.output
    cache = load_embeddings(train)[0]
    assert len(cache) == len(trained_rows) + 4
    kept = cache[cache["sha256"].isin(trained_rows["sha256"])].sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.drop(columns="embedding"), trained_rows.drop(columns="embedding"))
    np.testing.assert_array_equal(np.stack(kept["embedding"]), np.stack(trained_rows["embedding"]))
    predictions = pd.read_csv(out)
    assert sorted(predictions["path"]) == sorted(p.relative_to(new).as_posix() for p in new.rglob("*.png"))

    # Again: every image is in the cache now, nothing is added or dropped.
    result = predict(model, new, out, random_weights, "--cache", train)
    assert result.exit_code == 0 and len(load_embeddings(train)[0]) == len(cache)
    assert "0 embedded now, 4 from the cache" in result.output


# -- 3. an interrupted run with another spec ----------------------------------------------

def test_a_checkpoint_of_another_spec_is_set_aside_and_resumed_later(tmp_path, random_weights):
    """An interrupted extract --overwrite (spec B over an OUT of spec A) left a checkpoint
    that blocked the original spec; now it is set aside, and resumed by a run with spec B."""
    from cellembed.plan import plan
    from cellembed.shards import ShardJob, embed_shard
    from cellembed.embedder import spec_for_settings

    images = tinted_folder(tmp_path / "images", {"red": 3, "blue": 3})
    out = tmp_path / "emb.parquet"
    common = ("--weights", random_weights, "--input-size", SMALL, "--engine", "tensorflow")
    assert run(cellembed_main, "extract", images, "-o", out, "--layers", "final", *common).exit_code == 0
    spec_b, weights = spec_for_settings(layers="add_3", weights=random_weights, input_size=SMALL, engine="tensorflow")
    work = plan(images, out, spec_b, overwrite=True, shard_size=4)
    embed_shard(work.shards[0], ShardJob(spec_b, weights, "tensorflow", work.work_dir))  # then Ctrl-C

    again = run(cellembed_main, "extract", images, "-o", out, "--layers", "final", *common)
    assert again.exit_code == 0, again.output
    assert "set aside 1 finished shard(s) of an interrupted run with another embedding spec" in again.output
    resumed = run(cellembed_main, "extract", images, "-o", out, "--layers", "add_3", "--overwrite", *common)
    assert resumed.exit_code == 0, resumed.output
    assert "reused 4 cached (4 from an interrupted run)" in resumed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "images"]  # nothing left behind


# -- 6. a full disk, a damaged file --------------------------------------------------------

def test_a_full_disk_while_out_is_written_keeps_the_embeddings(tmp_path, random_weights, monkeypatch):
    import cellembed.store

    images = tinted_folder(tmp_path / "images", {"red": 3, "blue": 3})
    out = tmp_path / "emb.parquet"
    real_write = cellembed.store.pq.write_table

    def full_disk(table, where, **kwargs):
        if Path(where).name.startswith(".emb.parquet."):  # OUT's temporary file, not a shard
            Path(where).write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(cellembed.store.pq, "write_table", full_disk)
    args = ("extract", images, "-o", out, "--weights", random_weights, "--input-size", SMALL, "--layers", "final",
            )
    error = one_line_error(run(cellembed_main, *args), 1)
    assert f"the disk is full while writing {out}" in error and "MB are free in" in error
    assert "the embeddings computed so far are kept in" in error
    assert not out.exists() and not list(tmp_path.glob(".emb.parquet.*"))
    monkeypatch.setattr(cellembed.store.pq, "write_table", real_write)
    again = run(cellembed_main, *args)
    assert again.exit_code == 0 and "embedded 0" in again.output and "(6 from an interrupted run)" in again.output


def damage(path: Path) -> None:
    """Overwrite bytes in the middle of the data pages, leaving the footer intact."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    start, stop = 8, len(data) - footer
    data[start + (stop - start) // 3: start + 2 * (stop - start) // 3] = b"\xff" * ((stop - start) // 3)
    path.write_bytes(bytes(data))
    pq.read_schema(path)  # the footer still reads


def test_a_damaged_out_is_a_one_line_error_and_overwrite_recreates_it(tmp_path, random_weights):
    images = tinted_folder(tmp_path / "images", {"red": 3, "blue": 3})
    out = tmp_path / "emb.parquet"
    args = ("extract", images, "-o", out, "--weights", random_weights, "--input-size", SMALL, "--layers", "final",
            )
    assert run(cellembed_main, *args).exit_code == 0
    damage(out)
    tinted_folder(images, {"red": 1}, seed=3)  # one new image: OUT's rows must be read
    error = one_line_error(run(cellembed_main, *args), 2)
    assert f"{out} is damaged" in error and "--overwrite" in error
    result = run(cellembed_main, *args, "--overwrite")
    assert result.exit_code == 0 and len(load_embeddings(out)[0]) == 7


# -- 9. concurrent runs, advice, CSV injection ---------------------------------------------

def test_a_second_run_writing_the_same_output_is_refused(workspace, random_weights, tmp_path):
    train, model, new = workspace
    out = tmp_path / "emb.parquet"
    predictions = tmp_path / "p.csv"
    for target in (out, predictions):
        holder = held_by_another_process(target)
        try:
            if target == out:
                result = run(cellembed_main, "extract", new, "-o", out, "--weights", random_weights, "--input-size", SMALL)
            else:
                result = predict(model, new, predictions, random_weights)
            error = one_line_error(result, 2)
            assert f"another run (pid {holder.pid}) is writing {target} now" in error and not target.exists()
        finally:
            holder.kill()
            holder.wait()
    assert predict(model, new, predictions, random_weights).exit_code == 0  # the lock died with its process
    assert not list(tmp_path.glob(".p.csv.lock"))


def test_a_cache_of_another_spec_names_only_predict_options(workspace, random_weights, tmp_path):
    train, model, new = workspace
    other = tmp_path / "other.parquet"
    extract(new, other, weights=random_weights, input_size=SMALL, layers="add_3", progress=False)
    error = one_line_error(predict(model, new, tmp_path / "p.csv", random_weights, "--cache", other), 2)
    assert "another embedding spec" in error and "--cache" in error and "--overwrite" not in error


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(workspace, random_weights, tmp_path):
    train, model, new = workspace
    hostile = new / "=HYPERLINK(1)"
    hostile.mkdir()
    shutil.copy(new / "red" / "red_7_0.png", hostile / "@SUM(1).png")
    shutil.copy(new / "red" / "red_7_0.png", new / "red" / "-1+2.png")
    out = tmp_path / "p.csv"
    result = predict(model, new, out, random_weights)
    assert result.exit_code == 0, result.output
    cells = [cell for line in out.read_text().splitlines() for cell in line.split(",")]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    table = pd.read_csv(out)
    assert "'=HYPERLINK(1)/@SUM(1).png" in set(table["path"]) and "'=HYPERLINK(1)" in set(table["label"])
    assert "red/-1+2.png" in set(table["path"])  # only a leading formula character is neutralised


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs (needs root and mount rights; skipped where the machine lacks them)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk fault is covered by the test above")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_keeps_the_shards_and_the_rerun_finishes(tmp_path, small_disk, random_weights):
    """The shards (about 170 KB) fit on the disk, OUT beside them does not."""
    import subprocess

    images = tinted_folder(tmp_path / "images", {"red": 11, "blue": 11})
    out = small_disk / "emb.parquet"
    args = ("extract", images, "-o", out, "--weights", random_weights, "--input-size", SMALL, "--layers", "final",
            "--pooling", "global_average")  # 2,048 floats per image: the sizes above
    error = one_line_error(run(cellembed_main, *args), 1)
    assert f"the disk is full while writing {out}" in error and f"are free in {small_disk}" in error
    assert sorted(p.name for p in small_disk.iterdir()) == ["emb.checkpoint"]  # no OUT, no temporary file
    assert len(list((small_disk / "emb.checkpoint").glob("shard-*.parquet"))) == 1
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)  # space freed
    again = run(cellembed_main, *args)
    assert again.exit_code == 0 and "embedded 0" in again.output and "(22 from an interrupted run)" in again.output
    assert len(load_embeddings(out)[0]) == 22


def test_an_add_only_cache_keeps_its_error_list_its_labels_and_other_runs_shards(workspace, random_weights, tmp_path):
    """Found by review: predict on another folder deleted the cache's errors.csv, deleted
    the finished shards of an interrupted extract into the cache, and stored its folder's
    sub-folders as labels of the training file."""
    from cellembed.plan import plan
    from cellembed.shards import ShardJob, embed_shard
    from cellembed.store import read_spec

    train, model, new = workspace
    labelled = tinted_folder(tmp_path / "labelled", {"red": 2, "blue": 2}, seed=11)
    (labelled / "red" / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "cache.parquet"
    result = extract(labelled, cache, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    assert len(result.errors) == 1 and cache.with_name("cache.errors.csv").is_file()
    more = tinted_folder(tmp_path / "more", {"red": 3}, seed=12)  # an extract into the cache, interrupted
    work = plan(more, cache, read_spec(cache), shard_size=2)
    shard = embed_shard(work.shards[0], ShardJob(work.spec, None, "tensorflow", work.work_dir),
                        embedder=__import__("cellembed").embedder_from_spec(work.spec, random_weights, "tensorflow"))

    inbox = tinted_folder(tmp_path / "inbox", {"todo": 2}, seed=13)
    assert predict(model, inbox, tmp_path / "p.csv", random_weights, "--cache", cache).exit_code == 0
    assert "broken.png" in cache.with_name("cache.errors.csv").read_text()
    assert shard.path.is_file()
    frame = load_embeddings(cache)[0]
    assert set(frame["label"].dropna()) == {"red", "blue"} and frame["label"].isna().sum() == 2


def test_outputs_are_probed_before_work_and_must_be_distinct(workspace, random_weights, tmp_path):
    train, model, new = workspace
    error = one_line_error(predict(model, new, tmp_path / "p.csv", random_weights, "--report", "/proc/r.html"), 2)
    assert "--report /proc/r.html" in error and "not writable" in error and not (tmp_path / "p.csv").exists()
    error = one_line_error(predict(model, new, tmp_path / "p.csv", random_weights, "--cache", "/proc/c.parquet"), 2)
    assert "--cache /proc/c.parquet" in error
    same = tmp_path / "same.parquet"
    error = one_line_error(predict(model, new, same, random_weights, "--cache", same), 2)
    assert "are the same file" in error and not same.exists()


def test_predict_on_a_folder_with_non_utf8_names_writes_every_output(workspace, random_weights, tmp_path):
    """Item 1 through predict: a Latin-1 folder and file name reach the CSV as \\xNN keys,
    and the report page (which shows the folder) is written."""
    import os

    train, model, new = workspace
    folder = Path(os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"lab\xe9")))
    shutil.copytree(new, folder)
    shutil.copy(new / "red" / "red_7_0.png", os.path.join(os.fsencode(str(folder / "red")), b"latin\xe9.png"))
    out, report = tmp_path / "p.csv", tmp_path / "r.html"
    result = predict(model, folder, out, random_weights, "--report", report)
    assert result.exit_code == 0, result.output
    assert "red/latin\\xe9.png" in set(pd.read_csv(out, encoding="utf-8")["path"])
    assert "lab\\xe9" in report.read_text(encoding="utf-8")


def test_predict_has_the_pixel_cap_of_extract(workspace, random_weights, tmp_path):
    """Item 7 through predict: an image over --max-pixels is an error row (exit 3)."""
    train, model, new = workspace
    Image.fromarray(np.full((90, 80, 3), 200, np.uint8)).save(new / "red" / "large.png")
    out = tmp_path / "p.csv"
    result = predict(model, new, out, random_weights, "--max-pixels", 5000)
    assert result.exit_code == 3, result.output
    table = pd.read_csv(out).set_index("path")
    assert "more than --max-pixels 5000" in table.loc["red/large.png", "error"]
    assert table.drop(index="red/large.png")["predicted"].notna().all()
