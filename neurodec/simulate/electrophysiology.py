"""Simulated EEG and MEG: sources in a spherical head seen through MNE's forward model.

Sources sit on a coarse grid (``mne.setup_volume_source_space`` inside the sphere's
inner shell). Each subject has a fixed orientation per source and its own tuning:

* early sources (occipital pole) respond at ~100 ms with amplitudes set by low-level
  features at the location of the visual field they map (contralateral hemifield,
  upper field below the calcarine), as early visual cortex does;
* late sources (occipito-temporal) respond at ~280 ms with amplitudes set by shape and
  category features.

``mne.make_forward_solution`` on ``mne.make_sphere_model`` turns source currents into
sensor signals for each subject's own cap or head pose. Added to the epochs: 1/f
background (independent pink noise at every source, projected through the leadfield),
posterior alpha bursts, frontal blinks (an equivalent dipole behind the eyes), mains at
50 Hz and sensor white noise. EEG is average-referenced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurodec.errors import ConfigError
from neurodec.simulate import noise as noise_models
from neurodec.simulate.ceiling import signal_fraction
from neurodec.simulate.features import GRID, N_ORIENTATIONS
from neurodec.simulate.parameters import SimulationParameters
from neurodec.simulate.sensors import HeadSphere, sensor_positions_head

# Sources keep this distance (m) from the inner shell, so no source sits on a boundary.
SOURCE_MARGIN_M = 0.007
# SD of the random part of a source's orientation, added to its region's unit direction.
ORIENTATION_SPREAD = 0.7
# An equivalent blink dipole per eye, relative to the sphere's centre (m): as far forward
# and low as the inner shell allows, just behind the eyes, pointing outward through the
# forehead, so its potential is largest and positive at Fp1, Fpz, Fp2 and AF.
EYE_OFFSETS_M = np.array([[-0.03, 0.07, -0.035], [0.03, 0.07, -0.035]])


@dataclass
class SourceModel:
    """Source positions (head frame, metres) and the regions of the simulated brain."""

    sphere: HeadSphere
    positions: np.ndarray
    early: np.ndarray
    late: np.ndarray
    alpha: np.ndarray
    eye_positions: np.ndarray

    @property
    def n_sources(self) -> int:
        return len(self.positions)

    @property
    def all_positions(self) -> np.ndarray:
        return np.concatenate([self.positions, self.eye_positions])


def make_source_model(spacing_mm: float, sphere: HeadSphere) -> SourceModel:
    """A volume grid of ``spacing_mm`` inside the head sphere's inner shell, with regions.

    >>> from neurodec.simulate.sensors import head_sphere
    >>> model = make_source_model(20.0, head_sphere())
    >>> model.n_sources, len(model.early) > 0, len(model.late) > 0
    (203, True, True)
    """
    import mne

    centre = np.asarray(sphere.centre)
    space = mne.setup_volume_source_space(
        pos=float(spacing_mm),
        sphere=(*centre, sphere.brain_radius - SOURCE_MARGIN_M),
        sphere_units="m",
        verbose=False,
    )[0]
    positions = np.asarray(space["rr"][space["vertno"]], dtype=np.float64)
    x, y, z = (positions - centre).T
    regions = {
        "early": np.flatnonzero((y < -0.035) & (np.abs(x) < 0.045) & (np.abs(z) < 0.035)),
        "late": np.flatnonzero((y >= -0.035) & (y <= 0.02) & (np.abs(x) >= 0.03) & (z <= 0.0)),
        "alpha": np.flatnonzero((y < -0.04) & (z > -0.01) & (np.abs(x) < 0.05)),
    }
    for name, index in regions.items():
        if len(index) == 0:
            raise ConfigError(
                f"simulation parameter source_spacing_mm: {spacing_mm} mm leaves no source in the "
                f"{name} region; use a finer grid (20 mm or less)"
            )
    return SourceModel(sphere=sphere, positions=positions, eye_positions=centre + EYE_OFFSETS_M, **regions)


def compute_leadfield(info, sources: SourceModel, modality: str) -> np.ndarray:
    """Gain (channels x sources x 3, V or T per A·m) of every grid source and both eyes.

    Computed by ``mne.make_forward_solution`` with free orientations in the head frame;
    EEG gains are average-referenced.
    """
    import mne

    positions = sources.all_positions
    space = mne.setup_volume_source_space(
        pos={"rr": positions, "nn": np.tile([0.0, 0.0, 1.0], (len(positions), 1))}, verbose=False
    )
    forward = mne.make_forward_solution(
        info,
        trans=None,
        src=space,
        bem=sources.sphere.conductor(),
        meg=modality == "meg",
        eeg=modality == "eeg",
        verbose=False,
    )
    if not np.allclose(forward["source_rr"], positions):
        raise RuntimeError("mne.make_forward_solution reordered or dropped simulated sources")
    gain = forward["sol"]["data"].reshape(len(info.ch_names), len(positions), 3)
    if modality == "eeg":
        gain = gain - gain.mean(axis=0, keepdims=True)
    return gain


@dataclass
class SubjectBrain:
    """One subject's sources: orientations, tuning, latencies and alpha generators.

    The same brain serves the subject's EEG and MEG sessions.
    """

    orientations: np.ndarray
    early_weights: np.ndarray
    late_weights: np.ndarray
    early_latency: np.ndarray
    late_latency: np.ndarray
    alpha_sources: np.ndarray
    alpha_orientations: np.ndarray
    alpha_frequency: float


def _visual_field_preference(relative: np.ndarray) -> np.ndarray:
    """Where in the visual field (x right, y up, both in [-1, 1]) an early source looks.

    Left hemisphere (x < 0) sees the right hemifield; sources below the occipital
    midline see the upper field, as the calcarine's banks do.
    """
    field_x = -np.clip(relative[:, 0] / 0.03, -1.0, 1.0)
    field_y = -np.clip(relative[:, 2] / 0.025, -1.0, 1.0)
    return np.stack([field_x, field_y], axis=1)


def _grid_centres(cells: int) -> np.ndarray:
    """Visual-field centres of a cells x cells grid, row-major from the top-left."""
    steps = (np.arange(cells) - (cells - 1) / 2) / ((cells - 1) / 2)
    return np.array([[column, -row] for row in steps for column in steps])


def _early_tuning(preference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Weights of early sources on the low-level features (contrast, orientation, luminance)."""
    n = len(preference)

    def retinotopy(centres: np.ndarray, width: float) -> np.ndarray:
        distance = np.linalg.norm(preference[:, None, :] - centres[None], axis=2)
        return np.exp(-0.5 * (distance / width) ** 2)

    local = retinotopy(_grid_centres(GRID), 0.5)
    quadrants = retinotopy(_grid_centres(2), 0.8)
    preferred_angle = rng.uniform(0, np.pi, size=n)
    angles = np.pi * np.arange(N_ORIENTATIONS) / N_ORIENTATIONS
    orientation_tuning = np.cos(2 * (angles[None, :] - preferred_angle[:, None]))
    contrast = local * (1.0 + 0.3 * rng.standard_normal(local.shape))
    orientation = 0.7 * (quadrants[:, :, None] * orientation_tuning[:, None, :]).reshape(n, -1)
    luminance = 0.5 * local * (1.0 + 0.3 * rng.standard_normal(local.shape))
    return np.concatenate([contrast, orientation, luminance], axis=1)


