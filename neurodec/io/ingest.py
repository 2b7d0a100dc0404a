"""The one ingestion entry point: native files or a BIDS folder into a study store.

:func:`ingest` reads every source, checks everything (labels, channel sets, events, values),
and only then writes, through :class:`~neurodec.store.StoreWriter` (a new store, renamed into
place when complete) or :meth:`Study.add_recording` (appending; each recording becomes
visible only when fully written). A failure before writing leaves an existing store as it was.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec._logging import progress
from neurodec.errors import ChannelMismatchError, ConfigError, EventError, InputFileError, StoreExistsError
from neurodec.io import bids as bids_io
from neurodec.io._files import (
    COMPANION_SUFFIXES,
    check_edf_size,
    check_exists,
    describe_source,
    file_format,
    read_with,
)
from neurodec.io.events import StimulusMapping, read_events_file
from neurodec.io.meeg import recording_from_epochs, recording_from_evoked, recording_from_raw
from neurodec.io.nifti import recording_from_nifti
from neurodec.io.options import IngestOptions, load_options
from neurodec.store import RecordingData, StoreWriter, Study, open_store
from neurodec.store._location import Location

logger = logging.getLogger("neurodec")


# ----------------------------------------------------------------- reading one file
def read_native(path: str | Path):
    """Read a native file with the library that owns its format.

    Returns ``(kind, object)`` with kind ``"raw"`` (``mne.io.Raw``), ``"epochs"``,
    ``"evoked"`` (a list of every condition) or ``"nifti"`` (a nibabel image). Failures are
    :class:`InputFileError` naming the file.
    """
    import mne

    path = Path(path)
    check_exists(path)
    format_name = file_format(path)
    if format_name == "nifti":
        from neurodec.io.nifti import load_image

        return "nifti", load_image(path)[0]
    if format_name == "fif-events":
        raise InputFileError(f"{path} is an events file, not a recording; give it as options.events.file")
    if format_name.startswith("fif") and path.name.lower().endswith(".gz"):
        return _read_gzipped_fif(path)
    if format_name == "fif-evoked":
        return "evoked", read_with(lambda: mne.read_evokeds(path, verbose="error"), path, "MNE evoked (mne.read_evokeds)")
    if format_name == "fif-epochs":
        return "epochs", read_with(lambda: mne.read_epochs(path, preload=True, verbose="error"), path, "MNE epochs")
    if format_name in ("edf", "bdf"):
        check_edf_size(path)
    if format_name == "eeglab" and _eeglab_holds_epochs(path):
        return "epochs", read_with(
            lambda: mne.read_epochs_eeglab(path, verbose="error"), path, "EEGLAB epochs (mne.read_epochs_eeglab)"
        )
    if format_name == "fif":
        return _read_fif(path)
    return "raw", read_with(lambda: mne.io.read_raw(path, preload=True, verbose="error"), path,
                            f"{format_name} (mne.io.read_raw)")


def _read_gzipped_fif(path: Path):
    """MNE seeks back and forth in a FIF file; in a gzip stream each seek decompresses again
    (seconds for a few MB). Decompressing once to a temporary file is many times faster."""
    import gzip
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="neurodec-fif-") as folder:
        plain = Path(folder) / path.name[: -len(".gz")]

        def decompress() -> None:
            with gzip.open(path, "rb") as source, open(plain, "wb") as target:
                shutil.copyfileobj(source, target, length=1 << 20)

        read_with(decompress, path, "gzip-compressed FIF")
        try:
            return read_native(plain)  # everything is read into memory before the copy goes
        except InputFileError as error:
            raise InputFileError(str(error).replace(str(plain), str(path))) from error.__cause__


def _eeglab_holds_epochs(path: Path) -> bool:
    """Whether an EEGLAB .set holds several trials (then MNE's raw reader refuses it)."""
    from scipy.io import loadmat

    def trials() -> int:
        try:
            content = loadmat(path, variable_names=["trials", "EEG"], squeeze_me=True, struct_as_record=False)
        except NotImplementedError:  # MATLAB v7.3 files are HDF5; MNE reads them with pymatreader
            import mne

            try:
                mne.io.read_raw_eeglab(path, preload=False, verbose="error")
                return 1
            except TypeError:
                return 2
        if "EEG" in content:
            return int(getattr(content["EEG"], "trials", 1))
        return int(content.get("trials", 1))

    return read_with(trials, path, "EEGLAB .set (scipy.io.loadmat)") > 1


def _read_fif(path: Path):
    """A FIF file whose name does not say what it holds: try raw, then epochs, then evoked."""
    import mne

    attempts = (
        ("raw", lambda: mne.io.read_raw_fif(path, preload=True, verbose="error")),
        ("epochs", lambda: mne.read_epochs(path, preload=True, verbose="error")),
        ("evoked", lambda: mne.read_evokeds(path, verbose="error")),
    )
    problems = []
    for kind, reader in attempts:
        try:
            return kind, reader()
        except Exception as error:  # each reader refuses the other FIF kinds with its own error
            problems.append(f"as {kind}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
    raise InputFileError(f"{path}: could not be read as FIF raw, epochs or evoked ({'; '.join(problems)})")


def read_recording(
    path: str | Path,
    options: IngestOptions | Mapping[str, Any] | str | Path | None = None,
    *,
    mapping: StimulusMapping | None = None,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
) -> RecordingData:
    """One native file as a checked ``RecordingData`` (not written anywhere).

    Labels default to the options, then to BIDS entities in the file name, then ``01``.

    >>> rec = read_recording("sub-01_task-x_eeg.edf", {"epochs": {"tmin": -0.2, "tmax": 0.8}})  # doctest: +SKIP
    >>> rec.layout, rec.subject                                                             # doctest: +SKIP
    ('epoched', '01')
    """
    options = load_options(options)
    path = Path(path)
    named = bids_io.labels_from_name(path)
    labels = {
        "subject": subject or options.subject or named.get("subject"),
        "session": session or options.session or named.get("session"),
        "run": run or options.run or named.get("run"),
        "task": task if task is not None else (options.task or named.get("task")),
    }
    kind, native = ("nifti", None) if file_format(path) == "nifti" else read_native(path)
    # A BIDS-named file outside a BIDS folder walk still has its events.tsv beside it.
    sidecar = _bids_events_beside(path) if options.events.file is None and options.events.source in ("auto", "bids") else None
    if options.events.source == "bids" and sidecar is None and kind != "nifti":
        raise EventError(f"{path}: events.source is 'bids' but no BIDS events.tsv lies beside it")
    extra = [p for p in (options.events.file, options.stimuli, options.channels_file, options.fmri.mask, sidecar)
             if p is not None]
    source = describe_source(path, extra_companions=[Path(p) for p in extra])
    common = dict(options=options, mapping=mapping, source=source, **labels)
    if kind == "nifti":
        return recording_from_nifti(path, events=sidecar, **common)
    if kind == "evoked":
        return recording_from_evoked(native, **common)
    if kind == "epochs":
        return recording_from_epochs(native, **common)
    events = read_events_file(sidecar, sfreq=native.info["sfreq"]) if sidecar is not None else None
    return recording_from_raw(native, events=events, copy=False, **common)


_BIDS_DATA_SUFFIX = re.compile(r"_(eeg|meg|ieeg|bold)(\.[A-Za-z0-9]+)+$")


def _bids_events_beside(path: Path) -> Path | None:
    """The ``events.tsv`` of a BIDS-named data file (``..._eeg.edf`` -> ``..._events.tsv``)."""
    match = _BIDS_DATA_SUFFIX.search(path.name)
    if match is None or "sub-" not in path.name:
        return None
    candidate = path.with_name(path.name[: match.start()] + "_events.tsv")
    return candidate if candidate.exists() else None


def read_bids_recording(
    recording: bids_io.BidsRecording,
    root: Path,
    options: IngestOptions,
    *,
    mapping: StimulusMapping | None = None,
) -> RecordingData:
    """One recording of a BIDS folder: data through mne-bids, events from its events.tsv."""
    entities = recording.path
    labels = {
        "subject": entities.subject,
        "session": entities.session,
        "run": entities.run,
        "task": entities.task or "",
    }
    events_tsv = recording.sidecar("events", ".tsv")
    source = describe_source(recording.fpath, extra_companions=bids_io.sidecar_files(recording))
    source["bids_path"] = str(recording.fpath.relative_to(root))
    participant = bids_io.participant_row(root, entities.subject)
    info_extra = {"participant": participant} if options.keep_personal and participant else {}
    if recording.datatype == "func":
        events = events_tsv if options.events.file is None else None
        return recording_from_nifti(recording.fpath, events=events, options=options, mapping=mapping, source=source,
                                    **labels)
    raw = bids_io.read_raw_bids(recording)
    events = None
    wants_bids = options.events.source == "bids" or (options.events.source == "auto" and options.events.file is None)
    if wants_bids and events_tsv is not None:
        events = read_events_file(events_tsv, sfreq=raw.info["sfreq"])
    elif options.events.source == "bids":
        raise EventError(f"{recording.fpath}: events.source is 'bids' but the recording has no events.tsv")
    return recording_from_raw(raw, options=options, events=events, mapping=mapping, source=source,
                              info_extra=info_extra, copy=False, **labels)


# ----------------------------------------------------------------- planning
@dataclass
class _Planned:
    """One recording to read: a file, or a recording of a BIDS folder."""

    path: Path
    bids: bids_io.BidsRecording | None = None
    root: Path | None = None


def _plan(sources: Sequence[str | Path], options: IngestOptions) -> list[_Planned]:
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths = [Path(s) for s in sources]
    if not paths:
        raise ConfigError("ingest: no source given; give files or a BIDS folder")
    planned: list[_Planned] = []
    given = {p.resolve() for p in paths if p.exists()}
    for path in paths:
        check_exists(path)
        if bids_io.is_bids_root(path):
            found = bids_io.find_bids_recordings(
                path, subject=options.subject, session=options.session, task=options.task, run=options.run
            )
            if not found:
                raise InputFileError(f"BIDS folder {path} holds no EEG, MEG, iEEG or BOLD recording matching the options")
            planned.extend(_Planned(r.fpath, bids=r, root=path) for r in found)
            continue
        if path.is_dir() and file_format(path) not in ("ctf", "egi"):
            raise InputFileError(f"{path} is a folder but neither a BIDS folder (no dataset_description.json) nor CTF/EGI")
        if path.suffix.lower() in COMPANION_SUFFIXES:
            if any(g.stem == path.resolve().stem and g != path.resolve() for g in given):
                logger.info("%s: read with its header file, not on its own", path)
                continue
            raise InputFileError(
                f"{path} is a data/marker file of another file (EEGLAB .set, BrainVision .vhdr); give the header file"
            )
        planned.append(_Planned(path))
    file_count = sum(p.bids is None for p in planned)
    if options.run is not None and file_count > 1:
        raise ConfigError(f"options.run={options.run!r} given for {file_count} files; a run label names one recording")
    return planned


def _assign_runs(recordings: list[RecordingData], runs_given: list[bool], taken: set[tuple[str, str, str]],
                 sources: list[Path]) -> None:
    """Number runs that have no label, skipping labels already used, and refuse duplicates."""
    used = set(taken)
    seen: dict[tuple[str, str, str], Path] = {}
    for recording, given, source in zip(recordings, runs_given, sources):
        if not given:
            continue
        key = (recording.subject, recording.session, recording.run)
        if key in seen:
            raise ConfigError(f"{source} and {seen[key]} are both sub-{key[0]}/ses-{key[1]}/run-{key[2]}; give distinct runs")
        seen[key] = source
        used.add(key)
    for recording, given in zip(recordings, runs_given):
        if given:
            continue
        number = 1
        while (recording.subject, recording.session, f"{number:02d}") in used:
            number += 1
        recording.run = f"{number:02d}"
        used.add((recording.subject, recording.session, recording.run))


def check_channel_sets(recordings: Sequence[RecordingData], existing: Sequence[Any] = ()) -> None:
    """Runs of one subject and modality must have the same channels.

    A run whose channels are the same set in another order is reordered to match the
    first run (a reader's order is not a difference in what was recorded).
    """
    first: dict[tuple[str, str], tuple[list[str], str]] = {}
    for recording in existing:
        first.setdefault((recording.subject, recording.modality), (list(recording.ch_names), recording.key))
    for recording in recordings:
        if recording.layout == "fmri":
            continue
        group = (recording.subject, recording.modality)
        if group not in first:
            first[group] = (list(recording.ch_names), f"{recording.key} ({recording.source.get('file', '')})")
            continue
        reference, where = first[group]
        if recording.ch_names == reference:
            continue
        missing = [c for c in reference if c not in set(recording.ch_names)]
        extra = [c for c in recording.ch_names if c not in set(reference)]
        if missing or extra:
            raise ChannelMismatchError(
                f"{recording.key} ({recording.source.get('file', '')}): channels differ from {where} of the same "
                f"subject; missing {missing[:8]}{'...' if len(missing) > 8 else ''} "
                f"({len(missing)}), extra {extra[:8]}{'...' if len(extra) > 8 else ''} ({len(extra)}); "
                f"pick a common set with options.picks"
            )
        _reorder_channels(recording, reference)


def _reorder_channels(recording: RecordingData, order: list[str]) -> None:
    position = [recording.ch_names.index(c) for c in order]
    recording.data = np.take(recording.data, position, axis=-2)
    for name in ("ch_names", "ch_types", "units"):
        values = getattr(recording, name)
        setattr(recording, name, [values[i] for i in position])
    if recording.sensor_positions is not None:
        recording.sensor_positions = np.asarray(recording.sensor_positions)[position]
    for key in ("ch_loc", "coil_types", "coord_frames"):
        if key in recording.info:
            recording.info[key] = [recording.info[key][i] for i in position]


def _number_repetitions(recordings: Sequence[RecordingData], earlier: Mapping[str, Mapping[str, int]]) -> None:
    """Repetition = earlier presentations of the stimulus to the subject, across runs in order."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for subject, per_stimulus in earlier.items():
        counts[subject].update(per_stimulus)
    ordered = sorted(recordings, key=lambda r: (r.subject, r.session, r.run))
    for recording in ordered:
        seen = counts[recording.subject]
        repetition = []
        for stimulus in recording.events["stimulus_id"].tolist():
            repetition.append(seen.get(stimulus, 0))
            seen[stimulus] = seen.get(stimulus, 0) + 1
        recording.events = recording.events.with_column("repetition", np.asarray(repetition, dtype=np.int64))


def _presentations(study: Study) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for recording in study.recordings():
        seen = counts[recording.subject]
        for stimulus in recording.events["stimulus_id"].tolist():
            seen[stimulus] = seen.get(stimulus, 0) + 1
    return counts


# ----------------------------------------------------------------- entry point
def ingest(
    sources: Sequence[str | Path] | str | Path,
    out: str | Path,
    *,
    options: IngestOptions | Mapping[str, Any] | str | Path | None = None,
    overwrite: bool = False,
    append: bool = False,
) -> Study:
    """Convert native recordings (files, or a BIDS folder) into a study store.

    Several files become several runs. Labels come from BIDS entities, else from the
    options, else subject ``01``, session ``01`` and runs numbered in the order given.
    ``append=True`` adds the recordings to the existing store at ``out`` (their events must
    name stimuli it already holds; ``overwrite=True`` then replaces recordings of the same
    key); otherwise a new store is written (``overwrite=True`` replaces an existing one).
    Everything is read and checked before anything is written.

    >>> study = ingest(["sub-01_run-1.edf", "sub-01_run-2.edf"], "study.zarr",
    ...                options={"stimuli": "stimuli.tsv", "epochs": {"tmin": -0.1, "tmax": 0.6}})  # doctest: +SKIP
    >>> [r.key for r in study.recordings()]                                       # doctest: +SKIP
    ['sub-01/ses-01/run-01', 'sub-01/ses-01/run-02']
    """
    options = load_options(options)
    target = Location.parse(str(out))
    existing: Study | None = None
    if append:
        existing = open_store(str(out), mode="r+")
    elif target.exists() and not overwrite:
        raise StoreExistsError(f"{target.url} exists; pass overwrite=True (CLI: --overwrite) or append=True")

    plan = _plan(sources, options)
    mapping = StimulusMapping.from_options(options)
    recordings: list[RecordingData] = []
    runs_given: list[bool] = []
    for planned in progress(plan, "reading recordings", total=len(plan)):
        if planned.bids is not None:
            recording = read_bids_recording(planned.bids, planned.root, options, mapping=mapping)
            runs_given.append(planned.bids.path.run is not None)
        else:
            recording = read_recording(planned.path, options, mapping=mapping)
            runs_given.append(options.run is not None or bids_io.labels_from_name(planned.path).get("run") is not None)
        recordings.append(recording)
    sources_read = [p.path for p in plan]

    taken = set()
    if existing is not None:
        taken = {(r.subject, r.session, r.run) for r in existing.recordings()}
        if overwrite:
            taken = set()
    _assign_runs(recordings, runs_given, taken, sources_read)
    check_channel_sets(recordings, existing.recordings() if existing is not None else ())
    _number_repetitions(recordings, _presentations(existing) if existing is not None else {})
    for recording in recordings:
        recording.validate()

    if existing is not None:
        return _append(existing, recordings, overwrite)
    stimuli = mapping.stimulus_table(
        used_ids={s for r in recordings for s in r.events["stimulus_id"].tolist()}
    )
    provenance = {
        "converter": "neurodec.io.ingest",
        "options": options.model_dump(mode="json"),
        "sources": [{"file": r.source.get("file", ""), "sha256": r.source.get("sha256", "")} for r in recordings],
    }
    writer = StoreWriter(str(out), name=options.name or Path(str(out)).stem, overwrite=overwrite, provenance=provenance)
    try:
        writer.set_stimuli(stimuli)
        for recording in progress(recordings, "writing recordings", total=len(recordings)):
            writer.add_recording(recording)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _append(study: Study, recordings: list[RecordingData], overwrite: bool) -> Study:
    known = set(study.stimuli["id"].tolist())
    for recording in recordings:
        unknown = sorted(set(recording.events["stimulus_id"].tolist()) - known)
        if unknown:
            raise EventError(
                f"{recording.key} ({recording.source.get('file', '')}): events name {len(unknown)} stimuli the store "
                f"{study.url} does not hold, e.g. {unknown[:5]}; appending does not add stimuli"
            )
        if recording.key in study.recording_keys and not overwrite:
            raise StoreExistsError(f"{study.url}: recording {recording.key} exists; pass overwrite=True to replace it")
    for recording in progress(recordings, "writing recordings", total=len(recordings)):
        study.add_recording(recording, overwrite=overwrite)
    return open_store(study.url)
