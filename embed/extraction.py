"""``extract``: embed every image of a folder into a Parquet file, incrementally and safely."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from cellembed.checkpoint import (
    CachedEmbedding,
    Checkpoint,
    cached_rows,
    errors_csv_path,
    existing_spec,
    refuse_other_spec,
)
from cellembed.decoding import prepare_resize
from cellembed.discovery import ImageFile, find_images
from cellembed.atomic import atomic_path
from cellembed.errors import InputError, Interrupted
from cellembed.hashing import sha256_file
from cellembed.model import (
    DEFAULT_ENGINE,
    DEFAULT_LAYERS,
    Embedder,
    check_engine,
    check_input_size,
    load_embedder,
    parse_layers,
    resolve_weights,
    spec_fields,
)
from cellembed.pipeline import decoded_batches
from cellembed.spec import EmbeddingSpec
from cellembed.store import (
    ERRORS_METADATA_KEY,
    IMAGES_METADATA_KEY,
    make_table,
    read_table,
    write_table,
)

DEFAULT_CHECKPOINT_EVERY = 256


@dataclass
class ExtractResult:
    """What a run did. ``embedded`` were computed now; ``reused`` came from OUT or from the
    checkpoint of an interrupted run (``resumed`` of them); ``dropped`` rows of the old OUT
    had no image any more; ``errors`` are the files that could not be embedded."""

    out: Path
    spec: EmbeddingSpec
    rows: int
    embedded: int
    reused: int
    resumed: int
    dropped: int
    seconds: float
    embed_seconds: float
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def summary(self) -> str:
        rate = f" at {self.images_per_second:.1f} images/s" if self.embedded else ""
        return (
            f"{self.out}: {self.rows} images, {self.spec.dim} floats each; embedded "
            f"{self.embedded}{rate}, reused {self.reused} cached"
            + (f" ({self.resumed} from an interrupted run)" if self.resumed else "")
            + f", dropped {self.dropped} no longer in the folder; "
            f"{len(self.errors)} skipped; {self.seconds:.1f} s"
        )


def extract(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    weights: str | os.PathLike | None = None,
    input_size: int = 299,
    batch_size: int = 32,
    engine: str = DEFAULT_ENGINE,
    overwrite: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder: Embedder | None = None,
) -> ExtractResult:
    """Embed the images under ``images`` into the Parquet file ``out``.

    Images already in ``out`` (same SHA-256, same spec) are not embedded again; images no
    longer in the folder are dropped. ``out`` is replaced atomically; progress is
    checkpointed every ``checkpoint_every`` new images so an interrupted run resumes.

    Args:
        images: folder of images; first-level sub-folder names are the labels.
        out: Parquet file to create or update.
        layers: ``"multiscale"`` (default), ``"final"`` or layer names (comma-separated
            string or sequence).
        weights: weights file, ``"imagenet"``, or None for ``$CELLEMBED_WEIGHTS`` / imagenet.
        input_size: side of the square network input, in pixels (>= 71).
        batch_size: images decoded and stored per step.
        engine: ``"onnxruntime"`` (default, faster on CPU) or ``"tensorflow"``; same
            embeddings within 1e-4 and the same spec, so caches are shared.
        overwrite: replace an ``out`` made with another spec instead of refusing.
        checkpoint_every: flush finished embeddings to the checkpoint every this many images.
        progress: show a progress bar (images done, images/s, ETA) on stderr.
        log: where to send progress messages (one line each); None for silence.
        embedder: an already built embedder (then ``layers``, ``weights`` and
            ``input_size`` are ignored); lets callers embed several folders with one model.

    Returns:
        An :class:`ExtractResult`.

    Raises:
        InputError: bad folder, output, weights, layers or spec mismatch (nothing written).
        Interrupted: Ctrl-C; finished embeddings were checkpointed, ``out`` is unchanged.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    if batch_size < 1 or checkpoint_every < 1:
        raise InputError("--batch-size and the checkpoint interval must be at least 1")
    check_engine(engine)
    files = find_images(images)
    out = _check_output(Path(out))
    checkpoint = Checkpoint(out)
    if overwrite:
        checkpoint.remove()

    # Decide the spec, and refuse a mismatching OUT or checkpoint, without TensorFlow:
    # a rerun with nothing new to embed then costs only hashing and one Parquet read.
    if embedder is not None:
        spec: EmbeddingSpec | None = embedder.spec
    else:
        tap_names = parse_layers(layers)
        check_input_size(input_size)
        weights_file = resolve_weights(weights)
        fields = spec_fields(weights_file, input_size)
        spec = None
    out_table = None
    cache: dict[str, CachedEmbedding] = {}
    references = [out] if out.exists() and not overwrite else []
    references += checkpoint.chunks()[:1]
    for reference in references:
        found = existing_spec(reference)
        if spec is None:
            spec = _spec_like(found, tap_names, fields)
        refuse_other_spec(reference, spec, found)
    if out.exists() and not overwrite:
        out_table, _ = read_table(out)
        cache = cached_rows(out_table)
    old_rows = set(cache)
    resumed = checkpoint.load(spec) if spec is not None else {}
    cache.update(resumed)
    # Decoding is deterministic: a file that failed before, unchanged, fails again.
    known_bad = {e["sha256"]: e["reason"] for e in _recorded_errors(out_table) if e.get("sha256")}

    shas, errors = _hash_files(files)
    wanted = {sha for sha in shas if sha is not None}
    todo_index: dict[str, int] = {}
    for i, sha in enumerate(shas):
        if sha in known_bad:
            errors.append({"path": files[i].path, "reason": known_bad[sha], "sha256": sha})
        elif sha is not None and sha not in cache and sha not in todo_index:
            todo_index[sha] = i
    todo = [(sha, files[i]) for sha, i in todo_index.items()]
    labels = {f.label for f in files if f.label is not None}
    say(
        f"found {len(files)} images in {images} ({len(labels)} labels); "
        f"{len(wanted & set(cache))} already embedded, {len(todo)} to embed"
    )

    decode_errors: list[dict[str, str]] = []
    embed_seconds = 0.0
    if todo or spec is None:
        try:
            prepare_resize()
            if embedder is None:
                embedder = load_embedder(weights_file, input_size, tap_names, engine, log=say)
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted while loading the network, before any image was embedded; "
                "run the same command again"
            ) from None
        if spec is not None and spec.differences(embedder.spec):
            raise RuntimeError(f"planned spec differs from the model's: {spec.differences(embedder.spec)}")
        spec = embedder.spec
        embed_started = time.perf_counter()  # images/s counts decoding + network only
        decode_errors = _embed_missing(
            todo, embedder, cache, checkpoint, batch_size, checkpoint_every, progress
        )
        embed_seconds = time.perf_counter() - embed_started
    errors += decode_errors

    rows = [(f, sha) for f, sha in zip(files, shas) if sha is not None and sha in cache]
    errors.sort(key=lambda e: e["path"])
    if not (out_table is not None and _unchanged(out_table, images, rows, errors)):
        table = make_table(
            spec,
            [f.path for f, _ in rows],
            [f.label for f, _ in rows],
            [sha for _, sha in rows],
            [cache[sha].width for _, sha in rows],
            [cache[sha].height for _, sha in rows],
            np.stack([cache[sha].vector for _, sha in rows]) if rows else np.zeros((0, spec.dim)),
            errors,
            images_root=images,
        )
        write_table(table, out)
    _write_errors_csv(errors_csv_path(out), errors)
    checkpoint.remove()
    return ExtractResult(
        out=out,
        spec=spec,
        rows=len(rows),
        embedded=len(todo) - len(decode_errors),
        reused=sum(1 for _, sha in rows if sha in old_rows or sha in resumed),
        resumed=len(set(resumed) - old_rows),
        dropped=len(old_rows - wanted),
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
        errors=errors,
    )


