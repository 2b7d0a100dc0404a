"""A small column table (a dict of equal-length numpy arrays).

The store keeps its tables (stimuli, events) as one zarr array per column. ``Table`` is
the in-memory form: it needs only numpy, and converts to pandas on request for analysis.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import numpy as np


class Table(Mapping[str, np.ndarray]):
    """Equal-length named columns, in a fixed order.

    >>> t = Table({"id": ["a", "b"], "repetition": [0, 1]})
    >>> len(t), t["id"].tolist()
    (2, ['a', 'b'])
    """

    def __init__(self, columns: Mapping[str, Any]):
        self._columns: dict[str, np.ndarray] = {}
        length = None
        for name, values in columns.items():
            array = _as_column(values)
            if array.ndim != 1:
                raise ValueError(f"column {name!r} must be one-dimensional, found shape {array.shape}")
            if length is not None and len(array) != length:
                raise ValueError(
                    f"column {name!r} has {len(array)} rows, expected {length} like the columns before it"
                )
            length = len(array)
            self._columns[name] = array
        self._length = length or 0

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], columns: list[str]) -> "Table":
        rows = list(records)
        return cls({name: [row[name] for row in rows] for name in columns})

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    @property
    def n_rows(self) -> int:
        return self._length

    def select(self, rows: np.ndarray | slice | list[int]) -> "Table":
        """The rows picked by an index array, boolean mask or slice, as a new table."""
        return Table({name: column[rows] for name, column in self._columns.items()})

    def with_column(self, name: str, values: Any) -> "Table":
        columns = dict(self._columns)
        columns[name] = values
        return Table(columns)

    def to_pandas(self):
        """A ``pandas.DataFrame`` with the same columns (pandas is imported here only)."""
        import pandas as pd

        return pd.DataFrame({name: column for name, column in self._columns.items()})

    def __repr__(self) -> str:
        return f"Table({self._length} rows: {', '.join(self._columns)})"


def _as_column(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "OSUT":
        return np.asarray([str(v) for v in array.tolist()], dtype=str).reshape(array.shape)
    return array
