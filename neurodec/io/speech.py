"""Speech segments: one stimulus per word onset in a sound, with held-out blocks.

Speech studies (MEG-MASC, MOUS, Brennan 2019, Broderick 2019) play long sounds and mark the
onset of every word. Défossez et al. (2023) decode 3 s segments starting 0.5 s before each
word. neurodec makes each such segment a stimulus of its own, so targets, splits and
retrieval work on segments as they work on images:

* the segment's id is ``"<sound id>@<onset in the sound, ms precision>s"``, e.g.
  ``"lw1_0@12.345s"``; its metadata holds the sound, the onset, the span ``[start, stop)``
  of the sound it covers (``onset + tmin`` to ``onset + tmax``), the word and the block;
* its ``uri`` (or ``content_array`` / ``content_index``) is the whole sound's, so target
  extractors cut the span from the sound (``neurodec.targets``), zero-padded where the span
  reaches before the sound's start or past its end;
* recordings hold one event per heard word, at the word's onset in the recording, naming
  the segment; the brain window (``WindowDataset(tmin, tmax, shift)``) is cut from there.

Held-out blocks: each sound is cut into consecutive blocks of ``block_duration`` seconds;
a seeded draw sends ``test_fraction`` of all blocks to test (the stimuli table's ``split``
column), the same blocks for every subject who heard the sound. A segment whose window
(brain shift included) reaches into a block of the other split is dropped, so no test
window shares a sample of sound, or of brain signal, with a training window. Validation
blocks are drawn from the training blocks at training time (``split_stimuli(...,
val_groups="block")``).

>>> sounds = [SoundFile("story", sample_rate=16000, n_samples=16000 * 120)]
>>> words = {"sound": ["story"] * 3, "onset": [1.0, 1.4, 70.2], "word": ["the", "cat", "sat"]}
>>> segments = make_segments(words, sounds, block_duration=30.0, test_fraction=0.25, seed=0)
>>> segments.ids.tolist()
['story@1.000s', 'story@1.400s', 'story@70.200s']
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, EventError, InputFileError
from neurodec.store import Table, stimulus_table

logger = logging.getLogger("neurodec")

#: Défossez et al. (2023): 3 s windows from 0.5 s before each word, brain 150 ms later.
DEFAULT_TMIN, DEFAULT_TMAX, DEFAULT_SHIFT = -0.5, 2.5, 0.15
SOUNDS_CONTENT_ARRAY = "sounds"


@dataclass(frozen=True)
class SoundFile:
    """A sound the participants heard: its id, rate, length and where its samples live.

    ``uri`` is a file path (absolute, or relative to the folder holding the store);
    ``content_index`` is the sound's row of the store's ``stimuli/content/sounds`` array
    (zero-padded to the longest sound) when the samples are kept in the store.
    """

    id: str
    sample_rate: float
    n_samples: int
    uri: str = ""
    content_index: int = -1

    @property
    def duration(self) -> float:
        return self.n_samples / self.sample_rate


def read_sound_file(path: str | os.PathLike, sound_id: str | None = None, uri: str | None = None) -> SoundFile:
    """The :class:`SoundFile` of a WAV file (header and length only; the samples stay on disk).

    >>> read_sound_file("stimuli/audio/lw1_0.wav")            # doctest: +SKIP
    SoundFile(id='lw1_0', sample_rate=22050.0, n_samples=3969000, uri='stimuli/audio/lw1_0.wav', content_index=-1)
    """
    from scipy.io import wavfile

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"sound file {path} does not exist (it is named by the study's events; put the "
                             f"study's stimuli folder in place, or pass the folder that holds it)")
    import wave

    try:  # integer PCM of any width (24-bit included): the header alone
        with wave.open(str(path), "rb") as header:
            rate, n_samples = header.getframerate(), header.getnframes()
    except (wave.Error, EOFError):  # floating-point WAV: scipy maps the samples without reading them
        try:
            rate, samples = wavfile.read(path, mmap=True)
        except ValueError as error:
            raise InputFileError(f"{path}: not a readable WAV file ({error})") from None
        n_samples = samples.shape[0]
    return SoundFile(id=sound_id or path.stem, sample_rate=float(rate), n_samples=int(n_samples),
                     uri=str(path) if uri is None else uri)


def segment_id(sound: str, onset: float) -> str:
    """The stimulus id of the segment at ``onset`` seconds into ``sound`` (millisecond precision).

    >>> segment_id("lw1_0", 12.3456)
    'lw1_0@12.346s'
    """
    return f"{sound}@{onset_text(onset)}s"


def onset_text(onset: float) -> str:
    """An onset as segment ids write it, to the millisecond; the one rounding of onsets, so that
    ids made from the words and ids looked up for a recording's words always agree.

    >>> onset_text(5.0025), float(onset_text(5.0025))
    ('5.003', 5.003)
    """
    return f"{float(onset):.3f}"


@dataclass
class SpeechSegments:
    """The segments of a speech study: one row per distinct (sound, word onset).

    Arrays (one entry per segment, in sound then onset order): ``ids``, ``sound``,
    ``onset`` (seconds in the sound), ``word``, ``block`` (``"<sound>#<index>"``) and
    ``split`` (``"train"`` or ``"test"``). ``dropped`` counts the word onsets left out, by
    reason; ``options`` records how the segments were made (kept in the store's provenance).
    """

    ids: np.ndarray
    sound: np.ndarray
    onset: np.ndarray
    word: np.ndarray
    block: np.ndarray
    split: np.ndarray
    sounds: dict[str, SoundFile]
    options: dict[str, Any]
    dropped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        counts = {part: int((self.split == part).sum()) for part in ("train", "test")}
        return f"<SpeechSegments {len(self)} segments of {len(self.sounds)} sounds, {counts}, dropped {self.dropped}>"

    def stimulus_table(self) -> Table:
        """The store's stimuli table: one ``audio`` stimulus per segment (category: the word)."""
        tmin, tmax = self.options["tmin"], self.options["tmax"]
        metadata = []
        for i in range(len(self)):
            sound = self.sounds[self.sound[i]]
            entry = {
                "sound": sound.id,
                "onset": float(self.onset[i]),
                "start": round(float(self.onset[i]) + tmin, 6),
                "stop": round(float(self.onset[i]) + tmax, 6),
                "word": str(self.word[i]),
                "block": str(self.block[i]),
                "sample_rate": sound.sample_rate,
                "n_samples": sound.n_samples,
            }
            entry.update({name: _json_value(values[i]) for name, values in self.extra.items()})
            metadata.append(entry)
        in_store = [self.sounds[s].content_index >= 0 for s in self.sound]
        return stimulus_table(
            self.ids,
            kind="audio",
            category=self.word,
            split=self.split,
            uri=[self.sounds[s].uri for s in self.sound],
            metadata=metadata,
            content_array=[SOUNDS_CONTENT_ARRAY if kept else "" for kept in in_store],
            content_index=[self.sounds[s].content_index for s in self.sound],
        )

    @property
    def brain_window(self) -> tuple[float, float]:
        """The brain window around each onset, seconds: ``(tmin + shift, tmax + shift)``."""
        return (self.options["tmin"] + self.options["shift"], self.options["tmax"] + self.options["shift"])

    def lookup(self, sound: Sequence[str], onset: Sequence[float]) -> np.ndarray:
        """The segment id of each (sound, onset in the sound), ``""`` where it was dropped."""
        known = set(self.ids.tolist())
        ids = [segment_id(str(s), float(o)) for s, o in zip(sound, onset)]
        return np.asarray([s if s in known else "" for s in ids], dtype=object)

    def record(self) -> dict[str, Any]:
        """How the segments were made, for the store's provenance."""
        return {**self.options, "n_segments": len(self), "n_test": int((self.split == "test").sum()),
                "dropped": dict(self.dropped)}


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_sounds(sounds: Mapping[str, SoundFile] | Sequence[SoundFile]) -> dict[str, SoundFile]:
    items = list(sounds.values()) if isinstance(sounds, Mapping) else list(sounds)
    by_id: dict[str, SoundFile] = {}
    for sound in items:
        if sound.id in by_id and by_id[sound.id] != sound:
            raise ConfigError(f"sound {sound.id!r} is described twice, differently: {by_id[sound.id]} and {sound}")
        if not (sound.sample_rate > 0 and sound.n_samples > 0):
            raise InputFileError(f"sound {sound.id!r} ({sound.uri or 'kept in the store'}): expected a positive "
                                 f"sampling rate and length, found {sound.sample_rate} Hz, {sound.n_samples} samples")
        by_id[sound.id] = sound
    return by_id


def make_segments(
    words: Mapping[str, Sequence[Any]],
    sounds: Mapping[str, SoundFile] | Sequence[SoundFile],
    *,
    tmin: float = DEFAULT_TMIN,
    tmax: float = DEFAULT_TMAX,
    shift: float = DEFAULT_SHIFT,
    block_duration: float = 30.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    extra: Sequence[str] = (),
) -> SpeechSegments:
    """Segments from word onsets in sounds, split into training and held-out test blocks.

    ``words`` holds equal-length columns ``sound`` (a sound id), ``onset`` (seconds from
    the sound's start) and ``word``, plus any columns named in ``extra`` (kept in each
    segment's metadata, e.g. ``"phonemes"``). The same (sound, onset) listed several times
    (several subjects heard the sound) is one segment. An onset outside its sound raises
    :class:`~neurodec.errors.EventError`; a window that reaches past the sound's edges is
    kept (the extractors zero-pad the sound); a window reaching into a block of the other
    split is dropped and counted in ``dropped["crosses a split boundary"]`` (a block without
    any word counts as training time, so a test window never reaches into it).
    """
    if not tmax > tmin:
        raise ConfigError(f"segment tmax ({tmax}) must be later than tmin ({tmin})")
    if not block_duration > 0:
        raise ConfigError(f"block_duration must be positive seconds, found {block_duration}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), found {test_fraction}")
    missing_columns = [c for c in ("sound", "onset", "word", *extra) if c not in words]
    if missing_columns:
        raise ConfigError(f"words: columns {missing_columns} are missing; found {sorted(words)}")
    by_id = _as_sounds(sounds)
    sound = np.asarray([str(s) for s in words["sound"]], dtype=object)
    onset = np.asarray([float(onset_text(o)) for o in np.asarray(words["onset"], dtype=np.float64)])
    word = np.asarray([str(w) for w in words["word"]], dtype=object)
    if not (len(sound) == len(onset) == len(word)):
        raise ConfigError(f"words: columns differ in length (sound {len(sound)}, onset {len(onset)}, word {len(word)})")
    if not len(sound):
        raise EventError("words: no word onsets given; a speech study needs at least one")
    unknown = sorted(set(sound.tolist()) - set(by_id))
    if unknown:
        raise EventError(f"words name sounds that are not described: {unknown[:5]}; known sounds: {sorted(by_id)[:5]}")
    durations = np.asarray([by_id[s].duration for s in sound])
    outside = ~np.isfinite(onset) | (onset < 0) | (onset >= durations)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise EventError(f"{int(outside.sum())} word onsets fall outside their sound, e.g. {word[i]!r} at "
                         f"{onset[i]} s in {sound[i]!r} ({by_id[sound[i]].uri or 'kept in the store'}, "
                         f"{durations[i]:.3f} s long)")

    ids = np.asarray([segment_id(s, o) for s, o in zip(sound, onset)], dtype=object)
    first = {}
    for i, (segment, w) in enumerate(zip(ids, word)):
        if segment in first and word[first[segment]] != w:
            raise EventError(f"segment {segment}: two different words at one onset ({word[first[segment]]!r} and "
                             f"{w!r}); the onsets of one sound must agree between recordings")
        first.setdefault(segment, i)
    unique = np.asarray(sorted(first.values(), key=lambda i: (sound[i], onset[i])), dtype=np.int64)
    sound, onset, word, ids = sound[unique], onset[unique], word[unique], ids[unique]
    extra_columns = {name: np.asarray(list(words[name]), dtype=object)[unique] for name in extra}

    block_index = np.floor(onset / block_duration).astype(np.int64)
    blocks = sorted({(s, int(b)) for s, b in zip(sound, block_index)})
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(blocks))))
    if n_test >= len(blocks):
        raise ConfigError(f"{len(blocks)} blocks of {block_duration} s cannot give both a training and a test part "
                          f"(test_fraction={test_fraction}); shorten block_duration")
    test_blocks = {blocks[i] for i in rng.permutation(len(blocks))[:n_test]}
    split = np.asarray(["test" if (s, int(b)) in test_blocks else "train" for s, b in zip(sound, block_index)],
                       dtype=object)

    # The window of a segment covers the sound from onset+tmin to onset+tmax and the brain
    # signal from onset+tmin+shift to onset+tmax+shift; both must stay inside one split.
    reach_start = onset + min(tmin, tmin + shift)
    reach_stop = onset + max(tmax, tmax + shift)
    keep = np.ones(len(onset), dtype=bool)
    for i in range(len(onset)):
        first_block = int(math.floor(reach_start[i] / block_duration))
        last_block = int(math.ceil(reach_stop[i] / block_duration)) - 1
        for b in range(first_block, last_block + 1):
            if b == block_index[i]:
                continue
            other = "test" if (sound[i], b) in test_blocks else "train"
            if other != split[i] and 0 <= b * block_duration < by_id[sound[i]].duration:
                keep[i] = False
                break
    dropped = {"crosses a split boundary": int((~keep).sum())}
    if (~keep).any():
        logger.info("%d of %d segments reach into a block of the other split and are dropped", int((~keep).sum()),
                    len(keep))
    block = np.asarray([f"{s}#{b}" for s, b in zip(sound, block_index)], dtype=object)
    options = {"tmin": tmin, "tmax": tmax, "shift": shift, "block_duration": block_duration,
               "test_fraction": test_fraction, "seed": seed}
    segments = SpeechSegments(
        ids=ids[keep], sound=sound[keep], onset=onset[keep], word=word[keep], block=block[keep], split=split[keep],
        sounds={s: by_id[s] for s in sorted(set(sound[keep].tolist()))}, options=options, dropped=dropped,
        extra={name: values[keep] for name, values in extra_columns.items()},
    )
    for part in ("train", "test"):
        if not (segments.split == part).any():
            raise ConfigError(f"no {part} segment is left after dropping those that cross a split boundary; "
                              f"lengthen block_duration (now {block_duration} s)")
    return segments


