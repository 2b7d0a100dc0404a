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

from neurodec.errors import EventError, InputFileError
from neurodec.io.recipes._common import (
    MEG_PICKS,
    SPEECH_PREPROCESSING,
    bids_labels,
    bids_root,
    check_choice,
    check_event_samples,
    event_numbers,
    ingest_options,
    read_events_tsv,
)
from neurodec.io.recipes._speech import (
    OUTSIDE_POLICIES,
    HeardWords,
    SpeechRecording,
    segment_options,
    write_speech_store,
)
from neurodec.io.speech import DEFAULT_SHIFT, DEFAULT_TMAX, DEFAULT_TMIN, SoundFile, read_sound_file

logger = logging.getLogger("neurodec")

CONVERTER = "neurodec.io.recipes.meg_masc"
#: brainmagick: resample every study to 120 Hz (polyphase here), no high-pass (``dset.highpass: 0``).
DEFAULT_PREPROCESSING = SPEECH_PREPROCESSING
#: The MEG sensors, without reference sensors, trigger and misc channels.
DEFAULT_PICKS = MEG_PICKS
#: Onsets in the sound from ``start`` and from the recording may differ by rounding to samples.
START_TOLERANCE = 0.01


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
    (``"drop"``); one whose brain window only reaches past an edge is always left out and
    counted. ``tmin``, ``tmax``, ``shift``, ``block_duration``, ``test_fraction``
    and ``seed`` make the segments and the held-out blocks
    (:func:`neurodec.io.speech.make_segments`). Each recording's run label is its BIDS task
    label (one story per task), so its key is ``sub-01/ses-0/run-0``; each segment's
    metadata names its ``story``.

    >>> study = convert("/data/meg-masc", "meg-masc.zarr", subjects="01", sessions="0")  # doctest: +SKIP
    """
    check_choice(on_outside, "meg-masc: on_outside", OUTSIDE_POLICIES)
    root = bids_root(source, "MEG-MASC")
    found = _find_meg(root, subjects, sessions, tasks)
    if not found:
        raise InputFileError(f"{root}: no MEG recording (sub-*/ses-*/meg/*_meg.con) matches subjects={subjects!r}, "
                             f"sessions={sessions!r}, tasks={tasks!r}")
    sounds: dict[str, SoundFile] = {}
    resolved: dict[str, SoundFile] = {}
    recordings = [_recording_words(root, recording, sounds, resolved) for recording in found]
    parameters = {"source": str(root), "subjects": subjects, "sessions": sessions, "tasks": tasks}
    return write_speech_store(
        out, recordings, sounds, converter=CONVERTER,
        options=ingest_options(preprocessing, picks, modality="meg"),
        segment_options=segment_options(tmin, tmax, shift, block_duration, test_fraction, seed),
        parameters=parameters, overwrite=overwrite, on_outside=on_outside,
    )


# ------------------------------------------------------------------ MEG-MASC events
def _find_meg(root: Path, subjects, sessions, tasks):
    from neurodec.io.bids import find_bids_recordings

    return [r for r in find_bids_recordings(root, subject=bids_labels(subjects), session=bids_labels(sessions),
                                            task=bids_labels(tasks)) if r.datatype == "meg"]


def _recording_words(root: Path, recording, sounds: dict[str, SoundFile],
                     resolved: dict[str, SoundFile]) -> SpeechRecording:
    """The words one recording heard, their events checked against its raw's header."""
    from neurodec.io._files import describe_source
    from neurodec.io.bids import read_raw_bids, sidecar_files

    events_path = recording.sidecar("events", ".tsv")
    if events_path is None:
        raise InputFileError(f"{recording.fpath}: its events.tsv ({recording.fpath.name.replace('_meg', '_events')}"
                             f" without the data extension) is missing; MEG-MASC's word onsets are in it")
    frame = read_events_tsv(events_path, required=("onset", "trial_type"))
    onsets = event_numbers(frame, "onset", events_path)
    header = read_raw_bids(recording, preload=False)
    sfreq, n_times = float(header.info["sfreq"]), int(header.n_times)
    if "sample" in frame.columns:
        check_event_samples(onsets, event_numbers(frame, "sample", events_path), sfreq=sfreq,
                            first_samp=int(header.first_samp), events_path=events_path, data_path=recording.fpath)
    del header

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
        story = description.get("story")
        words.add(sound.id, start, onset, word, origin=f"{events_path} line {line}",
                  metadata={"story": None if story is None else str(story)})
    if abs(worst[0]) > START_TOLERANCE:
        logger.warning("%s line %d: the word's 'start' and its onset after its sound's row differ by %.3f s; "
                       "the recipe uses 'start' (the onset in the sound)", events_path, worst[1], worst[0])
    if not len(words):
        raise EventError(f"{events_path}: no 'word' rows (kind == 'word' in trial_type)")

    entities = recording.path
    task = str(entities.task or "")
    run = task if not entities.run else f"{task}-{entities.run}"
    return SpeechRecording(
        subject=str(entities.subject), session=str(entities.session or "01"), run=run or "01", task=task,
        words=words, read_raw=lambda: read_raw_bids(recording, preload=False),
        source=describe_source(recording.fpath, extra_companions=sidecar_files(recording)),
        info_extra={"bids_file": str(recording.fpath.relative_to(root))},
        path=recording.fpath, duration=n_times / sfreq,
    )


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
    float index, or with another capitalisation (of the folders too: the events write
    ``stimuli/audio``, as brainmagick reads it, whatever the folder on disk); ``None`` when
    none exists."""
    written = root / name
    if written.is_file():
        return written
    folder = root
    for part in Path(name).parent.parts:
        if (folder / part).is_dir():
            folder = folder / part
            continue
        matches = [c for c in sorted(folder.iterdir()) if c.is_dir() and c.name.lower() == part.lower()]
        if not matches:
            return None
        folder = matches[0]
    wanted = {Path(name).name.lower(), _clean_sound_name(name).lower()}
    for candidate in sorted(folder.iterdir()):
        if candidate.name.lower() in wanted and candidate.is_file():
            return candidate
    return None


__all__ = ["CONVERTER", "DEFAULT_PICKS", "DEFAULT_PREPROCESSING", "convert", "sound_path"]
