"""Readers and option helpers the study recipes share, one implementation each.

The recipes read their studies' own files; what several of them read the same way lives
here: BIDS roots, labels and ``events.tsv`` columns (MEG-MASC, MOUS), MATLAB files (Brennan,
Broderick), option checks, and the :class:`~neurodec.io.options.IngestOptions` fields of a
speech recipe (the paper's 120 Hz laid under the caller's preprocessing). The segments, the
events and the store itself are :mod:`neurodec.io.recipes._speech`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, EventError, InputFileError

#: Défossez et al. (2023) and brainmagick (``dset.sample_rate: 120``, ``dset.highpass: 0``):
#: every study resampled to 120 Hz, no filter. Polyphase keeps each 120 Hz sample at k / 120 s,
#: so word onsets land on their sample (MNE's default FFT resampling with ``npad="auto"`` moves
#: the data by up to half an output sample against the events).
SPEECH_PREPROCESSING: dict[str, Any] = {"resample": 120.0, "resample_method": "polyphase"}
#: The EEG recipes' default: a 0.5-40 Hz band-pass before the same resampling
#: (docs/recipes-eeg.md says why: no per-window baseline, line noise at 120 Hz's Nyquist).
EEG_PREPROCESSING: dict[str, Any] = {"bandpass": {"l_freq": 0.5, "h_freq": 40.0}, **SPEECH_PREPROCESSING}
#: The MEG sensors by type: reference sensors, trigger and misc channels are left out. (The
#: type name "meg" would keep CTF's reference channels: MNE adds them while compensation is on.)
MEG_PICKS = ("mag", "grad")
EEG_PICKS = ("eeg",)


# ------------------------------------------------------------------ options
def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """``value`` when it is one of ``choices``, else a :class:`~neurodec.errors.ConfigError`.

    >>> check_choice("drop", "on_outside", ("error", "drop"))
    'drop'
    """
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {list(choices)}, found {value!r}")
    return value


def ingest_options(preprocessing: Mapping[str, Any] | None, picks: Sequence[str] | str | None, *,
                   defaults: Mapping[str, Any] = SPEECH_PREPROCESSING, modality: str | None = None) -> dict[str, Any]:
    """The :class:`~neurodec.io.options.IngestOptions` fields of a speech recipe.

    ``preprocessing`` holds :class:`~neurodec.io.options.PreprocessingOptions` fields laid
    over ``defaults`` (so ``--set preprocessing.resample=100`` keeps the polyphase method,
    and ``{"bandpass": None}`` removes the EEG recipes' band-pass); ``None`` keeps the
    recordings as they are (no step at all). ``picks`` are MNE channel types or names.

    >>> ingest_options({"bandpass": {"l_freq": 0.1, "h_freq": 40}}, ["mag"])["preprocessing"]["resample"]
    120.0
    >>> ingest_options({"bandpass": None}, "eeg", defaults=EEG_PREPROCESSING)["preprocessing"]["bandpass"] is None
    True
    """
    if preprocessing is None:
        chosen: dict[str, Any] = {}
    else:
        given = preprocessing.model_dump(exclude_unset=True) if hasattr(preprocessing, "model_dump") else preprocessing
        chosen = {**dict(defaults), **dict(given)}
    picks = [picks] if isinstance(picks, str) else picks
    return {"modality": modality, "picks": list(picks) if picks else None, "preprocessing": chosen}


# ------------------------------------------------------------------ BIDS folders
def bids_root(source: str | Path, study: str) -> Path:
    """The BIDS root of a study, checked (a folder with ``dataset_description.json``)."""
    from neurodec.io.bids import is_bids_root

    root = Path(source).expanduser()
    if not root.is_dir():
        raise InputFileError(f"{study}: source folder {root} does not exist")
    if not is_bids_root(root):
        raise InputFileError(f"{study}: {root} is not a BIDS root (no dataset_description.json); pass the folder "
                             f"that holds dataset_description.json and the sub-* folders")
    return root


def bids_labels(labels: str | int | Sequence[str | int] | None) -> list[str] | None:
    """BIDS labels as a list of text (``--set sessions=0`` arrives as the integer 0).

    >>> bids_labels(0), bids_labels(["01", 2]), bids_labels(None)
    (['0'], ['01', '2'], None)
    """
    if labels is None:
        return None
    if isinstance(labels, (str, int)):
        return [str(labels)]
    return [str(label) for label in labels]


def read_events_tsv(path: Path, required: Sequence[str]):
    """A BIDS ``events.tsv`` as text columns (a DataFrame); ``required`` columns must be present."""
    import pandas as pd

    from neurodec.io._files import read_with

    frame = read_with(lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig"),
                      path, "a BIDS events.tsv")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EventError(f"{path}: columns {missing} are missing; found {list(frame.columns)}")
    return frame


def event_numbers(frame, column: str, path: Path) -> np.ndarray:
    """A numeric column of an events table (``n/a`` and empty cells as NaN); a cell that is
    not a number raises :class:`~neurodec.errors.EventError` naming its line."""
    values = np.full(len(frame), np.nan)
    for index, text in enumerate(frame[column].tolist()):
        text = str(text).strip()
        if text in ("", "n/a", "nan", "NaN"):
            continue
        try:
            values[index] = float(text)
        except ValueError:
            raise EventError(f"{path} line {index + 2}: column {column!r} expected a number, found {text!r}") from None
    return values


def check_event_samples(onsets: np.ndarray, samples: np.ndarray, *, sfreq: float, first_samp: int,
                        events_path: Path, data_path: Path) -> None:
    """An events table's ``sample`` column must agree with ``onset`` at the recording's rate.

    BIDS counts ``sample`` from the data file's first sample (mne-bids writes it with the
    raw's ``first_samp`` added), so either origin is accepted, to one sample. A mismatch
    raises :class:`~neurodec.errors.EventError` with the rate the samples imply.
    """
    known = np.isfinite(onsets) & np.isfinite(samples)
    if not known.any():
        return
    expected = onsets[known] * sfreq
    error = np.minimum(np.abs(samples[known] - expected), np.abs(samples[known] - first_samp - expected))
    if (error <= 1.0 + 1e-6).all():
        return
    first = int(np.flatnonzero(known)[int(np.argmax(error > 1.0 + 1e-6))])
    timed = known & (onsets > 0)
    implied = float(np.median(samples[timed] / onsets[timed])) if timed.any() else float("nan")
    raise EventError(
        f"{events_path} line {first + 2}: sample {samples[first]:g} does not match onset {onsets[first]:g} s at "
        f"{sfreq:g} Hz, the rate of {Path(data_path).name} (expected sample {onsets[first] * sfreq:.0f}); "
        f"the events' samples imply {implied:.1f} Hz: they were written for another recording or rate")


# ------------------------------------------------------------------ MATLAB files
def read_mat(path: Path, variables: Sequence[str], what: str) -> dict[str, Any]:
    """Variables of a MATLAB v5/v7 file (``scipy.io.loadmat``, cells and structs simplified).

    A missing file, a v7.3 (HDF5) file or a missing variable raises
    :class:`~neurodec.errors.InputFileError` naming the file.
    """
    from scipy.io import loadmat, whosmat

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} {path} does not exist")
    try:
        content = loadmat(path, variable_names=list(variables), simplify_cells=True)
    except NotImplementedError:
        raise InputFileError(
            f"{path}: a MATLAB v7.3 (HDF5) file; this recipe reads MATLAB v5/v7 files (scipy.io.loadmat). "
            f"Re-save it from MATLAB with save(..., '-v7')"
        ) from None
    except Exception as error:  # scipy raises ValueError, TypeError, struct errors on damaged files
        raise InputFileError(f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})") from None
    missing = [name for name in variables if name not in content]
    if missing:
        found = [entry[0] for entry in whosmat(path)]
        raise InputFileError(f"{path}: variable(s) {missing} missing from the {what}; found {found}")
    return content


def as_list(values: Any) -> list[Any]:
    """A MATLAB cell or char value read by ``loadmat(simplify_cells=True)`` as a list.

    >>> as_list("S01.mat"), as_list(np.array(["a", "b"], dtype=object)), as_list(None)
    (['S01.mat'], ['a', 'b'], [])
    """
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return list(np.atleast_1d(np.asarray(values, dtype=object)).ravel())


__all__ = [
    "EEG_PICKS", "EEG_PREPROCESSING", "MEG_PICKS", "SPEECH_PREPROCESSING", "as_list", "bids_labels", "bids_root",
    "check_choice", "check_event_samples", "event_numbers", "ingest_options", "read_events_tsv", "read_mat",
]
