"""The ``cellclf`` command: ``fit`` classifiers on cached embeddings, ``predict`` a folder, ``report``,
``track`` a run in MLflow, ``explain``, ``serve`` and ``adapt``."""

from __future__ import annotations

import contextlib
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import click

from cellembed.shared.cli_support import engine_option, max_pixels_option
from cellembed.shared.cli_support import BadInput, exit_if_skipped, user_errors
from cellclf.defaults import DEFAULT_SHAP_ROWS, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from cellclf.families import FamilyOption, families


def _name_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...] | None:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if param.name == "taps" and names in ((), ("all",)):
        return None
    return names


def _parsed_by(option: FamilyOption):
    def callback(ctx: click.Context, param: click.Parameter, value: str):
        try:
            return option.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def family_options(command):
    """Every registered model family's command-line options, as click options named
    ``<family key>_<option name>`` (the FitConfig.build keywords)."""
    declared = [(family, option) for family in families() for option in family.options if option.flag]
    for family, option in reversed(declared):
        command = click.option(
            option.flag, f"{family.key}_{option.name}", default=option.default_text, metavar=option.metavar,
            callback=_parsed_by(option), help=option.help,
        )(command)
    return command


weights_option = click.option(
    "--weights", default=None, metavar="PATH",
    help="The Xception weights file the model was trained with (for an onnx backbone: its JSON "
    "description). Default: $CELLEMBED_WEIGHTS ($CELLEMBED_ONNX_BACKBONE), else Keras' download. Other "
    "weights are refused (checked by SHA-256).",
)
trust_pickle_option = click.option(
    "--trust-pickle", is_flag=True,
    help="Allow MODEL to be a .joblib with no model.skops beside it. Loading a .joblib runs code "
    "from the file: only for files from a source you trust.",
)
allow_skips_option = click.option("--allow-skips", is_flag=True, help="Exit 0 even when some files could not be read.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cellembed")
def main() -> None:
    """Classify blood cells from cached Xception embeddings (made by `cellembed extract`).

    Typical use: `cellclf fit embeddings.parquet -o run/`, then open run/report.html,
    and classify new images with `cellclf predict run/ new_images/ -o predictions.csv`.
    """


@main.command()
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create for the results (models, metrics, SHAP explanations).",
)
@click.option(
    "--test", "test", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="Embeddings file of a separate test set. Without it, --test-fraction of the labelled images are "
    "held out as the test set.",
)
@click.option(
    "--models", default=",".join(family.key for family in families()), callback=_name_list,
    help="Model families, comma-separated: "
    + ", ".join(f"{family.key} ({family.title})" for family in families()) + ".",
)
@click.option(
    "--seed", default=0, type=int,
    help="Random seed of the split and the models (0 to 4294967295); same seed, same results.",
)
@click.option(
    "--val-fraction", default=DEFAULT_VAL_FRACTION, type=float,
    help="Share of the labelled images held out to check and choose the models (between 0 and 1).",
)
@click.option(
    "--test-fraction", default=DEFAULT_TEST_FRACTION, type=float,
    help="Share of the labelled images held out to test the models once (between 0 and 1; "
    "with --val-fraction, less than 1). Not with --test, which gives the test set.",
)
@click.option("--cv", default=5, type=click.IntRange(min=2), help="Cross-validation folds for tuning the logistic regression.")
@click.option(
    "--near-duplicates", default="embeddings", type=click.Choice(["embeddings", "images", "both", "off"]),
    help="How copies of one cell (rotated, flipped, shifted, re-encoded) are found, to keep them in one "
    "split and one CV fold: 'embeddings' clusters similar embeddings within a class (measured to give "
    "honest validation on an augmented folder), 'images' compares rotation-proof colour descriptors of "
    "the images (more precise, misses far-shifted copies), 'both' joins the groups of either (where the "
    "images folder is not here, the embeddings alone), 'off' keeps only identical files together.",
)
@click.option(
    "--alpha", default=0.05, type=click.FloatRange(0, 1, min_open=True, max_open=True), show_default=True,
    help="Prediction sets are made to hold the true class for a share 1 - ALPHA of cells like the validation "
    "images (split conformal on the calibrated validation probabilities; the report gives the coverage "
    "measured on the test images).",
)
@family_options
@click.option(
    "--taps", default="all", callback=_name_list,
    help="Embedding layers (taps) to train on, comma-separated (e.g. add_6,add_10), or 'all'.",
)
@click.option(
    "--labels", "labels", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="CSV",
    help="A corrections file (the review page's corrections.csv, or a run's label_issues.csv): its classes "
    "override or add to the folders' labels (by the images' SHA-256); '(excluded)' leaves a cell out.",
)
@click.option("--no-label-audit", is_flag=True,
              help="Do not look for likely label errors in the training images (label_issues.csv).")
