"""Speech-like sounds synthesised in code: formant syllables, a vocabulary of words, stories.

A source-filter synthesiser in the manner of Klatt's (1980) cascade synthesiser, kept small:

* vowels and voiced consonants: a sawtooth at the pitch ``f0`` (its harmonics fall at 6 dB
  per octave, as a glottal pulse train seen through the lips' radiation does) through four
  second-order resonators in cascade, one per formant; vowels use Peterson & Barney's (1952)
  average formants of adult male speakers;
* plosives: a short band-limited noise burst (low for labials, mid for velars, high for
  alveolars), aspiration for the voiceless ones, and a closure silence inside words;
* fricatives: band-limited noise (``s`` high, ``f`` broad and weak, ``h`` breathy);
* every phone has a raised-cosine attack and release, so words are continuous sounds.

Syllables are CV, CVC or V; a word is 1 to 3 syllables and is spelled by its phones
(``"bado"``). A story is a sequence of sentences of words drawn from the vocabulary by a
Zipf law, spoken by one speaker (pitch, rate and loudness of their own) with pitch
declination over each sentence, a stressed first syllable, jitter of pitch, rate and
loudness from word to word, short pauses between words and longer ones between sentences.
Each word starts on a whole millisecond (16 samples at 16 kHz), so its onset in seconds is
exact at the millisecond precision of segment ids; the sound is silent (a faint noise floor)
just before every word, so each onset is also where the sound's energy rises.

>>> import numpy as np
>>> vocabulary = make_vocabulary(20, np.random.default_rng(0))
>>> story = synthesise_story("s1", vocabulary, 5.0, np.random.default_rng(1))
>>> story.samples.dtype, story.sample_rate, len(story.words) > 3
(dtype('float32'), 16000, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from neurodec.errors import ConfigError

SAMPLE_RATE = 16000
#: Fourth formant and the formant bandwidths (Hz) shared by every voiced phone.
FOURTH_FORMANT_HZ = 3300.0
BANDWIDTHS_HZ = (60.0, 90.0, 150.0, 200.0)
#: RMS of the noise floor under everything (a quiet room), relative to full scale.
NOISE_FLOOR = 1e-4


@dataclass(frozen=True)
class Phone:
    """One speech sound: how it is made, how long it lasts (s, at normal rate), how loud."""

    label: str
    kind: str  # "vowel", "plosive", "fricative", "nasal" or "liquid"
    duration_s: float
    level: float
    formants: tuple[float, ...] = ()
    noise_band: tuple[float, float] | None = None
    voiced: bool = True


#: Vowels: Peterson & Barney (1952) F1-F3 of adult men, plus the shared F4.
VOWELS = {
    label: Phone(label, "vowel", 0.13, 1.0, (*formants, FOURTH_FORMANT_HZ))
    for label, formants in {
        "a": (730.0, 1090.0, 2440.0),
        "e": (530.0, 1840.0, 2480.0),
        "i": (270.0, 2290.0, 3010.0),
        "o": (570.0, 840.0, 2410.0),
        "u": (300.0, 870.0, 2240.0),
    }.items()
}

CONSONANTS = {
    phone.label: phone
    for phone in (
        Phone("p", "plosive", 0.045, 0.35, noise_band=(400.0, 1500.0), voiced=False),
        Phone("t", "plosive", 0.045, 0.35, noise_band=(3000.0, 6500.0), voiced=False),
        Phone("k", "plosive", 0.045, 0.35, noise_band=(1500.0, 3200.0), voiced=False),
        Phone("b", "plosive", 0.015, 0.3, noise_band=(400.0, 1500.0)),
        Phone("d", "plosive", 0.015, 0.3, noise_band=(3000.0, 6500.0)),
        Phone("g", "plosive", 0.015, 0.3, noise_band=(1500.0, 3200.0)),
        Phone("s", "fricative", 0.10, 0.22, noise_band=(4000.0, 7500.0), voiced=False),
        Phone("f", "fricative", 0.09, 0.1, noise_band=(1200.0, 7500.0), voiced=False),
        Phone("h", "fricative", 0.06, 0.08, noise_band=(500.0, 4000.0), voiced=False),
        Phone("m", "nasal", 0.07, 0.35, (250.0, 1000.0, 2200.0, FOURTH_FORMANT_HZ)),
        Phone("n", "nasal", 0.07, 0.35, (250.0, 1700.0, 2600.0, FOURTH_FORMANT_HZ)),
        Phone("l", "liquid", 0.06, 0.5, (360.0, 1300.0, 2700.0, FOURTH_FORMANT_HZ)),
        Phone("r", "liquid", 0.06, 0.5, (420.0, 1300.0, 1600.0, FOURTH_FORMANT_HZ)),
        Phone("w", "liquid", 0.05, 0.45, (300.0, 610.0, 2150.0, FOURTH_FORMANT_HZ)),
        Phone("y", "liquid", 0.05, 0.45, (260.0, 2070.0, 3020.0, FOURTH_FORMANT_HZ)),
    )
}
ONSETS = tuple(CONSONANTS)
CODAS = ("n", "m", "s", "t", "k", "l", "r")
# Silence (s) before a plosive's burst inside a word; at a word's start there is none, so the
# word's onset is its burst.
CLOSURE_S = 0.05


@dataclass(frozen=True)
class Word:
    """A word form: its spelling and its syllables (each a tuple of phone labels)."""

    spelling: str
    syllables: tuple[tuple[str, ...], ...]


@dataclass
class Speaker:
    """Who tells a story: mean pitch (Hz), speaking rate (1 = the phones' durations) and
    loudness (RMS of the story's speech, full scale 1)."""

    f0_hz: float
    rate: float
    loudness: float


@dataclass
class Story:
    """A synthesised story: mono float32 samples, and per word its spelling, onset and offset
    (seconds from the sound's start), pitch (Hz at its start), rate and level."""

    id: str
    samples: np.ndarray
    sample_rate: int
    speaker: Speaker
    words: list[str]
    onsets: np.ndarray
    offsets: np.ndarray
    f0_hz: np.ndarray
    rates: np.ndarray
    levels: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def _draw_syllable(rng: np.random.Generator, first: bool) -> tuple[str, ...]:
    vowel = str(rng.choice(list(VOWELS)))
    pattern = rng.choice(["CV", "CVC", "V"], p=[0.6, 0.25, 0.15] if first else [0.7, 0.3, 0.0])
    onset = () if pattern == "V" else (str(rng.choice(ONSETS)),)
    coda = (str(rng.choice(CODAS)),) if pattern == "CVC" else ()
    return (*onset, vowel, *coda)


def make_vocabulary(n_words: int, rng: np.random.Generator) -> list[Word]:
    """``n_words`` distinct word forms of 1 to 3 syllables (35 %, 45 %, 20 %), shortest first.

    Shorter words come first so that, drawn by a Zipf law over this order, frequent words are
    short, as in real languages.

    >>> [w.spelling for w in make_vocabulary(4, np.random.default_rng(0))]
    ['pefa', 'dipak', 'mutyik', 'latotu']
    """
    if n_words < 1:
        raise ConfigError(f"vocabulary size: expected at least 1 word, found {n_words}")
    words: dict[str, Word] = {}
    attempts = 0
    while len(words) < n_words:
        attempts += 1
        if attempts > 100 * n_words + 1000:
            raise ConfigError(f"vocabulary size: could not draw {n_words} distinct word forms")
        n_syllables = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        syllables = tuple(_draw_syllable(rng, first=i == 0) for i in range(n_syllables))
        spelling = "".join("".join(s) for s in syllables)
        words.setdefault(spelling, Word(spelling, syllables))
    return sorted(words.values(), key=lambda w: (len(w.syllables), len(w.spelling), w.spelling))


def zipf_probabilities(n_words: int, exponent: float = 1.0, offset: float = 2.7) -> np.ndarray:
    """Zipf-Mandelbrot word probabilities, ``p(rank) ~ 1 / (rank + offset) ** exponent``."""
    weights = 1.0 / (np.arange(1, n_words + 1) + offset) ** exponent
    return weights / weights.sum()


def resonator_sos(formant_hz: float, bandwidth_hz: float, sample_rate: float) -> np.ndarray:
    """One second-order section of Klatt's digital resonator (unit gain at 0 Hz).

    ``y[n] = A x[n] + B y[n-1] + C y[n-2]`` with ``C = -exp(-2 pi bw T)``,
    ``B = 2 exp(-pi bw T) cos(2 pi f T)`` and ``A = 1 - B - C``; its poles make a spectral
    peak at ``formant_hz`` of -3 dB width ``bandwidth_hz``.

    >>> resonator_sos(500.0, 60.0, 16000.0).round(3).tolist()
    [[0.038, 0.0, 0.0, 1.0, -1.939, 0.977]]
    """
    period = 1.0 / sample_rate
    c = -np.exp(-2.0 * np.pi * bandwidth_hz * period)
    b = 2.0 * np.exp(-np.pi * bandwidth_hz * period) * np.cos(2.0 * np.pi * formant_hz * period)
    a = 1.0 - b - c
    return np.array([[a, 0.0, 0.0, 1.0, -b, -c]])


@lru_cache(maxsize=64)
def _formant_filter(formants: tuple[float, ...], sample_rate: float) -> np.ndarray:
    return np.concatenate([resonator_sos(f, bw, sample_rate) for f, bw in zip(formants, BANDWIDTHS_HZ)])


@lru_cache(maxsize=64)
def _band_filter(band: tuple[float, float], sample_rate: float) -> np.ndarray:
    from scipy.signal import butter

    high = min(band[1], 0.45 * sample_rate)
    return butter(2, (band[0], high), btype="bandpass", fs=sample_rate, output="sos")


def _ramp(n: int, attack: int, release: int) -> np.ndarray:
    """Raised-cosine attack and release over an otherwise flat envelope."""
    envelope = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        envelope[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 1) / attack)
    if release:
        envelope[n - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 1) / release)
    return envelope


