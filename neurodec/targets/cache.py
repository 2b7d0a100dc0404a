"""Compute stimulus embeddings once and keep them in the study store.

Targets are stored under a key with the extractor's full config and its hash; asking
again with the same config reuses them, a changed config (or a changed set of stimuli)
recomputes them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, TargetError
from neurodec.store import Study, config_hash, open_store
from neurodec.targets.base import RUNTIME_OPTIONS, Waveform, extractor_class, load_waveform

logger = logging.getLogger("neurodec")

# Stimulus kinds each extractor input reads.
_KINDS_OF_INPUT = {"image": ("image",), "audio": ("audio",), "text": ("text",)}


class StoredStimuli(Sequence):
    """The inputs of some stimuli of a store, read lazily one batch (slice) at a time.

    Images and sounds come from the store's content arrays or from their ``uri`` (a path,
    absolute or relative to the folder holding the store); a sound's rate from its
    metadata ``sample_rate``; a text from its metadata ``text`` or its ``uri``. A speech
    segment (metadata ``sound``, ``start``, ``stop``, ``sample_rate``: see
    :mod:`neurodec.io.speech`) is the span ``[start, stop)`` of its whole sound, zero-padded
    outside it; a sound file whose rate differs from the recorded one is refused.
    """

    def __init__(self, study: Study, ids: list[str], input_kind: str):
        self.study = study
        self.ids = list(ids)
        self.input_kind = input_kind
        stimuli = study.stimuli
        row = {s: i for i, s in enumerate(stimuli["id"].tolist())}
        self._rows = [row[s] for s in self.ids]
        self._stimuli = stimuli
        self._sounds: dict[Any, Waveform] = {}
        self._check_sources()

    def __len__(self) -> int:
        return len(self.ids)

    def _check_sources(self) -> None:
        if self.input_kind == "id":
            return
        stimuli = self._stimuli
        without = []
        for stimulus_id, r in zip(self.ids, self._rows):
            has_content = bool(stimuli["content_array"][r]) and stimuli["content_index"][r] >= 0
            has_text = self.input_kind == "text" and "text" in json.loads(stimuli["metadata"][r] or "{}")
            if not (has_content or stimuli["uri"][r] or has_text):
                without.append(stimulus_id)
        if without:
            what = "content, metadata 'text' or uri" if self.input_kind == "text" else "content in the store or uri"
            raise TargetError(
                f"{self.study.url}: stimuli {without[:5]}{' ...' if len(without) > 5 else ''} ({len(without)} in all) "
                f"have no {what}, so they cannot be embedded"
            )
        if self.input_kind == "audio" and self.study.location.is_local:
            # Checked before the first batch: a missing sound would otherwise stop a long run midway.
            absent = {}
            for stimulus_id, r in zip(self.ids, self._rows):
                uri = str(stimuli["uri"][r])
                if uri and not (stimuli["content_array"][r] and stimuli["content_index"][r] >= 0):
                    path = self._path(uri)
                    if path not in absent and not os.path.isfile(path):
                        absent[path] = stimulus_id
            if absent:
                path, stimulus_id = next(iter(absent.items()))
                raise TargetError(
                    f"{self.study.url}: sound file {path} does not exist (uri of stimulus {stimulus_id!r}; "
                    f"{len(absent)} sound files missing in all); put the study's sounds back where the store "
                    f"expects them (relative uris start at the folder holding the store)"
                )

    def _path(self, uri: str) -> str:
        if os.path.isabs(uri) or os.path.exists(uri) or not self.study.location.is_local:
            return uri
        return os.path.join(os.path.dirname(os.path.abspath(str(self.study.location.path))), uri)

    def __getitem__(self, index):
        if isinstance(index, slice):
            positions = range(len(self))[index]
            return self._load([self._rows[p] for p in positions])
        return self._load([self._rows[index]])[0]

    def _load(self, rows: list[int]) -> list[Any]:
        stimuli = self._stimuli
        ids = [str(stimuli["id"][r]) for r in rows]
        if self.input_kind == "id":
            return ids
        items: list[Any] = [None] * len(rows)
        # Read stored contents with one read per content array.
        by_array: dict[str, list[int]] = {}
        metadata = [json.loads(stimuli["metadata"][r] or "{}") for r in rows]
        segment = [self.input_kind == "audio" and _is_segment(m) for m in metadata]
        for position, r in enumerate(rows):
            if segment[position]:
                items[position] = self._segment(r, metadata[position])
            elif stimuli["content_array"][r] and stimuli["content_index"][r] >= 0:
                by_array.setdefault(str(stimuli["content_array"][r]), []).append(position)
        for positions in by_array.values():
            values = self.study.stimulus_content([ids[p] for p in positions])
            for p, value in zip(positions, values):
                items[p] = value
        for position, r in enumerate(rows):
            if segment[position]:
                continue
            metadata_of = metadata[position]
            if self.input_kind == "text":
                if "text" in metadata_of:
                    items[position] = str(metadata_of["text"])
                elif items[position] is None:
                    with open(self._path(str(stimuli["uri"][r])), encoding="utf-8") as handle:
                        items[position] = handle.read().strip()
                continue
            if items[position] is None:
                items[position] = self._path(str(stimuli["uri"][r]))
            elif self.input_kind == "audio":
                rate = metadata_of.get("sample_rate")
                if not rate:
                    raise TargetError(
                        f"{self.study.url}: audio stimulus {ids[position]!r} is kept in the store without its "
                        "sampling rate; expected metadata field 'sample_rate' (Hz)"
                    )
                items[position] = Waveform(np.asarray(items[position], dtype=np.float32), float(rate))
        return items

    def _sound(self, row: int, expected_rate: float) -> Waveform:
        """The whole sound a segment is cut from (the last few are kept: segments come in order)."""
        stimuli = self._stimuli
        array, index = str(stimuli["content_array"][row]), int(stimuli["content_index"][row])
        source = (array, index) if array and index >= 0 else self._path(str(stimuli["uri"][row]))
        if source in self._sounds:
            return self._sounds[source]
        if isinstance(source, tuple):
            samples = self.study.stimulus_content([str(stimuli["id"][row])])[0]
            waveform = Waveform(np.asarray(samples, dtype=np.float32), expected_rate)
        else:
            waveform = load_waveform(source)
            if waveform.sample_rate != expected_rate:
                raise TargetError(
                    f"sound file {source}: sampled at {waveform.sample_rate:g} Hz, but the store recorded "
                    f"{expected_rate:g} Hz when the study was converted (segment {stimuli['id'][row]!r}, metadata "
                    f"'sample_rate'); the file was replaced by another version: convert the study again"
                )
        if len(self._sounds) >= 4:
            self._sounds.pop(next(iter(self._sounds)))
        self._sounds[source] = waveform
        return waveform

    def _segment(self, row: int, metadata: dict[str, Any]) -> Waveform:
        """The span ``[start, stop)`` of the segment's sound, zero-padded outside the sound."""
        rate = float(metadata["sample_rate"])
        sound = self._sound(row, rate)
        n_samples = metadata.get("n_samples")
        if n_samples is not None and len(sound.samples) < int(n_samples):
            raise TargetError(f"{self.study.url}: the sound of segment {self._stimuli['id'][row]!r} holds "
                              f"{len(sound.samples)} samples, the store recorded {int(n_samples)}")
        samples = sound.samples[: int(n_samples)] if n_samples is not None else sound.samples
        return Waveform(cut_span(samples, rate, float(metadata["start"]), float(metadata["stop"])), rate)


