"""Where a store lives: a local directory or an fsspec URL (``memory://``, ``s3://``...)."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class Location:
    """A normalised store address: a local path, or a URL with its fsspec options."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> "Location":
        text = os.fspath(url)
        parsed = urlparse(text)
        if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
            path = parsed.path if parsed.scheme == "file" else text
            return cls(str(Path(path).expanduser().absolute()), dict(storage_options or {}))
        return cls(text.rstrip("/"), dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.url)

    def filesystem(self):
        """The fsspec filesystem and the path inside it."""
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def exists(self) -> bool:
        if self.is_local:
            return self.path.exists()
        fs, path = self.filesystem()
        return fs.exists(path)

    def zarr_store(self, read_only: bool):
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=read_only)

    def size_bytes(self) -> int:
        if self.is_local:
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        fs, path = self.filesystem()
        return int(fs.du(path, total=True))

    def sibling_temporary(self) -> "Location":
        """A fresh name next to this one, for writing a store before renaming it into place."""
        if self.is_local:
            temporary = self.path.with_name(f".{self.path.name}.partial-{uuid.uuid4().hex[:8]}")
            return Location(str(temporary), self.storage_options)
        head, _, tail = self.url.rpartition("/")
        return Location(f"{head}/.{tail}.partial-{uuid.uuid4().hex[:8]}", self.storage_options)

    def move_to(self, target: "Location") -> None:
        """Rename this store onto ``target`` (atomic on a local filesystem)."""
        if self.is_local:
            os.replace(self.path, target.path)
            return
        fs, path = self.filesystem()
        _, target_path = target.filesystem()
        fs.mv(path, target_path, recursive=True)

    def remove(self) -> None:
        if self.is_local:
            if self.path.is_dir():
                shutil.rmtree(self.path)
            elif self.path.exists():
                self.path.unlink()
            return
        fs, path = self.filesystem()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def __str__(self) -> str:
        return self.url
