"""Exceptions of the cellclf modules."""

from cellembed.errors import InputError


class ClassifierInputError(InputError):
    """Bad input to ``cellclf`` the user can fix (too few images, leak, wrong spec...).

    A subclass of :class:`cellembed.InputError`, so one ``except InputError`` catches both;
    the command-line tool prints the message on one line and exits with status 2.
    """


class PredictorLoadError(ClassifierInputError):
    """A file that is not a cellclf predictor, was tampered with, or is from another version."""
