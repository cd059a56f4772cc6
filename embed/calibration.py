"""The cells an int8 network is calibrated on, prepared as a spec embeds them.

Static quantisation (:mod:`cellembed.engines.int8`) fixes each activation's int8 range
from the network's activations on real inputs. The inputs are the project's sample cells
(``data/sample``: 64 CellaVision images, 8 per class, from the PBC dataset of Acevedo et
al. 2020, CC BY 4.0), decoded, colour-normalised and framed as the spec says, resized to
its input size, in each of its test-time views (64 x 4 = 256 inputs for the default
preset). They are fixed, so an int8 network is the same wherever the spec is rebuilt; their
SHA-256 digest is part of the cached int8 network's key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cellembed.errors import InputError
from cellembed.spec import EmbeddingSpec

#: The sample cells of the project (the package folder ``embed`` sits beside ``data``).
CALIBRATION_FOLDER = Path(__file__).resolve().parent.parent / "data" / "sample"


def calibration_files(folder: Path = CALIBRATION_FOLDER) -> list[Path]:
    """The calibration images, in a fixed order.

    Raises:
        InputError: the folder is missing or holds no image (an install without the
            project's data folder).
    """
    files = sorted(p for p in folder.glob("*/*.jpg") if not p.name.startswith(".")) if folder.is_dir() else []
    if not files:
        raise InputError(
            f"int8 needs the project's sample cells to calibrate the network, and {folder} holds none; "
            "install cellembed from its source folder (pip install -e .) or use --precision fp32"
        )
    return files


def calibration_digest(folder: Path = CALIBRATION_FOLDER) -> str:
    """SHA-256 of the calibration images (names and contents), 16 hex digits."""
    digest = hashlib.sha256()
    for path in calibration_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def calibration_pixels(spec: EmbeddingSpec, folder: Path = CALIBRATION_FOLDER) -> np.ndarray:
    """(images x views, size, size, 3) float32 0..255: the calibration cells prepared and
    resized as ``spec`` embeds them, every view of each (view by view)."""
    from cellembed.decoding import load_for_network
    from cellembed.preparation import preparation_for
    from cellembed.views import DIHEDRAL, view_names

    prepare = preparation_for(spec)
    decoded = [load_for_network(path, spec.input_size, None, prepare) for path in calibration_files(folder)]
    bad = [str(path) for path, image in zip(calibration_files(folder), decoded) if image.pixels is None]
    if bad:
        raise InputError(f"a calibration image cannot be read: {bad[0]}; restore the project's data/sample")
    pixels = np.stack([image.pixels for image in decoded]).astype(np.float32)
    return np.concatenate([np.ascontiguousarray(DIHEDRAL[name](pixels)) for name in view_names(spec.views)])
