"""Stored recordings back out as MNE objects (and fMRI trials as NIfTI volumes)."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np

from neurodec.errors import ConfigError


def _fields(recording) -> dict[str, Any]:
    """The same fields from a store ``Recording`` or an in-memory ``RecordingData``."""
    data = recording.data
    return {
        "layout": recording.layout,
        "data": np.asarray(data[...] if hasattr(data, "shape") and not isinstance(data, np.ndarray) else data),
        "events": recording.events,
        "sfreq": recording.sfreq,
        "tmin": recording.tmin,
        "ch_names": list(recording.ch_names),
        "ch_types": list(recording.ch_types),
        "bads": list(recording.attrs.get("bads", [])) if hasattr(recording, "attrs") else list(recording.bads),
        "info": dict(recording.attrs.get("info", {})) if hasattr(recording, "attrs") else dict(recording.info),
        "key": recording.key,
    }


def _mne_info(fields: dict[str, Any]):
    import mne
    from mne.transforms import Transform

    info = mne.create_info(fields["ch_names"], fields["sfreq"], fields["ch_types"], verbose="error")
    stored = fields["info"]
    locations = stored.get("ch_loc")
    coil_types = stored.get("coil_types")
    coord_frames = stored.get("coord_frames")
    for index, channel in enumerate(info["chs"]):
        if locations is not None:
            channel["loc"][:] = [math.nan if v is None else v for v in locations[index]]
        if coil_types is not None:
            channel["coil_type"] = int(coil_types[index])
        if coord_frames is not None:
            channel["coord_frame"] = int(coord_frames[index])
    if stored.get("dev_head_t") is not None:
        info["dev_head_t"] = Transform("meg", "head", np.asarray(stored["dev_head_t"]))
    if stored.get("line_freq") is not None:
        info["line_freq"] = float(stored["line_freq"])
    info["bads"] = [b for b in fields["bads"] if b in fields["ch_names"]]
    if stored.get("highpass") is not None or stored.get("lowpass") is not None:
        # MNE allows these only through its filters; restoring recorded values is not a new filter.
        with info._unlock():
            if stored.get("highpass") is not None:
                info["highpass"] = float(stored["highpass"])
            if stored.get("lowpass") is not None:
                info["lowpass"] = min(float(stored["lowpass"]), fields["sfreq"] / 2)
    if stored.get("meas_date"):
        info.set_meas_date(datetime.fromisoformat(stored["meas_date"]))
    if stored.get("subject_info"):
        subject_info = dict(stored["subject_info"])
        if isinstance(subject_info.get("birthday"), str):
            subject_info["birthday"] = date.fromisoformat(subject_info["birthday"])
        info["subject_info"] = subject_info
    return info


def to_mne(recording):
    """A store recording (or ``RecordingData``) as an MNE object.

    Continuous recordings become ``mne.io.RawArray`` with one annotation per event
    (description = stimulus id); epoched ones ``mne.EpochsArray`` with ``event_id`` from the
    stimulus ids and ``metadata`` (stimulus_id, repetition, value, onset). Channel names,
    types, sampling frequency, sensor locations (the 12-value ``loc``) and MEG coil types
    are restored. fMRI recordings have no MNE form: see :func:`to_nifti`.

    >>> raw = to_mne(open_store("study.zarr").recording(subject="01"))   # doctest: +SKIP
    >>> raw.annotations.description[:2]                                  # doctest: +SKIP
    array(['cat', 'dog'], dtype='<U3')
    """
    import mne

    fields = _fields(recording)
    if fields["layout"] == "fmri":
        raise ConfigError(f"recording {fields['key']}: fMRI recordings have no MNE form; use neurodec.io.to_nifti")
    info = _mne_info(fields)
    data = fields["data"].astype(np.float64)
    events = fields["events"]
    stimulus_ids = events["stimulus_id"].tolist()
    if fields["layout"] == "continuous":
        raw = mne.io.RawArray(data, info, verbose="error")
        if events.n_rows:
            raw.set_annotations(
                mne.Annotations(
                    onset=events["sample"] / fields["sfreq"],
                    duration=events["duration"],
                    description=stimulus_ids,
                    orig_time=raw.info["meas_date"],
                ),
                verbose="error",
            )
        return raw

    import pandas as pd

    event_id = {s: code for code, s in enumerate(sorted(set(stimulus_ids)), start=1)}
    onsets = events["onset"]
    samples = np.round(onsets * fields["sfreq"]).astype(np.int64) if np.all(np.isfinite(onsets)) else None
    if samples is None or len(np.unique(samples)) != len(samples):
        samples = np.arange(len(stimulus_ids), dtype=np.int64)
    mne_events = np.c_[samples, np.zeros(len(samples), dtype=np.int64), [event_id[s] for s in stimulus_ids]]
    metadata = pd.DataFrame(
        {
            "stimulus_id": stimulus_ids,
            "repetition": events["repetition"],
            "value": events["value"].tolist(),
            "onset": onsets,
        }
    )
    return mne.EpochsArray(
        data, info, events=mne_events, tmin=fields["tmin"], event_id=event_id, metadata=metadata, verbose="error"
    )


def to_nifti(recording):
    """fMRI trials back into volumes: a 4D ``nibabel.Nifti1Image`` (mask grid x trials), zero
    outside the mask.

    >>> to_nifti(open_store("study.zarr").recordings(modality="fmri")[0]).shape   # doctest: +SKIP
    (64, 64, 40, 120)
    """
    import nibabel

    if recording.layout != "fmri":
        raise ConfigError(f"recording {recording.key}: to_nifti needs an fMRI recording, found {recording.layout!r}")
    mask = np.asarray(recording.mask, dtype=bool)
    data = np.asarray(recording.data[...], dtype=np.float32)
    volumes = np.zeros(mask.shape + (data.shape[0],), dtype=np.float32)
    ijk = np.asarray(recording.voxel_ijk)
    volumes[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = data.T
    return nibabel.Nifti1Image(volumes, np.asarray(recording.affine))
