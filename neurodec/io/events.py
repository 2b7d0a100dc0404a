"""Events of a recording and the stimuli they name.

Events come from MNE annotations, a stim channel (``mne.find_events``), a BIDS
``events.tsv``, or an event array file (``*-eve.fif``, MNE text ``.eve``, ``.npy``, TSV/CSV).
Whatever the origin, they are held as an :class:`EventList`: one row per event with the
sample counted from the first sample of the source recording (``raw.times`` origin), the
onset in seconds on the same origin, the duration, a ``trial_type`` and a ``value``.

A :class:`StimulusMapping` then names the stimulus of each event, either from a user table
(``value`` or ``trial_type`` -> ``stimulus_id``, with optional ``category``, ``split``,
``kind``, ``uri``) or from a rule (a format template such as ``"{trial_type}"``).
"""

from __future__ import annotations

import logging
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from neurodec.errors import ConfigError, EventError
from neurodec.io._files import read_with
from neurodec.store import Table, stimulus_table
from neurodec.store.records import SPLITS, STIMULUS_KINDS

logger = logging.getLogger("neurodec")

# Event fields a stimuli table may be keyed on (its other columns: stimulus_id, and
# optionally category, split, kind, uri).
_TABLE_KEYS = ("trial_type", "value")


@dataclass
class EventList:
    """Events in source coordinates; ``sample`` is ``-1`` where only the onset is known."""

    sample: np.ndarray
    onset: np.ndarray
    duration: np.ndarray
    trial_type: np.ndarray
    value: np.ndarray
    origin: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, sample=None, onset=None, duration=None, trial_type=None, value=None, origin="", extra=None):
        n = len(next((v for v in (sample, onset, trial_type, value) if v is not None), []))
        if trial_type is None and value is None:
            trial_type = value = [""] * n
        return cls(
            sample=np.asarray(sample if sample is not None else [-1] * n, dtype=np.int64).reshape(n),
            onset=np.asarray(onset if onset is not None else [math.nan] * n, dtype=np.float64).reshape(n),
            duration=np.asarray(duration if duration is not None else [0.0] * n, dtype=np.float64).reshape(n),
            trial_type=np.asarray([str(t) for t in (trial_type if trial_type is not None else value)], dtype=object),
            value=np.asarray([str(v) for v in (value if value is not None else trial_type)], dtype=object),
            origin=origin,
            extra={k: np.asarray(v, dtype=object) for k, v in (extra or {}).items()},
        )

    @classmethod
    def empty(cls, origin: str = "") -> "EventList":
        return cls.build(sample=[], origin=origin)

    def __len__(self) -> int:
        return len(self.sample)

    def select(self, rows) -> "EventList":
        return EventList(
            sample=self.sample[rows],
            onset=self.onset[rows],
            duration=self.duration[rows],
            trial_type=self.trial_type[rows],
            value=self.value[rows],
            origin=self.origin,
            extra={k: v[rows] for k, v in self.extra.items()},
        )

    def fields(self, row: int) -> dict[str, Any]:
        """The values a naming rule may use for one event."""
        out = {
            "trial_type": self.trial_type[row],
            "value": self.value[row],
            "sample": int(self.sample[row]),
            "onset": float(self.onset[row]),
            "duration": float(self.duration[row]),
        }
        out.update({k: v[row] for k, v in self.extra.items()})
        return out

    def with_samples_from_onsets(self, sfreq: float) -> "EventList":
        """Fill ``sample`` from ``onset`` where it is unknown (BIDS onsets are seconds)."""
        sample = self.sample.copy()
        unknown = sample < 0
        sample[unknown] = np.round(self.onset[unknown] * sfreq).astype(np.int64)
        onset = self.onset.copy()
        no_onset = ~np.isfinite(onset)
        onset[no_onset] = sample[no_onset] / sfreq
        return EventList(sample, onset, self.duration, self.trial_type, self.value, self.origin, self.extra)


