"""Targets computed elsewhere: embeddings read from a file, looked up by stimulus id."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from neurodec.errors import ConfigError, TargetError
from neurodec.targets.base import Extractor, register_extractor


@register_extractor
class PrecomputedEmbedding(Extractor):
    """Rows of an ``.npz`` file with arrays ``ids`` (n,) and ``embeddings`` (n, ...).

    Also reads an ``.npy`` of embeddings with ``ids_path`` naming a text file (one id per
    line) or an ``.npy`` of ids. Every requested id must be in the file, ids must be
    unique, and embeddings finite. ``sha256`` records the file's content in the config, so
    a changed file is a changed config (and recomputed targets).

    >>> extractor = get_extractor("precomputed", path="clip_vith14.npz")  # doctest: +SKIP
    >>> extractor.embed(["stim-001", "stim-002"]).shape  # doctest: +SKIP
    (2, 1024)
    """

    name = "precomputed"
    input_kind = "id"
    defaults = {"path": "", "ids_path": None, "sha256": None}

    def check_config(self, config: Mapping[str, Any]) -> None:
        path = config["path"]
        if not path:
            raise ConfigError("precomputed: set 'path' to an .npz file with arrays 'ids' and 'embeddings'")
        if not os.path.isfile(path):
            raise TargetError(f"precomputed: embeddings file {path} does not exist")
        if config["sha256"] is None:
            self._config["sha256"] = _sha256(path)
        elif config["sha256"] != _sha256(path):
            raise TargetError(f"precomputed: {path} changed since its sha256 {config['sha256']} was recorded")
        self._table: dict[str, int] | None = None
        self._embeddings: np.ndarray | None = None

    def load(self) -> tuple[dict[str, int], np.ndarray]:
        if self._table is not None:
            return self._table, self._embeddings
        path, ids_path = self._config["path"], self._config["ids_path"]
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in ("ids", "embeddings") if k not in archive.files]
                if missing:
                    raise TargetError(f"precomputed: {path} lacks arrays {missing}; it holds {archive.files}")
                ids, embeddings = archive["ids"], archive["embeddings"]
        elif path.endswith(".npy"):
            if not ids_path or not os.path.isfile(ids_path):
                raise ConfigError(f"precomputed: {path} is an .npy of embeddings; set 'ids_path' to an existing ids file")
            embeddings = np.load(path, allow_pickle=False)
            if ids_path.endswith(".npy"):
                ids = np.load(ids_path, allow_pickle=False)
            else:
                with open(ids_path, encoding="utf-8") as handle:
                    ids = np.asarray([line.strip() for line in handle if line.strip()])
        else:
            raise ConfigError(f"precomputed: expected an .npz or .npy file, found {path}")
        ids = np.asarray(ids).astype(str)
        if ids.ndim != 1 or embeddings.ndim < 2 or len(ids) != len(embeddings):
            raise TargetError(
                f"precomputed: {path}: expected ids (n,) and embeddings (n, dim, ...); found ids {ids.shape} "
                f"and embeddings {embeddings.shape}"
            )
        if len(set(ids.tolist())) != len(ids):
            raise TargetError(f"precomputed: {path}: stimulus ids are repeated")
        if embeddings.dtype.kind not in "fiu" or not np.all(np.isfinite(embeddings)):
            raise TargetError(f"precomputed: {path}: embeddings must be finite numbers (found dtype {embeddings.dtype})")
        self._table = {s: i for i, s in enumerate(ids.tolist())}
        self._embeddings = embeddings
        return self._table, self._embeddings

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        table, embeddings = self.load()
        missing = [str(s) for s in batch if str(s) not in table]
        if missing:
            raise TargetError(
                f"precomputed: {self._config['path']} has no embeddings for stimulus ids {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)"
            )
        return embeddings[[table[str(s)] for s in batch]]


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
