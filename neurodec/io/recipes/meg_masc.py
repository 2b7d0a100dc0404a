"""Gwilliams et al. (2023) MEG-MASC: the published BIDS folder into a speech-segment store.

What the recipe reads (OSF ag3kj and h2tzn, merged into one BIDS folder as the authors'
README says; Scientific Data 10:862)::

    <root>/dataset_description.json, participants.tsv
    <root>/sub-01/ses-0/meg/sub-01_ses-0_task-0_meg.con       KIT, 208 MEG channels, 1000 Hz
    <root>/sub-01/ses-0/meg/sub-01_ses-0_task-0_events.tsv    onset duration trial_type value sample
    <root>/sub-01/ses-0/meg/sub-01_ses-0_task-0_channels.tsv  (and _meg.json, _coordsystem.json, ...)
    <root>/stimuli/audio/lw1_0.wav, lw1_1.wav, ...            the stories, each cut into several wav files

27 subjects (``sub-01`` ...), two sessions (``ses-0``, ``ses-1``), four tasks per session
(``task-0`` ... ``task-3``: one story each). Each row of ``events.tsv`` holds, in
``trial_type``, a Python dict literal such as ``{'story': 'lw1', 'story_uid': 0.0,
'sound_id': 0.0, 'kind': 'word', 'start': 3.47, 'sound': 'stimuli/audio/lw1_0.0.wav',
'word': 'tara', 'sequence_id': 0.0, 'condition': 'sentence', 'word_index': 0.0, ...}``;
``kind`` is ``word``, ``phoneme`` or ``sound``. The row's ``onset`` column is the time in
the recording (s from its first sample); the dict's ``start`` is the word's onset in its
sound file. Every ``kind == "word"`` row becomes a heard word.

Two quirks of the published events are handled (brainmagick's reader handles them the same
way, with ``rsplit(".", 2)`` and ``lower()``): ``sound`` names the file with its float
index (``lw1_0.0.wav`` for ``lw1_0.wav``), and with a capitalisation that may differ from
the file on disk (``The_Black_Willow_0`` for ``the_black_willow_0.wav``). A word without a
``start`` takes its onset in the sound from the recording: its ``onset`` minus that of the
latest ``kind == "sound"`` row naming the same file.

Defaults follow Défossez et al. (2023) and their code (brainmagick ``bm/conf/config.yaml``:
``dset.sample_rate: 120``, ``dset.highpass: 0``; ``gwilliams2022.py`` keeps the MEG channels
only): the 208 MEG channels (``picks=["mag", "grad"]``, reference sensors left out), no band-pass,
resampled to 120 Hz with MNE's polyphase method (``raw.resample(120, method="polyphase")``,
scipy's ``resample_poly``: an anti-aliasing low-pass, and sample k at k / 120 s; brainmagick
used julius' windowed-sinc resampler). Baseline, robust scaling and clamping are per window,
at training time.

>>> from neurodec.io.recipes import convert
>>> study = convert("meg-masc", "/data/meg-masc", "meg-masc.zarr", subjects=["01", "02"])  # doctest: +SKIP
>>> study.recording_keys[:2]                                                                # doctest: +SKIP
['sub-01/ses-0/run-0', 'sub-01/ses-0/run-1']
"""

from __future__ import annotations

import ast
import bisect
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, EventError, InputFileError
from neurodec.io.recipes._speech import HeardWords, SpeechRecording, write_speech_store
from neurodec.io.speech import DEFAULT_SHIFT, DEFAULT_TMAX, DEFAULT_TMIN, SoundFile, read_sound_file

logger = logging.getLogger("neurodec")

