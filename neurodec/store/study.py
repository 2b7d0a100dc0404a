"""The study store: reading, validating and adding to a zarr v3 store.

The layout is specified in ``docs/store-format.md``. In short::

    <store>/zarr.json                  root group; attributes["neurodec"] = manifest
    <store>/stimuli/<column>           one array per column of the stimuli table
    <store>/stimuli/content/<name>     stimulus contents kept in the store (e.g. images)
    <store>/recordings/<name>/data     channels x times | trials x channels x times | trials x voxels
    <store>/recordings/<name>/events/<column>
    <store>/targets/<name>/{stimulus_id, embedding}

Only what the manifest (the root group's ``neurodec`` attribute) lists is part of the
store. The manifest is the last thing written by every change, in one write, so an
interrupted change leaves the store as it was: at worst an unlisted group that is ignored
and replaced by the next write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

from neurodec.errors import (
    EventError,
    IncompleteStoreError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    StoreSchemaError,
    StoreVersionError,
)
from neurodec.store._location import Location
from neurodec.store._table import Table
from neurodec.store.records import (
    EVENT_COLUMNS,
    STIMULUS_COLUMNS,
    RecordingData,
    check_stimulus_table,
    recording_key,
)

logger = logging.getLogger("neurodec")

FORMAT_NAME = "neurodec-study"
FORMAT_VERSION = "1.0"
MANIFEST_ATTRIBUTE = "neurodec"
# Aim for chunks of about this many bytes: large enough for fast sequential reads and
# good compression, small enough that one random trial does not decode megabytes.
TARGET_CHUNK_BYTES = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def library_versions() -> dict[str, str]:
    """Versions of neurodec and the libraries whose behaviour shapes a store's content."""
    from importlib import metadata

    versions = {}
    for package in ("neurodec", "numpy", "zarr", "mne", "mne-bids", "nibabel", "nilearn", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable short hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _chunk_rows(row_shape: tuple[int, ...], itemsize: int, n_rows: int) -> int:
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    return int(max(1, min(n_rows, TARGET_CHUNK_BYTES // row_bytes)))


def _write_array(group, name: str, values: np.ndarray, chunks: tuple[int, ...] | None = None):
    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        array = group.create_array(name, shape=values.shape, dtype=str, overwrite=True)
        if values.size:
            array[...] = values.astype(str)
        return array
    if chunks is None and values.ndim >= 1 and values.shape[0] > 0:
        chunks = (_chunk_rows(values.shape[1:], values.dtype.itemsize, values.shape[0]),) + values.shape[1:]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks, overwrite=True)
    if values.size:
        array[...] = values
    return array


def _write_table(group, name: str, table: Table) -> None:
    sub = group.create_group(name, overwrite=True, attributes={"columns": list(table), "n_rows": table.n_rows})
    for column in table:
        _write_array(sub, column, table[column], chunks=(max(1, table.n_rows),))


def _as_str(values: np.ndarray) -> np.ndarray:
    """Variable-length strings as read by zarr, as a fixed-width numpy string array."""
    return np.asarray(values.tolist(), dtype=str).reshape(values.shape)


def _read_table(group, name: str) -> Table:
    sub = group[name]
    columns = sub.attrs["columns"]
    out = {}
    for column in columns:
        values = sub[column][...]
        out[column] = _as_str(values) if values.dtype.kind == "T" else values
    return Table(out)


class Recording:
    """One recording of a store, read lazily.

    ``data`` is the zarr array itself: index it to read only what you need
    (``recording.data[10:20]`` reads ten trials).
    """

    def __init__(self, study: "Study", key: str, group):
        self.study = study
        self.key = key
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)

    def __repr__(self) -> str:
        return f"<Recording {self.key} {self.modality} {self.layout} {tuple(self.shape)}>"

    # Descriptive attributes, read from the group's metadata.
    subject = property(lambda self: self.attrs["subject"])
    session = property(lambda self: self.attrs["session"])
    run = property(lambda self: self.attrs["run"])
    modality = property(lambda self: self.attrs["modality"])
    layout = property(lambda self: self.attrs["layout"])
    sfreq = property(lambda self: self.attrs.get("sfreq"))
    tmin = property(lambda self: self.attrs.get("tmin", 0.0))
    ch_names = property(lambda self: list(self.attrs.get("ch_names", [])))
    ch_types = property(lambda self: list(self.attrs.get("ch_types", [])))
    units = property(lambda self: list(self.attrs.get("units", [])))
    preprocessing = property(lambda self: list(self.attrs.get("preprocessing", [])))
    source = property(lambda self: dict(self.attrs.get("source", {})))

    @property
    def data(self):
        return self._group["data"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._group["data"].shape)

    @property
    def n_trials(self) -> int:
        return self.shape[0] if self.layout in ("epoched", "fmri") else 0

    @property
    def events(self) -> Table:
        return _read_table(self._group, "events")

    def _optional(self, name: str) -> np.ndarray | None:
        return self._group[name][...] if name in self._group else None

    @property
    def sensor_positions(self) -> np.ndarray | None:
        return self._optional("sensor_positions")

    @property
    def mask(self) -> np.ndarray | None:
        return self._optional("mask")

    @property
    def affine(self) -> np.ndarray | None:
        return self._optional("affine")

    @property
    def voxel_ijk(self) -> np.ndarray | None:
        return self._optional("voxel_ijk")


class Study:
    """An opened study store. Use :func:`open_store` to get one."""

    def __init__(self, location: Location, group, read_only: bool):
        self.location = location
        self._group = group
        self.read_only = read_only
        self._manifest = dict(group.attrs[MANIFEST_ATTRIBUTE])

    # ----------------------------------------------------------------- reading
    @property
    def url(self) -> str:
        return self.location.url

    @property
    def format_version(self) -> str:
        return self._manifest["format_version"]

    @property
    def name(self) -> str:
        return self._manifest.get("name", "")

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._manifest.get("provenance", {}))

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    def __repr__(self) -> str:
        return f"<Study {self.name!r} at {self.url}: {len(self.recording_keys)} recordings>"

    @property
    def stimuli(self) -> Table:
        """The stimuli table (columns: see ``neurodec.store.records.STIMULUS_COLUMNS``)."""
        return _read_table(self._group, "stimuli")

    def stimulus_content(self, ids: list[str] | np.ndarray) -> np.ndarray:
        """Contents kept in the store for the given stimulus ids, stacked in that order."""
        stimuli = self.stimuli
        position = {s: i for i, s in enumerate(stimuli["id"].tolist())}
        missing = [s for s in ids if s not in position]
        if missing:
            raise StoreError(f"{self.url}: unknown stimulus ids {missing[:5]}")
        rows = [position[s] for s in ids]
        arrays = {stimuli["content_array"][r] for r in rows}
        if "" in arrays or len(arrays) != 1:
            raise StoreError(
                f"{self.url}: stimuli {list(ids)[:3]}... are not all kept in one content array "
                f"(found {sorted(arrays)}); read them from their 'uri' instead"
            )
        content = self._group["stimuli/content"][arrays.pop()]
        index = stimuli["content_index"][rows]
        order = np.argsort(index)
        values = content.get_orthogonal_selection((index[order],))
        out = np.empty_like(values)
        out[order] = values
        return out

    @property
    def content_arrays(self) -> list[str]:
        if "content" not in self._group["stimuli"]:
            return []
        return sorted(self._group["stimuli/content"].array_keys())

    @property
    def recording_keys(self) -> list[str]:
        return [entry["key"] for entry in self._manifest["recordings"]]

    def recordings(self, subject: str | None = None, modality: str | None = None) -> list[Recording]:
        """Recordings in manifest order, optionally of one subject and/or modality."""
        found = [self.recording(key) for key in self.recording_keys]
        return [
            r
            for r in found
            if (subject is None or r.subject == subject) and (modality is None or r.modality == modality)
        ]

    def recording(self, key: str | None = None, *, subject: str | None = None, session: str = "01", run: str = "01"):
        """One recording by key (``sub-01/ses-01/run-01``) or by subject, session and run."""
        if key is None:
            if subject is None:
                raise StoreError("recording(): give a key or a subject")
            key = recording_key(subject, session, run)
        for entry in self._manifest["recordings"]:
            if entry["key"] == key:
                return Recording(self, key, self._group[entry["path"]])
        raise StoreError(f"{self.url}: no recording {key!r}; the store holds {self.recording_keys}")

    @property
    def subjects(self) -> list[str]:
        seen: dict[str, None] = {}
        for entry in self._manifest["recordings"]:
            seen[entry["subject"]] = None
        return list(seen)

    @property
    def target_keys(self) -> list[str]:
        return [entry["key"] for entry in self._manifest["targets"]]

    def targets(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(stimulus_ids, embeddings)`` of one target set."""
        group = self._target_group(key)
        ids = _as_str(group["stimulus_id"][...])
        return ids, group["embedding"][...]

    def target_rows(self, key: str, stimulus_ids) -> np.ndarray:
        """The embeddings of some stimuli of one target set, in the order of ``stimulus_ids``.

        Reads only those rows (a target set of time-resolved features can be far larger
        than memory); the ids are read in full.

        >>> study.target_rows("mel", ["story0@1.00s"]).shape       # doctest: +SKIP
        (1, 40, 360)
        """
        group = self._target_group(key)
        ids = _as_str(group["stimulus_id"][...])
        row_of = {name: row for row, name in enumerate(ids.tolist())}
        wanted = [str(name) for name in np.asarray(stimulus_ids, dtype=object).ravel().tolist()]
        unknown = [name for name in wanted if name not in row_of]
        if unknown:
            raise StoreError(f"{self.url}: targets {key!r} have no rows for stimuli {unknown[:5]} "
                             f"({len(unknown)} missing of {len(wanted)})")
        rows = np.asarray([row_of[name] for name in wanted], dtype=np.int64)
        array = group["embedding"]
        if not len(rows):
            return np.empty((0, *array.shape[1:]), dtype=array.dtype)
        distinct, back = np.unique(rows, return_inverse=True)
        return array.get_orthogonal_selection((distinct,) + (slice(None),) * (array.ndim - 1))[back]

    def target_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._target_group(key)["embedding"].shape)

    def target_config(self, key: str) -> dict[str, Any]:
        return dict(self._target_group(key).attrs)

    def _target_group(self, key: str):
        for entry in self._manifest["targets"]:
            if entry["key"] == key:
                return self._group[entry["path"]]
        raise StoreError(f"{self.url}: no targets {key!r}; the store holds {self.target_keys or 'none'}")

    def size_bytes(self) -> int:
        return self.location.size_bytes()

    # ----------------------------------------------------------------- writing
    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.url} was opened read-only; open it with mode='r+' to add to it")

    def _fresh_path(self, prefix: str, key: str) -> str:
        """A group path for new content that no listed entry uses.

        A group left at the plain path by an interrupted write is not listed, so it is
        simply written over; a listed one (being replaced) keeps serving readers until
        the manifest points at the new path.
        """
        base = f"{prefix}/{key.replace('/', '_')}"
        taken = {e["path"] for e in self._manifest["recordings"] + self._manifest["targets"]}
        return base if base not in taken else f"{base}~{uuid.uuid4().hex[:8]}"

    def _remove_replaced(self, entries: list[dict[str, Any]], key: str) -> None:
        for entry in entries:
            if entry["key"] == key and entry["path"] in self._group:
                del self._group[entry["path"]]

    def add_recording(self, recording: RecordingData, *, overwrite: bool = False) -> Recording:
        """Write one recording; it becomes part of the store only once fully written."""
        self._require_writable()
        recording.validate()
        key = recording.key
        if key in self.recording_keys and not overwrite:
            raise StoreExistsError(f"{self.url}: recording {key} exists; pass overwrite=True to replace it")
        _check_events_known(recording, self.stimuli)
        path = self._fresh_path("recordings", key)
        _write_recording_group(self._group, path, recording)
        previous = self._manifest["recordings"]
        entries = [e for e in previous if e["key"] != key]
        entries.append({"key": key, "path": path, "subject": recording.subject})
        self._commit(recordings=entries)
        self._remove_replaced(previous, key)
        return self.recording(key)

    def add_targets(
        self,
        key: str,
        stimulus_ids: list[str] | np.ndarray,
        embeddings: np.ndarray,
        config: Mapping[str, Any],
        *,
        overwrite: bool = False,
    ) -> str:
        """Store embeddings of stimuli under ``key`` with the extractor's config."""
        self._require_writable()
        ids = np.asarray([str(s) for s in stimulus_ids])
        embeddings = np.asarray(embeddings)
        if embeddings.shape[0] != len(ids):
            raise StoreSchemaError(
                f"targets {key!r}: {embeddings.shape[0]} embeddings for {len(ids)} stimulus ids"
            )
        unknown = sorted(set(ids.tolist()) - set(self.stimuli["id"].tolist()))
        if unknown:
            raise StoreSchemaError(f"targets {key!r}: stimulus ids not in the stimuli table: {unknown[:5]}")
        if key in self.target_keys and not overwrite:
            raise StoreExistsError(f"{self.url}: targets {key!r} exist; pass overwrite=True to replace them")
        path = self._fresh_path("targets", key)
        attributes = {"key": key, "config": dict(config), "config_hash": config_hash(config), "created": _now()}
        group = self._group.create_group(path, overwrite=True, attributes=attributes)
        _write_array(group, "stimulus_id", ids)
        _write_array(group, "embedding", embeddings.astype(np.float32, copy=False))
        previous = self._manifest["targets"]
        entries = [e for e in previous if e["key"] != key]
        entries.append({"key": key, "path": path, "config_hash": attributes["config_hash"]})
        self._commit(targets=entries)
        self._remove_replaced(previous, key)
        return key

    def _commit(self, **changes: Any) -> None:
        """Publish changes by rewriting the manifest: the one write that makes them visible."""
        manifest = dict(self._manifest)
        manifest.update(changes)
        manifest["modified"] = _now()
        self._group.attrs.update({MANIFEST_ATTRIBUTE: manifest})
        self._manifest = manifest

    # -------------------------------------------------------------- validation
    def validate(self, deep: bool = False) -> None:
        """Check the schema; ``deep=True`` also checks that events name known stimuli."""
        where = self.url
        if "stimuli" not in self._group:
            raise StoreSchemaError(f"{where}: missing group 'stimuli'")
        stimuli = self.stimuli
        check_stimulus_table(stimuli, where=f"{where}/stimuli")
        known = set(stimuli["id"].tolist())
        for entry in self._manifest["recordings"]:
            if entry["path"] not in self._group:
                raise StoreSchemaError(f"{where}: recording {entry['key']} listed at {entry['path']} is missing")
            group = self._group[entry["path"]]
            for required in ("data", "events"):
                if required not in group:
                    raise StoreSchemaError(f"{where}/{entry['path']}: missing {required!r}")
            attrs = group.attrs
            for field_name in ("subject", "session", "run", "modality", "layout"):
                if field_name not in attrs:
                    raise StoreSchemaError(f"{where}/{entry['path']}: attribute {field_name!r} is missing")
            events_columns = group["events"].attrs.get("columns", [])
            if list(events_columns) != list(EVENT_COLUMNS):
                raise StoreSchemaError(
                    f"{where}/{entry['path']}/events: columns expected {list(EVENT_COLUMNS)}, found {events_columns}"
                )
            shape = group["data"].shape
            n_events = group["events"].attrs.get("n_rows")
            if attrs["layout"] in ("epoched", "fmri") and shape[0] != n_events:
                raise StoreSchemaError(
                    f"{where}/{entry['path']}: {shape[0]} trials but {n_events} events"
                )
            if deep:
                ids = set(group["events/stimulus_id"][...].tolist()) - {""}
                if ids - known:
                    raise StoreSchemaError(
                        f"{where}/{entry['path']}: events name unknown stimuli {sorted(ids - known)[:5]}"
                    )
        for entry in self._manifest["targets"]:
            if entry["path"] not in self._group:
                raise StoreSchemaError(f"{where}: targets {entry['key']} listed at {entry['path']} are missing")


def _check_events_known(recording: RecordingData, stimuli: Table) -> None:
    """Refuse events naming stimuli absent from the stimuli table (markers with no id pass)."""
    unknown = sorted(set(recording.events["stimulus_id"].tolist()) - set(stimuli["id"].tolist()) - {""})
    if unknown:
        raise EventError(
            f"recording {recording.key} (source {recording.source.get('file', '?')}): events name "
            f"{len(unknown)} stimuli absent from the stimuli table, e.g. {unknown[:5]}"
        )


def _write_recording_group(root, path: str, recording: RecordingData) -> None:
    attributes = {
        "subject": recording.subject,
        "session": recording.session,
        "run": recording.run,
        "task": recording.task,
        "modality": recording.modality,
        "layout": recording.layout,
        "sfreq": recording.sfreq,
        "tmin": float(recording.tmin),
        "ch_names": list(recording.ch_names),
        "ch_types": list(recording.ch_types),
        "units": list(recording.units),
        "bads": list(recording.bads),
        "preprocessing": list(recording.preprocessing),
        "source": dict(recording.source),
        "converter": dict(recording.converter),
        "info": dict(recording.info),
        "written": _now(),
    }
    # Round-trip through JSON first so an unserialisable value fails before any write.
    attributes = json.loads(json.dumps(attributes, default=_json_default))
    group = root.create_group(path, overwrite=True, attributes=attributes)
    data = np.asarray(recording.data, dtype=np.float32)
    if recording.layout == "continuous":
        n_channels, n_times = data.shape
        chunk_times = max(1, min(n_times, TARGET_CHUNK_BYTES // (4 * max(1, n_channels))))
        _write_array(group, "data", data, chunks=(n_channels, chunk_times))
    else:
        _write_array(group, "data", data)
    _write_table(group, "events", recording.events)
    if recording.sensor_positions is not None:
        _write_array(group, "sensor_positions", np.asarray(recording.sensor_positions, dtype=np.float64))
    if recording.layout == "fmri":
        _write_array(group, "mask", np.asarray(recording.mask, dtype=bool))
        _write_array(group, "affine", np.asarray(recording.affine, dtype=np.float64))
        _write_array(group, "voxel_ijk", np.asarray(recording.voxel_ijk, dtype=np.int32))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------- opening
def open_store(url, mode: str = "r", storage_options: dict[str, Any] | None = None) -> Study:
    """Open a study store from a path or fsspec URL and validate its version and schema.

    ``mode`` is ``"r"`` (read only) or ``"r+"`` (add recordings or targets).

    >>> study = open_store("demo.zarr")                        # doctest: +SKIP
    >>> study.recordings(modality="eeg")[0].data[:10].shape     # doctest: +SKIP
    (10, 64, 200)
    """
    import zarr

    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', found {mode!r}")
    location = Location.parse(url, storage_options)
    if not location.exists():
        raise StoreNotFoundError(f"no study store at {location.url}")
    try:
        group = zarr.open_group(location.zarr_store(read_only=mode == "r"), mode="r" if mode == "r" else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as error:
        raise IncompleteStoreError(
            f"{location.url} is not a complete neurodec store (no readable root group: {error}); "
            f"it may be a half-written store: write it again"
        ) from None
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise StoreSchemaError(f"{location.url}: unreadable root metadata ({error})") from None
    manifest = group.attrs.get(MANIFEST_ATTRIBUTE)
    if manifest is None:
        raise IncompleteStoreError(
            f"{location.url} has no neurodec manifest: it is a half-written store or not a neurodec store"
        )
    if manifest.get("format") != FORMAT_NAME:
        raise StoreSchemaError(f"{location.url}: format expected {FORMAT_NAME!r}, found {manifest.get('format')!r}")
    check_version(str(manifest.get("format_version", "")), location.url)
    study = Study(location, group, read_only=mode == "r")
    study.validate()
    return study


def check_version(found: str, where: str) -> None:
    """Accept a store of the same major version and an equal or older minor version."""
    try:
        major, minor = (int(p) for p in found.split("."))
    except ValueError:
        raise StoreVersionError(f"{where}: format_version {found!r} is not of the form MAJOR.MINOR") from None
    our_major, our_minor = (int(p) for p in FORMAT_VERSION.split("."))
    if major != our_major or minor > our_minor:
        raise StoreVersionError(
            f"{where}: store format version {found} cannot be read by this neurodec "
            f"(reads {our_major}.0 to {FORMAT_VERSION}); "
            + ("upgrade neurodec" if (major, minor) > (our_major, our_minor) else "migrate the store")
        )


# --------------------------------------------------------------------- writing
class StoreWriter:
    """Write a new store; it appears at its final location only when complete.

    On a local filesystem everything is written under a hidden temporary name next to the
    target and renamed into place by :meth:`commit`. On object stores (``s3://``...) the
    manifest is written last, so a reader sees either a complete store or an incomplete one
    that :func:`open_store` refuses.

    >>> with StoreWriter("study.zarr", name="my study") as writer:  # doctest: +SKIP
    ...     writer.set_stimuli(table, content={"images": images})
    ...     writer.add_recording(recording)
    """

    def __init__(
        self,
        url,
        *,
        name: str = "",
        overwrite: bool = False,
        provenance: Mapping[str, Any] | None = None,
        description: str = "",
        storage_options: dict[str, Any] | None = None,
    ):
        import zarr

        self.target = Location.parse(url, storage_options)
        if self.target.exists() and not overwrite:
            raise StoreExistsError(f"{self.target.url} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        self.overwrite = overwrite
        self.working = self.target.sibling_temporary() if self.target.is_local else self.target
        if not self.target.is_local and self.target.exists():
            self.target.remove()
        self._root = zarr.open_group(self.working.zarr_store(read_only=False), mode="w")
        self._manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": name,
            "description": description,
            "created": _now(),
            "provenance": {"libraries": library_versions(), **dict(provenance or {})},
            "recordings": [],
            "targets": [],
        }
        self._stimuli: Table | None = None
        self._recordings: list[dict[str, Any]] = []
        self._done = False

    def set_stimuli(self, table: Table, content: Mapping[str, np.ndarray] | None = None) -> None:
        check_stimulus_table(table, where=f"{self.target.url}: stimuli")
        content = dict(content or {})
        for array_name, index in zip(table["content_array"].tolist(), table["content_index"].tolist()):
            if array_name and (array_name not in content or not 0 <= index < len(content[array_name])):
                raise StoreSchemaError(
                    f"stimuli table: content {array_name!r} row {index} is not in the content arrays given"
                )
        _write_table(self._root, "stimuli", table)
        if content:
            group = self._root["stimuli"].create_group("content")
            for array_name, values in content.items():
                _write_array(group, array_name, np.asarray(values))
        self._stimuli = table

    def add_recording(self, recording: RecordingData) -> None:
        if self._stimuli is None:
            raise StoreError("set_stimuli() must come before add_recording(), so events can be checked")
        recording.validate()
        if any(e["key"] == recording.key for e in self._recordings):
            raise StoreExistsError(f"recording {recording.key} was already added to this store")
        _check_events_known(recording, self._stimuli)
        path = f"recordings/{recording.key.replace('/', '_')}"
        _write_recording_group(self._root, path, recording)
        self._recordings.append({"key": recording.key, "path": path, "subject": recording.subject})

    def update_provenance(self, entries: Mapping[str, Any]) -> None:
        """Add (or replace) top-level provenance entries before :meth:`commit`, for what is
        known only once the recordings are written (e.g. how many events a converter dropped)."""
        self._manifest["provenance"].update(dict(entries))

    def commit(self) -> Study:
        if self._stimuli is None:
            raise StoreError(f"{self.target.url}: a store needs a stimuli table (set_stimuli) before commit")
        self._manifest["recordings"] = self._recordings
        self._root.attrs.update({MANIFEST_ATTRIBUTE: self._manifest})
        if self.working != self.target:
            backup = None
            if self.target.exists():
                backup = self.target.sibling_temporary()
                self.target.move_to(backup)
            self.working.move_to(self.target)
            if backup is not None:
                backup.remove()
        self._done = True
        logger.info("wrote store %s (%d recordings)", self.target.url, len(self._recordings))
        return open_store(self.target.url, storage_options=self.target.storage_options)

    def abort(self) -> None:
        if not self._done and self.working != self.target:
            self.working.remove()
        self._done = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
