"""Backbones: the frozen networks cellembed can embed with, and their registry.

A backbone is configuration (the timm shape): its framework, which input sizes it takes,
its tap names and presets, how pixels are preprocessed and resized (recorded in the
embedding spec), where its weights come from and what identifies them. An engine
(:mod:`cellembed.engines`) loads it as a tap extractor (the tap maps before pooling);
views, pooling and heat maps are the same NumPy code for every backbone
(:mod:`cellembed.network`).

Frameworks: ``keras`` backbones (Xception) give a Keras model (``build``, ``preprocess``,
``layers``), run by TensorFlow or converted once for ONNX Runtime; ``onnx`` backbones are
an ONNX file (``model_path``, ``prepare_input``, ``tap_outputs``), run by ONNX Runtime
without TensorFlow. A backbone whose configuration lives in its weights file (the ``onnx``
backbone's description) gives it in :meth:`Backbone.configured`.

Adding a backbone is one new module in this package that defines a :class:`Backbone` and
one line in :data:`_MODULES` below; ``cellembed extract --backbone NAME`` then offers it,
and :func:`cellembed.embedder_from_spec` rebuilds it from any file it wrote.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

from cellembed.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from cellembed.spec import EmbeddingSpec
    from cellembed.weights import WeightsFile

#: Registered backbones: name (the ``--backbone`` value) -> module defining ``BACKBONE``.
_MODULES: dict[str, str] = {
    "xception": "cellembed.backbones.xception",
    "onnx": "cellembed.backbones.onnx_file",
}
DEFAULT_BACKBONE = "xception"


class Backbone(Protocol):
    """What the rest of cellembed needs to know about a network.

    Attributes:
        name: registry key and ``--backbone`` value (``"xception"``).
        spec_name: the ``backbone`` field of embedding specs it writes; specs are matched
            to backbones by this value.
        title: name for people, used in messages (``"Xception"``).
        framework: ``"keras"`` or ``"onnx"``: which engines can run it.
        min_input_size, default_input_size: in pixels, square inputs.
        fixed_input_size: True when the network takes only ``default_input_size``.
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
    framework: str
    min_input_size: int
    default_input_size: int
    fixed_input_size: bool
    tap_presets: Mapping[str, tuple[str, ...]]
    default_layers: str
    preprocessing: str
    resize: str
    weights_env: str
    libraries: tuple[str, ...]

    def download_weights(self) -> "Path":
        """Fetch the ImageNet weights (needs internet); raise InputError when it fails."""

    def weights_identity(self, path: "Path") -> str:
        """The SHA-256 that identifies the network a weights file gives (the spec's
        ``weights_sha256``)."""

    def configured(self, weights: "WeightsFile") -> "Backbone":
        """This backbone as ``weights`` configure it (most backbones: itself)."""

    def tap_channels(self, names: Sequence[str]) -> list[int]:
        """The channel count of each named tap (from the configuration, without building
        the network: the spec's tap widths); an unknown name is refused (InputError) with
        the valid ones."""

    def tap_role(self, name: str) -> str:
        """What a layer sees, for readers of explanations ("early: ..."; "" when unknown)."""

    # keras backbones only (the TensorFlow engine, and the conversion for ONNX Runtime):
    #   build(input_size) -> a randomly initialised Keras model, no top, square input
    #   preprocess(pixels) -> tensor op: (n, size, size, 3) float32 RGB in 0..255 -> input
    #   layers(model) -> stable layer name -> layer, for every layer with a 4-D output
    # onnx backbones only (the ONNX Runtime engine):
    #   model_path, prepare_input(pixels) -> the model's input, tap_outputs(names) -> TapOutput



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
    if backbone.fixed_input_size and input_size != backbone.default_input_size:
        raise InputError(
            f"--input-size {input_size} is not the size {backbone.title} takes ({backbone.default_input_size}); "
            "leave --input-size out"
        )
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
