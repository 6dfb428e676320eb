"""jaxseg as a package, not a checkout: what the wheel and the sdist hold, and that the installed
wheel finds its configs from any folder.

The wheel is built from a copy of the package's sources in a temporary folder (with a probe model
placed in ``jaxseg/bundled/``), so the checkout is left as it was.
"""
import email
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import jaxseg

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
PROBE_FILES = ("config.toml", "model.safetensors", "card.json", "README.md")


def test_pyproject_lists_every_package_folder():
    """Packages are listed by hand (configs/ is mapped to jaxseg.configs): a package folder added
    under jaxseg/ and missing from the list would silently be left out of the wheel."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxseg").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == found | {"jaxseg.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"jaxseg.configs": "configs"}


def test_dependencies_are_ranges_and_imports_are_declared():
    deps = PYPROJECT["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], "exact pins belong in constraints.txt"
    names = {d.split(">")[0].split("<")[0].split("[")[0].split("=")[0].strip().lower() for d in deps}
    for module, dist in (("imageio", "imageio"), ("absl", "absl-py"), ("grain", "grain"), ("h5py", "h5py"),
                         ("pydantic", "pydantic"), ("tomli_w", "tomli-w"), ("jinja2", "jinja2"),
                         ("safetensors", "safetensors")):
        used = any(f"import {module}" in p.read_text() or f"from {module}" in p.read_text()
                   for p in (ROOT / "jaxseg").rglob("*.py"))
        assert used and dist in names, (module, dist)
    chex_used = any("chex" in p.read_text() for p in (ROOT / "jaxseg").rglob("*.py"))
    assert ("chex" in names) == chex_used
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"gpu", "tpu", "torch", "test"} <= set(extras)
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    from importlib import metadata
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
        assert pins[dist] == metadata.version(dist), f"constraints.txt is not what is installed: {dist}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built from a copy of the sources with a probe model in jaxseg/bundled/."""
    pytest.importorskip("build", reason="the [test] extra installs build")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("jaxseg", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    probe = src / "jaxseg" / "bundled" / "probe_model"
    probe.mkdir(parents=True, exist_ok=True)
    for name in PROBE_FILES:
        (probe / name).write_text("probe\n")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_holds_the_package_its_configs_and_bundled_models(dists):
    wheel, _ = dists
    names = zipfile.ZipFile(wheel).namelist()
    info = f"jaxseg-{jaxseg.__version__}.dist-info"
    assert wheel.name == f"jaxseg-{jaxseg.__version__}-py3-none-any.whl"
    assert {n.split("/")[0] for n in names} == {"jaxseg", info}, "only jaxseg/ goes into site-packages"
    assert sorted(n[len("jaxseg/configs/"):-len(".toml")] for n in names
                  if n.startswith("jaxseg/configs/") and n.endswith(".toml")) == SHIPPED
    for name in PROBE_FILES:
        assert f"jaxseg/bundled/probe_model/{name}" in names
    for asset in ("jaxseg/report/viewer.js", "jaxseg/report/viewer.css", "jaxseg/serve/templates/index.html",
                  "jaxseg/serve/static/app.js", "jaxseg/serve/static/app.css"):
        assert asset in names
    templates = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxseg" / "report" / "templates").rglob("*.j2"))
    assert templates and set(templates) <= set(names), "the report's templates are package data"
    assert f"{info}/licenses/LICENSE" in names
    meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(f"{info}/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Version"] == jaxseg.__version__
    assert meta["Requires-Python"] == ">=3.11"
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("jax<0.11,>=0.10.2") or r.startswith("jax>=0.10.2,<0.11") for r in requires), requires
    assert not [r for r in requires if "==" in r.split(";")[0]]  # ranges, not pins
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "jaxseg = jaxseg.cli:main" in entry_points


def test_sdist_rebuilds_the_same_package(dists):
    _, sdist = dists
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"pyproject.toml", "LICENSE", "README.md", "jaxseg/cli.py", "configs/__init__.py"} <= names
    assert {f"configs/{c}.toml" for c in SHIPPED} <= names


def test_installed_wheel_finds_its_configs_from_any_folder(dists, tmp_path):
    """The wheel unpacked alone (its dependencies come from this environment), run from a folder
    with no configs/ in sight: configs are found by name inside the installed package."""
    wheel, _ = dists
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu", "JAXSEG_HOME": str(tmp_path / "home")}
    script = ("import jaxseg.config as c, jaxseg.cli as cli; print(c.__file__); print(cli.__file__); "
              "print(c.resolve_path('demo')); print(c.load('brats2021_3d').model.name)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config_module, cli_module, demo, model = proc.stdout.split()
    for path in (config_module, cli_module, demo):
        assert Path(path).is_relative_to(site), path
    assert Path(demo).read_text() == (ROOT / "configs" / "demo.toml").read_text()
    assert model == "unet3d"
    proc = subprocess.run([sys.executable, "-m", "jaxseg.cli", "train", "--config", "no_such_config"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no_such_config: ") and proc.stderr.count("\n") == 1
    assert all(name in proc.stderr for name in SHIPPED)


def test_documents_are_in_the_repository():
    """LICENSE matches pyproject; CITATION.cff is CFF 1.2; no document cites a file outside it."""
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    citation = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and f'version: "{jaxseg.__version__}"' in citation
    for doi in ("10.1109/TMI.2014.2377694", "10.1038/sdata.2017.117"):
        assert doi in citation
    assert "1811.02629" in citation
    retired = "STYLE" + ".md"  # the old out-of-repository style guide, written out in CONTRIBUTING.md now
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    offenders = [name for name in tracked if (ROOT / name).is_file() and name.endswith((".md", ".py", ".toml", ".cff", ".txt", "Makefile", "run"))
                 and retired in (ROOT / name).read_text(errors="replace")]
    assert offenders == []


def test_makefile_picks_a_supported_python_or_says_which_it_needs(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    dry = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0, dry.stderr
    (create,) = [line for line in dry.stdout.splitlines() if f"-m venv {venv}" in line]
    python = create.split()[0]
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=60).stdout.split()
    assert tuple(map(int, version)) >= (3, 11), (python, version)
    none = subprocess.run(["make", "install", "PYTHON=", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert none.returncode != 0 and "needs Python 3.11 or newer" in none.stdout + none.stderr
    assert not venv.exists()
