"""The import graph of the three packages: one line per module, what it imports, and cycles.

Every ``import`` of a project module counts, at module level or inside a function (a lazy
import still couples two modules), except those under ``if TYPE_CHECKING:``. ``from pkg
import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.

Usage:  python bench/import_graph.py [ROOT]      (ROOT: a checkout; default this one)
Prints the module graph, the package graph and every cycle (strongly connected group of
modules or packages); exits 1 when there is a cycle. tests/test_architecture.py runs it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

#: Source folder -> import name (fixed by the design card).
PACKAGES = {"embed": "cellembed", "classify": "cellclf", "reports": "cellreports"}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the three packages."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    if hasattr(inner, "lineno"):
                        lines.add(inner.lineno)
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by one module (see the module docstring for the rules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    for name, targets in modules.items():
        top = name.split(".")[0]
        packages[top] |= {t.split(".")[0] for t in targets} - {top}
    return dict(packages)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    modules = graph(root)
    print(f"# modules ({len(modules)}): what each imports from the project")
    for name in sorted(modules):
        print(f"{name} -> {', '.join(sorted(modules[name])) or '(nothing)'}")
    packages = package_graph(modules)
    print("# packages")
    for name in sorted(packages):
        print(f"{name} -> {', '.join(sorted(packages[name])) or '(nothing)'}")
    found = cycles(modules) + cycles(packages)
    for group in found:
        print("CYCLE: " + " <-> ".join(group))
    if not found:
        print("no cycles between modules or packages")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
