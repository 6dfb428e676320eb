"""``jaxseg data inspect`` for the 2D formats (figshare ``.mat`` slices, image folders).

Every image and mask is read in full, as for BraTS cases (:mod:`jaxseg.data.inspect`), and the
report is per patient: slices, slices with tumor, the figshare tumor classes, image sizes and
channels, and every problem (one line naming the file). Unreadable files are reported, not raised;
only a missing folder, a folder without slices, or (image folders) a mask without its image raises.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from jaxseg.data import figshare, image_folder, records
from jaxseg.errors import JaxsegError

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


def _inspect_figshare(path: Path) -> SliceReport:
    try:
        s = figshare.read_slice(path)
    except JaxsegError as err:
        return SliceReport(case_id=path.stem, subject=UNREADABLE, problems=[str(err)])
    return SliceReport(case_id=path.stem, subject=s.pid, size=s.image.shape, channels=1,
                       tumor_pixels=int(s.mask.sum()), label=s.label)


def _inspect_pair(root: Path, image: Path, mask: Path | None, mask_suffix: str) -> SliceReport:
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


def inspect_records(root: str | Path, fmt: str, mask_suffix: str = "_mask", workers: int = 8
                    ) -> list[SubjectReport]:
    """Read every slice of a 2D dataset under ``root``; reports per patient, sorted by patient."""
    root = Path(root)
    if fmt == "figshare_mat":
        jobs = [lambda p=p: _inspect_figshare(p) for p in figshare.find_files(root)]
    elif fmt == "image_folder":
        pairs = image_folder.find_pairs(root, mask_suffix, require_masks=False)
        jobs = [lambda i=i, m=m: _inspect_pair(root, i, m, mask_suffix) for i, m in pairs]
    else:
        raise JaxsegError(f"{fmt!r} is not a 2D format ({', '.join(records.FORMATS_2D)})")
    workers = max(1, min(workers, len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        slices = list(pool.map(lambda job: job(), jobs))
    by_subject: dict[str, list[SliceReport]] = {}
    for s in slices:
        by_subject.setdefault(s.subject, []).append(s)
    return [SubjectReport(k, sorted(v, key=lambda s: s.case_id)) for k, v in sorted(by_subject.items())]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} x{n}" if n > 1 else str(k) for k, n in counter.most_common())


def render_table(reports: list[SubjectReport], fmt: str) -> Table:
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


def inspect_folder(root: str | Path, fmt: str = "auto", mask_suffix: str = "_mask") -> tuple[Table, bool]:
    """``(table, any problems)`` for a dataset folder of any format (``auto``: detected from the
    files, see :func:`jaxseg.data.records.detect_format`); BraTS folders use :mod:`jaxseg.data.inspect`."""
    fmt = records.detect_format(root) if fmt == "auto" else fmt
    if fmt == "brats":
        from jaxseg.data.inspect import inspect_dataset, render_table as render_brats
        reports = inspect_dataset(root)
        return render_brats(reports), any(r.problems for r in reports)
    reports = inspect_records(root, fmt, mask_suffix)
    return render_table(reports, fmt), any(r.problems for r in reports)
