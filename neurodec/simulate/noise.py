"""Time courses of the simulated background activity and artefacts.

Each function returns float64 arrays (signals x samples) drawn from the given generator.
"""

from __future__ import annotations

import numpy as np


def _fft_length(n_samples: int) -> int:
    """A length >= n_samples that FFTs fast (a long prime length would be very slow)."""
    from scipy.fft import next_fast_len

    return next_fast_len(n_samples, real=True)


def _filtered_noise(n_signals: int, n_samples: int, sfreq: float, gain, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise shaped by an amplitude response ``gain(frequencies)``."""
    from scipy import fft

    length = _fft_length(n_samples)
    spectrum = fft.rfft(rng.standard_normal((n_signals, length)), axis=1, workers=-1)
    spectrum *= gain(fft.rfftfreq(length, d=1.0 / sfreq))
    return fft.irfft(spectrum, n=length, axis=1, workers=-1)[:, :n_samples]


def pink_noise(
    n_signals: int, n_samples: int, sfreq: float, exponent: float, rng: np.random.Generator, f_min: float = 0.5
) -> np.ndarray:
    """Gaussian noise with power spectral density ~ 1/f**exponent, unit variance per row.

    Below ``f_min`` the spectrum is flat, so the variance stays finite; the DC term is 0.
    """

    def gain(frequencies: np.ndarray) -> np.ndarray:
        response = np.maximum(frequencies, f_min) ** (-exponent / 2.0)
        response[0] = 0.0
        return response

    coloured = _filtered_noise(n_signals, n_samples, sfreq, gain, rng)
    return coloured / coloured.std(axis=1, keepdims=True)


def alpha_oscillation(
    n_signals: int,
    n_samples: int,
    sfreq: float,
    frequency: float,
    rng: np.random.Generator,
    bandwidth: float = 1.0,
    envelope_hz: float = 0.5,
) -> np.ndarray:
    """Narrow-band oscillations at ``frequency`` that wax and wane, unit variance per row.

    A Gaussian band (SD ``bandwidth`` Hz) of white noise, multiplied by a slow positive
    envelope (log-normal, varying at about ``envelope_hz``) as alpha bursts are.
    """
    carrier = _filtered_noise(
        n_signals, n_samples, sfreq, lambda f: np.exp(-0.5 * ((f - frequency) / bandwidth) ** 2), rng
    )

    def slow(frequencies: np.ndarray) -> np.ndarray:
        response = np.exp(-0.5 * (frequencies / envelope_hz) ** 2)
        response[0] = 0.0
        return response

    log_envelope = _filtered_noise(n_signals, n_samples, sfreq, slow, rng)
    log_envelope /= log_envelope.std(axis=1, keepdims=True) + 1e-12
    oscillation = carrier * np.exp(0.5 * log_envelope)
    return oscillation / oscillation.std(axis=1, keepdims=True)


def blink_train(
    n_samples: int, sfreq: float, rate_hz: float, rng: np.random.Generator, duration_s: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """A train of blinks: ``(time course with peaks near 1, onset samples)``.

    Onsets follow a Poisson process of ``rate_hz``; each blink is a raised-cosine bump of
    about ``duration_s`` (varying by 20%) with a log-normal amplitude (median 1).
    """
    n_blinks = rng.poisson(rate_hz * n_samples / sfreq)
    onsets = np.sort(rng.integers(0, n_samples, size=n_blinks))
    course = np.zeros(n_samples)
    for onset in onsets:
        length = max(4, int(round(duration_s * rng.uniform(0.8, 1.2) * sfreq)))
        bump = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(length) / (length - 1)))
        stop = min(n_samples, onset + length)
        course[onset:stop] += rng.lognormal(0.0, 0.25) * bump[: stop - onset]
    return course, onsets


def line_noise(
    amplitudes: np.ndarray, n_samples: int, sfreq: float, frequency: float, rng: np.random.Generator
) -> np.ndarray:
    """Mains interference at ``frequency``: one sinusoid per channel with its own amplitude
    and a phase near a common one, its amplitude drifting by about 10%."""
    times = np.arange(n_samples) / sfreq
    phases = rng.uniform(0, 2 * np.pi) + rng.normal(0.0, 0.3, size=len(amplitudes))
    drift = 1.0 + 0.1 * np.sin(2 * np.pi * times / rng.uniform(20.0, 60.0) + rng.uniform(0, 2 * np.pi))
    # sin(wt + phase) = sin(wt) cos(phase) + cos(wt) sin(phase): two outer products
    # instead of a sine per channel and sample.
    carrier = 2 * np.pi * frequency * times
    sine, cosine = np.sin(carrier) * drift, np.cos(carrier) * drift
    return np.outer(amplitudes * np.cos(phases), sine) + np.outer(amplitudes * np.sin(phases), cosine)


def matrix_square_root(covariance: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