# ------------------------------------------------------------------ extraction
def events_from_annotations(raw) -> EventList:
    """Every annotation of a raw as an event; the sample is MNE's own conversion
    (``raw.time_as_index`` with the annotations' origin, as ``mne.events_from_annotations``).

    >>> events = events_from_annotations(raw)      # doctest: +SKIP
    >>> events.trial_type[:2]                      # doctest: +SKIP
    array(['T0', 'T1'], dtype=object)
    """
    annotations = raw.annotations
    if len(annotations) == 0:
        return EventList.empty(origin="annotations")
    sample = raw.time_as_index(annotations.onset, use_rounding=True, origin=annotations.orig_time)
    sfreq = raw.info["sfreq"]
    descriptions = [str(d) for d in annotations.description]
    return EventList.build(
        sample=sample,
        onset=np.asarray(sample) / sfreq,
        duration=annotations.duration,
        trial_type=descriptions,
        value=descriptions,
        origin="annotations",
    )


def events_from_stim(raw, stim_channel: str | list[str] | None = None, shortest_event: int = 2) -> EventList:
    """Events of a stim channel found by ``mne.find_events`` (value = trigger code)."""
    import mne

    try:
        array = mne.find_events(
            raw, stim_channel=stim_channel, shortest_event=shortest_event, initial_event=True, verbose="error"
        )
    except ValueError as error:
        raise EventError(f"{_raw_name(raw)}: no stim channel events ({error})") from None
    return events_from_array(array, sfreq=raw.info["sfreq"], first_samp=raw.first_samp, origin="stim channel")


def events_from_array(array: np.ndarray, sfreq: float, first_samp: int = 0, origin: str = "event array") -> EventList:
    """An MNE event array (sample incl. ``first_samp``, previous value, value) as events.

    Rows of value 0 are dropped: in an MNE event array 0 marks the return of a trigger
    line to rest (the end of a step), not an event.
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != 3:
        raise EventError(f"{origin}: an MNE event array has 3 columns (sample, previous, value), found shape {array.shape}")
    array = array[array[:, 2] != 0]
    sample = array[:, 0].astype(np.int64) - int(first_samp)
    values = [str(int(v)) for v in array[:, 2]]
    return EventList.build(sample=sample, onset=sample / sfreq, trial_type=values, value=values, origin=origin)


def read_events_file(path: str | Path, *, sfreq: float | None = None, first_samp: int = 0) -> EventList:
    """Events from a file: BIDS-like TSV/CSV (``onset`` [, ``duration``, ``trial_type``,
    ``value``, ``sample``]), an MNE event file (``*-eve.fif``, text ``.eve``/``.txt``/``.lst``)
    or a ``.npy`` MNE event array. MNE event arrays count samples from the acquisition start,
    so ``first_samp`` of the recording they belong to is subtracted.

    >>> events = read_events_file("sub-01_task-x_events.tsv", sfreq=600.0)   # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.name.lower()
    if suffix.endswith((".tsv", ".csv")):
        events = _read_events_table(path)
        return events.with_samples_from_onsets(sfreq) if sfreq else events
    if sfreq is None:
        raise ConfigError(f"events file {path}: an event array needs the recording's sampling frequency")
    if suffix.endswith(".npy"):
        array = read_with(lambda: np.load(path), path, "a numpy event array")
    else:
        import mne

        array = read_with(lambda: mne.read_events(path, verbose="error"), path, "an MNE event file")
    return events_from_array(array, sfreq=sfreq, first_samp=first_samp, origin=f"events file {path.name}")


def _read_events_table(path: Path) -> EventList:
    import pandas as pd

    separator = "," if path.name.lower().endswith(".csv") else "\t"
    table = read_with(
        lambda: pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig"),
        path,
        "an events table",
    )
    if "onset" not in table.columns and "sample" not in table.columns:
        raise EventError(f"events file {path}: needs an 'onset' (seconds) or 'sample' column, found {list(table.columns)}")

    def numbers(column: str, default: float) -> np.ndarray:
        if column not in table.columns:
            return np.full(len(table), default)
        text = table[column].replace({"n/a": "nan", "": "nan"})
        try:
            return text.astype(float).to_numpy()
        except ValueError as error:
            raise EventError(f"events file {path}: column {column!r} must hold numbers ({error})") from None

    onset = numbers("onset", math.nan)
    samples = numbers("sample", math.nan)
    # BIDS: onset is the primary time; a "sample" column is only trusted where given.
    sample = np.where(np.isfinite(samples), samples, -1).astype(np.int64)
    if "sample" in table.columns and "onset" in table.columns:
        sample[:] = -1
    duration = np.nan_to_num(numbers("duration", 0.0), nan=0.0)
    value = table["value"].tolist() if "value" in table.columns else None
    trial_type = table["trial_type"].tolist() if "trial_type" in table.columns else None
    if value is None and trial_type is None:
        raise EventError(f"events file {path}: needs a 'trial_type' or 'value' column, found {list(table.columns)}")
    extra = {c: table[c].tolist() for c in table.columns if c not in ("onset", "duration", "sample", "trial_type", "value")}
    return EventList.build(
        sample=sample, onset=onset, duration=duration, trial_type=trial_type, value=value,
        origin=f"events file {path.name}", extra=extra,
    )