@click.option("--no-shap", is_flag=True, help="Skip the SHAP explanations (faster).")
@click.option(
    "--shap-rows", default=DEFAULT_SHAP_ROWS, type=click.IntRange(min=1),
    help="Explain at most this many test images per model (a seeded random subset when there are more).",
)
@click.option(
    "--no-heatmaps", is_flag=True,
    help="Do not draw heat maps of the report's gallery images (they need the images folder and the weights).",
)
@click.option(
    "--weights", default=None, metavar="PATH",
    help="The Xception weights file of the embeddings (an onnx backbone: its JSON description), for "
    "the heat maps. Default: $CELLEMBED_WEIGHTS ($CELLEMBED_ONNX_BACKBONE).",
)
@click.option("--jobs", default=2, type=click.IntRange(min=1), help="CPU cores to use.")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html.")
@click.option(
    "--mlflow", "mlflow", is_flag=True,
    help="Also log the run to MLflow (parameters, metrics, the run's files and the model, servable with "
    "mlflow models serve), at $MLFLOW_TRACKING_URI in $MLFLOW_EXPERIMENT_NAME. Needs the mlflow extra.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines, only the final table.")
def fit(
    embeddings: Path, run_dir: Path, test: Path | None, models: tuple[str, ...], seed: int, val_fraction: float,
    test_fraction: float, cv: int, near_duplicates: str, alpha: float, taps: tuple[str, ...] | None,
    labels: Path | None, no_label_audit: bool, no_shap: bool, shap_rows: int,
    no_heatmaps: bool, weights: str | None, jobs: int, no_report: bool, mlflow: bool, overwrite: bool, quiet: bool,
    **family_settings: object,
) -> None:
    """Train and test classifiers on the labelled images of EMBEDDINGS.

    The labelled images are split into training (70%), validation (15%, --val-fraction) and
    test (15%, --test-fraction) sets, keeping the class proportions and keeping identical
    images and near-duplicates (the same cell rotated, flipped or shifted: --near-duplicates)
    together. Each model is tuned on the training set, checked on the validation set,
    refitted on both and scored once on the test set. The model with the best validation macro-F1 is saved as
    OUT/model.skops (the safe format: loading it cannot run code) and OUT/model.joblib (a
    pickle, which runs code when loaded; its model.joblib.sha256 detects damage, not a swap).
    Each model's probabilities are calibrated on the validation images (temperature scaling)
    and its prediction sets fitted there (--alpha); the report shows both, measured on the
    test images, and the scores' 95% intervals.
    """
    from cellclf.fitting import FitConfig, fit as run_fit  # noqa: I001 - keeps --help fast

    if test is not None and click.get_current_context().get_parameter_source("test_fraction").name != "DEFAULT":
        raise BadInput("--test-fraction does not apply with --test (the --test file is the test set); leave it out")

    with user_errors(on_interrupt=f"interrupted; nothing was written to {run_dir}"):
        if mlflow:  # before the fit: a missing extra costs no fitting time
            from cellclf.tracking import import_mlflow

            import_mlflow()
        config = FitConfig.build(
            models=models, seed=seed, cv=cv, taps=taps, shap=not no_shap, heatmaps=not no_heatmaps,
            shap_max_rows=shap_rows, n_jobs=jobs, alpha=alpha, near_duplicates=near_duplicates,
            val_fraction=val_fraction, test_fraction=test_fraction, label_audit=not no_label_audit, **family_settings,
        )
        result = run_fit(
            embeddings, run_dir, test=test, config=config, labels=labels, overwrite=overwrite, weights=weights,
            log=None if quiet else click.echo, on_complete=None if no_report else _report_writer(quiet),
        )
    if mlflow:
        _track(result.run_dir, weights, quiet)
    click.echo(result.table())


