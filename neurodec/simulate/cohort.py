"""The demo cohort: a study store of simulated EEG, MEG and fMRI to real images."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from neurodec._logging import progress
from neurodec.errors import ConfigError
from neurodec.simulate import ceiling
from neurodec.simulate.features import generator_features, image_features, standardise
from neurodec.simulate.images import DemoImages, assign_split, load_demo_images
from neurodec.simulate.parameters import SimulationParameters
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table

logger = logging.getLogger("neurodec")

CONVERTER = "neurodec.simulate"
MODALITIES = ("eeg", "meg", "fmri")
STORE_NAME = "neurodec demo cohort (simulated)"
SOURCE = {"file": "", "sha256": "", "format": "simulated"}


@dataclass
class SimulationReport:
    """What the generator did: parameters, noise ceilings per recording, timings.

    ``recordings[key]["noise_ceiling"]`` holds ``signal_fraction`` (from the known signal
    and noise) and ``split_half_r`` (from the data: correlation between the first two
    presentations of test stimuli); ``noise_ceiling[modality]`` is their mean over subjects.
    """

    seed: int
    parameters: dict[str, Any]
    modalities: list[str]
    subjects: list[str]
    recordings: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def noise_ceiling(self) -> dict[str, dict[str, float | None]]:
        """Per modality, the mean over subjects of ``signal_fraction`` and ``split_half_r``."""
        out: dict[str, dict[str, float | None]] = {}
        for modality in self.modalities:
            entries = [r["noise_ceiling"] for r in self.recordings.values() if r["modality"] == modality]
            if not entries:
                continue
            halves = [e["split_half_r"] for e in entries if e["split_half_r"] is not None]
            out[modality] = {
                "signal_fraction": float(np.mean([e["signal_fraction"] for e in entries])),
                "split_half_r": float(np.mean(halves)) if halves else None,
            }
        return out

    def format(self) -> str:
        """The noise ceilings per recording and per modality, as a plain-text table."""
        lines = [f"simulated {len(self.subjects)} subjects ({', '.join(self.modalities)}), seed {self.seed}, "
                 f"in {self.seconds:.1f} s", "", "recording               shape            signal fraction  split-half r"]
        for key, entry in self.recordings.items():
            ceiling = entry["noise_ceiling"]
            half = "-" if ceiling["split_half_r"] is None else f"{ceiling['split_half_r']:.3f}"
            shape = "x".join(map(str, entry["shape"]))
            lines.append(f"{key:<22}  {shape:<15}  {ceiling['signal_fraction']:>15.3f}  {half:>12}")
        for modality, ceiling in self.noise_ceiling.items():
            half = "-" if ceiling["split_half_r"] is None else f"{ceiling['split_half_r']:.3f}"
            label = f"mean {modality}"
            lines.append(f"{label:<22}  {'':<15}  {ceiling['signal_fraction']:>15.3f}  {half:>12}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "parameters": self.parameters,
            "modalities": self.modalities,
            "subjects": self.subjects,
            "recordings": self.recordings,
            "noise_ceiling": self.noise_ceiling,
            "seconds": self.seconds,
        }


def stream_rng(seed: int, subject: int, stream: str) -> np.random.Generator:
    """An independent generator per (seed, subject, purpose): changing what is simulated
    (e.g. leaving MEG out) does not change the other recordings. Subject 0 is the cohort."""
    return np.random.default_rng([int(seed), int(subject), zlib.crc32(stream.encode())])


def sensor_description(modality: str, info) -> dict[str, Any]:
    """What a recording's ``info`` keeps of the simulated sensors (enough to rebuild an mne.Info)."""
    from neurodec.simulate.sensors import EEG_MONTAGE, MEG_HELMET

    if modality == "eeg":
        return {"montage": EEG_MONTAGE, "reference": "average"}
    # What mne.Info needs to rebuild the sensors: loc (device frame) and coil types.
    return {"helmet": MEG_HELMET, "ch_loc": [channel["loc"].tolist() for channel in info["chs"]],
            "ch_loc_frame": "device", "coil_types": [int(channel["coil_type"]) for channel in info["chs"]],
            "dev_head_t": np.asarray(info["dev_head_t"]["trans"]).tolist()}


