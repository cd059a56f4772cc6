"""``extract``: embed every image of a folder into a Parquet file, incrementally and safely.

:func:`extract` resolves command-line style settings (a recipe: backbone, taps, the
choices, a preset) into the embedding spec once and calls :func:`run_extraction` with it
and an :class:`ExtractOptions` (how the run goes). That is a short composition:
:func:`~cellembed.plan.plan` decides the work without any network, a distributor (:mod:`cellembed.distributors`, sequential by default, or Ray) runs
:func:`~cellembed.shards.embed_shard` on each shard, and :func:`~cellembed.merge.merge`
assembles OUT atomically. Shards finished by an interrupted run (Ctrl-C, a crash,
``kill -9``) stay in OUT's work folder and are reused by the next run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from cellembed.backbones import DEFAULT_BACKBONE
from cellembed.decoding import DEFAULT_MAX_PIXELS, check_max_pixels
from cellembed.distributors import DEFAULT_DISTRIBUTOR, make_distributor
from cellembed.embedder import spec_for_settings, spec_weights
from cellembed.engines import DEFAULT_ENGINE, Embedder, check_engine
from cellembed.shared.atomic import output_lock, prepare_output
from cellembed.errors import InputError, Interrupted
from cellembed.merge import merge
from cellembed.plan import DEFAULT_SHARD_SIZE, Plan, plan as make_plan
from cellembed.precision import AUTO
from cellembed.presets import DEFAULT_PRESET, PRESETS
from cellembed.shards import ShardJob, ShardResult
from cellembed.spec import EmbeddingSpec
from cellembed.store import read_spec
from cellembed.weights import WeightsFile

DEFAULT_CHECKPOINT_EVERY = DEFAULT_SHARD_SIZE


@dataclass(frozen=True)
class ExtractOptions:
    """How an extraction runs (what it computes is the spec).

    Each field is ``extract``'s argument of the same name: see there.

    Parameters
    ----------
    batch_size : int, default 32
        Images decoded (and run together by the TensorFlow engine) per step.
    engine : str, default "onnxruntime"
        ``"onnxruntime"`` (faster on CPU) or ``"tensorflow"``.
    overwrite : bool, default False
        Replace an ``out`` made with another spec instead of refusing.
    add_only : bool, default False
        Treat ``out`` as an add-only cache (add the images it does not hold yet, keep its rows of other images).
    checkpoint_every : int, default 256
        Images per shard, saved as each finishes.
    distributed : str, default "sequential"
        ``"sequential"`` (this process) or ``"ray"`` (a Ray cluster).
    distributor_options : mapping, optional
        Options of the distributor (Ray: ``address``, ``cpus_per_task``, ``gpus_per_task``, ``max_retries``).
    progress : bool, default True
        Show a progress bar (images done, images/s, ETA) on stderr.
    max_pixels : int, default 50000000
        An image of more pixels (width x height) is not decoded but listed as an error.
    """

    batch_size: int = 32
    engine: str = DEFAULT_ENGINE
    overwrite: bool = False
    add_only: bool = False
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    distributed: str = DEFAULT_DISTRIBUTOR
    distributor_options: Mapping[str, Any] | None = None
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check(self, prebuilt: bool = False) -> None:
        """Refuse settings no run can use.

        Parameters
        ----------
        prebuilt : bool, default False
            The run uses an embedder already built (then only the sequential distributor).

        Raises
        ------
        InputError
            A setting no run can use (one line naming the option).
        """
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise InputError("--batch-size and --checkpoint-every must be at least 1")
        check_max_pixels(self.max_pixels)
        check_engine(self.engine)
        if prebuilt and self.distributed != DEFAULT_DISTRIBUTOR:
            raise InputError("a prebuilt embedder runs only with the sequential distributor")


@dataclass
class ExtractResult:
    """What a run did.

    Parameters
    ----------
    out : Path
        The Parquet file written.
    spec : EmbeddingSpec
        The embedding spec of its rows.
    rows : int
        Number of rows (images) in ``out``.
    embedded : int
        Images whose embeddings were computed now.
    reused : int
        Images whose embeddings came from OUT or from the checkpoint of an interrupted run.
    resumed : int
        Of the ``reused``, those that came from the checkpoint of an interrupted run.
    dropped : int
        Rows of the old OUT that had no image any more (dropped; ``kept`` instead, by an add-only cache).
    seconds : float
        Duration of the whole run, in seconds.
    embed_seconds : float
        Seconds spent embedding (decoding and network only).
    errors : list of dict, optional
        The files that could not be embedded.
    kept : int, default 0
        Rows of other images kept by an add-only cache (instead of ``dropped``).
    members : list of tuple, optional
        The folder's images in OUT, as ``(path, label, sha256)`` (an add-only cache also holds other images).
    warnings : list of str, optional
        Name the folders holding no image.
    """

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
    kept: int = 0
    members: list[tuple[str, str | None, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Images embedded per second of embedding (0 when none were)."""
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def summary(self) -> str:
        """What the run did, in one line for people.

        Returns
        -------
        str
            Rows and their width, images embedded (and how fast) and reused, rows kept or
            dropped, files skipped, seconds.
        """
        rate = f" at {self.images_per_second:.1f} images/s" if self.embedded else ""
        return (
            f"{self.out}: {self.rows} images, {self.spec.dim} floats each; embedded "
            f"{self.embedded}{rate}, reused {self.reused} cached"
            + (f" ({self.resumed} from an interrupted run)" if self.resumed else "")
            + (f", kept {self.kept} of other images" if self.kept else f", dropped {self.dropped} no longer in the folder")
            + "; "
            f"{len(self.errors)} skipped; {self.seconds:.1f} s"
        )


