"""What the app offers: the checkpoints it knows and, with ``--data``, the cases of a dataset.

Both are found once at start-up and handed to the page under short ids (a list index, a case
id); a client names a checkpoint or a case by that id, never by a path. Without ``--checkpoint``
the models are the default ones: those `jaxseg.model_store.list_models()` knows (the models
bundled with the package and the demo model in the per-user folder, `jaxseg.home`); there may be
none yet, and the app still starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from jaxseg import config as config_lib
from jaxseg import home
from jaxseg.data import brats, formats
from jaxseg.errors import JaxsegError
from jaxseg.model_store import find_run
from jaxseg.target import target_kind


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    id: str
    run: Path
    label: str
    model: str
    target: str  # a data.target name (jaxseg.target.TARGET_KINDS)
    modalities: tuple[str, ...]  # canonical names, in the model's channel order
    dropout: float
    input: str = "volume"  # what it explains: "volume" (NIfTI cases) or "slice" (one 2D .mat/PNG/TIFF)
    mask_suffix: str = "_mask"  # a slice model's data.mask_suffix: the name its reference mask takes

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "model": self.model, "target": self.target,
                "modalities": list(self.modalities), "regions": list(target_kind(self.target).region_names),
                "dropout": self.dropout, "path": str(self.run), "input": self.input}


def _runs_below(folder: Path, depth: int = 2) -> list[Path]:
    """Run folders at ``folder`` or up to ``depth`` levels below it (a folder of runs)."""
    try:
        return [find_run(folder)]
    except JaxsegError:
        pass
    if depth == 0 or not folder.is_dir():
        return []
    return [run for child in sorted(folder.iterdir()) if child.is_dir() and not child.name.startswith(".")
            for run in _runs_below(child, depth - 1)]


NO_MODEL = ("no model yet: pass --checkpoint RUN_FOLDER (a run of `jaxseg train`, or a folder of runs), "
            "or run `jaxseg demo` to train the demo model")


def default_models() -> list[tuple[Path, str]]:
    """(run folder, name) of the models available without --checkpoint, bundled ones first."""
    from jaxseg import model_store
    found = [(Path(entry.path), entry.name) for entry in model_store.list_models()]
    demo = home.demo_model_dir()  # also as a run folder (what older `jaxseg demo`s left there)
    if (demo / "config.toml").is_file() and all(p.resolve() != demo.resolve() for p, _ in found):
        found.append((demo, "demo model"))
    usable = []
    for folder, name in found:
        try:
            usable.append((find_run(folder), name))
        except JaxsegError:  # a demo run still training has no checkpoint yet: not offered
            pass
    return usable


def find_checkpoints(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """Every run folder given (or found up to two levels below a given folder); without paths,
    the default models (:func:`default_models`, possibly none).

    Raises JaxsegError naming a path that holds no trained run.
    """
    runs: list[tuple[Path, str]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise JaxsegError(f"{path}: no such checkpoint folder")
        found = _runs_below(path)
        if not found:
            find_run(path)  # raises the precise reason (no config.toml, no checkpoint yet)
        runs += [(run, run.name) for run in found]
    if not paths:
        runs = default_models()
    checkpoints, seen = [], set()
    for run, name in runs:
        if run.resolve() in seen:
            continue
        seen.add(run.resolve())
        cfg = config_lib.load(run / "config.toml")
        modalities = config_lib.canonical_modalities(cfg)
        reads = "slice" if formats.of_config(cfg).output == "png" else "volume"
        label = f"{name}: {cfg.model.name}, {cfg.data.target}, {' + '.join(modalities)}" + (
            ", 2D slices" if reads == "slice" else "")
        checkpoints.append(Checkpoint(str(len(checkpoints)), run, label, cfg.model.name, cfg.data.target,
                                      modalities, float(cfg.model.dropout), reads, cfg.data.mask_suffix))
    return checkpoints


def find_dataset_cases(root: str | Path | None) -> dict[str, brats.Case]:
    """The cases under ``root`` (either BraTS naming, any folder depth) by case id; {} without root."""
    if root is None:
        return {}
    return {case.case_id: case for case in brats.find_cases(root)}


def describe_case(case: brats.Case) -> dict:
    return {"id": case.case_id, "modalities": list(case.images), "seg": case.seg is not None,
            "naming": case.naming}
