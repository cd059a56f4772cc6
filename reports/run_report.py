"""The HTML report of a ``cellclf fit`` RUN_DIR (``cellclf report``)."""

from __future__ import annotations

import json
from pathlib import Path

from cellreports import sections
from cellreports.gallery import GALLERY_LIMIT
from cellreports.html import Section, page
from cellreports.run_dir import RunData, find_images_root, load_run
from cellreports.writing import write_html


def run_title(run_dir: str | Path) -> str:
    """``cellclf report — <run dir name>``."""
    return f"cellclf report — {Path(run_dir).resolve().name}"


def build_run_sections(run: RunData, images_root: str | Path | None = None) -> list[Section]:
    """All sections of the run report, in page order."""
    data = run.metrics.get("data", {})
    config = run.metrics.get("config", {})
    versions = run.metrics.get("versions") or {}
    facts = [
        ("embeddings file", data.get("input")),
        ("separate test file", data.get("test_input") or "none (test images held out from the input)"),
        ("split", data.get("split")),
        ("taps used", ", ".join(data.get("taps") or [])),
        ("dimensions", data.get("n_features")),
        ("unlabelled rows ignored", data.get("unlabelled_rows_ignored")),
        ("rows with duplicate images", data.get("rows_with_duplicate_images")),
        ("seed", config.get("seed")),
        ("cross-validation folds (lr)", config.get("cv")),
        ("XGBoost trials", config.get("xgb_trials")),
        ("created", run.metrics.get("created")),
        ("library versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
    ]
    facts = [(name, value) for name, value in facts if value is not None]
    counts = data.get("counts") or {}
    shap_records = _shap_records(run)
    best = run.best_model
    gallery = sections.gallery_section(
        best, run.classes, find_images_root(run, images_root), GALLERY_LIMIT,
        intro=f"Shown for the selected model, {best.title}, on the test set.",
    )
    return [
        sections.data_section(run.classes, counts, run.spec, facts, run.spec_missing),
        sections.models_section(
            run.models,
            f"Test-set scores of each model (the test images were not used for tuning or selection). "
            f"The selected model (★, saved as model.joblib) has the best {run.metrics.get('best_by', 'validation macro-F1')}.",
        ),
        sections.per_class_section(run.models),
        sections.confusion_section(run.models, run.classes),
        sections.roc_section(run.models, run.classes),
        sections.tuning_section(run.tuning, run.tuning_missing),
        sections.shap_section(run.run_dir / "shap", run.models, shap_records, _shap_missing(run)),
        gallery,
    ]


def _shap_records(run: RunData) -> dict:
    records = {m.key: (run.metrics["models"].get(m.key) or {}).get("shap") for m in run.models}
    summary = run.run_dir / "shap" / "summary.json"
    if summary.is_file() and not any(records.values()):
        try:
            records = json.loads(summary.read_text(encoding="utf-8"))
        except ValueError:
            pass
    return records


def _shap_missing(run: RunData) -> str:
    if not run.metrics.get("config", {}).get("shap", True):
        return "the run was fitted without SHAP (--no-shap)"
    return f"{run.run_dir.name}/shap has no results for this model"


def render_run_report(run_dir: str | Path, images_root: str | Path | None = None) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_run_report`)."""
    run = load_run(run_dir)
    best = run.best_model
    subtitle = (
        f"{len(run.classes)} classes, {best.overall.get('n', '?')} test images; "
        f"selected model: {best.title}, test macro-F1 {sections.number(best.overall.get('macro_f1'))}"
    )
    return page(run_title(run.run_dir), subtitle, build_run_sections(run, images_root))


def write_run_report(run_dir: str | Path, out_path: str | Path, images_root: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a ``cellclf fit`` RUN_DIR.

    Args:
        run_dir: the folder ``cellclf fit -o`` wrote.
        out_path: the HTML file to write (atomically; parent folders are created).
        images_root: folder the test images' ``path`` values are relative to; by default
            the one recorded in the run's embeddings file. The gallery of misclassified
            images is replaced by a note when the images are not reachable.

    Returns:
        ``out_path`` as a Path.

    Raises:
        NotARunError: ``run_dir`` is not a complete cellclf run (an ``InputError``).
    """
    return write_html(render_run_report(run_dir, images_root), out_path)
