"""A health check of a BraTS dataset folder (``jaxseg data inspect DIR``).

Every image and segmentation is read in full, so corrupt or truncated files, NaN/Inf voxels,
volumes that are not co-registered and unexpected labels are all found before training. A problem
is recorded on its case (one line naming the file) and the scan goes on; only a missing folder or a
folder with no BraTS cases at all raises.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from jaxseg.data.brats import (MODALITIES, SUFFIXES, Case, find_cases, label_values, to_internal,
                               tumor_volumes_ml)
from jaxseg.data import checks
from jaxseg.data.nifti import VolumeProperties, geometry_mismatch, read_label_volume, read_volume
from jaxseg.errors import JaxsegError


@dataclass
class CaseReport:
    """What :func:`inspect_dataset` found for one case. Geometry is that of the first readable file."""

    case_id: str
    folder: str
    naming: str  # 'brats2021' or 'brats2023'
    modalities: tuple[str, ...]  # canonical names of the image files present
    has_seg: bool
    shape: tuple[int, int, int] | None = None  # canonical (RAS) shape
    spacing: tuple[float, float, float] | None = None  # mm, canonical order
    orientation: str | None = None  # axis codes as stored, e.g. 'LPS'
    labels: tuple[int, ...] | None = None  # seg values present, in the file's convention
    volumes_ml: dict[str, float] | None = None  # WT, TC, ET
    problems: list[str] = field(default_factory=list)  # one line each, naming the file


def _input_problems(volume, props: VolumeProperties, path: Path) -> list[str]:
    """What load_case refuses (a constant image, a label map) and predict and explain refuse
    (a spacing far from 1 mm), for one modality: one line, or none. (Their warning, not
    skull-stripped, is no problem of a dataset: training on such data is the user's choice.)"""
    try:
        checks.check_content(volume[..., None], [path])
        checks.check_geometry(props.spacing, path)
    except JaxsegError as exc:
        return [str(exc)]
    return []


def inspect_case(case: Case) -> CaseReport:
    """Read every file of one case and report its geometry, labels, tumor volumes and problems."""
    report = CaseReport(case_id=case.case_id, folder=str(case.folder), naming=case.naming,
                        modalities=tuple(case.images), has_seg=case.seg is not None)
    reference: VolumeProperties | None = None

    def compare(props: VolumeProperties) -> None:
        nonlocal reference
        if reference is None:
            reference = props
            report.shape = props.canonical_shape
            report.spacing = tuple(round(s, 4) for s in props.spacing)  # type: ignore[assignment]
            report.orientation = "".join(props.orientation)
        elif mismatch := geometry_mismatch(props, reference):
            report.problems.append(mismatch)

    for modality in MODALITIES:
        if modality not in case.images:
            report.problems.append(f"{case.expected_file(modality)}: missing ({modality} image)")
            continue
        try:
            volume, props = read_volume(case.images[modality])
        except JaxsegError as exc:
            report.problems.append(str(exc))
            continue
        compare(props)
        report.problems += _input_problems(volume, props, case.images[modality])
    if case.seg is not None:
        try:
            seg, seg_props = read_label_volume(case.seg)
        except JaxsegError as exc:
            report.problems.append(str(exc))
            return report
        compare(seg_props)
        report.labels = label_values(seg)
        try:
            classes = to_internal(seg, case.naming, case.seg)
        except JaxsegError as exc:
            report.problems.append(str(exc))
            return report
        report.volumes_ml = tumor_volumes_ml(classes, seg_props.spacing)
    return report


def inspect_dataset(root: str | Path, workers: int = 8) -> list[CaseReport]:
    """Inspect every BraTS case under ``root`` (recursive), in case-id order.

    Args:
      root: dataset folder.
      workers: threads reading cases in parallel (gzip inflation releases the GIL).
    Raises:
      JaxsegError only if ``root`` is missing or holds no BraTS case; per-file problems are in
      each report's ``problems``.
    """
    cases = find_cases(root)
    workers = max(1, min(workers, len(cases), os.cpu_count() or 1))
    if workers == 1:
        return [inspect_case(c) for c in cases]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(inspect_case, cases))


def render_table(reports: list[CaseReport]) -> Table:
    """A rich table with one row per case, and every problem listed under it (in the caption).

    Problems go in the caption rather than a column so that a narrow terminal can never squeeze them
    out of sight; the "problems" column only counts them. Case ids, geometry and volumes never wrap.
    """
    table = Table(title="BraTS dataset", box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    table.add_column("case", no_wrap=True)
    table.add_column("naming", no_wrap=True)
    table.add_column("files", overflow="fold")
    table.add_column("shape (RAS)", no_wrap=True)
    table.add_column("mm", no_wrap=True)
    table.add_column("stored", no_wrap=True)
    table.add_column("labels", no_wrap=True)
    table.add_column("WT / TC / ET mL", justify="right", no_wrap=True)
    table.add_column("problems", no_wrap=True)
    for r in reports:
        files = [SUFFIXES[r.naming][m] for m in r.modalities] + (["seg"] if r.has_seg else [])
        volumes = (" / ".join(f"{r.volumes_ml[k]:.1f}" for k in ("WT", "TC", "ET"))
                   if r.volumes_ml is not None else "-")
        table.add_row(
            escape(r.case_id), r.naming.removeprefix("brats"), " ".join(files),
            "x".join(map(str, r.shape)) if r.shape else "-",
            "x".join(f"{s:g}" for s in r.spacing) if r.spacing else "-",
            r.orientation or "-",
            ",".join(map(str, r.labels)) if r.labels is not None else "-",
            volumes, f"[red]{len(r.problems)}[/red]" if r.problems else "[green]ok[/green]",
        )
    bad = [r for r in reports if r.problems]
    labelled = sum(1 for r in reports if r.has_seg)
    summary = (f"{len(reports)} case{'s' if len(reports) != 1 else ''}, {labelled} with segmentation, "
               + (f"[red]{len(bad)} with problems:[/red]" if bad else "[green]no problems[/green]"))
    lines = [f"[red]- {escape(p)}[/red]" for r in bad for p in r.problems]
    table.caption = "\n".join([summary, *lines])
    return table