def _raw_name(raw) -> str:
    filenames = [f for f in getattr(raw, "filenames", []) if f]
    return Path(filenames[0]).name if filenames else "recording"


# ------------------------------------------------------------------ naming stimuli
@dataclass
class StimulusInfo:
    kind: str
    category: str = ""
    split: str = ""
    uri: str = ""


class StimulusMapping:
    """Names the stimulus of each event, from a table or a rule, and builds the stimuli table.

    >>> mapping = StimulusMapping.from_rule("{trial_type}", kind="image")
    >>> events = EventList.build(sample=[10, 20], trial_type=["cat", "dog"])
    >>> mapping.assign(events, where="demo")[1].tolist()
    ['cat', 'dog']
    """

    def __init__(self, *, rule: str | None, table: dict[str, dict[str, str]] | None, key: str | None,
                 stimuli: dict[str, StimulusInfo], kind: str, ignore: Iterable[str] = (),
                 unmapped: str = "error", where: str = ""):
        self.rule = rule
        self.table = table
        self.key = key
        self.stimuli = stimuli  # id -> info, in first-seen order
        self.kind = kind
        self.ignore = {str(i) for i in ignore}
        self.unmapped = unmapped
        self.where = where

    @classmethod
    def from_rule(cls, rule: str, kind: str = "image", ignore: Iterable[str] = (), unmapped: str = "error"):
        fields = [name for _, name, _, _ in string.Formatter().parse(rule) if name]
        if not fields:
            raise ConfigError(f"events.rule {rule!r}: a rule needs at least one field such as {{trial_type}} or {{value}}")
        return cls(rule=rule, table=None, key=None, stimuli={}, kind=kind, ignore=ignore, unmapped=unmapped,
                   where=f"rule {rule!r}")

    @classmethod
    def from_table(cls, path: str | Path, kind: str = "image", ignore: Iterable[str] = (), unmapped: str = "error"):
        """Read a TSV/CSV table with a ``value`` or ``trial_type`` column and ``stimulus_id``."""
        import pandas as pd

        path = Path(path)
        separator = "," if path.name.lower().endswith(".csv") else "\t"
        frame = read_with(
            lambda: pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig"),
            path,
            "a stimuli table",
        )
        key = next((k for k in _TABLE_KEYS if k in frame.columns), None)
        if key is None or "stimulus_id" not in frame.columns:
            raise ConfigError(
                f"stimuli table {path}: expected columns 'stimulus_id' and one of {list(_TABLE_KEYS)}, "
                f"found {list(frame.columns)}"
            )
        table: dict[str, dict[str, str]] = {}
        stimuli: dict[str, StimulusInfo] = {}
        for row_number, row in enumerate(frame.to_dict("records"), start=2):
            event_key, stimulus_id = row[key].strip(), row["stimulus_id"].strip()
            if not stimulus_id:
                raise ConfigError(f"stimuli table {path} line {row_number}: stimulus_id is empty")
            if event_key in table and table[event_key]["stimulus_id"] != stimulus_id:
                raise ConfigError(
                    f"stimuli table {path} line {row_number}: {key} {event_key!r} is mapped twice "
                    f"({table[event_key]['stimulus_id']!r} and {stimulus_id!r})"
                )
            for column, allowed in (("kind", STIMULUS_KINDS), ("split", SPLITS)):
                if row.get(column) and row[column] not in allowed:
                    raise ConfigError(
                        f"stimuli table {path} line {row_number}: {column} {row[column]!r} is not one of {allowed}"
                    )
            table[event_key] = row
            info = StimulusInfo(
                kind=row.get("kind") or kind,
                category=row.get("category", ""),
                split=row.get("split", ""),
                uri=row.get("uri", ""),
            )
            stimuli.setdefault(stimulus_id, info)
        return cls(rule=None, table=table, key=key, stimuli=stimuli, kind=kind, ignore=ignore, unmapped=unmapped,
                   where=f"stimuli table {path}")

    @classmethod
    def from_options(cls, options) -> "StimulusMapping":
        events = options.events
        if options.stimuli is not None:
            return cls.from_table(options.stimuli, kind=options.kind, ignore=events.ignore, unmapped=events.unmapped)
        return cls.from_rule(events.rule, kind=options.kind, ignore=events.ignore, unmapped=events.unmapped)

    def assign(self, events: EventList, where: str) -> tuple[EventList, np.ndarray, np.ndarray]:
        """The events kept, the stimulus id of each, and their row numbers in ``events``.

        Raises EventError for events the table does not name (unless ``unmapped="drop"``).
        """
        rows = np.arange(len(events))
        if len(events) == 0:
            return events, np.asarray([], dtype=str), rows
        ignored = np.asarray(
            [t in self.ignore or v in self.ignore for t, v in zip(events.trial_type, events.value)], dtype=bool
        )
        events, rows = events.select(~ignored), rows[~ignored]
        ids = [self._name(events, row) for row in range(len(events))]
        missing = [i for i, s in enumerate(ids) if s is None]
        if missing:
            unknown = sorted({str(events.fields(i)[self.key]) for i in missing})
            if self.unmapped == "error":
                raise EventError(
                    f"{where}: {len(missing)} events ({events.origin}) name stimuli that the {self.where} does not "
                    f"list: {self.key} {unknown[:8]}; add them to the table, list them in events.ignore, or set "
                    f"events.unmapped='drop'"
                )
            logger.info("%s: dropping %d events not in the %s: %s", where, len(missing), self.where, unknown[:8])
            keep = np.asarray([s is not None for s in ids], dtype=bool)
            events, rows = events.select(keep), rows[keep]
            ids = [s for s in ids if s is not None]
        empty = [i for i, s in enumerate(ids) if not s]
        if empty:
            raise EventError(f"{where}: the {self.where} gives an empty stimulus id for event {events.fields(empty[0])}")
        if self.rule is not None:
            for stimulus_id in ids:
                self.stimuli.setdefault(stimulus_id, StimulusInfo(kind=self.kind))
        return events, np.asarray(ids, dtype=str), rows

    def _name(self, events: EventList, row: int) -> str | None:
        fields = events.fields(row)
        if self.table is not None:
            entry = self.table.get(str(fields[self.key]).strip())
            return entry["stimulus_id"] if entry is not None else None
        try:
            return self.rule.format(**fields)
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"events.rule {self.rule!r}: cannot fill it from an event of {events.origin} ({error}); "
                f"fields available: {sorted(fields)}"
            ) from None

    def stimulus_table(self, used_ids: Iterable[str] | None = None) -> Table:
        """The store's stimuli table: every stimulus of the table, or those the rule named."""
        ids = list(self.stimuli)
        if used_ids is not None and self.rule is not None:
            used = set(used_ids)
            ids = [s for s in ids if s in used]
        infos = [self.stimuli[s] for s in ids]
        return stimulus_table(
            ids,
            kind=[i.kind for i in infos],
            category=[i.category for i in infos],
            split=[i.split for i in infos],
            uri=[i.uri for i in infos],
        )


def event_rows(events: EventList, stimulus_ids: np.ndarray, sample: np.ndarray | None = None) -> Table:
    """The store's event table of a recording; ``onset`` is seconds from the source's first sample."""
    from neurodec.store import event_table

    return event_table(
        stimulus_id=stimulus_ids,
        sample=sample,
        onset=events.onset,
        duration=events.duration,
        value=events.value,
    )


def check_events_inside(events: EventList, n_times: int, where: str) -> None:
    """Events from a file must fall inside the recording they are given for."""
    if len(events) == 0:
        return
    outside = (events.sample < 0) | (events.sample >= n_times)
    if outside.all():
        raise EventError(
            f"{where}: all {len(events)} events of {events.origin} fall outside the recording (samples "
            f"{int(events.sample.min())}..{int(events.sample.max())} from its first sample; it has {n_times}); "
            f"the events belong to another recording"
        )
    if outside.any():
        raise EventError(
            f"{where}: {int(outside.sum())} of {len(events)} events of {events.origin} fall outside the recording "
            f"(e.g. sample {int(events.sample[outside][0])}; it has {n_times} samples)"
        )
