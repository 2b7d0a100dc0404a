"""What every speech recipe shares: word onsets -> segments -> events -> one store.

A recipe reads its study's sounds and word tables, builds :class:`HeardWords` for each
recording (which word of which sound was heard when), reads the MNE raw, and hands all of it
to :func:`write_speech_store`, which makes the segments (``neurodec.io.speech``), the
events, preprocesses each raw as the options say, and writes the store atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from neurodec._logging import progress
from neurodec.io.speech import SoundFile, SpeechSegments, make_segments, word_events

logger = logging.getLogger("neurodec")


@dataclass
class HeardWords:
    """The words one recording heard: per word its sound, onset in the sound (s), onset in
    the recording (s on ``raw.times``, 0 at the first sample) and the word itself."""

    sound: list[str] = field(default_factory=list)
    onset_in_sound: list[float] = field(default_factory=list)
    onset_in_recording: list[float] = field(default_factory=list)
    word: list[str] = field(default_factory=list)

    def add(self, sound: str, onset_in_sound: float, onset_in_recording: float, word: str) -> None:
        self.sound.append(str(sound))
        self.onset_in_sound.append(float(onset_in_sound))
        self.onset_in_recording.append(float(onset_in_recording))
        self.word.append(str(word))

    def __len__(self) -> int:
        return len(self.sound)


@dataclass
class SpeechRecording:
    """One recording of a speech study before conversion: labels, words heard, and a
    function that reads its MNE raw (called once, when the recording is converted)."""

    subject: str
    session: str
    run: str
    task: str
    words: HeardWords
    read_raw: Callable[[], Any]
    source: dict[str, Any] | None = None
    info_extra: dict[str, Any] | None = None


def speech_segments(recordings: Sequence[SpeechRecording], sounds: Mapping[str, SoundFile] | Sequence[SoundFile],
                    **segment_options: Any) -> SpeechSegments:
    """The segments of all the words the recordings heard (one per distinct sound and onset)."""
    words: dict[str, list[Any]] = {"sound": [], "onset": [], "word": []}
    for recording in recordings:
        words["sound"] += recording.words.sound
        words["onset"] += recording.words.onset_in_sound
        words["word"] += recording.words.word
    return make_segments(words, sounds, **segment_options)


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
):
    """Segments, events and preprocessed recordings of a speech study, written as one store.

    ``options`` are :class:`~neurodec.io.options.IngestOptions` fields (``preprocessing``:
    band-pass, resample, ...; ``picks``); ``segment_options`` go to
    :func:`~neurodec.io.speech.make_segments`. Every recording is read and checked before
    the store is written; the store appears only when complete.
    """
    from neurodec.io.events import StimulusMapping
    from neurodec.io.meeg import recording_from_raw
    from neurodec.io.options import load_options
    from neurodec.store import StoreWriter

    ingest_options = load_options({**dict(options or {}), "kind": "audio"})
    segments = speech_segments(recordings, sounds, **dict(segment_options or {}))
    mapping = StimulusMapping.from_rule("{trial_type}", kind="audio")
    converted = []
    for recording in progress(recordings, f"{converter}: reading recordings", total=len(recordings)):
        raw = recording.read_raw()
        where = f"{converter} sub-{recording.subject} ses-{recording.session} run-{recording.run}"
        events = word_events(segments, recording.words.sound, recording.words.onset_in_sound,
                             recording.words.onset_in_recording, float(raw.info["sfreq"]), where=where)
        converted.append(recording_from_raw(
            raw, options=ingest_options, events=events, mapping=mapping, subject=recording.subject,
            session=recording.session, run=recording.run, task=recording.task, source=recording.source,
            info_extra=recording.info_extra, copy=False,
        ))
        del raw
    provenance = {"converter": converter, "parameters": {**dict(parameters or {}),
                                                         "ingest_options": ingest_options.model_dump(mode="json"),
                                                         "segments": segments.record()}}
    writer = StoreWriter(str(out), name=converter, overwrite=overwrite, provenance=provenance)
    try:
        writer.set_stimuli(segments.stimulus_table())
        for recording in converted:
            writer.add_recording(recording)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


__all__ = ["HeardWords", "SpeechRecording", "speech_segments", "write_speech_store"]