def extract(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layers: str | Sequence[str] | None = None,
    weights: str | os.PathLike | WeightsFile | None = None,
    input_size: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
    views: int | None = None,
    crop: str | None = None,
    stain: str | None = None,
    pooling: str | None = None,
    precision: str | None = None,
    preset: str = DEFAULT_PRESET,
    spec: EmbeddingSpec | None = None,
    batch_size: int = 32,
    engine: str = DEFAULT_ENGINE,
    overwrite: bool = False,
    add_only: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    distributed: str = DEFAULT_DISTRIBUTOR,
    distributor_options: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder: Embedder | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ExtractResult:
    """Embed the images under ``images`` into the Parquet file ``out``.

    Images already in ``out`` (same SHA-256, same spec) are not embedded again; images no
    longer in the folder are dropped (kept with ``add_only``). ``out`` is replaced
    atomically; finished embeddings are saved every ``checkpoint_every`` images (one shard)
    so an interrupted run resumes. A second run writing the same ``out`` at the same time
    is refused. Finished shards of an interrupted run with another spec are set aside (in
    ``OUT-stem.checkpoint-<spec digest>/``), never deleted; a run with their spec resumes them.

    Parameters
    ----------
    images : str or PathLike
        Folder of images; first-level sub-folder names are the labels.
    out : str or PathLike
        Parquet file to create or update.
    layers : str or sequence of str, optional
        A tap preset of the backbone (Xception: ``"mid"``, ``"multiscale"`` or ``"final"``;
        None: the ``preset``'s) or layer names (comma-separated string or sequence).
    weights : str, PathLike or WeightsFile, optional
        Weights file, ``"imagenet"``, or None for ``$CELLEMBED_WEIGHTS`` / imagenet.
    input_size : int, optional
        Side of the square network input, in pixels (default 299).
    backbone : str, default "xception"
        The network (``cellembed.backbones``).
    views : int, optional
        Test-time views: each embedding is the mean over the first 1, 2, 4 or 8
        views of the dihedral group (``cellembed.views``); one forward pass each.
    crop : str, optional
        ``"none"`` (the whole image), ``"cell"`` or ``"centre"``: frame the image
        around its white cell first (``cellembed.cellcrop``).
    stain : str, optional
        ``"none"`` or ``"reinhard"``: colour normalisation (``cellembed.stain``).
    pooling : str, optional
        ``"global_average"`` or ``"global_average+std"``: the per-channel
        statistics of each tap (``cellembed.pooling``).
    precision : str, optional
        ``"fp32"`` or ``"int8"``: the network's numbers (``cellembed.precision``).
    preset : str, default "default"
        Named settings (``cellembed.presets``: ``"default"``, ``"best"``,
        ``"v1"``) filling ``layers``, ``views``, ``crop``, ``stain``, ``pooling`` and
        ``precision`` left None.
    spec : EmbeddingSpec, optional
        Embed exactly as this spec (of a file or a predictor) instead of ``layers``,
        ``input_size``, ``backbone``, ``views``, ``crop``, ``stain``, ``pooling`` and ``precision``;
        ``weights`` must be the spec's.
    batch_size : int, default 32
        Images decoded (and run together by the TensorFlow engine) per step.
    engine : str, default "onnxruntime"
        ``"onnxruntime"`` (default, faster on CPU) or ``"tensorflow"``; same
        embeddings within 1e-4 and the same spec, so caches are shared.
    overwrite : bool, default False
        Replace an ``out`` made with another spec instead of refusing.
    add_only : bool, default False
        Treat ``out`` as an add-only cache: add the images it does not hold
        yet and keep its rows of other images (``cellclf predict --cache``).
    checkpoint_every : int, default 256
        Images per shard, saved as each finishes.
    distributed : str, default "sequential"
        ``"sequential"`` (this process) or ``"ray"`` (a Ray cluster).
    distributor_options : dict, optional
        Options of the distributor (Ray: ``address``,
        ``cpus_per_task``, ``gpus_per_task``, ``max_retries``).
    progress : bool, default True
        Show a progress bar (images done, images/s, ETA) on stderr.
    log : callable, optional
        Where to send progress messages (one line each); None for silence.
    embedder : Embedder, optional
        An already built embedder (then ``layers``, ``weights``, ``input_size``
        and ``spec`` are ignored); lets callers embed several folders with one model.
    max_pixels : int, default 50000000
        An image of more pixels (width x height) is not decoded but listed
        as an error (tried again by the next run); at most Pillow's decompression-bomb
        limit. The default (``cellembed.decoding.DEFAULT_MAX_PIXELS``, 50 million)
        keeps decoding memory bounded.

    Returns
    -------
    ExtractResult
        What the run did. Folders holding no image are named in its ``warnings``
        (and said through ``log``).

    Raises
    ------
    InputError
        Bad folder, output, weights, layers or spec mismatch (nothing written).
    Interrupted
        Ctrl-C; finished embeddings were checkpointed, ``out`` is unchanged.
    """
    options = ExtractOptions(
        batch_size=batch_size, engine=engine, overwrite=overwrite, add_only=add_only,
        checkpoint_every=checkpoint_every, distributed=distributed, distributor_options=distributor_options,
        progress=progress, max_pixels=max_pixels,
    )
    options.check(prebuilt=embedder is not None)
    # The recipe is resolved into the spec once, and every refusal comes before any
    # network: a rerun with nothing new to embed costs only hashing and reading OUT's index.
    settings = dict(
        backbone=backbone, layers=layers, input_size=input_size, preset=preset,
        views=views, crop=crop, stain=stain, pooling=pooling, precision=precision,
    )
    resolved, weights_file = _resolved(embedder, spec, weights, settings, engine, out, log)
    return run_extraction(images, out, resolved, weights_file, options, log=log, embedder=embedder)


def run_extraction(
    images: str | os.PathLike, out: str | os.PathLike, spec: EmbeddingSpec, weights: WeightsFile | None,
    options: ExtractOptions | None = None, *, log: Callable[[str], None] | None = None,
    embedder: Embedder | None = None,
) -> ExtractResult:
    """Embed ``images`` into ``out`` with the resolved ``spec``: plan, run the shards, merge.

    See ``extract``, which resolves command-line style settings into the spec and calls this.

    Parameters
    ----------
    images : str or PathLike
        Folder of images; first-level sub-folder names are the labels.
    out : str or PathLike
        Parquet file to create or update.
    spec : EmbeddingSpec
        The resolved embedding spec.
    weights : WeightsFile or None
        The checked weights; None with a prebuilt ``embedder``.
    options : ExtractOptions, optional
        How the run goes (None: ``ExtractOptions()``, the defaults).
    log : callable, optional
        Where to send progress messages (one line each); None for silence.
    embedder : Embedder, optional
        An already built embedder.

    Returns
    -------
    ExtractResult
        What the run did.
    """
    options = options or ExtractOptions()
    options.check(prebuilt=embedder is not None)
    started = time.perf_counter()
    say = log or (lambda message: None)
    out = prepare_output(out)
    with output_lock(out):  # a second run writing the same OUT is refused, not mixed in
        work = _plan_work(images, out, spec, options, say)
        results, embed_seconds = _embed(work, weights, options, embedder, say)
        try:
            merged = merge(work, results)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted while writing {out} (left as it was); the embeddings are checkpointed in "
                f"{work.work_dir}; run the same command again to finish"
            ) from None
        return _result(work, results, merged, time.perf_counter() - started, embed_seconds)


