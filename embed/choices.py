"""The spec fields a run chooses beside the backbone, weights, taps and input size.

``views`` (:mod:`cellembed.views`), ``crop`` (:mod:`cellembed.cellcrop`), ``stain``
(:mod:`cellembed.stain`) and ``pooling`` (:mod:`cellembed.pooling`): each has a default
meaning "as the first version did" and a check. Presets (:mod:`cellembed.presets`) fill
them, :func:`cellembed.embedder.planned_spec` checks them once, and a spec gives them back
(:func:`choices_of`) to rebuild its embedder. A new choice is one module plus one entry in
:data:`CHOICES` (and a spec field with the same default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cellembed.cellcrop import check_crop
from cellembed.pooling import DEFAULT_POOLING, check_pooling
from cellembed.stain import check_stain
from cellembed.views import check_views

if TYPE_CHECKING:
    from cellembed.spec import EmbeddingSpec


@dataclass(frozen=True)
class Choice:
    default: Any  # what the first version did
    check: Callable[[Any], None]  # raises InputError naming the option


CHOICES: dict[str, Choice] = {
    "views": Choice(1, check_views),
    "crop": Choice("none", check_crop),
    "stain": Choice("none", check_stain),
    "pooling": Choice(DEFAULT_POOLING, check_pooling),
}


def checked_choices(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every choice: the given value (checked), else its default."""
    unknown = set(values) - set(CHOICES)
    if unknown:
        raise TypeError(f"unknown choices {', '.join(sorted(unknown))}")
    out = {}
    for name, choice in CHOICES.items():
        value = values.get(name, choice.default)
        choice.check(value)
        out[name] = value
    return out


def choices_of(spec: "EmbeddingSpec") -> dict[str, Any]:
    """The choices ``spec`` was made with."""
    return {name: getattr(spec, name) for name in CHOICES}
