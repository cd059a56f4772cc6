"""The rendered files of a ``cellclf fit``, kept until its RUN_DIR is written.

Training is the long part of a fit; writing RUN_DIR is what can fail (a full disk, Ctrl-C).
So once the models are trained, tested and explained, the fit renders every file of the run
(:func:`cellclf.rundir.render_run`: the tables, metrics.json, the models as ``.skops`` and
``.joblib``) and keeps them in the cache folder (:func:`cellembed.shared.cache.cache_dir`, usually
on another disk than RUN_DIR), in a folder named by what determines them: RUN_DIR, the
SHA-256 of the embeddings files, the settings and the library versions. The same command
run again finds them and only writes the run; a finished write deletes them.

Nothing kept is unpickled: the run is written from the kept bytes (checked against their
SHA-256 in ``manifest.json``), and the models are read back from the written run's safe
``.skops`` files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from cellembed.shared.cache import cache_dir
from cellembed.shared.hashing import sha256_file

FOLDER = "fit-checkpoints"
MANIFEST = "manifest.json"


def checkpoint_path(run_dir: str | Path, embeddings: str | Path, test: str | Path | None,
                    settings: Mapping[str, Any], versions: Mapping[str, str]) -> Path:
    """The folder that keeps the files of a fit into ``run_dir`` with these inputs,
    ``settings`` and library ``versions``."""
    key = json.dumps({
        "run_dir": str(Path(run_dir).resolve()),
        "embeddings": sha256_file(embeddings),
        "test": None if test is None else sha256_file(test),
        "settings": settings,
        "versions": versions,
    }, sort_keys=True, default=str)
    return cache_dir() / FOLDER / hashlib.sha256(key.encode()).hexdigest()[:32]


def save(folder: Path, files: Mapping[str, bytes], log: Callable[[str], None]) -> bool:
    """Keep ``files`` (path inside RUN_DIR -> bytes, in writing order) in ``folder``,
    atomically; a failure (a full or read-only cache) is said through ``log`` and does not
    stop the fit. Returns whether they were kept."""
    from cellembed.shared.atomic import install_folder, staging_folder

    staging = None
    try:
        staging = staging_folder(folder)
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        manifest = [[name, hashlib.sha256(data).hexdigest()] for name, data in files.items()]
        (staging / MANIFEST).write_text(json.dumps({"files": manifest}), encoding="utf-8")
        install_folder(staging, folder)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"the trained models could not be kept in {folder.parent} ({' '.join(str(exc).split())[:160]})")
        return False
    return True


def load(folder: Path) -> dict[str, bytes] | None:
    """The files kept in ``folder``, in writing order, or None (none kept, incomplete or
    damaged: the fit then trains again)."""
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        files = {}
        for name, digest in listed:
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                return None
            data = (folder / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                return None
            files[name] = data
        return files
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