def _track(run_dir: Path, weights: str | None, quiet: bool) -> None:
    """Log a complete run to MLflow; a failure says the run is complete and how to log it later."""
    from cellclf.tracking import log_run

    complete = f"the run in {run_dir} is complete: log it with cellclf track {run_dir}"
    with user_errors(on_interrupt=f"interrupted while logging to MLflow; {complete}"), _mlflow_failures(complete):
        tracked = log_run(run_dir, weights=weights, log=None if quiet else click.echo)
    if quiet:
        click.echo(tracked.summary())


@contextlib.contextmanager
def _mlflow_failures(then: str):
    """MLflow's own failures (an unreachable server, a store it refuses...) as one line, exit 1,
    saying what the URI may be and ``then`` what to do."""
    from cellembed.errors import InputError

    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's failures (server, store, model) are of many kinds
        first = " ".join(str(exc).split())[:300]
        raise click.ClickException(
            f"MLflow logging failed ({type(exc).__name__}: {first}); MLFLOW_TRACKING_URI must name a database "
            f"(sqlite:///mlflow.db) or a tracking server (http://host:5000); {then}") from None


def _report_writer(quiet: bool):
    """fit's report step: RUN_DIR/report.html of the run's record in memory (not read back),
    written while the run still holds RUN_DIR's lock."""

    def write_report(result) -> None:
        from cellclf.rundir import REPORT
        from cellembed.errors import DiskFull
        from cellreports import write_run_report

        started = time.perf_counter()
        complete = f"the run in {result.run_dir} is complete: write the report with cellclf report {result.run_dir}"
        with user_errors(on_interrupt=f"interrupted while writing the report; {complete}"):
            try:
                path = write_run_report(result.record, result.run_dir / REPORT)
            except DiskFull as exc:
                raise click.ClickException(f"{exc.facts}; {complete} once space is freed") from None
        if not quiet:
            click.echo(f"{'report':<18} {time.perf_counter() - started:7.1f}s  {path}")

    return write_report


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Predictions file to write (CSV, or JSON with --format json); - writes them to standard output.",
)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", help="Output format.")
@click.option(
    "--min-confidence", type=click.FloatRange(0, 1), default=None,
    help="Also call a cell uncertain when its top probability is below this (e.g. 0.8); it is always "
    "uncertain when its prediction set holds more than one class or no class reaches the set's threshold.",
)
@click.option(
    "--review", "review_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Review page to write (HTML: the differential count and every cell). Default: <OUT name>.review.html "
    "next to OUT (none with -o - unless given).",
)
@click.option("--no-review", is_flag=True, help="Do not write the review page.")
@click.option(
    "--novelty-level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True,
    help="A cell whose novelty_p (how unlike the training images it is) is under this is unlike_training, "
    "and uncertain; the batch warning counts such cells against what chance gives.",
)
@click.option(
    "--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Embeddings cache of a folder of IMAGES. Default: <OUT name>.embeddings.parquet next to OUT "
    "(none with -o - or for image files).",
)
@weights_option
@click.option(
    "--batch-size", default=32, type=click.IntRange(min=1),
    help="Images per step (decoded together; one forward pass with --engine tensorflow).",
)
@engine_option
@max_pixels_option
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write an HTML report of the evaluation (needs class sub-folders).",
)
@click.option(
    "--heatmaps", "heatmaps_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also write a heat map of each prediction into this folder (see cellclf explain; about one "
    "network pass per view and image more); the review page shows them.",
)
@click.option(
    "--adapt", is_flag=True,
    help="Cells from another lab: move the images' embeddings onto the training images' statistics "
    "before classifying (each dimension re-centred and re-scaled by their own mean and spread). "
    "Needs at least 20 images with a mix of cell types; each prediction then depends on all of them.",
)
@click.option(
    "--samples", is_flag=True,
    help="The sub-folders of IMAGES are samples (one per patient or slide), not classes: the predictions get a "
    "sample column, and the console and the review page give one differential per sample.",
)
@trust_pickle_option
@allow_skips_option
@click.option(
    "--overwrite", is_flag=True,
    help="Replace -o (and its tables), --review, --report or files in --heatmaps even when predict did not write them.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress messages.")
