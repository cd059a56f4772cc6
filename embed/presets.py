"""Named extraction settings: ``cellembed extract --preset NAME`` (and ``extract(preset=)``).

A preset fills the settings a run does not give: the taps (``layers``) and the choices of
:mod:`cellembed.choices` (test-time ``views``, ``crop``, colour normalisation ``stain``,
``pooling``, ``precision``); an option given explicitly wins over the preset. A precision of
``auto`` is int8 on CPUs with int8 instructions, fp32 elsewhere (:mod:`cellembed.precision`). The values were chosen from ``bench/accuracy_levers.py``
(the README's accuracy section has the measured figures):

* ``default``: the most accurate setting whose extraction costs at most about 4x the
  first version's per-image time: mid taps, 4 views, cell crop, Reinhard, channel means and
  standard deviations (pbc-dev 5-fold CV 97.55%, against 95.45% for ``v1``), int8 where the
  CPU has the instructions (2.8x faster, 97.35% against 97.50% on the same folds);
* ``best``: the default with all 8 views (twice its network time), for the most accurate
  embedding whatever its cost (figures in the README's accuracy section);
* ``v1``: the first version's settings (multiscale taps, one view, whole image, colours
  as decoded, fp32), to reproduce or extend files made with it.

Adding a preset is one entry in :data:`PRESETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cellembed.errors import InputError
from cellembed.precision import AUTO

if TYPE_CHECKING:
    from cellembed.spec import EmbeddingSpec


@dataclass(frozen=True)
class Preset:
    layers: str  # a tap preset of the backbone (cellembed.backbones), or layer names
    choices: dict[str, Any]  # every entry of cellembed.choices.CHOICES
    about: str


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "mid", {"views": 4, "crop": "cell", "stain": "reinhard", "pooling": "global_average+std", "precision": "auto"}, "the default"
    ),
    "best": Preset(
        "mid", {"views": 8, "crop": "cell", "stain": "reinhard", "pooling": "global_average+std", "precision": "auto"},
        "the default with all 8 views",
    ),
    "v1": Preset(
        "multiscale", {"views": 1, "crop": "none", "stain": "none", "pooling": "global_average", "precision": "fp32"},
        "the first version's settings",
    ),
}
DEFAULT_PRESET = "default"


def preset_text(name: str) -> str:
    """One line for people: what the preset sets."""
    chosen = PRESETS[name]
    views = chosen.choices["views"]
    rest = ", ".join(f"{key} {value}" for key, value in chosen.choices.items() if key != "views")
    return f"{chosen.layers} taps, {views} view(s), {rest}"


def matching_preset(spec: "EmbeddingSpec") -> str | None:
    """The preset whose taps and choices ``spec`` has (None when none has)."""
    from cellembed.backbones import backbone_for_spec, parse_layers
    from cellembed.choices import choices_of

    try:
        backbone = backbone_for_spec(spec)
    except InputError:
        return None
    for name, preset in PRESETS.items():
        if preset.layers not in backbone.tap_presets:
            continue
        chosen = dict(preset.choices)
        if chosen.get("precision") == AUTO:  # auto: either precision
            chosen["precision"] = spec.precision
        if (parse_layers(backbone, preset.layers), chosen) == (spec.tap_names, choices_of(spec)):
            return name
    return None


def preset_settings(preset: str = DEFAULT_PRESET, *, layers: Any = None, **choices: Any) -> dict[str, Any]:
    """``layers`` and every choice (:mod:`cellembed.choices`): each value given (not None),
    else the preset's."""
    if preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    given = {name: value for name, value in choices.items() if value is not None}
    return {"layers": chosen.layers if layers is None else layers, **chosen.choices, **given}