def voiced_source(n: int, f0_start: float, f0_end: float, sample_rate: float, phase: float = 0.0) -> np.ndarray:
    """A sawtooth whose pitch glides linearly from ``f0_start`` to ``f0_end`` (Hz), zero mean."""
    f0 = np.linspace(f0_start, f0_end, n)
    cycles = phase + np.cumsum(f0) / sample_rate
    return 2.0 * (cycles - np.floor(cycles)) - 1.0


def render_phone(
    phone: Phone,
    f0_start: float,
    f0_end: float,
    rate: float,
    rng: np.random.Generator,
    sample_rate: float = SAMPLE_RATE,
    closure: bool = False,
) -> np.ndarray:
    """The samples of one phone (peak level about ``phone.level``), at speaking ``rate``.

    >>> samples = render_phone(VOWELS["a"], 120.0, 110.0, 1.0, np.random.default_rng(0))
    >>> len(samples) == round(0.13 * 16000)
    True
    """
    from scipy.signal import sosfilt

    n = max(16, int(round(phone.duration_s / rate * sample_rate)))
    ms = sample_rate / 1000.0
    if phone.kind in ("vowel", "nasal", "liquid"):
        source = voiced_source(n, f0_start, f0_end, sample_rate, phase=rng.uniform())
        # A little breath noise, as in natural voicing.
        source = source + 0.03 * rng.standard_normal(n)
        sound = sosfilt(_formant_filter(phone.formants, sample_rate), source)
        envelope = _ramp(n, int(15 * ms), int(25 * ms))
    else:
        noise = sosfilt(_band_filter(phone.noise_band, sample_rate), rng.standard_normal(n))
        if phone.kind == "plosive":
            # A sharp burst decaying into aspiration (voiceless) or straight into the vowel.
            decay = np.exp(-np.arange(n) / (8 * ms if phone.voiced else 18 * ms))
            envelope = _ramp(n, int(1 * ms), int(5 * ms)) * decay
        else:
            envelope = _ramp(n, int(10 * ms), int(15 * ms))
        sound = noise
    sound = sound * envelope
    peak = np.max(np.abs(sound))
    sound = sound * (phone.level / peak if peak > 0 else 0.0)
    if closure and phone.kind == "plosive":
        sound = np.concatenate([np.zeros(int(round(CLOSURE_S / rate * sample_rate))), sound])
    return sound