def _is_segment(metadata: Mapping[str, Any]) -> bool:
    return all(key in metadata for key in ("sound", "start", "stop", "sample_rate"))


def cut_span(samples: np.ndarray, rate: float, start: float, stop: float) -> np.ndarray:
    """Samples from ``start`` to ``stop`` seconds (``round(start * rate)`` on, ``round((stop -
    start) * rate)`` of them), zeros where the span lies outside the sound.

    >>> cut_span(np.arange(1.0, 5.0), 1.0, -1.0, 2.0).tolist()
    [0.0, 1.0, 2.0]
    """
    first, length = int(round(start * rate)), int(round((stop - start) * rate))
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(first, 0), min(first + length, len(samples))
    if hi > lo:
        out[lo - first : hi - first] = samples[lo:hi]
    return out


def _parse_value(text: str) -> Any:
    """A command-line value as JSON where it parses (numbers, lists, null, true), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_config_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (as given to ``--set``) into a config dict.

    >>> parse_config_overrides(["layers=[14,15]", "rate=120", "pretrained=null", "model=ViT-B-32"])
    {'layers': [14, 15], 'rate': 120, 'pretrained': None, 'model': 'ViT-B-32'}
    """
    config = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"expected key=value, found {pair!r}")
        key, value = pair.split("=", 1)
        config[key.strip()] = _parse_value(value.strip())
    return config


