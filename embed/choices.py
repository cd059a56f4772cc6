"""The spec fields a run chooses beside the backbone, weights, taps and input size.

``views`` (:mod:`cellembed.views`), ``crop`` (:mod:`cellembed.cellcrop`), ``stain``
(:mod:`cellembed.stain`), ``pooling`` (:mod:`cellembed.pooling`) and ``precision``
(:mod:`cellembed.precision`): each has a default
meaning "as the first version did" and a check. Presets (:mod:`cellembed.presets`) fill
them, :func:`cellembed.embedder.resolved_spec` checks them once, and a spec gives them back
(:func:`choices_of`) to rebuild its embedder. A new choice is one module plus one entry in
:data:`CHOICES`, a spec field and its "as before" value in :data:`cellembed.spec.AS_BEFORE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cellembed.cellcrop import check_crop
from cellembed.pooling import check_pooling
from cellembed.precision import check_precision
from cellembed.spec import AS_BEFORE
from cellembed.stain import check_stain
from cellembed.views import check_views

if TYPE_CHECKING:
    from cellembed.spec import EmbeddingSpec


@dataclass(frozen=True)
class Choice:
    check: Callable[[Any], None]  # raises InputError naming the option
    name: str

    @property
    def default(self) -> Any:
        """What the first version did (:data:`cellembed.spec.AS_BEFORE`)."""
        return AS_BEFORE[self.name]


CHOICES: dict[str, Choice] = {
    "views": Choice(check_views, "views"),
    "crop": Choice(check_crop, "crop"),
    "stain": Choice(check_stain, "stain"),
    "pooling": Choice(check_pooling, "pooling"),
    "precision": Choice(check_precision, "precision"),
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