def predict(
    model: Path, images: tuple[Path, ...], out: Path, fmt: str, min_confidence: float | None, review_path: Path | None,
    no_review: bool, cache: Path | None, weights: str | None, batch_size: int, engine: str, max_pixels: int,
    report_path: Path | None, heatmaps_dir: Path | None, adapt: bool, trust_pickle: bool, allow_skips: bool,
    overwrite: bool, quiet: bool, novelty_level: float, samples: bool,
) -> None:
    """Classify IMAGES (a folder, or one or more image files) with MODEL (a `cellclf fit` run
    folder, its model.skops or its model.joblib).

    Writes the predictions (-o: predicted class, calibrated probabilities, the prediction set
    made to hold the true class for a share 1 - alpha of cells (alpha: cellclf fit --alpha),
    and whether the cell is uncertain) and a review page to look at every cell (--review). The images are embedded
    exactly as the model's training images were; a folder's embeddings are cached, so running
    again on it is quick. If the folder has sub-folders named like the model's classes, the
    predictions are also scored against them (accuracy, macro-F1, per-class metrics next to OUT).

    Predict never writes inside IMAGES, and replaces an existing -o, --review or --report file
    only when it is one predict wrote (or with --overwrite). The cache only grows: images it
    lacks are added, its rows of other images are kept, so --cache may be the training
    embeddings file. A second run writing the same -o at the same time is refused.

    Exit status: 0 all classified, 3 some files could not be read (0 with --allow-skips),
    2 bad input, 130 interrupted (run again to resume).
    MODEL is read from the safe model.skops whenever there is one (loading it cannot run
    code). A .joblib with no model.skops beside it is a pickle, which runs code when loaded:
    it is refused unless --trust-pickle is given.
    """
    from cellclf.prediction import PredictRequest, predict_run

    request = PredictRequest(
        model, images, out, fmt, min_confidence, review_path, no_review, cache, weights, batch_size, engine,
        max_pixels, report_path, heatmaps_dir, adapt, trust_pickle, overwrite, progress=not quiet,
        novelty_level=novelty_level, samples=samples,
    )
    say = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    with ExitStack() as stack:  # user errors become one line
        stack.enter_context(user_errors())
        predictions_out = sys.stdout
        if request.to_stdout:  # standard output carries the predictions only: anything else printed goes to stderr
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        result = predict_run(request, _ReportPages(), log=say, tell=lambda line: click.echo(line, err=True),
                             stdout=predictions_out)
    exit_if_skipped(result.run.errors, "listed in the predictions with their reason", allow_skips)


