"""Noise ceilings of simulated data: how much of the response variance is signal.

Two estimates that should agree:

* ``signal_fraction`` uses what only a simulation knows, the signal and noise parts
  separately: for each channel x time (or voxel), the variance across trials of the
  noise-free response divided by the variance of signal plus noise, averaged.
* ``split_half_r`` uses the data alone: for each channel x time (or voxel), the Pearson
  correlation across test stimuli between their first and second presentation, averaged.
  Its expected value is that same fraction, so it checks the first.
"""

from __future__ import annotations

import numpy as np


def signal_fraction(signal: np.ndarray, noise: np.ndarray) -> float:
    """Mean over features of var(signal) / (var(signal) + var(noise)); trials on axis 0."""
    signal_variance = signal.var(axis=0, dtype=np.float64)
    noise_variance = noise.var(axis=0, dtype=np.float64)
    total = signal_variance + noise_variance
    return float(np.mean(signal_variance / np.where(total > 0, total, 1.0)))


def split_half_correlation(data: np.ndarray, stimulus_ids, repetition) -> float | None:
    """Mean over features of the correlation between presentations 0 and 1 of repeated stimuli.

    ``data`` has trials on axis 0. ``None`` when fewer than three stimuli were repeated.
    """
    stimulus_ids = np.asarray(stimulus_ids)
    repetition = np.asarray(repetition)
    first = {s: i for i, (s, r) in enumerate(zip(stimulus_ids, repetition)) if r == 0}
    pairs = [(first[s], i) for i, (s, r) in enumerate(zip(stimulus_ids, repetition)) if r == 1 and s in first]
    if len(pairs) < 3:
        return None
    index_a, index_b = (np.array(p) for p in zip(*pairs))
    a = np.asarray(data[index_a], dtype=np.float64).reshape(len(pairs), -1)
    b = np.asarray(data[index_b], dtype=np.float64).reshape(len(pairs), -1)
    a -= a.mean(axis=0)
    b -= b.mean(axis=0)
    denominator = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    r = (a * b).sum(axis=0) / np.where(denominator > 0, denominator, 1.0)
    return float(np.mean(r))
