"""Exceptions shared by the cellembed modules (and subclassed by cellclf)."""


class InputError(Exception):
    """Bad input the user can fix (missing folder, unknown layer, mismatched spec...).

    The command-line tools print the message on one line and exit with status 2.
    """


class Interrupted(Exception):
    """Ctrl-C during long work; finished work was checkpointed and the run can resume.

    The command-line tools print the message (which says how to resume) and exit 130.
    """
