"""Train / validation / test splits that cannot leak.

Two ways to hold data out:

* by stimulus (:func:`split_stimuli`): the stimuli table's ``split`` column names the test
  stimuli (THINGS-EEG2's 200 test images, NSD's shared 1000); no trial of a test stimulus
  is ever in training, whichever subject or session it comes from;
* by time (:func:`split_runs`): whole runs, or the last part of each recording, are held
  out (MEG-MASC stories, where a word may recur in training and test runs).

In both, the validation part is drawn from the training part by stimulus (seeded), so model
selection never sees a test trial. Every split is checked when made: an empty part or a
stimulus (or event) in two parts raises :class:`~neurodec.errors.SplitError`.

>>> splits = split_stimuli("study.zarr", val_fraction=0.1, seed=0)           # doctest: +SKIP
>>> train = TrialDataset("study.zarr", **splits.selection("train"))          # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from neurodec.errors import ConfigError, SplitError
from neurodec.store import Study, open_store

PARTS = ("train", "val", "test")


def _study(store: Study | str | os.PathLike) -> Study:
    return store if isinstance(store, Study) else open_store(store)


def _recordings(study: Study, recordings: Sequence[str] | None):
    keys = study.recording_keys if recordings is None else list(recordings)
    return [study.recording(key) for key in keys]


def _draw_validation(stimuli: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """A seeded sample of ``val_fraction`` of the given stimuli (at least one when > 0)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), found {val_fraction}")
    if val_fraction == 0:
        return np.asarray([], dtype=str)
    n_val = max(1, int(round(val_fraction * len(stimuli))))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.sort(stimuli), size=min(n_val, len(stimuli)), replace=False))


@dataclass(frozen=True)
class Splits:
    """Stimulus ids of each part (sorted arrays); see :func:`split_stimuli`."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        check_no_leakage(self.train, self.test, val=self.val, allow_empty_val=True)

    def selection(self, part: str) -> dict[str, Any]:
        """Keyword arguments that restrict a dataset to one part: ``{"stimuli": ids}``."""
        if part not in PARTS:
            raise ConfigError(f"split part expected one of {PARTS}, found {part!r}")
        return {"stimuli": getattr(self, part)}


@dataclass(frozen=True)
class EventSplits:
    """Event rows of each part, per recording key; see :func:`split_runs`."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        parts = {part: {(k, int(r)) for k, rows in getattr(self, part).items() for r in rows} for part in PARTS}
        for part in ("train", "test"):
            if not parts[part]:
                raise SplitError(f"split {part!r} is empty: no event falls into it")
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            shared = parts[a] & parts[b]
            if shared:
                raise SplitError(f"splits {a!r} and {b!r} share {len(shared)} events, e.g. {sorted(shared)[:3]}")

    def selection(self, part: str) -> dict[str, Any]:
        """Keyword arguments that restrict a dataset to one part: ``{"events": {key: rows}}``."""
        if part not in PARTS:
            raise ConfigError(f"split part expected one of {PARTS}, found {part!r}")
        return {"events": getattr(self, part)}


def split_stimuli(
    store: Study | str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    recordings: Sequence[str] | None = None,
    test_fraction: float | None = None,
    val_groups: str | None = None,
) -> Splits:
    """Split the stimuli shown in ``recordings`` (default: all) into train, val and test.

    Test stimuli are those whose ``split`` column is ``"test"`` (or, with ``test_fraction``,
    a seeded random fraction of all stimuli, for stores whose table marks none). The
    others (``"train"`` or unassigned ``""``) form the training pool, from which
    ``val_fraction`` of the stimuli are drawn with ``seed`` for validation. With
    ``val_groups`` (a field of the stimuli's metadata, e.g. ``"block"`` of speech
    segments), validation takes ``val_fraction`` of the groups instead, whole.

    >>> splits = split_stimuli(study, val_fraction=0.1, seed=0)       # doctest: +SKIP
    >>> len(set(splits.train) & set(splits.test))                     # doctest: +SKIP
    0
    """
    study = _study(store)
    shown = set()
    for recording in _recordings(study, recordings):
        shown |= set(recording.events["stimulus_id"].tolist()) - {""}
    table = study.stimuli
    ids, marked = table["id"], table["split"]
    used = np.isin(ids, sorted(shown))
    if test_fraction is None:
        test = ids[used & (marked == "test")]
        if not test.size:
            raise SplitError(
                f"split 'test' is empty: the stimuli table of {study.url} marks none of the {int(used.sum())} "
                f"shown stimuli 'test' (column 'split'); pass test_fraction= or use split_runs"
            )
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), found {test_fraction}")
        test = _draw_validation(ids[used], test_fraction, seed + 1_000_003)
    pool = np.setdiff1d(ids[used], test)
    if val_groups is None:
        val = _draw_validation(pool, val_fraction, seed)
    else:
        group = _metadata_field(table, pool, val_groups, study.url)
        val = np.sort(pool[np.isin(group, _draw_validation(np.unique(group), val_fraction, seed))])
    train = np.setdiff1d(pool, val)
    if not train.size:
        raise SplitError(
            f"split 'train' is empty: {len(pool)} training stimuli of {study.url}, all taken by 'val' "
            f"(val_fraction={val_fraction})"
        )
    return Splits(train=train, val=val, test=np.sort(test))


