"""Per-browser sessions and their uploads, under the app's own working folder.

A session is keyed by a random token kept in a cookie; its files live in a folder with a second,
unrelated random name, so nothing a client sends (token, file name, slot) is ever joined to a
path. Uploads are streamed to a temporary file, checked with the data layer's NIfTI readers and
only then renamed to ``<slot>.nii`` or ``<slot>.nii.gz`` (by the gzip magic, which nibabel needs
in the name); the 2D slots (a ``.mat``, PNG or TIFF slice and its mask, :mod:`jaxseg.serve.slices`)
the same way, by their own magic numbers. The client's file name is kept for display only. The
route streams the body into :func:`part_file` under the size cap; :func:`accept_upload` checks it and puts it in place.
Sessions are capped and expire (:class:`SessionStore`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxseg.data import brats, nifti
from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.serve import slices

IMAGE_SLOTS = brats.MODALITIES  # flair, t1, t1ce, t2
SLOTS = (*IMAGE_SLOTS, "seg", *slices.SLICE_SLOTS)  # a volume model's case, or a 2D model's slice
# A BraTS volume is 240 x 240 x 155 = 8.9 M voxels; this leaves room for 1 mm brains of any
# usual size and stops a small gzip that unpacks to gigabytes before its voxels are read.
MAX_VOXELS = 64_000_000
CHUNK = 1 << 20
NIFTI_HEADER = 352  # bytes before the voxels of a NIfTI-1 file; the magic sits at 344 (NIfTI-2: at 4)
SESSION_FILE = "session.json"


@dataclasses.dataclass
class Upload:
    """One checked upload. ``name`` is the client's file name, for display only. A 2D slice
    (slots ``slice``, ``slice_mask``) has a ``(rows, columns)`` shape and no spacing or geometry."""

    slot: str
    name: str
    path: Path
    size: int
    shape: tuple[int, ...]
    spacing: tuple[float, float, float] | None
    props: nifti.VolumeProperties | None
    naming: str | None = None  # a seg's label convention: brats2021 (0,1,2,4) or brats2023 (0,1,2,3)
    channels: int | None = None  # a slice image's channels (1 grayscale, 3 RGB)
    has_mask: bool = False  # a slice that carries its own mask (a figshare .mat)

    def describe(self) -> dict:
        described = {"slot": self.slot, "name": self.name, "bytes": self.size, "shape": list(self.shape),
                     "spacing": None if self.spacing is None else [round(s, 3) for s in self.spacing],
                     "labels": self.naming}
        if self.slot in slices.SLICE_SLOTS:
            described.update(kind=self.path.suffix.lstrip("."), channels=self.channels, has_mask=self.has_mask)
        return described


@dataclasses.dataclass
class Session:
    token_hash: str  # sha256 of the cookie's token: the token itself is never stored
    folder: Path
    uploads: dict[str, Upload] = dataclasses.field(default_factory=dict)
    jobs: dict = dataclasses.field(default_factory=dict)  # job id -> jobs.Job
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)  # uploads and job starts
    created: float = dataclasses.field(default_factory=time.time)
    last_used: float = dataclasses.field(default_factory=time.time)

    @property
    def busy(self) -> bool:
        """A job of the session is queued or running (such a session never expires)."""
        return any(job.active for job in list(self.jobs.values()))

    def save(self) -> None:
        write_text(self.folder / SESSION_FILE, json.dumps(
            {"token_sha256": self.token_hash, "created": self.created, "last_used": self.last_used}))


class SessionsFull(Exception):
    """``max_sessions`` live sessions exist already."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Sessions by cookie token, each owning ``root/<random>/``; at most ``max_sessions`` of them,
    each removed (with its folder) after ``ttl`` seconds without a request, unless a job of it is
    queued or running.

    A session exists only once a client uploads a file or starts a job (:meth:`create`); reading
    the page or ``/api/info`` creates nothing. Sessions are written to ``session.json`` in their
    folder, so a server restarted on the same folder knows them again (:meth:`load`).
    """

    def __init__(self, root: Path, max_sessions: int = 100, ttl: float = 4 * 3600.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_sessions, self.ttl = max_sessions, ttl
        self._sessions: dict[str, Session] = {}  # by token hash
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie token (and it counts as used now), or None."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token_hash(token))
            if session is not None and self._expired(session, time.time()):
                return None  # its files go with the next sweep (not on the event loop, under this lock)
            if session is not None:
                session.last_used = time.time()
            return session

    def create(self) -> tuple[Session, str]:
        """A new session and its cookie token; SessionsFull when the store is at its cap."""
        self.sweep()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionsFull
            token = secrets.token_urlsafe(24)
            folder = self.root / secrets.token_hex(8)
            folder.mkdir(parents=True)
            session = Session(token_hash(token), folder)
            session.save()
            self._sessions[session.token_hash] = session
            return session, token

    def sweep(self, now: float | None = None) -> int:
        """Remove every expired session and its files; returns how many were removed."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [s for s in self._sessions.values() if self._expired(s, now)]
            for session in expired:
                self._remove(session)
        return len(expired)

    def load(self, load_job: Callable[[Path], Any]) -> int:
        """Take back the sessions a previous server left under ``root`` (their finished and
        interrupted jobs; uploads not yet used by a job are dropped); remove expired ones and
        folders without a readable record. Returns the number of sessions taken back."""
        now = time.time()
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                record = json.loads((folder / SESSION_FILE).read_text())
                session = Session(str(record["token_sha256"]), folder, created=float(record["created"]),
                                  last_used=float(record["last_used"]))
            except (OSError, ValueError, KeyError, TypeError):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            shutil.rmtree(folder / "uploads", ignore_errors=True)
            for job_folder in sorted((folder / "jobs").glob("*")):
                job = load_job(job_folder)
                if job is None:
                    shutil.rmtree(job_folder, ignore_errors=True)
                else:
                    session.jobs[job.id] = job
            if self._expired(session, now) or len(self._sessions) >= self.max_sessions:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self._sessions[session.token_hash] = session
        return len(self._sessions)

    def close(self) -> None:
        """At exit: remove expired sessions, record when the others were last used."""
        self.sweep()
        with self._lock:
            for session in self._sessions.values():
                session.save()

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used > self.ttl and not session.busy

    def discard(self, session: Session) -> None:
        """Remove ``session`` and its files now: a new session whose first request failed, so its
        client never received the cookie (it would otherwise hold a place until it expired)."""
        with self._lock:
            self._remove(session)

    def _remove(self, session: Session) -> None:
        self._sessions.pop(session.token_hash, None)
        shutil.rmtree(session.folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)


