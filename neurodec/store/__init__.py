"""The study store: a versioned zarr v3 layout for recordings, stimuli and targets.

This sub-package depends only on numpy and zarr (fsspec for remote URLs); see
``docs/store-format.md`` for the layout.
"""

from neurodec.store._table import Table
from neurodec.store.records import (
    EVENT_COLUMNS,
    LAYOUTS,
    MODALITIES,
    STIMULUS_COLUMNS,
    STIMULUS_KINDS,
    RecordingData,
    event_table,
    recording_key,
    stimulus_table,
)
from neurodec.store.summary import format_summary, summarize
from neurodec.store.study import (
    FORMAT_VERSION,
    Recording,
    StoreWriter,
    Study,
    config_hash,
    open_store,
)

__all__ = [
    "EVENT_COLUMNS",
    "FORMAT_VERSION",
    "LAYOUTS",
    "MODALITIES",
    "STIMULUS_COLUMNS",
    "STIMULUS_KINDS",
    "Recording",
    "RecordingData",
    "StoreWriter",
    "Study",
    "Table",
    "config_hash",
    "event_table",
    "open_store",
    "recording_key",
    "stimulus_table",
    "format_summary",
    "summarize",
]
