"""The shape of the package, checked over its source: no import cycles, no oversized modules.

Every ``import`` and ``from ... import`` in ``jaxseg/`` counts, also those inside functions (a lazy
import hides a cycle from the interpreter, not from a reader); only imports under
``if TYPE_CHECKING:`` are left out (annotations, never executed). Two graphs are checked:

- modules: ``jaxseg.data.pipeline -> jaxseg.data.slices2d -> jaxseg.data.pipeline`` is a cycle;
- sub-packages (the first name under ``jaxseg``: ``data``, ``train``, ``report``, ... and top-level
  modules such as ``config``): ``report -> train -> report`` is a cycle even if no two modules
  import each other.

The allowed direction is documented in docs/architecture.md.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxseg"
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The jaxseg modules ``name`` imports (resolved to known module names)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            # `import jaxseg.data.brats` or `from jaxseg.data import brats`: the longest known name.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("jaxseg") and target != name and target != "jaxseg":
                found.add(target)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative enough here)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_resolved_to_modules_including_lazy_and_relative_ones(tmp_path):
    known = {"jaxseg.data", "jaxseg.data.brats", "jaxseg.report.figures", "jaxseg.errors", "jaxseg.train.loop"}
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom jaxseg.data import brats\nimport jaxseg.errors as e\n"
        "def f():\n    from ..report.figures import draw\n"
        "if TYPE_CHECKING:\n    from jaxseg.train import loop\n"
    )
    found = _imports("jaxseg.train.mod", source, known)
    assert found == {"jaxseg.data", "jaxseg.data.brats", "jaxseg.errors", "jaxseg.report.figures"}


def test_no_import_cycle_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_subpackages():
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        source = _subpackage(module)
        if source == "jaxseg":  # the package's own __init__ sits above everything
            continue
        packages.setdefault(source, set()).update(
            t for t in map(_subpackage, targets) if t not in (source, "jaxseg")
        )
    cycles = _cycles(packages)
    assert not cycles, "import cycles between sub-packages: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_over_the_line_limit():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
