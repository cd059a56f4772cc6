"""cellreports: the HTML report of a cellclf RUN_DIR and of a predict evaluation.

One small real RUN_DIR is made once per module with ``cellclf.fitting.fit`` on a synthetic
embeddings file whose class names and file names are hostile HTML, with noise images on
disk so the gallery has thumbnails. The reports are given the records of
``cellclf.rundir`` (cellreports itself never imports cellclf).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellembed import EmbeddingSpec, InputError
from cellembed.store import make_table, write_table
from cellclf.rundir import NotARunError, read_run

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_NAME = "<b>&\"'"
CLASSES = ("alpha", EVIL_CLASS, "beta")
SECTION_IDS = ("data", "models", "per-class", "confusion", "roc", "calibration", "tuning", "shap", "gallery", "label-audit")


# ----------------------------------------------------------------------------- helpers


class PageParser(HTMLParser):
    """Collects the title, section ids, <img> sources and the cell texts of tables by id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._in_title = False
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "section":
            self.sections.append(attrs.get("id", ""))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)


def parse(document: str) -> PageParser:
    parser = PageParser()
    parser.feed(document)
    return parser


def decode_image(src: str) -> Image.Image:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
    assert match, src[:60]
    picture = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
    picture.load()
    assert picture.format.lower() == match.group(1).replace("jpeg", "jpeg")
    return picture


