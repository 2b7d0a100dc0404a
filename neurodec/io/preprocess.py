"""Preprocessing steps applied during ingestion, each recorded with its parameters.

Filtering, resampling and baselines are MNE's own methods called with the options' values
(so a store holds exactly what MNE returns for the same parameters); robust scaling and
clamping are computed here on the final array. Each applied step appends one dict to the
recording's ``preprocessing`` list, enough to redo it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neurodec.errors import ConfigError

# MNE channel types that carry signal (scaled by robust scaling); stim, misc, ref_meg and
# the like keep their values.
DATA_CHANNEL_TYPES = frozenset(
    {"eeg", "mag", "grad", "seeg", "ecog", "dbs", "csd", "hbo", "hbr", "fnirs_cw_amplitude", "fnirs_od", "eog", "ecg", "emg"}
)


def crop(inst, tmin: float, tmax: float | None, steps: list[dict[str, Any]]) -> int:
    """``inst.crop(tmin, tmax)``; returns how many samples were cut from the start."""
    first_before = getattr(inst, "first_samp", None)
    times_before = inst.times[0]
    inst.crop(tmin=tmin, tmax=tmax, verbose="error")
    steps.append({"step": "crop", "function": f"{type(inst).__name__}.crop", "tmin": tmin, "tmax": tmax})
    if first_before is not None:
        return int(inst.first_samp - first_before)
    return int(round((inst.times[0] - times_before) * inst.info["sfreq"]))


def notch(raw, freqs: list[float], steps: list[dict[str, Any]]) -> None:
    if not hasattr(raw, "notch_filter"):
        raise ConfigError(
            f"preprocessing.notch: notch filtering needs a continuous recording, found {type(raw).__name__}"
        )
    raw.notch_filter(freqs=freqs, verbose="error")
    steps.append(
        {
            "step": "notch_filter",
            "function": f"{type(raw).__name__}.notch_filter",
            "freqs": [float(f) for f in freqs],
            "method": "fir",
            "phase": "zero",
            "fir_design": "firwin",
            "filter_length": "auto",
        }
    )


def bandpass(inst, l_freq: float | None, h_freq: float | None, method: str, steps: list[dict[str, Any]]) -> None:
    nyquist = inst.info["sfreq"] / 2
    if h_freq is not None and h_freq >= nyquist:
        raise ConfigError(
            f"preprocessing.bandpass.h_freq: {h_freq} Hz must be below the Nyquist frequency ({nyquist} Hz)"
        )
    inst.filter(l_freq=l_freq, h_freq=h_freq, method=method, verbose="error")
    step = {
        "step": "bandpass_filter",
        "function": f"{type(inst).__name__}.filter",
        "l_freq": l_freq,
        "h_freq": h_freq,
        "method": method,
        "picks": "data channels",
    }
    if method == "fir":
        step.update({"phase": "zero", "fir_window": "hamming", "fir_design": "firwin", "filter_length": "auto"})
    steps.append(step)


def resample(inst, sfreq: float, steps: list[dict[str, Any]], events: np.ndarray | None = None,
             method: str = "fft"):
    """``inst.resample(sfreq, method=method)``; for a raw with ``events`` returns MNE's resampled events."""
    from_sfreq = float(inst.info["sfreq"])
    if events is not None and len(events):
        _, events = inst.resample(sfreq, events=events, method=method, verbose="error")
    else:
        inst.resample(sfreq, method=method, verbose="error")
    steps.append(
        {
            "step": "resample",
            "function": f"{type(inst).__name__}.resample",
            "sfreq": float(sfreq),
            "from_sfreq": from_sfreq,
            "npad": "auto",
            "window": "auto",
            "method": method,
        }
    )
    return events


def baseline(inst, interval: tuple[float | None, float | None], steps: list[dict[str, Any]]) -> None:
    inst.apply_baseline(tuple(interval), verbose="error")
    steps.append(
        {"step": "baseline", "function": f"{type(inst).__name__}.apply_baseline", "baseline": list(interval)}
    )


def robust_scale(data: np.ndarray, feature_axis: int, features: np.ndarray, names: list[str],
                 steps: list[dict[str, Any]]) -> np.ndarray:
    """Centre each feature (channel or voxel) on its median and divide by its IQR.

    Fitted on the whole recording (all trials and times), as ``sklearn.preprocessing.
    RobustScaler(quantile_range=(25, 75))``: an IQR of zero leaves the feature unscaled.
    Transforms fitted on training trials only belong to ``neurodec.data``, not here.
    ``features`` picks the features scaled (the others keep their values).
    """
    moved = np.moveaxis(np.asarray(data, dtype=np.float64), feature_axis, -1)
    samples = moved.reshape(-1, moved.shape[-1])[:, features]
    median = np.median(samples, axis=0)
    q25, q75 = np.percentile(samples, [25, 75], axis=0)
    iqr = q75 - q25
    # sklearn treats a scale below 10 machine epsilons as zero and leaves the feature unscaled.
    scale = np.where(iqr < 10 * np.finfo(np.float64).eps, 1.0, iqr)
    out = moved.copy()
    out[..., features] = (moved[..., features] - median) / scale
    steps.append(
        {
            "step": "robust_scale",
            "center": "median",
            "scale": "interquartile range (25-75)",
            "fitted_on": "whole recording",
            "features": [names[i] for i in np.flatnonzero(features)] if len(names) else int(features.sum()),
            "median": median.tolist(),
            "iqr": scale.tolist(),
        }
    )
    return np.moveaxis(out, -1, feature_axis)


def clamp(data: np.ndarray, limit: float, feature_axis: int, features: np.ndarray,
          steps: list[dict[str, Any]]) -> np.ndarray:
    """Clip the scaled features to ``[-limit, limit]``."""
    moved = np.moveaxis(np.asarray(data), feature_axis, -1).copy()
    clipped = np.clip(moved[..., features], -limit, limit)
    n_clipped = int(np.count_nonzero(clipped != moved[..., features]))
    moved[..., features] = clipped
    steps.append({"step": "clamp", "limit": float(limit), "n_values_clipped": n_clipped})
    return np.moveaxis(moved, -1, feature_axis)


def scale_and_clamp(data: np.ndarray, feature_axis: int, features: np.ndarray, names: list[str],
                    options, steps: list[dict[str, Any]]) -> np.ndarray:
    """Apply the options' robust scaling then clamp to an array (returns a new array)."""
    if options.preprocessing.robust_scale:
        data = robust_scale(data, feature_axis, features, names, steps)
    if options.preprocessing.clamp is not None:
        data = clamp(data, options.preprocessing.clamp, feature_axis, features, steps)
    return data