def trial_order(split: list[str], repetitions: int, rng: np.random.Generator) -> np.ndarray:
    """Stimulus index per trial: train stimuli once, test stimuli ``repetitions`` times, shuffled."""
    split_array = np.asarray(split)
    trials = np.concatenate(
        [np.flatnonzero(split_array == "train"), np.repeat(np.flatnonzero(split_array == "test"), repetitions)]
    )
    return trials[rng.permutation(len(trials))]


@dataclass
class _Stimuli:
    """The cohort's stimuli and the generator's standardised features of them."""

    demo: DemoImages
    split: list[str]
    low: np.ndarray
    high: np.ndarray
    n_category: int


def _stimuli_table(demo: DemoImages, split: list[str]):
    metadata = [{"group": g, **origin} for g, origin in zip(demo.group, demo.origin)]
    return stimulus_table(
        demo.ids,
        kind="image",
        category=demo.category,
        split=split,
        metadata=metadata,
        content_array=["images"] * len(demo),
        content_index=np.arange(len(demo)),
    )


def _events(stimuli: _Stimuli, trials: np.ndarray, onsets: np.ndarray, duration: float):
    """One row per trial; ``value`` is the stimulus's split (the trial type)."""
    return event_table(
        [stimuli.demo.ids[i] for i in trials],
        onset=onsets,
        duration=np.full(len(trials), duration),
        value=[stimuli.split[i] for i in trials],
    )


def _ceiling_entry(fraction: float, data: np.ndarray, events, window: str) -> dict[str, Any]:
    return {
        "signal_fraction": fraction,
        "split_half_r": ceiling.split_half_correlation(data, events["stimulus_id"], events["repetition"]),
        "window": window,
        "definition": "mean over features of var(signal)/(var(signal)+var(noise)) across trials; "
        "split_half_r: mean correlation between presentations 0 and 1 of test stimuli",
    }


def _prepare_stimuli(parameters: SimulationParameters, seed: int) -> _Stimuli:
    demo = load_demo_images(parameters.n_train + parameters.n_test, size=parameters.image_size, seed=seed)
    split = assign_split(demo, parameters.n_test, seed=seed)
    features = standardise(image_features(demo.images, demo.category))
    early, late = generator_features(features)
    return _Stimuli(demo=demo, split=split, low=early, high=late, n_category=features["category"].shape[1])


