"""The documentation: the site builds with warnings as errors, every object of its API
reference has a numpydoc docstring that matches its signature, and the example notebook runs
from top to bottom on the sample images."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: numpydoc's checks the public API must pass: a docstring (GL08) with a summary (SS01),
#: every parameter documented (PR01) and none that is not one (PR02), each with a type and a
#: description (PR07, PR09: ending with a period is not asked), a Returns section for what
#: returns a value (RT01) with a description (RT03).
CHECKS = {"GL08", "SS01", "PR01", "PR02", "PR07", "RT01", "RT03"}


def api_objects() -> list[str]:
    """The objects the API reference pages document (their ``::: name`` lines) and, for a
    class, the methods and properties it declares (which the pages show with it)."""
    import importlib
    import inspect

    names = []
    for page in sorted((DOCS / "api").glob("*.md")):
        for name in re.findall(r"^::: ([\w.]+)$", page.read_text(encoding="utf-8"), flags=re.M):
            names.append(name)
            module, attribute = name.rsplit(".", 1)
            documented = getattr(importlib.import_module(module), attribute)
            if inspect.isclass(documented):
                names += [f"{name}.{member}" for member, value in vars(documented).items()
                          if not member.startswith("_") and (inspect.isfunction(value) or isinstance(
                              value, (property, classmethod, staticmethod)))]
    return names


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "api" / "cellclf" / "index.html").read_text(encoding="utf-8")
    assert "shap_explanation" in reference and "log_run" in reference  # generated from the docstrings
    tracking = (tmp_path / "site" / "how-to" / "tracking" / "index.html").read_text(encoding="utf-8")
    assert "What is logged, one MLflow run per RUN_DIR" in tracking  # the README's section, included
    assert (tmp_path / "site" / "notebooks" / "tour.ipynb").is_file()
    for page in (tmp_path / "site" / "api").glob("*/index.html"):  # Sphinx roles are not rendered here
        roles = re.findall(r":(?:func|meth|class|mod|attr|data|exc):<code>[^<]*</code>", page.read_text(encoding="utf-8"))
        assert not roles, f"{page.parent.name}: {roles[:5]}"


def test_a_broken_reference_fails_the_build(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    import shutil

    copy = tmp_path / "project"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copy(ROOT / "README.md", copy)
    (copy / "docs" / "getting-started.md").write_text("# x\n\nSee [the missing page](nowhere.md).\n")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=copy, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode != 0 and "nowhere.md" in done.stderr


@pytest.mark.parametrize("name", api_objects())
def test_the_public_api_has_numpydoc_docstrings(name):
    validate = pytest.importorskip("numpydoc.validate", reason="the docs extra is not installed").validate
    errors = [f"{code}: {message}" for code, message in validate(name)["errors"] if code in CHECKS]
    assert not errors, f"{name}: " + "; ".join(errors)


def test_the_api_reference_covers_the_packages_public_names():
    import cellclf
    import cellembed
    import cellreports

    documented = {name.rsplit(".", 1)[-1] for name in api_objects()}  # (members add nothing wrong here)
    for package in (cellembed, cellclf, cellreports):
        public = {name for name in package.__all__ if not name.startswith("_")}
        assert public <= documented, f"{package.__name__}: {sorted(public - documented)} not in docs/api"


def test_the_example_notebook_runs(real_weights, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="the docs extra is not installed")
    import nbformat

    monkeypatch.setenv("CELLEMBED_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("CELLEMBED_WEIGHTS", str(real_weights))
    notebook = nbformat.read(DOCS / "notebooks" / "tour.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(DOCS / "notebooks")}}).execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    assert "64 images, 6416 dimensions" in text
    assert re.search(r"test accuracy \d\.\d\d \(95% interval", text)
    assert "of the evidence lies on the cell" in text
    assert "(4, 4, 8) ['basophil'" in text  # the SHAP Explanation: 4 cells, 4 taps, 8 classes
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the heat map and shap's beeswarm
    assert (tmp_path / "run" / "metrics.json").is_file()