def _metadata_field(table, ids: np.ndarray, name: str, url: str) -> np.ndarray:
    """The metadata field ``name`` of the given stimuli, as strings; every one must have it."""
    import json

    row = {s: i for i, s in enumerate(table["id"].tolist())}
    values = []
    for stimulus_id in ids:
        metadata = json.loads(table["metadata"][row[stimulus_id]] or "{}")
        if name not in metadata:
            raise ConfigError(f"val_groups={name!r}: stimulus {stimulus_id!r} of {url} has no metadata field "
                              f"{name!r} (found {sorted(metadata)})")
        values.append(str(metadata[name]))
    return np.asarray(values, dtype=str)


def split_runs(
    store: Study | str | os.PathLike,
    recordings: Sequence[str] | None = None,
    *,
    test_runs: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> EventSplits:
    """Hold out blocks of recording time: given runs, or the last ``test_fraction`` of onsets.

    ``test_runs`` lists recording keys (``"sub-01/ses-01/run-03"``) or run labels (``"03"``)
    whose events all go to test. Without it, the last ``test_fraction`` of each recording's
    stimulus onsets (in time) go to test. Validation takes ``val_fraction`` of the stimuli
    left for training (seeded), with all their training events.

    >>> splits = split_runs(study, test_fraction=0.2)                             # doctest: +SKIP
    >>> WindowDataset(study, **splits.selection("test"), tmin=-0.5, tmax=2.5)     # doctest: +SKIP
    """
    study = _study(store)
    selected = _recordings(study, recordings)
    if test_runs is not None:
        known = {r.key for r in selected} | {r.run for r in selected}
        unknown = sorted(set(test_runs) - known)
        if unknown:
            raise ConfigError(f"test_runs {unknown} match no recording among {[r.key for r in selected]}")
    elif not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), found {test_fraction}")
    train: dict[str, np.ndarray] = {}
    test: dict[str, np.ndarray] = {}
    stimulus_of: dict[str, np.ndarray] = {}
    for recording in selected:
        events = recording.events
        rows = np.flatnonzero(events["stimulus_id"] != "")
        stimulus_of[recording.key] = events["stimulus_id"]
        if test_runs is not None:
            held_out = recording.key in test_runs or recording.run in test_runs
            train[recording.key], test[recording.key] = (rows[:0], rows) if held_out else (rows, rows[:0])
            continue
        onset, sample = events["onset"][rows], events["sample"][rows]
        time = onset if np.all(np.isfinite(onset)) else (sample if np.all(sample >= 0) else rows.astype(float))
        by_time = rows[np.argsort(time, kind="stable")]
        n_test = int(math.ceil(test_fraction * len(rows)))
        train[recording.key], test[recording.key] = (
            np.sort(by_time[: len(rows) - n_test]),
            np.sort(by_time[len(rows) - n_test :]),
        )
    train_stimuli = np.unique(
        np.concatenate([stimulus_of[k][rows] for k, rows in train.items()] or [np.array([], str)])
    )
    val_stimuli = _draw_validation(train_stimuli, val_fraction, seed) if train_stimuli.size else train_stimuli
    val = {}
    for key, rows in train.items():
        in_val = np.isin(stimulus_of[key][rows], val_stimuli)
        train[key], val[key] = rows[~in_val], rows[in_val]
    return EventSplits(train=train, val=val, test=test)


def _stimuli_of(part) -> set[str]:
    if hasattr(part, "stimulus_ids"):
        return set(part.stimulus_ids.tolist())
    return {str(s) for s in part}


def check_no_leakage(train, test, *, val=None, by: str = "stimulus", allow_empty_val: bool = False) -> None:
    """Raise :class:`SplitError` if a part is empty or two parts share a stimulus (or event).

    Each part is a dataset or, for ``by="stimulus"``, a list of stimulus ids. ``by="event"``
    compares the (recording, event row) of the datasets' trials instead, for time-based
    splits where a stimulus may recur in training and test.

    >>> check_no_leakage(train_dataset, test_dataset)           # doctest: +SKIP
    """
    if by not in ("stimulus", "event"):
        raise ConfigError(f"by expected 'stimulus' or 'event', found {by!r}")
    parts = {"train": train, "test": test}
    if val is not None:
        parts["val"] = val
    if by == "stimulus":
        contents = {name: _stimuli_of(part) for name, part in parts.items()}
    else:
        contents = {name: set(part.trial_events) for name, part in parts.items()}
    for name, content in contents.items():
        if not content and not (name == "val" and allow_empty_val):
            raise SplitError(f"split {name!r} is empty")
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        if a in contents and b in contents:
            shared = contents[a] & contents[b]
            if shared:
                raise SplitError(
                    f"splits {a!r} and {b!r} share {len(shared)} {by}s, e.g. {sorted(shared)[:5]}: "
                    f"a {by} of {b!r} would be seen in {a!r}"
                )
