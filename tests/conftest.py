"""Shared fixtures: tiny synthetic image folders, random-initialised and real Xception weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SMALL = 71  # smallest Xception input: keeps unit tests fast


def noise_image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def make_folder(root: Path, layout: dict[str, int], start_seed: int = 0) -> Path:
    """Create ``root/<label>/img_<k>.png`` noise images; label "" means directly in root."""
    seed = start_seed
    for label, count in layout.items():
        folder = root / label if label else root
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            noise_image(seed, (40 + seed % 9, 36 + seed % 7)).save(folder / f"img_{seed:03d}.png")
            seed += 1
    return root


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """Converted ONNX models go to a per-session folder (never the user's ~/.cache), shared
    by all tests and the commands they start, so each network is converted once."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    saved = os.environ.get("CELLEMBED_CACHE_DIR")
    os.environ["CELLEMBED_CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("CELLEMBED_CACHE_DIR", None)
    else:
        os.environ["CELLEMBED_CACHE_DIR"] = saved


@pytest.fixture(scope="session", autouse=True)
def fp32_unless_asked():
    """The presets' precision ``auto`` means int8 on a CPU with VNNI (this one, likely):
    tests compare embeddings with Keras and between engines, so the suite fixes ``auto`` to
    fp32 (as a lab may, with $CELLEMBED_PRECISION); tests/test_embed_int8.py asks for int8
    and checks ``auto`` itself."""
    saved = os.environ.get("CELLEMBED_PRECISION")
    os.environ["CELLEMBED_PRECISION"] = "fp32"
    yield
    if saved is None:
        os.environ.pop("CELLEMBED_PRECISION", None)
    else:
        os.environ["CELLEMBED_PRECISION"] = saved


@pytest.fixture(autouse=True)
def no_fit_checkpoints_between_tests(onnx_cache):
    """The trained models a test's fit kept (cellclf.checkpoint, in the session's cache
    folder) never let a later test's fit with the same inputs skip its training."""
    yield
    shutil.rmtree(onnx_cache / "fit-checkpoints", ignore_errors=True)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A `.weights.h5` file of a randomly initialised Xception(include_top=False)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.Xception(include_top=False, weights=None, input_shape=(SMALL, SMALL, 3))
    path = tmp_path_factory.mktemp("weights") / "random_xception.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture(scope="session")
def real_weights() -> Path:
    """The real ImageNet weights from $CELLEMBED_WEIGHTS (CI sets it); skip when absent."""
    value = os.environ.get("CELLEMBED_WEIGHTS")
    if not value or not Path(value).is_file():
        pytest.skip("set CELLEMBED_WEIGHTS to the Xception ImageNet .weights.h5 file to run this test")
    return Path(value)


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """Two labelled classes of 5 images and 2 unlabelled images."""
    return make_folder(tmp_path / "images", {"alpha": 5, "beta": 5, "": 2})


@pytest.fixture
def sample_subset(tmp_path) -> Path:
    """Two real images per class from data/sample."""
    root = tmp_path / "sample"
    for class_dir in sorted(SAMPLE.iterdir()):
        if class_dir.is_dir():
            (root / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.glob("*.jpg"))[:2]:
                shutil.copy(image, root / class_dir.name / image.name)
    return root


def held_by_another_process(target: Path):
    """A process that holds ``target``'s output lock until it is killed."""
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom cellembed.shared.atomic import output_lock\n"
        f"with output_lock({str(target)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def interruptible() -> None:
    """``preexec_fn`` of a child the test interrupts: a shell's background jobs (nohup, CI
    runners) inherit SIGINT as ignored, and Python then never raises KeyboardInterrupt; give
    the child the default, as a terminal would."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def options_named_in_code(package) -> set[tuple[str, str]]:
    """``(file name, --flag)`` of every ``--option`` named in a string of ``package``'s code
    (messages, help), docstrings left out."""
    import ast
    import re

    named = set()
    for path in Path(package.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named |= {(path.name, flag) for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", node.value)}
    return named


@pytest.fixture(autouse=True, scope="session")
def errors_name_only_their_commands_options():
    """Every command run through click's CliRunner in any test: each ``Error:`` line it
    prints names only options of the command that printed it (a message of shared code
    must not send a user of ``predict`` to ``extract``'s ``--preset``), unless it names the
    other command in full."""
    import re

    import click
    from click.testing import CliRunner

    invoke = CliRunner.invoke

    def checked(self, cli, args=None, *more, **kwargs):
        result = invoke(self, cli, args, *more, **kwargs)
        words = [str(a) for a in (args or [])]
        command = cli.commands.get(words[0]) if isinstance(cli, click.Group) and words else cli
        if command is not None:
            own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            own |= {"--help", "--version"}
            for line in result.output.splitlines():
                if line.startswith("Error:"):
                    # a command named in full ("re-create it with cellembed extract --overwrite") may
                    # carry its own options: the user is told which command they belong to
                    told = re.sub(r"\b(cellembed|cellclf) [a-z]+[^;]*", "", line)
                    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", told))
                    assert named <= own, f"{command.name} names {sorted(named - own)} in: {line}"
        return result

    CliRunner.invoke = checked
    yield
    CliRunner.invoke = invoke


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test's server)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def headless_chrome(tmp_path: Path, width: int = 1300, height: int = 1600):
    """A headless Chromium driven by Debian's chromium-driver (the caller quits it)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                     f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options)