def _spec_like(existing: EmbeddingSpec, tap_names: list[str], fields: dict) -> EmbeddingSpec:
    """The spec this run would produce, with tap widths taken from a file made with the same
    tap names (widths depend only on the names; when the names differ the spec differs)."""
    widths = [t.width for t in existing.taps] if existing.tap_names == tap_names else [0] * len(tap_names)
    return EmbeddingSpec.from_widths(zip(tap_names, widths), **fields)


def _unchanged(
    out_table, images, rows: list[tuple[ImageFile, str]], errors: list[dict[str, str]]
) -> bool:
    """True when OUT already holds exactly these rows and errors (no rewrite needed)."""
    if out_table.num_rows != len(rows):
        return False
    return (
        _recorded_errors(out_table) == errors
        and (out_table.schema.metadata or {}).get(IMAGES_METADATA_KEY) == str(Path(images).resolve()).encode()
        and out_table.column("path").to_pylist() == [f.path for f, _ in rows]
        and out_table.column("label").to_pylist() == [f.label for f, _ in rows]
        and out_table.column("sha256").to_pylist() == [sha for _, sha in rows]
    )


def _recorded_errors(table) -> list[dict[str, str]]:
    if table is None:
        return []
    return json.loads((table.schema.metadata or {}).get(ERRORS_METADATA_KEY, b"[]"))


