"""Synthetic cellembed files for the cellclf tests (imported by the other test_clf_* files)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from cellembed import EmbeddingSpec, load_embeddings
from cellembed.store import make_table, write_table

WIDTHS = (("add_2", 12), ("add_6", 10), ("block14_sepconv2_act", 8))
CLASSES = ("alpha", "beta", "gamma", "delta")


def make_spec(widths: Sequence[tuple[str, int]] = WIDTHS, *, weights: str = "ab" * 32, input_size: int = 71) -> EmbeddingSpec:
    return EmbeddingSpec.from_widths(list(widths), backbone="xception", weights_sha256=weights, input_size=input_size)


def write_synthetic(
    path: Path,
    *,
    counts: dict[str, int] | None = None,
    spec: EmbeddingSpec | None = None,
    seed: int = 0,
    separation: float = 1.2,
    duplicates: int = 0,
    unlabelled: int = 0,
    nan_rows: int = 0,
    name_prefix: str = "",
) -> Path:
    """Gaussian class clusters in ``spec.dim`` dimensions, one cellembed Parquet file.

    ``duplicates`` extra rows copy earlier rows (same SHA-256 and embedding, other path);
    ``unlabelled`` rows have no label; ``nan_rows`` rows get a NaN value. SHA-256 values
    depend on ``name_prefix`` and the row number, so two files with different prefixes
    share no images.
    """
    spec = spec or make_spec()
    counts = {name: 50 for name in CLASSES} if counts is None else counts
    rng = np.random.default_rng(seed)
    centres = {name: rng.normal(0, separation, spec.dim) for name in counts}
    paths, labels, shas, rows = [], [], [], []
    for name, count in counts.items():
        for i in range(count):
            paths.append(f"{name}/{name_prefix}img_{i:04d}.png")
            labels.append(name)
            shas.append(hashlib.sha256(f"{name_prefix}{name}{i}".encode()).hexdigest())
            rows.append(centres[name] + rng.normal(0, 1, spec.dim))
    for i in range(unlabelled):
        paths.append(f"{name_prefix}loose_{i:03d}.png")
        labels.append(None)
        shas.append(hashlib.sha256(f"{name_prefix}loose{i}".encode()).hexdigest())
        rows.append(rng.normal(0, 1, spec.dim))
    for i in range(duplicates):
        source = int(rng.integers(0, sum(counts.values())))
        paths.append(f"{labels[source]}/{name_prefix}copy_{i:03d}.png")
        labels.append(labels[source])
        shas.append(shas[source])
        rows.append(rows[source])
    X = np.asarray(rows, dtype=np.float32)
    if nan_rows:
        X[:nan_rows, 0] = np.nan
    n = len(paths)
    write_table(make_table(spec, paths, labels, shas, [40] * n, [40] * n, X), path)
    return path


def labelled_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], EmbeddingSpec]:
    """``(X, y, classes, spec)`` of an embeddings file: y holds class indices."""
    frame, spec = load_embeddings(path)
    classes = sorted(frame["label"].unique())
    return np.stack(frame["embedding"].to_numpy()), np.array([classes.index(v) for v in frame["label"]]), classes, spec


def test_write_synthetic_round_trips(tmp_path):
    path = write_synthetic(tmp_path / "e.parquet", duplicates=3, unlabelled=2)
    frame, spec = load_embeddings(path)
    assert len(frame) == 4 * 50 + 3 + 2
    assert spec.dim == 30
    assert frame["label"].isna().sum() == 2
    assert frame["sha256"].duplicated().sum() == 3
