"""Shared fixtures: the real recordings in ../shared/data/real and small stores built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """Where the real test recordings live (``NEURODEC_TEST_DATA`` overrides the default)."""
    return Path(os.environ.get("NEURODEC_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real recordings; tests that need it skip with a reason where it is absent."""
    folder = real_data_dir()
    if not folder.is_dir():
        pytest.skip(f"real recordings not found at {folder} (set NEURODEC_TEST_DATA to their folder)")
    return folder
