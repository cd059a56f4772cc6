"""The ONNX Runtime engine: a backbone's tap maps, run faster on CPU, without TensorFlow.

Why: on a 2-core AVX-512 CPU the TensorFlow ``tf.function`` embeds about 16 images/s at its
best batch size (32), while ONNX Runtime runs the converted graph at about 19-20 images/s
(it folds batch normalisation into the convolutions and uses its own blocked-layout
kernels). ONNX Runtime is fastest one image at a time: one image's activations stay in
cache, 32 images' do not (measured 20 images/s at batch 1, 16.5 at batch 32).

Two frameworks run here:

- ``onnx`` backbones (:mod:`cellembed.backbones.onnx_file`) are ONNX files already: the
  session runs the file, the backbone prepares its input (channel order, scale, mean/std,
  layout) and says which outputs are taps and how to read them as maps.
- ``keras`` backbones are converted once: tf2onnx's conversion of the very ``tf.function``
  the TensorFlow engine runs (the backbone's preprocessing included, so its input is the
  resized 0..255 pixels; its outputs the tap maps, NHWC). The conversion runs once per
  (backbone, weights, input size, taps, library versions) in a child process
  (:mod:`cellembed.engines.onnx_conversion`, which says why), is checked against
  TensorFlow's maps on probe images before it is used, and is cached in
  ``$CELLEMBED_CACHE_DIR`` (default ``~/.cache/cellembed``); the taps travel inside the
  ONNX file's metadata. With the conversion cached, nothing imports TensorFlow.

``--precision int8`` runs a statically quantised copy of the converted network, made once
from it, checked against it and cached beside it (:mod:`cellembed.engines.int8`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from cellembed.shared.atomic import atomic_path
from cellembed.shared.cache import CACHE_ENV, cache_dir  # noqa: F401 - CACHE_ENV is part of this module's interface
from cellembed.engines.onnx_conversion import TAPS_KEY, converted, probe_pixels
from cellembed.errors import InputError
from cellembed.pooling import pool
from cellembed.shared.versions import package_version
from cellembed.weights import WeightsFile

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
    from cellembed.engines import Calibration

# The largest difference accepted between the pooled (mean and standard deviation) tap
# maps of the conversion and of TensorFlow on the probe images; they agree to about 1e-5 in
# practice (float32 sums taken in another order).
MAX_ENGINE_DIFFERENCE = 1e-4
_CONVERTER_PACKAGES = ("cellembed", "tensorflow", "keras", "tf2onnx", "onnx")
FRAMEWORKS = ("keras", "onnx")
#: The precisions run per framework: int8 quantises a converted Keras network.
PRECISIONS = {"keras": ("fp32", "int8"), "onnx": ("fp32",)}
#: How an ONNX output is read as maps: (n, C, H, W), (n, H, W, C), (n, C) (one location)
#: or (n, tokens, C) (the tokens after the first ``prefix_tokens`` on a square grid).
OUTPUT_LAYOUTS = ("NCHW", "NHWC", "NC", "NTC")


@dataclass(frozen=True)
class TapOutput:
    """Which output of an ONNX model is a tap, and how to read it as (n, H, W, C) maps."""

    tap: str
    output: str
    layout: str = "NHWC"
    prefix_tokens: int = 0


def cached_model_path(backbone: str, weights_sha256: str, input_size: int, tap_names: Sequence[str]) -> Path:
    """The cache file for one converted network: keyed by everything that shapes it."""
    key = {
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "input_size": input_size,
        "taps": list(tap_names),
        "outputs": "tap maps",
        "versions": {package: package_version(package) for package in _CONVERTER_PACKAGES},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"{backbone}-{input_size}-{digest}.onnx"


def channel_count(shape: Sequence[Any], layout: str, output: str) -> int:
    """The channels of an output of ``shape`` read in ``layout`` (the width of its tap's
    maps); refuses a shape whose channel dimension is not fixed."""
    if not len(shape):
        raise InputError(f"the ONNX output {output} declares no shape (and shape inference found none)")
    if len(shape) != len(layout):
        raise InputError(f"the ONNX output {output} has shape {list(shape)}, not the {len(layout)} dimensions of {layout}")
    channel = shape[layout.index("C")]
    if not isinstance(channel, int) or channel < 1:
        raise InputError(f"the ONNX output {output} has no fixed channel count (shape {list(shape)}, {layout})")
    return channel


def as_maps(array: np.ndarray, layout: str, prefix_tokens: int = 0) -> np.ndarray:
    """One ONNX output as (n, H, W, C) float32 maps (see :data:`OUTPUT_LAYOUTS`)."""
    array = np.asarray(array, dtype=np.float32)
    if layout == "NHWC":
        return array
    if layout == "NCHW":
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    if layout == "NC":
        return array[:, None, None, :]
    tokens = array[:, prefix_tokens:]
    side = int(round(np.sqrt(tokens.shape[1])))
    if side * side != tokens.shape[1]:
        raise InputError(
            f"an NTC output has {tokens.shape[1]} tokens after {prefix_tokens} prefix tokens, not a square grid; "
            "set prefix_tokens in the backbone description"
        )
    return tokens.reshape(len(tokens), side, side, tokens.shape[-1])


class OnnxTapExtractor:
    """An ONNX model run by ONNX Runtime, returning tap maps (:mod:`cellembed.network`).

    Args:
        model: the model (bytes or a path).
        outputs: the taps; None to read them from a converted model's metadata (NHWC
            outputs in tap order).
        threads: cap on ONNX Runtime's threads.
        prepare: NumPy step from (n, size, size, 3) 0..255 RGB pixels to the model's input
            (None: the pixels are the input, as for a converted Keras backbone).
        channels: each tap's channel count (None: from the model's output shapes).
        providers: ONNX Runtime's execution providers, in order of preference (a GPU's:
            :mod:`cellembed.engines.onnxruntime_gpu_engine`).
        one_at_a_time: run one image per call of the session (fastest on CPU, see the
            module docstring); False runs a whole batch at once (a GPU).
    """

    def __init__(self, model: bytes | str | os.PathLike, outputs: Sequence[TapOutput] | None = None,
                 threads: int | None = None, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 channels: Mapping[str, int] | None = None, providers: Sequence[Any] = ("CPUExecutionProvider",),
                 one_at_a_time: bool = True):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.model = model  # what int8 quantises (cellembed.engines.int8)
        self.session = onnxruntime.InferenceSession(source, options, providers=list(providers))
        self.one_at_a_time = one_at_a_time
        self._input = self.session.get_inputs()[0].name
        if outputs is None:
            recorded = json.loads(self.session.get_modelmeta().custom_metadata_map[TAPS_KEY])
            names = [o.name for o in self.session.get_outputs()]
            outputs = [TapOutput(tap, name) for tap, name in zip(recorded["taps"], names)]
            channels = recorded["channels"]
        self.outputs = tuple(outputs)
        self.taps = tuple(o.tap for o in self.outputs)
        self.channels = dict(channels) if channels is not None else self._output_channels()
        self._prepare = prepare
        self._buffers = threading.local()

    def _output_channels(self) -> dict[str, int]:
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        return {tap.tap: channel_count(shapes[tap.output], tap.layout, tap.output) for tap in self.outputs}

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The tap maps of ``pixels``: arrays of this extractor, overwritten by its next call
        in the same thread (copy what you keep; :class:`cellembed.network.Network` pools
        them at once)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        names = [o.output for o in self.outputs]
        maps: dict[str, np.ndarray] = {}
        # One image per run: faster than a whole batch here (see the module docstring). Each
        # image's maps are copied into arrays this thread reuses from call to call: new ones
        # each call (or concatenating the runs) cost 4-5 ms per image and view in page
        # faults, 6% of the default preset's time.
        buffers = self._buffers.__dict__
        step = 1 if self.one_at_a_time else max(len(pixels), 1)
        for i in range(0, len(pixels), step):
            one = pixels[i : i + step]
            run = self.session.run(names, {self._input: self._prepare(one) if self._prepare else one})
            for tap, output in zip(self.outputs, run):
                image = as_maps(output, tap.layout, tap.prefix_tokens)
                if tap.tap not in maps:
                    shape = (len(pixels), *image.shape[1:])
                    if buffers.get(tap.tap) is None or buffers[tap.tap].shape != shape:
                        buffers[tap.tap] = np.empty(shape, np.float32)
                    maps[tap.tap] = buffers[tap.tap]
                maps[tap.tap][i : i + step] = image
        if not len(pixels):
            maps = {tap: np.zeros((0, 1, 1, self.channels[tap]), np.float32) for tap in self.taps}
        return maps


def build(
    backbone: "Backbone",
    weights: WeightsFile,
    tap_names: Sequence[str],
    input_size: int,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    calibration: "Calibration | None" = None,
) -> OnnxTapExtractor:
    """The tap extractor of ``backbone``: its own ONNX file (``onnx`` backbones), or the
    cached conversion of a Keras backbone, converting once if needed (with ``precision``
    int8: its quantised copy, calibrated on ``calibration``, see :func:`build_int8`).

    A cached conversion is used when its recorded taps are the ones asked for; an
    unreadable or mismatching cache file is converted again. When the cache folder is not
    writable the conversion is used from memory (with a warning), so nothing fails for
    lack of a cache.
    """
    if precision == "int8":
        if calibration is None:
            raise ValueError("an int8 network needs its calibration inputs")
        return build_int8(backbone, weights, tap_names, input_size, calibration, log=log, threads=threads)
    if backbone.framework == "onnx":
        return OnnxTapExtractor(backbone.model_path, backbone.tap_outputs(tap_names), threads, backbone.prepare_input)
    path = cached_model_path(backbone.name, weights.sha256, input_size, tap_names)
    cached = _open_cached(path, tap_names, threads)
    if cached is not None:
        return cached
    with _conversion_lock(path):  # processes converting the same network wait for the first
        cached = _open_cached(path, tap_names, threads)
        if cached is not None:
            return cached
        if log is not None:
            log(
                f"converting {backbone.title} for ONNX Runtime (once for these weights and taps, about 20 s); "
                f"cache: {path}"
            )
        with converted(backbone, weights, tap_names, input_size) as (model_file, reference):
            model = model_file.read_bytes()
        extractor = OnnxTapExtractor(model, threads=threads)
        check_same_output(extractor, reference)
        _save(model, path)
    return extractor


def build_int8(
    backbone: "Backbone",
    weights: WeightsFile,
    tap_names: Sequence[str],
    input_size: int,
    calibration: "Calibration",
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> OnnxTapExtractor:
    """The int8 copy of the converted network: cached, else quantised from the float32
    conversion (converted first if needed), checked against it on calibration inputs and
    cached beside it."""
    from cellembed.engines.int8 import CHECKED_INPUTS, check_close, int8_model_path, quantise

    path = int8_model_path(cached_model_path(backbone.name, weights.sha256, input_size, tap_names), calibration.key)
    cached = _open_cached(path, tap_names, threads)
    if cached is not None:
        return cached
    fp32 = build(backbone, weights, tap_names, input_size, log=log, threads=threads)
    with _conversion_lock(path):
        cached = _open_cached(path, tap_names, threads)
        if cached is not None:
            return cached
        if log is not None:
            log(f"quantising {backbone.title} to int8 (once for these weights, taps and preparation, about a minute); "
                f"cache: {path}")
        pixels = calibration.pixels()
        model = quantise(fp32.model if isinstance(fp32.model, bytes) else Path(fp32.model).read_bytes(),
                         fp32.session.get_inputs()[0].name, pixels)
        extractor = OnnxTapExtractor(model, threads=threads)
        probe = pixels[:: max(1, len(pixels) // CHECKED_INPUTS)][:CHECKED_INPUTS]
        reference = {tap: maps.copy() for tap, maps in fp32(probe).items()}
        check_close(extractor(probe), reference)
        _save(model, path)
    return extractor


def prepare(backbone: "Backbone", weights: WeightsFile, tap_names: Sequence[str], input_size: int, *,
            log: Callable[[str], None] | None = None, precision: str = "fp32",
            calibration: "Calibration | None" = None) -> None:
    """Convert the network now (once, cached) unless the cache already holds it (and
    quantise it, for int8)."""
    if backbone.framework != "onnx":
        build(backbone, weights, tap_names, input_size, log=log, threads=1, precision=precision,
              calibration=calibration)


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


def check_same_output(extractor: OnnxTapExtractor, reference: Mapping[str, np.ndarray]) -> None:
    """Refuse a conversion whose tap maps of the probe pixels, pooled (mean and standard
    deviation), differ from TensorFlow's (``reference``, computed by the converting process)."""
    first = next(iter(reference.values()))
    ours = extractor(probe_pixels(_input_size(extractor), len(first)))
    difference = max(
        float(np.abs(pool(ours[tap], "global_average+std") - pool(maps, "global_average+std")).max())
        for tap, maps in reference.items()
    )
    if not difference <= MAX_ENGINE_DIFFERENCE:
        raise InputError(
            f"the ONNX conversion of the network differs from TensorFlow by {difference:.2g} "
            f"(more than {MAX_ENGINE_DIFFERENCE:g}); use --engine tensorflow"
        )


def _input_size(extractor: OnnxTapExtractor) -> int:
    return int(extractor.session.get_inputs()[0].shape[1])


def _open_cached(path: Path, tap_names: Sequence[str], threads: int | None) -> OnnxTapExtractor | None:
    if not path.is_file():
        return None
    try:
        extractor = OnnxTapExtractor(path, threads=threads)
    except Exception:  # a damaged or foreign file: convert again and replace it
        return None
    return extractor if list(extractor.taps) == list(tap_names) else None


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
