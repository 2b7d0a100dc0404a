"""Every number of the simulated cohort, in one validated, JSON-able record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from neurodec.errors import ConfigError

SIZES = ("default", "tiny")


def preset_parameters(base: Any, size: str, tiny: dict[str, Any], changes: dict[str, Any], what: str) -> Any:
    """``base`` (a frozen dataclass of defaults) at a named size, with single fields changed,
    checked; unknown sizes or field names raise :class:`~neurodec.errors.ConfigError`."""
    if size not in SIZES:
        raise ConfigError(f"{what} size: expected one of {SIZES}, found {size!r}")
    if size == "tiny":
        base = replace(base, **tiny)
    known = {f.name for f in fields(base)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"{what} parameters: unknown {unknown}; known: {sorted(known)}")
    parameters = replace(base, **{k: v for k, v in changes.items() if v is not None})
    parameters.check()
    return parameters


def requirement(parameters: Any, what: str):
    """``require(condition, name, expected)`` raising a ConfigError that names the field and its value."""

    def require(condition: bool, name: str, expected: str) -> None:
        if not condition:
            raise ConfigError(f"{what} parameter {name}: expected {expected}, found {getattr(parameters, name)!r}")

    return require


@dataclass(frozen=True)
class SimulationParameters:
    """Parameters of the demo cohort's generator (see ``docs/demo-cohort.md``).

    ``SimulationParameters.preset("tiny", n_train=100)`` starts from a named size and
    changes single fields; unknown names raise :class:`~neurodec.errors.ConfigError`.
    """

    # Design: the same stimuli for every subject; train shown once, test repeated.
    n_subjects: int = 4
    n_train: int = 700
    n_test: int = 200
    test_repetitions: int = 2
    image_size: int = 64

    # M/EEG epochs and sensors.
    sfreq: float = 200.0
    tmin: float = -0.2
    epoch_duration_s: float = 1.0
    stimulus_duration_s: float = 0.2
    soa_min_s: float = 1.1
    soa_max_s: float = 1.4
    source_spacing_mm: float = 15.0
    n_meg_sensors: int = 128
    electrode_jitter_m: float = 0.003
    head_rotation_sd_deg: float = 2.0
    head_translation_sd_m: float = 0.003

    # Evoked responses: an early occipital component driven by low-level features and a
    # later occipito-temporal one driven by shape and category.
    early_latency_s: float = 0.10
    late_latency_s: float = 0.28
    source_latency_sd_s: float = 0.008
    subject_latency_sd_s: float = 0.006
    stimulus_specific_ratio: float = 1.0
    early_to_late_amplitude: float = 1.5
    subject_similarity: float = 0.5
    snr_eeg: float = 0.3
    snr_meg: float = 0.2
    response_window_s: tuple[float, float] = (0.0, 0.6)

    # Background and artefacts.
    background_exponent: float = 1.5
    background_rms_eeg_v: float = 10e-6
    background_rms_meg_t: float = 250e-15
    alpha_frequency_hz: float = 10.0
    alpha_frequency_sd_hz: float = 0.6
    alpha_to_background: float = 1.0
    n_alpha_sources: int = 4
    sensor_noise_eeg_v: float = 0.5e-6
    sensor_noise_meg_t: float = 20e-15
    line_frequency_hz: float = 50.0
    line_amplitude_eeg_v: float = 5e-6
    line_amplitude_meg_t: float = 60e-15
    blink_rate_hz: float = 0.3
    blink_amplitude_eeg_v: float = 150e-6
    blink_amplitude_meg_t: float = 1.5e-12

    # fMRI single-trial betas.
    fmri_resolution_mm: int = 4
    fmri_min_voxels: int = 2000
    fmri_max_voxels: int = 5000
    fmri_snr: float = 0.3
    fmri_trial_s: float = 4.0
    fmri_smoothness_mm: float = 6.0
    fmri_signal_change_percent: float = 1.0

    @classmethod
    def preset(cls, size: str = "default", **changes: Any) -> "SimulationParameters":
        """The parameters of a named size with some fields changed."""
        tiny = dict(n_subjects=2, n_train=40, n_test=10, source_spacing_mm=20.0, n_meg_sensors=96)
        return preset_parameters(cls(), size, tiny, changes, "simulation")

    def check(self) -> None:
        require = requirement(self, "simulation")

        require(self.n_subjects >= 1, "n_subjects", "at least 1")
        require(self.n_train >= 4, "n_train", "at least 4")
        require(self.n_test >= 2, "n_test", "at least 2")
        require(self.test_repetitions >= 1, "test_repetitions", "at least 1")
        require(self.sfreq > 2 * self.line_frequency_hz, "sfreq", "above twice the line frequency")
        require(self.tmin < 0 < self.tmin + self.epoch_duration_s, "tmin", "a negative time within the epoch")
        require(self.soa_min_s >= self.epoch_duration_s, "soa_min_s", "at least epoch_duration_s")
        require(self.soa_max_s >= self.soa_min_s, "soa_max_s", "at least soa_min_s")
        require(8 <= self.n_meg_sensors <= 304, "n_meg_sensors", "between 8 and 304")
        require(0.0 <= self.subject_similarity <= 1.0, "subject_similarity", "within [0, 1]")
        require(
            0 < self.fmri_min_voxels <= self.fmri_max_voxels, "fmri_min_voxels", "positive and <= fmri_max_voxels"
        )
        require(self.fmri_resolution_mm in (3, 4, 5, 6), "fmri_resolution_mm", "3, 4, 5 or 6")

    @property
    def n_trials(self) -> int:
        return self.n_train + self.n_test * self.test_repetitions

    @property
    def n_times(self) -> int:
        return int(round(self.epoch_duration_s * self.sfreq))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
