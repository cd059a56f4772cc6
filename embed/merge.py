"""``merge``: assemble OUT from the reused rows and the shard files, atomically.

Rows come out in the plan's file order (sorted by path); an image's embedding is looked up
by its SHA-256 in OUT (when reused), in the finished shards of an interrupted run and in
this run's shards. Memory: one (rows, dim) float32 matrix is filled in place while the
sources are read a batch at a time, so the peak is about the rows themselves whatever the
number of shards. OUT is replaced in one rename, then the errors sidecar is written and the
work folder removed: an interruption before the rename leaves OUT and every shard as they
were, and the same command finishes the job.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from cellembed.atomic import atomic_path
from cellembed.errors import RunFailed
from cellembed.plan import Plan
from cellembed.shards import ShardResult
from cellembed.spec import EmbeddingSpec
from cellembed.store import errors_csv_path, make_table, table_matrix, write_table

_READ_BATCH = 2048


@dataclass
class Merged:
    """What OUT holds now: its spec, its rows, the files it could not embed, and the
    SHA-256 of every image left out (failed now, or known bad)."""

    spec: EmbeddingSpec
    rows: int
    errors: list[dict[str, str]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


def merge(plan: Plan, results: Sequence[ShardResult], spec: EmbeddingSpec | None = None) -> Merged:
    """Write OUT for ``plan`` from its reused rows and the finished shard ``results``.

    Args:
        spec: the output spec when neither a result nor a reused file gives it (tap widths
            must be known); by default this run's first shard, else the plan's spec.
    """
    spec = results[0].spec if results else (spec or plan.spec)
    if not spec.widths_known:
        raise ValueError("merge needs the spec's tap widths: build the embedder once to learn them")
    errors, failed = _errors(plan, results)
    rows = [(image, sha) for image, sha in zip(plan.files, plan.sha256s) if sha is not None and sha not in failed]
    if not results and not plan.finished and _unchanged(plan, rows, errors):
        _write_errors_csv(errors_csv_path(plan.out), errors)
        shutil.rmtree(plan.work_dir, ignore_errors=True)
        return Merged(spec, len(rows), errors, failed)

    matrix, widths, heights = _gather(plan, results, [sha for _, sha in rows], spec.dim)
    table = make_table(
        spec, [image.path for image, _ in rows], [image.label for image, _ in rows], [sha for _, sha in rows],
        widths, heights, matrix, errors, images_root=plan.images,
    )
    write_table(table, plan.out)
    _write_errors_csv(errors_csv_path(plan.out), errors)
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    return Merged(spec, len(rows), errors, failed)


def _errors(plan: Plan, results: Sequence[ShardResult]) -> tuple[list[dict[str, str]], set[str]]:
    """The plan's errors plus every file whose image failed in a shard, and the SHA-256 of
    every image left out. A decode error keeps its SHA-256 (the image is known bad); a
    read error does not, so the next run tries the file again."""
    found = {e["sha256"]: e for result in results for e in result.errors}
    errors = list(plan.errors)
    for image, sha in zip(plan.files, plan.sha256s):
        if sha in found:
            error = {"path": image.path, "reason": found[sha]["reason"]}
            errors.append(error if found[sha].get("retry") else {**error, "sha256": sha})
    failed = set(found) | {e["sha256"] for e in plan.errors if e.get("sha256")}
    return sorted(errors, key=lambda e: e["path"]), failed


def _unchanged(plan: Plan, rows: list, errors: list[dict[str, str]]) -> bool:
    """True when OUT already holds exactly these rows and errors (no rewrite needed)."""
    index = plan.out_index
    return (
        index is not None
        and list(index.errors) == errors
        and index.images_root == str(plan.images.resolve()).encode()
        and list(index.paths) == [image.path for image, _ in rows]
        and list(index.labels) == [image.label for image, _ in rows]
        and list(index.sha256s) == [sha for _, sha in rows]
    )


def _gather(
    plan: Plan, results: Sequence[ShardResult], sha256s: list[str], dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the (rows, dim) matrix and the sizes from every source, a batch at a time."""
    positions: dict[str, list[int]] = {}
    for row, sha in enumerate(sha256s):
        positions.setdefault(sha, []).append(row)
    matrix = np.empty((len(sha256s), dim), np.float32)
    widths = np.zeros(len(sha256s), np.int32)
    heights = np.zeros(len(sha256s), np.int32)
    missing = set(positions)
    sources = ([plan.out] if plan.out_index is not None else []) + list(plan.finished) + [r.path for r in results]
    for source in sources:
        if not missing:
            break
        with pq.ParquetFile(source) as parquet:
            for batch in parquet.iter_batches(batch_size=_READ_BATCH, columns=["sha256", "width", "height", "embedding"]):
                found = [(j, sha) for j, sha in enumerate(batch.column(0).to_pylist()) if sha in missing]
                if not found:
                    continue
                vectors = table_matrix(batch)
                batch_widths, batch_heights = batch.column(1).to_numpy(), batch.column(2).to_numpy()
                for j, sha in found:
                    if sha in missing:
                        matrix[positions[sha]] = vectors[j]
                        widths[positions[sha]] = batch_widths[j]
                        heights[positions[sha]] = batch_heights[j]
                        missing.discard(sha)
    if missing:
        raise RunFailed(
            f"{len(missing)} embeddings are in no source (e.g. {sorted(missing)[0]}); "
            f"nothing was replaced and finished shards are kept: run the same command again"
        )
    return matrix, widths, heights


def _write_errors_csv(path: Path, errors: list[dict[str, str]]) -> None:
    """Sidecar list of skipped files (path, reason); removed when a run has none."""
    if not errors:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "reason"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(errors)
