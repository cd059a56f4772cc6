"""The ONNX Runtime engine: the same frozen backbone taps, run faster on CPU.

Why: on a 2-core AVX-512 CPU the TensorFlow ``tf.function`` embeds about 16 images/s at its
best batch size (32), while ONNX Runtime runs the converted graph at about 19-20 images/s
(it folds batch normalisation into the convolutions and uses its own blocked-layout
kernels). ONNX Runtime is fastest one image at a time: one image's activations stay in
cache, 32 images' do not (measured 20 images/s at batch 1, 16.5 at batch 32).

The ONNX model is tf2onnx's conversion of the very ``tf.function`` the TensorFlow engine
runs (the backbone's preprocessing included), so its input is the same resized 0..255
pixels. The conversion runs once per (backbone, weights, input size, taps, library
versions) in a child process (:mod:`cellembed.engines.onnx_conversion`, which says why)
and is cached in ``$CELLEMBED_CACHE_DIR`` (default ``~/.cache/cellembed``). Each
conversion is checked against TensorFlow's output on probe images before it is used or
cached; the embedding spec travels inside the ONNX file's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from cellembed.atomic import atomic_path
from cellembed.cache import CACHE_ENV, cache_dir  # noqa: F401 - CACHE_ENV is part of this module's interface
from cellembed.pooling import DEFAULT_POOLING
from cellembed.engines.onnx_conversion import SPEC_KEY, converted, probe_pixels
from cellembed.errors import InputError
from cellembed.spec import EmbeddingSpec
from cellembed.versions import package_version
from cellembed.weights import WeightsFile

if TYPE_CHECKING:
    from cellembed.backbones import Backbone

# The largest |ONNX - TensorFlow| difference accepted on the probe images; outputs agree
# to about 1e-5 in practice (float32 sums taken in another order).
MAX_ENGINE_DIFFERENCE = 1e-4
_CONVERTER_PACKAGES = ("cellembed", "tensorflow", "keras", "tf2onnx", "onnx")


def cached_model_path(
    backbone: str, weights_sha256: str, input_size: int, tap_names: Sequence[str], pooling: str = DEFAULT_POOLING
) -> Path:
    """The cache file for one network: keyed by everything that shapes the conversion
    (the default pooling is left out of the key, so conversions cached before it was a
    choice are still found)."""
    key = {
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "input_size": input_size,
        "taps": list(tap_names),
        "versions": {package: package_version(package) for package in _CONVERTER_PACKAGES},
    }
    if pooling != DEFAULT_POOLING:
        key["pooling"] = pooling
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
    path = cached_model_path(backbone.name, weights.sha256, spec.input_size, spec.tap_names, spec.pooling)
    cached = _open_cached(path, spec, threads)
    if cached is not None:
        return cached
    with _conversion_lock(path):  # processes converting the same network wait for the first
        cached = _open_cached(path, spec, threads)
        if cached is not None:
            return cached
        if log is not None:
            log(
                f"converting {backbone.title} for ONNX Runtime (once for these weights and taps, about 20 s); "
                f"cache: {path}"
            )
        with converted(backbone, weights, spec) as (model_file, reference):
            model = model_file.read_bytes()
        embedder = OnnxEmbedder(model, threads=threads)
        check_same_output(embedder, reference)
        _save(model, path)
    embedder.spec = dataclasses.replace(spec, taps=embedder.spec.taps)  # this run's provenance
    return embedder


def prepare(backbone: "Backbone", weights: WeightsFile, spec: EmbeddingSpec, *, log: Callable[[str], None] | None = None) -> None:
    """Convert the network now (once, cached) unless the cache already holds it."""
    build(backbone, weights, spec, log=log, threads=1)


@contextmanager
def _conversion_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<model>.lock`` in the cache folder while converting (none
    where the folder cannot be written or the system has no flock)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "w")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_same_output(onnx_embedder: OnnxEmbedder, reference: np.ndarray) -> None:
    """Refuse a conversion whose output on the probe pixels differs from TensorFlow's
    (``reference``, computed by the converting process)."""
    probe = probe_pixels(onnx_embedder.spec.input_size, len(reference))
    difference = float(np.abs(onnx_embedder.embed(probe) - reference).max())
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