def write_embeddings(path: Path, images: Path, per_class: int = 20, seed: int = 0) -> Path:
    """Overlapping Gaussian clusters (so there are mistakes) plus a noise image per row."""
    spec = EmbeddingSpec.from_widths(
        [("add_2", 8), ("block14_sepconv2_act", 4)], backbone="xception", weights_sha256="ab" * 32, input_size=71
    )
    rng = np.random.default_rng(seed)
    paths, labels, shas, rows = [], [], [], []
    for c, name in enumerate(CLASSES):
        centre = rng.normal(0, 0.35, spec.dim)
        for i in range(per_class):
            relative = f"{name}/{EVIL_NAME}{i:02d}.png"
            pixels = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
            (images / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "RGB").save(images / relative)
            paths.append(relative)
            labels.append(name)
            shas.append(hashlib.sha256(pixels.tobytes()).hexdigest())
            rows.append(centre + rng.normal(0, 1, spec.dim))
    n = len(paths)
    table = make_table(spec, paths, labels, shas, [20] * n, [24] * n, np.asarray(rows, np.float32), images_root=images)
    write_table(table, path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from cellclf.fitting import FitConfig, fit

    root = tmp_path_factory.mktemp("report")
    embeddings = write_embeddings(root / "embeddings.parquet", root / "images")
    config = FitConfig.build(cv=2, lr_Cs=(0.01, 1.0), xgb_trials=2, xgb_max_trees=15, n_jobs=1, shap_max_rows=50)
    fit(embeddings, root / "run", config=config)
    return root / "run"


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> tuple[Path, str]:
    from cellreports import write_run_report

    out = write_run_report(read_run(run_dir), tmp_path_factory.mktemp("out") / "report.html")
    return out, out.read_text(encoding="utf-8")


def assert_self_contained(document: str) -> PageParser:
    lowered = document.lower()
    for forbidden in ("http://", "https://", 'src="/', "src='/", "<link", "<script", "url(", "@import"):
        assert forbidden not in lowered, forbidden
    page = parse(document)
    assert page.images, "no images"
    for src in page.images:
        decode_image(src)
    return page


# ----------------------------------------------------------------------------- run report


def test_run_report_is_self_contained_with_all_sections(run_dir, report):
    out, document = report
    page = assert_self_contained(document)
    assert page.title == f"cellclf report — {run_dir.name}"
    assert tuple(page.sections) == SECTION_IDS
    # Heatmaps (one per model), ROC, 2 tuning plots, 2 SHAP plots, and gallery thumbnails.
    assert len(page.images) > 7


def test_run_report_tables_match_the_run(run_dir, report):
    _, document = report
    page = parse(document)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models = page.tables["models-table"]
    header, rows = models[0], models[1:]
    assert len(rows) == len(metrics["models"]) == 2
    columns = {"accuracy": "accuracy", "balanced accuracy": "balanced_accuracy", "macro-F1": "macro_f1",
               "log loss": "log_loss"}
    for row, (key, doc) in zip(rows, metrics["models"].items()):
        assert row[0].startswith(doc["name"]) and f"({key})" in row[0]
        assert ("selected" in row[0]) == (key == metrics["best_model"])
        assert int(row[header.index("test images")]) == doc["test"]["n"]
        for label, name in columns.items():
            cell = row[header.index(label)]
            assert float(cell.split(" (")[0]) == pytest.approx(doc["test"][name], abs=5e-5)
            if f"{name}_ci" in doc["test"]:  # accuracy and macro-F1 carry their 95% interval
                low, high = doc["test"][f"{name}_ci"]
                assert cell.endswith(f"({low:.3f}–{high:.3f})"), cell
        assert float(row[header.index("validation macro-F1")]) == pytest.approx(doc["val_macro_f1"], abs=5e-5)
        assert float(row[header.index("fit time (s)")]) == pytest.approx(doc["fit_seconds"], abs=0.05)

    per_class = pd.read_csv(run_dir / "per_class.csv", keep_default_na=False, na_values=[""])
    for key in metrics["models"]:
        table = page.tables[f"per-class-{key}"]
        expected = per_class[per_class["model"] == key]
        assert [r[0] for r in table[1:]] == metrics["data"]["classes"] == sorted(CLASSES)  # text, unescaped by the parser
        for row, want in zip(table[1:], expected.to_dict("records")):
            assert float(row[3]) == pytest.approx(want["f1"], abs=5e-5)
            assert int(row[4]) == want["support"]
            assert row[5] == "n/a" if pd.isna(want["roc_auc"]) else float(row[5]) == pytest.approx(want["roc_auc"], abs=5e-5)

    counts = page.tables["counts-table"]
    assert counts[0] == ["class", "train", "validation", "test", "total"]
    assert [int(v) for v in counts[-1][1:]] == [
        *(metrics["data"]["total"][s] for s in ("train", "validation", "test")), 3 * 20
    ]
    tuning = pd.read_csv(run_dir / "tuning.csv")
    assert len(page.tables["tuning-table"]) == 1 + len(tuning)
    assert "shap-top-lr" in page.tables and "shap-top-xgb" in page.tables


def test_data_derived_text_is_escaped(report):
    _, document = report
    assert EVIL_CLASS not in document
    assert EVIL_NAME not in document
    assert "<b>&\"" not in document and "<script" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "&lt;b&gt;&amp;&quot;&#x27;" in document  # the file names in the gallery


def test_gallery_shows_the_most_confident_mistakes(run_dir, report):
    _, document = report
    gallery = document.split('<section id="gallery">', 1)[1].split("</section>", 1)[0]
    thumbnails = re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', gallery)
    predictions = pd.read_csv(run_dir / "predictions_test.csv", keep_default_na=False)
    best = json.loads((run_dir / "metrics.json").read_text())["best_model"]
    wrong = predictions[(predictions["model"] == best) & (predictions["label"] != predictions["predicted"])]
    assert len(wrong) > 0, "the synthetic data should give some mistakes"
    assert len(thumbnails) == min(len(wrong), 24)
    for src in thumbnails:
        assert max(decode_image(src).size) <= 128
    confidences = [float(v) for v in re.findall(r"confidence ([0-9.]+);", gallery)]
    assert confidences == sorted(confidences, reverse=True)


def test_gallery_note_when_images_are_not_reachable(run_dir, tmp_path):
    from cellreports import write_run_report

    run = read_run(run_dir)
    document = write_run_report(run, tmp_path / "r.html", images_root=tmp_path / "nowhere").read_text()
    gallery = document.split('<section id="gallery">', 1)[1]
    assert "Thumbnails are not available because the images folder" in gallery
    assert "data:image/jpeg" not in gallery

    # An existing folder without the images: every tile says so and a note explains it.
    (tmp_path / "empty").mkdir()
    document = write_run_report(run, tmp_path / "r2.html", images_root=tmp_path / "empty").read_text()
    assert "none of these" in document.split('<section id="gallery">', 1)[1]


def test_missing_shap_and_tuning_are_explained(run_dir, tmp_path):
    from cellreports import write_run_report

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "tuning.csv").unlink()
    (copy / "tuning_lr.png").write_bytes(b"GIF89a not a PNG")
    (copy / "shap" / "xgb_summary.png").unlink()
    (copy / "shap" / "xgb_top20.csv").unlink()
    document = write_run_report(read_run(copy), tmp_path / "r.html").read_text()
    assert "The table of all trials is not available because run/tuning.csv is missing." in document
    assert "The tuning plot is not available because tuning_lr.png is missing or not a PNG image." in document
    assert "Only 2 XGBoost setting(s) tried" in document  # the family's note, kept in metrics.json
    assert "The summary plot is not available because shap/xgb_summary.png is missing or not a PNG image." in document
    assert "The top dimensions are not available because shap/xgb_top20.csv is missing." in document

    (copy / "tuning_xgb.png").unlink()
    shutil.rmtree(copy / "shap")
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["config"]["shap"] = False
    for doc in metrics["models"].values():
        doc["shap"] = None
    (copy / "metrics.json").write_text(json.dumps(metrics))
    document = write_run_report(read_run(copy), tmp_path / "r.html").read_text()
    page = assert_self_contained(document)
    assert tuple(page.sections) == SECTION_IDS
    assert "Not available because run/tuning.csv is missing" in document
    assert document.count("Not available because the run was fitted without SHAP (--no-shap)") == 2


