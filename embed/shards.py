"""Shards, the unit of extraction work, and :func:`embed_shard`, the one worker.

A shard is a fixed list of images to embed. Its id is a digest of the spec identity and
the images' SHA-256 values, so the same work always has the same id, whichever process,
machine or run does it, and no shared counter exists that two workers could race on.

``embed_shard`` is idempotent: it writes ``shard-<id>.parquet`` (a cellembed Parquet file:
the rows, and the images that failed to decode in its metadata) atomically into the work
folder, and when that file is already there it returns it without embedding anything.
Interrupted by Ctrl-C, it first saves the images it finished as a smaller shard of their
own, so a rerun resumes from them. An image that failed to decode is recorded with its
SHA-256 (it will fail again, so it is not retried); one whose file could not be read is
recorded with ``retry`` (the next run tries it again). The distributors (:mod:`cellembed.distributors`) only
decide where and in which order shards run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cellembed.decoding import DEFAULT_MAX_PIXELS
from cellembed.embedder import embedder_from_spec
from cellembed.engines import Embedder
from cellembed.errors import InputError
from cellembed.pipeline import decoded_batches
from cellembed.spec import EmbeddingSpec
from cellembed.store import make_table, read_errors, read_sha256s, read_spec, shard_id_of, shard_path, write_table
from cellembed.weights import WeightsFile


@dataclass(frozen=True)
class ShardItem:
    """One image to embed: its content hash, its row key and label, where to read it."""

    sha256: str
    path: str
    label: str | None
    absolute: str


@dataclass(frozen=True)
class Shard:
    """A fixed list of images with a stable id (see the module docstring)."""

    id: str
    items: tuple[ShardItem, ...]

    @classmethod
    def of(cls, spec: EmbeddingSpec, items: Sequence[ShardItem]) -> "Shard":
        return cls(shard_id(spec, [item.sha256 for item in items]), tuple(items))

    def __len__(self) -> int:
        return len(self.items)


def shard_id(spec: EmbeddingSpec, sha256s: Sequence[str]) -> str:
    digest = hashlib.sha256(spec.identity_key().encode())
    for sha in sha256s:
        digest.update(sha.encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class ShardJob:
    """What every shard of one extraction shares (picklable, sent to remote workers).

    ``spec`` is the resolved spec; ``weights`` is None only
    when the caller embeds with a prebuilt embedder; ``threads`` caps the engine's CPU
    threads in a worker (None: the engine's default); ``max_pixels`` is the pixel cap of
    an input image (a larger one is an error, tried again by the next run).
    """

    spec: EmbeddingSpec
    weights: WeightsFile | None
    engine: str
    work_dir: Path
    batch_size: int = 32
    threads: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def shard_path(self, shard_id: str) -> Path:
        return shard_path(self.work_dir, shard_id)


@dataclass
class ShardResult:
    """A finished shard file: the images it holds, and those that failed to decode."""

    id: str
    path: Path
    spec: EmbeddingSpec
    sha256s: list[str]
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.sha256s)

    @property
    def images(self) -> int:
        return self.rows + len(self.errors)


def embed_shard(
    shard: Shard,
    job: ShardJob,
    *,
    embedder: Embedder | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Embed one shard into its file in ``job.work_dir`` (idempotent, atomic).

    Args:
        shard: the images.
        job: spec, weights, engine and work folder shared by all shards.
        embedder: a built embedder of ``job.spec``; None builds one for this process once
            and reuses it for later shards (how remote workers run).
        on_progress: called with the number of images done after each batch.
    """
    path = job.shard_path(shard.id)
    if path.is_file():
        return read_shard_result(path, job.spec)
    embedder = embedder or process_embedder(job)
    spec = embedder.spec
    vectors = np.zeros((len(shard), spec.dim), np.float32)
    sizes = np.zeros((len(shard), 2), np.int32)
    found = np.zeros(len(shard), bool)
    done: list[int] = []
    errors: dict[int, str] = {}
    transient: set[int] = set()
    try:
        sources = [item.absolute for item in shard.items]
        for batch in decoded_batches(sources, spec, job.batch_size, max_pixels=job.max_pixels):
            if batch.decoded:
                vectors[[i for i, _ in batch.decoded]] = embedder.embed(batch.pixels)
            for index, decoded in batch.decoded:
                sizes[index] = (decoded.width, decoded.height)
                found[index] = bool(decoded.cell_found)
                done.append(index)
            for index, reason in batch.failed:
                errors[index] = reason
                done.append(index)
            transient |= batch.transient
            if on_progress is not None:
                on_progress(len(batch.decoded) + len(batch.failed))
        return _write(path, spec, shard.items, range(len(shard)), vectors, sizes, found, errors, transient)
    except KeyboardInterrupt:
        if done:  # keep the finished images as a shard of their own (all of them: this shard)
            part = sorted(done)
            subset = Shard.of(job.spec, [shard.items[i] for i in part])
            _write(job.shard_path(subset.id), spec, subset.items, part, vectors, sizes, found, errors, transient)
        raise


def _write(
    path: Path, spec: EmbeddingSpec, items: Sequence[ShardItem], rows: Sequence[int],
    vectors: np.ndarray, sizes: np.ndarray, found: np.ndarray, errors: dict[int, str], transient: set[int],
) -> ShardResult:
    """Write ``items`` as one shard file; ``rows[k]`` is item k's row in the arrays (and
    its key in ``errors``): decoded items become rows, failed ones errors."""
    ok = [(item, row) for item, row in zip(items, rows) if row not in errors]
    failed = [
        {"path": item.path, "reason": errors[row], "sha256": item.sha256, **({"retry": True} if row in transient else {})}
        for item, row in zip(items, rows)
        if row in errors
    ]
    kept = [row for _, row in ok]
    table = make_table(
        spec,
        [item.path for item, _ in ok],
        [item.label for item, _ in ok],
        [item.sha256 for item, _ in ok],
        sizes[kept, 0],
        sizes[kept, 1],
        vectors[kept],
        failed,
        cell_found=found[kept] if spec.crop != "none" else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(table, path)
    return ShardResult(shard_id_of(path), path, spec, [item.sha256 for item, _ in ok], failed)


def read_shard_result(path: Path, spec: EmbeddingSpec) -> ShardResult:
    """The result recorded in an existing shard file (refused if made with another spec)."""
    found = read_spec(path)
    if found.identity_key() != spec.identity_key() or found.differences(spec):
        raise InputError(f"{path} was made with another embedding spec; delete {path.parent} and run again")
    return ShardResult(shard_id_of(path), path, found, read_sha256s(path), read_errors(path))


#: One embedder per process and job settings, reused across shards (remote workers).
_EMBEDDERS: dict[str, Embedder] = {}


def process_embedder(job: ShardJob) -> Embedder:
    """The embedder of ``job`` in this process, built on first use."""
    if job.weights is None:
        raise InputError("a shard job without weights runs only with a prebuilt embedder")
    key = json.dumps([job.spec.identity_key(), job.weights.sha256, job.engine, job.threads])
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = embedder_from_spec(job.spec, job.weights, job.engine, threads=job.threads)
    return _EMBEDDERS[key]
