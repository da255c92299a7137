"""The import layering of DESIGN.md (Layout), checked by walking the AST of every module under strata/.

    launch  ->  runtime  ->  partitioners  ->  storage, models  ->  graph  ->  _dgl

A component imports only from itself and from the components below it; storage and models sit side by
side and do not import each other; `strata.errors` (and the bare `strata` package, which holds only
`__version__`) may be imported by anyone. Inside runtime, the GNN and diffusion jobs never import each
other, and the shared runtime (loop, dist, pipeline, checkpointing, metrics, config) imports neither:
jobs plug into the loop, the loop never names a job. Besides the layers, the "must not" column of the
DESIGN table: only strata/_dgl.py imports dgl; storage does not touch torch.distributed; models know
nothing of processes or storage; graph knows nothing of files or ranks; nothing below launch parses
command lines. `strata.testing` (the emulated cluster) sits beside the package for tests and
benchmarks: it may import anything and nothing in strata imports it.

Every import counts: module level, inside functions (lazy imports), under `if TYPE_CHECKING:`,
relative imports, and `importlib.import_module("...")` / `__import__("...")` with a literal name.
A failure lists each offending module, line and the rule it breaks.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "strata"

# Top-level components from the top down, and which lower components each may import (besides itself
# and the modules in ALWAYS_ALLOWED). A component that is not listed here fails test_every_component_is_placed:
# place it in DESIGN.md's Layout first, then here.
LOWER: dict[str, set[str]] = {
    "launch": {"runtime", "partitioners", "storage", "models", "graph", "_dgl"},
    "runtime": {"partitioners", "storage", "models", "graph", "_dgl"},
    "partitioners": {"storage", "models", "graph", "_dgl"},
    "storage": {"graph", "_dgl"},  # not models
    "models": {"graph", "_dgl"},  # not storage
    "graph": {"_dgl"},
    "_dgl": set(),
    "errors": set(),
}
# The emulated cluster for tests and benchmarks: above everything, imported by nothing in strata.
OUTSIDE_LAYERS = {"testing"}
# Importable from anywhere: the error types, and the bare package (only `__version__`).
ALWAYS_ALLOWED = {"strata", "strata.errors"}

# Inside runtime: the two jobs, and the shared runtime below them.
RUNTIME_JOBS = ("strata.runtime.gnn", "strata.runtime.diffusion")

# Third-party modules a component must not import, with the DESIGN table's reason.
FORBIDDEN_EXTERNAL: dict[str, dict[str, str]] = {
    "storage": {"torch.distributed": "storage must not import torch.distributed or know about ranks"},
    "models": {
        "torch.distributed": "models know nothing of processes",
        "torch.multiprocessing": "models know nothing of processes",
        "multiprocessing": "models know nothing of processes",
        "subprocess": "models know nothing of processes",
        "fsspec": "models know nothing of storage",
        "zarr": "models know nothing of storage",
    },
    "graph": {
        "torch.distributed": "graph knows nothing of ranks",
        "fsspec": "graph knows nothing of files",
        "zarr": "graph knows nothing of files",
    },
}
# Command-line parsing belongs to launch (and to the emulated cluster's own `python -m` entry point).
ARGPARSE_ALLOWED = {"launch"} | OUTSIDE_LAYERS


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. strata.runtime.gnn.trainer
    path: str  # its file, relative to the repository
    line: int
    target: str  # what it imports, as a dotted module name (strata.storage.fs, torch.distributed)

    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.module})"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, list[str]]:
    """Dotted name of the module at ``path`` and the package its relative imports start from."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def _literal_import_call(node: ast.Call) -> str | None:
    """The module name of `importlib.import_module("x")` or `__import__("x")` with a literal name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: pathlib.Path, root: pathlib.Path, modules: set[str]) -> Iterator[Import]:
    """Every import in one file, at any depth. ``modules`` (all module names of the package) tells
    `from strata.runtime import gnn` (a submodule: strata.runtime.gnn) from `from strata.errors import
    ConfigError` (a name: strata.errors)."""
    module, package = _module_name(path, root)
    shown = str(path.relative_to(root.parent))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, shown, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if candidate in modules or not _within(source, "strata"):
                    # a submodule (`from strata.runtime import gnn`, `from torch import distributed`);
                    # for third-party names this may be an attribute, which no rule here mentions
                    yield Import(module, shown, node.lineno, candidate)
                else:
                    yield Import(module, shown, node.lineno, source)
        elif isinstance(node, ast.Call) and (target := _literal_import_call(node)):
            yield Import(module, shown, node.lineno, target)


def uses_of_torch_distributed(path: pathlib.Path, root: pathlib.Path) -> Iterator[Import]:
    """`torch.distributed.x` reached through a plain `import torch`, which no import statement shows."""
    module, _ = _module_name(path, root)
    shown = str(path.relative_to(root.parent))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "distributed":
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                yield Import(module, shown, node.lineno, "torch.distributed")


def scan(root: pathlib.Path) -> list[Import]:
    files = sorted(root.rglob("*.py"))
    modules = set()
    for path in files:
        parts = _module_name(path, root)[0].split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # with its packages
    found: list[Import] = []
    for path in files:
        found.extend(imports_of(path, root, modules))
        found.extend(uses_of_torch_distributed(path, root))
    return found


def _component(module: str) -> str:
    """strata.runtime.gnn.trainer -> runtime; strata.errors -> errors; strata -> '' (the bare package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# --- the rules: each returns one line per offending import ------------------------------------------


def layer_violations(found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        if not _within(imp.target, "strata") or imp.target in ALWAYS_ALLOWED:
            continue
        src, dst = _component(imp.module), _component(imp.target)
        if src == dst or src in OUTSIDE_LAYERS or src == "":
            continue
        if dst in OUTSIDE_LAYERS:
            out.append(f"{imp.where()} imports {imp.target}: nothing in strata imports strata.{dst} (it is for tests and benchmarks)")
        elif src in LOWER and dst not in LOWER[src]:
            allowed = ", ".join(sorted(LOWER[src]) + ["errors"]) if LOWER[src] else "nothing else of strata"
            out.append(f"{imp.where()} imports {imp.target}: {src} may import only {allowed} (DESIGN.md, Layout)")
    return out


def job_violations(found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        for job in RUNTIME_JOBS:
            if not _within(imp.target, job) or _within(imp.module, job):
                continue
            other = [j for j in RUNTIME_JOBS if j != job][0]
            if _within(imp.module, other):
                out.append(f"{imp.where()} imports {imp.target}: {other} and {job} never import each other")
            elif _within(imp.module, "strata.runtime"):
                out.append(f"{imp.where()} imports {imp.target}: the shared runtime never names a job ({job})")
    return out


def dgl_violations(found: list[Import]) -> list[str]:
    lines = {  # one line per import statement, however many names it takes from dgl
        imp.where(): f"{imp.where()} imports {imp.target}: only strata/_dgl.py imports dgl (use `from strata._dgl import dgl`)"
        for imp in found
        if _within(imp.target, "dgl") and imp.module != "strata._dgl"
    }
    return list(lines.values())


def external_violations(found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        for banned, why in FORBIDDEN_EXTERNAL.get(_component(imp.module), {}).items():
            if _within(imp.target, banned):
                out.append(f"{imp.where()} imports {imp.target}: {why}")
    return out


def argparse_violations(found: list[Import]) -> list[str]:
    return [
        f"{imp.where()} imports argparse: only launch parses command lines"
        for imp in found
        if _within(imp.target, "argparse") and _component(imp.module) not in ARGPARSE_ALLOWED
    ]


RULES = {
    "layers": layer_violations,
    "gnn_and_diffusion_apart": job_violations,
    "dgl_only_through__dgl": dgl_violations,
    "forbidden_third_party": external_violations,
    "argparse_only_in_launch": argparse_violations,
}


@pytest.fixture(scope="module")
def package_imports() -> list[Import]:
    return scan(PACKAGE_ROOT)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_strata_keeps_the_layering(rule: str, package_imports: list[Import]) -> None:
    broken = RULES[rule](package_imports)
    for line in broken:
        print(line)
    assert not broken, f"{len(broken)} import(s) break rule '{rule}':\n" + "\n".join(broken)


def test_every_component_is_placed() -> None:
    """A new top-level component must be placed in the layering (DESIGN.md and LOWER above) before use."""
    modules = {p.stem for p in PACKAGE_ROOT.glob("*.py") if p.stem != "__init__"}
    packages = {p.relative_to(PACKAGE_ROOT).parts[0] for p in PACKAGE_ROOT.glob("*/**/*.py")}  # __init__.py or not
    unplaced = sorted((modules | packages) - set(LOWER) - OUTSIDE_LAYERS)
    assert not unplaced, f"strata/{{{', '.join(unplaced)}}} not placed in the layering: add to DESIGN.md (Layout) and LOWER"


def test_the_walk_sees_the_package() -> None:
    """Guard against a walk that silently finds nothing: known imports of the package are seen."""
    targets = {(imp.module, imp.target) for imp in scan(PACKAGE_ROOT)}
    assert ("strata._dgl", "dgl") in targets
    assert any(module.startswith("strata.launch") and _within(t, "strata.runtime") for module, t in targets)


# --- the checker itself, on a small made-up package --------------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    pkg = root / "strata"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pkg


def test_the_checker_catches_lazy_relative_and_dynamic_imports(tmp_path: pathlib.Path) -> None:
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "storage/__init__.py": "",
        "storage/store.py": """
            import torch
            from strata.errors import StrataError

            def lazy():
                from ..runtime import loop  # relative, inside a function
                import dgl
                return torch.distributed.get_rank()
        """,
        "models/__init__.py": "",
        "models/gnn.py": "import importlib\nmod = importlib.import_module('strata.storage.store')\n",
        "graph/csc.py": "import fsspec\nfrom strata import models\n",  # a package without __init__.py
        "runtime/__init__.py": "",
        "runtime/loop.py": "from strata.runtime import gnn\n",
        "runtime/gnn/__init__.py": "",
        "runtime/gnn/trainer.py": "def f():\n    from strata.runtime.diffusion import engines\n",
        "runtime/diffusion/__init__.py": "",
        "runtime/diffusion/engines.py": "from strata.errors import StrataError\nimport argparse\n",
    })
    found = scan(pkg)
    layers = layer_violations(found)
    assert any("strata/storage/store.py:6" in line and "strata.runtime.loop" in line for line in layers), layers
    assert any("strata/models/gnn.py:2" in line and "strata.storage.store" in line for line in layers), layers
    assert any("strata/graph/csc.py:2" in line and "strata.models" in line for line in layers), layers
    assert not any("strata.errors" in line.split(": ")[0] for line in layers)
    jobs = job_violations(found)
    assert any("strata.runtime.gnn.trainer" in line and "never import each other" in line for line in jobs), jobs
    assert any("strata.runtime.loop" in line and "never names a job" in line for line in jobs), jobs
    assert [line for line in dgl_violations(found) if "strata/storage/store.py:7" in line]
    external = external_violations(found)
    assert any("strata/storage/store.py:8" in line and "torch.distributed" in line for line in external), external
    assert any("strata/graph/csc.py:1" in line and "fsspec" in line for line in external), external
    assert any("strata.runtime.diffusion.engines" in line for line in argparse_violations(found))