def _plan_work(images: Any, out: Path, spec: EmbeddingSpec, options: ExtractOptions, say: Callable[[str], None]) -> Plan:
    """The plan (:func:`cellembed.plan.plan`), with shards of another spec set aside, said."""
    try:
        work = make_plan(images, out, spec, overwrite=options.overwrite, shard_size=options.checkpoint_every,
                         prune=not options.add_only)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while reading the images, before any was embedded; run the same command again") from None
    _set_aside(work, say)
    for warning in work.warnings:
        say(f"warning: {warning}")
    say(work.summary())
    return work


def _embed(work: Plan, weights: WeightsFile | None, options: ExtractOptions, embedder: Embedder | None,
           say: Callable[[str], None]) -> tuple[list[ShardResult], float]:
    """Run the plan's shards on the distributor: (results, seconds embedding). With no
    shard, no network is loaded."""
    if not work.shards:
        return [], 0.0
    try:
        distributor_options = dict(options.distributor_options or {})
        if embedder is not None:
            distributor_options["embedder"] = embedder
        distributor = make_distributor(options.distributed, **distributor_options)
        job = ShardJob(work.spec, weights, options.engine, work.work_dir, options.batch_size,
                       max_pixels=options.max_pixels)
        try:
            distributor.start(job, say)
        except BaseException:
            distributor.close()
            raise
        embed_started = time.perf_counter()  # images/s counts decoding + network only
        results = _run(distributor, work, options.progress)
        return results, time.perf_counter() - embed_started
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while loading the network, before any image was embedded; run the same command again"
        ) from None


