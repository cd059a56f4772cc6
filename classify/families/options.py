"""A model family's settings, declared once: the ``cellclf fit`` option, the FitConfig value.

A :class:`FamilyOption` says how one setting is spelled on the command line (``flag``),
what it is called in :class:`cellclf.fitting.FitConfig` (``<family key>_<name>``, e.g.
``lr_Cs``) and in metrics.json's ``config``, its default, its help text and how a value
is checked. ``parse`` takes the command-line text or a Python value and returns the value
the family uses, or raises ``ValueError`` with a message that completes "--flag ...".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class FamilyOption:
    """One setting of a model family.

    Attributes:
        name: the setting's name inside the family (``Cs``, ``trials``).
        default: its value when not given (already parsed).
        help: one or two sentences for ``cellclf fit --help``.
        parse: text or value -> checked value; raises ValueError("must be ...").
        flag: the command-line option (``--lr-c``); None for a Python-only setting.
        metavar: how the value is shown in ``--help`` (e.g. ``C,C,...``).
    """

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]
    flag: str | None = None
    metavar: str | None = None

    @property
    def default_text(self) -> str:
        """The default as it would be typed on the command line."""
        return as_text(self.default)


def as_text(value: Any) -> str:
    """A parsed value as command-line text: sequences comma-separated, numbers with %g."""
    if isinstance(value, (tuple, list)):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def positive_numbers(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.01,0.1"`` or ``(0.01, 0.1)`` -> ``(0.01, 0.1)``; one or more numbers > 0."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(v) for v in items if not isinstance(v, str) or v.strip())
    except (TypeError, ValueError):
        raise ValueError(f"must be comma-separated numbers, got {value!r}") from None
    if not numbers or any(not v > 0 for v in numbers):
        raise ValueError(f"must be one or more positive numbers, e.g. 0.001,0.01,0.1; got {value!r}")
    return numbers


def whole_number(minimum: int) -> Callable[[Any], int]:
    """A parser of whole numbers >= ``minimum`` (text or int)."""

    def parse(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or (not isinstance(value, str) and number != value):
            raise ValueError(f"must be a whole number, got {value!r}")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def choices(allowed: Sequence[Any]) -> Callable[[Any], tuple]:
    """A parser of a non-empty sequence of values among ``allowed``."""

    def parse(value: Any) -> tuple:
        values = tuple(value)
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise ValueError(f"must be one or more of {', '.join(map(str, allowed))}; got {value!r}")
        return values

    return parse
