"""The toolkit's version and the installed versions of the libraries it records."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Iterable

__version__ = "0.1.0"


def package_version(package: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    if package == "cellembed":
        return __version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions(packages: Iterable[str], *, python: bool = False) -> dict[str, str]:
    """``{package: version}`` for each package (and ``python`` first when asked)."""
    versions = {"python": platform.python_version()} if python else {}
    versions.update((package, package_version(package)) for package in packages)
    return versions
