"""extract(): the Parquet contract, the cache semantics and skipped files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cellembed import embedding_matrix, extract, load_embedder, load_embeddings, read_images_root, read_spec
from cellembed.errors import InputError, Interrupted
from cellembed.shared.hashing import sha256_file
from cellembed.presets import PRESETS
from conftest import SMALL, make_folder, noise_image


pytestmark = pytest.mark.slow  # every test here builds a network (see pyproject.toml)

@pytest.fixture(scope="module")
def embedder(random_weights):
    """One small embedder of the default settings shared by the cache tests (building one takes seconds)."""
    return load_embedder(random_weights, SMALL)


def test_parquet_schema_and_spec_metadata(labelled_folder, tmp_path, random_weights):
    out = tmp_path / "emb.parquet"
    result = extract(labelled_folder, out, weights=random_weights, input_size=SMALL, progress=False)
    assert (result.rows, result.embedded, result.reused, result.errors) == (12, 12, 0, [])
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # atomic write keeps normal permissions
    schema = pq.read_schema(out)
    assert schema.field("path").type == pa.string() and schema.field("label").type == pa.string()
    assert schema.field("sha256").type == pa.string()
    assert schema.field("width").type == pa.int32() and schema.field("height").type == pa.int32()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 6416)
    spec = json.loads(schema.metadata[b"cellembed.spec"])
    assert spec["input_size"] == SMALL and spec["weights_sha256"] == sha256_file(random_weights)
    assert [(t["name"], t["offset"], t["width"]) for t in spec["taps"]] == [
        ("add_2", 0, 1456), ("add_6", 1456, 1456), ("add_10", 2912, 1456), ("add_11", 4368, 2048),
    ]  # each tap: its channel means, then their standard deviations
    # the default preset's choices, its precision auto resolved (fp32: the suite fixes it)
    assert {key: spec[key] for key in PRESETS["default"].choices} == {**PRESETS["default"].choices, "precision": "fp32"}
    for key in ("backbone", "pooling", "preprocessing", "resize", "color"):
        assert spec[key]
    assert set(spec["versions"]) == {"cellembed", "keras", "tensorflow", "onnxruntime"}  # the default engine
    assert read_images_root(out) == labelled_folder.resolve()

    table = pq.read_table(out)
    rows = table.drop_columns(["embedding"]).to_pylist()
    first = next(r for r in rows if r["path"] == "alpha/img_000.png")
    assert first["label"] == "alpha" and (first["width"], first["height"]) == (40, 36)
    assert first["sha256"] == sha256_file(labelled_folder / "alpha" / "img_000.png")
    assert [r["label"] for r in rows if "/" not in r["path"]] == [None, None]


def test_readable_with_pandas_and_duckdb_and_the_api(labelled_folder, tmp_path, embedder):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, embedder=embedder, progress=False)
    plain = pd.read_parquet(out)
    assert len(plain) == 12 and len(plain["embedding"].iloc[0]) == 6416
    [(count, dim)] = duckdb.sql(f"select count(*), max(len(embedding)) from '{out}' where label = 'beta'").fetchall()
    assert (count, dim) == (5, 6416)
    frame, spec = load_embeddings(out)
    X, labels = embedding_matrix(frame, spec)
    assert X.shape == (12, 6416) and X.dtype == np.float32
    assert sorted(set(labels) - {None}) == ["alpha", "beta"] and list(labels).count(None) == 2
    mid, _ = embedding_matrix(frame, spec, taps=["add_6", "add_2"])
    np.testing.assert_array_equal(mid, np.concatenate([X[:, 1456:2912], X[:, 0:1456]], axis=1))
    with pytest.raises(InputError, match="unknown tap add_99"):
        embedding_matrix(frame, spec, taps=["add_99"])


def test_cache_reuses_renamed_files_embeds_new_and_drops_removed(labelled_folder, tmp_path, embedder):
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, embedder=embedder, progress=False)
    before, spec = load_embeddings(out)
    vector_of = dict(zip(before["sha256"], before["embedding"]))

    (labelled_folder / "beta" / "img_005.png").rename(labelled_folder / "alpha" / "moved.png")
    (labelled_folder / "alpha" / "img_001.png").unlink()
    noise_image(100).save(labelled_folder / "beta" / "new.png")
    result = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert (result.embedded, result.reused, result.dropped, result.rows) == (1, 11, 1, 12)

    after, _ = load_embeddings(out)
    moved = after.set_index("path").loc["alpha/moved.png"]
    assert moved["label"] == "alpha"
    np.testing.assert_array_equal(moved["embedding"], vector_of[moved["sha256"]])
    assert "alpha/img_001.png" not in set(after["path"])
    assert "beta/new.png" in set(after["path"])

    again = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert (again.embedded, again.reused) == (0, 12)


def test_identical_files_are_embedded_once(tmp_path, embedder):
    folder = make_folder(tmp_path / "images", {"a": 3})
    shutil.copy(folder / "a" / "img_000.png", folder / "a" / "copy.png")
    result = extract(folder, tmp_path / "emb.parquet", embedder=embedder, progress=False)
    assert (result.rows, result.embedded) == (4, 3)
    frame, _ = load_embeddings(tmp_path / "emb.parquet")
    rows = frame.set_index("path")
    np.testing.assert_array_equal(rows.loc["a/copy.png", "embedding"], rows.loc["a/img_000.png", "embedding"])


def test_a_different_spec_is_refused_unless_overwrite(labelled_folder, tmp_path, embedder, random_weights):
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, embedder=embedder, progress=False)
    original = out.read_bytes()
    with pytest.raises(InputError, match=r"input_size: 80 vs 71.*--overwrite"):
        extract(labelled_folder, out, weights=random_weights, input_size=80, progress=False)
    with pytest.raises(InputError, match="taps: block14_sepconv2_act vs add_2,add_6"):
        extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    assert out.read_bytes() == original
    result = extract(labelled_folder, out, weights=random_weights, input_size=SMALL,
                     layers="final", overwrite=True, progress=False)
    assert result.embedded == 12 and read_spec(out).dim == 4096  # the last layer's 2,048 means and stds


def test_a_file_not_written_by_cellembed_is_not_replaced(labelled_folder, tmp_path, embedder):
    out = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), out)
    original = out.read_bytes()
    for overwrite in (False, True):  # never, and no advice to: it is not a file cellembed wrote
        with pytest.raises(InputError, match="not a cellembed embeddings file.*cellembed did not write it") as refused:
            extract(labelled_folder, out, embedder=embedder, overwrite=overwrite, progress=False)
        assert "--overwrite" not in str(refused.value)
        assert out.read_bytes() == original


def test_bad_files_are_skipped_recorded_and_not_retried(labelled_folder, tmp_path, embedder):
    (labelled_folder / "alpha" / "empty.jpg").write_bytes(b"")
    (labelled_folder / "beta" / "notes.png").write_text("not really a png")
    out = tmp_path / "emb.parquet"
    result = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert result.rows == 12 and result.embedded == 12
    assert [(e["path"], e["reason"]) for e in result.errors] == [
        ("alpha/empty.jpg", "empty file (0 bytes)"),
        ("beta/notes.png", "not an image file (format not recognised)"),
    ]
    errors_csv = pd.read_csv(tmp_path / "emb.errors.csv")
    assert list(errors_csv.columns) == ["path", "reason"]
    assert errors_csv["path"].tolist() == ["alpha/empty.jpg", "beta/notes.png"]
    again = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert again.embedded == 0 and len(again.errors) == 2
    (labelled_folder / "alpha" / "empty.jpg").unlink()
    (labelled_folder / "beta" / "notes.png").unlink()
    clean = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert clean.errors == [] and not (tmp_path / "emb.errors.csv").exists()


def test_finished_shards_of_an_interrupted_run_are_resumed(labelled_folder, tmp_path, embedder):
    """Shard files left by an interrupted run are used, not recomputed (in-process variant)."""
    from cellembed.plan import plan
    from cellembed.shards import ShardJob, embed_shard

    out = tmp_path / "emb.parquet"
    first = extract(labelled_folder, tmp_path / "full.parquet", embedder=embedder, progress=False)
    frame, _ = load_embeddings(first.out)
    work = plan(labelled_folder, out, embedder.spec, shard_size=5)
    job = ShardJob(embedder.spec, None, "onnxruntime", work.work_dir)
    done = embed_shard(work.shards[0], job, embedder=embedder)  # as an interrupted run leaves it
    assert done.rows == 5 and done.path.parent == tmp_path / "emb.checkpoint"
    assert embed_shard(work.shards[0], job, embedder=None).path == done.path  # idempotent: no network needed

    result = extract(labelled_folder, out, embedder=embedder, progress=False, checkpoint_every=3)
    assert (result.resumed, result.embedded, result.rows) == (5, 7, 12)
    assert not (tmp_path / "emb.checkpoint").exists()
    final, _ = load_embeddings(out)
    np.testing.assert_allclose(
        np.stack(final.sort_values("path")["embedding"]), np.stack(frame.sort_values("path")["embedding"]), atol=1e-5
    )


def test_overwrite_keeps_finished_shards_of_its_spec_and_checks_inputs_first(labelled_folder, tmp_path, embedder, random_weights):
    """An interrupted --overwrite run resumes with or without --overwrite; nothing is
    deleted before the inputs are checked; shards of another spec never block a run and
    are never deleted: they are set aside, and a run with their spec resumes from them."""
    from cellembed.plan import plan
    from cellembed.shards import ShardJob, embed_shard
    from cellembed.store import set_aside_folder

    final = tmp_path / "final.parquet"
    extract(labelled_folder, final, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    out = tmp_path / "emb.parquet"
    work = plan(labelled_folder, out, embedder.spec, shard_size=5)
    finished = embed_shard(work.shards[0], ShardJob(embedder.spec, None, "onnxruntime", work.work_dir), embedder=embedder)
    with pytest.raises(InputError, match="does not exist"):
        extract(tmp_path / "no-such-folder", out, embedder=embedder, overwrite=True, progress=False)
    assert finished.path.is_file()  # bad input: nothing deleted

    other = tmp_path / "emb.checkpoint" / "shard-other.parquet"
    shutil.copy(final, other)  # a finished shard of another spec ("final") in the work folder
    said = []
    result = extract(labelled_folder, out, embedder=embedder, progress=False, log=said.append)
    assert (result.resumed, result.embedded, result.rows, result.spec.dim) == (5, 7, 12, 6416)
    aside = set_aside_folder(out, read_spec(final))
    assert (aside / "shard-other.parquet").is_file() and not (tmp_path / "emb.checkpoint").exists()
    assert any(f"set aside 1 finished shard(s) of an interrupted run with another embedding spec in {aside.absolute()}" in m
               for m in said)

    result = extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final",
                     overwrite=True, progress=False)
    assert (result.resumed, result.embedded, result.rows, result.spec.dim) == (12, 0, 12, 4096)
    assert not aside.exists()


def test_an_unreadable_file_is_tried_again_and_a_broken_one_is_not(labelled_folder, tmp_path, embedder):
    from cellembed.merge import merge
    from cellembed.plan import plan
    from cellembed.shards import ShardJob, embed_shard

    (labelled_folder / "alpha" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "emb.parquet"
    work = plan(labelled_folder, out, embedder.spec)
    vanished = labelled_folder / "beta" / "img_007.png"
    kept = vanished.read_bytes()
    vanished.unlink()  # gone between hashing and reading, as on a flaky network share
    results = [embed_shard(shard, ShardJob(embedder.spec, None, "onnxruntime", work.work_dir), embedder=embedder)
               for shard in work.shards]
    merged = merge(work, results)
    reasons = {e["path"]: e for e in merged.errors}
    assert reasons["beta/img_007.png"]["reason"].startswith("cannot read file") and "sha256" not in reasons["beta/img_007.png"]
    assert reasons["alpha/broken.png"]["sha256"]  # known bad: not decoded again
    vanished.write_bytes(kept)
    again = extract(labelled_folder, out, embedder=embedder, progress=False)
    assert again.embedded == 1 and [e["path"] for e in again.errors] == ["alpha/broken.png"]


def test_shard_paths_are_absolute_whatever_the_working_folder(labelled_folder, tmp_path, embedder, monkeypatch):
    from cellembed.plan import plan

    monkeypatch.chdir(labelled_folder.parent)
    work = plan(labelled_folder.name, "emb.parquet", embedder.spec)
    assert work.work_dir.is_absolute() and work.work_dir == tmp_path / "emb.checkpoint"
    assert all(Path(item.absolute).is_absolute() and Path(item.absolute).is_file() for s in work.shards for item in s.items)


def test_ctrl_c_says_how_far_it_got_even_without_a_progress_bar(labelled_folder, tmp_path, embedder, monkeypatch):
    import cellembed.distributors.sequential as sequential

    real, calls = sequential.embed_shard, []

    def interrupted_on_the_second_shard(shard, job, **kwargs):
        calls.append(shard.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(shard, job, **kwargs)

    monkeypatch.setattr(sequential, "embed_shard", interrupted_on_the_second_shard)
    with pytest.raises(Interrupted, match=r"interrupted after 4 of 12 images; .*emb.checkpoint; run the same command again"):
        extract(labelled_folder, tmp_path / "emb.parquet", embedder=embedder, checkpoint_every=4, progress=False)
    assert len(list((tmp_path / "emb.checkpoint").glob("shard-*.parquet"))) == 1


def test_a_run_with_nothing_to_embed_writes_the_whole_spec_without_loading_a_network(tmp_path, random_weights,
                                                                                     monkeypatch):
    """The spec's tap widths come from the backbone's configuration: a folder whose only
    files cannot be read still gets an OUT of the right width, and no network is loaded."""
    import cellembed.network

    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")

    def no_network(*args, **kwargs):
        raise AssertionError("a network was loaded")

    monkeypatch.setattr(cellembed.network.Network, "__init__", no_network)
    out = tmp_path / "emb.parquet"
    result = extract(tmp_path / "images", out, weights=random_weights, input_size=SMALL, progress=False)
    assert (result.rows, result.embedded, len(result.errors)) == (0, 0, 1)
    spec = read_spec(out)
    assert spec.dim == result.spec.dim == 6416 and [t.width for t in spec.taps] == [1456, 1456, 1456, 2048]
