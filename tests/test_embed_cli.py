"""The `cellembed` command: exit statuses, one-line errors, kill and Ctrl-C resume, info."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cellembed import extract, load_embeddings
from cellembed.cli import main
from conftest import SMALL, interruptible, make_folder


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_texts_explain_the_commands():
    result = run("extract", "--help")
    assert result.exit_code == 0
    for words in ("Embed every image under IMAGES", "multiscale", "CELLEMBED_WEIGHTS", "default: 299", "Ctrl-C"):
        assert words in result.output
    assert "images per label" in run("info", "--help").output


@pytest.mark.slow
def test_usage_errors_exit_2_with_one_line_naming_the_culprit(tmp_path, labelled_folder, random_weights):
    w = ["--weights", random_weights, "--input-size", SMALL, "-q"]
    one_line_error(run("extract", tmp_path / "missing", "-o", tmp_path / "e.parquet", *w), "missing", "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(run("extract", tmp_path / "empty", "-o", tmp_path / "e.parquet", *w), "no images in", "empty")
    (tmp_path / "a_file").write_text("x")
    one_line_error(
        run("extract", labelled_folder, "-o", tmp_path / "a_file" / "e.parquet", *w), "a_file/e.parquet"
    )
    one_line_error(run("extract", labelled_folder, "-o", "/proc/e.parquet", *w), "/proc/e.parquet", "not writable")
    one_line_error(
        run("extract", labelled_folder, "-o", tmp_path / "e.parquet", "--weights", tmp_path / "nope.weights.h5"),
        "nope.weights.h5", "does not exist",
    )
    one_line_error(
        run("extract", labelled_folder, "-o", tmp_path / "e.parquet", *w, "--layers", "add_2,nonsense"),
        "nonsense", "valid layer names",
    )
    assert not (tmp_path / "e.parquet").exists()


@pytest.mark.slow
def test_skipped_files_exit_3_unless_allowed(tmp_path, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2})
    (folder / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["extract", folder, "-o", tmp_path / "e.parquet", "--weights", random_weights, "--input-size", SMALL, "-q"]
    result = run(*args)
    assert result.exit_code == 3, result.output
    assert "skipped 1 file(s)" in result.output and "a/broken.jpg" in result.output
    assert run(*args, "--allow-skips").exit_code == 0
    info = run("info", tmp_path / "e.parquet")
    assert info.exit_code == 0
    assert "images         2" in info.output and "per label      a 2" in info.output
    assert "errors         1 file(s)" in info.output and "a/broken.jpg" in info.output
    assert f"input {SMALL}x{SMALL}" in info.output and "add_6[1456:2912]" in info.output


def test_info_refuses_files_that_are_not_embeddings(tmp_path):
    one_line_error(run("info", tmp_path / "none.parquet"), "none.parquet", "does not exist")
    (tmp_path / "x.parquet").write_text("not parquet")
    one_line_error(run("info", tmp_path / "x.parquet"), "x.parquet", "not a readable Parquet file")


def _start_extract(folder, out, weights, *extra):
    command = [
        sys.executable, "-m", "cellembed", "extract", str(folder), "-o", str(out),
        "--weights", str(weights), "--input-size", "160", "--batch-size", "4",
        "--checkpoint-every", "8", *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def _wait_for_first_chunk(process, folder, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"extract finished before it could be interrupted: {process.communicate()}")
        if list(folder.glob("shard-*.parquet")):
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail("no checkpoint chunk appeared")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "Ctrl-C"])
def test_interrupted_run_resumes_and_never_corrupts_out(tmp_path, random_weights, how):
    folder = make_folder(tmp_path / "images", {"a": 10})
    out = tmp_path / "emb.parquet"
    extract(folder, out, weights=random_weights, input_size=160, progress=False)  # an existing OUT
    before = out.read_bytes()
    make_folder(folder, {"b": 150}, start_seed=500)

    process = _start_extract(folder, out, random_weights)
    _wait_for_first_chunk(process, tmp_path / "emb.checkpoint")
    process.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, stderr
        assert "run the same command again to resume" in stderr

    assert out.read_bytes() == before  # OUT untouched, still the previous complete file
    assert len(load_embeddings(out)[0]) == 10
    checkpointed = sum(len(load_embeddings(c)[0]) for c in (tmp_path / "emb.checkpoint").glob("shard-*.parquet"))
    assert checkpointed >= 8

    result = extract(folder, out, weights=random_weights, input_size=160, progress=False)
    assert result.resumed == checkpointed
    assert result.embedded == 150 - checkpointed
    assert result.rows == 160 and result.reused == 10 + checkpointed
    assert not (tmp_path / "emb.checkpoint").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_while_converting_the_network_exits_130_and_caches_nothing(tmp_path, random_weights, monkeypatch):
    folder = make_folder(tmp_path / "images", {"a": 3})
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("CELLEMBED_CACHE_DIR", str(cache))  # empty: this run must convert
    process = _start_extract(folder, tmp_path / "emb.parquet", random_weights)
    for line in process.stderr:
        if line.startswith("converting Xception for ONNX Runtime"):
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted while loading the network" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "emb.parquet").exists()
    assert not list(cache.glob("*.onnx")) and not list(cache.glob(".*.tmp"))
