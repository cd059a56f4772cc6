"""``plan``: what an extraction must do, decided without writing anything or starting TensorFlow.

Discovery and hashing of the images; the cache diff against OUT and against the shard
files that an interrupted run left in OUT's work folder (``emb.checkpoint/`` for
``emb.parquet``), or set aside for this spec by an earlier run with another spec
(``emb.checkpoint-<spec digest>/``); the files known to be bad (a file that failed to decode, unchanged,
fails again; one that could not be read is tried again); and the remaining work as
:class:`~cellembed.shards.Shard` objects of at most ``shard_size`` images. An OUT made with
another spec is refused here, before any work (``overwrite`` replaces it); finished shards
of another spec are never refused nor deleted: they are listed to be set aside (moved to
their spec's own folder) once the plan stands. Paths in shards are absolute, so
workers on other machines (or with another working folder) find the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellembed.discovery import ImageFile, scan_images
from cellembed.errors import InputError, OutputConflict
from cellembed.shared.hashing import sha256_file
from cellembed.presets import matching_preset
from cellembed.shards import Shard, ShardItem
from cellembed.spec import EmbeddingSpec
from cellembed.store import (
    SHARD_GLOBS, Damaged, StoredIndex as OutIndex, checkpoint_folder, read_errors, read_index, read_sha256s, read_spec,
    set_aside_folder,
)

DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class Plan:
    """An extraction, decided.

    Attributes:
        images, out: the folder and the Parquet file.
        work_dir: where shard files go (kept after an interruption, removed after merge).
        spec: the spec of the output (resolved: :func:`cellembed.embedder.resolved_spec`).
        files: every image found, sorted by path; ``sha256s`` per file (None: unreadable).
            OUT's rows of images under a folder that could not be listed are among them
            (kept as they are: those images are unknown, not gone).
        errors: files that will not be embedded (unreadable now, or known bad), and
            entries of the folder that cannot be read (folders, FIFOs, devices).
        out_index: OUT's rows when they are reused (None: no OUT, or ``overwrite``).
        finished: shard files of earlier interrupted runs with this spec (in the work
            folder, or set aside for this spec), reused as they are.
        finished_images: per finished shard, the images it holds (or that failed to decode in it).
        set_aside: (shard file, folder) pairs: shards in the work folder made with another
            spec, to move to that spec's set-aside folder.
        prune: drop OUT's rows of images no longer in the folder (False: an add-only cache,
            whose rows of other images are kept).
        shards: the work left.
        warnings: folders holding no image, links to folders already listed (one line each).
    """

    images: Path
    out: Path
    work_dir: Path
    spec: EmbeddingSpec
    files: tuple[ImageFile, ...]
    sha256s: tuple[str | None, ...]
    errors: tuple[dict, ...]
    out_index: OutIndex | None
    finished: tuple[Path, ...]
    finished_images: tuple[frozenset[str], ...]
    set_aside: tuple[tuple[Path, Path], ...]
    shards: tuple[Shard, ...]
    prune: bool = True
    warnings: tuple[str, ...] = ()

    @property
    def to_embed(self) -> int:
        return sum(len(shard) for shard in self.shards)

    @property
    def finished_sha256s(self) -> frozenset[str]:
        """The images the finished shards hold (or failed to decode)."""
        return frozenset().union(*self.finished_images)

    @property
    def cached(self) -> set[str]:
        """Images whose embedding already exists (in OUT or in finished shards)."""
        return set(self.out_index.sha256s if self.out_index else ()) | self.finished_sha256s

    def summary(self) -> str:
        wanted = {sha for sha in self.sha256s if sha is not None}
        labels = {f.label for f in self.files if f.label is not None}
        return (
            f"found {len(self.files)} images in {self.images} ({len(labels)} labels); "
            f"{len(wanted & self.cached)} already embedded, {self.to_embed} to embed"
        )


def plan(
    images: str | Path,
    out: str | Path,
    spec: EmbeddingSpec,
    *,
    overwrite: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prune: bool = True,
) -> Plan:
    """Decide the extraction of ``images`` into ``out`` with the resolved ``spec``.

    Args:
        overwrite: do not reuse (nor refuse) an existing OUT (finished shards of this
            spec are still reused).
        shard_size: images per shard (also the checkpoint interval).
        prune: see :class:`Plan`.

    Raises:
        InputError: bad images folder, or a file in the work folder that cellembed did not write.
        OutputConflict: (without ``overwrite``) an OUT that cellembed did not write or that
            was made with another spec.
    """
    if shard_size < 1:
        raise InputError("--checkpoint-every must be at least 1")
    images, out = Path(images), Path(out)
    if images.is_dir() and out.resolve().is_relative_to(images.resolve()):
        raise InputError(
            f"-o {out} is inside the images folder {images}; extract never writes there (its work folder "
            "would be read as a class and an image could be replaced): give -o a path outside it"
        )
    scan = scan_images(images)
    files = scan.files
    work_dir = checkpoint_folder(out).absolute()
    out_spec = None
    if out.exists():
        out_spec = _existing_spec(out)  # a file cellembed did not write is never replaced, whatever the options
        if not overwrite:
            _check_reference(out, spec, out_spec)
    finished, set_aside = [], []
    folders = (work_dir, set_aside_folder(out, spec).absolute())
    for path in sorted(p for folder in folders for pattern in SHARD_GLOBS for p in folder.glob(pattern)):
        try:
            found = read_spec(path)
        except InputError as exc:
            raise InputError(
                f"{exc}, but it is in the work folder {path.parent} of {out}; move it away and run again"
            ) from None
        if spec.differences(found):
            if path.parent == work_dir:
                set_aside.append((path, set_aside_folder(out, found).absolute()))
            continue
        finished.append(path)

    out_index = _read_index(out, out_spec) if out_spec is not None and not overwrite else None
    known_bad = {e["sha256"]: e["reason"] for e in (out_index.errors if out_index else ()) if e.get("sha256")}
    finished_images: list[frozenset[str]] = []
    for path in finished:
        held = set(read_sha256s(path))
        for error in read_errors(path):
            if error.get("sha256") and not error.get("retry"):  # unreadable files are tried again
                known_bad[error["sha256"]] = error["reason"]
                held.add(error["sha256"])
        finished_images.append(frozenset(held))
    finished_shas = frozenset().union(*finished_images)

    sha256s, errors = _hash_files(files)
    errors += scan.errors
    if scan.unlisted and out_index is not None:
        files, sha256s = _keep_unlisted(files, sha256s, out_index, scan.unlisted, images)
    cached = set(out_index.sha256s if out_index else ()) | finished_shas
    todo: dict[str, ShardItem] = {}
    for image, sha in zip(files, sha256s):
        if sha is None:
            continue
        if sha in known_bad:
            errors.append({"path": image.path, "reason": known_bad[sha], "sha256": sha})
        elif sha not in cached and sha not in todo:
            todo[sha] = ShardItem(sha, image.path, image.label, str(Path(image.absolute).absolute()))
    items = list(todo.values())
    shards = tuple(Shard.of(spec, items[i : i + shard_size]) for i in range(0, len(items), shard_size))
    return Plan(
        images=images, out=out, work_dir=work_dir, spec=spec, files=tuple(files), sha256s=tuple(sha256s),
        errors=tuple(sorted(errors, key=lambda e: e["path"])), out_index=out_index,
        finished=tuple(finished), finished_images=tuple(finished_images), set_aside=tuple(set_aside),
        shards=shards, prune=prune, warnings=tuple(scan.warnings),
    )


def _existing_spec(path: Path) -> EmbeddingSpec:
    """The spec of an existing OUT; a file cellembed did not write (not Parquet, or no spec
    in it) is refused, with or without ``overwrite``."""
    try:
        return read_spec(path)
    except InputError as exc:
        raise OutputConflict(f"{exc}; refusing to replace it", replaceable=False) from None


def _check_reference(path: Path, spec: EmbeddingSpec, found: EmbeddingSpec) -> None:
    """Refuse an OUT made with another spec (``found``)."""
    differences = spec.differences(found)
    if differences:
        made_with = matching_preset(found)
        raise OutputConflict(
            f"{path} was made with another embedding spec ({'; '.join(differences)}; "
            "requested vs existing) and specs never mix in one file",
            hint=f"it has the settings of --preset {made_with} (give that option to extend it)" if made_with else None,
        )


def _read_index(out: Path, spec: EmbeddingSpec) -> OutIndex:
    """OUT's rows without embeddings; ``spec`` is OUT's own (already read from its footer)."""
    try:
        index = read_index(out, spec)
    except Damaged as exc:
        raise OutputConflict(f"{out} is damaged ({exc})") from None
    if index.mixed:  # rows joined in from a file of another spec: never extended
        raise OutputConflict(index.mixed)
    return index


def _keep_unlisted(
    files: list[ImageFile], sha256s: list[str | None], index: OutIndex, unlisted: list[str], images: Path
) -> tuple[list[ImageFile], list[str | None]]:
    """``files`` plus OUT's rows of images under the folders that could not be listed, by path."""
    prefixes = tuple(folder + "/" for folder in unlisted)
    kept = [
        (ImageFile(path, label, images / path), sha)
        for path, label, sha in zip(index.paths, index.labels, index.sha256s)
        if path.startswith(prefixes)
    ]
    rows = sorted([*zip(files, sha256s), *kept], key=lambda row: row[0].path)
    return [image for image, _ in rows], [sha for _, sha in rows]


def _hash_files(files: list[ImageFile]) -> tuple[list[str | None], list[dict[str, str]]]:
    sha256s: list[str | None] = []
    errors: list[dict[str, str]] = []
    for image in files:
        try:
            sha256s.append(sha256_file(image.absolute))
        except OSError as exc:
            sha256s.append(None)
            errors.append({"path": image.path, "reason": f"cannot read file: {exc.strerror or exc}"})
    return sha256s, errors
