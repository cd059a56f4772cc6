"""The HTML report of a ``cellclf fit`` run (``cellclf report``), from its RunRecord."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records' types, for type checkers only: cellreports does not import cellclf
    from cellclf.rundir.records import RunRecord
from typing import Any

from cellembed import InputError, read_images_root
from cellreports import sections
from cellreports.gallery import GALLERY_LIMIT, ImagesRoot, heatmap_gallery
from cellreports.html import Section, page
from cellreports.label_audit import label_audit_section
from cellreports.writing import write_html


def run_title(run_dir: str | Path) -> str:
    """``cellclf report — <run dir name>``."""
    return f"cellclf report — {Path(run_dir).resolve().name}"


def model_views(run: "RunRecord") -> list[sections.ModelView]:
    """Every model of the run as the report shows it: ``<title> (<key>)`` and its tuning facts."""
    return [
        sections.ModelView.of(
            record, run.classes, f"{record.title} ({record.key})",
            {
                "validation macro-F1": record.val_macro_f1,
                "selected by": record.selection,
                "fit time (s)": sections.number(record.fit_seconds, 1),
                "selected parameters": record.params,
            },
        )
        for record in run.models
    ]


def build_run_sections(run: "RunRecord", images_root: str | Path | None = None) -> list[Section]:
    """All sections of the run report, in page order."""
    data, config = run.data, run.config
    facts = [
        ("embeddings file", data.input),
        ("separate test file", data.test_input or "none (test images held out from the input)"),
        ("split", data.split),
        ("taps used", ", ".join(data.taps)),
        ("dimensions", data.n_features),
        ("unlabelled rows ignored", data.unlabelled_rows_ignored),
        ("rows with duplicate images", data.rows_with_duplicate_images),
        ("corrections (--labels)", _labels_text(data)),
        ("near-duplicate groups", data.grouping.get("description") if data.grouping else
         "not recorded (a run made before near-duplicate grouping: only identical files were kept together)"),
        ("seed", config.get("seed")),
        ("cross-validation folds", config.get("cv")),
        *((f"{record.title}: settings tried", record.trials) for record in run.models),
        ("created", run.created),
        ("library versions", ", ".join(f"{k} {v}" for k, v in sorted(run.versions.items()))),
    ]
    facts = [(name, value) for name, value in facts if value is not None]
    models = model_views(run)
    best = next((m for m in models if m.best), models[0])
    maps = getattr(run, "gallery", None) or {}
    if maps.get("items"):
        gallery = Section("gallery", "Heat maps: mistakes and typical images", heatmap_gallery(maps, best.title))
    else:
        why = f" Heat maps are not shown because {maps['unavailable']}." if maps.get("unavailable") else ""
        gallery = sections.gallery_section(
            best, run.classes, find_images_root(run, images_root), GALLERY_LIMIT,
            intro=f"Shown for the selected model, {best.title}, on the test set.{why}",
        )
    audit = label_audit_section(getattr(data, "label_audit", None), getattr(run, "label_issues", None),
                                find_images_root(run, images_root, test=False), str(run.run_dir), str(data.input))
    return [part for part in [
        sections.data_section(run.classes, data.counts, data.spec, facts, data.spec_missing,
                              (data.grouping or {}).get("warning")),
        sections.models_section(
            models,
            f"Test-set scores of each model (the test images were not used for tuning or selection). "
            f"The selected model (★, saved as model.skops and model.joblib) has the best {run.best_by}.",
        ),
        sections.per_class_section(models),
        sections.confusion_section(models, run.classes),
        sections.roc_section(models, run.classes),
        sections.calibration_section(models),
        sections.tuning_section(models, run.tuning, run.tuning_missing),
        sections.shap_section(models, run.shap_missing, _tap_roles(data.spec, data.taps)),
        gallery,
        audit,
    ] if part is not None]


def _labels_text(data: Any) -> str | None:
    labels = getattr(data, "labels", None)
    if not labels:
        return None
    return (f"{labels['file']}: {labels['relabelled']} relabelled, {labels['confirmed']} confirmed, "
            f"{labels['labelled']} unlabelled cells labelled, {labels['excluded']} left out, {labels['added']} added")


def _tap_roles(spec: Any, taps: Any) -> dict[str, str]:
    """What each tap sees (the backbone's words), or nothing when the backbone is unknown."""
    from cellembed.backbones import backbone_for_spec

    try:
        backbone = backbone_for_spec(spec)
    except (InputError, AttributeError, TypeError):
        return {}
    return {tap: backbone.tap_role(tap) for tap in (taps or [])}


def find_images_root(run: "RunRecord", images_root: str | Path | None = None, test: bool = True) -> ImagesRoot:
    """The folder the test images' paths are relative to, or why it is not reachable.

    ``images_root`` wins when given; otherwise the folder recorded in the embeddings file
    of the test rows (``data.test_input`` when the run had a separate test file, else
    ``data.input``) is used if it still exists; with ``test=False``, that of ``data.input``
    (the training images').
    """
    if images_root is not None:
        path = Path(images_root)
        if not path.is_dir():
            return ImagesRoot(None, f"the images folder {path} given for the report does not exist")
        return ImagesRoot(path, "given for the report")
    source = (run.data.test_input if test else None) or run.data.input
    if not source:
        return ImagesRoot(None, "the run does not record its embeddings file; pass the images folder (--images DIR)")
    candidates = [Path(source)]
    if not Path(source).is_absolute():
        candidates.append(Path(run.run_dir).parent / source)
    parquet = next((p for p in candidates if p.is_file()), None)
    if parquet is None:
        return ImagesRoot(None, f"the embeddings file {source} is not there any more; pass the images folder (--images DIR)")
    try:
        root = read_images_root(parquet)
    except InputError as exc:
        return ImagesRoot(None, f"{exc}; pass the images folder (--images DIR)")
    if root is None:
        return ImagesRoot(None, f"{source} does not record its images folder; pass it with --images DIR")
    if not root.is_dir():
        return ImagesRoot(None, f"the images folder {root} recorded in {source} does not exist here; pass it with --images DIR")
    return ImagesRoot(root, f"recorded in {source}")


def render_run_report(run: "RunRecord", images_root: str | Path | None = None) -> str:
    """The report of a run as an HTML string (see :func:`write_run_report`)."""
    best = run.best
    subtitle = (
        f"{len(run.classes)} classes, {best.overall.get('n', '?')} test images; "
        f"selected model: {best.title} ({best.key}), test macro-F1 {sections.number(best.overall.get('macro_f1'))}"
    )
    return page(run_title(run.run_dir), subtitle, build_run_sections(run, images_root))


def write_run_report(run: "RunRecord", out_path: str | Path, images_root: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a ``cellclf fit`` run.

    Parameters
    ----------
    run : RunRecord
        The run's record (``cellclf.rundir.read_run(RUN_DIR)``; the attributes read
        are listed in ``cellreports``).
    out_path : str or Path
        The HTML file to write (atomically; parent folders are created).
    images_root : str or Path, optional
        Folder the test images' ``path`` values are relative to; by default the one
        recorded in the run's embeddings file. The gallery of misclassified images is
        replaced by a note when the images are not reachable.

    Returns
    -------
    Path
        ``out_path`` as a Path.
    """
    return write_html(render_run_report(run, images_root), out_path)