def _electrophysiology_recording(
    modality: str,
    subject_index: int,
    stimuli: _Stimuli,
    sources,
    p: SimulationParameters,
    seed: int,
    converter: dict,
) -> RecordingData:
    """Simulate one subject's EEG or MEG session as an epoched recording."""
    from neurodec.simulate.electrophysiology import (
        compute_leadfield,
        make_subject_brain,
        simulate_session,
        source_drives,
    )
    from neurodec.simulate.sensors import make_eeg_info, make_meg_info

    session_rng = stream_rng(seed, subject_index, f"session-{modality}")
    trials = trial_order(stimuli.split, p.test_repetitions, session_rng)
    # The brain is drawn from the subject's own stream, so EEG and MEG share it.
    subject_rng, cohort_rng = stream_rng(seed, subject_index, "brain"), stream_rng(seed, 0, "brain")
    brain = make_subject_brain(
        sources, stimuli.low.shape[1], stimuli.high.shape[1], stimuli.n_category, p, subject_rng, cohort_rng
    )
    drive_early, drive_late = source_drives(brain, stimuli.low, stimuli.high, p.stimulus_specific_ratio)
    sensor_rng = stream_rng(seed, subject_index, f"sensors-{modality}")
    if modality == "eeg":
        info = make_eeg_info(p.sfreq, electrode_jitter_m=p.electrode_jitter_m, rng=sensor_rng)
    else:
        info = make_meg_info(
            p.sfreq,
            n_sensors=p.n_meg_sensors,
            head_rotation_sd_deg=p.head_rotation_sd_deg,
            head_translation_sd_m=p.head_translation_sd_m,
            rng=sensor_rng,
            sphere=sources.sphere,
        )
    gain = compute_leadfield(info, sources, modality)
    session = simulate_session(modality, info, gain, sources, brain, drive_early, drive_late, trials, p, session_rng)
    events = _events(stimuli, trials, session.onsets_s, p.stimulus_duration_s)
    times = p.tmin + np.arange(p.n_times) / p.sfreq
    window = (times >= p.response_window_s[0]) & (times <= p.response_window_s[1])
    window_label = f"{p.response_window_s[0]}-{p.response_window_s[1]} s after onset"
    extra = {
        "simulated": True,
        "noise_ceiling": _ceiling_entry(session.signal_fraction, session.data[:, :, window], events, window_label),
        "snr": p.snr_eeg if modality == "eeg" else p.snr_meg,
        "evoked_dipole_moment_nAm": session.dipole_moment_nAm,
        "alpha_frequency_hz": brain.alpha_frequency,
        "n_blinks": session.n_blinks,
        "line_frequency_hz": p.line_frequency_hz,
        "head_model": {"kind": "sphere", "centre_m": list(sources.sphere.centre), "radius_m": sources.sphere.radius},
        "n_sources": sources.n_sources,
    }
    extra.update(sensor_description(modality, info))
    n_channels = len(info.ch_names)
    return RecordingData(
        subject=f"{subject_index:02d}",
        modality=modality,
        layout="epoched",
        data=session.data,
        events=events,
        session=modality,
        run="01",
        task="images",
        sfreq=p.sfreq,
        tmin=p.tmin,
        ch_names=list(info.ch_names),
        ch_types=[{"eeg": "eeg", "meg": "mag"}[modality]] * n_channels,
        units=[{"eeg": "V", "meg": "T"}[modality]] * n_channels,
        sensor_positions=session.positions,
        preprocessing=[],
        source=dict(SOURCE),
        converter=converter,
        info=extra,
    )


def _fmri_recording(
    subject_index: int, stimuli: _Stimuli, grid, p: SimulationParameters, seed: int, converter: dict
) -> RecordingData:
    """Simulate one subject's fMRI session as single-trial betas."""
    from neurodec.simulate.fmri import TEMPLATE, simulate_fmri

    trials = trial_order(stimuli.split, p.test_repetitions, stream_rng(seed, subject_index, "session-fmri"))
    n_voxels = int(stream_rng(seed, subject_index, "fmri-voxels").integers(p.fmri_min_voxels, p.fmri_max_voxels + 1))
    fmri = simulate_fmri(
        grid, n_voxels, stimuli.low, stimuli.high, trials, p, stream_rng(seed, subject_index, "fmri"), stream_rng(seed, 0, "fmri")
    )
    events = _events(stimuli, trials, np.arange(len(trials)) * p.fmri_trial_s, 3.0)
    return RecordingData(
        subject=f"{subject_index:02d}",
        modality="fmri",
        layout="fmri",
        data=fmri.betas,
        events=events,
        session="fmri",
        run="01",
        task="images",
        preprocessing=[],
        source=dict(SOURCE),
        converter=converter,
        info={
            "simulated": True,
            "noise_ceiling": _ceiling_entry(fmri.signal_fraction, fmri.betas, events, "single-trial betas"),
            "snr": p.fmri_snr,
            "units": "percent signal change",
            "template": TEMPLATE,
            "resolution_mm": p.fmri_resolution_mm,
            "space": "MNI152",
        },
        mask=fmri.mask,
        affine=grid.affine,
        voxel_ijk=fmri.voxel_ijk,
    )