def display_name(raw: str | None) -> str:
    """The last component of a client's file name, printable and short; never used as a path."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:120].strip()
    return name or "unnamed file"


def part_file(session: Session) -> Path:
    """A fresh temporary name in the session's uploads folder for a body being received."""
    uploads = session.folder / "uploads"
    uploads.mkdir(exist_ok=True)
    return uploads / f".part-{secrets.token_hex(8)}"


def accept_upload(session: Session, slot: str, part: Path, name: str) -> Upload:
    """Check the received file ``part`` and keep it as the session's ``slot`` (removing ``part``).

    Raises JaxsegError with one line naming the client's file (never the server's path) if the
    file is not a readable 3D NIfTI volume, is too large once unpacked, has NaN voxels, is a seg
    with labels of neither BraTS convention, or is not on the grid of the case's other uploads;
    for the slice slots, if it is not a readable ``.mat``/PNG/TIFF slice (a PNG/TIFF mask), is too
    large, or a mask whose size is not its slice's.
    The previous upload of the slot is kept until the new one has passed every check.
    """
    if slot not in SLOTS:
        raise JaxsegError(f"unknown upload slot {slot!r} (known: {', '.join(SLOTS)})")
    try:
        size = part.stat().st_size
        with part.open("rb") as f:
            head = f.read(NIFTI_HEADER)
        if slot in slices.SLICE_SLOTS:
            suffix = slices.suffix_of(head, slot, name)
        else:
            suffix = ".nii.gz" if head[:2] == b"\x1f\x8b" else ".nii"
            if suffix == ".nii" and not _nifti_magic(head):
                raise JaxsegError(f"{name}: not a NIfTI file (neither a .nii volume nor a gzip-compressed .nii.gz)")
        checked = part.with_name(part.name + suffix)
        part.rename(checked)
        part = checked
        upload = (_check_slice if slot in slices.SLICE_SLOTS else _check)(session, slot, part, name, size)
        final = part.parent / f"{slot}{suffix}"
        with session.lock:
            for old in part.parent.glob(f"{slot}.*"):
                old.unlink()
            part.rename(final)
            upload.path = final
            if upload.props is not None:
                upload.props = dataclasses.replace(upload.props, path=str(final))
            session.uploads[slot] = upload
        return upload
    finally:
        if part.exists():
            part.unlink()


