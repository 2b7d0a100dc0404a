"""What every speech recipe shares: word onsets -> segments -> events -> one store.

A recipe reads its study's sounds and word tables, builds :class:`HeardWords` for each
recording (which word of which sound was heard when), and a function that reads the
recording's MNE raw, and hands all of it to :func:`write_speech_store`. That makes the
segments (``neurodec.io.speech``) from every recording's words first, then converts the
recordings one at a time into the store: words outside a recording (``on_outside``) and
words whose brain window overlaps one of the other split's in the recording (recording-time
leakage, docs/speech.md "Held-out blocks") are left out there, once for all recipes, and
counted in each recording's info and in the store's provenance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from neurodec._logging import progress
from neurodec.errors import ConfigError, EventError
from neurodec.io.recipes._common import check_choice
from neurodec.io.speech import (
    DEFAULT_SHIFT,
    DEFAULT_TMAX,
    DEFAULT_TMIN,
    SoundFile,
    SpeechSegments,
    make_segments,
    recording_word_events,
)

logger = logging.getLogger("neurodec")

OUTSIDE_POLICIES = ("error", "drop")
#: Seconds of slack when comparing window edges (onsets are read with millisecond precision).
EDGE_TOLERANCE = 1e-6
#: Metadata names a segment already has (neurodec.io.speech.SpeechSegments.stimulus_table).
_SEGMENT_FIELDS = ("sound", "onset", "start", "stop", "word", "block", "sample_rate", "n_samples")


@dataclass
class HeardWords:
    """The words one recording heard: per word its sound, onset in the sound (s), onset in
    the recording (s on ``raw.times``, 0 at the first sample) and the word itself.

    ``origin`` says where each word was read (``"sub-01_events.tsv line 12"``; named in
    errors, may be empty). ``metadata`` holds extra per-word fields (``story``,
    ``sentence``, ...), the same names for every word; they land in each segment's
    metadata in the stimuli table.

    >>> words = HeardWords()
    >>> words.add("lw1_0", 0.3, 2.3, "tara", metadata={"story": "lw1"})
    >>> len(words), words.metadata
    (1, {'story': ['lw1']})
    """

    sound: list[str] = field(default_factory=list)
    onset_in_sound: list[float] = field(default_factory=list)
    onset_in_recording: list[float] = field(default_factory=list)
    word: list[str] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, sound: str, onset_in_sound: float, onset_in_recording: float, word: str, *, origin: str = "",
            metadata: Mapping[str, Any] | None = None) -> None:
        metadata = dict(metadata or {})
        if not len(self) and not self.metadata:
            reserved = sorted(set(metadata) & set(_SEGMENT_FIELDS))
            if reserved:
                raise ConfigError(f"heard words: metadata names {reserved} are a segment's own fields; rename them")
            self.metadata = {name: [] for name in metadata}
        elif set(metadata) != set(self.metadata):
            raise ConfigError(f"heard words: every word needs the same metadata fields; the first had "
                              f"{sorted(self.metadata)}, word {word!r} ({origin or sound}) has {sorted(metadata)}")
        self.sound.append(str(sound))
        self.onset_in_sound.append(float(onset_in_sound))
        self.onset_in_recording.append(float(onset_in_recording))
        self.word.append(str(word))
        self.origin.append(str(origin))
        for name, value in metadata.items():
            self.metadata[name].append(value)

    def select(self, keep: Sequence[bool] | np.ndarray) -> "HeardWords":
        """The words where ``keep`` is true, in order."""
        indices = np.flatnonzero(np.asarray(keep, dtype=bool)).tolist()
        return HeardWords(
            sound=[self.sound[i] for i in indices],
            onset_in_sound=[self.onset_in_sound[i] for i in indices],
            onset_in_recording=[self.onset_in_recording[i] for i in indices],
            word=[self.word[i] for i in indices],
            origin=[self.origin[i] for i in indices],
            metadata={name: [values[i] for i in indices] for name, values in self.metadata.items()},
        )

    def __len__(self) -> int:
        return len(self.sound)


@dataclass
class SpeechRecording:
    """One recording of a speech study before conversion: labels, words heard, and a
    function that reads its MNE raw (called once, when the recording is converted).

    ``path`` (the data file) is named in messages; ``duration`` (s), when the recipe knows
    it from the file's header, lets :func:`write_speech_store` refuse words outside the
    recording before anything is converted.
    """

    subject: str
    session: str
    run: str
    task: str
    words: HeardWords
    read_raw: Callable[[], Any]
    source: dict[str, Any] | None = None
    info_extra: dict[str, Any] | None = None
    path: str | Path | None = None
    duration: float | None = None

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"sub-{self.subject} ses-{self.session} run-{self.run}"


def segment_options(tmin: float = DEFAULT_TMIN, tmax: float = DEFAULT_TMAX, shift: float = DEFAULT_SHIFT,
                    block_duration: float = 30.0, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """The :func:`~neurodec.io.speech.make_segments` options of a recipe, as plain numbers
    (``--set`` values may arrive as text or integers)."""
    return {"tmin": float(tmin), "tmax": float(tmax), "shift": float(shift), "block_duration": float(block_duration),
            "test_fraction": float(test_fraction), "seed": int(seed)}


def speech_segments(recordings: Sequence[SpeechRecording], sounds: Mapping[str, SoundFile] | Sequence[SoundFile],
                    **segment_options: Any) -> SpeechSegments:
    """The segments of all the words the recordings heard (one per distinct sound and onset),
    with the words' metadata fields (``None`` where a recording's words lack one)."""
    names = sorted({name for recording in recordings for name in recording.words.metadata})
    words: dict[str, list[Any]] = {"sound": [], "onset": [], "word": [], **{name: [] for name in names}}
    for recording in recordings:
        heard = recording.words
        words["sound"] += heard.sound
        words["onset"] += heard.onset_in_sound
        words["word"] += heard.word
        for name in names:
            words[name] += heard.metadata.get(name, [None] * len(heard))
    return make_segments(words, sounds, **segment_options, extra=names)


def words_inside(words: HeardWords, duration: float, window: tuple[float, float], on_outside: str,
                 where: str) -> np.ndarray:
    """Which words lie inside a recording of ``duration`` s, their brain window included.

    A word whose onset is not in ``[0, duration)`` points at a misaligned recording:
    ``on_outside="error"`` raises :class:`~neurodec.errors.EventError` naming the first such
    word, ``"drop"`` leaves it out. A word whose onset is inside but whose brain window
    ``[onset + window[0], onset + window[1])`` (``tmin + shift``, ``tmax + shift``) reaches
    before the first sample or past the last (the recording stopped soon after the last
    word, as many do) is always left out and counted.

    >>> words = HeardWords()
    >>> for onset in (0.2, 5.0, 9.0):
    ...     words.add("s", onset, onset, "w")
    >>> words_inside(words, 10.0, (-0.35, 2.65), "drop", "rec").tolist()
    [False, True, False]
    """
    onset = np.asarray(words.onset_in_recording, dtype=np.float64)
    start, stop = onset + window[0], onset + window[1]
    onset_outside = (onset < 0) | (onset >= duration)
    outside = onset_outside | (start < -EDGE_TOLERANCE) | (stop > duration + EDGE_TOLERANCE)
    if not outside.any():
        return ~outside
    first = int(np.flatnonzero(onset_outside if onset_outside.any() else outside)[0])
    origin = f"{words.origin[first]}: " if words.origin[first] else ""
    heard = f"{origin}word {words.word[first]!r} of {words.sound[first]!r} at {onset[first]:g} s"
    if onset_outside[first]:
        example = f"{heard} lies outside"
    else:
        example = f"{heard} has its brain window {start[first]:g} to {stop[first]:g} s past the recording's edge"
    message = (f"{where}: {int(onset_outside.sum())} of {len(onset)} word onsets fall outside the recording (0 to "
               f"{duration:g} s) and {int((outside & ~onset_outside).sum())} more lie so near its edges that their "
               f"brain window ({window[0]:+g} to {window[1]:+g} s around the onset) leaves it; e.g. {example}")
    if on_outside == "error" and onset_outside.any():
        raise EventError(f"{message}. Check the alignment of the words with this recording, or pass "
                         f"on_outside='drop' to leave such words out (the recording stopped early)")
    log = logger.warning if onset_outside.any() else logger.info
    log("%s; left out", message)
    return ~outside


def write_speech_store(
    out: Any,
    recordings: Sequence[SpeechRecording],
    sounds: Mapping[str, SoundFile] | Sequence[SoundFile],
    *,
    converter: str,
    options: Mapping[str, Any] | None = None,
    segment_options: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    on_outside: str = "drop",
):
    """Segments, events and preprocessed recordings of a speech study, written as one store.

    ``options`` are :class:`~neurodec.io.options.IngestOptions` fields (``preprocessing``:
    band-pass, resample, ...; ``picks``); ``segment_options`` go to
    :func:`~neurodec.io.speech.make_segments`; ``parameters`` are recorded in the store's
    provenance. The segments are made first, from every recording's words; the recordings
    are then read, converted and written one at a time (one raw in memory at once). In each
    recording:

    * words outside it, their brain window (``tmin + shift`` to ``tmax + shift``) included,
      are left out (``on_outside="drop"``, the default here) or raise
      :class:`~neurodec.errors.EventError` (``"error"``, the recipes' default; raised before
      anything is converted for recordings whose ``duration`` is known);
    * words whose brain window overlaps the brain window of a word of the other split
      (train / test, the segments' split) are left out, on both sides (docs/speech.md).

    Both counts go into each recording's info (``words_outside_recording``,
    ``words_overlapping_other_split``) and the provenance's parameters. The store appears
    at ``out`` only when complete; an error on the way leaves nothing there.

    >>> study = write_speech_store("study.zarr", recordings, sounds, converter="my recipe",
    ...                            segment_options={"block_duration": 30.0})   # doctest: +SKIP
    """
    from neurodec.io.events import StimulusMapping
    from neurodec.io.meeg import recording_from_raw
    from neurodec.io.options import load_options
    from neurodec.store import StoreWriter

    check_choice(on_outside, "on_outside", OUTSIDE_POLICIES)
    ingest_options = load_options({**dict(options or {}), "kind": "audio"})
    segments = speech_segments(recordings, sounds, **dict(segment_options or {}))
    window = segments.brain_window
    for recording in recordings:
        if recording.duration is not None and on_outside == "error":
            words_inside(recording.words, recording.duration, window, on_outside, recording.where)
    mapping = StimulusMapping.from_rule("{trial_type}", kind="audio")

    dropped: dict[str, dict[str, int]] = {}
    writer = StoreWriter(str(out), name=converter, overwrite=overwrite, provenance={"converter": converter})
    try:
        writer.set_stimuli(segments.stimulus_table())
        for recording in progress(recordings, f"{converter}: converting recordings", total=len(recordings)):
            raw = recording.read_raw()
            duration = raw.n_times / float(raw.info["sfreq"])
            heard = recording.words.select(words_inside(recording.words, duration, window, on_outside,
                                                        recording.where))
            events, overlapping = recording_word_events(
                segments, heard.sound, heard.onset_in_sound, heard.onset_in_recording, float(raw.info["sfreq"]),
                where=f"{converter} {recording.where}")
            counts = {"words_outside_recording": len(recording.words) - len(heard),
                      "words_overlapping_other_split": overlapping}
            converted = recording_from_raw(
                raw, options=ingest_options, events=events, mapping=mapping, subject=recording.subject,
                session=recording.session, run=recording.run, task=recording.task, source=recording.source,
                info_extra={**dict(recording.info_extra or {}), **counts}, copy=False,
            )
            del raw  # the next recording is read only once this one is written and released
            if ingest_options.preprocessing.crop is None:
                # One rounding, at the stored rate: MNE's resampling of the events rounds the native
                # sample again, which put up to a quarter of Broderick's words (128 -> 120 Hz) one
                # stored sample off their onset.
                converted.events["sample"][:] = np.round(converted.events["onset"] * converted.sfreq)
            writer.add_recording(converted)
            dropped[converted.key] = counts
            del converted
        writer.update_provenance({"parameters": {
            **dict(parameters or {}),
            "ingest_options": ingest_options.model_dump(mode="json"),
            "segments": segments.record(),
            "on_outside": on_outside,
            "words_outside_dropped": sum(c["words_outside_recording"] for c in dropped.values()),
            "words_overlapping_dropped": sum(c["words_overlapping_other_split"] for c in dropped.values()),
            "words_dropped_by_recording": {key: c for key, c in dropped.items() if any(c.values())},
        }})
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


__all__ = ["OUTSIDE_POLICIES", "HeardWords", "SpeechRecording", "segment_options",
           "speech_segments", "words_inside", "write_speech_store"]
