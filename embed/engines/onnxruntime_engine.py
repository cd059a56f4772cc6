"""The ONNX Runtime engine: the same frozen backbone taps, run faster on CPU.

Why: on a 2-core AVX-512 CPU the TensorFlow ``tf.function`` embeds about 16 images/s at its
best batch size (32), while ONNX Runtime runs the converted graph at about 19-20 images/s
(it folds batch normalisation into the convolutions and uses its own blocked-layout
kernels). ONNX Runtime is fastest one image at a time: one image's activations stay in
cache, 32 images' do not (measured 20 images/s at batch 1, 16.5 at batch 32).

The ONNX model is tf2onnx's conversion of the very ``tf.function`` the TensorFlow engine
runs (the backbone's preprocessing included), so its input is the same resized 0..255
pixels. A conversion of Xception takes 15-30 s, so it is done once per (backbone, weights,
input size, taps, library versions) and cached in ``$CELLEMBED_CACHE_DIR`` (default
``~/.cache/cellembed``). Each conversion is checked against TensorFlow on probe images
before it is used or cached; the embedding spec travels inside the ONNX file's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from cellembed.atomic import atomic_path
from cellembed.engines import tensorflow_engine
from cellembed.errors import InputError
from cellembed.quiet import quiet_native_logs
from cellembed.spec import EmbeddingSpec
from cellembed.versions import package_version
from cellembed.weights import WeightsFile

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
    from cellembed.engines.tensorflow_engine import TensorFlowEmbedder

CACHE_ENV = "CELLEMBED_CACHE_DIR"
SPEC_KEY = "cellembed.spec"
# The largest |ONNX - TensorFlow| difference accepted on the probe images; outputs agree
# to about 1e-5 in practice (float32 sums taken in another order).
MAX_ENGINE_DIFFERENCE = 1e-4
_CONVERTER_PACKAGES = ("cellembed", "tensorflow", "keras", "tf2onnx", "onnx")


def cache_dir() -> Path:
    """Where converted models are kept: ``$CELLEMBED_CACHE_DIR``, else ``~/.cache/cellembed``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellembed"


def cached_model_path(backbone: str, weights_sha256: str, input_size: int, tap_names: Sequence[str]) -> Path:
    """The cache file for one network: keyed by everything that shapes the conversion."""
    key = {
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "input_size": input_size,
        "taps": list(tap_names),
        "versions": {package: package_version(package) for package in _CONVERTER_PACKAGES},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"{backbone}-{input_size}-{digest}.onnx"


class OnnxEmbedder:
    """Frozen backbone taps run by ONNX Runtime; same contract as the TensorFlow embedder.

    ``embed(pixels)`` takes (n, size, size, 3) float32 RGB in 0..255 (already resized) and
    returns (n, spec.dim) float32. ``spec`` is None to read it from the model's metadata
    (a cached conversion carries its spec); ``threads`` caps ONNX Runtime's threads.
    """

    def __init__(self, model: bytes | str | os.PathLike, spec: EmbeddingSpec | None = None, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        if spec is None:
            spec = EmbeddingSpec.from_json(self.session.get_modelmeta().custom_metadata_map[SPEC_KEY])
        self.spec = spec

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) float32 in 0..255 -> (n, spec.dim) float32."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if len(pixels) == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        # One image per run: faster than a whole batch here (see the module docstring).
        runs = [self.session.run(None, {self._input: pixels[i : i + 1]})[0] for i in range(len(pixels))]
        return np.concatenate(runs)


def build(
    backbone: "Backbone",
    weights: WeightsFile,
    spec: EmbeddingSpec,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> OnnxEmbedder:
    """The ONNX Runtime embedder for the planned ``spec``, converting once if needed.

    A cached conversion is used when its recorded spec has the same identity; an
    unreadable or mismatching cache file is converted again. When the cache folder is not
    writable the conversion is used from memory (with a warning), so nothing fails for
    lack of a cache.
    """
    path = cached_model_path(backbone.name, weights.sha256, spec.input_size, spec.tap_names)
    cached = _open_cached(path, spec, threads)
    if cached is not None:
        return cached
    if log is not None:
        log(
            f"converting {backbone.title} for ONNX Runtime (once for these weights and taps, about 20 s); "
            f"cache: {path}"
        )
    keras_embedder = tensorflow_engine.build(backbone, weights, spec)
    model = convert(keras_embedder)
    embedder = OnnxEmbedder(model, keras_embedder.spec, threads)
    check_same_output(embedder, keras_embedder)
    _save(model, path)
    return embedder


def convert(keras_embedder: "TensorFlowEmbedder") -> bytes:
    """tf2onnx's conversion of the TensorFlow embedder's forward function, serialised,
    with the embedding spec in the model's metadata."""
    import tf2onnx

    forward = keras_embedder.forward
    with _quiet_converter(), quiet_native_logs():
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=forward.input_signature, opset=17)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, keras_embedder.spec.to_json()
    return proto.SerializeToString()


def check_same_output(onnx_embedder: OnnxEmbedder, keras_embedder: "TensorFlowEmbedder", images: int = 2) -> None:
    """Refuse a conversion whose output differs from TensorFlow's on random probe pixels."""
    size = keras_embedder.spec.input_size
    probe = np.random.default_rng(0).uniform(0, 255, (images, size, size, 3)).astype(np.float32)
    difference = float(np.abs(onnx_embedder.embed(probe) - keras_embedder.embed(probe)).max())
    if not difference <= MAX_ENGINE_DIFFERENCE:
        raise InputError(
            f"the ONNX conversion of the network differs from TensorFlow by {difference:.2g} "
            f"(more than {MAX_ENGINE_DIFFERENCE:g}); use --engine tensorflow"
        )


def _open_cached(path: Path, spec: EmbeddingSpec, threads: int | None) -> OnnxEmbedder | None:
    if not path.is_file():
        return None
    try:
        embedder = OnnxEmbedder(path, threads=threads)
    except Exception:  # a damaged or foreign file: convert again and replace it
        return None
    recorded = embedder.spec
    if recorded.differences(spec):
        return None
    # The taps as converted; the provenance (weights source, versions) of this run.
    embedder.spec = dataclasses.replace(spec, taps=recorded.taps)
    return embedder


def _save(model: bytes, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(model)
    except OSError as exc:
        warnings.warn(
            f"could not cache the converted model in {path.parent} ({exc.strerror or exc}); "
            f"the next run converts again; set {CACHE_ENV} to a writable folder",
            stacklevel=2,
        )


@contextmanager
def _quiet_converter() -> Iterator[None]:
    # tf2onnx logs every step at INFO. By default it also deep-copies the whole graph,
    # weights included, before each optimiser pass so it can roll a failed pass back;
    # that doubles the conversion time (29 s -> 15 s without it). A failed pass then
    # raises instead, which check_same_output would anyway catch as a wrong model.
    logger = logging.getLogger("tf2onnx")
    saved_level, saved_env = logger.level, os.environ.get("TF2ONNX_CATCH_ERRORS")
    logger.setLevel(logging.ERROR)
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    try:
        yield
    finally:
        logger.setLevel(saved_level)
        if saved_env is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = saved_env
