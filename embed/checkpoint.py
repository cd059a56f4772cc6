"""The cache of finished embeddings: rows of an existing OUT plus checkpoint chunks.

While ``extract`` runs, new embeddings are flushed every few hundred images to chunk files
in a sidecar folder next to OUT (for ``emb.parquet``: ``emb.checkpoint/``), each written
atomically. A run killed with SIGKILL or stopped with Ctrl-C loses at most the images since
the last chunk; the next run reads the chunks and embeds only the rest. The folder is
removed once OUT has been replaced.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cellembed.errors import InputError
from cellembed.spec import EmbeddingSpec
from cellembed.store import make_table, read_spec, read_table, table_matrix, write_table


@dataclass
class CachedEmbedding:
    """A finished embedding, keyed elsewhere by the SHA-256 of the image file."""

    width: int
    height: int
    vector: np.ndarray


def checkpoint_folder(out: Path) -> Path:
    return out.with_name(out.stem + ".checkpoint")


def errors_csv_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def cached_rows(table: pa.Table) -> dict[str, CachedEmbedding]:
    """Rows of a cellembed table as ``{sha256: CachedEmbedding}``."""
    matrix = table_matrix(table)
    shas = table.column("sha256").to_pylist()
    widths = table.column("width").to_pylist()
    heights = table.column("height").to_pylist()
    return {
        sha: CachedEmbedding(w, h, matrix[i])
        for i, (sha, w, h) in enumerate(zip(shas, widths, heights))
    }


def existing_spec(path: Path) -> EmbeddingSpec:
    """The spec of a file we are about to reuse, refusing files cellembed did not write."""
    try:
        return read_spec(path)
    except InputError as exc:
        raise InputError(f"{exc}; refusing to replace it: choose another output or pass --overwrite") from None


def refuse_other_spec(path: Path, requested: EmbeddingSpec, existing: EmbeddingSpec) -> None:
    """Raise InputError when ``existing`` (the spec of ``path``) differs from ``requested``."""
    differences = requested.differences(existing)
    if differences:
        raise InputError(
            f"{path} was made with another embedding spec ({'; '.join(differences)}; "
            "requested vs existing) and specs never mix in one file: pass --overwrite to "
            "replace it, or choose another output"
        )


class Checkpoint:
    """Chunk files of finished embeddings for one output file."""

    def __init__(self, out: Path):
        self.folder = checkpoint_folder(out)

    def chunks(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("chunk-*.parquet"))

    def load(self, spec: EmbeddingSpec) -> dict[str, CachedEmbedding]:
        """Everything checkpointed by earlier (interrupted) runs with this spec."""
        cached: dict[str, CachedEmbedding] = {}
        for chunk in self.chunks():
            table, chunk_spec = read_table(chunk)
            refuse_other_spec(self.folder, spec, chunk_spec)
            cached.update(cached_rows(table))
        return cached

    def write(self, spec: EmbeddingSpec, rows: list[tuple[str, str | None, str, CachedEmbedding]]) -> Path:
        """Add one chunk of ``(path, label, sha256, embedding)`` rows, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.chunks()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        target = self.folder / f"chunk-{number:06d}.parquet"
        table = make_table(
            spec,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3].width for r in rows],
            [r[3].height for r in rows],
            np.stack([r[3].vector for r in rows]),
        )
        write_table(table, target)
        return target

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
