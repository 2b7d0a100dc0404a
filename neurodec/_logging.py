"""The single ``neurodec`` logger and the progress-bar helper used by library code."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

logger = logging.getLogger("neurodec")
logger.addHandler(logging.NullHandler())

T = TypeVar("T")


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """Wrap a loop a person waits for in a tqdm bar (shown only on a terminal)."""
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() or logger.getEffectiveLevel() > logging.INFO
    return tqdm(iterable, desc=description, total=total, disable=disable, leave=False)