class _ReportPages:
    """predict's pages, drawn by cellreports (pages are drawn by the front ends, this command
    line and the server, never by the cellclf library)."""

    def is_page(self, path: Path) -> bool:
        from cellreports import is_report

        return is_report(path)

    def write_report(self, result, path: Path) -> None:
        from cellclf.prediction import drift_of
        from cellclf.rundir import evaluation_record
        from cellreports import write_evaluation_report

        write_evaluation_report(
            evaluation_record(result.run.evaluation, result.request.model.name), result.run.classes,
            result.predictor.spec, path, images_root=result.folder, not_scored=result.not_scored,
            drift=drift_of(result), warning_text=result.seen_warning,
        )

    def write_review(self, result, path: Path) -> Path:
        from cellclf.heatmap_files import output_paths
        from cellclf.prediction import differential_of, drift_of, samples_of
        from cellclf.rundir import evaluation_record
        from cellreports.review import ReviewInput, write_review

        request, run, heatmaps_dir = result.request, result.run, result.request.heatmaps

        def heatmap(name: str) -> Path | None:
            png = output_paths(heatmaps_dir, name)[0] if heatmaps_dir is not None else None
            return png if png is not None and png.is_file() else None

        calibration = getattr(result.predictor, "calibration", None)
        images = request.images
        review = ReviewInput(
            table=run.table, classes=run.classes, image_file=run.files.get, model=request.model.name,
            source=str(images[0]) if len(images) == 1 else f"{len(images)} image files", heatmap_file=heatmap,
            alpha=None if calibration is None else calibration.alpha, min_confidence=request.min_confidence,
            evaluation=None if run.evaluation is None else evaluation_record(run.evaluation, request.model.name),
            spec=result.predictor.spec, not_scored=result.not_scored, drift=drift_of(result),
            differential=differential_of(result), samples=samples_of(result), warning_text=result.seen_warning,
            correct_with=f"cellclf serve {request.model} --review {result.folder}" if result.folder is not None else None,
        )
        return write_review(review, path)

@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the heat maps: <image>.heatmap.png and <image>.heatmap.json per image.",
)
@weights_option
@max_pixels_option
@trust_pickle_option
@allow_skips_option
@click.option("--overwrite", is_flag=True, help="Replace files in OUT even when explain did not write them.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress messages.")
def explain(
    model: Path, images: tuple[Path, ...], out: Path, weights: str | None, max_pixels: int, trust_pickle: bool,
    allow_skips: bool, overwrite: bool, quiet: bool,
) -> None:
    """Show where in each cell MODEL found its evidence: a heat map per image of IMAGES
    (image files and/or folders of images).

    Each <image>.heatmap.png shows the image as the network saw it (after the model's colour
    normalisation and crop), the map of the predicted class and of the runner-up (red: the
    location pushes towards the class, blue: away from it), the probabilities, and the
    predicted class's map per layer. <image>.heatmap.json holds each class's logit, baseline
    and per-layer sums. For a logistic regression the maps add up exactly to the logit; for
    XGBoost they spread its TreeSHAP values over the image, an approximation (said on the
    picture). About one network pass per view and image.

    Files in OUT are replaced only when explain wrote them; a rerun skips images already
    explained with the same model. Exit status: 0 all explained, 3 some files could not be
    read (0 with --allow-skips), 2 bad input, 130 interrupted (run again to resume).
    """
    from cellclf.heatmap_files import explain_images
    from cellclf.persistence import load_classifier

    say = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    with user_errors(on_interrupt=f"interrupted; the heat maps written to {out} are kept: run the same command to finish"):
        predictor = load_classifier(model, trust_pickle=trust_pickle)
        run = explain_images(predictor, images, out, weights=weights, overwrite=overwrite, max_pixels=max_pixels,
                             progress=not quiet, log=say)
    for error in run.errors:
        click.echo(f"skipped {error['path']}: {error['reason']}", err=True)
    click.echo(
        f"wrote {len(run.explained)} heat maps to {out}"
        + (f" ({run.reused} already there)" if run.reused else "")
        + (f" in {run.seconds:.1f} s, {run.seconds_per_image:.2f} s per image" if run.explained else ""),
        err=True,
    )
    exit_if_skipped(run.errors, "each named above", allow_skips)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep 127.0.0.1 unless a reverse proxy with authentication is in front "
              "(see the README).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Largest image file accepted (413 above).")
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images in one request (413 above).")
@click.option("--max-inflight-mb", default=100.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Most upload megabytes held by all requests being served at once: a request that does not fit "
              "beside the others gets 503 with Retry-After, one larger than this 413.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Also call a cell uncertain when its top probability is below this.")
