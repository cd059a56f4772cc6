"""The one-time conversion of a backbone for ONNX Runtime, run in a child process.

``python -m cellembed.engines.onnx_conversion REQUEST.json`` builds the TensorFlow tap
extractor of a Keras backbone (:mod:`cellembed.engines.tensorflow_engine`), records its tap
maps on the probe pixels, converts its ``tf.function`` with tf2onnx and writes the model
(its taps in its metadata) and the reference maps next to the request file.

Why a child process: tf2onnx rewrites every node's attributes, weights included, after
each of its ~36 optimiser passes, and with protobuf's default (upb) backend each rewrite
stays in the message's arena: converting Xception peaked at 4.8 GB and the memory stayed
with the process for the whole extraction. The child uses the pure-Python protobuf
backend (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``), which frees what it replaces
(peak 2.4 GB, and the conversion is faster: 8 s instead of 16 s), and gives everything back
when it exits. The parent checks the model against the reference before using it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from cellembed.errors import InputError, RunFailed
from cellembed.shared.quiet import quiet_native_logs

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
    from cellembed.weights import WeightsFile

#: ONNX metadata key of a converted model: its tap names and channels, as JSON.
TAPS_KEY = "cellembed.taps"
OPSET = 17


def probe_pixels(size: int, images: int = 2) -> np.ndarray:
    """The fixed random pixels a conversion is checked on."""
    return np.random.default_rng(0).uniform(0, 255, (images, size, size, 3)).astype(np.float32)


@contextmanager
def converted(
    backbone: "Backbone", weights: "WeightsFile", tap_names: Sequence[str], input_size: int
) -> Iterator[tuple[Path, dict[str, np.ndarray]]]:
    """Convert in a child process; yield the model file and TensorFlow's tap maps of the
    probe pixels.

    The files live in a temporary folder removed afterwards (also on Ctrl-C, which stops
    the child too; if this process is killed, the child notices, removes it and exits).
    """
    with tempfile.TemporaryDirectory(prefix="cellembed-convert-") as folder:
        request = Path(folder) / "request.json"
        request.write_text(
            json.dumps(
                {
                    "backbone": backbone.name,
                    "weights": [str(weights.path), weights.sha256, weights.source],
                    "taps": list(tap_names),
                    "input_size": input_size,
                    "parent": os.getpid(),
                }
            )
        )
        env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python", TF_CPP_MIN_LOG_LEVEL="2")
        child = subprocess.run(
            [sys.executable, "-m", "cellembed.engines.onnx_conversion", str(request)],
            env=env, capture_output=True, text=True,
        )
        if child.returncode != 0:
            lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
            errors = [line[len("Error: "):] for line in lines if line.startswith("Error: ")]
            if child.returncode == 2 and errors:
                raise InputError(errors[-1])
            last = lines[-1][:300] if lines else f"it ended with status {child.returncode}"
            raise RunFailed(
                f"converting {backbone.title} for ONNX Runtime failed ({last}); run again, or use --engine tensorflow"
            )
        with np.load(Path(folder) / "reference.npz") as reference:
            maps = {name: reference[name] for name in reference.files}
        yield Path(folder) / "model.onnx", maps


def _convert(request_path: Path) -> None:
    """The child: build, record the reference maps, convert, write."""
    from cellembed.backbones import get_backbone
    from cellembed.engines import tensorflow_engine
    from cellembed.weights import WeightsFile

    request = json.loads(request_path.read_text())
    _exit_with_parent(request["parent"], request_path.parent)
    path, sha256, source = request["weights"]
    taps, size = request["taps"], request["input_size"]
    extractor = tensorflow_engine.build(get_backbone(request["backbone"]), WeightsFile(Path(path), sha256, source), taps, size)
    np.savez(request_path.with_name("reference.npz"), **extractor(probe_pixels(size)))

    import tf2onnx

    forward = extractor.forward
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # it logs every step at INFO
    # tf2onnx deep-copies the whole graph before each optimiser pass so it can roll a
    # failed pass back; that doubles the time. A failed pass raises instead, and a wrong
    # model is caught by the parent's check anyway.
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    with quiet_native_logs():
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=forward.input_signature, opset=OPSET)
    entry = proto.metadata_props.add()
    entry.key, entry.value = TAPS_KEY, json.dumps({"taps": taps, "channels": extractor.channels})
    request_path.with_name("model.onnx").write_bytes(proto.SerializeToString())


def _exit_with_parent(parent: int, folder: Path) -> None:
    """Stop (removing ``folder``) when the process that asked for the conversion is gone."""
    import shutil
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="cellembed-parent-watch").start()


def main() -> None:
    try:
        _convert(Path(sys.argv[1]))
    except InputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
