"""Named extraction settings: ``cellembed extract --preset NAME`` (and ``extract(preset=)``).

A preset fills the image settings a run does not give: the taps (``layers``), the
test-time ``views``, the ``crop`` and the colour normalisation (``stain``); an option given
explicitly wins over the preset. The values were chosen from ``bench/accuracy_levers.py``
(the README's accuracy section has the measured figures):

* ``default``: the most accurate setting whose extraction costs at most about 4x the
  first version's per-image time: mid taps, 4 views, cell crop, Reinhard (pbc-dev 5-fold
  CV 97.1%, 0.372 s per image against 0.090 on 2 cores);
* ``best``: the default with all 8 views (twice its network time), for the most accurate
  embedding whatever its cost; its accuracy is not measured yet (the 4-view default gained
  0.6 points over 1 view);
* ``v1``: the first version's settings (multiscale taps, one view, whole image, colours
  as decoded), to reproduce or extend files made with it.

Adding a preset is one entry in :data:`PRESETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cellembed.errors import InputError

if TYPE_CHECKING:
    from cellembed.spec import EmbeddingSpec


@dataclass(frozen=True)
class Preset:
    layers: str  # a tap preset of the backbone (cellembed.backbones), or layer names
    views: int
    crop: str
    stain: str
    about: str


PRESETS: dict[str, Preset] = {
    "default": Preset("mid", 4, "cell", "reinhard", "the default"),
    "best": Preset("mid", 8, "cell", "reinhard", "the default with all 8 views"),
    "v1": Preset("multiscale", 1, "none", "none", "the first version's settings"),
}
DEFAULT_PRESET = "default"


def preset_text(name: str) -> str:
    """One line for people: what the preset sets."""
    chosen = PRESETS[name]
    return f"{chosen.layers} taps, {chosen.views} view(s), crop {chosen.crop}, stain {chosen.stain}"


def matching_preset(spec: "EmbeddingSpec") -> str | None:
    """The preset whose taps, views, crop and stain ``spec`` has (None when none has)."""
    from cellembed.backbones import backbone_for_spec, parse_layers

    try:
        backbone = backbone_for_spec(spec)
    except InputError:
        return None
    for name, preset in PRESETS.items():
        if preset.layers not in backbone.tap_presets:
            continue
        taps = parse_layers(backbone, preset.layers)
        if (taps, preset.views, preset.crop, preset.stain) == (spec.tap_names, spec.views, spec.crop, spec.stain):
            return name
    return None


def preset_settings(
    preset: str = DEFAULT_PRESET,
    *,
    layers: Any = None,
    views: int | None = None,
    crop: str | None = None,
    stain: str | None = None,
) -> dict[str, Any]:
    """``layers``, ``views``, ``crop`` and ``stain``: each given value, else the preset's."""
    if preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    return {
        "layers": chosen.layers if layers is None else layers,
        "views": chosen.views if views is None else views,
        "crop": chosen.crop if crop is None else crop,
        "stain": chosen.stain if stain is None else stain,
    }
