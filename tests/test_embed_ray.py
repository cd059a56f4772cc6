"""The Ray distributor: the same Parquet file as a sequential run, and a dying worker retried.

A local Ray runtime (2 CPUs) is started once for this module. Its workers get a setup hook
(tests/ray_faults.py) that can make the first worker to start a shard die, to check that
Ray retries the shard and that no row is lost or duplicated.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cellembed import extract, load_embeddings
from cellembed.cli import main
from conftest import SMALL, make_folder
from ray_faults import ARMED_ENV, FIRED_ENV

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    import ray

    faults = tmp_path_factory.mktemp("faults")
    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "CELLEMBED_CACHE_DIR": os.environ["CELLEMBED_CACHE_DIR"],
        ARMED_ENV: str(faults / "armed"),
        FIRED_ENV: str(faults / "fired"),
    }
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
        runtime_env={"env_vars": env, "worker_process_setup_hook": "ray_faults.exit_on_first_shard"},
    )
    yield faults
    ray.shutdown()


@pytest.fixture(scope="module")
def folder_and_reference(tmp_path_factory, random_weights):
    """30 labelled images (and a broken file) extracted sequentially: the reference."""
    root = tmp_path_factory.mktemp("ray")
    folder = make_folder(root / "images", {"a": 12, "b": 10, "": 8})
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    reference = extract(folder, root / "sequential.parquet", weights=random_weights, input_size=SMALL,
                        checkpoint_every=4, progress=False)
    assert reference.rows == 30 and len(reference.errors) == 1
    return folder, root / "sequential.parquet"


def assert_same_file(path, reference):
    mine, _ = load_embeddings(path)
    theirs, _ = load_embeddings(reference)
    mine, theirs = mine.sort_values("path", ignore_index=True), theirs.sort_values("path", ignore_index=True)
    columns = ["path", "label", "sha256", "width", "height"]
    assert mine[columns].equals(theirs[columns])
    assert not mine["path"].duplicated().any()
    difference = np.abs(np.stack(mine["embedding"]) - np.stack(theirs["embedding"])).max()
    assert difference <= 1e-5, difference


def _command(folder, out, weights, *extra):
    return [
        sys.executable, "-m", "cellembed", "extract", str(folder), "-o", str(out), "--weights", str(weights),
        "--input-size", str(SMALL), "--checkpoint-every", "4", "--distributed", "ray", "--allow-skips", *extra,
    ]


def _ray_processes() -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in listing if "raylet" in line or "gcs_server" in line]


def test_the_command_starts_its_own_ray_and_shuts_it_down(folder_and_reference, random_weights, tmp_path):
    """No Ray runtime in this process yet (this test runs before the module's fixture)."""
    folder, reference = folder_and_reference
    assert not _ray_processes()
    done = subprocess.run(_command(folder, tmp_path / "ray.parquet", random_weights, "-q"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_file(tmp_path / "ray.parquet", reference)
    assert not _ray_processes()  # the local Ray instance it started is gone


def test_an_unusable_ray_address_is_a_one_line_error(folder_and_reference, random_weights, tmp_path):
    folder, _ = folder_and_reference
    done = subprocess.run(_command(folder, tmp_path / "ray.parquet", random_weights, "-q", "--ray-address", "no-such-host"),
                          capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("Error: cannot start or reach the Ray cluster at --ray-address no-such-host")
    assert not (tmp_path / "ray.parquet").exists()


def test_ray_gives_the_same_file_as_sequential(ray_runtime, folder_and_reference, random_weights, tmp_path):
    folder, reference = folder_and_reference
    out = tmp_path / "ray.parquet"
    result = CliRunner().invoke(main, [
        "extract", str(folder), "-o", str(out), "--weights", str(random_weights), "--input-size", str(SMALL),
        "--checkpoint-every", "4", "--distributed", "ray", "--allow-skips",
    ])
    assert result.exit_code == 0, result.output
    assert "Ray cluster with 2 CPUs" in result.output and "embedded 30" in result.output
    assert_same_file(out, reference)
    assert (tmp_path / "ray.errors.csv").read_text().splitlines()[1].startswith("a/broken.png,")
    assert not (tmp_path / "ray.checkpoint").exists()
    assert not (ray_runtime / "fired").exists()  # no fault was armed


def test_a_shard_whose_worker_dies_is_retried_without_losing_or_duplicating_rows(
    ray_runtime, folder_and_reference, random_weights, tmp_path
):
    folder, reference = folder_and_reference
    (ray_runtime / "armed").touch()
    try:
        result = extract(folder, tmp_path / "ray.parquet", weights=random_weights, input_size=SMALL,
                         checkpoint_every=4, distributed="ray", progress=False)
    finally:
        (ray_runtime / "armed").unlink()
    assert (ray_runtime / "fired").exists()  # one worker did die on its first shard
    assert (result.rows, result.embedded, len(result.errors)) == (30, 30, 1)
    assert_same_file(tmp_path / "ray.parquet", reference)


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch, labelled_folder, tmp_path, random_weights):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = CliRunner().invoke(main, [
        "extract", str(labelled_folder), "-o", str(tmp_path / "e.parquet"), "--weights", str(random_weights),
        "--input-size", str(SMALL), "--distributed", "ray", "-q",
    ])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'cellembed[ray]'" in lines[0], result.output
    assert not (tmp_path / "e.parquet").exists()
