"""Native files: which format a path is, its companion files, checksums, and reading it with
the library that owns the format, turning that library's exceptions into
:class:`~neurodec.errors.InputFileError` that name the file."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from neurodec.errors import InputFileError

logger = logging.getLogger("neurodec")
T = TypeVar("T")

# File-name endings, longest first, and the format name recorded in ``source["format"]``.
_FORMATS = (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    ("-ave.fif.gz", "fif-evoked"),
    ("_ave.fif.gz", "fif-evoked"),
    ("-ave.fif", "fif-evoked"),
    ("_ave.fif", "fif-evoked"),
    ("-epo.fif.gz", "fif-epochs"),
    ("_epo.fif.gz", "fif-epochs"),
    ("-epo.fif", "fif-epochs"),
    ("_epo.fif", "fif-epochs"),
    ("-eve.fif", "fif-events"),
    ("_eve.fif", "fif-events"),
    (".fif.gz", "fif"),
    (".fif", "fif"),
    (".edf", "edf"),
    (".bdf", "bdf"),
    (".gdf", "gdf"),
    (".vhdr", "brainvision"),
    (".set", "eeglab"),
    (".con", "kit"),
    (".sqd", "kit"),
    (".ds", "ctf"),
    (".cnt", "cnt"),
    (".mff", "egi"),
    (".mef", "mef"),
    (".snirf", "snirf"),
    (".nwb", "nwb"),
)
# Data or marker files that belong to a header file given as the source.
COMPANION_SUFFIXES = (".fdt", ".vmrk", ".eeg", ".dat")


def file_format(path: Path) -> str:
    """The format name of a path, from its ending (``"unknown"`` when none matches)."""
    name = path.name.lower()
    for ending, format_name in _FORMATS:
        if name.endswith(ending):
            return format_name
    return "unknown"


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in name order (CTF ``.ds``, EGI ``.mff``)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def companion_files(path: Path) -> list[Path]:
    """Files a header file refers to: EEGLAB's ``.fdt``, BrainVision's data and marker files."""
    format_name = file_format(path)
    found: list[Path] = []
    if format_name == "eeglab":
        fdt = path.with_suffix(".fdt")
        if fdt.exists():
            found.append(fdt)
    elif format_name == "brainvision":
        try:
            header = path.read_text(errors="replace")
        except OSError:
            return found
        for key in ("DataFile", "MarkerFile"):
            match = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", header, flags=re.MULTILINE)
            if match:
                companion = path.parent / match.group(1)
                if companion.exists():
                    found.append(companion)
    return found


def describe_source(path: Path, format_name: str | None = None, extra_companions: list[Path] = ()) -> dict[str, Any]:
    """The ``source`` record of a recording: file name, sha256, format, companions' sha256."""
    companions = {}
    for companion in [*companion_files(path), *extra_companions]:
        if companion is not None and Path(companion).exists():
            companions[Path(companion).name] = sha256_of(Path(companion))
    source = {"file": path.name, "sha256": sha256_of(path), "format": format_name or file_format(path)}
    if companions:
        source["companions"] = companions
    return source


def check_exists(path: Path, what: str = "source file") -> None:
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist")


def read_with(reader: Callable[[], T], path: Path, what: str) -> T:
    """Call a native reader; any failure becomes an InputFileError naming the file."""
    check_exists(path)
    try:
        return reader()
    except InputFileError:
        raise
    except Exception as error:  # readers raise anything from ValueError to struct.error
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputFileError(
            f"{path}: could not be read as {what} ({type(error).__name__}: {message}); "
            f"the file may be truncated, corrupt or of another format"
        ) from error


@dataclass
class EdfHeader:
    header_bytes: int
    n_records: int
    samples_per_record: list[int]
    bytes_per_sample: int

    @property
    def expected_size(self) -> int:
        return self.header_bytes + self.n_records * sum(self.samples_per_record) * self.bytes_per_sample


def check_edf_size(path: Path) -> None:
    """Refuse an EDF/BDF file shorter than its header says.

    MNE reads a truncated EDF without complaint and returns fewer samples than recorded;
    the header states how many data records follow, so the size can be checked exactly.
    """
    format_name = file_format(path)
    try:
        with open(path, "rb") as handle:
            fixed = handle.read(256)
            n_signals = int(fixed[252:256].decode("ascii").strip())
            handle.seek(256 + n_signals * 216)
            samples = handle.read(8 * n_signals).decode("ascii")
        header = EdfHeader(
            header_bytes=int(fixed[184:192].decode("ascii").strip()),
            n_records=int(fixed[236:244].decode("ascii").strip()),
            samples_per_record=[int(samples[8 * i : 8 * i + 8].strip()) for i in range(n_signals)],
            bytes_per_sample=3 if format_name == "bdf" else 2,
        )
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputFileError(
            f"{path}: the {format_name.upper()} header is unreadable ({type(error).__name__}: {error}); "
            f"the file is corrupt or not {format_name.upper()}"
        ) from None
    actual = path.stat().st_size
    if header.n_records > 0 and actual < header.expected_size:
        raise InputFileError(
            f"{path}: truncated {format_name.upper()} file: its header promises {header.n_records} data records "
            f"({header.expected_size} bytes), the file holds {actual} bytes"
        )