def _check_output(out: Path) -> Path:
    if out.is_dir():
        raise InputError(f"output {out} is a folder; give a file name such as {out / 'embeddings.parquet'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder of output {out}: {exc.strerror or exc}") from None
    try:  # a real write probe: permission bits say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise InputError(f"output {out} is not writable ({exc.strerror or exc}); choose another -o") from None
    return out


def _hash_files(files: list[ImageFile]) -> tuple[list[str | None], list[dict[str, str]]]:
    shas: list[str | None] = []
    errors: list[dict[str, str]] = []
    for image in files:
        try:
            shas.append(sha256_file(image.absolute))
        except OSError as exc:
            shas.append(None)
            errors.append({"path": image.path, "reason": f"cannot read file: {exc.strerror or exc}"})
    return shas, errors


def _embed_missing(
    todo: list[tuple[str, ImageFile]],
    embedder: Embedder,
    cache: dict[str, CachedEmbedding],
    checkpoint: Checkpoint,
    batch_size: int,
    checkpoint_every: int,
    progress: bool,
) -> list[dict[str, str]]:
    """Embed ``todo`` (sha256, file) pairs into ``cache``, checkpointing as it goes.

    Returns the files that failed to decode, as ``{"path", "reason", "sha256"}`` dicts.
    """
    errors: list[dict[str, str]] = []
    if not todo:
        return errors
    unsaved: list[tuple[str, str | None, str, CachedEmbedding]] = []
    bar = tqdm(
        total=len(todo), unit="img", desc="embedding", file=sys.stderr,
        disable=not progress, dynamic_ncols=True, smoothing=0.1,
    )
    try:
        paths = [image.absolute for _, image in todo]
        for batch in decoded_batches(paths, embedder.spec.input_size, batch_size):
            vectors = embedder.embed(batch.pixels) if batch.decoded else []
            for (index, decoded), vector in zip(batch.decoded, vectors):
                sha, image = todo[index]
                entry = CachedEmbedding(decoded.width, decoded.height, vector)
                cache[sha] = entry
                unsaved.append((image.path, image.label, sha, entry))
            for index, reason in batch.failed:
                sha, image = todo[index]
                errors.append({"path": image.path, "reason": reason, "sha256": sha})
            if len(unsaved) >= checkpoint_every:
                checkpoint.write(embedder.spec, unsaved)
                unsaved = []
            bar.update(len(batch.decoded) + len(batch.failed))
    except KeyboardInterrupt:
        if unsaved:
            checkpoint.write(embedder.spec, unsaved)
        bar.close()
        raise Interrupted(
            f"interrupted after {bar.n} of {len(todo)} images; finished embeddings are "
            f"checkpointed in {checkpoint.folder}; run the same command again to resume"
        ) from None
    bar.close()
    return errors


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
