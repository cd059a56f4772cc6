"""Exceptions shared by the cellembed modules."""


class InputError(Exception):
    """Bad input the user can fix (missing folder, unknown layer, mismatched spec...).

    The command-line tools print the message on one line and exit with status 2.
    """
