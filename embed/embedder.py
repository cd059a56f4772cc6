"""From settings to a spec, and from a spec back to the embedder that writes it.

:func:`planned_spec` says what spec a run will produce without building anything (no
TensorFlow): extraction uses it to check an existing file or checkpoint before any work.
:func:`embedder_from_spec` rebuilds exactly the embedder that wrote a spec; ``extract``,
``cellclf predict`` and in-memory classification all go through it, so a spec field
added later is threaded into the network here, once.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from cellembed.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    backbone_for_spec,
    check_input_size,
    get_backbone,
    parse_layers,
)
from cellembed.engines import (
    DEFAULT_ENGINE,
    build_extractor,
    check_engine,
    engine_libraries,
    engine_module,
    prepare_engine,
)
from cellembed.choices import checked_choices, choices_of
from cellembed.errors import InputError
from cellembed.presets import DEFAULT_PRESET, PRESETS, preset_settings
from cellembed.network import Network, tap_widths
from cellembed.spec import EmbeddingSpec
from cellembed.shared.versions import library_versions
from cellembed.weights import WeightsFile, check_weights, resolve_weights

def planned_spec(
    backbone: Backbone,
    weights: WeightsFile,
    input_size: int,
    tap_names: Sequence[str],
    engine: str = DEFAULT_ENGINE,
    widths: Sequence[int] | None = None,
    **choices: Any,
) -> EmbeddingSpec:
    """The spec a run with these settings produces; tap widths are 0 unless given (they
    are known once the network is built, or from a file made with the same taps).
    ``choices``: ``views``, ``crop``, ``stain``, ``pooling`` (:mod:`cellembed.choices`;
    each left out is its "as before" default), checked here."""
    return EmbeddingSpec.from_widths(
        zip(tap_names, widths if widths is not None else [0] * len(tap_names)),
        backbone=backbone.spec_name,
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        input_size=input_size,
        preprocessing=backbone.preprocessing,
        resize=backbone.resize,
        **checked_choices(choices),
        versions=library_versions(("cellembed", *backbone.libraries, *engine_libraries(engine))),
    )


def spec_for_settings(
    *,
    backbone: str = DEFAULT_BACKBONE,
    layers: str | Sequence[str] | None = None,
    weights: "str | os.PathLike | WeightsFile | None" = None,
    input_size: int | None = None,
    engine: str = DEFAULT_ENGINE,
    preset: str = DEFAULT_PRESET,
    **choices: Any,
) -> tuple[EmbeddingSpec, WeightsFile]:
    """The planned spec of command-line style settings (None: the ``preset``'s, see
    :mod:`cellembed.presets`, or the backbone's input size; ``choices``: ``views``,
    ``crop``, ``stain``, ``pooling``), and the resolved weights. Checks everything that
    can be checked without a network."""
    check_engine(engine)
    settings = preset_settings(preset, layers=layers, **choices)
    chosen = get_backbone(backbone)
    weights_file = resolve_weights(weights, chosen)
    chosen = chosen.configured(weights_file)
    layers = settings.pop("layers")
    if isinstance(layers, str) and layers == PRESETS[preset].layers and layers not in chosen.tap_presets:
        layers = None  # a tap preset this backbone does not have: its own default taps
    tap_names = parse_layers(chosen, layers)
    size = chosen.default_input_size if input_size is None else input_size
    check_input_size(chosen, size)
    engine_module(engine, chosen)
    spec = planned_spec(chosen, weights_file, size, tap_names, engine, **settings)
    return spec, weights_file


def embedder_from_spec(
    spec: EmbeddingSpec,
    weights: "str | os.PathLike | WeightsFile | None" = None,
    engine: str = DEFAULT_ENGINE,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> Network:
    """Rebuild exactly the embedder that wrote embeddings of ``spec``: the backbone loaded
    by the engine as a tap extractor, with the spec's views and pooling
    (:class:`cellembed.network.Network`, which also gives the heat-map material).

    Args:
        spec: the spec of an embeddings file (``cellembed.read_spec``), of a predictor, or
            a planned spec (tap widths 0).
        weights: the weights file (a path, ``"imagenet"``, or None for the backbone's
            environment variable); refused unless it identifies the spec's network.
        engine: ``"onnxruntime"`` or ``"tensorflow"``; same embeddings within 1e-4.
        log: receives a line when a one-time conversion starts.
        threads: cap on the engine's CPU threads (None: the engine's default).

    Raises:
        InputError: unknown backbone, other weights, or a spec this cellembed cannot
            reproduce (another preprocessing, resize, colour or pooling).
    """
    backbone, weights_file, rebuilt = _rebuild(spec, weights, engine)
    extractor = build_extractor(engine, backbone, weights_file, rebuilt.tap_names, rebuilt.input_size,
                                log=log, threads=threads)
    built = rebuilt.with_tap_widths(tap_widths(extractor, rebuilt))
    if spec.widths_known and [t.width for t in built.taps] != [t.width for t in spec.taps]:
        raise InputError(
            f"the rebuilt {backbone.title} gives other tap widths than the spec "
            f"({[t.width for t in built.taps]} vs {[t.width for t in spec.taps]})"
        )
    return Network(extractor, built, backbone)


def prepare_embedder(
    spec: EmbeddingSpec,
    weights: "str | os.PathLike | WeightsFile | None" = None,
    engine: str = DEFAULT_ENGINE,
    *,
    log: Callable[[str], None] | None = None,
) -> None:
    """Check ``spec`` can be rebuilt and make ready what its engine needs once (the ONNX
    conversion), here, before many worker processes build the embedder at once."""
    backbone, weights_file, rebuilt = _rebuild(spec, weights, engine)
    prepare_engine(engine, backbone, weights_file, rebuilt.tap_names, rebuilt.input_size, log=log)


def _rebuild(spec: EmbeddingSpec, weights: "str | os.PathLike | WeightsFile | None", engine: str):
    """The configured backbone, checked weights and planned spec that reproduce ``spec``."""
    check_engine(engine)
    backbone = backbone_for_spec(spec)
    weights_file = resolve_weights(weights, backbone)
    check_weights(weights_file, spec.weights_sha256, spec.weights_source, "these embeddings were made with", backbone)
    backbone = backbone.configured(weights_file)
    check_input_size(backbone, spec.input_size)
    engine_module(engine, backbone)
    rebuilt = planned_spec(
        backbone, weights_file, spec.input_size, spec.tap_names, engine,
        **choices_of(spec),
    )
    differences = rebuilt.differences(spec)
    if differences:
        raise InputError(
            f"this cellembed cannot reproduce embeddings made with {'; '.join(differences)} "
            "(this version vs the file's); use the cellembed version that made them"
        )
    return backbone, weights_file, rebuilt


def load_embedder(
    weights: "str | os.PathLike | WeightsFile | None" = None,
    input_size: int | None = None,
    layers: str | Sequence[str] | None = None,
    engine: str = DEFAULT_ENGINE,
    log: Callable[[str], None] | None = None,
    *,
    backbone: str = DEFAULT_BACKBONE,
    preset: str = DEFAULT_PRESET,
    **choices: Any,
) -> Network:
    """Build a backbone (default Xception) with its weights and the requested taps.

    ``layers`` is a tap preset of the backbone (Xception: ``"mid"``, ``"multiscale"``,
    ``"final"``; None: the ``preset``'s), a comma-separated string or a sequence of layer
    names; ``input_size`` defaults to the backbone's (299 for Xception); the ``choices``
    (``views``, ``crop``, ``stain``, ``pooling``) default to the ``preset``'s
    (:mod:`cellembed.presets`).
    """
    spec, weights_file = spec_for_settings(
        backbone=backbone, layers=layers, weights=weights, input_size=input_size, engine=engine,
        preset=preset, **choices,
    )
    return embedder_from_spec(spec, weights_file, engine, log=log)
