"""PyTorch datasets over a study store: trials, fMRI samples and windows of continuous recordings.

Every dataset reads lazily: it keeps the store's URL and each item's address (recording,
row or onset sample), and reads only the rows a batch needs. Indexing with one integer gives
one item; indexing with a list of integers gives a whole batch, read with one request per
recording, which is what :meth:`TrialDataset.loader` uses::

    >>> train = TrialDataset("study.zarr", stimuli=splits.train, cache_dir="cache")   # doctest: +SKIP
    >>> for batch in train.loader(batch_size=256, shuffle=True):                      # doctest: +SKIP
    ...     batch["brain"].shape                                                      # (256, 64, 250)

An item is a dict: ``brain`` (float32 tensor, channels x times, or voxels for fMRI),
``subject`` (index into :attr:`subject_labels`, the store's subject list), ``stimulus``
(index into :attr:`stimulus_list`, the store's stimuli table), ``stimulus_id`` (str),
``repetition`` (-1 for an average over repetitions) and, with ``target=``, ``target``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from neurodec._logging import progress
from neurodec.data._reader import DiskCache, RecordingLayout, RecordingReader, StoreHandle
from neurodec.errors import ConfigError, EventError, SplitError, StoreError
from neurodec.store import Study

logger = logging.getLogger("neurodec")

VOXEL_BATCHES = ("by_subject", "pad")


class _StoreDataset(Dataset):
    """What trial and window datasets share: selection, averaging, batched reads, transforms."""

    accepted_layouts: tuple[str, ...] = ()

    def __init__(
        self,
        store: Study | str | os.PathLike,
        recordings: Sequence[str] | None,
        *,
        subjects: Sequence[str] | None,
        modality: str | None,
        stimuli: Sequence[str] | None,
        events: Mapping[str, Sequence[int]] | None,
        average_repetitions: bool,
        target: str | None,
        transform: Callable | None,
        cache_dir: str | os.PathLike | None,
        voxel_batches: str,
    ):
        if voxel_batches not in VOXEL_BATCHES:
            raise ConfigError(f"voxel_batches expected one of {VOXEL_BATCHES}, found {voxel_batches!r}")
        self._handle = StoreHandle(store)
        study = self._handle.study()
        self.url = study.url
        self.subject_labels: list[str] = study.subjects
        self.stimulus_list: np.ndarray = study.stimuli["id"]
        self.transform = transform
        self.voxel_batches = voxel_batches
        self.average_repetitions = average_repetitions
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)

        keys = self._select_recordings(study, recordings, subjects, modality, events)
        self.recording_keys = keys
        first = study.recording(keys[0])
        self.sfreq = first.sfreq
        self.ch_names = first.ch_names
        self.modality = first.modality
        self._readers = [RecordingReader(self._handle, RecordingLayout.of(study, key)) for key in keys]
        self._build_trials(study, stimuli, events)
        self._caches: list[DiskCache] = []
        if self.cache_dir is not None:
            cache_of = DiskCache.for_recordings(self.cache_dir, study, [reader.layout for reader in self._readers])
            self._caches = list({id(cache): cache for cache in cache_of.values()}.values())
            self._cache_index = np.asarray([self._caches.index(cache_of[key]) for key in keys])
            offsets = np.asarray([cache_of[key].row_offsets[key] for key in keys])
            self._trials["cache_row"] = offsets[self._trials["recording"]] + self._trials["start"]
        self._build_items()
        self._targets = self._load_targets(study, target) if target is not None else None
        self.target = target
        shapes = {self.item_shape(i) for i in range(len(self._readers))}
        self._brain_shape = shapes.pop() if len(shapes) == 1 else None

    # ------------------------------------------------------------ selection
    def _select_recordings(self, study, recordings, subjects, modality, events) -> list[str]:
        found = {recording.key: recording for recording in study.recordings()}
        if recordings is None and events is not None:
            recordings = list(events)
        if recordings is None:
            keys = [key for key, recording in found.items() if recording.layout in self.accepted_layouts]
        else:
            keys = [recordings] if isinstance(recordings, str) else list(recordings)
            unknown = [key for key in keys if key not in found]
            if unknown:
                raise StoreError(f"{study.url}: no recordings {unknown}; the store holds {list(found)}")
        if modality is not None:
            keys = [key for key in keys if found[key].modality == modality]
        if subjects is not None:
            unknown = sorted(set(subjects) - set(study.subjects))
            if unknown:
                raise StoreError(f"{study.url}: no subjects {unknown}; the store holds {study.subjects}")
            keys = [key for key in keys if found[key].subject in set(subjects)]
        if events is not None:
            outside = sorted(set(events) - set(keys))
            if outside:
                raise ConfigError(f"events name recordings {outside} that are not among the selected {keys}")
        if not keys:
            raise StoreError(
                f"{study.url}: no recording of layout {' or '.join(self.accepted_layouts)} matches "
                f"(subjects={subjects}, modality={modality}); the store holds {list(found)}"
            )
        layouts = {found[key].layout for key in keys}
        wrong = layouts - set(self.accepted_layouts)
        if wrong:
            raise ConfigError(
                f"{type(self).__name__} reads layouts {self.accepted_layouts}; recordings "
                f"{[key for key in keys if found[key].layout in wrong]} have layout {sorted(wrong)}"
            )
        if len(layouts) > 1:
            raise ConfigError(
                f"{study.url}: the selected recordings mix layouts {sorted(layouts)}; select one "
                f"(recordings=..., or modality=...)"
            )
        return keys

    def _trial_starts(self, recording_index: int, recording, events) -> tuple[np.ndarray, np.ndarray]:
        """``(event_rows, starts)`` of the trials of one recording (the subclass decides)."""
        raise NotImplementedError

    def _build_trials(self, study, stimuli, events) -> None:
        position = {s: i for i, s in enumerate(self.stimulus_list.tolist())}
        wanted = None
        if stimuli is not None:
            wanted = {str(s) for s in stimuli}
            unknown = sorted(wanted - set(position))
            if unknown:
                raise StoreError(f"{study.url}: stimuli {unknown[:5]} are not in the stimuli table")
        parts = []
        for index, key in enumerate(self.recording_keys):
            recording = study.recording(key)
            table = recording.events
            rows = np.arange(table.n_rows)
            keep = table["stimulus_id"] != ""  # markers that are not stimuli carry no label
            if wanted is not None:
                keep &= np.isin(table["stimulus_id"], list(wanted))
            if events is not None and key in events:
                keep &= np.isin(rows, np.asarray(events[key], dtype=np.int64))
            event_rows, starts = self._trial_starts(index, recording, table.select(keep).with_column("row", rows[keep]))
            ids = table["stimulus_id"][event_rows]
            parts.append(
                {
                    "recording": np.full(len(event_rows), index, dtype=np.int64),
                    "event_row": event_rows.astype(np.int64),
                    "start": starts.astype(np.int64),
                    "subject": np.full(len(event_rows), self.subject_labels.index(recording.subject), dtype=np.int64),
                    "stimulus": np.asarray([position[s] for s in ids.tolist()], dtype=np.int64),
                    "repetition": table["repetition"][event_rows].astype(np.int64),
                }
            )
        self._trials = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        if not len(self._trials["start"]):
            raise SplitError(
                f"{study.url}: no trials left in recordings {self.recording_keys} after selecting "
                f"{'stimuli ' + str(sorted(wanted)[:5]) if wanted is not None else 'all stimuli'}"
                f"{' and the given events' if events is not None else ''}"
            )

    def _build_items(self) -> None:
        n_trials = len(self._trials["start"])
        if not self.average_repetitions:
            self._item_offsets = np.arange(n_trials + 1)
            self._item_trials = np.arange(n_trials)
            return
        # One item per (subject, stimulus), in order of first appearance.
        condition = self._trials["subject"] * len(self.stimulus_list) + self._trials["stimulus"]
        _, first, inverse = np.unique(condition, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # condition -> item position by first appearance
        item_of_trial = rank[inverse]
        self._item_trials = np.argsort(item_of_trial, kind="stable")
        counts = np.bincount(item_of_trial, minlength=len(first))
        self._item_offsets = np.concatenate([[0], np.cumsum(counts)])

    def _load_targets(self, study, key: str) -> np.ndarray:
        ids, embeddings = study.targets(key)
        row_of = {s: i for i, s in enumerate(ids.tolist())}
        used = np.unique(self._trials["stimulus"])
        missing = [self.stimulus_list[s] for s in used if self.stimulus_list[s] not in row_of]
        if missing:
            raise StoreError(
                f"{study.url}: targets {key!r} lack {len(missing)} stimuli of this dataset, e.g. {missing[:5]}"
            )
        # Keep only the rows this dataset uses; a stimulus index finds its row through this map.
        self._target_row = np.full(len(self.stimulus_list), -1, dtype=np.int64)
        self._target_row[used] = np.arange(len(used))
        return np.ascontiguousarray(embeddings[[row_of[self.stimulus_list[s]] for s in used]], dtype=np.float32)

    # ----------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._item_offsets) - 1

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {len(self)} items from {len(self.recording_keys)} recordings of {self.url}"
            f"{', averaged over repetitions' if self.average_repetitions else ''}>"
        )

    @property
    def n_trials(self) -> int:
        """Trials read by this dataset (more than ``len(self)`` when averaging repetitions)."""
        return int(self._item_offsets[-1])

    def _item_first_trials(self) -> np.ndarray:
        return self._item_trials[self._item_offsets[:-1]]

    @property
    def subject_index(self) -> np.ndarray:
        """Index into :attr:`subject_labels` of each item."""
        return self._trials["subject"][self._item_first_trials()]

    @property
    def stimulus_index(self) -> np.ndarray:
        """Index into :attr:`stimulus_list` of each item."""
        return self._trials["stimulus"][self._item_first_trials()]

    @property
    def stimulus_ids(self) -> np.ndarray:
        """Stimulus id of each item."""
        return self.stimulus_list[self.stimulus_index]

    @property
    def trial_events(self) -> list[tuple[str, int]]:
        """``(recording key, event row)`` of every trial this dataset reads."""
        rows = self._item_trials
        return [
            (self.recording_keys[r], int(e))
            for r, e in zip(self._trials["recording"][rows].tolist(), self._trials["event_row"][rows].tolist())
        ]

    def item_shape(self, recording_index: int) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def brain_shape(self) -> tuple[int, ...] | None:
        """Shape of one item's ``brain``, or ``None`` where subjects differ (fMRI voxel counts)."""
        return self._brain_shape

    def chunk_ids(self) -> np.ndarray:
        """A label per item of the zarr chunk that holds it (for :class:`ChunkAwareBatchSampler`)."""
        trials = self._item_first_trials()
        recording = self._trials["recording"][trials]
        chunk_rows = np.asarray([r.layout.chunk_rows for r in self._readers])[recording]
        per_recording = max(r.layout.n_rows // r.layout.chunk_rows + 1 for r in self._readers)
        return recording * per_recording + self._trials["start"][trials] // chunk_rows

    def present_subjects(self) -> list[int]:
        """Indices (into :attr:`subject_labels`) of the subjects this dataset holds."""
        return np.unique(self._trials["subject"]).tolist()

    def describe(self) -> dict[str, Any]:
        """What this dataset reads, for the record kept with fitted transforms."""
        stimuli = sorted(set(self.stimulus_list[self._trials["stimulus"]].tolist()))
        return {
            "store": self.url,
            "dataset": type(self).__name__,
            "recordings": list(self.recording_keys),
            "n_trials": self.n_trials,
            "n_stimuli": len(stimuli),
            "stimuli_sha256": hashlib.sha256("\n".join(stimuli).encode()).hexdigest()[:16],
        }

    # -------------------------------------------------------------- reading
    def _read_length(self) -> int:
        return 1

    def _read_trials(self, trials: np.ndarray) -> np.ndarray:
        """Raw brain arrays of the given trials, in that order; they must share one shape."""
        recording = self._trials["recording"][trials]
        starts = self._trials["start"][trials]
        shape = self._brain_shape or self._common_shape(np.unique(recording).tolist())
        rows = self._rows_buffer(len(trials), shape)
        length = self._read_length()
        if self._caches:
            return self._as_items(self._read_cached(trials, recording, starts, rows, length))
        if len(trials) and np.all(recording[1:] >= recording[:-1]):
            # Sorted by recording (as ChunkAwareBatchSampler's batches): one slice per recording.
            edges = [0, *(np.flatnonzero(np.diff(recording)) + 1).tolist(), len(trials)]
            for begin, end in zip(edges[:-1], edges[1:]):
                self._readers[recording[begin]].read_into(rows, slice(begin, end), starts[begin:end], length)
        else:
            for r in np.unique(recording).tolist():
                positions = np.flatnonzero(recording == r)
                self._readers[r].read_into(rows, positions, starts[positions], length)
        return self._as_items(rows)

    def _read_cached(self, trials, recording, starts, rows, length) -> np.ndarray:
        present = np.unique(recording).tolist()
        for r in present:
            cache = self._caches[self._cache_index[r]]
            if not cache.complete:  # the first epoch: decode what is missing into the cache
                cache.fill(self._readers[r], starts[recording == r], length)
        cache_rows = self._trials["cache_row"][trials]
        groups = np.unique(self._cache_index[present])
        if groups.size == 1:  # one gather for the whole batch
            self._caches[int(groups[0])].read_into(rows, slice(None), cache_rows, length)
        else:
            group_of_trial = self._cache_index[recording]
            for group in groups.tolist():
                positions = np.flatnonzero(group_of_trial == group)
                self._caches[group].read_into(rows, positions, cache_rows[positions], length)
        return rows

    def _common_shape(self, recordings: list[int]) -> tuple[int, ...]:
        shape = self.item_shape(recordings[0])
        for r in recordings:
            if self.item_shape(r) != shape:
                raise ConfigError(
                    f"recordings {self.recording_keys[recordings[0]]} and {self.recording_keys[r]} hold "
                    f"items of shapes {shape} and {self.item_shape(r)}; read them one subject at a time"
                )
        return shape

    def _rows_buffer(self, n: int, item_shape: tuple[int, ...]) -> np.ndarray:
        """Where rows are read to: (n, length, *row_shape)."""
        return np.empty((n, 1) + item_shape, dtype=np.float32)

    def _as_items(self, rows: np.ndarray) -> np.ndarray:
        """Rows as read, (n, length, *row_shape), as brain arrays (n, *item_shape)."""
        return rows.reshape((rows.shape[0],) + rows.shape[2:])

    def _apply_transform(self, brain: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        from neurodec.data.transforms import Transform

        if self.transform is None:
            return brain
        if isinstance(self.transform, Transform):
            return self.transform.transform(brain, subjects=subjects)
        return self.transform(brain)

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """A batch of items as numpy arrays (``brain`` a list per item where shapes differ)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} items")
        if indices.size and indices.min() < 0:
            indices = indices % len(self)
        starts, stops = self._item_offsets[indices], self._item_offsets[indices + 1]
        if self.average_repetitions:
            trials = np.concatenate([self._item_trials[a:b] for a, b in zip(starts, stops)])
        else:
            trials = self._item_trials[starts]
        trial_subjects = self._trials["subject"][trials]
        first_trials = self._item_trials[starts]
        batch: dict[str, Any] = {
            "subject": self._trials["subject"][first_trials],
            "stimulus": self._trials["stimulus"][first_trials],
            "stimulus_id": self.stimulus_list[self._trials["stimulus"][first_trials]].tolist(),
            "repetition": (
                np.full(len(indices), -1, dtype=np.int64)
                if self.average_repetitions
                else self._trials["repetition"][first_trials]
            ),
        }
        if self._targets is not None:
            batch["target"] = self._targets[self._target_row[batch["stimulus"]]]
        if self.brain_shape is not None:
            brain = self._apply_transform(self._read_trials(trials), trial_subjects)
            batch["brain"] = _average_groups(brain, stops - starts) if self.average_repetitions else brain
            return batch
        # Subjects with different shapes (fMRI): read and transform one subject at a time.
        per_trial: list[np.ndarray | None] = [None] * len(trials)
        for subject in np.unique(trial_subjects).tolist():
            positions = np.flatnonzero(trial_subjects == subject)
            brain = self._apply_transform(self._read_trials(trials[positions]), trial_subjects[positions])
            for position, row in zip(positions.tolist(), brain):
                per_trial[position] = row
        if self.average_repetitions:
            bounds = np.concatenate([[0], np.cumsum(stops - starts)])
            batch["brain"] = [
                np.mean(np.stack(per_trial[a:b]), axis=0, dtype=np.float64).astype(np.float32)
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
        else:
            batch["brain"] = per_trial
        return batch

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any]:
        """One item for an integer index; a collated batch for a list of indices."""
        if isinstance(index, (int, np.integer)):
            batch = self.read_batch([index])
            item = {name: values[0] for name, values in batch.items()}
            item["brain"] = torch.from_numpy(np.asarray(item["brain"]))
            for name in ("subject", "stimulus", "repetition"):
                item[name] = int(item[name])
            if "target" in item:
                item["target"] = torch.from_numpy(np.asarray(item["target"]))
            return item
        return _to_tensors(self.read_batch(index), self.voxel_batches)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items of a whole batch, read together (PyTorch's DataLoader calls this when present)."""
        batch = self.read_batch(indices)
        items = []
        for position in range(len(batch["subject"])):
            item = {
                "brain": torch.from_numpy(np.asarray(batch["brain"][position])),
                "subject": int(batch["subject"][position]),
                "stimulus": int(batch["stimulus"][position]),
                "stimulus_id": batch["stimulus_id"][position],
                "repetition": int(batch["repetition"][position]),
            }
            if "target" in batch:
                item["target"] = torch.from_numpy(batch["target"][position])
            items.append(item)
        return items

    def trial_batches(
        self, batch_trials: int = 512, *, by_condition: bool = False, subject: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Raw trials (no transform, no averaging) as ``(brain, condition, subject)`` batches.

        Transforms are fitted from these. ``condition`` labels a (subject, stimulus) pair;
        with ``by_condition=True`` all trials of a condition come in the same batch.
        ``subject`` (an index into :attr:`subject_labels`) keeps one subject's trials.
        """
        trials = np.unique(self._item_trials)
        if subject is not None:
            trials = trials[self._trials["subject"][trials] == subject]
            if not trials.size:
                raise SplitError(f"{self!r} holds no trials of subject index {subject}")
        elif self.brain_shape is None:
            raise ConfigError(
                f"{self!r}: subjects hold different numbers of voxels; fit one transform per subject "
                f"(neurodec.data.transforms.PerSubject)"
            )
        condition = self._trials["subject"][trials] * len(self.stimulus_list) + self._trials["stimulus"][trials]
        # Sequential order (recording, row) reads each chunk once; by condition groups repetitions.
        keys = (self._trials["start"][trials], self._trials["recording"][trials])
        order = np.lexsort(keys + (condition,)) if by_condition else np.lexsort(keys)
        trials, condition = trials[order], condition[order]
        boundaries = np.flatnonzero(np.diff(condition) != 0) + 1 if by_condition else None
        spans, begin = [], 0
        while begin < len(trials):
            end = min(len(trials), begin + batch_trials)
            if by_condition and end < len(trials):
                later = boundaries[boundaries >= end]  # extend to the end of the current condition
                end = int(later[0]) if later.size else len(trials)
            spans.append((begin, end))
            begin = end
        for begin, end in progress(spans, "reading training trials", total=len(spans)):
            chosen = trials[begin:end]
            yield self._read_trials(chosen), condition[begin:end], self._trials["subject"][chosen]

    # -------------------------------------------------------------- loading
    def loader(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        window_batches: int = 1,
        **loader_options: Any,
    ) -> DataLoader:
        """A DataLoader of whole batches drawn by :class:`ChunkAwareBatchSampler`.

        Each batch is read with one request per recording (``dataset[list_of_indices]``).

        >>> for batch in dataset.loader(batch_size=64, num_workers=2):   # doctest: +SKIP
        ...     model(batch["brain"], batch["subject"])
        """
        from neurodec.data.samplers import ChunkAwareBatchSampler

        sampler = ChunkAwareBatchSampler(
            self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, window_batches=window_batches
        )
        return DataLoader(
            self, batch_size=None, sampler=sampler, num_workers=num_workers, collate_fn=_unchanged, **loader_options
        )


def _unchanged(batch: Any) -> Any:
    return batch


def _average_groups(brain: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of consecutive groups of rows (float64 sums, float32 result)."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(brain.astype(np.float64), offsets, axis=0)
    return (sums / counts.reshape((-1,) + (1,) * (brain.ndim - 1))).astype(np.float32)


def _to_tensors(batch: dict[str, Any], voxel_batches: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "subject": torch.from_numpy(np.asarray(batch["subject"], dtype=np.int64)),
        "stimulus": torch.from_numpy(np.asarray(batch["stimulus"], dtype=np.int64)),
        "stimulus_id": list(batch["stimulus_id"]),
        "repetition": torch.from_numpy(np.asarray(batch["repetition"], dtype=np.int64)),
    }
    if "target" in batch:
        out["target"] = torch.from_numpy(np.asarray(batch["target"], dtype=np.float32))
    brain = batch["brain"]
    if isinstance(brain, np.ndarray):
        out["brain"] = torch.from_numpy(brain)
    else:
        out.update(_stack_uneven(list(brain), np.asarray(batch["subject"]), voxel_batches))
    return out


def _stack_uneven(brains: list[np.ndarray], subjects: np.ndarray, voxel_batches: str) -> dict[str, Any]:
    """Items whose shapes differ between subjects: a tensor per subject, or zero-padded."""
    if voxel_batches == "by_subject":
        return {
            "brain": {
                int(s): torch.from_numpy(np.stack([brains[i] for i in np.flatnonzero(subjects == s)]))
                for s in np.unique(subjects)
            }
        }
    n_voxels = np.asarray([b.shape[-1] for b in brains], dtype=np.int64)
    padded = np.zeros((len(brains),) + brains[0].shape[:-1] + (int(n_voxels.max()),), dtype=np.float32)
    for i, b in enumerate(brains):
        padded[i, ..., : b.shape[-1]] = b
    return {"brain": torch.from_numpy(padded), "n_voxels": torch.from_numpy(n_voxels)}


def collate(items: list[dict[str, Any]], voxel_batches: str = "by_subject") -> dict[str, Any]:
    """Collate items (``DataLoader(dataset, batch_size=..., collate_fn=collate)``).

    Items of equal shape are stacked. Where fMRI subjects differ in voxel counts,
    ``voxel_batches="by_subject"`` gives ``batch["brain"]`` as a dict ``{subject index:
    tensor (n_s, voxels_s)}`` whose rows follow the batch order of ``batch["subject"] == s``,
    and ``"pad"`` zero-pads to the largest count and adds ``batch["n_voxels"]``.

    >>> from functools import partial                                        # doctest: +SKIP
    >>> DataLoader(fmri, batch_size=32, collate_fn=partial(collate, voxel_batches="pad"))  # doctest: +SKIP
    """
    if voxel_batches not in VOXEL_BATCHES:
        raise ConfigError(f"voxel_batches expected one of {VOXEL_BATCHES}, found {voxel_batches!r}")
    brains = [np.asarray(item["brain"]) for item in items]
    batch = {
        "subject": np.asarray([item["subject"] for item in items], dtype=np.int64),
        "stimulus": np.asarray([item["stimulus"] for item in items], dtype=np.int64),
        "stimulus_id": [item["stimulus_id"] for item in items],
        "repetition": np.asarray([item["repetition"] for item in items], dtype=np.int64),
        "brain": np.stack(brains) if len({b.shape for b in brains}) == 1 else brains,
    }
    if "target" in items[0]:
        batch["target"] = np.stack([np.asarray(item["target"]) for item in items])
    return _to_tensors(batch, voxel_batches)


class TrialDataset(_StoreDataset):
    """Trials of ``epoched`` recordings (channels x times) or ``fmri`` recordings (voxels).

    ``recordings``: keys to read (default: every epoched or fMRI recording, narrowed by
    ``subjects`` and ``modality``). ``stimuli``: keep only trials of these stimulus ids
    (e.g. ``split_stimuli(...).train``). ``events``: keep only these event rows per
    recording (e.g. ``split_runs(...).test``). ``average_repetitions``: one item per
    (subject, stimulus), the mean of its trials (after ``transform``). ``target``: a target
    set of the store, looked up by stimulus id. ``cache_dir``: a folder for the decompressed
    disk cache (see ``docs/loading.md``). ``voxel_batches``: how batches hold fMRI subjects
    of different voxel counts (``"by_subject"`` or ``"pad"``, see :func:`collate`).

    >>> splits = split_stimuli("study.zarr", val_fraction=0.1, seed=0)                # doctest: +SKIP
    >>> test = TrialDataset("study.zarr", stimuli=splits.test, average_repetitions=True)  # doctest: +SKIP
    >>> test[0]["brain"].shape                                                         # doctest: +SKIP
    torch.Size([64, 250])
    """

    accepted_layouts = ("epoched", "fmri")

    def __init__(
        self,
        store: Study | str | os.PathLike,
        recordings: Sequence[str] | None = None,
        *,
        subjects: Sequence[str] | None = None,
        modality: str | None = None,
        stimuli: Sequence[str] | None = None,
        events: Mapping[str, Sequence[int]] | None = None,
        average_repetitions: bool = False,
        target: str | None = None,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        voxel_batches: str = "by_subject",
    ):
        super().__init__(
            store,
            recordings,
            subjects=subjects,
            modality=modality,
            stimuli=stimuli,
            events=events,
            average_repetitions=average_repetitions,
            target=target,
            transform=transform,
            cache_dir=cache_dir,
            voxel_batches=voxel_batches,
        )
        first = self._handle.study().recording(self.recording_keys[0])
        self.layout = first.layout
        if self.layout == "epoched" and self.brain_shape is None:
            shapes = {key: self.item_shape(i) for i, key in enumerate(self.recording_keys)}
            raise ConfigError(f"{self.url}: epoched recordings of one dataset need one trial shape; found {shapes}")
        self.times = (
            first.tmin + np.arange(first.shape[-1]) / first.sfreq if self.layout == "epoched" and first.sfreq else None
        )

    def _trial_starts(self, recording_index, recording, events):
        rows = events["row"]
        return rows, rows  # one event row per stored trial, in order

    def item_shape(self, recording_index: int) -> tuple[int, ...]:
        return self._readers[recording_index].layout.row_shape


class WindowDataset(_StoreDataset):
    """Windows cut lazily from ``continuous`` recordings around each stimulus onset.

    A window holds the samples from ``onset + round((tmin + shift) * sfreq)`` for
    ``round((tmax - tmin) * sfreq)`` samples (``tmax`` excluded). ``shift`` delays the brain
    window relative to the stimulus, as the +0.15 s of Défossez et al. (2023) for the brain's
    response lag. Onsets whose window would leave the recording are dropped (the count is
    logged), or raise :class:`~neurodec.errors.EventError` with ``on_outside="raise"``.
    All recordings must share one sampling rate and channel count. Other arguments as
    :class:`TrialDataset`.

    >>> windows = WindowDataset("meg.zarr", tmin=-0.5, tmax=2.5, shift=0.15)   # doctest: +SKIP
    >>> windows[0]["brain"].shape                                              # doctest: +SKIP
    torch.Size([208, 360])
    """

    accepted_layouts = ("continuous",)

    def __init__(
        self,
        store: Study | str | os.PathLike,
        recordings: Sequence[str] | None = None,
        *,
        tmin: float = -0.5,
        tmax: float = 2.5,
        shift: float = 0.0,
        on_outside: str = "drop",
        subjects: Sequence[str] | None = None,
        modality: str | None = None,
        stimuli: Sequence[str] | None = None,
        events: Mapping[str, Sequence[int]] | None = None,
        average_repetitions: bool = False,
        target: str | None = None,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        if on_outside not in ("drop", "raise"):
            raise ConfigError(f"on_outside expected 'drop' or 'raise', found {on_outside!r}")
        if not tmax > tmin:
            raise ConfigError(f"window tmax ({tmax}) must be later than tmin ({tmin})")
        self.tmin, self.tmax, self.shift, self.on_outside = float(tmin), float(tmax), float(shift), on_outside
        self.n_dropped = 0
        super().__init__(
            store,
            recordings,
            subjects=subjects,
            modality=modality,
            stimuli=stimuli,
            events=events,
            average_repetitions=average_repetitions,
            target=target,
            transform=transform,
            cache_dir=cache_dir,
            voxel_batches="by_subject",
        )
        #: Time of each window sample relative to the stimulus onset, brain shift included.
        self.times = (self._offset + np.arange(self.n_times)) / self.sfreq

    def _trial_starts(self, recording_index, recording, events):
        if recording_index == 0:
            self._window_sfreq = recording.sfreq
            self._offset = int(round((self.tmin + self.shift) * recording.sfreq))
            self.n_times = int(round((self.tmax - self.tmin) * recording.sfreq))
            self._n_channels = recording.shape[0]
        elif recording.sfreq != self._window_sfreq or recording.shape[0] != self._n_channels:
            raise ConfigError(
                f"{recording.key} has {recording.shape[0]} channels at {recording.sfreq} Hz, "
                f"{self.recording_keys[0]} {self._n_channels} at {self._window_sfreq} Hz; "
                f"windows of one dataset need one sampling rate and channel set"
            )
        starts = events["sample"] + self._offset
        inside = (starts >= 0) & (starts + self.n_times <= recording.shape[1])
        if not inside.all():
            first_bad = int(np.flatnonzero(~inside)[0])
            message = (
                f"{self.url} {recording.key}: {int((~inside).sum())} of {len(starts)} windows "
                f"({self.tmin + self.shift:+.3f} to {self.tmax + self.shift:+.3f} s around the onset) leave the "
                f"recording (0 to {recording.shape[1]} samples), e.g. event row {int(events['row'][first_bad])} "
                f"at sample {int(events['sample'][first_bad])}"
            )
            if self.on_outside == "raise":
                raise EventError(message)
            logger.info("%s; dropped", message)
            self.n_dropped += int((~inside).sum())
        return events["row"][inside], starts[inside]

    def item_shape(self, recording_index: int) -> tuple[int, ...]:
        return (self._readers[recording_index].layout.shape[0], self.n_times)

    def _read_length(self) -> int:
        return self.n_times

    def _rows_buffer(self, n, item_shape):
        return np.empty((n, self.n_times, item_shape[0]), dtype=np.float32)

    def _as_items(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows.transpose(0, 2, 1))  # (n, times, channels) -> (n, channels, times)
