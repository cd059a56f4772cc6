"""Atomic writes: a file or folder appears complete or not at all, with normal permissions.

Every file the toolkit writes (Parquet, CSV, JSON, HTML, joblib) goes through
:func:`atomic_path`; a finished folder (a ``cellclf fit`` RUN_DIR) through
:func:`install_folder`. A crash or kill leaves the previous version, or nothing, never a
half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import errno

from cellembed.errors import DiskFull, InputError, OutputBusy


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | Path, needs: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    A full disk (while the caller writes, or at the flush) raises :class:`DiskFull` naming
    ``target`` and the free space, with ``needs`` (the expected size in bytes) when known.

    The temporary file is flushed to disk before the rename and given the permissions a
    plain write would (``mkstemp`` makes private 0600 files; an existing target keeps its
    mode). On an exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _disk_full(exc, target, 0, needs) if is_disk_full(exc) else exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)
        raise _disk_full(exc, target, written, needs) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_disk_full(exc: OSError) -> bool:
    # Arrow's writers raise OSError without errno, naming the cause in the message.
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)


def _disk_full(exc: OSError, target: Path, written: int, needs: int | None) -> DiskFull:
    free = shutil.disk_usage(target.parent).free / 1e6
    size = f"it needs at least {needs / 1e6:.1f} MB" if needs else f"it needs more than the {written / 1e6:.1f} MB written"
    facts = f"the disk is full while writing {target} ({size}; {free:.1f} MB are free in {target.parent})"
    return DiskFull(f"{facts}; {target} was left as it was: free space there and run the same command again", facts)


def write_text(target: str | Path, text: str) -> Path:
    """Write UTF-8 text to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def staging_folder(target: str | Path) -> Path:
    """A new hidden sibling folder ``.NAME.partial-*`` to build ``target`` in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def install_folder(staging: Path, target: Path) -> None:
    """Rename a finished staging folder to ``target``, moving an old ``target`` aside first.

    ``mkdtemp`` makes the staging folder private (0700); it gets the permissions a plain
    ``mkdir`` would. The old folder is deleted only after the new one is in place.
    """
    os.chmod(staging, 0o777 & ~current_umask())
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_output(target: str | Path, option: str = "-o", example: str = "embeddings.parquet") -> Path:
    """Check, before any work, that the file ``target`` can be written: not a folder, its
    folder created, a real write probe in it (permission bits say nothing for root or a
    read-only mount).

    Raises:
        InputError: one line naming ``option`` and what to do.
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{option} {target} is a folder; give a file name such as {target / example}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{option} {target}: cannot create its folder ({exc.strerror or exc}); choose another {option}") from None
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise InputError(f"{option} {target}: {target.parent} is not writable ({exc.strerror or exc}); choose another {option}") from None
    return target


#: Lock files this process holds (see :func:`output_lock`).
_HELD: set[Path] = set()


@contextmanager
def output_lock(target: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (the hidden file ``.NAME.lock`` next to it) for
    the whole run, so a second run writing the same output is refused instead of replacing
    the first one's work.

    The lock is ``flock`` on that file: the system drops it when the process ends, however
    it ends, so a killed run never leaves a stale lock. The file is removed on a normal exit.
    A process that holds the lock already may take it again (``cellclf predict`` holds its
    cache's lock from the extraction to the reading of the rows; ``extract`` takes it too).

    Raises:
        OutputBusy: another process holds the lock (the message names it and its pid).
    """
    import fcntl

    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    key = lock.absolute()
    if key in _HELD:
        yield lock
        return
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise OutputBusy(
                f"another run{f' (pid {holder})' if holder.isdigit() else ''} is writing {target} now "
                f"(lock file {lock}); wait for it to finish, or choose another output"
            ) from None
        # The file may have been removed by the previous holder between open and flock:
        # then this lock guards nothing, so take the new file's.
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        try:  # the pid only helps the message of a refused run: a full disk must not stop this one
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError:
            pass
        _HELD.add(key)
        yield lock
    finally:
        _HELD.discard(key)
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        try:
            handle.close()
        except OSError:  # the unwritten pid of a full disk
            pass
