"""In-memory descriptions of what goes into a store: stimuli, recordings, events.

These are plain numpy containers, checked when built, so that a converter (``neurodec.io``)
or the simulator fails early with a clear message instead of leaving a half-valid store.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from neurodec.errors import InvalidDataError, StoreSchemaError
from neurodec.store._table import Table

STIMULUS_KINDS = ("image", "audio", "video", "shape", "text")
SPLITS = ("train", "test", "")
LAYOUTS = ("continuous", "epoched", "fmri")
MODALITIES = ("eeg", "meg", "ieeg", "fmri")
STIMULUS_COLUMNS = ("id", "kind", "category", "split", "uri", "metadata", "content_array", "content_index")
EVENT_COLUMNS = ("sample", "onset", "duration", "stimulus_id", "repetition", "value")


def stimulus_table(
    ids: list[str] | np.ndarray,
    kind: str | list[str],
    category: list[str] | np.ndarray | None = None,
    split: list[str] | np.ndarray | None = None,
    uri: list[str] | np.ndarray | None = None,
    metadata: list[Mapping[str, Any]] | None = None,
    content_array: list[str] | np.ndarray | None = None,
    content_index: list[int] | np.ndarray | None = None,
) -> Table:
    """Build and check the stimuli table (see ``docs/store-format.md``).

    ``content_array`` names an array under ``stimuli/content/`` and ``content_index`` the
    row in it that holds this stimulus (``""`` and ``-1`` when the stimulus lives at ``uri``).
    """
    n = len(ids)

    def column(values, default):
        if values is None:
            return [default] * n
        if isinstance(values, str):
            return [values] * n
        return list(values)

    def strings(values) -> np.ndarray:
        return np.asarray([str(v) for v in values], dtype=str)

    table = Table(
        {
            "id": strings(ids),
            "kind": strings(column(kind, "image")),
            "category": strings(column(category, "")),
            "split": strings(column(split, "")),
            "uri": strings(column(uri, "")),
            "metadata": strings(json.dumps(dict(m), sort_keys=True) for m in column(metadata, {})),
            "content_array": strings(column(content_array, "")),
            "content_index": np.asarray(column(content_index, -1), dtype=np.int64),
        }
    )
    check_stimulus_table(table, where="stimuli table")
    return table


def check_stimulus_table(table: Table, where: str) -> None:
    missing = [c for c in STIMULUS_COLUMNS if c not in table]
    if missing:
        raise StoreSchemaError(f"{where}: missing columns {missing}; expected {list(STIMULUS_COLUMNS)}")
    ids = table["id"]
    repeated = sorted(i for i, count in Counter(ids.tolist()).items() if count > 1)
    if repeated:
        raise StoreSchemaError(f"{where}: stimulus ids must be unique; repeated: {repeated[:5]}")
    if any(i == "" for i in ids.tolist()):
        raise StoreSchemaError(f"{where}: a stimulus id is empty")
    bad_kinds = sorted(set(table["kind"].tolist()) - set(STIMULUS_KINDS))
    if bad_kinds:
        raise StoreSchemaError(f"{where}: column 'kind' expected one of {STIMULUS_KINDS}, found {bad_kinds}")
    bad_splits = sorted(set(table["split"].tolist()) - set(SPLITS))
    if bad_splits:
        raise StoreSchemaError(f"{where}: column 'split' expected one of {SPLITS}, found {bad_splits}")


def event_table(
    stimulus_id: list[str] | np.ndarray,
    sample: list[int] | np.ndarray | None = None,
    onset: list[float] | np.ndarray | None = None,
    duration: list[float] | np.ndarray | None = None,
    repetition: list[int] | np.ndarray | None = None,
    value: list[str] | np.ndarray | None = None,
) -> Table:
    """Events of one recording: one row per trial (epoched, fMRI) or per onset (continuous).

    ``sample`` is the onset in samples of the stored continuous array (``-1`` where the
    recording is stored as trials); ``onset`` the time in seconds in the source recording.
    ``repetition`` counts earlier presentations of the same stimulus to this subject; when
    not given it is derived in order of appearance.
    """
    ids = [str(s) for s in stimulus_id]
    n = len(ids)
    if repetition is None:
        counts: dict[str, int] = {}
        repetition = []
        for s in ids:
            repetition.append(counts.get(s, 0))
            counts[s] = counts.get(s, 0) + 1
    return Table(
        {
            "sample": np.asarray(sample if sample is not None else [-1] * n, dtype=np.int64),
            "onset": np.asarray(onset if onset is not None else [math.nan] * n, dtype=np.float64),
            "duration": np.asarray(duration if duration is not None else [0.0] * n, dtype=np.float64),
            "stimulus_id": np.asarray(ids, dtype=str),
            "repetition": np.asarray(repetition, dtype=np.int64),
            "value": np.asarray([str(v) for v in (value if value is not None else [""] * n)], dtype=str),
        }
    )


@dataclass
class RecordingData:
    """One recording (subject / session / run) ready to be written to a store.

    ``layout`` is ``"continuous"`` (``data``: channels x times), ``"epoched"`` (trials x
    channels x times, ``tmin`` the time of the first sample relative to the event) or
    ``"fmri"`` (trials x voxels, with ``mask``, ``affine`` and ``voxel_ijk``).
    Values are in SI units (V, T, T/m), as MNE holds them.
    """

    subject: str
    modality: str
    layout: str
    data: np.ndarray
    events: Table
    session: str = "01"
    run: str = "01"
    task: str = ""
    sfreq: float | None = None
    tmin: float = 0.0
    ch_names: list[str] = field(default_factory=list)
    ch_types: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    sensor_positions: np.ndarray | None = None
    bads: list[str] = field(default_factory=list)
    preprocessing: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    converter: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    voxel_ijk: np.ndarray | None = None

    @property
    def key(self) -> str:
        return recording_key(self.subject, self.session, self.run)

    def validate(self) -> None:
        """Check shapes, names and values; raise with the field that is wrong."""
        where = f"recording {self.key}"
        for name, label in (("subject", self.subject), ("session", self.session), ("run", self.run)):
            if not label or "/" in label or label.startswith("."):
                raise StoreSchemaError(f"{where}: {name} label {label!r} must be non-empty without '/'")
        if self.layout not in LAYOUTS:
            raise StoreSchemaError(f"{where}: layout expected one of {LAYOUTS}, found {self.layout!r}")
        if self.modality not in MODALITIES:
            raise StoreSchemaError(f"{where}: modality expected one of {MODALITIES}, found {self.modality!r}")
        expected_ndim = {"continuous": 2, "epoched": 3, "fmri": 2}[self.layout]
        if self.data.ndim != expected_ndim:
            raise StoreSchemaError(
                f"{where}: data of layout {self.layout!r} must have {expected_ndim} dimensions, "
                f"found shape {self.data.shape}"
            )
        if not np.all(np.isfinite(self.data)):
            bad = int(np.size(self.data) - np.count_nonzero(np.isfinite(self.data)))
            raise InvalidDataError(f"{where} (source {self.source.get('file', '?')}): {bad} samples are NaN or Inf")
        if self.layout == "fmri":
            self._validate_fmri(where)
        else:
            self._validate_sensors(where)
        n_events = self.events.n_rows
        if self.layout in ("epoched", "fmri") and n_events != self.data.shape[0]:
            raise StoreSchemaError(
                f"{where}: {self.data.shape[0]} trials but {n_events} event rows; expected one row per trial"
            )
        if self.layout == "continuous" and n_events:
            samples = self.events["sample"]
            outside = (samples < 0) | (samples >= self.data.shape[1])
            if outside.any():
                raise StoreSchemaError(
                    f"{where}: {int(outside.sum())} event onsets fall outside the recording "
                    f"(samples 0..{self.data.shape[1] - 1}), e.g. sample {int(samples[outside][0])}"
                )

    def _validate_sensors(self, where: str) -> None:
        if not self.sfreq or self.sfreq <= 0:
            raise StoreSchemaError(f"{where}: sfreq must be a positive number, found {self.sfreq!r}")
        n_channels = self.data.shape[-2]
        for name in ("ch_names", "ch_types", "units"):
            values = getattr(self, name)
            if len(values) != n_channels:
                raise StoreSchemaError(f"{where}: {name} has {len(values)} entries, data have {n_channels} channels")
        if len(set(self.ch_names)) != n_channels:
            raise StoreSchemaError(f"{where}: channel names are not unique")
        if self.sensor_positions is not None and np.shape(self.sensor_positions) != (n_channels, 3):
            raise StoreSchemaError(
                f"{where}: sensor_positions expected shape ({n_channels}, 3), found {np.shape(self.sensor_positions)}"
            )

    def _validate_fmri(self, where: str) -> None:
        n_voxels = self.data.shape[1]
        if self.mask is None or self.affine is None or self.voxel_ijk is None:
            raise StoreSchemaError(f"{where}: fMRI recordings need mask, affine and voxel_ijk")
        if np.shape(self.affine) != (4, 4):
            raise StoreSchemaError(f"{where}: affine expected shape (4, 4), found {np.shape(self.affine)}")
        if np.shape(self.voxel_ijk) != (n_voxels, 3):
            raise StoreSchemaError(
                f"{where}: voxel_ijk expected shape ({n_voxels}, 3), found {np.shape(self.voxel_ijk)}"
            )
        if int(np.count_nonzero(self.mask)) != n_voxels:
            raise StoreSchemaError(
                f"{where}: mask holds {int(np.count_nonzero(self.mask))} voxels, data have {n_voxels}"
            )


def recording_key(subject: str, session: str = "01", run: str = "01") -> str:
    """The store's name for one recording: ``sub-<subject>/ses-<session>/run-<run>``."""
    return f"sub-{subject}/ses-{session}/run-{run}"
