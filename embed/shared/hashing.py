"""SHA-256 of files, the key of the embeddings cache and of weights identity."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks).

    Raises:
        OSError: the file cannot be read, or is not a regular file (a FIFO, a device, or a
            link to one: reading it would wait forever or never end).
    """
    digest = hashlib.sha256()
    # Non-blocking open: a FIFO without a writer would block the open itself.
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
