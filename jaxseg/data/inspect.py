"""A health check of a dataset folder (``jaxseg data inspect DIR``), for every data format.

Every image and segmentation is read in full, so corrupt or truncated files, NaN/Inf voxels,
volumes that are not co-registered and unexpected labels are all found before training. A problem
is recorded on its case (one line naming the file) and the scan goes on; only a missing folder or a
folder with no cases at all (image folders: a mask without its image) raises.

BraTS folders are reported per case (:func:`inspect_dataset`); the 2D formats (figshare ``.mat``
slices, image folders) per patient (:func:`inspect_slices`: slices, slices with tumor, the
figshare tumor classes, image sizes and channels), each slice read by its format's
(``formats.<name>.FORMAT.inspect_jobs``). The one entry is :func:`jaxseg.data.formats.inspect_folder`.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rich import box
from rich.markup import escape
from rich.table import Table

from jaxseg.data.brats import (MODALITIES, SUFFIXES, Case, find_cases, label_values, to_internal,
                               tumor_volumes_ml)
from jaxseg.data import checks, figshare, image_folder, records
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


UNREADABLE = "(unreadable)"  # the patient of a figshare file whose PID cannot be read


@dataclass
class SliceReport:
    """One slice: its patient, size ``(H, W)``, channels, tumor pixels, figshare class, problems."""

    case_id: str
    subject: str
    size: tuple[int, int] | None = None
    channels: int | None = None
    tumor_pixels: int | None = None  # None: no mask (or unreadable)
    label: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class SubjectReport:
    subject: str
    slices: list[SliceReport]

    @property
    def problems(self) -> list[str]:
        return [p for s in self.slices for p in s.problems]


def inspect_figshare_file(path: Path) -> SliceReport:
    """The report of one figshare ``.mat`` slice (an unreadable file: its problem, patient unknown)."""
    try:
        s = figshare.read_slice(path)
    except JaxsegError as err:
        return SliceReport(case_id=path.stem, subject=UNREADABLE, problems=[str(err)])
    return SliceReport(case_id=path.stem, subject=s.pid, size=s.image.shape, channels=1,
                       tumor_pixels=int(s.mask.sum()), label=s.label)


def inspect_image_pair(root: Path, image: Path, mask: Path | None, mask_suffix: str) -> SliceReport:
    """The report of one image-folder slice and its mask (a missing mask is a problem)."""
    record = records.folder_record(root, image, mask)
    report = SliceReport(case_id=record.case_id, subject=record.subject)
    try:
        pixels, labels = image_folder.read_pair(image, mask)
    except JaxsegError as err:
        report.problems.append(str(err))
        return report
    report.size, report.channels = pixels.shape[:2], pixels.shape[2]
    if labels is None:
        report.problems.append(f"{image}: has no mask {image.stem}{mask_suffix}{image.suffix}")
    else:
        report.tumor_pixels = int(labels.sum())
    return report


def inspect_slices(jobs: Sequence[Callable[[], SliceReport]], workers: int = 8) -> list[SubjectReport]:
    """Run the slice reports ``jobs`` (a format's ``inspect_jobs``) on ``workers`` threads; the
    reports per patient, sorted by patient."""
    workers = max(1, min(workers, len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        slices = list(pool.map(lambda job: job(), jobs))
    by_subject: dict[str, list[SliceReport]] = {}
    for s in slices:
        by_subject.setdefault(s.subject, []).append(s)
    return [SubjectReport(k, sorted(v, key=lambda s: s.case_id)) for k, v in sorted(by_subject.items())]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} x{n}" if n > 1 else str(k) for k, n in counter.most_common())


def render_slices_table(reports: list[SubjectReport], fmt: str) -> Table:
    """One row per patient; totals per tumor class and image size and every problem in the caption."""
    table = Table(title=f"{fmt} dataset", box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    for name in ("patient", "slices", "with tumor", "tumor classes", "sizes (HxW)", "channels", "problems"):
        table.add_column(name, no_wrap=name != "sizes (HxW)", overflow="fold")
    sizes, labels, channels = Counter(), Counter(), Counter()
    for r in reports:
        s_sizes = Counter("x".join(map(str, s.size)) for s in r.slices if s.size)
        s_labels = Counter(figshare.TUMOR_LABELS[s.label] for s in r.slices if s.label)
        s_channels = Counter(s.channels for s in r.slices if s.channels)
        sizes += s_sizes
        labels += s_labels
        channels += s_channels
        tumor = sum(1 for s in r.slices if s.tumor_pixels)
        table.add_row(escape(r.subject), str(len(r.slices)), str(tumor), _counts(s_labels) or "-",
                      _counts(s_sizes) or "-", _counts(s_channels) or "-",
                      f"[red]{len(r.problems)}[/red]" if r.problems else "[green]ok[/green]")
    n_slices = sum(len(r.slices) for r in reports)
    problems = [p for r in reports for p in r.problems]
    lines = [f"{n_slices} slices of {len(reports)} patient(s); image sizes: {_counts(sizes) or '-'}"]
    if labels:
        lines.append(f"tumor classes: {_counts(labels)}")
    lines.append(f"[red]{len(problems)} problem(s):[/red]" if problems else "[green]no problems[/green]")
    lines += [f"[red]- {escape(p)}[/red]" for p in problems]
    table.caption = "\n".join(lines)
    return table
