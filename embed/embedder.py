"""From settings to a spec, and from a spec back to the embedder that writes it.

:func:`resolved_spec` is the whole spec a run produces, tap widths included (the
backbone's configuration gives its taps' channels), without building anything (no
TensorFlow): extraction checks an existing file or checkpoint against it before any work.
:func:`embedder_from_spec` composes exactly the embedder that wrote a spec; ``extract``,
``cellclf predict`` and in-memory classification all go through it, so a spec field
added later is threaded into the network here, once.
"""

from __future__ import annotations

import json
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
    Calibration,
    build_extractor,
    check_engine,
    check_precision_runs,
    engine_libraries,
    runs_precision,
    engine_module,
    prepare_engine,
)
from cellembed.choices import checked_choices, choices_of
from cellembed.errors import InputError
from cellembed.pooling import statistics
from cellembed.precision import resolve_precision
from cellembed.presets import DEFAULT_PRESET, PRESETS, preset_settings
from cellembed.network import Network
from cellembed.spec import EmbeddingSpec
from cellembed.shared.versions import library_versions
from cellembed.weights import WeightsFile, check_weights, resolve_weights


def resolved_spec(
    backbone: Backbone,
    weights: WeightsFile,
    input_size: int,
    tap_names: Sequence[str],
    engine: str = DEFAULT_ENGINE,
    **choices: Any,
) -> EmbeddingSpec:
    """The spec a run with these settings produces. ``backbone`` is configured (its
    ``tap_channels`` give the widths; an unknown tap is refused here); ``choices``:
    ``views``, ``crop``, ``stain``, ``pooling`` (:mod:`cellembed.choices`; each left out is
    its "as before" default), checked here."""
    checked = checked_choices(choices)
    per_channel = len(statistics(checked["pooling"]))
    widths = [channels * per_channel for channels in backbone.tap_channels(tap_names)]
    return EmbeddingSpec.from_widths(
        zip(tap_names, widths),
        backbone=backbone.spec_name,
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        input_size=input_size,
        preprocessing=backbone.preprocessing,
        resize=backbone.resize,
        **checked,
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
    """The resolved spec of command-line style settings, and the resolved weights.

    Checks everything that can be checked without a network.

    Parameters
    ----------
    backbone : str, default "xception"
        The network (``cellembed.backbones``).
    layers : str or sequence of str, optional
        A tap preset of the backbone or layer names (comma-separated string or sequence);
        None: the ``preset``'s (see ``cellembed.presets``).
    weights : str, PathLike or WeightsFile, optional
        The weights file (a path, ``"imagenet"``, or None for the backbone's environment variable).
    input_size : int, optional
        Side of the square network input, in pixels; None: the backbone's input size.
    engine : str, default "onnxruntime"
        ``"onnxruntime"`` or ``"tensorflow"``.
    preset : str, default "default"
        Named settings (``cellembed.presets``) giving the settings left None.
    **choices : str or int
        ``views``, ``crop``, ``stain``, ``pooling``; None: the ``preset``'s.

    Returns
    -------
    spec : EmbeddingSpec
        The resolved spec.
    weights : WeightsFile
        The resolved weights.
    """
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
    settings["precision"] = resolve_precision(settings["precision"], runs_precision(engine, chosen, "int8"))
    check_precision_runs(engine, chosen, settings["precision"])
    spec = resolved_spec(chosen, weights_file, size, tap_names, engine, **settings)
    return spec, weights_file


def spec_weights(spec: EmbeddingSpec, weights: "str | os.PathLike | WeightsFile | None" = None) -> WeightsFile:
    """The weights file (a path, ``"imagenet"``, or None for the backbone's environment
    variable) resolved and checked to be the one ``spec`` was made with."""
    backbone = backbone_for_spec(spec)
    weights_file = resolve_weights(weights, backbone)
    check_weights(weights_file, spec.weights_sha256, spec.weights_source, "these embeddings are made with", backbone)
    return weights_file


def embedder_from_spec(
    spec: EmbeddingSpec,
    weights: "str | os.PathLike | WeightsFile | None" = None,
    engine: str = DEFAULT_ENGINE,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> Network:
    """Rebuild exactly the embedder that wrote embeddings of ``spec``.

    The embedder is the backbone loaded by the engine as a tap extractor, with the spec's
    views and pooling (``cellembed.network.Network``, which also gives the heat-map material).

    Parameters
    ----------
    spec : EmbeddingSpec
        The spec of an embeddings file (``cellembed.read_spec``), of a classifier,
        or resolved from settings (``spec_for_settings``).
    weights : str, PathLike or WeightsFile, optional
        The weights file (a path, ``"imagenet"``, or None for the backbone's
        environment variable); refused unless it identifies the spec's network.
    engine : str, default "onnxruntime"
        ``"onnxruntime"`` or ``"tensorflow"``; same embeddings within 1e-4.
    log : callable, optional
        Receives a line when a one-time conversion starts.
    threads : int, optional
        Cap on the engine's CPU threads (None: the engine's default).

    Returns
    -------
    Network
        The rebuilt embedder.

    Raises
    ------
    InputError
        Unknown backbone, other weights, or a spec this cellembed cannot
        reproduce (another preprocessing, resize, colour or pooling).
    """
    backbone, weights_file, rebuilt = _rebuild(spec, weights, engine)
    extractor = build_extractor(engine, backbone, weights_file, rebuilt.tap_names, rebuilt.input_size,
                                log=log, threads=threads, precision=rebuilt.precision,
                                calibration=_calibration(rebuilt))
    claimed = backbone.tap_channels(rebuilt.tap_names)
    built = [int(extractor.channels[name]) for name in rebuilt.tap_names]
    if built != claimed:  # the backbone's configuration is wrong about its own network
        raise InputError(
            f"the loaded {backbone.title} gives taps of {built} channels, not the {claimed} its configuration says"
        )
    return Network(extractor, rebuilt, backbone)


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
    prepare_engine(engine, backbone, weights_file, rebuilt.tap_names, rebuilt.input_size, log=log,
                   precision=rebuilt.precision, calibration=_calibration(rebuilt))


def _calibration(spec: EmbeddingSpec) -> Calibration | None:
    """What an int8 network of ``spec`` is calibrated on: the sample cells prepared as the
    spec embeds them (:mod:`cellembed.calibration`); None for fp32."""
    if spec.precision != "int8":
        return None
    from cellembed.calibration import calibration_digest, calibration_pixels

    key = json.dumps({"cells": calibration_digest(), "input_size": spec.input_size, "stain": spec.stain,
                      "crop": spec.crop, "views": spec.views}, sort_keys=True)
    return Calibration(key, lambda: calibration_pixels(spec))


def _rebuild(spec: EmbeddingSpec, weights: "str | os.PathLike | WeightsFile | None", engine: str):
    """The configured backbone, checked weights and this cellembed's spec that reproduce
    ``spec`` (refused where they differ)."""
    check_engine(engine)
    backbone = backbone_for_spec(spec)
    weights_file = resolve_weights(weights, backbone)
    check_weights(weights_file, spec.weights_sha256, spec.weights_source, "these embeddings were made with", backbone)
    backbone = backbone.configured(weights_file)
    check_input_size(backbone, spec.input_size)
    engine_module(engine, backbone)
    try:
        backbone.tap_channels(spec.tap_names)
    except InputError:
        raise InputError(
            f"these embeddings were made with the taps {', '.join(spec.tap_names)}, not all of which this "
            f"cellembed's {backbone.title} has; use the cellembed version that made them"
        ) from None
    rebuilt = resolved_spec(
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

    Parameters
    ----------
    weights : str, PathLike or WeightsFile, optional
        The weights file (a path, ``"imagenet"``, or None for the backbone's environment variable).
    input_size : int, optional
        Side of the square network input, in pixels; defaults to the backbone's (299 for Xception).
    layers : str or sequence of str, optional
        A tap preset of the backbone (Xception: ``"mid"``, ``"multiscale"``,
        ``"final"``; None: the ``preset``'s), a comma-separated string or a sequence of layer
        names.
    engine : str, default "onnxruntime"
        ``"onnxruntime"`` or ``"tensorflow"``.
    log : callable, optional
        Receives a line when a one-time conversion starts.
    backbone : str, default "xception"
        The network (``cellembed.backbones``).
    preset : str, default "default"
        Named settings (``cellembed.presets``) giving the defaults of ``layers`` and ``choices``.
    **choices : str or int
        ``views``, ``crop``, ``stain``, ``pooling``; each defaults to the ``preset``'s
        (``cellembed.presets``).

    Returns
    -------
    Network
        The embedder (``cellembed.network.Network``).
    """
    spec, weights_file = spec_for_settings(
        backbone=backbone, layers=layers, weights=weights, input_size=input_size, engine=engine,
        preset=preset, **choices,
    )
    return embedder_from_spec(spec, weights_file, engine, log=log)
