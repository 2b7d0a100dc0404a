"""Schoffelen et al. (2019) MOUS, auditory task: the Donders BIDS release into a speech-segment store.

What the recipe reads (Donders Repository collection di.dccn.DSC_3011020.09_236_v1, BIDS)::

    <root>/dataset_description.json, participants.tsv
    <root>/sub-A2002/meg/sub-A2002_task-auditory_meg.ds          CTF, 275 axial gradiometers + references, 1200 Hz
    <root>/sub-A2002/meg/sub-A2002_task-auditory_events.tsv      onset duration sample type value
    <root>/stimuli/audio_files/EQ_Ramp_Int2_Int1LPF001.wav ...    one wav per sentence or word list
    <root>/stimuli/stimuli.txt                                   "<number> <text>", one line per wav
    <root>/derivatives/phonemes/EQ_Ramp_Int2_Int1LPF001.TextGrid  word onsets in each wav (see below)

Auditory subjects are ``sub-A2xxx`` (``sub-V1xxx`` read the words on a screen and are not
converted: ``task-visual``). ``events.tsv`` merges the MEG triggers and the stimulus log:
a row whose ``value`` is ``Start File 001.wav`` (``type`` ``Sound``) starts a wav; the next
row whose ``value`` is ``Audio onset`` (before the next ``Start File``) marks when the sound
actually began, and is the sound's onset in the recording (brainmagick's
``schoffelen2019/preproc.py`` does the same on the log); without one, the ``Start File``
row's onset is used. Other rows (triggers, ``End of file``, pictures, responses) are ignored.

Word onsets inside each wav are not part of the release. Défossez et al. (2023) used forced
alignments (WebMAUS TextGrids, word tier ``ORT-MAU``) that brainmagick distributes as
``derivatives/phonemes/EQ_Ramp_Int2_Int1LPF%03d.TextGrid``; ``alignments`` points at that
folder (the default when it exists under the root) or at a table with columns ``sound``,
``onset`` (s in the wav) and ``word``. Without alignments, ``unit="sound"`` makes one segment
per wav, at its start, labelled with the first word of its ``stimuli.txt`` line.

Defaults as Défossez et al. (2023) and brainmagick: the MEG sensors (``picks=["mag",
"grad"]``: the axial gradiometers, without the 29 reference channels that brainmagick also
drops), no band-pass, resampled to 120 Hz (MNE's
polyphase ``raw.resample``). With the default ``block_duration`` (30 s, longer than any MOUS wav) each
sentence or word list is one block, so test blocks are whole sentences, as brainmagick's
``force_uid_assignement`` for this study.

>>> from neurodec.io.recipes import convert
>>> study = convert("schoffelen-mous", "/data/mous", "mous.zarr", subjects=["A2002"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

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

CONVERTER = "neurodec.io.recipes.mous"
#: As MEG-MASC: 120 Hz (polyphase), no band-pass; the axial gradiometers without CTF's references.
DEFAULT_PREPROCESSING = SPEECH_PREPROCESSING
DEFAULT_PICKS = MEG_PICKS
TASK = "auditory"
AUDIO_FOLDER = Path("stimuli") / "audio_files"
AUDIO_PREFIX = "EQ_Ramp_Int2_Int1LPF"
DEFAULT_ALIGNMENTS = Path("derivatives") / "phonemes"
WORD_TIER = "ORT-MAU"
UNITS = ("word", "sound")
_START_FILE = re.compile(r"^\s*Start File\s+(.+?\.wav)\s*$", re.IGNORECASE)


def convert(
    source: str | Path,
    out: str | Path,
    *,
    subjects: str | Sequence[str] | None = None,
    overwrite: bool = False,
    alignments: str | Path | None = None,
    unit: str = "word",
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
    """Convert MOUS's auditory task at ``source`` (its BIDS root) into a store at ``out``.

    ``subjects`` are BIDS labels (``"A2002"``). ``alignments``: a folder of TextGrids or a
    table of word onsets in the wavs (default ``<root>/derivatives/phonemes``); ``unit="sound"``
    needs none and makes one segment per wav. ``preprocessing``, ``picks``, ``on_outside`` and
    the segment options as :func:`neurodec.io.recipes.meg_masc.convert`. Recording keys are
    ``sub-A2002/ses-01/run-01`` (the BIDS run label where the file has one); each segment's
    metadata holds its wav's ``sentence`` (its line of ``stimuli.txt``, None without the file).

    >>> study = convert("/data/mous", "mous.zarr", subjects=["A2002", "A2003"])  # doctest: +SKIP
    """
    check_choice(unit, "schoffelen-mous: unit", UNITS)
    check_choice(on_outside, "schoffelen-mous: on_outside", OUTSIDE_POLICIES)
    root = bids_root(source, "MOUS")
    from neurodec.io.bids import find_bids_recordings

    found = [r for r in find_bids_recordings(root, subject=bids_labels(subjects), task=TASK) if r.datatype == "meg"]
    if not found:
        raise InputFileError(f"{root}: no auditory MEG recording (sub-A*/meg/*_task-{TASK}_meg.ds) matches "
                             f"subjects={subjects!r}")
    aligned: dict[str, list[tuple[float, str]]] | None = None
    if unit == "word":
        where = Path(alignments) if alignments is not None else root / DEFAULT_ALIGNMENTS
        if not where.exists():
            raise InputFileError(
                f"word alignments {where} do not exist; MOUS's release has no word onsets: give alignments= a "
                f"folder of TextGrids (brainmagick's derivatives/phonemes, tier {WORD_TIER!r}) or a table with "
                f"columns sound, onset, word; or convert with unit='sound' (one segment per wav)")
        aligned = read_word_alignments(where)
    texts = read_stimuli_text(root / "stimuli" / "stimuli.txt")

    sounds: dict[str, SoundFile] = {}
    recordings = [_recording_words(root, recording, sounds, aligned, texts) for recording in found]
    parameters = {"source": str(root), "subjects": subjects, "unit": unit,
                  "alignments": None if aligned is None else str(where)}
    return write_speech_store(
        out, recordings, sounds, converter=CONVERTER, options=ingest_options(preprocessing, picks, modality="meg"),
        segment_options=segment_options(tmin, tmax, shift, block_duration, test_fraction, seed),
        parameters=parameters, overwrite=overwrite, on_outside=on_outside,
    )


def _recording_words(root: Path, recording, sounds: dict[str, SoundFile],
                     aligned: dict[str, list[tuple[float, str]]] | None, texts: dict[int, str]) -> SpeechRecording:
    """The words one recording heard: each played wav's aligned words, placed at its onset."""
    from neurodec.io._files import describe_source
    from neurodec.io.bids import read_raw_bids, sidecar_files

    events_path = recording.sidecar("events", ".tsv")
    if events_path is None:
        raise InputFileError(f"{recording.fpath}: its events.tsv is missing; MOUS's sound onsets are in it")
    frame = read_events_tsv(events_path, required=("onset", "value"))
    onsets = event_numbers(frame, "onset", events_path)
    header = read_raw_bids(recording, preload=False)
    sfreq, n_times = float(header.info["sfreq"]), int(header.n_times)
    if "sample" in frame.columns:
        check_event_samples(onsets, event_numbers(frame, "sample", events_path), sfreq=sfreq,
                            first_samp=int(header.first_samp), events_path=events_path, data_path=recording.fpath)
    del header

    words = HeardWords()
    for line, sound, sound_onset in _played_sounds(root, frame, onsets, events_path, sounds):
        text = texts.get(_sound_number(sound.id), "")
        # The sentence (or word list) the wav holds, as stimuli.txt writes it; None without stimuli.txt.
        metadata = {"sentence": text or None}
        if aligned is None:
            heard = [(0.0, text.split()[0] if text.split() else sound.id)]
        else:
            if sound.id not in aligned:
                raise InputFileError(f"word alignments hold no words for {sound.id} (played at {events_path} line "
                                     f"{line}); expected {sound.id}.TextGrid or rows with sound {sound.id}")
            heard = aligned[sound.id]
        for onset_in_sound, word in heard:
            words.add(sound.id, onset_in_sound, sound_onset + onset_in_sound, word,
                      origin=f"{events_path} line {line}", metadata=metadata)
    if not len(words):
        raise EventError(f"{events_path}: no sound played ('Start File <name>.wav' rows)")

    entities = recording.path
    return SpeechRecording(
        subject=str(entities.subject), session=str(entities.session or "01"), run=str(entities.run or "01"),
        task=TASK, words=words, read_raw=lambda: read_raw_bids(recording, preload=False),
        source=describe_source(recording.fpath, extra_companions=sidecar_files(recording)),
        info_extra={"bids_file": str(recording.fpath.relative_to(root))},
        path=recording.fpath, duration=n_times / sfreq,
    )


