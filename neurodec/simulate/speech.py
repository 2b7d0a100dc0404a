"""The demo cohort's auditory part: synthesised stories and continuous MEG/EEG of listeners.

Stories of formant-synthesised words (:mod:`neurodec.simulate.speech_audio`) are heard by
each subject in one continuous session; the brain responds to their band envelopes, acoustic
onsets and word onsets through temporal response functions in both auditory cortices
(:mod:`neurodec.simulate.speech_responses`), seen through the same MNE forward model,
sensors and noise as the visual demo. The store follows ``neurodec.io.speech``: one
``audio`` stimulus per word onset (a 3 s segment from 0.5 s before the word), held-out test
blocks, the sounds kept inside the store, one event per heard word.

>>> from neurodec.simulate import simulate_speech
>>> study, report = simulate_speech("speech.zarr", size="tiny")   # doctest: +SKIP
>>> study.recording(subject="01", session="meg").data.shape        # doctest: +SKIP
(96, 10440)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from neurodec._logging import progress
from neurodec.errors import ConfigError, NeurodecError
from neurodec.simulate.cohort import SOURCE, sensor_description, stream_rng
from neurodec.simulate.parameters import SIZES, SimulationParameters, preset_parameters, requirement
from neurodec.store import RecordingData, StoreWriter, event_table, open_store

logger = logging.getLogger("neurodec")

CONVERTER = "neurodec.simulate.speech"
STORE_NAME = "neurodec demo cohort, auditory part (simulated)"
SPEECH_MODALITIES = ("meg", "eeg")
#: The demo's speech target: (extractor, config) for ``neurodec.targets.embed_stimuli``. A 20-band
#: log-mel spectrogram at 40 Hz (the encoder's rate after pooling 120 Hz by 3) of each 3 s segment.
DEMO_SPEECH_TARGET = ("mel", {"rate": 40.0, "n_mels": 20, "duration": 3.0})


@dataclass(frozen=True)
class SpeechParameters:
    """Parameters of the auditory demo (see ``docs/demo-cohort.md``).

    ``SpeechParameters.preset("tiny", n_stories=3)`` starts from a named size and changes
    single fields; unknown names raise :class:`~neurodec.errors.ConfigError`. Background,
    alpha, blinks, mains and sensor noise are the visual demo's
    (:meth:`electrophysiology`).
    """

    # Stories: every subject hears all of them, in an order of their own.
    n_subjects: int = 4
    n_stories: int = 5
    story_duration_s: float = 150.0
    vocabulary_size: int = 300
    sample_rate: int = 16000
    # Segments (neurodec.io.speech.make_segments): 5 blocks of 30 s per story, 20 % of them test.
    block_duration_s: float = 30.0
    test_fraction: float = 0.2
    # Recordings: brain rate (the paper's 120 Hz), silence before, between and after stories.
    sfreq: float = 120.0
    lead_in_s: float = 2.0
    story_gap_s: float = 2.0
    tail_s: float = 3.0
    source_spacing_mm: float = 15.0
    n_meg_sensors: int = 128
    # Responses: variance of the speech-driven signal / the background's (pink, alpha and sensor
    # noise), averaged over channels; a signal fraction of about 0.1 % per channel. Tuned so that
    # the demo's reduced encoder reaches about the paper's MEG top-10 (70 %) and EEG stays well
    # below MEG, as in the paper (docs/demo-cohort.md).
    snr_meg: float = 0.0015
    snr_eeg: float = 0.0006
    subject_similarity: float = 0.5
    subject_latency_sd_s: float = 0.008
    source_latency_sd_s: float = 0.004

    @classmethod
    def preset(cls, size: str = "default", **changes: Any) -> "SpeechParameters":
        tiny = dict(n_subjects=2, n_stories=2, story_duration_s=40.0, vocabulary_size=60, block_duration_s=10.0,
                    test_fraction=0.25, source_spacing_mm=20.0, n_meg_sensors=96)
        return preset_parameters(cls(), size, tiny, changes, "speech simulation")

    def check(self) -> None:
        require = requirement(self, "speech simulation")

        require(self.n_subjects >= 1, "n_subjects", "at least 1")
        require(self.n_stories >= 1, "n_stories", "at least 1")
        require(self.story_duration_s >= 5.0, "story_duration_s", "at least 5 s")
        require(self.vocabulary_size >= 5, "vocabulary_size", "at least 5")
        require(self.sample_rate >= 16000, "sample_rate", "at least 16000 Hz (the fricatives reach 7.5 kHz)")
        require(0 < self.block_duration_s <= self.story_duration_s, "block_duration_s", "within (0, story duration]")
        require(self.tail_s >= 2.7, "tail_s", "at least 2.7 s (the last word's window and brain shift)")
        require(self.snr_meg > 0 and self.snr_eeg > 0, "snr_meg", "positive signal-to-noise ratios")
        self.electrophysiology().check()

    def electrophysiology(self) -> SimulationParameters:
        """The visual demo's sensor and noise parameters at this rate, grid and sensor count."""
        return SimulationParameters.preset("default", n_subjects=self.n_subjects, sfreq=self.sfreq,
                                           source_spacing_mm=self.source_spacing_mm,
                                           n_meg_sensors=self.n_meg_sensors,
                                           subject_similarity=self.subject_similarity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpeechSimulationReport:
    """What the generator did: parameters, segments, signal fraction per recording, time."""

    seed: int
    parameters: dict[str, Any]
    modalities: list[str]
    subjects: list[str]
    segments: dict[str, Any] = field(default_factory=dict)
    recordings: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False

    def format(self) -> str:
        """Segments and the signal fraction per recording, as a plain-text table."""
        what = "reused" if self.reused else f"simulated in {self.seconds:.1f} s"
        lines = [f"speech: {len(self.subjects)} subjects ({', '.join(self.modalities)}), seed {self.seed}, {what}"]
        if self.segments:
            s = self.segments
            lines.append(f"{s['n_segments']} segments ({s['n_test']} test) of {s['n_sounds']} stories, "
                         f"{s['n_word_forms']} distinct words")
        if self.recordings:
            lines += ["", "recording               shape            signal fraction"]
            for key, entry in self.recordings.items():
                shape = "x".join(map(str, entry["shape"]))
                lines.append(f"{key:<22}  {shape:<15}  {entry['signal_fraction']:>15.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stories(p: SpeechParameters, seed: int):
    from neurodec.simulate.speech_audio import make_vocabulary, synthesise_story

    vocabulary = make_vocabulary(p.vocabulary_size, stream_rng(seed, 0, "speech-vocabulary"))
    return [synthesise_story(f"story{i + 1:02d}", vocabulary, p.story_duration_s, stream_rng(seed, 0, f"speech-story-{i}"),
                             sample_rate=p.sample_rate)
            for i in range(p.n_stories)]


def _segments(stories, p: SpeechParameters, seed: int):
    from neurodec.io.speech import SoundFile, make_segments, sound_content

    sounds = [SoundFile(s.id, float(s.sample_rate), len(s.samples)) for s in stories]
    words = {"sound": [s.id for s in stories for _ in s.words],
             "onset": [float(o) for s in stories for o in s.onsets],
             "word": [w for s in stories for w in s.words]}
    segments = make_segments(words, sounds, block_duration=p.block_duration_s, test_fraction=p.test_fraction,
                             seed=seed)
    placed, array = sound_content(list(segments.sounds.values()), {s.id: s.samples for s in stories})
    segments.sounds = {s.id: s for s in placed}
    return segments, array


def _story_features(stories, sfreq: float) -> list[np.ndarray]:
    """Each story's auditory features, scaled to unit RMS per feature over all stories
    (the same scale for every subject)."""
    from neurodec.simulate.speech_responses import auditory_features

    features = [auditory_features(s.samples, s.sample_rate, sfreq, s.onsets) for s in stories]
    rms = np.sqrt(np.mean(np.concatenate(features, axis=1) ** 2, axis=1, keepdims=True))
    return [f / np.where(rms > 0, rms, 1.0) for f in features]


@dataclass
class _Session:
    """One subject's listening session: story order and where each story starts."""

    order: np.ndarray
    offset_samples: np.ndarray
    n_samples: int


def _session(stories, p: SpeechParameters, rng: np.random.Generator) -> _Session:
    order = rng.permutation(len(stories))
    offsets, cursor = [], int(round(p.lead_in_s * p.sfreq))
    for index in order:
        offsets.append(cursor)
        cursor += int(np.ceil(stories[index].duration * p.sfreq)) + int(round(p.story_gap_s * p.sfreq))
    n_samples = cursor - int(round(p.story_gap_s * p.sfreq)) + int(round(p.tail_s * p.sfreq))
    return _Session(order=order, offset_samples=np.asarray(offsets, dtype=np.int64), n_samples=n_samples)


def _session_features(features: list[np.ndarray], session: _Session) -> np.ndarray:
    """The stories' features laid out on the session's time axis (zero between stories)."""
    out = np.zeros((features[0].shape[0], session.n_samples))
    for index, offset in zip(session.order, session.offset_samples):
        out[:, offset : offset + features[index].shape[1]] = features[index]
    return out


def _recording(modality, subject_index, stories, features, segments, sources, p, seed, converter):
    """Simulate one subject's continuous session in one modality."""
    from neurodec.io.speech import recording_word_events
    from neurodec.simulate.electrophysiology import compute_leadfield, continuous_noise
    from neurodec.simulate.sensors import make_eeg_info, make_meg_info, sensor_positions_head
    from neurodec.simulate.speech_responses import make_auditory_brain, sensor_response

    ep = p.electrophysiology()
    brain = make_auditory_brain(
        sources, p.sfreq, stream_rng(seed, subject_index, "speech-brain"), stream_rng(seed, 0, "speech-brain"),
        subject_similarity=p.subject_similarity, subject_latency_sd_s=p.subject_latency_sd_s,
        source_latency_sd_s=p.source_latency_sd_s, n_alpha_sources=ep.n_alpha_sources,
        alpha_frequency_hz=ep.alpha_frequency_hz, alpha_frequency_sd_hz=ep.alpha_frequency_sd_hz)
    # The session (story order) is the subject's, shared by its MEG and EEG.
    session = _session(stories, p, stream_rng(seed, subject_index, "speech-session"))
    sensor_rng = stream_rng(seed, subject_index, f"speech-sensors-{modality}")
    if modality == "eeg":
        info = make_eeg_info(p.sfreq, electrode_jitter_m=ep.electrode_jitter_m, rng=sensor_rng)
    else:
        info = make_meg_info(p.sfreq, n_sensors=p.n_meg_sensors, head_rotation_sd_deg=ep.head_rotation_sd_deg,
                             head_translation_sd_m=ep.head_translation_sd_m, rng=sensor_rng, sphere=sources.sphere)
    gain = compute_leadfield(info, sources, modality)
    positions = sensor_positions_head(info)
    signal = sensor_response(_session_features(features, session), brain, gain)
    noise = continuous_noise(modality, gain, sources, brain, positions, session.n_samples, ep,
                             stream_rng(seed, subject_index, f"speech-noise-{modality}"))
    snr = p.snr_eeg if modality == "eeg" else p.snr_meg
    moment = np.sqrt(snr * noise.reference_variance / float(np.mean(signal.var(axis=1))))
    signal *= moment
    signal_variance, noise_variance = signal.var(axis=1), noise.data.var(axis=1)
    fraction = float(np.mean(signal_variance / (signal_variance + noise_variance)))
    data = (signal + noise.data).astype(np.float32)
    del signal

    sound, onset_in_sound, onset_in_recording = [], [], []
    for index, offset in zip(session.order, session.offset_samples):
        story = stories[index]
        sound += [story.id] * len(story.words)
        onset_in_sound += story.onsets.tolist()
        onset_in_recording += (offset / p.sfreq + story.onsets).tolist()
    # As the speech recipes do: words whose brain window overlaps, in recording time, the window
    # of a word of the other split (the end of one story and the start of the next) are left out.
    events, overlapping = recording_word_events(segments, sound, onset_in_sound, onset_in_recording, p.sfreq,
                                                where=f"{CONVERTER} sub-{subject_index:02d} ses-{modality}")
    n_channels = len(info.ch_names)
    story_onsets = {stories[i].id: float(o / p.sfreq) for i, o in zip(session.order, session.offset_samples)}
    return RecordingData(
        subject=f"{subject_index:02d}",
        modality=modality,
        layout="continuous",
        data=data,
        events=event_table(events.trial_type, sample=events.sample, onset=events.onset, value=events.value),
        session=modality,
        run="01",
        task="listening",
        sfreq=p.sfreq,
        ch_names=list(info.ch_names),
        ch_types=[{"eeg": "eeg", "meg": "mag"}[modality]] * n_channels,
        units=[{"eeg": "V", "meg": "T"}[modality]] * n_channels,
        sensor_positions=positions,
        preprocessing=[],
        source=dict(SOURCE),
        converter=converter,
        info={
            "simulated": True,
            "signal_fraction": fraction,
            "snr": snr,
            "dipole_moment_nAm": float(moment * 1e9),
            "story_onsets_s": story_onsets,
            "words_overlapping_other_split": overlapping,
            "n_auditory_sources": int(len(brain.sources)),
            "latency_offset_s": brain.latency_offset_s,
            "alpha_frequency_hz": brain.alpha_frequency,
            "n_blinks": int(len(noise.blink_onsets)),
            "line_frequency_hz": ep.line_frequency_hz,
            "head_model": {"kind": "sphere", "centre_m": list(sources.sphere.centre),
                           "radius_m": sources.sphere.radius},
            **sensor_description(modality, info),
        },
    )


def _reusable(out, parameters: dict[str, Any], storage_options):
    """The store at ``out`` when it holds this generator's output for these parameters."""
    from neurodec.store._location import Location

    if not Location.parse(out, storage_options).exists():
        return None
    try:
        study = open_store(out, storage_options=storage_options)
    except NeurodecError as error:
        logger.info("the store at %s is not usable (%s); simulating it again", out, error)
        return None
    provenance = study.provenance
    if provenance.get("converter") == CONVERTER and provenance.get("parameters") == parameters:
        return study
    logger.info("the store at %s was made with other parameters; simulating it again", out)
    return None


def simulate_speech(
    out,
    *,
    size: str = "default",
    n_subjects: int | None = None,
    seed: int = 0,
    modalities: Iterable[str] = ("meg",),
    overwrite: bool = False,
    reuse: bool = False,
    storage_options: dict[str, Any] | None = None,
    **changes: Any,
):
    """Simulate the auditory demo and write it as a speech store at ``out``.

    Returns ``(study, report)``. ``size`` is ``"default"`` (4 subjects, 5 stories of 150 s,
    1,640 segments of which 309 in test blocks) or ``"tiny"`` (2 subjects, 2
    stories of 40 s); keyword arguments change single :class:`SpeechParameters` fields.
    Recordings are keyed ``sub-<01..>/ses-<meg|eeg>/run-01`` (continuous, ``sfreq`` 120 Hz:
    the paper's rate; the stored band reaches 60 Hz, above the auditory responses' 1-20 Hz
    and the 50 Hz mains, at a tenth of the size of 1 kHz data). With ``reuse``, a store
    already at ``out`` made by the same arguments is opened and returned as is (the report
    says ``reused``); else an existing store is replaced only with ``overwrite``. The same
    arguments give the same arrays.

    >>> study, report = simulate_speech("speech.zarr", size="tiny")   # doctest: +SKIP
    >>> report.segments["n_test"] > 0                                  # doctest: +SKIP
    True
    """
    from neurodec.simulate.electrophysiology import make_source_model
    from neurodec.simulate.sensors import head_sphere

    started = time.perf_counter()
    modalities = list(dict.fromkeys(modalities))
    if not modalities or set(modalities) - set(SPEECH_MODALITIES):
        raise ConfigError(f"simulate_speech: modalities expected a non-empty subset of {SPEECH_MODALITIES}, "
                          f"found {modalities}")
    p = SpeechParameters.preset(size, n_subjects=n_subjects, **changes)
    subjects = [f"{i:02d}" for i in range(1, p.n_subjects + 1)]
    parameters = json.loads(json.dumps({**p.to_dict(), "seed": int(seed), "modalities": modalities}))
    report = SpeechSimulationReport(seed=int(seed), parameters=p.to_dict(), modalities=modalities, subjects=subjects)
    if reuse:
        study = _reusable(out, parameters, storage_options)
        if study is not None:
            report.reused, report.seconds = True, time.perf_counter() - started
            report.segments = dict(study.provenance.get("segments", {}))
            return study, report

    stories = _stories(p, seed)
    segments, sounds = _segments(stories, p, seed)
    features = _story_features(stories, p.sfreq)
    sources = make_source_model(p.source_spacing_mm, head_sphere())
    report.segments = {**segments.record(), "n_sounds": len(stories),
                       "n_word_forms": len(set(segments.word.tolist())), "n_words": sum(len(s.words) for s in stories)}
    converter = {"name": CONVERTER, "parameters": parameters}
    provenance = {"converter": CONVERTER, "parameters": parameters, "segments": report.segments}
    with StoreWriter(out, name=STORE_NAME, overwrite=overwrite, provenance=provenance,
                     storage_options=storage_options) as writer:
        writer.set_stimuli(segments.stimulus_table(), content={"sounds": sounds})
        jobs = [(subject, modality) for subject in range(1, p.n_subjects + 1) for modality in modalities]
        for subject_index, modality in progress(jobs, "simulating listening sessions"):
            recording = _recording(modality, subject_index, stories, features, segments, sources, p, seed, converter)
            writer.add_recording(recording)
            report.recordings[recording.key] = {"modality": modality, "subject": recording.subject,
                                                "shape": list(recording.data.shape),
                                                "signal_fraction": recording.info["signal_fraction"]}
            logger.info("simulated %s: signal fraction %.3f", recording.key, recording.info["signal_fraction"])
    study = open_store(out, storage_options=storage_options)
    report.seconds = time.perf_counter() - started
    logger.info("simulated the auditory demo in %.1f s", report.seconds)
    return study, report


__all__ = ["DEMO_SPEECH_TARGET", "SpeechParameters", "SpeechSimulationReport", "simulate_speech"]