def simulate_cohort(
    out,
    *,
    size: str = "default",
    n_subjects: int | None = None,
    seed: int = 0,
    modalities: Iterable[str] = MODALITIES,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    **changes: Any,
):
    """Simulate the demo cohort and write it as a study store at ``out``.

    Returns ``(study, report)``: the opened :class:`~neurodec.store.Study` and a
    :class:`SimulationReport`. Recordings are keyed ``sub-<01..>/ses-<modality>/run-01``;
    each one's ``info["noise_ceiling"]`` repeats its entry of the report. ``size`` is
    ``"default"`` (4 subjects x 1,100 trials) or ``"tiny"`` (2 subjects x 60 trials);
    further keyword arguments change single :class:`SimulationParameters` fields.
    The same arguments give the same arrays.

    >>> study, report = simulate_cohort("demo.zarr", size="tiny")  # doctest: +SKIP
    >>> study.recording(subject="01", session="eeg").data.shape      # doctest: +SKIP
    (60, 64, 200)
    >>> report.noise_ceiling["eeg"]["signal_fraction"]               # doctest: +SKIP
    0.1
    """
    from neurodec.simulate.electrophysiology import make_source_model
    from neurodec.simulate.fmri import make_fmri_grid
    from neurodec.simulate.sensors import head_sphere

    started = time.perf_counter()
    modalities = list(dict.fromkeys(modalities))
    if not modalities or set(modalities) - set(MODALITIES):
        raise ConfigError(
            f"simulate_cohort: modalities expected a non-empty subset of {MODALITIES}, found {modalities}"
        )
    p = SimulationParameters.preset(size, n_subjects=n_subjects, **changes)
    subjects = [f"{i:02d}" for i in range(1, p.n_subjects + 1)]
    converter = {"name": CONVERTER, "parameters": {**p.to_dict(), "seed": int(seed), "modalities": modalities}}
    report = SimulationReport(seed=int(seed), parameters=p.to_dict(), modalities=modalities, subjects=subjects)

    stimuli = _prepare_stimuli(p, seed)
    sources = None
    if {"eeg", "meg"} & set(modalities):
        sources = make_source_model(p.source_spacing_mm, head_sphere())
    grid = make_fmri_grid(p.fmri_resolution_mm) if "fmri" in modalities else None

    provenance = {"converter": CONVERTER, "parameters": converter["parameters"]}
    with StoreWriter(
        out, name=STORE_NAME, overwrite=overwrite, provenance=provenance, storage_options=storage_options
    ) as writer:
        writer.set_stimuli(_stimuli_table(stimuli.demo, stimuli.split), content={"images": stimuli.demo.images})
        jobs = [(subject, modality) for subject in range(1, p.n_subjects + 1) for modality in modalities]
        for subject_index, modality in progress(jobs, "simulating recordings"):
            if modality == "fmri":
                recording = _fmri_recording(subject_index, stimuli, grid, p, seed, converter)
            else:
                recording = _electrophysiology_recording(modality, subject_index, stimuli, sources, p, seed, converter)
            writer.add_recording(recording)
            noise_ceiling = recording.info["noise_ceiling"]
            report.recordings[recording.key] = {
                "modality": modality,
                "subject": recording.subject,
                "n_trials": int(recording.data.shape[0]),
                "shape": list(recording.data.shape),
                "noise_ceiling": noise_ceiling,
            }
            logger.info(
                "simulated %s: noise ceiling %.3f (split-half r %s)",
                recording.key,
                noise_ceiling["signal_fraction"],
                "n/a" if noise_ceiling["split_half_r"] is None else f"{noise_ceiling['split_half_r']:.3f}",
            )
    # Leaving the writer's block committed the store (renamed into place).
    study = open_store(out, storage_options=storage_options)
    report.seconds = time.perf_counter() - started
    logger.info("simulated the demo cohort in %.1f s; noise ceilings %s", report.seconds, report.noise_ceiling)
    return study, report
