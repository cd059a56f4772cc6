"""Engines: what runs a backbone's network. Each gives the same embeddings (within 1e-4).

An engine module defines ``FRAMEWORKS`` (the backbone frameworks it runs: ``"keras"``,
``"onnx"``) and ``build(backbone, weights, tap_names, input_size, *, log=None,
threads=None)`` returning a :class:`cellembed.network.TapExtractor` (the tap maps before
pooling; views and pooling are NumPy, in :class:`cellembed.network.Network`), and may
define ``prepare(backbone, weights, tap_names, input_size, *, log=None)`` to make once what
every build needs (the ONNX Runtime engine's converted model), so that many workers
starting together find it ready. Adding an engine is one module plus one line in
:data:`_MODULES`.
"""

from __future__ import annotations

import importlib
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
}
ENGINES = tuple(_MODULES)
DEFAULT_ENGINE = "onnxruntime"


class Embedder(Protocol):
    """What embeds images (:class:`cellembed.network.Network`): ``embed`` takes (n, size,
    size, 3) float32 RGB in 0..255 (already resized) and returns (n, spec.dim) float32, all
    taps from one forward pass per view."""

    spec: "EmbeddingSpec"

    def embed(self, pixels: np.ndarray) -> np.ndarray: ...


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


def build_extractor(
    engine: str,
    backbone: "Backbone",
    weights: "WeightsFile",
    tap_names: Sequence[str],
    input_size: int,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> "TapExtractor":
    """Load ``backbone`` with ``weights`` for ``engine``, returning these taps' maps."""
    module = engine_module(engine, backbone)
    return module.build(backbone, weights, list(tap_names), input_size, log=log, threads=threads)


def prepare_engine(
    engine: str, backbone: "Backbone", weights: "WeightsFile", tap_names: Sequence[str], input_size: int,
    *, log: Callable[[str], None] | None = None,
) -> None:
    """Make ready, in this process, what ``engine`` builds from (nothing for most engines)."""
    module = engine_module(engine, backbone)
    if hasattr(module, "prepare"):
        module.prepare(backbone, weights, list(tap_names), input_size, log=log)