def _played_sounds(root: Path, frame, onsets: np.ndarray, events_path: Path,
                   sounds: dict[str, SoundFile]) -> list[tuple[int, SoundFile, float]]:
    """``(events line, sound, onset in the recording)`` of every wav a recording played."""
    values = [str(v) for v in frame["value"].tolist()]
    starts = [i for i, value in enumerate(values) if _START_FILE.match(value)]
    played, without_audio_onset = [], 0
    for position, index in enumerate(starts):
        line = index + 2
        name = _START_FILE.match(values[index]).group(1).strip()
        file_name = name if name.lower().startswith(AUDIO_PREFIX.lower()) else AUDIO_PREFIX + name
        path = root / AUDIO_FOLDER / file_name
        if not path.is_file():
            raise InputFileError(f"sound file {path} does not exist (played at {events_path} line {line}: "
                                 f"{values[index]!r}); put MOUS's stimuli/audio_files folder in the BIDS root")
        sound = sounds.get(path.stem) or read_sound_file(path, uri=str(path.resolve()))
        sounds.setdefault(sound.id, sound)
        following = starts[position + 1] if position + 1 < len(starts) else len(values)
        audio_onset = next((i for i in range(index + 1, following) if values[i].strip().lower() == "audio onset"),
                           index)
        without_audio_onset += audio_onset == index
        onset = float(onsets[audio_onset])
        if not np.isfinite(onset):
            raise EventError(f"{events_path} line {audio_onset + 2}: the onset of {file_name} is not a number")
        played.append((line, sound, onset))
    if without_audio_onset:
        logger.info("%s: %d of %d wavs have no 'Audio onset' row; their 'Start File' row is their onset",
                    events_path.name, without_audio_onset, len(starts))
    return played


