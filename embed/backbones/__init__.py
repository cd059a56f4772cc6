"""Backbones: the frozen networks cellembed can embed with, and their registry.

A backbone describes one network: how to build it (randomly initialised, no top), which
input sizes it takes, its stable layer names and tap presets, how pixels are preprocessed
and resized (recorded in the embedding spec), where its weights come from. The engines
(:mod:`cellembed.engines`) turn a backbone plus weights into an embedder.

Adding a backbone is one new module in this package that defines a :class:`Backbone` and
one line in :data:`_MODULES` below; ``cellembed extract --backbone NAME`` then offers it,
and :func:`cellembed.embedder_from_spec` rebuilds it from any file it wrote.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from cellembed.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from cellembed.spec import EmbeddingSpec

#: Registered backbones: name (the ``--backbone`` value) -> module defining ``BACKBONE``.
_MODULES: dict[str, str] = {
    "xception": "cellembed.backbones.xception",
}
DEFAULT_BACKBONE = "xception"


class Backbone(Protocol):
    """What the rest of cellembed needs to know about a network.

    Attributes:
        name: registry key and ``--backbone`` value (``"xception"``).
        spec_name: the ``backbone`` field of embedding specs it writes; specs are matched
            to backbones by this value.
        title: name for people, used in messages (``"Xception"``).
        min_input_size, default_input_size: in pixels, square inputs.
        tap_presets: preset name -> layer names (``"multiscale"``, ``"final"``).
        default_layers: the default preset.
        preprocessing, resize: descriptions recorded in the spec (part of its identity);
            ``resize`` must be ``cellembed.spec.RESIZE``, the one resize cellembed's
            decoding implements (a backbone needing another adds it to cellembed.decoding).
        weights_env: environment variable naming a local weights file.
        libraries: distributions whose versions are recorded in the spec.
    """

    name: str
    spec_name: str
    title: str
    min_input_size: int
    default_input_size: int
    tap_presets: Mapping[str, tuple[str, ...]]
    default_layers: str
    preprocessing: str
    resize: str
    weights_env: str
    libraries: tuple[str, ...]

    def download_weights(self) -> "Path":
        """Fetch the ImageNet weights (needs internet); raise InputError when it fails."""

    def build(self, input_size: int) -> Any:
        """A randomly initialised Keras model of the network, no top, square input (the
        engines run it with TensorFlow, or convert it for ONNX Runtime)."""

    def preprocess(self, pixels: Any) -> Any:
        """Tensor op: (n, size, size, 3) float32 RGB in 0..255 -> the network's input."""

    def layers(self, model: Any) -> dict[str, Any]:
        """Stable layer name -> layer, for every layer of ``model`` with a 4-D output."""

    def tap_role(self, name: str) -> str:
        """What a layer sees, for readers of explanations ("early: ..."; "" when unknown)."""


def backbone_names() -> tuple[str, ...]:
    return tuple(_MODULES)


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``."""
    if name not in _MODULES:
        raise InputError(f"unknown --backbone {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).BACKBONE


def backbone_for_spec(spec: "EmbeddingSpec") -> Backbone:
    """The backbone that wrote embeddings of ``spec`` (matched by ``spec.backbone``)."""
    for name in _MODULES:
        backbone = get_backbone(name)
        if backbone.spec_name == spec.backbone:
            return backbone
    raise InputError(
        f"these embeddings were made with the backbone {spec.backbone!r}, which this cellembed does "
        f"not have (it has {', '.join(_MODULES)}); use the cellembed version that made them"
    )


def check_input_size(backbone: Backbone, input_size: int) -> None:
    if input_size < backbone.min_input_size:
        raise InputError(
            f"--input-size {input_size} is too small; {backbone.title} needs at least {backbone.min_input_size}"
        )


def parse_layers(backbone: Backbone, layers: str | Sequence[str] | None) -> list[str]:
    """Tap names from a preset name, a comma-separated list, or a sequence of names."""
    if layers is None:
        layers = backbone.default_layers
    if isinstance(layers, str):
        if layers in backbone.tap_presets:
            return list(backbone.tap_presets[layers])
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    names = list(layers)
    if not names:
        raise InputError(f"--layers is empty; use {', '.join(backbone.tap_presets)} or layer names")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"--layers names {', '.join(duplicated)} more than once")
    return names
