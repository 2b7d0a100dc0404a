"""Continuous M/EEG responses to speech: auditory features, TRFs, auditory-cortex sources.

What the simulated brain hears (:func:`auditory_features`, one value per brain sample):

* six band envelopes: the sound's amplitude in six bands from 100 Hz to 7.8 kHz (short-time
  spectra, 32 ms Hann windows centred on each brain sample), compressed by a power of 0.3
  as the cochlea compresses loudness (the "auditory spectrogram" of TRF studies);
* acoustic onsets: the half-wave rectified rise of the summed band envelopes;
* word onsets: a unit impulse at each word's onset (segmentation into words).

Each feature drives every auditory source through a temporal response function (TRF, a
kernel over 0-500 ms after the sound) built from gamma-shaped bumps
(:func:`~neurodec.simulate.electrophysiology.response_waveform`): the P1 (50 ms), N1
(100 ms) and P2 (190 ms) of auditory evoked fields for the envelopes and onsets, and an N1
and a late negativity (350 ms) for word onsets. The sources are the grid sources of both
superior temporal planes (:func:`auditory_sources`); along each plane's anterior-posterior
axis they prefer lower or higher bands (tonotopy). Each subject has its own orientation,
gain and latency per source and its own latency offset, mixed from a cohort-wide part and
its own as the visual demo does, so a subject-specific layer has something to learn.

Sensor signals are the source currents through the leadfield of
:func:`~neurodec.simulate.electrophysiology.compute_leadfield` (MNE's forward model), plus
the visual demo's continuous background, alpha, blinks, mains and sensor noise
(:func:`~neurodec.simulate.electrophysiology.continuous_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurodec.errors import ConfigError
from neurodec.simulate.electrophysiology import ORIENTATION_SPREAD, SourceModel, mix_subject, response_waveform

#: Band edges (Hz) of the six band envelopes.
AUDITORY_BANDS_HZ = ((100.0, 300.0), (300.0, 700.0), (700.0, 1400.0), (1400.0, 2800.0), (2800.0, 5000.0),
                     (5000.0, 7800.0))
FEATURE_NAMES = tuple(f"band {low:.0f}-{high:.0f} Hz" for low, high in AUDITORY_BANDS_HZ) + (
    "acoustic onsets", "word onsets")
#: TRF components per feature kind: (peak latency s, sharpness of the gamma bump, amplitude).
TRF_COMPONENTS = {
    "band": ((0.05, 6.0, 0.4), (0.10, 8.0, -0.8), (0.19, 12.0, 0.6)),
    "onset": ((0.05, 6.0, 0.5), (0.10, 8.0, -1.2), (0.19, 12.0, 0.8)),
    "word": ((0.10, 8.0, -0.3), (0.35, 10.0, -0.6)),
}
TRF_DURATION_S = 0.5
SPECTRUM_WINDOW_S = 0.032
LOUDNESS_EXPONENT = 0.3


def feature_kinds() -> list[str]:
    """The TRF kind of each feature of :func:`auditory_features`, in order."""
    return ["band"] * len(AUDITORY_BANDS_HZ) + ["onset", "word"]


def auditory_features(
    samples: np.ndarray, sample_rate: float, sfreq: float, word_onsets_s=(), n_samples: int | None = None
) -> np.ndarray:
    """Features (8 x brain samples) of one sound, sample ``k`` at ``k / sfreq`` seconds.

    Unscaled: band amplitudes ``(mean power in the band) ** (0.3 / 2)``, their summed rise,
    and word-onset impulses. ``n_samples`` defaults to the sound's duration at ``sfreq``.

    >>> tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    >>> features = auditory_features(tone, 16000, 100.0, word_onsets_s=[0.5])
    >>> features.shape, int(features[2, 50] > features[0, 50]), features[7].nonzero()[0].tolist()
    ((8, 100), 1, [50])
    """
    samples = np.asarray(samples, dtype=np.float64)
    if n_samples is None:
        n_samples = int(np.floor(len(samples) / sample_rate * sfreq))
    n_fft = int(2 ** np.ceil(np.log2(SPECTRUM_WINDOW_S * sample_rate)))
    window = np.hanning(n_fft + 2)[1:-1]
    padded = np.pad(samples, (n_fft // 2, n_fft))
    centres = np.round(np.arange(n_samples) * sample_rate / sfreq).astype(np.int64)
    frequencies = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    bands = np.stack([(frequencies >= low) & (frequencies < high) for low, high in AUDITORY_BANDS_HZ])
    bands = bands / bands.sum(axis=1, keepdims=True)
    power = np.empty((len(AUDITORY_BANDS_HZ), n_samples))
    for start in range(0, n_samples, 4096):
        stop = min(n_samples, start + 4096)
        frames = padded[centres[start:stop, None] + np.arange(n_fft)[None, :]] * window
        power[:, start:stop] = bands @ (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T
    envelopes = np.maximum(power, 0.0) ** (LOUDNESS_EXPONENT / 2)
    rise = np.diff(envelopes.sum(axis=0), prepend=envelopes[:, :1].sum())
    words = np.zeros(n_samples)
    for onset in word_onsets_s:
        index = int(round(onset * sfreq))
        if 0 <= index < n_samples:
            words[index] = 1.0
    return np.concatenate([envelopes, np.maximum(rise, 0.0)[None], words[None]])


def trf_kernel(kind: str, sfreq: float, latency_shift_s: float = 0.0, amplitudes=None) -> np.ndarray:
    """The TRF of one feature kind at ``sfreq`` (samples from 0 to 500 ms), its components'
    latencies shifted by ``latency_shift_s`` and their amplitudes optionally replaced.

    >>> kernel = trf_kernel("onset", 100.0)
    >>> len(kernel), int(np.argmin(kernel))        # the N1 at 100 ms
    (50, 10)
    """
    times = np.arange(int(round(TRF_DURATION_S * sfreq))) / sfreq
    components = TRF_COMPONENTS[kind]
    amplitudes = [c[2] for c in components] if amplitudes is None else amplitudes
    kernel = np.zeros(len(times))
    for (latency, sharpness, _), amplitude in zip(components, amplitudes):
        kernel += amplitude * response_waveform(times, np.array([latency + latency_shift_s]), sharpness)[0]
    return kernel


def auditory_sources(sources: SourceModel) -> np.ndarray:
    """Indices of the grid sources in both superior temporal planes.

    Relative to the sphere's centre: at least 40 mm lateral, 35 mm behind to 20 mm before
    the centre, 35 mm below to level with it (Heschl's gyrus and the planum temporale sit
    above and just behind the ears).
    """
    x, y, z = (sources.positions - np.asarray(sources.sphere.centre)).T
    index = np.flatnonzero((np.abs(x) >= 0.04) & (y >= -0.035) & (y <= 0.02) & (z >= -0.035) & (z <= 0.0))
    if not (np.any(x[index] < 0) and np.any(x[index] > 0)):
        raise ConfigError("simulation parameter source_spacing_mm: the grid leaves no source in one of the "
                          "superior temporal planes; use a finer grid (20 mm or less)")
    return index


@dataclass
class AuditoryBrain:
    """One subject's auditory sources: which grid sources, their orientations and TRFs.

    ``kernels`` is (sources x features x kernel samples). The alpha fields are what
    :func:`~neurodec.simulate.electrophysiology.continuous_noise` reads of a brain.
    """

    sources: np.ndarray
    orientations: np.ndarray
    kernels: np.ndarray
    latency_offset_s: float
    alpha_sources: np.ndarray
    alpha_orientations: np.ndarray
    alpha_frequency: float


def make_auditory_brain(
    sources: SourceModel,
    sfreq: float,
    subject_rng: np.random.Generator,
    cohort_rng: np.random.Generator,
    *,
    subject_similarity: float = 0.5,
    subject_latency_sd_s: float = 0.008,
    source_latency_sd_s: float = 0.004,
    n_alpha_sources: int = 4,
    alpha_frequency_hz: float = 10.0,
    alpha_frequency_sd_hz: float = 0.6,
) -> AuditoryBrain:
    """Draw a subject's auditory sources: a mix of a cohort-wide pattern and the subject's own.

    Orientations: upward (the N1m dipole is perpendicular to the superior temporal plane,
    tangential to the head, so MEG sees it) plus a random tilt. Gains: log-normal per source.
    Tonotopy: a source prefers the band at its place along the anterior-posterior axis of
    its region (Gaussian tuning, 1.2 bands wide). Latencies: the subject's offset plus a
    small shift per source.
    """
    index = auditory_sources(sources)
    n, n_bands = len(index), len(AUDITORY_BANDS_HZ)
    relative = sources.positions[index] - np.asarray(sources.sphere.centre)

    def draw(rng: np.random.Generator):
        return rng.standard_normal((n, 3)), rng.standard_normal(n), rng.standard_normal((n, n_bands + 2))

    shared, own = draw(cohort_rng), draw(subject_rng)
    tilt, log_gain, tuning_noise = (mix_subject(a, b, subject_similarity) for a, b in zip(shared, own))
    orientations = np.array([0.0, 0.0, 1.0]) + ORIENTATION_SPREAD * tilt
    orientations /= np.linalg.norm(orientations, axis=1, keepdims=True)
    gain = np.exp(0.3 * log_gain)
    span = np.ptp(relative[:, 1]) or 1.0
    preferred = (relative[:, 1] - relative[:, 1].min()) / span * (n_bands - 1)
    band_weight = np.exp(-0.5 * ((np.arange(n_bands)[None, :] - preferred[:, None]) / 1.2) ** 2)
    weights = np.concatenate([band_weight, np.ones((n, 1)), 0.5 * np.ones((n, 1))], axis=1)
    weights *= 1.0 + 0.3 * tuning_noise
    offset = float(subject_rng.normal(0.0, subject_latency_sd_s))
    shifts = offset + subject_rng.normal(0.0, source_latency_sd_s, n)
    kinds = feature_kinds()
    kernels = np.stack([
        np.stack([gain[s] * weights[s, f] * trf_kernel(kind, sfreq, shifts[s]) for f, kind in enumerate(kinds)])
        for s in range(n)
    ])
    n_alpha = min(n_alpha_sources, len(sources.alpha))
    alpha_sources = np.sort(subject_rng.choice(sources.alpha, size=n_alpha, replace=False))
    outward = sources.positions[alpha_sources] - np.asarray(sources.sphere.centre)
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    alpha_orientations = outward + ORIENTATION_SPREAD * subject_rng.standard_normal((n_alpha, 3))
    alpha_orientations /= np.linalg.norm(alpha_orientations, axis=1, keepdims=True)
    return AuditoryBrain(
        sources=index, orientations=orientations, kernels=kernels, latency_offset_s=offset,
        alpha_sources=alpha_sources, alpha_orientations=alpha_orientations,
        alpha_frequency=float(alpha_frequency_hz + subject_rng.normal(0.0, alpha_frequency_sd_hz)),
    )


def source_currents(features: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Each source's time course (sources x samples): the sum over features of the feature
    convolved (causally) with the source's TRF for it, ``y_s(t) = sum_f sum_u k_sf(u) x_f(t - u)``.

    >>> (source_currents(np.array([[0.0, 1.0, 0.0, 0.0]]), np.array([[[1.0, 0.5]]])).round(9) + 0.0).tolist()
    [[0.0, 1.0, 0.5, 0.0]]
    """
    from scipy.signal import fftconvolve

    n_samples = features.shape[1]
    out = np.empty((len(kernels), n_samples))
    for s, kernel in enumerate(kernels):
        out[s] = fftconvolve(features, kernel, axes=1)[:, :n_samples].sum(axis=0)
    return out


def oriented_gain(gain: np.ndarray, brain: AuditoryBrain) -> np.ndarray:
    """The leadfield (channels x auditory sources) of each source along its orientation."""
    return np.einsum("cpk,pk->cp", gain[:, brain.sources], brain.orientations)


def sensor_response(features: np.ndarray, brain: AuditoryBrain, gain: np.ndarray) -> np.ndarray:
    """Noise-free sensor signals (channels x samples) for unit dipole moments: the TRF
    responses of the auditory sources projected through the leadfield."""
    return oriented_gain(gain, brain) @ source_currents(features, brain.kernels)


__all__ = [
    "AUDITORY_BANDS_HZ",
    "AuditoryBrain",
    "FEATURE_NAMES",
    "TRF_COMPONENTS",
    "auditory_features",
    "auditory_sources",
    "feature_kinds",
    "make_auditory_brain",
    "oriented_gain",
    "sensor_response",
    "source_currents",
    "trf_kernel",
]
