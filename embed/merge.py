"""``merge``: assemble OUT from the reused rows and the shard files, atomically.

Rows come out in the plan's file order (sorted by path), after OUT's rows of other images
when the plan keeps them (an add-only cache, ``prune=False``); an image's embedding is looked up
by its SHA-256 in OUT (when reused), in the finished shards of an interrupted run and in
this run's shards. Memory: one (rows, dim) float32 matrix is filled in place while the
sources are read a batch at a time, so the peak is about the rows themselves whatever the
number of shards. OUT is replaced in one rename, then the errors sidecar is written and the
shard files used are removed: an interruption or a full disk before the rename leaves OUT
and every shard as they were, and the same command finishes the job.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cellembed.shared.atomic import atomic_path
from cellembed.shared.csv_cells import inert
from cellembed.errors import DiskFull, OutputConflict, RunFailed
from cellembed.plan import Plan
from cellembed.shards import ShardResult
from cellembed.spec import EmbeddingSpec
from cellembed.store import CELL_FOUND, Damaged, copy_rows, errors_csv_path, make_table, write_table


@dataclass
class Merged:
    """What OUT holds now: its spec, its rows, the files it could not embed, the SHA-256
    of every image left out (failed now, or known bad), and the rows of other images kept."""

    spec: EmbeddingSpec
    rows: int
    errors: list[dict[str, str]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    kept: int = 0  # rows of other images kept by an add-only cache


def merge(plan: Plan, results: Sequence[ShardResult]) -> Merged:
    """Write OUT for ``plan`` from its reused rows and the finished shard ``results``; its
    spec is the one the embedder ran (this run's library versions and weights path), else
    the plan's."""
    spec = results[0].spec if results else plan.spec
    errors, failed = _errors(plan, results)
    rows = [(image.path, image.label, sha) for image, sha in zip(plan.files, plan.sha256s)
            if sha is not None and sha not in failed]
    ours = {sha for *_, sha in rows}
    rows, file_errors, images_root = _kept_rows(plan, rows, errors)
    kept = sum(1 for *_, sha in rows if sha not in ours)
    if not results and not plan.finished and _unchanged(plan, rows, file_errors, images_root):
        _write_errors_csv(errors_csv_path(plan.out), file_errors)
        _remove_work(plan, results, rows, failed)
        return Merged(spec, len(rows), errors, failed, kept)

    matrix, columns = _gather(plan, results, [sha for *_, sha in rows], spec)
    table = make_table(
        spec, [path for path, _, _ in rows], [label for _, label, _ in rows], [sha for *_, sha in rows],
        columns["width"], columns["height"], matrix, file_errors, images_root=images_root,
        cell_found=columns.get(CELL_FOUND),
    )
    try:
        write_table(table, plan.out)
    except DiskFull as exc:
        raise DiskFull(f"{exc}; the embeddings computed so far are kept in {plan.work_dir}", exc.facts) from None
    _write_errors_csv(errors_csv_path(plan.out), file_errors)
    _remove_work(plan, results, rows, failed)
    return Merged(spec, len(rows), errors, failed, kept)


def _kept_rows(
    plan: Plan, rows: list[tuple[str, str | None, str]], errors: list[dict[str, str]]
) -> tuple[list[tuple[str, str | None, str]], list[dict[str, str]], Path | None]:
    """OUT's rows, its errors and the images folder to record, for this folder's ``rows``
    and ``errors``.

    By default OUT mirrors the folder: exactly ``rows``. An add-only cache (``plan.prune``
    False) keeps every row of OUT as it was and adds the images whose content it does not
    hold yet, sorted by path. Images added from another folder than the cache's are stored
    without a label (a folder of cells to classify must not become training data of the
    file), and the cache then records no single images folder.
    """
    index = plan.out_index
    if plan.prune or index is None:
        return rows, errors, plan.images
    held = set(index.sha256s)
    new = [row for row in rows if row[2] not in held]
    ours = {sha for *_, sha in rows}
    current = {e["path"] for e in errors}
    file_errors = errors + [e for e in index.errors if e["path"] not in current and e.get("sha256") not in ours]
    old_root = Path(os.fsdecode(index.images_root)) if index.images_root else None
    if not index.paths or (old_root is not None and old_root == plan.images.resolve()):
        root = plan.images
    else:
        root = old_root if not new else None
        new = [(path, None, sha) for path, _, sha in new]
    combined = sorted([*zip(index.paths, index.labels, index.sha256s), *new], key=lambda row: row[0])
    return combined, sorted(file_errors, key=lambda e: e["path"]), root


def _remove_work(plan: Plan, results: Sequence[ShardResult], rows: list, failed: set[str]) -> None:
    """Remove the shard files whose every image is now in OUT (or known bad), then their
    folders when nothing else is left in them. A finished shard of images of another
    folder (an interrupted run on it) is kept for that run, and a file someone else put
    there is never deleted."""
    done = {sha for *_, sha in rows} | failed
    for path, held in zip(plan.finished, plan.finished_images):
        if held <= done:
            Path(path).unlink(missing_ok=True)
    for result in results:
        Path(result.path).unlink(missing_ok=True)
    for folder in {plan.work_dir, *(Path(path).parent for path in plan.finished)}:
        try:
            folder.rmdir()
        except OSError:  # missing, or holds something that is not ours
            pass


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


def _unchanged(plan: Plan, rows: list, errors: list[dict[str, str]], images_root: Path | None) -> bool:
    """True when OUT already holds exactly these rows and errors (no rewrite needed)."""
    index = plan.out_index
    return (
        index is not None
        and list(index.errors) == errors
        and index.images_root == (os.fsencode(images_root.resolve()) if images_root is not None else None)
        and list(zip(index.paths, index.labels, index.sha256s)) == rows
    )


def _gather(
    plan: Plan, results: Sequence[ShardResult], sha256s: list[str], spec: EmbeddingSpec
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fill the (rows, dim) matrix and the per-image columns (sizes; whether the cell was
    found, when the spec crops) from every source, a batch at a time."""
    positions: dict[str, list[int]] = {}
    for row, sha in enumerate(sha256s):
        positions.setdefault(sha, []).append(row)
    matrix = np.empty((len(sha256s), spec.dim), np.float32)
    columns = {"width": np.zeros(len(sha256s), np.int32), "height": np.zeros(len(sha256s), np.int32)}
    if spec.crop != "none":
        columns[CELL_FOUND] = np.zeros(len(sha256s), bool)
    missing = set(positions)
    sources = ([plan.out] if plan.out_index is not None else []) + list(plan.finished) + [r.path for r in results]
    for source in sources:
        if not missing:
            break
        try:
            copy_rows(source, missing, positions, matrix, columns)
        except Damaged as exc:
            if source == plan.out:  # the work of this run is in the shards, kept
                raise OutputConflict(f"{source} is damaged ({exc}); the images embedded now are kept in {plan.work_dir}") from None
            raise RunFailed(f"{source} is damaged ({exc}); delete it and run the same command again") from None
    if missing:
        raise RunFailed(
            f"{len(missing)} embeddings are in no source (e.g. {sorted(missing)[0]}); "
            f"nothing was replaced and finished shards are kept: run the same command again"
        )
    return matrix, columns


def _write_errors_csv(path: Path, errors: list[dict[str, str]]) -> None:
    """Sidecar list of skipped files (path, reason; cells a spreadsheet would run are made
    inert, see :mod:`cellembed.shared.csv_cells`); removed when a run has none."""
    if not errors:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "reason"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: inert(value) for key, value in error.items()} for error in errors)
