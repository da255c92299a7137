"""Small modules, short functions (STYLE.md 11; issue 14): no module under strata/ over 500 lines, no
function over 80. A function's length is `end_lineno - lineno + 1` of its `def` (decorators not counted,
docstring and comments counted); a nested function is measured on its own and also counts towards the
function that holds it. A failure lists every offender with its length.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "strata"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(PACKAGE_ROOT.parent))


def _qualified_functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with a dotted name (Class.method, outer.<locals>.inner)."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def long_modules() -> list[str]:
    out = []
    for path in _modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{_shown(path)}: {lines} lines")
    return out


def long_functions() -> list[str]:
    out = []
    for path in _modules():
        for name, node in _qualified_functions(ast.parse(path.read_text(), filename=str(path))):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{_shown(path)}:{node.lineno} {name}: {length} lines")
    return out


def test_no_module_over_500_lines() -> None:
    offenders = long_modules()
    for line in offenders:
        print(line)
    assert not offenders, f"{len(offenders)} module(s) over {MAX_MODULE_LINES} lines; split them by idea:\n" + "\n".join(offenders)


def test_no_function_over_80_lines() -> None:
    offenders = long_functions()
    for line in offenders:
        print(line)
    assert not offenders, (
        f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines; split them into named steps:\n" + "\n".join(offenders)
    )


def test_the_measure_counts_nested_functions_and_methods() -> None:
    source = "class A:\n    def m(self):\n        def inner():\n            pass\n        return inner\n\nasync def f():\n    pass\n"
    lengths = {name: node.end_lineno - node.lineno + 1 for name, node in _qualified_functions(ast.parse(source))}
    assert lengths == {"A.m": 4, "A.m.<locals>.inner": 2, "f": 2}
