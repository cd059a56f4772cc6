"""Silencing native libraries' start-up chatter on stderr, process-wide."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

#: Set to 1 to see TensorFlow's native messages.
SHOW_LOGS_ENV = "CELLEMBED_TF_LOGS"


@contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Silence TensorFlow's C++ start-up messages (oneDNN, CUDA probing) on stderr.

    They are printed by native code before any Python logging setting applies, so the
    only way is to point file descriptor 2 at /dev/null meanwhile. Python exceptions
    still propagate. Set CELLEMBED_TF_LOGS=1 to see the messages.
    """
    if os.environ.get(SHOW_LOGS_ENV):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