@click.option("--novelty-level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="A cell whose novelty_p is under this is unlike_training (and uncertain).")
@click.option("--no-heatmaps", is_flag=True,
              help="Do not load the heat-map network (saves memory; the upload page then shows no maps).")
@click.option("--review", "review", default=None, type=click.Path(file_okay=False, path_type=Path), metavar="FOLDER",
              help="Also serve a review of the images in FOLDER at /review: confirm or change each cell's class "
              "from the keyboard, saved at once to --corrections (for cellclf fit --labels).")
@click.option("--corrections", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="CSV",
              help="The corrections file of --review, continued if it exists. Default: FOLDER.corrections.csv "
              "beside FOLDER.")
@weights_option
@engine_option
@max_pixels_option
@trust_pickle_option
def serve(model: Path, host: str, port: int, max_upload_mb: float, max_batch: int, max_inflight_mb: float,
          min_confidence: float | None, novelty_level: float, no_heatmaps: bool, review: Path | None,
          corrections: Path | None, weights: str | None, engine: str, max_pixels: int, trust_pickle: bool) -> None:
    """Serve MODEL over HTTP: POST /predict (images in, calibrated probabilities, prediction
    sets and an uncertain flag out, as JSON), an upload page at /, GET /health, GET /model
    and the OpenAPI docs at /docs.

    Needs the serve extra (pip install 'cellembed[serve]'). The model and its networks load
    once at start-up; bad uploads get a 4xx with a one-line reason. Stop with Ctrl-C.
    """
    from cellclf.persistence import load_classifier
    from cellclf.serve import ServeSettings, Service, check_port, create_app, import_server

    if corrections is not None and review is None:
        raise BadInput("--corrections goes with --review FOLDER (the folder whose cells are corrected); add --review")

    with user_errors(on_interrupt="interrupted while loading the model; nothing was served"):
        _, uvicorn = import_server()
        settings = ServeSettings(max_upload_mb=max_upload_mb, max_batch=max_batch, max_pixels=max_pixels,
                                 min_confidence=min_confidence, heatmaps=not no_heatmaps, max_inflight_mb=max_inflight_mb,
                                 novelty_level=novelty_level)
        check_port(host, port)  # before the model is loaded
        predictor = load_classifier(model, trust_pickle=trust_pickle)
        started = time.perf_counter()
        service = Service(predictor, weights, settings, engine, log=lambda message: click.echo(message, err=True))
        click.echo(f"loaded {predictor.source} ({predictor.family}, {len(predictor.classes)} classes) and its "
                   f"network{'s' if settings.heatmaps else ''} in {time.perf_counter() - started:.1f} s", err=True)
        session = None
        if review is not None:
            from cellclf.review_session import open_review

            session = open_review(service.classifier, review, corrections, min_confidence=min_confidence,
                                  novelty_level=novelty_level, log=lambda message: click.echo(message, err=True))
            click.echo(f"review of {len(session.cells)} cells of {review} at http://{host}:{port}/review; corrections "
                       f"saved to {session.path}", err=True)
        click.echo(f"serving on http://{host}:{port}/ (docs: /docs)", err=True)
    try:
        uvicorn.run(create_app(service, session), host=host, port=port, log_level="warning", workers=1)
    finally:
        service.close()


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="HTML file to write. Default: RUN_DIR/report.html.",
)
@click.option(
    "--images", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder the test images' paths are relative to, for the gallery of misclassified "
    "images. Default: the folder recorded in the embeddings file.",
)
def report(run_dir: Path, out: Path | None, images: Path | None) -> None:
    """Write a self-contained HTML report of a `cellclf fit` RUN_DIR.

    One file with the data summary, model comparison, per-class metrics, confusion
    matrices, ROC curves, tuning results, SHAP explanations and the most confident
    mistakes; every image is inline, so it opens from disk without a network and can be
    shared as a single file.
    """
    from cellclf.rundir import REPORT, read_run
    from cellreports import write_run_report

    with user_errors():
        path = write_run_report(read_run(run_dir), out or run_dir / REPORT, images_root=images)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-model", is_flag=True, help="Log the parameters, metrics and files, not the model.")
