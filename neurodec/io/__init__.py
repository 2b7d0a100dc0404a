"""Native recordings into the study store, and back out to MNE objects.

One entry point, :func:`ingest`, turns files (anything ``mne.io.read_raw``,
``mne.read_epochs``, ``mne.read_evokeds`` or nibabel reads) or a BIDS folder into a store;
the lower-level functions do one recording at a time from a notebook::

    from neurodec.io import ingest, read_recording, recording_from_raw, to_mne

    study = ingest(["sub-01_eeg.edf"], "study.zarr", options={"stimuli": "stimuli.tsv"})
    raw = to_mne(study.recording(subject="01"))

MNE, mne-bids, nibabel and nilearn are imported inside the functions that use them, so
importing this package stays light. See ``docs/ingestion.md``.
"""

from neurodec.io.events import (
    EventList,
    StimulusMapping,
    events_from_annotations,
    events_from_array,
    events_from_stim,
    read_events_file,
)
from neurodec.io.export import to_mne, to_nifti
from neurodec.io.ingest import check_channel_sets, ingest, read_bids_recording, read_native, read_recording
from neurodec.io.meeg import (
    recording_from_epochs,
    recording_from_evoked,
    recording_from_raw,
    sensor_positions,
)
from neurodec.io.nifti import load_mask, recording_from_nifti
from neurodec.io.options import (
    BandPassOptions,
    EpochOptions,
    EventOptions,
    FmriOptions,
    IngestOptions,
    PreprocessingOptions,
    load_options,
    options_from_flags,
)

__all__ = [
    "BandPassOptions",
    "EpochOptions",
    "EventList",
    "EventOptions",
    "FmriOptions",
    "IngestOptions",
    "PreprocessingOptions",
    "StimulusMapping",
    "check_channel_sets",
    "events_from_annotations",
    "events_from_array",
    "events_from_stim",
    "ingest",
    "load_mask",
    "load_options",
    "options_from_flags",
    "read_bids_recording",
    "read_events_file",
    "read_native",
    "read_recording",
    "recording_from_epochs",
    "recording_from_evoked",
    "recording_from_nifti",
    "recording_from_raw",
    "sensor_positions",
    "to_mne",
    "to_nifti",
]
