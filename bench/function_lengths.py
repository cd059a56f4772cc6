"""The longest functions of the three packages, and the length of each command-line command.

    python bench/function_lengths.py [--top 12]

Length: lines from ``def`` to the function's last line, decorators not counted; for the
commands also without their docstring (their help text).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"embed": "cellembed", "classify": "cellclf", "reports": "cellreports"}
CLI_MODULES = ("embed/cli.py", "classify/cli.py")


def functions(path: Path) -> list[tuple[int, str, bool, int]]:
    """(lines, qualified name, is a click command, lines without the docstring) of every
    function in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                command = any("command" in ast.unparse(d) for d in child.decorator_list)
                lines = child.end_lineno - child.lineno + 1
                first = child.body[0]
                docstring = (first.end_lineno - first.lineno + 1) if isinstance(first, ast.Expr) and isinstance(
                    getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str) else 0
                found.append((lines, f"{prefix}{child.name}", command, lines - docstring))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    everything = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = package + "." + ".".join(path.relative_to(ROOT / folder).with_suffix("").parts)
            everything += [(lines, f"{module.removesuffix('.__init__')}.{name}", command, code)
                           for lines, name, command, code in functions(path)]
    print(f"longest functions (of {len(everything)}):")
    for lines, name, _, _ in sorted(everything, reverse=True)[: args.top]:
        print(f"  {lines:4d}  {name}")
    print("command-line commands (lines, and without the docstring):")
    for lines, name, command, code in sorted(everything, reverse=True):
        if command:
            print(f"  {lines:4d} {code:4d}  {name}")


if __name__ == "__main__":
    main()
