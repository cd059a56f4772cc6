"""Engines: what runs a backbone's network. Each gives the same embeddings (within 1e-4).

An engine module defines ``FRAMEWORKS`` (the backbone frameworks it runs: ``"keras"``,
``"onnx"``), ``PRECISIONS`` (framework -> the precisions it runs, ``"fp32"``, ``"int8"``:
:mod:`cellembed.precision`) and ``build(backbone, weights, tap_names, input_size, *,
log=None, threads=None, precision="fp32", calibration=None)`` returning a :class:`cellembed.network.TapExtractor` (the tap maps before
pooling; views and pooling are NumPy, in :class:`cellembed.network.Network`), and may
define ``prepare(backbone, weights, tap_names, input_size, *, log=None)`` to make once what
every build needs (the ONNX Runtime engine's converted model), so that many workers
starting together find it ready. Adding an engine is one module plus one line in
:data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from cellembed.errors import InputError

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
    from cellembed.network import TapExtractor
    from cellembed.spec import EmbeddingSpec
    from cellembed.weights import WeightsFile

#: Registered engines: name -> (module, distributions whose versions the spec records).
_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("cellembed.engines.onnxruntime_engine", ("onnxruntime",)),
    "tensorflow": ("cellembed.engines.tensorflow_engine", ()),
    "onnxruntime-gpu": ("cellembed.engines.onnxruntime_gpu_engine", ("onnxruntime-gpu",)),
}
#: The engine a worker with a GPU runs in place of the CPU engine (the Ray distributor's
#: ``--ray-gpus-per-task``).
GPU_ENGINE = {"onnxruntime": "onnxruntime-gpu"}
ENGINES = tuple(_MODULES)
DEFAULT_ENGINE = "onnxruntime"


class Embedder(Protocol):
    """What embeds images (:class:`cellembed.network.Network`): ``embed`` takes (n, size,
    size, 3) float32 RGB in 0..255 (already resized) and returns (n, spec.dim) float32, all
    taps from one forward pass per view."""

    spec: "EmbeddingSpec"

    def embed(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Calibration:
    """The inputs an int8 network is calibrated on: ``key`` names them (part of the cached
    network's key), ``pixels()`` makes them ((n, size, size, 3) float32, 0..255)."""

    key: str
    pixels: Callable[[], np.ndarray]


def check_engine(engine: str) -> None:
    if engine not in _MODULES:
        raise InputError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")


def engine_libraries(engine: str) -> tuple[str, ...]:
    """Distributions an engine adds to the spec's recorded versions."""
    check_engine(engine)
    return _MODULES[engine][1]


def engine_module(engine: str, backbone: "Backbone"):
    """The module of ``engine``, refusing a backbone of a framework it does not run."""
    check_engine(engine)
    module = importlib.import_module(_MODULES[engine][0])
    if backbone.framework not in module.FRAMEWORKS:
        runs = [name for name in ENGINES if backbone.framework in importlib.import_module(_MODULES[name][0]).FRAMEWORKS]
        raise InputError(
            f"--engine {engine} does not run {backbone.framework} networks such as {backbone.title}; "
            f"use --engine {' or '.join(runs)}"
        )
    return module


def unavailable(engine: str) -> str | None:
    """Why ``engine`` cannot run on this machine (None when it can, as far as can be told
    without building a network): an engine module may define ``unavailable()``."""
    check_engine(engine)
    module = importlib.import_module(_MODULES[engine][0])
    return module.unavailable() if hasattr(module, "unavailable") else None


def runs_precision(engine: str, backbone: "Backbone", precision: str) -> bool:
    """Whether ``engine`` runs ``precision`` for ``backbone``'s framework."""
    module = engine_module(engine, backbone)
    return precision in module.PRECISIONS.get(backbone.framework, ("fp32",))


def check_precision_runs(engine: str, backbone: "Backbone", precision: str) -> None:
    """Refuse a precision ``engine`` does not run for ``backbone``'s framework."""
    if runs_precision(engine, backbone, precision):
        return
    runs = [name for name in ENGINES
            if precision in importlib.import_module(_MODULES[name][0]).PRECISIONS.get(backbone.framework, ())]
    if not runs:
        raise InputError(f"{precision} is not available for {backbone.title} networks (only for converted Keras networks)")
    raise InputError(f"{precision} runs on --engine {' or '.join(runs)} only, not on {engine}")


def build_extractor(
    engine: str,
    backbone: "Backbone",
    weights: "WeightsFile",
    tap_names: Sequence[str],
    input_size: int,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> "TapExtractor":
    """Load ``backbone`` with ``weights`` for ``engine``, returning these taps' maps
    (``calibration``: what an int8 network is calibrated on)."""
    check_precision_runs(engine, backbone, precision)
    module = engine_module(engine, backbone)
    return module.build(backbone, weights, list(tap_names), input_size, log=log, threads=threads,
                        precision=precision, calibration=calibration)


def prepare_engine(
    engine: str, backbone: "Backbone", weights: "WeightsFile", tap_names: Sequence[str], input_size: int,
    *, log: Callable[[str], None] | None = None, precision: str = "fp32", calibration: Calibration | None = None,
) -> None:
    """Make ready, in this process, what ``engine`` builds from (nothing for most engines)."""
    check_precision_runs(engine, backbone, precision)
    module = engine_module(engine, backbone)
    if hasattr(module, "prepare"):
        module.prepare(backbone, weights, list(tap_names), input_size, log=log, precision=precision,
                       calibration=calibration)
