"""The metrics log of a run: ``metrics.jsonl`` (one JSON object per row) and ``metrics.csv``.

Rows are appended and flushed as they come, so a reader (or a test) can follow a live run.
A resumed run cuts the log back to the rows written before its checkpoint, so replayed
steps are not logged twice. TensorBoard event files are written too when ``tensorboard``
is installed (``purge_step`` drops the replayed steps there).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("neurodec")

JSONL_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"


def _write_text_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a run's ``metrics.jsonl`` (a torn last line from a killed process is skipped).

    >>> rows = read_history("runs/demo")                    # doctest: +SKIP
    >>> [row["val/loss"] for row in rows if "val/loss" in row]   # doctest: +SKIP
    """
    path = Path(run_dir) / JSONL_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class MetricsLog:
    """Appends rows to ``metrics.jsonl``; rewrites ``metrics.csv`` on :meth:`flush_csv`."""

    def __init__(self, run_dir: Path, keep_rows: int | None, purge_step: int | None, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.n_rows = 0
        self._tensorboard = None
        self._rows: list[dict[str, Any]] = []
        if not enabled:
            return
        rows = read_history(self.run_dir)
        rows = rows[:keep_rows] if keep_rows is not None else []  # None: a fresh run
        text = "".join(json.dumps(row) + "\n" for row in rows)
        _write_text_atomically(self.run_dir / JSONL_FILE, text)
        self.n_rows = len(rows)
        self._rows = rows
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        try:
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        except Exception as error:  # a broken tensorboard install must not stop training
            logger.warning("tensorboard logging disabled: %s", error)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {key: _json_value(value) for key, value in row.items()}
        with open(self.run_dir / JSONL_FILE, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")
            stream.flush()
        self._rows.append(row)
        self.n_rows += 1
        if self._tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["step"])

    def flush_csv(self) -> None:
        if not self.enabled:
            return
        columns: list[str] = []
        for row in self._rows:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        _write_text_atomically(self.run_dir / CSV_FILE, buffer.getvalue())
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        self.flush_csv()
        if self._tensorboard is not None:
            self._tensorboard.close()
