"""The toolkit's cache folder: converted networks (:mod:`cellembed.engines.onnxruntime_engine`)
and the trained models of an unfinished fit (:mod:`cellclf.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CELLEMBED_CACHE_DIR"


def cache_dir() -> Path:
    """``$CELLEMBED_CACHE_DIR``, else ``$XDG_CACHE_HOME/cellembed``, else ``~/.cache/cellembed``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellembed"