@click.option(
    "--weights", default=None, metavar="PATH",
    help="The network's weights file, for checking the logged model on an example image. "
    "Default: $CELLEMBED_WEIGHTS ($CELLEMBED_ONNX_BACKBONE).",
)
def track(run_dir: Path, no_model: bool, weights: str | None) -> None:
    """Log a `cellclf fit` RUN_DIR to MLflow, as `cellclf fit --mlflow` does.

    The tracking server and experiment are MLflow's own settings: $MLFLOW_TRACKING_URI
    (e.g. sqlite:///mlflow.db, or http://host:5000) and $MLFLOW_EXPERIMENT_NAME. Logged:
    the fit's settings and the embedding spec as parameters, each model's test scores with
    their intervals, per-class scores, calibration and coverage as metrics, the tuning
    table, every RUN_DIR file, and the model as an MLflow pyfunc model (image paths or
    bytes in, cellclf predict's columns out; it reads the network's weights from
    $CELLEMBED_WEIGHTS where it is served). A RUN_DIR logged before is not logged again
    (its run is found by the SHA-256 of its metrics.json). Needs the mlflow extra.
    """
    from cellclf.tracking import log_run

    with user_errors(on_interrupt="interrupted; log the run again with the same command"), \
            _mlflow_failures("then run this command again (a run logged in full is not logged twice)"):
        tracked = log_run(run_dir, model=not no_model, weights=weights)
    click.echo(tracked.summary())


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("new_lab", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the adapted run (must not exist or be empty unless --overwrite).")
@click.option("--target-weight", default=0.5, type=float,
              help="Share of the refit's total weight the new lab's labelled cells carry (above 0, at most 0.8).")
@click.option("--calibration-share", default=0.3, type=float,
              help="Share of each class's labelled cells (whole groups of copies, at most 0.5) held out to "
              "calibrate the probabilities and prediction sets on the new lab; 0: keep the run's calibration.")
@click.option("--seed", default=0, type=click.IntRange(0, 2**32 - 1), help="Seed of the held-out draw and the refit.")
@click.option(
    "--labels", "labels", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="CSV",
    help="A corrections file (the served review's corrections.csv): its classes label, relabel or leave out "
    "('(excluded)') the new lab's cells, by the images' SHA-256.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty output folder.")
@click.option("-q", "--quiet", is_flag=True, help="Only the final lines.")
def adapt(run_dir: Path, new_lab: Path, out: Path, target_weight: float, calibration_share: float, seed: int,
          labels: Path | None, overwrite: bool, quiet: bool) -> None:
    """Adapt the model of a `cellclf fit` RUN_DIR to another lab from a few labelled cells.

    NEW_LAB is the embeddings file (cellembed extract, with the run's settings) of the new
    lab's cells: a sub-folder per class for the labelled ones (a few per class are enough;
    unlabelled cells of that lab may be there too, they help measure its colours). The new
    run folder OUT holds the adapted model (cellclf predict OUT and cellclf serve OUT use
    it), adapt.json (what was done and measured) and adapt_cells.csv (each labelled cell's
    role: refit or calibration).
    """
    from cellclf.adaptation import adapt as run_adapt

    with user_errors(on_interrupt=f"interrupted; nothing was written to {out}"):
        result = run_adapt(run_dir, new_lab, out, seed=seed, target_weight=target_weight,
                           calibration_share=calibration_share, overwrite=overwrite, labels=labels,
                           log=None if quiet else click.echo)
    for line in result.lines:
        click.echo(line)
