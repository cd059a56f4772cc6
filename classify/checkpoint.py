"""The trained models of a ``cellclf fit``, kept until its RUN_DIR is written.

Training is the long part of a fit; writing RUN_DIR is what can fail (a full disk). So once
the models are trained, tested and explained, the fit saves them (the run's record and its
predictors, a joblib file) in the cache folder (:func:`cellembed.cache.cache_dir`, usually
on another disk than RUN_DIR), keyed by what determines them: the SHA-256 of the embeddings
files, the settings and the library versions. The same command run again (to any ``-o``)
finds them and only writes; a finished fit deletes them.

The file is a pickle that this toolkit wrote into the user's own cache folder, read back
only under its content key; a damaged one is ignored (the fit trains again).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from cellembed.cache import cache_dir
from cellembed.hashing import sha256_file

FOLDER = "fit-checkpoints"


def checkpoint_path(embeddings: str | Path, test: str | Path | None, settings: Mapping[str, Any],
                    versions: Mapping[str, str]) -> Path:
    """Where the trained models of a fit with these inputs, ``settings`` and library
    ``versions`` are kept."""
    key = json.dumps({
        "embeddings": sha256_file(embeddings),
        "test": None if test is None else sha256_file(test),
        "settings": settings,
        "versions": versions,
    }, sort_keys=True, default=str)
    return cache_dir() / FOLDER / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.joblib"


def save(path: Path, state: Any, log: Callable[[str], None]) -> bool:
    """Keep ``state`` at ``path`` atomically; a failure (a full or read-only cache) is said
    through ``log`` and does not stop the fit. Returns whether it was kept."""
    import joblib

    from cellembed.atomic import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            joblib.dump(state, tmp)
    except Exception as exc:  # noqa: BLE001 - a checkpoint is a safety net, never a new way to fail
        log(f"the trained models could not be kept in {path.parent} ({' '.join(str(exc).split())[:160]})")
        return False
    return True


def load(path: Path) -> Any | None:
    """The state kept at ``path``, or None (none kept, or unreadable)."""
    import joblib

    if not path.is_file():
        return None
    try:
        return joblib.load(path)
    except Exception:  # noqa: BLE001 - damaged or from another environment: train again
        return None


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
