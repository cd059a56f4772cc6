"""The seams hold: no import cycles, one-way package layering, every registry entry works."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "bench" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph():
    tool = _import_graph_tool()
    modules = tool.graph(ROOT)
    return tool, modules


def test_no_import_cycle_between_modules_or_packages(graph):
    tool, modules = graph
    assert len(modules) > 40  # the tool really read the packages
    assert tool.cycles(modules) == []
    assert tool.cycles(tool.package_graph(modules)) == []


def test_packages_are_layered_cellembed_then_cellclf_then_the_front_ends_with_cellreports(graph):
    _, modules = graph

    def importers(prefix: str) -> set[str]:
        return {name for name, targets in modules.items() if any(t.split(".")[0] == prefix for t in targets)}

    assert not {m for m in importers("cellclf") if not m.startswith("cellclf")}  # cellembed, cellreports: never
    # the two front ends (the command line and the HTTP server, with its review routes) show pages;
    # the library never does
    assert {m for m in importers("cellreports") if not m.startswith("cellreports")} == {
        "cellclf.cli", "cellclf.serve", "cellclf.review_routes"}
    for name, targets in modules.items():  # cellembed is the base: it imports only itself
        if name.startswith("cellembed"):
            assert all(t.startswith("cellembed") for t in targets), name


def test_the_tool_finds_a_cycle_when_there_is_one(tmp_path):
    tool = _import_graph_tool()
    for folder in tool.PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "embed" / "a.py").write_text("def f():\n    from cellembed import b\n")
    (tmp_path / "embed" / "b.py").write_text("from cellembed.a import f\n")
    (tmp_path / "embed" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cellembed import a\n")
    modules = tool.graph(tmp_path)
    assert modules["cellembed.a"] == {"cellembed.b"} and modules["cellembed.c"] == set()
    assert tool.cycles(modules) == [["cellembed.a", "cellembed.b"]]


def test_every_registered_backbone_engine_distributor_and_family_loads():
    from cellembed import backbones, distributors, engines
    from cellclf import families

    for name in backbones.backbone_names():
        backbone = backbones.get_backbone(name)
        assert backbone.name == name  # configured and run by tests/test_registry_conformance.py
        assert backbones.backbone_for_spec(type("S", (), {"backbone": backbone.spec_name})()) is backbone
    for name in engines.ENGINES:
        module = importlib.import_module(engines._MODULES[name][0])
        assert callable(module.build)
    for name in distributors.DISTRIBUTORS:
        module = importlib.import_module(distributors._MODULES[name])
        assert callable(module.make)
    keys = [family.key for family in families.families()]  # each runs tests/test_family_conformance.py
    assert keys and len(keys) == len(set(keys)) and all(isinstance(f, families.ModelFamily) for f in families.families())


def test_the_command_lines_help_imports_no_heavy_library():
    """`cellclf --help` builds its commands from plain data: no pandas, pyarrow,
    scikit-learn, XGBoost or TensorFlow (it took 1.3-1.5 s when the package imported its
    predictor and its run module eagerly); `cellembed --help` reads its choices from the
    spec modules (pyarrow) but starts no network library and no pandas."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom click.testing import CliRunner\n"
        "heavy = ('pandas', 'pyarrow', 'sklearn', 'xgboost', 'tensorflow', 'keras', 'scipy', 'onnxruntime')\n"
        "def helped(main):\n"
        "    for args in ([\"--help\"], *([name, \"--help\"] for name in main.commands)):\n"
        "        assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "    return sorted(name for name in heavy if name in sys.modules)\n"
        "from cellclf.cli import main\nprint(helped(main))\n"
        "from cellembed.cli import main\nprint(helped(main))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cellclf, cellembed = done.stdout.strip().splitlines()
    assert cellclf == "[]", cellclf
    assert cellembed == "['pyarrow']", cellembed