def _nifti_magic(head: bytes) -> bool:
    return head[344:348] == b"n+1\0" or head[4:8] == b"n+2\0"  # single-file NIfTI-1 / NIfTI-2


def remove_upload(session: Session, slot: str) -> None:
    with session.lock:
        upload = session.uploads.pop(slot, None)
        if upload is not None and upload.path.exists():
            upload.path.unlink()


def _check_slice(session: Session, slot: str, path: Path, name: str, size: int) -> Upload:
    # A mask must match its slice, unless the slice (this one or the other) is a .mat with its own.
    other = uploads_of(session).get("slice_mask" if slot == "slice" else "slice")
    compare = other is not None and ".mat" not in (path.suffix, other.path.suffix)
    shape, channels, has_mask = slices.check(slot, path, name, other.shape if compare else None)
    return Upload(slot, name, path, size, shape, None, None, channels=channels, has_mask=has_mask)


def _check(session: Session, slot: str, path: Path, name: str, size: int) -> Upload:
    with session.lock:  # another upload of this session may be adding its slot meanwhile
        others = [u for u in session.uploads.values() if u.props is not None]

    def named(error: JaxsegError) -> JaxsegError:
        # Messages of the data layer name the file: put the client's name where our path was.
        text = str(error).replace(str(path), name)
        for other in others:
            text = text.replace(str(other.path), f"{other.name} ({other.slot})")
        return JaxsegError(text)

    try:
        header = nifti.read_header(path)
        voxels = int(np.prod(header.shape))
        if voxels > MAX_VOXELS:
            raise JaxsegError(f"{path}: {'x'.join(map(str, header.shape))} = {voxels:,} voxels is more than "
                              f"this app accepts ({MAX_VOXELS:,})")
        naming = None
        if slot == "seg":
            labels, props = nifti.read_label_volume(path)
            naming = seg_naming(labels, path)
        else:
            _, props = nifti.read_volume(path)
        for other in others:
            if other.slot != slot and (problem := nifti.geometry_mismatch(props, other.props)):
                raise JaxsegError(problem + "; the files of one case must share one grid")
    except JaxsegError as error:
        raise named(error) from None
    return Upload(slot, name, path, size, tuple(props.canonical_shape), tuple(props.spacing), props, naming)


def seg_naming(labels: np.ndarray, path: Path) -> str:
    """Which BraTS label convention a segmentation uses: 4 present -> 2017-2021, 3 -> 2023+."""
    values = set(brats.label_values(labels))
    for naming in ("brats2021", "brats2023"):
        if values <= set(brats.FILE_LABELS[naming]) and (values & {3, 4} or naming == "brats2021"):
            return naming
    raise JaxsegError(f"{path}: label values {sorted(values)} are neither BraTS 2017-2021 labels (0, 1, 2, 4) "
                      "nor BraTS 2023 labels (0, 1, 2, 3)")


def uploads_of(session: Session | None) -> dict[str, Upload]:
    """A copy of the session's uploads by slot ({} without a session)."""
    if session is None:
        return {}
    with session.lock:  # another request of this session may be adding an upload
        return dict(session.uploads)


def require(session: Session, modalities: tuple[str, ...]) -> dict[str, Upload]:
    """The session's uploads; JaxsegError listing the modalities the model needs that are missing."""
    uploads = uploads_of(session)
    missing = [m for m in modalities if m not in uploads]
    if missing:
        raise JaxsegError(f"this model needs {', '.join(modalities)}; missing: {', '.join(missing)}")
    return uploads


def case_folder(session: Session, modalities: tuple[str, ...], target: Path) -> Path:
    """Copy the uploads a model needs (and the seg) into ``target`` under BraTS names, so the
    job keeps its inputs when the session uploads new files; return the first image file.

    Raises JaxsegError listing the missing modalities.
    """
    uploads = require(session, modalities)
    seg = uploads.get("seg")
    naming = seg.naming if seg is not None else "brats2021"
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for slot in (*modalities, *(["seg"] if seg else [])):
        upload = uploads[slot]
        suffix = ".nii.gz" if upload.path.name.endswith(".gz") else ".nii"
        dest = target / f"upload{brats.SEPARATORS[naming]}{brats.SUFFIXES[naming][slot]}{suffix}"
        shutil.copyfile(upload.path, dest)
        files.append(dest)
    return files[0]
