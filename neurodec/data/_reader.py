"""Reading recordings out of a store, one process at a time, with an optional disk cache.

Two rules shape this module:

* nothing here pickles an open zarr handle: a :class:`StoreHandle` keeps the store's URL and
  opens it on first use in each process (DataLoader workers re-open it themselves);
* nothing here holds a whole recording in memory: a read decodes only the zarr chunks that
  hold the requested rows, and the cache lives on disk, read through a memory map. (Pages
  of a mapped file that a process has touched count in its resident set as *shared*,
  file-backed memory, which the kernel reclaims as needed; the process's own, anonymous
  memory stays the size of a few batches.)

A recording is read by *rows along its chunked axis*: trials for the ``epoched`` and
``fmri`` layouts (``data`` is trials x ...), time samples for the ``continuous`` layout
(``data`` is channels x times). A request is a list of row ranges ``[start, start+length)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neurodec.errors import StoreError
from neurodec.store import Study, open_store

logger = logging.getLogger("neurodec")

# The most a reader decodes from zarr in one piece (a few chunks of about 1 MB each).
MAX_DECODE_BYTES = 16 << 20


class StoreHandle:
    """A picklable reference to a study store, opened lazily once per process.

    The open :class:`~neurodec.store.Study` and its zarr arrays are kept only for the
    process that opened them; a copy sent to a DataLoader worker (by fork or pickle) sees
    another process id and opens the store again.
    """

    def __init__(self, store: Study | str | os.PathLike, storage_options: dict[str, Any] | None = None):
        if isinstance(store, Study):
            self.url = store.url
            self.storage_options = dict(store.location.storage_options)
            self._opened: tuple[int, Study] | None = (os.getpid(), store)
        else:
            self.url = os.fspath(store)
            self.storage_options = dict(storage_options or {})
            self._opened = None
        self._arrays: dict[str, Any] = {}

    def study(self) -> Study:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), open_store(self.url, storage_options=self.storage_options or None))
            self._arrays = {}
        return self._opened[1]

    def data_array(self, key: str):
        """The zarr ``data`` array of one recording (looked up once per process)."""
        study = self.study()
        if key not in self._arrays:
            self._arrays[key] = study.recording(key).data
        return self._arrays[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._opened = None
        self._arrays = {}


@dataclass(frozen=True)
class RecordingLayout:
    """What a reader needs to know about one recording's data array."""

    key: str
    path: str  # the recording's group in the store
    layout: str
    shape: tuple[int, ...]
    chunk_rows: int  # rows (trials or time samples) per zarr chunk along the chunked axis
    written: str  # the recording's write time

    @property
    def row_axis(self) -> int:
        return 1 if self.layout == "continuous" else 0

    @property
    def n_rows(self) -> int:
        return self.shape[self.row_axis]

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row as kept in the cache: channels for a time sample, else a trial."""
        return (self.shape[0],) if self.layout == "continuous" else tuple(self.shape[1:])

    @classmethod
    def of(cls, study: Study, key: str) -> "RecordingLayout":
        recording = study.recording(key)
        array = recording.data
        axis = 1 if recording.layout == "continuous" else 0
        path = next(entry["path"] for entry in study.manifest["recordings"] if entry["key"] == key)
        written = str(recording.attrs.get("written", ""))
        return cls(key, path, recording.layout, tuple(array.shape), int(array.chunks[axis]), written)


class RecordingReader:
    """Reads row ranges of one recording from zarr, decoding only the chunks they touch."""

    def __init__(self, handle: StoreHandle, layout: RecordingLayout):
        self.handle = handle
        self.layout = layout
        # Counts zarr chunk decodes in this process; the tests and the benchmark read it.
        self.chunks_decoded = 0

    def read_into(self, target: np.ndarray, positions: slice | np.ndarray, starts: np.ndarray, length: int) -> None:
        """Write rows ``[s, s+length)`` for each start ``s`` into ``target[positions]``.

        ``target`` is ``(n, length, *row_shape)``; reading into it spares a copy per batch.
        """
        starts = np.asarray(starts, dtype=np.int64)
        positions = np.arange(len(target))[positions]
        done = np.zeros(len(starts), dtype=bool)
        for first, block in self.decode_chunk_runs(self.chunks_of(starts, length)):
            inside = np.flatnonzero(~done & (starts >= first) & (starts + length <= first + len(block)))
            copy_rows(target, positions[inside], block, starts[inside] - first, length)
            done[inside] = True
        for i in np.flatnonzero(~done).tolist():  # a window across the edge of two decoded pieces
            for first, block in self.decode_chunk_runs(self.chunks_of(starts[i : i + 1], length), bounded=False):
                copy_rows(target, positions[i : i + 1], block, starts[i : i + 1] - first, length)

    def chunks_of(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Ids of every chunk that the ranges ``[s, s+length)`` touch."""
        size = self.layout.chunk_rows
        first = starts // size
        last = (starts + length - 1) // size
        if length <= size:  # a range spans at most two chunks
            return np.union1d(first, last)
        return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)]))

    def decode_chunk_runs(self, chunk_ids: np.ndarray, bounded: bool = True):
        """Yield ``(first_row, rows)`` for each run of consecutive chunks, rows in cache orientation.

        With ``bounded``, a run is cut into pieces of at most ``MAX_DECODE_BYTES``, so that a
        batch touching every chunk of a recording never decodes the whole recording at once.
        """
        if not chunk_ids.size:
            return
        array = self.handle.data_array(self.layout.key)
        size, n_rows = self.layout.chunk_rows, self.layout.n_rows
        runs = np.split(chunk_ids, np.flatnonzero(np.diff(chunk_ids) != 1) + 1)
        if bounded:
            chunk_bytes = size * int(np.prod(self.layout.row_shape)) * 4
            most = max(1, MAX_DECODE_BYTES // chunk_bytes)
            runs = [run[i : i + most] for run in runs for i in range(0, len(run), most)]
        for run in runs:
            first, stop = int(run[0]) * size, min(n_rows, (int(run[-1]) + 1) * size)
            self.chunks_decoded += run.size
            if self.layout.row_axis == 0:
                yield first, np.asarray(array[first:stop], dtype=np.float32)
            else:  # continuous: channels x times in the store, times x channels here
                yield first, np.ascontiguousarray(np.asarray(array[:, first:stop], dtype=np.float32).T)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["chunks_decoded"] = 0
        return state


class DiskCache:
    """A decompressed copy, on disk, of the recordings of a store that share one row shape.

    All recordings of one layout and row shape (e.g. every EEG session of 63 channels x 100
    samples) live in one file, one after the other in the store's manifest order, so a batch
    drawn from many recordings is read with a single gather. The file fills chunk by chunk
    as the recordings are read: the first epoch decodes each zarr chunk once, later epochs
    read only the cache.

    The folder ``<cache_dir>/<hash>/`` (hash of the store URL, the manifest's modification
    time, and the path and write time of each recording in the file, so a changed store
    never meets a stale cache) holds ``data.npy``, a plain ``.npy`` file of the rows
    (trials x ..., or times x channels for continuous recordings, so that a window is one
    contiguous block; ``numpy.load(..., mmap_mode="r")`` opens it), ``filled.npy``, one
    byte per zarr chunk set once that chunk's rows are written, and ``info.json``. The
    folder is created under a temporary name and renamed into place, so processes that start
    at once agree on one copy; a chunk written twice by two workers holds the same bytes
    either way. Rows are written with ``pwrite`` and read through a read-only memory map
    opened once per process. The file is sparse: chunks never read take no disk space.
    """

    def __init__(self, cache_dir: str | os.PathLike, url: str, manifest_time: str, layouts: Sequence[RecordingLayout]):
        self.layouts = list(layouts)
        self.row_shape = self.layouts[0].row_shape
        keys = [member.key for member in self.layouts]
        rows = [member.n_rows for member in self.layouts]
        chunks = [member.n_chunks for member in self.layouts]
        self.row_offsets = dict(zip(keys, np.cumsum([0] + rows)[:-1].tolist()))
        self.chunk_offsets = dict(zip(keys, np.cumsum([0] + chunks)[:-1].tolist()))
        self.n_rows, self.n_chunks = sum(rows), sum(chunks)
        self.stamp = "|".join([url, manifest_time] + [f"{member.path}@{member.written}" for member in self.layouts])
        digest = hashlib.sha256(self.stamp.encode()).hexdigest()[:20]
        self.folder = Path(cache_dir).expanduser().absolute() / digest
        self.url = url
        self.row_bytes = int(np.prod(self.row_shape)) * 4
        self._opened: _OpenCache | None = None
        self._known_filled = np.zeros(self.n_chunks, dtype=bool)
        self.complete = False  # every chunk is known to be filled: reads skip the bookkeeping

    @classmethod
    def for_recordings(cls, cache_dir, study: Study, layouts: Sequence[RecordingLayout]) -> dict[str, "DiskCache"]:
        """The cache holding each of ``layouts`` (recording key -> cache)."""
        everything = [RecordingLayout.of(study, key) for key in study.recording_keys]
        manifest = study.manifest
        manifest_time = str(manifest.get("modified", manifest.get("created", "")))
        caches: dict[tuple, DiskCache] = {}
        out = {}
        for layout in layouts:
            group = (layout.layout, layout.row_shape)
            if group not in caches:
                members = [member for member in everything if (member.layout, member.row_shape) == group]
                caches[group] = cls(cache_dir, study.url, manifest_time, members)
            out[layout.key] = caches[group]
        return out

    # ------------------------------------------------------------------ files
    def _create(self) -> None:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.folder.with_name(f".{self.folder.name}.partial-{uuid.uuid4().hex[:8]}")
        temporary.mkdir()
        try:
            rows = np.lib.format.open_memmap(
                temporary / "data.npy", mode="w+", dtype=np.float32, shape=(self.n_rows,) + self.row_shape
            )
            del rows  # the file is allocated sparsely; chunks are written as they are read
            np.save(temporary / "filled.npy", np.zeros(self.n_chunks, dtype=np.uint8))
            info = {
                "store": self.url,
                "stamp": self.stamp,
                "recordings": [
                    {"key": member.key, "first_row": self.row_offsets[member.key], "shape": list(member.shape)}
                    for member in self.layouts
                ],
            }
            (temporary / "info.json").write_text(json.dumps(info, indent=1))
            os.rename(temporary, self.folder)
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            if not (self.folder / "info.json").exists():  # not a lost race with another process
                raise

    def _open(self) -> "_OpenCache":
        if self._opened is None or self._opened.pid != os.getpid():
            if not (self.folder / "info.json").exists():
                self._create()
            try:
                self._opened = _OpenCache(self.folder)
            except (OSError, ValueError) as error:
                raise StoreError(
                    f"disk cache {self.folder} of {self.url} is unreadable ({error}); delete that folder to rebuild it"
                ) from None
            if self._opened.rows.shape != (self.n_rows,) + self.row_shape:
                raise StoreError(
                    f"disk cache {self.folder} has shape {self._opened.rows.shape}; delete it to rebuild it"
                )
            self._known_filled = np.zeros(self.n_chunks, dtype=bool)
            self.complete = False
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opened"] = None
        state["_known_filled"] = np.zeros(self.n_chunks, dtype=bool)
        state["complete"] = False
        return state

    # ---------------------------------------------------------------- content
    def fill(self, reader: RecordingReader, starts: np.ndarray, length: int) -> None:
        """Make sure the chunks of ``reader``'s recording that the ranges touch are cached."""
        chunk_offset = self.chunk_offsets[reader.layout.key]
        missing = self._missing_chunks(chunk_offset + reader.chunks_of(starts, length))
        row_offset = self.row_offsets[reader.layout.key]
        size = reader.layout.chunk_rows
        for first, block in reader.decode_chunk_runs(missing - chunk_offset):
            self._write(row_offset + first, block, chunk_offset + first // size, n_chunks=-(-len(block) // size))

    def _missing_chunks(self, chunk_ids: np.ndarray) -> np.ndarray:
        unknown = chunk_ids[~self._known_filled[chunk_ids]]
        if unknown.size:
            opened = self._open()
            flags = np.frombuffer(os.pread(opened.flags_fd, self.n_chunks, opened.flags_offset), dtype=np.uint8)
            self._known_filled |= flags.astype(bool)
            self.complete = bool(self._known_filled.all())
            unknown = unknown[~self._known_filled[unknown]]
        return unknown

    def _write(self, first_row: int, rows: np.ndarray, first_chunk: int, n_chunks: int) -> None:
        opened = self._open()
        data = np.ascontiguousarray(rows, dtype=np.float32).data
        os.pwrite(opened.data_fd, data, opened.data_offset + first_row * self.row_bytes)
        # The flags are written after the rows: a reader that sees a flag finds the rows.
        os.pwrite(opened.flags_fd, np.ones(n_chunks, dtype=np.uint8).tobytes(), opened.flags_offset + first_chunk)
        self._known_filled[first_chunk : first_chunk + n_chunks] = True
        self.complete = bool(self._known_filled.all())

    def read_into(self, target: np.ndarray, positions: slice | np.ndarray, rows: np.ndarray, length: int) -> None:
        """Rows ``[r, r+length)`` of the cache file (its own row numbers) into ``target[positions]``."""
        copy_rows(target, positions, self._open().rows, rows, length)


class _OpenCache:
    """One process's open files of a cache folder."""

    def __init__(self, folder: Path):
        self.pid = os.getpid()
        mapped = np.load(folder / "data.npy", mmap_mode="r")
        self.data_offset = mapped.offset
        self.rows = mapped.view(np.ndarray)  # plain ndarray: indexing a np.memmap is slower
        self.flags_offset = np.load(folder / "filled.npy", mmap_mode="r").offset
        self.data_fd = os.open(folder / "data.npy", os.O_WRONLY)
        self.flags_fd = os.open(folder / "filled.npy", os.O_RDWR)

    def __del__(self) -> None:
        if getattr(self, "pid", None) == os.getpid():
            for fd in (getattr(self, "data_fd", None), getattr(self, "flags_fd", None)):
                if fd is not None:
                    os.close(fd)


def copy_rows(
    target: np.ndarray, positions: slice | np.ndarray, source: np.ndarray, starts: np.ndarray, length: int
) -> None:
    """``target[p] = source[s : s + length]`` for each position ``p`` and start ``s``, with one copy."""
    if length == 1:
        rows = target.reshape((len(target),) + source.shape[1:])  # (n, 1, ...) -> (n, ...), a view
        if isinstance(positions, slice):
            # mode="clip" lets numpy write straight into the output (starts are checked already).
            np.take(source, starts, axis=0, out=rows[positions], mode="clip")
        else:
            for position, start in zip(positions.tolist(), starts.tolist()):
                rows[position] = source[start]
        return
    if isinstance(positions, slice):
        positions = np.arange(len(target))[positions]
    for position, start in zip(positions.tolist(), starts.tolist()):
        target[position] = source[start : start + length]