CONVERTER = "neurodec.io.recipes.meg_masc"
#: brainmagick: resample every study to 120 Hz, no high-pass (``dset.highpass: 0``). Polyphase
#: resampling keeps each 120 Hz sample at k / 120 s, so word onsets land on their sample (MNE's
#: default FFT resampling with ``npad="auto"`` moves them by up to half a sample).
DEFAULT_PREPROCESSING: dict[str, Any] = {"resample": 120.0, "resample_method": "polyphase"}
#: The MEG sensors by type: reference sensors, trigger and misc channels are left out. (The
#: type name "meg" would keep CTF's reference channels: MNE adds them while compensation is on.)
DEFAULT_PICKS = ("mag", "grad")
#: Onsets in the sound from ``start`` and from the recording may differ by rounding to samples.
START_TOLERANCE = 0.01
OUTSIDE_POLICIES = ("error", "drop")


def convert(
    source: str | Path,
    out: str | Path,
    *,
    subjects: str | Sequence[str] | None = None,
    sessions: str | Sequence[str] | None = None,
    tasks: str | Sequence[str] | None = None,
    overwrite: bool = False,
    preprocessing: Mapping[str, Any] | None = DEFAULT_PREPROCESSING,
    picks: Sequence[str] | None = DEFAULT_PICKS,
    on_outside: str = "error",
    tmin: float = DEFAULT_TMIN,
    tmax: float = DEFAULT_TMAX,
    shift: float = DEFAULT_SHIFT,
    block_duration: float = 30.0,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Convert MEG-MASC at ``source`` (its BIDS root) into a store at ``out``; returns the Study.

    ``subjects``, ``sessions``, ``tasks`` select recordings by BIDS label (``"01"``, ``"0"``).
    ``preprocessing`` holds :class:`~neurodec.io.options.PreprocessingOptions` fields laid
    over the default (polyphase resampling to 120 Hz; ``None``: the native 1000 Hz, no
    processing). ``picks`` are MNE channel types or names (default: the MEG sensors, no
    reference channels). A word whose onset lies outside its recording raises
    :class:`~neurodec.errors.EventError` (``on_outside="error"``) or is left out and counted
    (``"drop"``). ``tmin``, ``tmax``, ``shift``, ``block_duration``, ``test_fraction`` and
    ``seed`` make the segments and the held-out blocks (:func:`neurodec.io.speech.make_segments`).
    Each recording's run label is its BIDS task label (one story per task), so its key is
    ``sub-01/ses-0/run-0``.

    >>> study = convert("/data/meg-masc", "meg-masc.zarr", subjects="01", sessions="0")  # doctest: +SKIP
    """
    if on_outside not in OUTSIDE_POLICIES:
        raise ConfigError(f"meg-masc: on_outside expected one of {OUTSIDE_POLICIES}, found {on_outside!r}")
    root = bids_root(source, "MEG-MASC")
    found = _find_meg(root, subjects, sessions, tasks)
    if not found:
        raise InputFileError(f"{root}: no MEG recording (sub-*/ses-*/meg/*_meg.con) matches subjects={subjects!r}, "
                             f"sessions={sessions!r}, tasks={tasks!r}")
    sounds: dict[str, SoundFile] = {}
    resolved: dict[str, SoundFile] = {}
    recordings, dropped = [], 0
    for recording in found:
        speech, n_dropped = _recording_words(root, recording, sounds, resolved, on_outside)
        recordings.append(speech)
        dropped += n_dropped
    parameters = {"source": str(root), "subjects": subjects, "sessions": sessions, "tasks": tasks,
                  "on_outside": on_outside, "words_outside_dropped": dropped}
    return write_speech_store(
        out, recordings, sounds, converter=CONVERTER,
        options=ingest_options(preprocessing, picks),
        segment_options={"tmin": tmin, "tmax": tmax, "shift": shift, "block_duration": block_duration,
                         "test_fraction": test_fraction, "seed": seed},
        parameters=parameters, overwrite=overwrite,
    )


# ------------------------------------------------------------------ MEG-MASC events
def _find_meg(root: Path, subjects, sessions, tasks):
    from neurodec.io.bids import find_bids_recordings

    return [r for r in find_bids_recordings(root, subject=bids_labels(subjects), session=bids_labels(sessions),
                                            task=bids_labels(tasks)) if r.datatype == "meg"]


def _recording_words(root: Path, recording, sounds: dict[str, SoundFile], resolved: dict[str, SoundFile],
                     on_outside: str) -> tuple[SpeechRecording, int]:
    """The words one recording heard, checked against its raw's header."""
    from neurodec.io._files import describe_source
    from neurodec.io.bids import sidecar_files

    events_path = recording.sidecar("events", ".tsv")
    if events_path is None:
        raise InputFileError(f"{recording.fpath}: its events.tsv ({recording.fpath.name.replace('_meg', '_events')}"
                             f" without the data extension) is missing; MEG-MASC's word onsets are in it")
    frame = read_events_tsv(events_path, required=("onset", "trial_type"))
    onsets = event_numbers(frame, "onset", events_path)
    header = raw_header(recording)
    if "sample" in frame.columns:
        check_event_samples(onsets, event_numbers(frame, "sample", events_path), header, events_path)

    rows = []  # (line, onset in recording, parsed trial_type)
    skipped = 0
    for index, text in enumerate(frame["trial_type"].tolist()):
        line = index + 2  # the header is line 1
        description = _parse_trial_type(text, events_path, line)
        if description is None:
            skipped += 1
            continue
        rows.append((line, float(onsets[index]), description))
    if skipped:
        logger.info("%s: %d rows whose trial_type is not a dict are not words (e.g. boundary markers)",
                    events_path.name, skipped)

    def sound_of(description: dict[str, Any], line: int) -> SoundFile:
        name = str(description.get("sound", "")).strip()
        if not name:
            raise EventError(f"{events_path} line {line}: a {description.get('kind')!r} row without 'sound' "
                             f"(trial_type {description!r}); expected the wav file it belongs to")
        if name not in resolved:
            path = sound_path(root, name)
            if path is None:
                raise InputFileError(
                    f"sound file {root / name} does not exist (named by {events_path} line {line}: "
                    f"'sound': {name!r}; looked for {_clean_sound_name(name)} under {root / Path(name).parent}, "
                    f"any capitalisation); put MEG-MASC's stimuli/audio folder in the BIDS root")
            sound = read_sound_file(path, sound_id=path.stem.lower(), uri=str(path.resolve()))
            resolved[name] = sounds.setdefault(sound.id, sound)
        return resolved[name]

    sound_onsets: dict[str, list[float]] = {}
    for line, onset, description in rows:
        if description.get("kind") == "sound":
            bisect.insort(sound_onsets.setdefault(sound_of(description, line).id, []), onset)

    words = HeardWords()
    lines: list[int] = []
    worst = (0.0, 0)
    for line, onset, description in rows:
        if description.get("kind") != "word":
            continue
        word = str(description.get("word", "")).strip()
        if not word or word.lower() == "nan":
            continue
        sound = sound_of(description, line)
        from_recording = _onset_from_sound_rows(sound_onsets.get(sound.id, []), onset)
        start = _number(description.get("start"))
        if start is None:
            if from_recording is None:
                raise EventError(f"{events_path} line {line}: word {word!r} has no 'start' (its onset in "
                                 f"{sound.id}) and no earlier 'sound' row names {sound.id}; cannot place it in "
                                 f"the sound")
            start = from_recording
        elif from_recording is not None and abs(from_recording - start) > abs(worst[0]):
            worst = (from_recording - start, line)
        words.add(sound.id, start, onset, word)
        lines.append(line)
    if abs(worst[0]) > START_TOLERANCE:
        logger.warning("%s line %d: the word's 'start' and its onset after its sound's row differ by %.3f s; "
                       "the recipe uses 'start' (the onset in the sound)", events_path, worst[1], worst[0])
    words, dropped = keep_inside(words, lines, header, on_outside, events_path)
    if not len(words):
        raise EventError(f"{events_path}: no 'word' rows (kind == 'word' in trial_type) inside the recording")

    entities = recording.path
    task = str(entities.task or "")
    run = task if not entities.run else f"{task}-{entities.run}"
    return SpeechRecording(
        subject=str(entities.subject), session=str(entities.session or "01"), run=run or "01", task=task,
        words=words, read_raw=lambda: read_raw(recording),
        source=describe_source(recording.fpath, extra_companions=sidecar_files(recording)),
        info_extra={"bids_file": str(recording.fpath.relative_to(root))},
    ), dropped


def _parse_trial_type(text: str, path: Path, line: int) -> dict[str, Any] | None:
    """The dict of a MEG-MASC ``trial_type``; ``None`` for a plain label (not a word, sound or phoneme)."""
    text = str(text).strip()
    if not text.startswith("{"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise EventError(f"{path} line {line}: trial_type is not a readable dict literal ({error}); found "
                         f"{text[:120]!r}") from None
    if not isinstance(value, dict):
        raise EventError(f"{path} line {line}: trial_type expected a dict, found {type(value).__name__}")
    return value


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _onset_from_sound_rows(sound_onsets: list[float], onset: float) -> float | None:
    """The word's onset in its sound from the latest ``sound`` row at or before it."""
    position = bisect.bisect_right(sound_onsets, onset + 1e-9)
    return None if position == 0 else onset - sound_onsets[position - 1]


def _clean_sound_name(name: str) -> str:
    """``stimuli/audio/lw1_0.0.wav`` -> ``lw1_0.wav`` (the events' float sound index)."""
    file_name = Path(name).name
    return re.sub(r"(_\d+)\.\d+(\.wav)$", r"\1\2", file_name, flags=re.IGNORECASE)


def sound_path(root: Path, name: str) -> Path | None:
    """The wav file an event names, relative to the BIDS root: as written, without the
    float index, or with another capitalisation; ``None`` when none exists."""
    written = root / name
    if written.is_file():
        return written
    folder = written.parent
    if not folder.is_dir():
        return None
    wanted = {Path(name).name.lower(), _clean_sound_name(name).lower()}
    for candidate in sorted(folder.iterdir()):
        if candidate.name.lower() in wanted and candidate.is_file():
            return candidate
    return None


# ------------------------------------------------ helpers shared with the MOUS recipe
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


def ingest_options(preprocessing: Mapping[str, Any] | None, picks: Sequence[str] | str | None) -> dict[str, Any]:
    """The :class:`~neurodec.io.options.IngestOptions` fields of a speech recipe.

    ``preprocessing`` fields are laid over :data:`DEFAULT_PREPROCESSING` (so ``{"resample":
    100}`` keeps the polyphase method); ``None`` keeps the recordings as they are.

    >>> ingest_options({"bandpass": {"l_freq": 0.1, "h_freq": 40}}, ["mag"])["preprocessing"]["resample"]
    120.0
    """
    if preprocessing is None:
        chosen: dict[str, Any] = {}
    else:
        given = preprocessing.model_dump(exclude_unset=True) if hasattr(preprocessing, "model_dump") else preprocessing
        chosen = {**DEFAULT_PREPROCESSING, **dict(given)}
    picks = [picks] if isinstance(picks, str) else picks
    return {"modality": "meg", "picks": list(picks) if picks else None, "preprocessing": chosen}


def bids_labels(labels: str | int | Sequence[str | int] | None) -> list[str] | None:
    """BIDS labels as a list of text (``--set sessions=0`` arrives as the integer 0)."""
    if labels is None:
        return None
    if isinstance(labels, (str, int)):
        return [str(labels)]
    return [str(label) for label in labels]


def read_events_tsv(path: Path, required: Sequence[str]):
    """A BIDS ``events.tsv`` as text columns; ``required`` columns must be present."""
    import pandas as pd

    from neurodec.io._files import read_with

    frame = read_with(lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig"),
                      path, "a BIDS events.tsv")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EventError(f"{path}: columns {missing} are missing; found {list(frame.columns)}")
    return frame


def event_numbers(frame, column: str, path: Path) -> np.ndarray:
    """A numeric column of an events table (``n/a`` and empty cells as NaN)."""
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


class RawHeader:
    """What a recording's header says: sampling rate, length, first sample."""

    def __init__(self, sfreq: float, n_times: int, first_samp: int, path: Path):
        self.sfreq, self.n_times, self.first_samp, self.path = sfreq, n_times, first_samp, path

    @property
    def duration(self) -> float:
        return self.n_times / self.sfreq


def read_raw(recording):
    """A BIDS recording through ``mne_bids.read_raw_bids``, sidecars applied, data not loaded.

    (``neurodec.io.bids.read_raw_bids`` asks mne-bids for ``preload=True``, which mne-bids
    refuses for KIT and BTi files: it passes ``preload=False`` to their readers itself.)
    """
    import mne_bids

    from neurodec.io._files import read_with

    return read_with(lambda: mne_bids.read_raw_bids(recording.path, verbose="error"), recording.fpath,
                     f"BIDS {recording.datatype} (mne_bids.read_raw_bids)")


def raw_header(recording) -> RawHeader:
    """The header of a BIDS recording (sampling rate, length), its data left on disk."""
    raw = read_raw(recording)
    return RawHeader(float(raw.info["sfreq"]), int(raw.n_times), int(raw.first_samp), recording.fpath)


def check_event_samples(onsets: np.ndarray, samples: np.ndarray, header: RawHeader, path: Path) -> None:
    """An events table's ``sample`` column must agree with ``onset`` at the recording's rate.

    BIDS counts ``sample`` from the data file's first sample (mne-bids writes it with the
    raw's ``first_samp`` added), so either origin is accepted, to one sample.
    """
    known = np.isfinite(onsets) & np.isfinite(samples)
    if not known.any():
        return
    expected = onsets[known] * header.sfreq
    error = np.minimum(np.abs(samples[known] - expected), np.abs(samples[known] - header.first_samp - expected))
    if (error <= 1.0 + 1e-6).all():
        return
    first = int(np.flatnonzero(known)[int(np.argmax(error > 1.0 + 1e-6))])
    timed = known & (onsets > 0)
    implied = float(np.median(samples[timed] / onsets[timed])) if timed.any() else float("nan")
    raise EventError(
        f"{path} line {first + 2}: sample {samples[first]:g} does not match onset {onsets[first]:g} s at "
        f"{header.sfreq:g} Hz, the rate of {header.path.name} (expected sample {onsets[first] * header.sfreq:.0f}); "
        f"the events' samples imply {implied:.1f} Hz: they were written for another recording or rate")


def keep_inside(words: HeardWords, lines: Sequence[int], header: RawHeader, on_outside: str,
                path: Path) -> tuple[HeardWords, int]:
    """The words whose onset sample lies inside the recording; the others raise
    (``on_outside="error"``) or are left out (``"drop"``) and counted."""
    onset = np.asarray(words.onset_in_recording, dtype=np.float64)
    sample = np.round(onset * header.sfreq)
    outside = (sample < 0) | (sample >= header.n_times)
    if not outside.any():
        return words, 0
    first = int(np.flatnonzero(outside)[0])
    message = (f"{path} line {lines[first]}: word {words.word[first]!r} at {onset[first]:g} s lies outside "
               f"{header.path.name} (0 to {header.duration:g} s; {int(outside.sum())} words in all)")
    if on_outside == "error":
        raise EventError(message + "; pass on_outside='drop' to leave such words out")
    logger.warning("%s; left out (on_outside='drop')", message)
    kept = HeardWords()
    for i in np.flatnonzero(~outside).tolist():
        kept.add(words.sound[i], words.onset_in_sound[i], words.onset_in_recording[i], words.word[i])
    return kept, int(outside.sum())


__all__ = ["CONVERTER", "DEFAULT_PICKS", "DEFAULT_PREPROCESSING", "convert", "ingest_options", "sound_path"]
