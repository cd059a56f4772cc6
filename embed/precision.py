"""The network's numeric precision (the spec's ``precision``): ``fp32`` or ``int8``.

``int8`` runs a statically quantised copy of the converted network (ONNX Runtime, QDQ,
per-channel int8 weights, uint8 activations; :mod:`cellembed.engines.int8`), calibrated on
the project's sample cells. int8 embeddings are close to fp32 ones but not the same, so the
precision is part of the spec: a file is never mixed, and a classifier trained on int8
embeddings embeds new images in int8 wherever it runs.

int8 pays on CPUs with integer dot-product instructions: AVX-512 VNNI, AVX-VNNI or AMX
(:data:`INT8_INSTRUCTIONS`). Elsewhere ONNX Runtime still runs it, but with little or no
speed-up, so there ``fp32`` stays the better choice. Hence the presets' ``auto``
(:func:`resolve_precision`): int8 where the CPU has those instructions and the engine runs
int8, fp32 elsewhere, or what ``$CELLEMBED_PRECISION`` says (a lab that wants the same
embeddings on every machine sets it). Measured with ``bench/int8.py`` on a 2-core AMD EPYC
with AVX-512 VNNI: 2.8x the images/s of fp32, embeddings at cosine 0.97-0.99 to fp32's,
pbc-dev 5-fold CV 97.35% against 97.50%.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cellembed.errors import InputError

PRECISIONS = ("fp32", "int8")
#: A preset's (and ``--precision``'s) value for "int8 where it pays, else fp32".
AUTO = "auto"
#: The environment variable that fixes what ``auto`` means (fp32 or int8).
PRECISION_ENV = "CELLEMBED_PRECISION"
#: CPU flags (as Linux's /proc/cpuinfo names them) that make int8 convolutions fast.
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "amx_int8")


def check_precision(precision: str) -> None:
    """A spec's precision: fp32 or int8 (``auto`` is resolved before a spec is made)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


@lru_cache(maxsize=1)
def int8_instructions() -> tuple[str, ...]:
    """The int8 dot-product instructions this CPU has (empty where none, or where the
    system does not say: only Linux's /proc/cpuinfo is read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return tuple(name for name in INT8_INSTRUCTIONS if name in flags)


def resolve_precision(precision: str, engine_runs_int8: bool) -> str:
    """``precision`` itself, or for :data:`AUTO`: ``$CELLEMBED_PRECISION`` if set, else int8
    when the engine runs it, this CPU has an int8 instruction and the calibration cells are
    there (an install without the project's data folder, ``pip install .``, gets fp32 rather
    than an error), else fp32."""
    if precision != AUTO:
        check_precision(precision)
        return precision
    configured = os.environ.get(PRECISION_ENV, "").strip()
    if configured:
        if configured not in PRECISIONS:
            raise InputError(f"${PRECISION_ENV} is {configured!r}; set it to {' or '.join(PRECISIONS)}, or unset it")
        return configured
    return "int8" if engine_runs_int8 and int8_instructions() and _calibration_cells_here() else "fp32"


def _calibration_cells_here() -> bool:
    from cellembed.calibration import CALIBRATION_FOLDER, calibration_files

    try:
        return bool(calibration_files(CALIBRATION_FOLDER))
    except InputError:
        return False


def int8_advice() -> str | None:
    """A warning for int8 on a CPU without the instructions that make it fast (None: it has them)."""
    if int8_instructions():
        return None
    return ("this CPU has none of " + ", ".join(INT8_INSTRUCTIONS)
            + ": int8 runs, but with little or no speed-up over fp32 here")
