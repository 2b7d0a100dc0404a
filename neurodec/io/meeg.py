"""EEG, MEG and iEEG: MNE objects (Raw, Epochs, Evoked) into :class:`RecordingData`.

Each ``recording_from_*`` function takes an MNE object already read (so it works from a
notebook on any object MNE can build), applies the preprocessing of the options through
MNE's own methods, names the stimulus of each event, removes personal data with
``anonymize`` unless ``keep_personal`` is set, and returns a checked ``RecordingData``.
The object passed in is not modified (a copy is processed).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neurodec.errors import ConfigError, EventError, InvalidDataError
from neurodec.io import preprocess
from neurodec.io.events import (
    EventList,
    StimulusMapping,
    check_events_inside,
    event_rows,
    events_from_annotations,
    events_from_stim,
    read_events_file,
)
from neurodec.io.options import IngestOptions, load_options
from neurodec.store import RecordingData

logger = logging.getLogger("neurodec")

MEG_TYPES = frozenset({"mag", "grad"})
IEEG_TYPES = frozenset({"seeg", "ecog", "dbs"})
# FIFF unit codes (mne.io.constants.FIFF.FIFF_UNIT_*) and their SI names.
_UNIT_NAMES = {107: "V", 112: "T", 201: "T/m", 202: "Am", 6: "mol", 114: "degC", 2: "s", 10: "S", 1: "m"}
_FIFFV_COORD_DEVICE = 1
_FIFFV_COORD_HEAD = 4


# ----------------------------------------------------------------- metadata
def channel_units(info) -> list[str]:
    """SI unit name of each channel (``""`` where MNE records none, e.g. stim channels)."""
    return [_UNIT_NAMES.get(int(ch["unit"]), "") for ch in info["chs"]]


def sensor_positions(info) -> np.ndarray:
    """Positions in head-frame metres, ``(n_channels, 3)``; NaN rows where unknown.

    EEG/iEEG locations are stored by MNE in the head frame; MEG sensor locations are in the
    device frame and are moved to the head frame with ``info["dev_head_t"]``.
    """
    from mne.transforms import apply_trans

    dev_head_t = info["dev_head_t"]
    positions = np.full((len(info["chs"]), 3), np.nan)
    for index, channel in enumerate(info["chs"]):
        location = np.asarray(channel["loc"][:3], dtype=np.float64)
        if not np.all(np.isfinite(location)) or not np.any(location):
            continue
        frame = int(channel["coord_frame"])
        if frame == _FIFFV_COORD_HEAD:
            positions[index] = location
        elif frame == _FIFFV_COORD_DEVICE and dev_head_t is not None:
            positions[index] = apply_trans(dev_head_t["trans"], location)
    return positions


def _json_float_list(values) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def _modality(ch_types: Sequence[str]) -> str:
    present = set(ch_types)
    if present & MEG_TYPES:
        return "meg"
    if present & IEEG_TYPES:
        return "ieeg"
    return "eeg"


def _personal(info) -> dict[str, Any]:
    """What ``keep_personal=True`` keeps (the fields ``mne.io.anonymize_info`` replaces)."""
    personal: dict[str, Any] = {}
    if info["meas_date"] is not None:
        personal["meas_date"] = info["meas_date"].isoformat()
    subject_info = info.get("subject_info")
    if subject_info:
        personal["subject_info"] = {
            key: (value.isoformat() if hasattr(value, "isoformat") else value.tolist() if hasattr(value, "tolist") else value)
            for key, value in dict(subject_info).items()
        }
    for key in ("experimenter", "description", "proj_name"):
        if info.get(key):
            personal[key] = info[key]
    return personal


def _system(inst) -> dict[str, Any]:
    """Non-personal description of the acquisition system."""
    info = inst.info
    system: dict[str, Any] = {"reader": type(inst).__name__}
    device = info.get("device_info") or {}
    for key in ("type", "model"):
        if device.get(key):
            system[f"device_{key}"] = device[key]
    if info.get("kit_system_id") is not None:
        system["kit_system_id"] = int(info["kit_system_id"])
    if hasattr(inst, "compensation_grade") and inst.compensation_grade is not None:
        system["ctf_compensation_grade"] = int(inst.compensation_grade)
    return system


def _anonymise(inst, keep_personal: bool) -> dict[str, Any]:
    """Personal fields to keep (when asked); otherwise anonymise the object in place."""
    if keep_personal:
        return _personal(inst.info)
    import mne

    if getattr(inst, "annotations", None) is not None:
        # inst.anonymize calls mne.io.anonymize_info and keeps annotations in step with meas_date.
        inst.anonymize(verbose="error")
    else:  # Epochs without annotations: MNE's method would fail on the missing annotations
        mne.io.anonymize_info(inst.info, verbose="error")
    return {}


def _info_record(inst, *, original_sfreq: float, first_samp: int, personal: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = inst.info
    dev_head_t = info["dev_head_t"]
    record: dict[str, Any] = {
        "original_sfreq": float(original_sfreq),
        "first_samp": int(first_samp),
        "first_time": float(first_samp / original_sfreq),
        "line_freq": None if info["line_freq"] is None else float(info["line_freq"]),
        "highpass": float(info["highpass"]),
        "lowpass": float(info["lowpass"]),
        "dev_head_t": None if dev_head_t is None else np.asarray(dev_head_t["trans"]).tolist(),
        "system": _system(inst),
        "ch_loc": [_json_float_list(ch["loc"]) for ch in info["chs"]],
        "coil_types": [int(ch["coil_type"]) for ch in info["chs"]],
        "coord_frames": [int(ch["coord_frame"]) for ch in info["chs"]],
    }
    record.update(extra or {})
    record.update(personal)
    return record


def _source_of(inst, source: dict[str, Any] | None) -> dict[str, Any]:
    if source is not None:
        return dict(source)
    from neurodec.io._files import describe_source

    names = [f for f in (getattr(inst, "filenames", None) or [getattr(inst, "filename", None)]) if f]
    if names and Path(names[0]).exists():
        return describe_source(Path(names[0]))
    return {"file": "", "sha256": "", "format": f"in-memory {type(inst).__name__}"}


def _check_finite(data: np.ndarray, ch_names: list[str], where: str, channel_axis: int) -> None:
    finite = np.isfinite(data)
    if finite.all():
        return
    bad_per_channel = np.moveaxis(~finite, channel_axis, 0).reshape(len(ch_names), -1).sum(axis=1)
    names = [f"{ch_names[i]} ({int(bad_per_channel[i])})" for i in np.flatnonzero(bad_per_channel)]
    raise InvalidDataError(
        f"{where}: {int((~finite).sum())} samples are NaN or Inf, in channels {names[:8]}; "
        f"expected finite values (mark the channels bad and drop them with options.picks, or repair the file)"
    )


def _data_features(ch_types: list[str]) -> np.ndarray:
    return np.asarray([t in preprocess.DATA_CHANNEL_TYPES for t in ch_types], dtype=bool)


def recording_labels(options: IngestOptions, subject, session, run, task) -> dict[str, str]:
    """The subject, session, run and task of a recording: the argument given, else the
    option, else the default. Shared by every ``recording_from_*`` (NIfTI too), so all
    modalities label a recording the same way.

    >>> recording_labels(load_options({"subject": "07"}), None, None, "02", None)
    {'subject': '07', 'session': '01', 'run': '02', 'task': ''}
    """
    return {
        "subject": subject or options.subject or "01",
        "session": session or options.session or "01",
        "run": run or options.run or "01",
        "task": task if task is not None else (options.task or ""),
    }


def converter_record(name: str, options: IngestOptions) -> dict[str, Any]:
    """The ``converter`` field of a recording: the function that built it and its options."""
    return {"name": f"neurodec.io.{name}", "parameters": options.model_dump(mode="json")}


def _where(source: dict[str, Any], labels: dict[str, str]) -> str:
    return source.get("file") or f"recording sub-{labels['subject']}/ses-{labels['session']}/run-{labels['run']}"


# ----------------------------------------------------------------- raw
def raw_events(raw, options: IngestOptions, where: str) -> EventList:
    """The events of a raw as the options ask (``events.source``); see ``EventOptions``."""
    chosen = options.events.source
    if chosen == "auto":
        if options.events.file is not None:
            chosen = "file"
        elif len(raw.annotations):
            chosen = "annotations"
        elif "stim" in raw.get_channel_types() or options.events.stim_channel is not None:
            chosen = "stim"
        else:
            return EventList.empty(origin="none")
    if chosen == "none":
        return EventList.empty(origin="none")
    if chosen == "annotations":
        events = events_from_annotations(raw)
        inside = (events.sample >= 0) & (events.sample < raw.n_times)
        if not inside.all():
            logger.info("%s: %d annotations outside the data are not events", where, int((~inside).sum()))
        return events.select(inside)
    if chosen == "stim":
        try:
            return events_from_stim(raw, options.events.stim_channel, options.events.shortest_event)
        except EventError as error:
            if options.events.source != "auto":
                raise
            logger.warning("%s: %s; the recording is stored without events (set events.source)", where, error)
            return EventList.empty(origin="none")
    if chosen == "file":
        if options.events.file is None:
            raise ConfigError("events.source is 'file' but events.file is not set")
        events = read_events_file(options.events.file, sfreq=raw.info["sfreq"], first_samp=raw.first_samp)
        check_events_inside(events, raw.n_times, where)
        return events
    raise ConfigError(f"{where}: events.source 'bids' needs a BIDS recording (a BIDS folder as the source)")


def _recording_data(
    *, name: str, inst, data: np.ndarray, layout: str, events: EventList, stimulus_ids: np.ndarray,
    options: IngestOptions, labels: dict[str, str], source: dict[str, Any], steps: list[dict[str, Any]],
    personal: dict[str, Any], original_sfreq: float, sample: np.ndarray | None = None, first_samp: int = 0,
    info_extra: dict[str, Any] | None = None,
) -> RecordingData:
    """The store recording of a processed MNE object (Raw, Epochs or the first of several Evoked).

    ``data`` is ``inst``'s data (channels first for ``layout="continuous"``, trials x channels x
    times for ``"epoched"``); it is robust-scaled and clamped here, so every ``recording_from_*``
    records that step, its units and its metadata the same way. ``sample`` is the events'
    onset sample in ``data`` (continuous layout only); ``first_samp`` the source's first sample.
    """
    ch_types = inst.get_channel_types()
    features = _data_features(ch_types)
    channel_axis = 0 if layout == "continuous" else 1
    data = preprocess.scale_and_clamp(data, channel_axis, features, inst.ch_names, options, steps)
    # Scaled data channels are no longer in volts or teslas.
    units = ["a.u." if scaled and options.preprocessing.robust_scale else unit
             for scaled, unit in zip(features, channel_units(inst.info))]
    return RecordingData(
        subject=labels["subject"],
        session=labels["session"],
        run=labels["run"],
        task=labels["task"],
        modality=options.modality or _modality(ch_types),
        layout=layout,
        data=np.asarray(data, dtype=np.float32),
        events=event_rows(events, stimulus_ids, sample=sample),
        sfreq=float(inst.info["sfreq"]),
        # A continuous recording starts at its first kept sample; trials at their window's start.
        tmin=0.0 if layout == "continuous" else float(inst.tmin),
        ch_names=list(inst.ch_names),
        ch_types=list(ch_types),
        units=units,
        sensor_positions=sensor_positions(inst.info),
        bads=list(inst.info["bads"]),
        preprocessing=steps,
        source=source,
        converter=converter_record(name, options),
        info=_info_record(inst, original_sfreq=original_sfreq, first_samp=first_samp, personal=personal,
                          extra=info_extra),
    )


def recording_from_raw(
    raw,
    *,
    options: IngestOptions | dict | None = None,
    events: EventList | None = None,
    mapping: StimulusMapping | None = None,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
    source: dict[str, Any] | None = None,
    info_extra: dict[str, Any] | None = None,
    copy: bool = True,
) -> RecordingData:
    """A continuous MNE recording as a store recording, continuous or (with
    ``options.epochs``) cut into epochs.

    ``events`` overrides the events the options would take from ``raw``; ``mapping`` names
    their stimuli (default: from the options' stimuli table or rule).

    >>> import mne
    >>> raw = mne.io.read_raw("sub-01_eeg.edf", preload=True)             # doctest: +SKIP
    >>> rec = recording_from_raw(raw, options={"epochs": {"tmin": -0.1, "tmax": 0.5}})  # doctest: +SKIP
    >>> rec.layout, rec.data.shape                                        # doctest: +SKIP
    ('epoched', (38, 64, 78))
    """
    import mne

    options = load_options(options)
    mapping = mapping or StimulusMapping.from_options(options)
    labels = recording_labels(options, subject, session, run, task)
    source = _source_of(raw, source)
    where = _where(source, labels)
    raw = raw.copy() if copy else raw
    raw.load_data(verbose="error")
    if options.channels_file is not None:
        from neurodec.io.bids import apply_channels_tsv

        apply_channels_tsv(raw, options.channels_file)
    if options.picks:
        raw.pick(options.picks, verbose="error")
    _check_finite(raw._data, raw.ch_names, where, channel_axis=0)

    if events is None:
        events = raw_events(raw, options, where)
    events, stimulus_ids, _ = mapping.assign(events, where)
    original_sfreq, first_samp = float(raw.info["sfreq"]), int(raw.first_samp)
    personal = _anonymise(raw, options.keep_personal)

    steps: list[dict[str, Any]] = []
    settings = options.preprocessing
    offset = 0
    if settings.crop is not None:
        offset = preprocess.crop(raw, settings.crop[0], settings.crop[1], steps)
    current = events.sample - offset
    inside = (current >= 0) & (current < raw.n_times)
    if not inside.all():
        logger.info("%s: %d events fall outside the cropped data and are dropped", where, int((~inside).sum()))
        events, stimulus_ids, current = events.select(inside), stimulus_ids[inside], current[inside]
    if settings.notch:
        preprocess.notch(raw, settings.notch, steps)
    if settings.bandpass is not None:
        preprocess.bandpass(raw, settings.bandpass.l_freq, settings.bandpass.h_freq, settings.bandpass.method, steps)

    if options.epochs is not None:
        if len(events) == 0:
            raise EventError(f"{where}: epochs were asked for, but the recording has no events ({events.origin})")
        event_id = {s: code for code, s in enumerate(dict.fromkeys(stimulus_ids.tolist()), start=1)}
        codes = np.asarray([event_id[s] for s in stimulus_ids])
        mne_events = np.c_[current + raw.first_samp, np.zeros(len(current), dtype=np.int64), codes]
        epochs = mne.Epochs(
            raw, mne_events, event_id=event_id, tmin=options.epochs.tmin, tmax=options.epochs.tmax,
            baseline=options.epochs.baseline, reject=options.epochs.reject,
            reject_by_annotation=options.epochs.reject_by_annotation, preload=True,
            event_repeated="drop", verbose="error",
        )
        dropped = Counter(reason for log in epochs.drop_log for reason in log)
        steps.append(
            {
                "step": "epochs",
                "function": "mne.Epochs",
                "tmin": options.epochs.tmin,
                "tmax": options.epochs.tmax,
                "baseline": None if options.epochs.baseline is None else list(options.epochs.baseline),
                "reject": options.epochs.reject,
                "reject_by_annotation": options.epochs.reject_by_annotation,
                "n_events": int(len(mne_events)),
                "n_epochs": int(len(epochs)),
                "dropped": dict(dropped),
            }
        )
        if len(epochs) == 0:
            raise EventError(f"{where}: every epoch was dropped ({dict(dropped)}); check the epoch window and reject")
        kept = epochs.selection
        events, stimulus_ids = events.select(kept), stimulus_ids[kept]
        if settings.resample is not None:
            preprocess.resample(epochs, settings.resample, steps, method=settings.resample_method)
        data = epochs.get_data()
        inst, layout, sample = epochs, "epoched", None
    else:
        if settings.resample is not None:
            mne_events = np.c_[current + raw.first_samp, np.zeros((len(current), 2), dtype=np.int64)]
            resampled = preprocess.resample(raw, settings.resample, steps, events=mne_events if len(current) else None,
                                            method=settings.resample_method)
            if len(current):
                current = resampled[:, 0] - raw.first_samp
        data = raw.get_data()
        inst, layout, sample = raw, "continuous", current

    return _recording_data(
        name="recording_from_raw", inst=inst, data=data, layout=layout, events=events, stimulus_ids=stimulus_ids,
        sample=sample, options=options, labels=labels, source=source, steps=steps, personal=personal,
        original_sfreq=original_sfreq, first_samp=first_samp, info_extra=info_extra,
    )


# ----------------------------------------------------------------- trials already cut
def _trial_preprocessing(inst, options: IngestOptions, steps: list[dict[str, Any]]) -> None:
    """Steps that apply to Epochs and Evoked objects (no notch: it needs continuous data)."""
    settings = options.preprocessing
    if settings.notch:
        raise ConfigError(
            f"preprocessing.notch: {type(inst).__name__} data are already cut into trials; notch filtering needs "
            f"the continuous recording"
        )
    if options.epochs is not None:
        if options.epochs.tmin < inst.tmin - 1e-9 or options.epochs.tmax > inst.times[-1] + 1e-9:
            raise ConfigError(
                f"epochs: window {options.epochs.tmin}..{options.epochs.tmax} s lies outside the trials' "
                f"{inst.tmin:.4f}..{inst.times[-1]:.4f} s"
            )
        preprocess.crop(inst, options.epochs.tmin, options.epochs.tmax, steps)
    if settings.crop is not None:
        raise ConfigError("preprocessing.crop applies to continuous recordings; use epochs.tmin/tmax for trials")
    if settings.bandpass is not None:
        preprocess.bandpass(inst, settings.bandpass.l_freq, settings.bandpass.h_freq, settings.bandpass.method, steps)
    if options.epochs is not None and options.epochs.baseline is not None:
        preprocess.baseline(inst, options.epochs.baseline, steps)
    if settings.resample is not None:
        preprocess.resample(inst, settings.resample, steps, method=settings.resample_method)


def recording_from_epochs(
    epochs,
    *,
    options: IngestOptions | dict | None = None,
    mapping: StimulusMapping | None = None,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
    source: dict[str, Any] | None = None,
    info_extra: dict[str, Any] | None = None,
) -> RecordingData:
    """MNE Epochs (e.g. ``mne.read_epochs`` or ``mne.read_epochs_eeglab``) as an epoched recording.

    An event's ``trial_type`` is its name in ``epochs.event_id`` and its ``value`` the code;
    columns of ``epochs.metadata`` are available to the naming rule too.

    >>> rec = recording_from_epochs(mne.read_epochs("sub-01-epo.fif"))   # doctest: +SKIP
    """
    options = load_options(options)
    mapping = mapping or StimulusMapping.from_options(options)
    labels = recording_labels(options, subject, session, run, task)
    source = _source_of(epochs, source)
    where = _where(source, labels)
    epochs = epochs.copy().load_data()
    names = {code: name for name, code in epochs.event_id.items()}
    codes = epochs.events[:, 2]
    extra = {}
    if epochs.metadata is not None:
        extra = {str(c): [str(v) for v in epochs.metadata[c].tolist()] for c in epochs.metadata.columns}
    events = EventList.build(
        sample=epochs.events[:, 0],
        onset=epochs.events[:, 0] / epochs.info["sfreq"],
        trial_type=[names.get(int(c), str(int(c))) for c in codes],
        value=[str(int(c)) for c in codes],
        origin="epochs events",
        extra=extra,
    )
    _check_finite(epochs._data, epochs.ch_names, where, channel_axis=1)
    events, stimulus_ids, keep = mapping.assign(events, where)
    if len(keep) == 0:
        raise EventError(f"{where}: no trial is left once events are named ({events.origin})")
    if len(keep) != len(epochs):
        epochs = epochs[keep]
    events.sample = np.full(len(events), -1, dtype=np.int64)
    original_sfreq = float(epochs.info["sfreq"])
    personal = _anonymise(epochs, options.keep_personal)
    steps: list[dict[str, Any]] = []
    _trial_preprocessing(epochs, options, steps)
    return _recording_data(
        name="recording_from_epochs", inst=epochs, data=epochs.get_data(), layout="epoched", events=events,
        stimulus_ids=stimulus_ids, options=options, labels=labels, source=source, steps=steps, personal=personal,
        original_sfreq=original_sfreq, info_extra=info_extra,
    )


def recording_from_evoked(
    evokeds,
    *,
    options: IngestOptions | dict | None = None,
    mapping: StimulusMapping | None = None,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
    source: dict[str, Any] | None = None,
    info_extra: dict[str, Any] | None = None,
) -> RecordingData:
    """Averaged responses (``mne.read_evokeds``: every condition) as an epoched recording
    with one trial per condition. The trial's ``trial_type`` and ``value`` are the evoked's
    ``comment``; ``nave`` of each trial is kept in ``info["nave"]``.

    >>> rec = recording_from_evoked(mne.read_evokeds("sub-01-ave.fif"))   # doctest: +SKIP
    >>> rec.info["nave"]                                                  # doctest: +SKIP
    [55, 61]
    """
    options = load_options(options)
    mapping = mapping or StimulusMapping.from_options(options)
    labels = recording_labels(options, subject, session, run, task)
    evokeds = [e.copy() for e in (evokeds if isinstance(evokeds, (list, tuple)) else [evokeds])]
    if not evokeds:
        raise InvalidDataError("recording_from_evoked: no evoked responses given")
    source = _source_of(evokeds[0], source)
    where = _where(source, labels)
    first = evokeds[0]
    for index, evoked in enumerate(evokeds[1:], start=1):
        if evoked.ch_names != first.ch_names or evoked.info["sfreq"] != first.info["sfreq"] or not np.allclose(
            evoked.times, first.times
        ):
            raise InvalidDataError(
                f"{where}: evoked {index} ({evoked.comment!r}) differs from evoked 0 in channels, sampling "
                f"frequency or times; all conditions of one recording must share them"
            )
    comments = [str(e.comment) for e in evokeds]
    events = EventList.build(
        trial_type=comments, value=comments, origin="evoked conditions",
        extra={"comment": comments, "condition": [str(i) for i in range(len(evokeds))]},
    )
    for evoked in evokeds:
        _check_finite(evoked.data, evoked.ch_names, where, channel_axis=0)
    events, stimulus_ids, keep = mapping.assign(events, where)
    if len(keep) == 0:
        raise EventError(f"{where}: no condition is left once events are named")
    evokeds = [evokeds[i] for i in keep]
    original_sfreq = float(first.info["sfreq"])
    personal = _anonymise(evokeds[0], options.keep_personal)
    steps: list[dict[str, Any]] = []
    for index, evoked in enumerate(evokeds):
        if index:
            _anonymise(evoked, options.keep_personal)
        # Every condition gets the same steps; the first one's record stands for all.
        _trial_preprocessing(evoked, options, steps if index == 0 else [])
    extra = {
        "nave": [int(e.nave) for e in evokeds],
        "evoked_kind": [str(e.kind) for e in evokeds],
        "evoked_baseline": [None if e.baseline is None else _json_float_list(e.baseline) for e in evokeds],
        **(info_extra or {}),
    }
    data = np.stack([e.data for e in evokeds])
    return _recording_data(
        name="recording_from_evoked", inst=evokeds[0], data=data, layout="epoched", events=events,
        stimulus_ids=stimulus_ids, options=options, labels=labels, source=source, steps=steps, personal=personal,
        original_sfreq=original_sfreq, info_extra=extra,
    )
