"""Exceptions shared by the cellembed modules (and subclassed by cellclf)."""


class InputError(Exception):
    """Bad input the user can fix (missing folder, unknown layer, mismatched spec...).

    The command-line tools print the message on one line and exit with status 2.
    """


class Interrupted(Exception):
    """Ctrl-C during long work; finished work was checkpointed and the run can resume.

    The command-line tools print the message (which says how to resume) and exit 130.
    """


class OutputConflict(InputError):
    """The output (or its work folder) holds something this run must not mix with or
    replace: a file cellembed did not write, or embeddings of another spec.

    ``problem`` says what; the message adds the advice of ``cellembed extract``. Other
    commands (``cellclf predict --cache``) catch it and give their own advice.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}: pass --overwrite to replace it, or choose another output")


class RunFailed(Exception):
    """Work failed for a reason outside the user's input (a crashed conversion, a lost
    cluster); finished work was kept. The message says what to do; exit status 1."""


class OutputBusy(InputError):
    """Another run is writing the same output now (it holds the output's lock file); the
    second run is refused before any work, exit status 2."""


class DiskFull(RunFailed):
    """The disk filled up while an output was written; the output was left as it was and
    finished work was kept. The message names the file and the free space; exit status 1."""
