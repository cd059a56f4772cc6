"""Where a backbone's weights come from, and loading them strictly (the one place for both)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellembed.errors import InputError

if TYPE_CHECKING:
    from cellembed.backbones import Backbone

#: ``--weights imagenet``: the backbone's own download (needs internet).
IMAGENET = "imagenet"
#: The file in the cache folder that remembers, per backbone, the weights file last given
#: (``--weights`` or the environment variable), found again when neither is given.
REMEMBERED = "weights.json"


@dataclass(frozen=True)
class WeightsFile:
    """A resolved weights file: where it is, its SHA-256 and how it was chosen."""

    path: Path
    sha256: str
    source: str


def resolve_weights(weights: "str | os.PathLike | WeightsFile | None", backbone: "Backbone") -> WeightsFile:
    """Find the weights to load.

    ``weights`` is a path, ``"imagenet"`` (the backbone's download, needs internet) or
    None, meaning the backbone's environment variable (``$CELLEMBED_WEIGHTS`` for Xception)
    when set, else the file last given for this backbone (remembered in the cache folder,
    as Keras remembers its downloads: a machine pointed once to its weights finds them
    again), else ``"imagenet"``. A :class:`WeightsFile` passes through.

    Raises:
        InputError: the file does not exist, or the download failed.
    """
    if isinstance(weights, WeightsFile):
        return weights
    source = "--weights"
    if weights is None:
        remembered = remembered_weights(backbone)
        weights = os.environ.get(backbone.weights_env) or remembered or IMAGENET
        source = (f"${backbone.weights_env}" if os.environ.get(backbone.weights_env)
                  else "the file given before" if remembered else "download")
    if str(weights) == IMAGENET:
        path = backbone.download_weights()
        return WeightsFile(path, backbone.weights_identity(path), f"keras {IMAGENET} download")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(
            f"weights file {path} (from {source}) does not exist; give the path of the {backbone.title} "
            + (f"ImageNet weights (no top) or use --weights {IMAGENET} when online" if backbone.framework == "keras"
               else "network's description")
        )
    remember_weights(backbone, path.resolve())
    return WeightsFile(path.resolve(), backbone.weights_identity(path), path.name)


def remembered_weights(backbone: "Backbone") -> Path | None:
    """The weights file last given for ``backbone`` (None: none, or it is gone). Only a
    Keras backbone's weights are remembered: they are one known network's, checked by
    SHA-256; an ``onnx`` backbone's description chooses the network itself, so it is
    always given."""
    from cellembed.shared.cache import cache_dir

    if backbone.framework != "keras":
        return None

    try:
        entry = json.loads((cache_dir() / REMEMBERED).read_text()).get(backbone.name)
    except (OSError, ValueError, AttributeError):
        return None
    path = Path(entry) if isinstance(entry, str) else None
    return path if path is not None and path.is_file() else None


def remember_weights(backbone: "Backbone", path: Path) -> None:
    """Remember ``path`` as ``backbone``'s weights (a Keras backbone's; quietly nothing
    where the cache folder cannot be written: remembering is a convenience)."""
    from cellembed.shared.atomic import atomic_path
    from cellembed.shared.cache import cache_dir

    if backbone.framework != "keras":
        return

    target = cache_dir() / REMEMBERED
    try:
        known = json.loads(target.read_text()) if target.is_file() else {}
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if known.get(backbone.name) == str(path):
        return
    known[backbone.name] = str(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    except OSError:
        pass


def check_weights(
    found: WeightsFile, expected_sha256: str, expected_source: str, what: str, backbone: "Backbone"
) -> None:
    """Refuse weights whose SHA-256 is not ``expected_sha256`` (``what`` names the user of them)."""
    if found.sha256 != expected_sha256:
        raise InputError(
            f"the weights {found.path} (SHA-256 {found.sha256[:12]}...) are not the ones {what} "
            f"(SHA-256 {expected_sha256[:12]}..., {expected_source or 'unknown file'}); "
            f"pass --weights with that file or point {backbone.weights_env} at it"
        )


def load_weights(model: Any, weights: WeightsFile, backbone: "Backbone") -> None:
    """Load a weights file into a Keras model built by ``backbone.build``, all or nothing."""
    # Keras 3 loads a partly fitting file with only a warning, leaving the unmatched layers
    # randomly initialised: that would give meaningless embeddings, so warnings are errors.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(weights.path))
            problem = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), None)
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError for misfits
            problem = str(exc).strip() or type(exc).__name__
    if problem is not None:
        raise InputError(
            f"weights file {weights.path} does not fit {backbone.title}(include_top=False): "
            f"{problem.splitlines()[0][:200]}"
        )
