"""BIDS folders: finding recordings, reading them through mne-bids, and the sidecar files
(``events.tsv``, ``channels.tsv``, ``participants.tsv``) that neurodec reads itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodec.errors import InputFileError
from neurodec.io._files import read_with

logger = logging.getLogger("neurodec")

# Extensions of the data files mne-bids reads, per BIDS datatype.
MEEG_EXTENSIONS = (".fif", ".edf", ".bdf", ".vhdr", ".set", ".con", ".sqd", ".ds", ".mef", ".nwb", ".snirf")
# BIDS channels.tsv types -> MNE channel types. mne-bids leaves MEG types alone when reading
# (it trusts the data file); a sidecar applied to a recording read outside BIDS needs them too.
BIDS_CHANNEL_TYPES = {
    "EEG": "eeg", "MEGMAG": "mag", "MEGGRADPLANAR": "grad", "MEGGRADAXIAL": "mag", "MEGGRAD": "grad",
    "MEGREFMAG": "ref_meg", "MEGREFGRADAXIAL": "ref_meg", "MEGREFGRADPLANAR": "ref_meg", "MEGOTHER": "misc",
    "EOG": "eog", "HEOG": "eog", "VEOG": "eog", "ECG": "ecg", "EMG": "emg", "TRIG": "stim", "MISC": "misc",
    "SEEG": "seeg", "ECOG": "ecog", "DBS": "dbs", "RESP": "resp", "GSR": "gsr", "TEMP": "temperature",
    "SYSCLOCK": "syst", "HLU": "chpi", "NIRSCWAMPLITUDE": "fnirs_cw_amplitude", "EYEGAZE": "eyegaze",
    "PUPIL": "pupil", "REF": "eeg", "AUDIO": "misc", "PD": "misc",
}


def is_bids_root(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_description.json").is_file()


@dataclass
class BidsRecording:
    """One recording found in a BIDS folder."""

    path: Any  # mne_bids.BIDSPath
    datatype: str

    @property
    def fpath(self) -> Path:
        return Path(self.path.fpath)

    def sidecar(self, suffix: str, extension: str) -> Path | None:
        candidate = Path(self.path.copy().update(suffix=suffix, extension=extension, check=False).fpath)
        return candidate if candidate.exists() else None


def find_bids_recordings(root: str | Path, *, subject=None, session=None, task=None, run=None) -> list[BidsRecording]:
    """EEG/MEG/iEEG recordings and fMRI BOLD series of a BIDS folder, in path order;
    the labels, when given, select recordings."""
    import mne_bids

    root = Path(root)
    found: list[BidsRecording] = []
    filters = {"subjects": subject, "sessions": session, "tasks": task, "runs": run}
    filters = {k: v for k, v in filters.items() if v is not None}
    for datatype in ("eeg", "meg", "ieeg"):
        paths = mne_bids.find_matching_paths(
            root, datatypes=datatype, suffixes=datatype, extensions=list(MEEG_EXTENSIONS), **filters
        )
        found.extend(BidsRecording(p, datatype) for p in paths)
    bold = mne_bids.find_matching_paths(root, datatypes="func", suffixes="bold", extensions=[".nii", ".nii.gz"], **filters)
    found.extend(BidsRecording(p, "func") for p in bold)
    # A .ds folder holds files mne-bids may list too; keep each recording once.
    unique = {str(r.fpath): r for r in found}
    return sorted(unique.values(), key=lambda r: str(r.fpath))


def read_raw_bids(recording: BidsRecording, *, preload: bool = True):
    """The raw of a BIDS recording through ``mne_bids.read_raw_bids`` (sidecars applied),
    its data loaded (``preload=False``: the header only, the data left on disk).

    The data are loaded after reading, not through ``extra_params={"preload": True}``:
    mne-bids passes ``preload=False`` to the KIT and BTi readers itself, and refuses a
    second value.

    >>> raw = read_raw_bids(find_bids_recordings("/data/bids", subject="01")[0])  # doctest: +SKIP
    """
    import mne_bids

    def read():
        raw = mne_bids.read_raw_bids(recording.path, verbose="error")
        return raw.load_data(verbose="error") if preload else raw

    return read_with(read, recording.fpath, f"BIDS {recording.datatype} (mne_bids.read_raw_bids)")


def read_channels_tsv(path: str | Path):
    """A BIDS ``channels.tsv`` as a DataFrame (``name``, ``type``, ``status``, ...)."""
    import pandas as pd

    path = Path(path)
    frame = read_with(
        lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig"),
        path,
        "a BIDS channels.tsv",
    )
    if "name" not in frame.columns:
        raise InputFileError(f"{path}: a channels.tsv needs a 'name' column, found {list(frame.columns)}")
    return frame


def apply_channels_tsv(raw, path: str | Path) -> dict[str, Any]:
    """Set channel types and bad channels of ``raw`` from a ``channels.tsv``.

    Channels of the sidecar absent from the recording are reported, not an error (a sidecar
    often lists channels dropped from a shortened copy). Returns what was applied.

    >>> apply_channels_tsv(raw, "sub-01_task-x_channels.tsv")["bads"]   # doctest: +SKIP
    ['MEG 2443', 'EEG 053']
    """
    frame = read_channels_tsv(path)
    present = set(raw.ch_names)
    rows = [row for row in frame.to_dict("records") if row["name"] in present]
    missing = sorted(set(frame["name"]) - present)
    if missing:
        logger.info("%s: %d channels are not in the recording, e.g. %s", Path(path).name, len(missing), missing[:5])
    types = {}
    if "type" in frame.columns:
        for row in rows:
            mne_type = BIDS_CHANNEL_TYPES.get(row["type"].upper())
            if mne_type is None:
                logger.info("%s: channel type %r of %s has no MNE equivalent; kept as misc", path, row["type"], row["name"])
                mne_type = "misc"
            types[row["name"]] = mne_type
        changed = {name: t for name, t in types.items() if raw.get_channel_types(picks=[name])[0] != t}
        if changed:
            raw.set_channel_types(changed, on_unit_change="ignore", verbose="error")
    bads = []
    if "status" in frame.columns:
        bads = [row["name"] for row in rows if row["status"].strip().lower() == "bad"]
        raw.info["bads"] = bads
    return {"types": types, "bads": bads, "missing": missing}


def participant_row(root: Path, subject: str) -> dict[str, str]:
    """The ``participants.tsv`` row of a subject (empty when the file or the row is absent)."""
    import pandas as pd

    path = root / "participants.tsv"
    if not path.exists():
        return {}
    frame = read_with(
        lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig"),
        path,
        "a BIDS participants.tsv",
    )
    if "participant_id" not in frame.columns:
        return {}
    rows = frame[frame["participant_id"] == f"sub-{subject}"]
    return {str(k): str(v) for k, v in rows.iloc[0].items()} if len(rows) else {}


def sidecar_files(recording: BidsRecording) -> list[Path]:
    """Sidecars whose content shapes the stored recording (their sha256 go into ``source``)."""
    found = []
    for suffix, extension in (
        ("channels", ".tsv"),
        ("events", ".tsv"),
        (recording.path.suffix, ".json"),
        ("electrodes", ".tsv"),
        ("coordsystem", ".json"),
    ):
        sidecar = recording.sidecar(suffix, extension)
        if sidecar is not None:
            found.append(sidecar)
    return found


def labels_from_name(path: Path) -> dict[str, str]:
    """BIDS entities in a file name (``sub-015_ses-P3_task-P3_ave.fif``), if any."""
    if "sub-" not in path.name:
        return {}
    import mne_bids

    try:
        entities = mne_bids.get_entities_from_fname(path.name, on_error="ignore")
    except Exception:  # an odd name is just not a BIDS name
        return {}
    return {k: str(v) for k, v in entities.items() if k in ("subject", "session", "run", "task") and v is not None}
