"""report/ is a drawing library at the bottom of the tree: it imports nothing that trains,
evaluates, explains, predicts or serves (every import, also those inside functions), so the
training log and the evaluation can draw with it without a package cycle."""
import ast
from pathlib import Path

import jaxseg

PACKAGE = Path(jaxseg.__file__).parent
# What sits above report/: each of these draws with it, directly or through another.
ABOVE_REPORT = ("train", "eval", "explain", "infer", "serve", "models", "model_store", "model_export",
                "cli", "demo")


def imports_of(source: str, package: list[str]) -> set[str]:
    """Absolute names of every module that ``source`` (a module of ``package``) imports, anywhere
    in it, relative imports resolved; ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be
    a module)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def jaxseg_units(path: Path) -> set[str]:
    """The top-level parts of jaxseg (sub-package or module) that the file ``path`` imports."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # an __init__.py's is its own
    return {name.split(".")[1] for name in imports_of(path.read_text(), package) if name.startswith("jaxseg.")}


def files_of(unit: str) -> list[Path]:
    return sorted((PACKAGE / unit).rglob("*.py")) if (PACKAGE / unit).is_dir() else [PACKAGE / f"{unit}.py"]


def test_the_import_reader_resolves_every_kind_of_import():
    source = ("import numpy as np\nfrom . import slices\nfrom ..eval import run\nfrom jaxseg import demo\n"
              "def draw():\n    import jaxseg.serve.app\n    from .html import CLASSES\n")
    assert imports_of(source, ["jaxseg", "report"]) == {
        "numpy", "jaxseg.report", "jaxseg.report.slices", "jaxseg.eval", "jaxseg.eval.run", "jaxseg",
        "jaxseg.demo", "jaxseg.serve.app", "jaxseg.report.html", "jaxseg.report.html.CLASSES"}


def test_report_imports_nothing_above_it():
    offending = sorted(f"{path.relative_to(PACKAGE.parent)} imports jaxseg.{unit}"
                       for path in files_of("report") for unit in jaxseg_units(path) if unit in ABOVE_REPORT)
    assert not offending, offending


def test_no_part_of_jaxseg_that_report_imports_imports_report():
    """No cycle through report/, whatever report/ comes to import later (a target module, say)."""
    used = {unit for path in files_of("report") for unit in jaxseg_units(path)} - {"report"}
    for unit in used:
        back = [str(f.relative_to(PACKAGE.parent)) for f in files_of(unit) if "report" in jaxseg_units(f)]
        assert not back, f"report/ imports jaxseg.{unit}, which imports report/: {back}"


def test_evaluation_and_training_do_not_import_each_other():
    """eval/ and train/ both score with jaxseg.overlap; neither reaches into the other."""
    for unit, other in (("train", "eval"), ("eval", "train")):
        back = [str(f.relative_to(PACKAGE.parent)) for f in files_of(unit) if other in jaxseg_units(f)]
        assert not back, f"{unit}/ imports {other}/: {back}"