def render_word(
    word: Word, f0_hz: float, rate: float, rng: np.random.Generator, sample_rate: float = SAMPLE_RATE
) -> np.ndarray:
    """A word's samples: the first syllable stressed (10 % higher pitch, 40 % louder), pitch
    falling by 8 % over each syllable, phones following each other without a gap."""
    parts = []
    first_phone = True
    for index, syllable in enumerate(word.syllables):
        stress = 1.1 if index == 0 else 1.0
        start, end = f0_hz * stress, f0_hz * stress * 0.92
        gain = 1.4 if index == 0 else 1.0
        for label in syllable:
            phone = VOWELS.get(label) or CONSONANTS[label]
            parts.append(gain * render_phone(phone, start, end, rate, rng, sample_rate, closure=not first_phone))
            first_phone = False
    return np.concatenate(parts)


def synthesise_story(
    story_id: str,
    vocabulary: list[Word],
    duration_s: float,
    rng: np.random.Generator,
    *,
    speaker: Speaker | None = None,
    sample_rate: int = SAMPLE_RATE,
    lead_in_s: float = 0.5,
    word_probabilities: np.ndarray | None = None,
) -> Story:
    """A story of about ``duration_s`` seconds told by ``speaker`` (drawn when not given).

    Sentences of 3 to 9 words; pitch falls by 15 % over a sentence; each word's pitch, rate
    and level vary by about 6 %, 10 % and 2 dB; pauses of 40-200 ms between words and
    350-700 ms between sentences; ``lead_in_s`` of silence first, and the last word ends at
    least 0.3 s before the end.
    """
    if duration_s <= lead_in_s + 1.0:
        raise ConfigError(f"story duration: expected more than {lead_in_s + 1.0} s, found {duration_s}")
    speaker = speaker or draw_speaker(rng)
    probabilities = zipf_probabilities(len(vocabulary)) if word_probabilities is None else word_probabilities
    n_total = int(round(duration_s * sample_rate))
    samples = np.zeros(n_total)
    ms = sample_rate // 1000
    words, onsets, offsets, pitches, rates, levels = [], [], [], [], [], []
    cursor_ms = int(round(lead_in_s * 1000))
    done = False
    while not done:
        n_words = int(rng.integers(3, 10))
        for position in range(n_words):
            word = vocabulary[int(rng.choice(len(vocabulary), p=probabilities))]
            f0 = speaker.f0_hz * (1.0 - 0.15 * position / max(1, n_words - 1)) * np.exp(rng.normal(0.0, 0.06))
            rate = speaker.rate * np.exp(rng.normal(0.0, 0.1))
            level = 10 ** (rng.normal(0.0, 2.0) / 20)
            sound = level * render_word(word, f0, rate, rng, sample_rate)
            start = cursor_ms * ms
            if start + len(sound) > n_total - int(0.3 * sample_rate):
                done = True
                break
            samples[start : start + len(sound)] += sound
            words.append(word.spelling)
            onsets.append(cursor_ms / 1000.0)
            offsets.append((start + len(sound)) / sample_rate)
            pitches.append(f0)
            rates.append(rate)
            levels.append(level)
            pause = rng.uniform(0.35, 0.7) if position == n_words - 1 else rng.uniform(0.04, 0.2)
            cursor_ms = int(np.ceil((start + len(sound)) / ms + pause * 1000))
    if not words:
        raise ConfigError(f"story {story_id}: {duration_s} s holds no word; lengthen the story")
    # The speaker's loudness is the RMS over the spoken parts (pauses excluded).
    spoken = np.zeros(n_total, dtype=bool)
    for onset, offset in zip(onsets, offsets):
        spoken[int(round(onset * sample_rate)) : int(round(offset * sample_rate))] = True
    samples *= speaker.loudness / np.sqrt(np.mean(samples[spoken] ** 2))
    samples += NOISE_FLOOR * rng.standard_normal(n_total)
    return Story(
        id=story_id,
        samples=samples.astype(np.float32),
        sample_rate=sample_rate,
        speaker=speaker,
        words=words,
        onsets=np.asarray(onsets),
        offsets=np.asarray(offsets),
        f0_hz=np.asarray(pitches),
        rates=np.asarray(rates),
        levels=np.asarray(levels),
    )


def draw_speaker(rng: np.random.Generator) -> Speaker:
    """A speaker: pitch 95-230 Hz (log-uniform), rate 0.85-1.2, loudness -26 to -18 dB FS RMS."""
    return Speaker(
        f0_hz=float(np.exp(rng.uniform(np.log(95.0), np.log(230.0)))),
        rate=float(rng.uniform(0.85, 1.2)),
        loudness=float(10 ** (rng.uniform(-26.0, -18.0) / 20)),
    )


__all__ = [
    "CONSONANTS",
    "SAMPLE_RATE",
    "VOWELS",
    "Phone",
    "Speaker",
    "Story",
    "Word",
    "draw_speaker",
    "make_vocabulary",
    "render_phone",
    "render_word",
    "resonator_sos",
    "synthesise_story",
    "voiced_source",
    "zipf_probabilities",
]
