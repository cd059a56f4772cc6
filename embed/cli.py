"""The ``cellembed`` command: ``extract`` embeddings of an image folder, ``info`` on a file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cellembed.backbones import DEFAULT_BACKBONE, backbone_names
from cellembed.cellcrop import CROPS
from cellembed.presets import DEFAULT_PRESET, PRESETS, preset_text
from cellembed.pooling import POOLINGS
from cellembed.stain import STAINS
from cellembed.precision import AUTO, PRECISIONS
from cellembed.views import VIEW_COUNTS
from cellembed.shared.cli_support import BadInput, engine_option, exit_if_skipped, max_pixels_option, user_errors
from cellembed.distributors import DEFAULT_DISTRIBUTOR, DISTRIBUTORS, distributor_options

def with_distributor_options(function):
    """Add each registered distributor's options (``--ray-address``...) to a command; their
    values arrive as ``<distributor>_<name>`` keyword arguments."""
    for distributor, options in reversed(list(distributor_options().items())):
        for option in reversed(options):
            function = click.option(
                option.flag, f"{distributor}_{option.name}", type=option.type, default=None,
                metavar=option.metavar, help=f"With --distributed {distributor}: {option.help}",
            )(function)
    return function


def chosen_distributor_options(distributed: str, values: dict) -> dict:
    """The options of the chosen distributor; an option of another one is a usage error."""
    chosen = {}
    for distributor, options in distributor_options().items():
        for option in options:
            value = values.get(f"{distributor}_{option.name}")
            if value is None:
                continue
            if distributor != distributed:
                raise click.UsageError(f"{option.flag} needs --distributed {distributor}")
            chosen[option.name] = value
    return chosen


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
    "--backbone", type=click.Choice(backbone_names()), default=DEFAULT_BACKBONE,
    help="The frozen network that embeds the images: xception (ImageNet Xception, Keras) or onnx "
    "(your own network as an ONNX file; --weights names its JSON description, see the README).",
)
@click.option(
    "--layers", default=None,
    help="Which layers to pool into the embedding: a preset of the backbone (xception: mid = "
    "add_2,add_6,add_10,add_11, 3,208 channels; multiscale = mid + last layer, 5,256; final = last "
    "layer only, 2,048; --pooling global_average+std doubles them), or a comma-separated list of "
    "layer names. Default: the --preset's.",
)
@click.option(
    "--preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET,
    help="Named settings for --layers, --views, --crop, --stain, --pooling and --precision (each option given wins): "
    + "; ".join(f"{name}: {preset_text(name)}" for name in PRESETS) + ".",
)
@click.option(
    "--views", type=click.Choice([str(n) for n in VIEW_COUNTS]), default=None,
    help="Test-time views: embed each image as the mean over 1, 2, 4 or 8 flips/rotations "
    "(one network pass each). Default: the preset's.",
)
@click.option(
    "--crop", type=click.Choice(list(CROPS)), default=None,
    help="Frame each image around its white cell first (found by its stained nucleus): cell = "
    "a square twice the nucleus size; centre = centred, apparent size kept; none = whole image. "
    "Default: the preset's.",
)
@click.option(
    "--stain", type=click.Choice(list(STAINS)), default=None,
    help="Colour normalisation: reinhard = move each image's L*a*b* colour statistics to a PBC "
    "reference (other labs' stains look alike); none = colours as decoded. Default: the preset's.",
)
@click.option(
    "--pooling", type=click.Choice(list(POOLINGS)), default=None,
    help="What each layer gives per channel: global_average = its mean over the image; "
    "global_average+std = the mean and the standard deviation (twice the numbers, same network "
    "pass). Default: the preset's.",
)
@click.option(
    "--precision", type=click.Choice([AUTO, *PRECISIONS]), default=None,
    help="The network's numbers: fp32, or int8 (a quantised copy calibrated on the project's sample cells, "
    "made once and cached; 2.8x faster on a CPU with AVX-512 VNNI, AVX-VNNI or AMX, little faster elsewhere; "
    "its embeddings are close to fp32's but not the same, so a file holds one precision; --engine "
    "onnxruntime only). auto = int8 where the CPU has those instructions, else fp32 ($CELLEMBED_PRECISION "
    "fixes it); an existing OUT keeps its own precision. Default: the preset's.",
)
@click.option(
    "--weights", default=None, metavar="PATH|imagenet",
    help="ImageNet weights file of the backbone, no top (.weights.h5 or .h5). Default for xception: "
    "$CELLEMBED_WEIGHTS if set, else 'imagenet' (Keras downloads them; needs internet). For onnx: "
    "the network's JSON description (default $CELLEMBED_ONNX_BACKBONE).",
)
@click.option(
    "--input-size", default=None, type=click.IntRange(min=1),
    help="Network input side in pixels; default: 299 for xception (at least 71); an onnx network "
    "takes the size its description gives.",
)
@click.option(
    "--batch-size", default=32, type=click.IntRange(min=1),
    help="Images per step (decoded together; one forward pass with --engine tensorflow).",
)
@engine_option
@click.option(
    "--checkpoint-every", default=256, type=click.IntRange(min=1),
    help="Save finished embeddings every this many images (one shard), so an interrupted run resumes.",
)
@click.option(
    "--distributed", type=click.Choice(DISTRIBUTORS), default=DEFAULT_DISTRIBUTOR,
    help="Where the shards run: in this process, or as Ray tasks on a local or remote cluster "
    "(needs pip install 'cellembed[ray]'; images, weights and OUT on a shared file system).",
)
@with_distributor_options
@max_pixels_option
@click.option("--overwrite", is_flag=True, help="Replace an output made with other settings instead of refusing.")
@click.option("--allow-skips", is_flag=True, help="Exit 0 even when some files could not be read.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress messages.")
def extract(
    images: Path, out: Path, backbone: str, layers: str | None, preset: str, views: str | None, crop: str | None,
    stain: str | None, pooling: str | None, precision: str | None, weights: str | None, input_size: int | None,
    batch_size: int, engine: str, checkpoint_every: int, distributed: str, max_pixels: int, overwrite: bool,
    allow_skips: bool, quiet: bool, **distributor_values: object,
) -> None:
    """Embed every image under IMAGES into the Parquet file OUT.

    Each first-level sub-folder of IMAGES is a label (neutrophil/, basophil/, ...);
    images directly in IMAGES get no label. Images already in OUT (same file contents)
    are not embedded again, new ones are added, and ones no longer in IMAGES are dropped.
    Stop at any time (Ctrl-C) and run the same command again to resume.

    With --distributed ray the shards run as Ray tasks (many machines, or a GPU node);
    the result is the same file.

    Files that cannot be read (and folders that cannot be listed, whose cached rows are
    kept) are skipped and listed in OUT's sidecar `.errors.csv`; folders holding no image
    are named in a warning. Exit status: 0 all embedded, 3 some files skipped (0 with
    --allow-skips), 2 bad input (nothing changed), 130 interrupted.
    """
    from cellembed.embedder import spec_for_settings
    from cellembed.extraction import ExtractOptions, keep_out_precision, run_extraction
    from cellembed.store import errors_csv_path

    log = None if quiet else (lambda message: click.echo(message, err=True))
    with user_errors():
        options = ExtractOptions(
            batch_size=batch_size, engine=engine, overwrite=overwrite, checkpoint_every=checkpoint_every,
            distributed=distributed, distributor_options=chosen_distributor_options(distributed, distributor_values),
            progress=not quiet, max_pixels=max_pixels,
        )
        options.check()
        spec, resolved = spec_for_settings(
            backbone=backbone, layers=layers, weights=weights, input_size=input_size, engine=engine, preset=preset,
            views=None if views is None else int(views), crop=crop, stain=stain, pooling=pooling,
            precision=precision,
        )
        spec = keep_out_precision(spec, out, preset, precision, log)
        result = run_extraction(images, out, spec, resolved, options, log=log)
    if quiet:  # otherwise said through log as soon as found
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    click.echo(result.summary(), err=True)
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