def _sound_number(sound_id: str) -> int | None:
    digits = sound_id[len(AUDIO_PREFIX):] if sound_id.startswith(AUDIO_PREFIX) else ""
    return int(digits) if digits.isdigit() else None


def read_stimuli_text(path: Path) -> dict[int, str]:
    """``stimuli/stimuli.txt``: the text of each wav by number (empty when the file is absent)."""
    if not path.is_file():
        return {}
    texts = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        number, _, text = line.strip().partition(" ")
        if number.isdigit():
            texts[int(number)] = text.strip()
    return texts


# ------------------------------------------------------------------ word alignments
def read_word_alignments(path: str | Path, tier: str = WORD_TIER) -> dict[str, list[tuple[float, str]]]:
    """Word onsets in each wav, by wav stem: ``{"EQ_Ramp_Int2_Int1LPF001": [(0.31, "de"), ...]}``.

    ``path`` is a folder of Praat TextGrids (long text format), one per wav and named after
    it, whose ``tier`` holds one interval per word (pauses ``""`` and ``<p:>`` skipped), or
    a table (``.tsv``/``.csv``) with columns ``sound`` (the wav's name or stem), ``onset``
    (seconds in the wav) and ``word``.

    >>> read_word_alignments("derivatives/phonemes")["EQ_Ramp_Int2_Int1LPF001"][:2]  # doctest: +SKIP
    [(0.12, 'Het'), (0.31, 'complot')]
    """
    path = Path(path)
    if path.is_dir():
        grids = sorted(path.glob("*.TextGrid"))
        if not grids:
            raise InputFileError(f"word alignments folder {path} holds no .TextGrid file")
        return {grid.stem: textgrid_words(grid, tier) for grid in grids}
    return _table_words(path)


def textgrid_words(path: Path, tier: str = WORD_TIER) -> list[tuple[float, str]]:
    """``(onset, word)`` of the non-empty intervals of one tier of a long-format TextGrid."""
    raw = path.read_bytes()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    if "ooTextFile" not in text[:200] or "intervals [" not in text:
        raise InputFileError(f"{path}: not a Praat TextGrid in the long text format (expected 'File type = "
                             f"\"ooTextFile\"' and 'intervals [n]:' entries)")
    words, current_tier, start = [], None, None
    names = []
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        key, value = key.strip(), value.strip()
        if key == "name":
            current_tier = _praat_string(value)
            names.append(current_tier)
        elif current_tier == tier and key == "xmin":
            start = float(value)
        elif current_tier == tier and key == "text" and start is not None:
            word = _praat_string(value).strip()
            if word and not (word.startswith("<") and word.endswith(">")):
                words.append((start, word))
            start = None
    if tier not in names:
        raise InputFileError(f"{path}: no tier named {tier!r}; found tiers {names}")
    return words


def _praat_string(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.replace('""', '"')


def _table_words(path: Path) -> dict[str, list[tuple[float, str]]]:
    import pandas as pd

    from neurodec.io._files import read_with

    separator = "," if path.suffix.lower() == ".csv" else "\t"
    frame = read_with(lambda: pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False,
                                          encoding="utf-8-sig"), path, "a word alignment table")
    missing = [c for c in ("sound", "onset", "word") if c not in frame.columns]
    if missing:
        raise InputFileError(f"{path}: word alignments need columns sound, onset, word; {missing} are missing "
                             f"(found {list(frame.columns)})")
    words: dict[str, list[tuple[float, str]]] = {}
    for index, row in enumerate(frame.to_dict("records")):
        try:
            onset = float(row["onset"])
        except ValueError:
            raise InputFileError(f"{path} line {index + 2}: onset expected seconds, found {row['onset']!r}") from None
        words.setdefault(Path(row["sound"].strip()).stem, []).append((onset, row["word"].strip()))
    return {sound: sorted(entries) for sound, entries in words.items()}


__all__ = ["CONVERTER", "convert", "read_stimuli_text", "read_word_alignments", "textgrid_words"]
