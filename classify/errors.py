"""Exceptions of the cellclf modules, and how their one-line messages list many names."""

from typing import Sequence

from cellembed.errors import InputError

#: Most items a one-line message lists before it says how many more there are.
LISTED = 8


def first_few(items: Sequence[str], limit: int = LISTED) -> str:
    """``a, b, c`` or, past ``limit`` items, ``a, b, ... and 112 more`` (a line stays readable
    with 120 classes)."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


class ClassifierInputError(InputError):
    """Bad input to ``cellclf`` the user can fix (too few images, leak, wrong spec...).

    A subclass of ``cellembed.InputError``, so one ``except InputError`` catches both;
    the command-line tool prints the message on one line and exits with status 2.
    """


class PredictorLoadError(ClassifierInputError):
    """A file that is not a cellclf predictor, was tampered with, or is from another version."""
