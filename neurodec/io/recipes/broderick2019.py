"""Broderick et al. 2018, natural speech EEG: the Dryad release into a store.

Broderick, Anderson, Di Liberto, Crosse, Lalor (2018), Current Biology 28(5):803-809; data:
Dryad doi:10.5061/dryad.070jc, folder ``Natural Speech`` (``Natural Speech.zip`` unpacked).
19 subjects heard 20 runs of about 3 minutes of "The Old Man and the Sea"; 128-channel
BioSemi EEG released at 128 Hz. The recipe reads::

    SOURCE/                                   the "Natural Speech" folder (or the folder holding it)
      EEG/Subject<N>/Subject<N>_Run<R>.mat    eegData (samples x 128), mastoids (samples x 2), fs
      Stimuli/Text/Run<R>.mat                 wordVec (cell of words), onset_time, offset_time
                                              (s from the run's audio start), sentence_boundaries
      Stimuli/Envelopes/audio<R>_128Hz.mat    (not read)
      Stimuli/Audio/audio<R>.wav              the run's audio (see below)

The audio. The Dryad release holds the envelopes, not the sound files; Défossez et al. used
a copy of the audio obtained from the authors (``audio<R>.wav``). Put those files in
``Stimuli/Audio`` or pass ``audio_dir``; a missing one is an error naming it.

Alignment. Each run's EEG starts at its audio's onset (the release is trigger-aligned: the
envelope and the EEG of a run share sample 0 in every analysis of this dataset), so a word
heard ``onset_time`` s into the audio is at ``onset_time`` s in the recording.

Channels: ``eegData`` columns are the BioSemi cap's A1..A32, B1..B32, C1..C32, D1..D32, with
positions from MNE's ``biosemi128`` template; the mastoids are ``M1``/``M2`` (``misc``,
dropped by the default ``picks``). Values are taken as microvolts (``eeg_unit``).
See docs/recipes-eeg.md for the options and the choices made.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, InputFileError
from neurodec.io.recipes._common import EEG_PICKS, EEG_PREPROCESSING, as_list, check_choice, ingest_options, read_mat
from neurodec.io.recipes._speech import (
    OUTSIDE_POLICIES,
    HeardWords,
    SpeechRecording,
    segment_options,
    write_speech_store,
)
from neurodec.io.speech import DEFAULT_SHIFT, DEFAULT_TMAX, DEFAULT_TMIN, SoundFile, read_sound_file

logger = logging.getLogger("neurodec")

NAME = "broderick2019"
CONVERTER = "neurodec.io.recipes.broderick2019"
#: As Brennan 2019: 0.5-40 Hz band-pass, then 120 Hz (polyphase); the 128 scalp channels.
DEFAULT_PREPROCESSING = EEG_PREPROCESSING
DEFAULT_PICKS = EEG_PICKS
FOLDER = "Natural Speech"
#: The sampling rate of the release (the 512 Hz recordings were downsampled to 128 Hz).
STATED_SFREQ = 128.0
N_CHANNELS = 128
MONTAGE = "biosemi128"
MASTOIDS = ("M1", "M2")
EEG_FILE = "EEG/Subject{subject}/Subject{subject}_Run{run}.mat"
TEXT_FILE = "Stimuli/Text/Run{run}.mat"
AUDIO_DIR = "Stimuli/Audio"
SOUND_FILE = "audio{run}.wav"
_UNITS = {"uV": 1e-6, "mV": 1e-3, "V": 1.0}
_REFERENCES = ("none", "mastoids")


def _numbers(values: Any, what: str) -> list[int] | None:
    """Subject or run numbers from ints, ``"3"``, ``"03"``, ``"Subject3"``, ``"Run3"`` or ``"1,2"``."""
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [part for part in str(values).split(",") if part.strip()]
    numbers = []
    for value in values:
        match = re.fullmatch(r"(?:subject|run)?\s*0*(\d+)", str(value).strip(), flags=re.IGNORECASE)
        if match is None:
            raise ConfigError(f"{what}: {value!r} is not a number (expected e.g. 3, '03' or '{what[:-1].title()}3')")
        numbers.append(int(match.group(1)))
    return sorted(set(numbers))


def _found(folder: Path, pattern: str) -> list[int]:
    numbers = []
    for path in folder.glob("*"):
        match = re.fullmatch(pattern, path.name)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def read_run_words(path: Path) -> tuple[list[str], np.ndarray]:
    """The words of a run and their onsets (s from the audio's start) from ``Stimuli/Text/Run<R>.mat``."""
    content = read_mat(path, ["wordVec", "onset_time"], "word file")
    words = [str(word).strip() for word in as_list(content["wordVec"])]
    onsets = np.asarray(content["onset_time"], dtype=np.float64).ravel()
    if len(words) != len(onsets):
        raise InputFileError(f"{path}: wordVec holds {len(words)} words but onset_time {len(onsets)} onsets")
    if not len(words):
        raise InputFileError(f"{path}: wordVec is empty")
    return words, onsets


def _checked_rate(content: dict[str, Any], path: Path) -> float:
    sfreq = float(np.asarray(content["fs"]).ravel()[0])
    if abs(sfreq - STATED_SFREQ) > 1e-6:
        raise InputFileError(f"{path}: fs is {sfreq:g} Hz; the study releases every run at {STATED_SFREQ:g} Hz (a "
                             f"different rate means another version of the file)")
    return sfreq


def run_duration(path: Path) -> float | None:
    """Seconds of EEG in a ``Subject<N>_Run<R>.mat``, from ``fs`` and the shape of ``eegData``
    (``scipy.io.whosmat``: the samples are not read); None when the shape is not a matrix
    (:func:`read_run_eeg` then says what is wrong)."""
    from scipy.io import whosmat

    sfreq = _checked_rate(read_mat(path, ["fs"], "EEG file"), path)
    shape = {name: shape for name, shape, _ in whosmat(path)}.get("eegData")
    return shape[0] / sfreq if shape is not None and len(shape) == 2 else None


def read_run_eeg(path: Path, *, eeg_unit: str = "uV", reference: str = "none"):
    """A ``Subject<N>_Run<R>.mat`` as an MNE RawArray in volts, with BioSemi 128 positions.

    ``fs`` must be the study's 128 Hz; ``reference="mastoids"`` subtracts the mean of the
    two mastoid channels from every scalp channel.
    """
    import mne

    content = read_mat(path, ["eegData", "mastoids", "fs"], "EEG file")
    sfreq = _checked_rate(content, path)
    eeg = np.asarray(content["eegData"], dtype=np.float64)
    mastoids = np.asarray(content["mastoids"], dtype=np.float64)
    if eeg.ndim != 2 or eeg.shape[1] != N_CHANNELS:
        raise InputFileError(f"{path}: eegData has shape {eeg.shape}; expected (samples, {N_CHANNELS})")
    if mastoids.shape != (eeg.shape[0], len(MASTOIDS)):
        raise InputFileError(f"{path}: mastoids has shape {mastoids.shape}; expected ({eeg.shape[0]}, 2)")
    scale = _UNITS[eeg_unit]
    if reference == "mastoids":
        eeg = eeg - mastoids.mean(axis=1, keepdims=True)
    montage = mne.channels.make_standard_montage(MONTAGE)
    names = list(montage.ch_names)
    info = mne.create_info(names + list(MASTOIDS), sfreq, ["eeg"] * N_CHANNELS + ["misc"] * len(MASTOIDS),
                           verbose="error")
    raw = mne.io.RawArray(np.concatenate([eeg, mastoids], axis=1).T * scale, info, verbose="error")
    raw.set_montage(montage, verbose="error")
    return raw


def convert(
    source: str | Path,
    out: str | Path,
    *,
    subjects: Sequence[Any] | str | int | None = None,
    runs: Sequence[Any] | str | int | None = None,
    overwrite: bool = False,
    audio_dir: str | Path | None = None,
    preprocessing: Mapping[str, Any] | None = DEFAULT_PREPROCESSING,
    picks: Sequence[str] | str | None = DEFAULT_PICKS,
    reference: str = "none",
    eeg_unit: str = "uV",
    on_outside: str = "error",
    tmin: float = DEFAULT_TMIN,
    tmax: float = DEFAULT_TMAX,
    shift: float = DEFAULT_SHIFT,
    block_duration: float = 30.0,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Convert the Broderick et al. natural speech release at ``source`` into a store at ``out``.

    ``subjects`` and ``runs``: numbers (``3``, ``"03"``, ``"Subject3"``), None for all
    found. Each run is a continuous recording (subject ``"03"``, run ``"07"``, session
    ``01``, task ``naturalspeech``) with one event per word of ``Stimuli/Text/Run<R>.mat``.
    ``audio_dir`` holds ``audio<R>.wav`` (default ``SOURCE/Stimuli/Audio``). ``reference``:
    ``"none"`` (as released) or ``"mastoids"``; ``preprocessing`` holds
    :class:`~neurodec.io.options.PreprocessingOptions` fields laid over the default (0.5-40 Hz
    band-pass, then polyphase resampling to 120 Hz; ``{"bandpass": None}`` drops the band-pass;
    ``None``: the native 128 Hz, unfiltered); ``picks`` keeps channel types or
    names (the 128 scalp channels by default). ``eeg_unit``: the unit of ``eegData``
    (``"uV"``, ``"mV"`` or ``"V"``). ``on_outside``: ``"error"`` or ``"drop"`` for words
    after the run's EEG ends (checked from the files' headers before any run is converted);
    words so near its end that their brain window runs past it are always left out and
    counted. The segment options go to
    :func:`neurodec.io.speech.make_segments`. Returns the written Study.

    >>> from neurodec.io.recipes import convert
    >>> study = convert("broderick2019", "/data/Natural Speech", "broderick.zarr",
    ...                 audio_dir="/data/audio")  # doctest: +SKIP
    """
    source = Path(source)
    if (source / FOLDER).is_dir() and not (source / "EEG").is_dir():
        source = source / FOLDER
    if not (source / "EEG").is_dir():
        raise InputFileError(f"{source}: no EEG folder; expected the '{FOLDER}' folder of the Dryad release")
    check_choice(reference, "reference", _REFERENCES)
    check_choice(eeg_unit, "eeg_unit", _UNITS)
    check_choice(on_outside, "on_outside", OUTSIDE_POLICIES)
    options = ingest_options(preprocessing, picks, defaults=EEG_PREPROCESSING, modality="eeg")
    segments = segment_options(tmin, tmax, shift, block_duration, test_fraction, seed)
    audio = Path(audio_dir) if audio_dir is not None else source / AUDIO_DIR

    subject_numbers = _numbers(subjects, "subjects") or _found(source / "EEG", r"Subject(\d+)")
    if not subject_numbers:
        raise InputFileError(f"{source / 'EEG'}: no Subject<N> folders")
    wanted_runs = _numbers(runs, "runs")

    from neurodec.io._files import describe_source

    recordings: list[SpeechRecording] = []
    sounds: dict[str, SoundFile] = {}
    run_words: dict[int, tuple[list[str], np.ndarray]] = {}
    for subject in subject_numbers:
        folder = source / "EEG" / f"Subject{subject}"
        if not folder.is_dir():
            raise InputFileError(f"{NAME}: subject folder {folder} does not exist")
        subject_runs = wanted_runs or _found(folder, rf"Subject{subject}_Run(\d+)\.mat")
        if not subject_runs:
            raise InputFileError(f"{folder}: no Subject{subject}_Run<R>.mat files")
        for run in subject_runs:
            eeg_file = source / EEG_FILE.format(subject=subject, run=run)
            if not eeg_file.is_file():
                raise InputFileError(f"{NAME}: EEG file {eeg_file} does not exist")
            if run not in run_words:
                run_words[run] = read_run_words(source / TEXT_FILE.format(run=run))
            sound_path = (audio / SOUND_FILE.format(run=run)).resolve()
            if sound_path.stem not in sounds:
                sounds[sound_path.stem] = read_sound_file(sound_path)
            words, onsets = run_words[run]
            heard = HeardWords()
            for word, onset in zip(words, onsets.tolist()):
                heard.add(sound_path.stem, onset, onset, word)
            recordings.append(SpeechRecording(
                subject=f"{subject:02d}", session="01", run=f"{run:02d}", task="naturalspeech", words=heard,
                read_raw=partial(read_run_eeg, eeg_file, eeg_unit=eeg_unit, reference=reference),
                source=describe_source(eeg_file, "Broderick et al. run (MATLAB)"), path=eeg_file,
                duration=run_duration(eeg_file),
            ))
    parameters = {"source": str(source.resolve()), "audio_dir": str(audio.resolve()),
                  "recordings": [f"{r.subject}/{r.run}" for r in recordings], "reference": reference,
                  "eeg_unit": eeg_unit, "montage": MONTAGE,
                  "alignment": "EEG sample 0 = audio onset; word at onset_time s"}
    return write_speech_store(out, recordings, sounds, converter=CONVERTER, options=options, segment_options=segments,
                              parameters=parameters, overwrite=overwrite, on_outside=on_outside)


__all__ = ["CONVERTER", "DEFAULT_PICKS", "convert", "read_run_eeg", "read_run_words"]
