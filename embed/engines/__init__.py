"""Engines: what runs a backbone's network. Each gives the same embeddings (within 1e-4).

An engine module defines ``build(backbone, weights, spec, *, log=None, threads=None)``
returning an :class:`Embedder` whose spec is ``spec`` with the real tap widths, and may
define ``prepare(backbone, weights, spec, *, log=None)`` to make once what every build
needs (the ONNX Runtime engine's converted model), so that many workers starting together
find it ready. Adding an engine is one module plus one line in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from cellembed.errors import InputError

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
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
    """A built network: ``embed`` takes (n, size, size, 3) float32 RGB in 0..255 (already
    resized) and returns (n, spec.dim) float32, all taps from one forward pass."""

    spec: "EmbeddingSpec"

    def embed(self, pixels: np.ndarray) -> np.ndarray: ...


def check_engine(engine: str) -> None:
    if engine not in _MODULES:
        raise InputError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")


def engine_libraries(engine: str) -> tuple[str, ...]:
    """Distributions an engine adds to the spec's recorded versions."""
    check_engine(engine)
    return _MODULES[engine][1]


def build_embedder(
    engine: str,
    backbone: "Backbone",
    weights: "WeightsFile",
    spec: "EmbeddingSpec",
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> Embedder:
    """Build ``backbone`` with ``weights`` for ``engine``; ``spec`` is the planned spec."""
    check_engine(engine)
    module = importlib.import_module(_MODULES[engine][0])
    return module.build(backbone, weights, spec, log=log, threads=threads)


def prepare_engine(
    engine: str, backbone: "Backbone", weights: "WeightsFile", spec: "EmbeddingSpec",
    *, log: Callable[[str], None] | None = None,
) -> None:
    """Make ready, in this process, what ``engine`` builds from (nothing for most engines)."""
    check_engine(engine)
    module = importlib.import_module(_MODULES[engine][0])
    if hasattr(module, "prepare"):
        module.prepare(backbone, weights, spec, log=log)