def test_a_run_of_an_earlier_version_says_its_tuning_plots_are_missing(run_dir, tmp_path):
    """Runs written before tuning plots were files have no "tuning_plot" in metrics.json."""
    from cellreports import write_run_report

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    for key, doc in metrics["models"].items():
        del doc["tuning_plot"]
        (copy / f"tuning_{key}.png").unlink()
    (copy / "metrics.json").write_text(json.dumps(metrics))
    document = write_run_report(read_run(copy), tmp_path / "r.html").read_text()
    for key in metrics["models"]:
        assert f"The tuning plot is not available because tuning_{key}.png is missing or not a PNG image." in document
    assert 'id="tuning-table"' in document  # the trials are still shown


def test_report_is_deterministic(run_dir, report, tmp_path):
    from cellreports.run_report import render_run_report

    _, document = report
    assert render_run_report(read_run(run_dir)) == document


def test_not_a_run_dir_is_a_one_line_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotARunError, match="not a complete cellclf run") as info:
        read_run(tmp_path / "empty")
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)
    with pytest.raises(NotARunError, match="is not a folder"):
        read_run(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- evaluation report


def test_evaluation_report(run_dir, tmp_path):
    from types import SimpleNamespace

    from cellclf.metrics import evaluate
    from cellclf.rundir import evaluation_record
    from cellreports import write_evaluation_report
    from cellreports.evaluation_report import render_evaluation_report

    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions_test.csv", keep_default_na=False, na_values=[""])
    scored = predictions[predictions["model"] == "lr"].drop(columns=["model", "sha256"]).reset_index(drop=True)
    spec = EmbeddingSpec.from_dict(metrics["data"]["spec"])
    images = run_dir.parent / "images"
    classes = metrics["data"]["classes"]
    overall, per_class, confusion = evaluate(scored["label"].tolist(), scored[[f"proba_{c}" for c in classes]].to_numpy(), classes)
    overall["macro_f1"], overall["macro_f1_ci"] = 0.1234, [0.1, 0.2]  # the report shows the record's numbers, it computes none
    model = evaluation_record(SimpleNamespace(overall=overall, per_class=per_class, confusion=confusion, scored=scored),
                              f"model {EVIL_NAME}.joblib")

    out = write_evaluation_report(model, classes, spec, tmp_path / "eval.html", images_root=images,
                                  not_scored={"folder is not a model class": 1, "no folder, or no prediction": 2})
    document = out.read_text()
    page = assert_self_contained(document)
    assert tuple(page.sections) == ("data", "models", "per-class", "confusion", "roc", "gallery")
    assert EVIL_CLASS not in document and EVIL_NAME not in document
    drift = {"n": 9, "flagged": 9, "alpha": 0.01, "expected": 0.09, "p_value": 1e-18, "level": 0.01, "fires": True,
             "message": "these images look unlike the model's training images: ...", "class_shift": 0.5}
    with_drift = assert_self_contained(render_evaluation_report(model, classes, spec, images_root=images, drift=drift))
    assert tuple(with_drift.sections)[:2] == ("drift", "data")
    header, row = page.tables["models-table"]
    assert row[header.index("macro-F1")] == "0.1234 (0.100–0.200)"
    assert float(row[header.index("accuracy")].split(" (")[0]) == pytest.approx(overall["accuracy"], abs=5e-5)
    assert int(row[header.index("test images")]) == len(scored)
    per_class_rows = page.tables["per-class-model"][1:]
    assert [float(r[3]) for r in per_class_rows] == pytest.approx(per_class["f1"].tolist(), abs=5e-5)
    facts = dict(tuple(r) for r in page.tables["facts-table"][1:])
    assert facts["not scored: folder is not a model class"] == "1"
    assert facts["images in the predictions table"] == str(len(scored) + 3)
    assert facts["scored (label is a model class)"] == str(len(scored))
    assert "data:image/jpeg" in document.split('<section id="gallery">', 1)[1]

    without = write_evaluation_report(model, classes, None, tmp_path / "e2.html").read_text()
    assert "Thumbnails are not available because no images folder was given" in without
    assert "Not available because the embedding spec was not recorded" in without


# ----------------------------------------------------------------------------- real browser


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a chromium binary on PATH")
@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, run_dir, tmp_path):
    out, document = report
    common = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000",
    ]
    url = out.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=True).stdout
    rendered = parse(dom)
    assert rendered.title == f"cellclf report — {run_dir.name}"
    assert len(rendered.images) == len(parse(document).images)
    assert tuple(rendered.sections) == SECTION_IDS

    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=90, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (4000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "the page looks blank"
    # Plots are colourful, text and tables are grey: many saturated pixels = images decoded.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert saturated.sum() > 6_000  # ~14,000 with the plots, ~1,900 with every image broken


def test_run_report_shows_the_label_audit_with_thumbnails(run_dir, report):
    _, document = report
    page = parse(document)
    issues = pd.read_csv(run_dir / "label_issues.csv", dtype=str)
    assert len(issues) > 0  # overlapping clusters: some labels are doubtful
    counts = page.tables["label-audit-counts"]
    assert sum(int(row[1]) for row in counts[1:]) == len(issues)
    section = document.split('id="label-audit"', 1)[1].split("</section>", 1)[0]
    assert section.count("<figure") == min(len(issues), 40) and "data:image/jpeg;base64," in section
    assert f"--labels {run_dir}/label_issues.csv" in section