def sound_content(sounds: Sequence[SoundFile], samples: Mapping[str, np.ndarray]) -> tuple[list[SoundFile], np.ndarray]:
    """Sounds to keep inside the store: their rows of the ``sounds`` content array, zero-padded
    to the longest, and the :class:`SoundFile` of each pointing at its row.

    >>> sound, array = sound_content([SoundFile("a", 16000, 3)], {"a": np.ones(3, np.float32)})
    >>> sound[0].content_index, array.shape
    (0, (1, 3))
    """
    longest = max(s.n_samples for s in sounds)
    array = np.zeros((len(sounds), longest), dtype=np.float32)
    placed = []
    for row, sound in enumerate(sounds):
        values = np.asarray(samples[sound.id], dtype=np.float32)
        if values.shape != (sound.n_samples,):
            raise InputFileError(f"sound {sound.id!r}: expected {sound.n_samples} mono samples, found {values.shape}")
        array[row, : sound.n_samples] = values
        placed.append(SoundFile(sound.id, sound.sample_rate, sound.n_samples, uri="", content_index=row))
    return placed, array


def word_events(
    segments: SpeechSegments,
    sound: Sequence[str],
    onset_in_sound: Sequence[float],
    onset_in_recording: Sequence[float],
    sfreq: float,
    *,
    first_time: float = 0.0,
    where: str = "",
):
    """An :class:`~neurodec.io.events.EventList` of the words one recording heard.

    ``onset_in_recording`` is in seconds on the recording's time axis (``raw.times``,
    which starts at 0 at the first sample); the event's ``sample`` is ``round(onset *
    sfreq)``, ``trial_type`` the segment id and ``value`` the word. Words whose segment was
    dropped are left out (logged). Pass the result to ``recording_from_raw(raw,
    events=..., mapping=StimulusMapping.from_rule("{trial_type}", kind="audio"))``.
    """
    from neurodec.io.events import EventList

    ids = segments.lookup(sound, onset_in_sound)
    onset = np.asarray(onset_in_recording, dtype=np.float64) - first_time
    if len(onset) != len(ids):
        raise ConfigError(f"{where}: {len(ids)} words in sounds but {len(onset)} onsets in the recording")
    kept = ids != ""
    if (~kept).any():
        logger.info("%s: %d of %d heard words have no segment (dropped at a split boundary)", where,
                    int((~kept).sum()), len(kept))
    word_of = dict(zip(segments.ids.tolist(), segments.word.tolist()))
    return EventList.build(
        sample=np.round(onset[kept] * sfreq).astype(np.int64),
        onset=onset[kept],
        trial_type=ids[kept].tolist(),
        value=[word_of[s] for s in ids[kept]],
        origin=where or "speech word onsets",
    )


