"""The ``cellembed`` command: ``extract`` embeddings of an image folder, ``info`` on a file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cellembed.cli_support import BadInput, exit_if_skipped, user_errors
from cellembed.model import DEFAULT_ENGINE, DEFAULT_LAYERS, ENGINES, TAP_PRESETS, WEIGHTS_ENV

engine_option = click.option(
    "--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE,
    help="What runs the network: onnxruntime is about 1.3x faster on CPU; the first run with "
    "new weights converts Xception once (about 20 s, cached in $CELLEMBED_CACHE_DIR, default "
    "~/.cache/cellembed). tensorflow runs Keras directly. Both give the same embeddings.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cellembed")
def main() -> None:
    """Frozen Xception embeddings of blood-cell images, cached in a Parquet file.

    Typical use: `cellembed extract IMAGES -o embeddings.parquet`, then
    `cellembed info embeddings.parquet`, then `cellclf fit embeddings.parquet -o run/`.
    """
    # Hide TensorFlow's C++ start-up chatter; real errors still come through.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@main.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path),
    help="Parquet file to create or update (e.g. embeddings.parquet).",
)
@click.option(
    "--layers", default=DEFAULT_LAYERS,
    help=f"Which Xception layers to pool into the embedding: {' or '.join(TAP_PRESETS)} "
    "(multiscale = add_2,add_6,add_10,add_11 + last layer, 5,256 numbers; final = last "
    "layer only, 2,048), or a comma-separated list of layer names.",
)
@click.option(
    "--weights", default=None, metavar="PATH|imagenet",
    help=f"Xception ImageNet weights file (.weights.h5 or .h5). Default: ${WEIGHTS_ENV} if "
    "set, else 'imagenet' (Keras downloads them; needs internet).",
)
@click.option("--input-size", default=299, type=click.IntRange(min=71), help="Network input side in pixels.")
@click.option(
    "--batch-size", default=32, type=click.IntRange(min=1),
    help="Images per step (decoded together; one forward pass with --engine tensorflow).",
)
@engine_option
@click.option(
    "--checkpoint-every", default=256, type=click.IntRange(min=1),
    help="Save finished embeddings every this many images, so an interrupted run resumes.",
)
@click.option("--overwrite", is_flag=True, help="Replace an output made with other settings instead of refusing.")
@click.option("--allow-skips", is_flag=True, help="Exit 0 even when some files could not be read.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress messages.")
def extract(
    images: Path, out: Path, layers: str, weights: str | None, input_size: int, batch_size: int, engine: str,
    checkpoint_every: int, overwrite: bool, allow_skips: bool, quiet: bool,
) -> None:
    """Embed every image under IMAGES into the Parquet file OUT.

    Each first-level sub-folder of IMAGES is a label (neutrophil/, basophil/, ...);
    images directly in IMAGES get no label. Images already in OUT (same file contents)
    are not embedded again, new ones are added, and ones no longer in IMAGES are dropped.
    Stop at any time (Ctrl-C) and run the same command again to resume.

    Files that cannot be read are skipped and listed in OUT's sidecar `.errors.csv`.
    Exit status: 0 all embedded, 3 some files skipped (0 with --allow-skips),
    2 bad input (nothing changed), 130 interrupted.
    """
    from cellembed.extraction import extract as run_extract

    log = None if quiet else (lambda message: click.echo(message, err=True))
    with user_errors():
        result = run_extract(
            images, out, layers=layers, weights=weights, input_size=input_size,
            batch_size=batch_size, engine=engine, overwrite=overwrite, checkpoint_every=checkpoint_every,
            progress=not quiet, log=log,
        )
    click.echo(result.summary(), err=True)
    from cellembed.checkpoint import errors_csv_path

    exit_if_skipped(result.errors, f"all listed in {errors_csv_path(result.out)}", allow_skips)


@main.command()
@click.argument("embeddings", type=click.Path(path_type=Path))
def info(embeddings: Path) -> None:
    """Describe an embeddings file: how it was made, images per label, skipped files."""
    from cellembed.store import load_embeddings, read_errors

    if not embeddings.is_file():
        raise BadInput(f"{embeddings} does not exist; give a file written by cellembed extract")
    with user_errors():
        frame, spec = load_embeddings(embeddings)
        errors = read_errors(embeddings)
    click.echo(f"file           {embeddings}")
    click.echo(f"images         {len(frame)}")
    click.echo(spec.describe())
    counts = frame["label"].fillna("(no label)").value_counts().sort_index()
    click.echo("per label      " + ", ".join(f"{label} {n}" for label, n in counts.items()))
    click.echo(f"errors         {len(errors)} file(s) recorded as unreadable")
    for error in errors[:5]:
        click.echo(f"               {error['path']}: {error['reason']}")