def _result(work: Plan, results: list[ShardResult], merged: Any, seconds: float, embed_seconds: float) -> ExtractResult:
    new = {sha for result in results for sha in result.sha256s}
    old = set(work.out_index.sha256s) if work.out_index else set()
    wanted = {sha for sha in work.sha256s if sha is not None}
    members = [(image.path, image.label, sha) for image, sha in zip(work.files, work.sha256s)
               if sha is not None and sha not in merged.failed]
    return ExtractResult(
        out=work.out,
        spec=merged.spec,
        rows=merged.rows,
        embedded=len(new),
        reused=sum(1 for sha in work.sha256s if sha is not None and sha not in merged.failed and sha not in new),
        resumed=len((work.finished_sha256s & wanted) - old - merged.failed),
        dropped=len(old - wanted) if work.prune else 0,
        seconds=seconds,
        embed_seconds=embed_seconds,
        errors=merged.errors,
        kept=merged.kept,
        members=members,
        warnings=list(work.warnings),
    )


def _set_aside(work: Plan, say: Callable[[str], None]) -> None:
    """Move finished shards of another spec out of the work folder, into their spec's own
    folder, and say where: they are an interrupted run's work, never deleted."""
    folders: dict[Path, int] = {}
    for path, folder in work.set_aside:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / path.name)
        folders[folder] = folders.get(folder, 0) + 1
    for folder, count in folders.items():
        say(
            f"set aside {count} finished shard(s) of an interrupted run with another embedding spec in "
            f"{folder}: a run with that spec resumes from them; delete the folder if they are not needed"
        )


def _resolved(
    embedder: Embedder | None, spec: EmbeddingSpec | None, weights: Any, settings: dict[str, Any], engine: str,
    out: str | os.PathLike, log: Callable[[str], None] | None,
) -> tuple[EmbeddingSpec, WeightsFile | None]:
    """The resolved spec and weights (None with a prebuilt embedder)."""
    if embedder is not None:
        return embedder.spec, None
    if spec is None:
        resolved, weights_file = spec_for_settings(weights=weights, engine=engine, **settings)
        return keep_out_precision(resolved, out, settings["preset"], settings.get("precision"), log), weights_file
    return spec, spec_weights(spec, weights)


def keep_out_precision(spec: EmbeddingSpec, out: str | os.PathLike, preset: str, precision: str | None,
                       log: Callable[[str], None] | None = None) -> EmbeddingSpec:
    """``spec``, or where its precision was left to ``auto`` (``precision`` None and the
    preset's auto, or ``"auto"``) and ``out`` already holds embeddings of the same spec in
    the other precision, ``spec`` in OUT's precision: a machine with int8 instructions keeps
    extending a file begun in fp32 (and the reverse) instead of refusing it."""
    if (precision or PRESETS[preset].choices.get("precision")) != AUTO or not Path(out).is_file():
        return spec
    try:
        found = read_spec(out)
    except InputError:  # not a cellembed file: the plan refuses it with its own message
        return spec
    if found.precision == spec.precision:
        return spec
    kept = dataclasses.replace(spec, precision=found.precision)
    if kept.differences(found):
        return spec
    if log is not None:
        log(f"{out} holds {found.precision} embeddings: extending it in {found.precision} "
            f"(--precision {spec.precision} --overwrite would embed everything again in {spec.precision})")
    return kept


def _run(distributor: Any, work: Plan, progress: bool) -> list[ShardResult]:
    """Run every shard with a progress bar; Ctrl-C keeps what finished and says how to resume."""
    results: list[ShardResult] = []
    done = 0
    bar = tqdm(
        total=work.to_embed, unit="img", desc="embedding", file=sys.stderr,
        disable=not progress, dynamic_ncols=True, smoothing=0.1,
    )

    def advance(images: int) -> None:
        nonlocal done
        done += images
        bar.update(images)

    try:
        for result in distributor.run(work.shards, advance):
            results.append(result)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted after {done} of {work.to_embed} images; finished embeddings are "
            f"checkpointed in {work.work_dir}; run the same command again to resume"
        ) from None
    finally:
        bar.close()
        distributor.close()
    return results