def recording_word_events(
    segments: SpeechSegments,
    sound: Sequence[str],
    onset_in_sound: Sequence[float],
    onset_in_recording: Sequence[float],
    sfreq: float,
    *,
    where: str = "",
):
    """:func:`word_events` of the words one recording heard, less those whose brain window
    overlaps, in the recording, the brain window of a word of the other split (sounds played
    back to back; :func:`overlapping_other_split`). Returns the events and how many words
    that left out.
    """
    ids = segments.lookup(sound, onset_in_sound)
    rows = np.flatnonzero(ids != "")
    split_of = dict(zip(segments.ids.tolist(), segments.split.tolist()))
    overlapping = overlapping_other_split(np.asarray(onset_in_recording, dtype=np.float64)[rows],
                                          [split_of[i] for i in ids[rows]], segments.brain_window)
    if overlapping.any():
        logger.info("%s: %d of %d word events dropped: their brain window overlaps a window of the other split in "
                    "the recording", where, int(overlapping.sum()), len(overlapping))
    kept = rows[~overlapping]
    events = word_events(segments, [sound[i] for i in kept], [onset_in_sound[i] for i in kept],
                         [onset_in_recording[i] for i in kept], sfreq, where=where)
    return events, int(overlapping.sum())


def overlapping_other_split(onset_in_recording: Sequence[float], split: Sequence[str],
                            window: tuple[float, float]) -> np.ndarray:
    """Which events' brain windows overlap the brain window of an event of the other split.

    Windows are ``[onset + window[0], onset + window[1])``; two of them overlap when their
    onsets are less than the window's length apart (windows that only touch do not). Both
    events of such a pair are marked, as :func:`~neurodec.io.speech.make_segments` drops
    both sides of a block boundary.

    >>> overlapping_other_split([1.0, 3.0, 4.0, 9.0], ["train", "train", "test", "test"], (-0.35, 2.65)).tolist()
    [False, True, True, False]
    """
    onset = np.asarray(onset_in_recording, dtype=np.float64)
    split = np.asarray(split, dtype=object)
    length = window[1] - window[0]
    marked = np.zeros(len(onset), dtype=bool)
    for part in ("train", "test"):
        own, others = split == part, np.sort(onset[split != part])
        if not own.any() or not len(others):
            continue
        # The nearest event of the other split, before or after each event of this one.
        after = np.clip(np.searchsorted(others, onset[own]), 0, len(others) - 1)
        before = np.clip(after - 1, 0, len(others) - 1)
        nearest = np.minimum(np.abs(others[after] - onset[own]), np.abs(others[before] - onset[own]))
        marked[own] = nearest < length - 1e-6  # windows that only touch share no sample
    return marked


def segment_metadata(table: Table) -> list[dict[str, Any]]:
    """The parsed metadata of every row of a stimuli table."""
    return [json.loads(m or "{}") for m in table["metadata"].tolist()]