def _early_weights(preference: np.ndarray, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """Retinotopic tuning to the low-level features, then random weights (of the same RMS
    per source) on the conjunction columns that follow them."""
    tuning = _early_tuning(preference, rng)
    extra = n_features - tuning.shape[1]
    if extra <= 0:
        return tuning[:, :n_features]
    scale = np.sqrt(np.mean(tuning**2, axis=1, keepdims=True))
    return np.concatenate([tuning, scale * rng.standard_normal((len(preference), extra))], axis=1)


def _late_tuning(n_sources: int, n_features: int, n_category: int, rng: np.random.Generator) -> np.ndarray:
    weights = rng.standard_normal((n_sources, n_features))
    # Category codes drive the late sources more strongly than shape descriptors.
    weights[:, n_features - n_category :] *= 1.5
    return weights


def mix_subject(shared: np.ndarray, own: np.ndarray, similarity: float) -> np.ndarray:
    return np.sqrt(similarity) * shared + np.sqrt(1.0 - similarity) * own


def make_subject_brain(
    sources: SourceModel,
    n_low_features: int,
    n_high_features: int,
    n_category: int,
    parameters: SimulationParameters,
    subject_rng: np.random.Generator,
    shared_rng: np.random.Generator,
) -> SubjectBrain:
    """Draw a subject's brain: a mix of a cohort-wide pattern and the subject's own."""
    similarity = parameters.subject_similarity
    n = sources.n_sources
    centre = np.asarray(sources.sphere.centre)
    preference = _visual_field_preference(sources.positions[sources.early] - centre)

    def draw(rng: np.random.Generator):
        orientations = rng.standard_normal((n, 3))
        early = _early_weights(preference, n_low_features, rng)
        late = _late_tuning(len(sources.late), n_high_features, n_category, rng)
        return orientations, early, late

    shared, own = draw(shared_rng), draw(subject_rng)
    # Neighbouring cortical sources point roughly the same way, so a region's currents
    # add up instead of cancelling: early sources point outward (a positive P1 over the
    # occipital scalp), late ones inward (a negativity over occipito-temporal sites, as
    # the N1/N170). A random part per source tilts them, which MEG sees.
    outward = sources.positions - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    region_direction = np.zeros((n, 3))
    region_direction[sources.early] = outward[sources.early]
    region_direction[sources.late] = -outward[sources.late]
    orientations = region_direction + ORIENTATION_SPREAD * mix_subject(shared[0], own[0], similarity)
    orientations /= np.linalg.norm(orientations, axis=1, keepdims=True)
    early_offset = subject_rng.normal(0.0, parameters.subject_latency_sd_s)
    late_offset = subject_rng.normal(0.0, parameters.subject_latency_sd_s)
    n_alpha = min(parameters.n_alpha_sources, len(sources.alpha))
    alpha_sources = np.sort(subject_rng.choice(sources.alpha, size=n_alpha, replace=False))
    # Alpha generators point mostly outward (largest EEG over the back of the head) with
    # a tangential part that MEG sees.
    alpha_orientations = outward[alpha_sources] + ORIENTATION_SPREAD * subject_rng.standard_normal((n_alpha, 3))
    alpha_orientations /= np.linalg.norm(alpha_orientations, axis=1, keepdims=True)
    return SubjectBrain(
        orientations=orientations,
        early_weights=mix_subject(shared[1], own[1], similarity),
        late_weights=mix_subject(shared[2], own[2], similarity),
        early_latency=parameters.early_latency_s
        + early_offset
        + subject_rng.normal(0.0, parameters.source_latency_sd_s, len(sources.early)),
        late_latency=parameters.late_latency_s
        + late_offset
        + subject_rng.normal(0.0, 3 * parameters.source_latency_sd_s, len(sources.late)),
        alpha_sources=alpha_sources,
        alpha_orientations=alpha_orientations,
        alpha_frequency=float(
            parameters.alpha_frequency_hz + subject_rng.normal(0.0, parameters.alpha_frequency_sd_hz)
        ),
    )


def response_waveform(times: np.ndarray, peak_latency: np.ndarray, sharpness: float) -> np.ndarray:
    """Gamma-shaped bumps (sources x times), zero before 0, peaking at 1 at each latency."""
    ratio = np.clip(times[None, :], 0.0, None) / peak_latency[:, None]
    with np.errstate(divide="ignore"):
        return np.where(ratio > 0, np.exp(sharpness * (np.log(np.where(ratio > 0, ratio, 1.0)) + 1.0 - ratio)), 0.0)


def source_drives(brain: SubjectBrain, low: np.ndarray, high: np.ndarray, ratio: float):
    """Amplitudes (stimuli x sources) of early and late sources: 1 + ratio x tuning.

    The stimulus-driven part has unit SD across the stimulus set, so ``ratio`` is the
    size of the stimulus-specific response relative to the response every image evokes.
    """

    def drive(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        specific = features @ weights.T
        specific = (specific - specific.mean(axis=0)) / (specific.std(axis=0) + 1e-12)
        return 1.0 + ratio * specific

    return drive(low, brain.early_weights), drive(high, brain.late_weights)


def evoked_signal(
    gain: np.ndarray,
    sources: SourceModel,
    brain: SubjectBrain,
    drive_early: np.ndarray,
    drive_late: np.ndarray,
    times: np.ndarray,
    early_to_late_amplitude: float = 1.0,
) -> np.ndarray:
    """Noise-free sensor responses (stimuli x channels x times) to unit dipole moments
    (early sources ``early_to_late_amplitude`` times stronger than late ones)."""
    waves, columns, drives = [], [], []
    for index, latency, sharpness, drive, amplitude in (
        (sources.early, brain.early_latency, 16.0, drive_early, early_to_late_amplitude),
        (sources.late, brain.late_latency, 14.0, drive_late, 1.0),
    ):
        columns.append(amplitude * np.einsum("cpk,pk->cp", gain[:, index], brain.orientations[index]))
        waves.append(response_waveform(times, latency, sharpness))
        drives.append(drive)
    oriented_gain = np.concatenate(columns, axis=1)
    wave = np.concatenate(waves, axis=0)
    drive = np.concatenate(drives, axis=1)
    out = np.empty((len(drive), gain.shape[0], len(times)), dtype=np.float64)
    for start in range(0, len(drive), 64):
        block = drive[start : start + 64, :, None] * wave[None]
        out[start : start + 64] = np.matmul(oriented_gain[None], block)
    return out


def posterior_channels(positions: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The quarter of channels lying furthest back (head frame)."""
    y = positions[:, 1] - centre[1]
    return np.flatnonzero(y <= np.quantile(y, 0.25))


@dataclass
class ContinuousNoise:
    data: np.ndarray  # channels x samples
    reference_variance: float  # mean channel variance of background + alpha + sensor noise
    blink_onsets: np.ndarray


def continuous_noise(
    modality: str,
    gain: np.ndarray,
    sources: SourceModel,
    brain: SubjectBrain,
    channel_positions: np.ndarray,
    n_samples: int,
    parameters: SimulationParameters,
    rng: np.random.Generator,
) -> ContinuousNoise:
    """Background, alpha, blinks, mains and sensor noise of one session (channels x samples)."""
    p = parameters
    n_channels = gain.shape[0]
    eeg = modality == "eeg"
    centre = np.asarray(sources.sphere.centre)

    # Independent pink noise at every grid dipole (3 orientations), projected to the
    # sensors, has covariance G G^T at every frequency. Mixing independent pink channels
    # by the square root of G G^T gives the same Gaussian process at a fraction of the cost.
    grid_gain = gain[:, : sources.n_sources].reshape(n_channels, -1)
    covariance = grid_gain @ grid_gain.T
    background_scale = (p.background_rms_eeg_v if eeg else p.background_rms_meg_t) / np.sqrt(
        np.median(np.diag(covariance))
    )
    mixing = noise_models.matrix_square_root(covariance) * background_scale
    data = mixing @ noise_models.pink_noise(n_channels, n_samples, p.sfreq, p.background_exponent, rng)

    alpha_gain = np.einsum("cpk,pk->cp", gain[:, brain.alpha_sources], brain.alpha_orientations)
    alpha = alpha_gain @ noise_models.alpha_oscillation(
        len(brain.alpha_sources), n_samples, p.sfreq, brain.alpha_frequency, rng
    )
    posterior = posterior_channels(channel_positions, centre)
    background_rms = background_scale * np.sqrt(np.mean(np.diag(covariance)[posterior]))
    alpha *= p.alpha_to_background * background_rms / np.sqrt(np.mean(alpha[posterior] ** 2))
    data += alpha

    white = rng.standard_normal((n_channels, n_samples)) * (p.sensor_noise_eeg_v if eeg else p.sensor_noise_meg_t)
    if eeg:
        white -= white.mean(axis=0, keepdims=True)
    data += white
    reference_variance = float(np.mean(data.var(axis=1)))

    eye_orientations = EYE_OFFSETS_M / np.linalg.norm(EYE_OFFSETS_M, axis=1, keepdims=True)
    eye_gain = np.einsum("cek,ek->c", gain[:, sources.n_sources :], eye_orientations)
    frontal = int(np.argmax(channel_positions[:, 1]))
    eye_gain *= np.sign(eye_gain[frontal]) if eye_gain[frontal] != 0 else 1.0
    eye_gain *= (p.blink_amplitude_eeg_v if eeg else p.blink_amplitude_meg_t) / np.max(np.abs(eye_gain))
    blinks, blink_onsets = noise_models.blink_train(n_samples, p.sfreq, p.blink_rate_hz, rng)
    data += eye_gain[:, None] * blinks[None]

    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    outward = channel_positions - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    # A smooth field over the head times a factor per sensor (EEG: electrode impedance),
    # so mains survive the average reference.
    amplitudes = (p.line_amplitude_eeg_v if eeg else p.line_amplitude_meg_t) * (0.6 + 0.4 * outward @ direction)
    amplitudes *= rng.lognormal(0.0, 0.5, size=n_channels)
    line = noise_models.line_noise(amplitudes, n_samples, p.sfreq, p.line_frequency_hz, rng)
    if eeg:
        line -= line.mean(axis=0, keepdims=True)
    data += line
    return ContinuousNoise(data=data, reference_variance=reference_variance, blink_onsets=blink_onsets)


@dataclass
class SessionSimulation:
    """One simulated M/EEG session, epoched: data = signal + noise (trials x channels x times)."""

    data: np.ndarray
    onsets_s: np.ndarray
    signal_fraction: float
    dipole_moment_nAm: float
    n_blinks: int
    positions: np.ndarray


def trial_onsets(n_trials: int, parameters: SimulationParameters, rng: np.random.Generator) -> np.ndarray:
    """Stimulus onsets in seconds: a 2 s lead-in, then random SOAs."""
    soa = rng.uniform(parameters.soa_min_s, parameters.soa_max_s, size=n_trials)
    return 2.0 + np.concatenate([[0.0], np.cumsum(soa[:-1])])


def simulate_session(
    modality: str,
    info,
    gain: np.ndarray,
    sources: SourceModel,
    brain: SubjectBrain,
    drive_early: np.ndarray,
    drive_late: np.ndarray,
    trial_stimulus: np.ndarray,
    parameters: SimulationParameters,
    rng: np.random.Generator,
) -> SessionSimulation:
    """Simulate one session of ``len(trial_stimulus)`` trials and cut it into epochs."""
    p = parameters
    positions = sensor_positions_head(info)
    times = p.tmin + np.arange(p.n_times) / p.sfreq
    onsets = trial_onsets(len(trial_stimulus), p, rng)
    n_samples = int(np.ceil((onsets[-1] + 2.0) * p.sfreq))
    noise = continuous_noise(modality, gain, sources, brain, positions, n_samples, p, rng)
    first = np.round(onsets * p.sfreq).astype(np.int64) + int(round(p.tmin * p.sfreq))
    noise_epochs = noise.data[:, first[:, None] + np.arange(p.n_times)[None, :]].transpose(1, 0, 2)

    unit_response = evoked_signal(
        gain, sources, brain, drive_early, drive_late, times, p.early_to_late_amplitude
    )
    window = (times >= p.response_window_s[0]) & (times <= p.response_window_s[1])
    # Scale the dipole moment so that the stimulus-driven variance across trials, averaged
    # over channels and the response window, is snr x the background's variance.
    signal_epochs = unit_response[trial_stimulus]
    del unit_response
    specific_variance = float(np.mean(signal_epochs[:, :, window].var(axis=0)))
    snr = p.snr_eeg if modality == "eeg" else p.snr_meg
    moment = np.sqrt(snr * noise.reference_variance / specific_variance)
    signal_epochs *= moment
    fraction = signal_fraction(signal_epochs[:, :, window], noise_epochs[:, :, window])
    signal_epochs += noise_epochs
    data = signal_epochs.astype(np.float32)
    return SessionSimulation(
        data=data,
        onsets_s=onsets,
        signal_fraction=fraction,
        dipole_moment_nAm=float(moment * 1e9),
        n_blinks=len(noise.blink_onsets),
        positions=positions,
    )