def embed_stimuli(
    study_or_url: Study | str | os.PathLike,
    extractor_name: str,
    config: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    device: str = "cpu",
    cache_dir: str | None = None,
    ids: Sequence[str] | None = None,
) -> str:
    """Embed the store's stimuli with an extractor and keep them as targets; returns the key.

    Stimuli embedded are ``ids`` (default: every stimulus whose kind the extractor reads;
    all of them for ``precomputed``). The key defaults to ``"{extractor}-{config hash}"``;
    a chosen ``key`` is an alias, and the hash is stored with the targets either way. If
    targets with the same config hash and the same stimuli exist under the key, they are
    reused and nothing is computed (unless ``overwrite``); a different config replaces them.

    >>> key = embed_stimuli("study.zarr", "open_clip",  # doctest: +SKIP
    ...                     {"model": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"})
    >>> ids, embeddings = open_store("study.zarr").targets(key)  # doctest: +SKIP
    """
    config = dict(config or {})
    runtime = [k for k in RUNTIME_OPTIONS if k in config]
    if runtime:
        raise ConfigError(f"{runtime} are runtime options, not config: pass them as keyword arguments")
    extractor = extractor_class(extractor_name)(device=device, cache_dir=cache_dir, **config)
    full_config = extractor.config
    digest = config_hash(full_config)
    key = key or f"{extractor_name}-{digest}"

    study = study_or_url if isinstance(study_or_url, Study) else open_store(study_or_url, mode="r+")
    stimuli = study.stimuli
    if ids is None:
        if extractor.input_kind == "id":
            ids = stimuli["id"].tolist()
        else:
            kinds = _KINDS_OF_INPUT[extractor.input_kind]
            ids = [s for s, kind in zip(stimuli["id"].tolist(), stimuli["kind"].tolist()) if kind in kinds]
            if not ids:
                raise TargetError(
                    f"{study.url}: extractor {extractor_name!r} reads {extractor.input_kind} stimuli; the store has "
                    f"none (its kinds: {sorted(set(stimuli['kind'].tolist()))})"
                )
    ids = [str(s) for s in ids]
    unknown = sorted(set(ids) - set(stimuli["id"].tolist()))
    if unknown:
        raise TargetError(f"{study.url}: stimulus ids not in the stimuli table: {unknown[:5]}")

    if key in study.target_keys and not overwrite:
        stored = study.target_config(key)
        stored_ids = None
        if stored.get("config_hash") == digest:
            stored_ids = study.targets(key)[0].tolist()
            if stored_ids == ids:
                logger.info("targets %r are up to date in %s (config hash %s); reusing them", key, study.url, digest)
                return key
        logger.info(
            "targets %r in %s were made with %s; recomputing",
            key,
            study.url,
            "other stimuli" if stored_ids is not None else f"config hash {stored.get('config_hash')}",
        )
    if study.read_only:
        study = open_store(study.url, mode="r+", storage_options=study.location.storage_options)

    inputs = StoredStimuli(study, ids, extractor.input_kind)
    embeddings = extractor.embed(inputs, batch_size=batch_size)
    study.add_targets(key, ids, embeddings, full_config, overwrite=True)
    logger.info("stored targets %r: %d stimuli, shape %s", key, len(ids), embeddings.shape[1:])
    return key
