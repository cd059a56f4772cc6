"""What the ``cellembed`` and ``cellclf`` commands share: exit statuses, one-line errors.

Commands stay thin: they parse options, call a library function inside
:func:`user_errors` and print. Bad input the user can fix (an :class:`InputError`) becomes
a one-line ``Error: ...`` with exit status 2; Ctrl-C during long work (:class:`Interrupted`)
a one-line message saying how to resume, with exit status 130; a failure outside the
user's input (:class:`RunFailed`) a one-line error with exit status 1. Never a traceback.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NoReturn

import click

from cellembed.errors import InputError, Interrupted, RunFailed

EXIT_BAD_INPUT = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130


class BadInput(click.ClickException):
    """A one-line error message with exit status 2 (bad input the user can fix)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


def exit_interrupted(message: object) -> NoReturn:
    """Ctrl-C during long work: print the one-line message and exit 130."""
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(EXIT_INTERRUPTED)


@contextmanager
def user_errors(on_interrupt: str | None = None) -> Iterator[None]:
    """Turn InputError into exit 2, RunFailed into exit 1 and Interrupted into exit 130,
    one line each.

    ``on_interrupt``: what to say when a plain Ctrl-C (KeyboardInterrupt) reaches the
    command, i.e. what state the interrupted work left; without it Ctrl-C propagates.
    """
    try:
        yield
    except InputError as exc:
        raise BadInput(str(exc)) from None
    except RunFailed as exc:
        raise click.ClickException(" ".join(str(exc).split("\n"))) from None
    except Interrupted as exc:
        exit_interrupted(exc)
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        exit_interrupted(on_interrupt)


def exit_if_skipped(errors: list[dict[str, str]], where: str, allow_skips: bool) -> None:
    """Name the unreadable files (``where`` says where all are listed); exit 3 unless allowed."""
    if not errors:
        return
    click.echo(
        f"skipped {len(errors)} file(s) that could not be read, e.g. "
        f"{errors[0]['path']}: {errors[0]['reason']}; {where}",
        err=True,
    )
    if not allow_skips:
        raise SystemExit(EXIT_SKIPPED)


def engine_option(function):
    """The ``--engine`` option of the commands that run the network."""
    from cellembed.engines import DEFAULT_ENGINE, ENGINES

    return click.option(
        "--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE,
        help="What runs the network: onnxruntime is about 1.3x faster on CPU; the first run with "
        "new weights converts the network once (about 20 s, cached in $CELLEMBED_CACHE_DIR, default "
        "~/.cache/cellembed). tensorflow runs Keras directly. onnxruntime-gpu runs the same conversion on an "
        "NVIDIA GPU (needs pip install 'cellembed[gpu]'). All give the same embeddings.",
    )(function)


def max_pixels_option(function):
    """The ``--max-pixels`` option of the commands that decode images."""
    from cellembed.decoding import DEFAULT_MAX_PIXELS

    return click.option(
        "--max-pixels", default=DEFAULT_MAX_PIXELS, type=click.IntRange(min=1),
        help="Skip (and list in the errors) an image of more pixels than this (width x height), read from its "
        "header before decoding: keeps memory bounded whatever the files. Images much larger than the network "
        "input are decoded reduced. At most Pillow's decompression-bomb limit (89,478,485).",
    )(function)
