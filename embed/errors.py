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

    ``problem`` says what; ``hint`` (optional) is advice that names ``cellembed extract``'s
    own options (the preset the file was made with); the message adds them and the advice
    of ``cellembed extract``: ``--overwrite`` only where the file is one cellembed wrote
    (``replaceable``), never for a file of someone else. Other commands (``cellclf predict
    --cache``) catch it and give their own advice after ``problem``.
    """

    def __init__(self, problem: str, *, hint: str | None = None, replaceable: bool = True) -> None:
        self.problem, self.hint, self.replaceable = problem, hint, replaceable
        advice = ("pass --overwrite to replace it, or choose another output" if replaceable
                  else "cellembed did not write it: choose another -o, or move that file away")
        super().__init__(f"{problem}{f'; {hint}' if hint else ''}: {advice}")


class RunFailed(Exception):
    """Work failed for a reason outside the user's input (a crashed conversion, a lost
    cluster); finished work was kept. The message says what to do; exit status 1."""


class OutputBusy(InputError):
    """Another run is writing the same output now (it holds the output's lock file); the
    second run is refused before any work, exit status 2."""


class DiskFull(RunFailed):
    """The disk filled up while an output was written; the output was left as it was and
    finished work was kept. The message names the file and the free space; exit status 1.

    ``facts``: the message without its advice (which file, the size needed, the free
    space), for a caller that gives its own advice."""

    def __init__(self, message: str, facts: str | None = None) -> None:
        super().__init__(message)
        self.facts = facts or message
