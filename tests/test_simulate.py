"""The demo cohort: each claim of the generator measured on the simulated data itself."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from neurodec.errors import ConfigError, StoreExistsError
from neurodec.simulate import (
    SimulationParameters,
    assign_split,
    image_features,
    load_demo_images,
    make_meg_info,
    simulate_cohort,
)
from neurodec.simulate.features import HIGH_LEVEL_FEATURES, LOW_LEVEL_FEATURES, standardise
from neurodec.simulate.images import PHOTO_FILES, skimage_data_dir
from neurodec.store import open_store

OCCIPITAL = ("O1", "Oz", "O2")
FRONTAL = ("Fp1", "Fpz", "Fp2")
CENTRAL = ("Cz", "C1", "C2", "CPz", "FCz")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny cohort (2 subjects x 60 trials, EEG + MEG + fMRI), written once."""
    url = tmp_path_factory.mktemp("simulate") / "tiny.zarr"
    study, report = simulate_cohort(url, size="tiny", seed=0)
    return study, report


@pytest.fixture(scope="module")
def reliable(tmp_path_factory):
    """One subject with many repeated test stimuli: enough to check noise ceilings and decoding."""
    url = tmp_path_factory.mktemp("simulate") / "reliable.zarr"
    return simulate_cohort(
        url, size="tiny", n_subjects=1, modalities=("eeg", "fmri"), seed=3, n_train=120, n_test=80
    )


def _welch(data: np.ndarray, sfreq: float):
    from scipy.signal import welch

    # Whole 1 s epochs, linear detrend: 1 Hz resolution, little leakage from slow drifts.
    frequencies, power = welch(data, fs=sfreq, nperseg=data.shape[-1], axis=-1, detrend="linear")
    return frequencies, power.mean(axis=0)  # average over trials: channels x frequencies


def _clean_epochs(recording) -> np.ndarray:
    """Trials without artefacts, as an ERP analysis keeps them: epochs whose peak-to-peak
    amplitude exceeds three times the channel's median on any channel (blinks) are dropped."""
    data = recording.data[...].astype(np.float64)
    swing = np.ptp(data, axis=2)
    keep = ~(swing > 3 * np.median(swing, axis=0)).any(axis=1)
    assert keep.mean() > 0.5
    return data[keep]


def _channel_groups(recording):
    """Occipital, frontal and central channels: by name for EEG, by position for MEG."""
    names = recording.ch_names
    if recording.modality == "eeg":
        return tuple([names.index(c) for c in group] for group in (OCCIPITAL, FRONTAL, CENTRAL))
    positions = recording.sensor_positions
    back_to_front = np.argsort(positions[:, 1])
    return back_to_front[:10], back_to_front[-10:], np.argsort(-positions[:, 2])[:10]


def _groups_of(study, stimulus_ids):
    stimuli = study.stimuli
    group = {s: json.loads(m)["group"] for s, m in zip(stimuli["id"].tolist(), stimuli["metadata"].tolist())}
    return np.array([group[s] for s in stimulus_ids])


# ------------------------------------------------------------------------- stimuli
def test_demo_images_are_the_bundled_images():
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    demo = load_demo_images(60, seed=1)
    assert demo.images.shape == (60, 64, 64, 3) and demo.images.dtype == np.uint8
    assert sorted(set(demo.group)) == ["digit", "face", "nonface", "photo"]
    assert len(set(demo.ids)) == 60

    # Each image against its source, reduced to the source's grid by block averaging.
    digits = load_digits()
    first_digit = demo.group.index("digit")
    origin = demo.origin[first_digit]
    blocks = demo.images[first_digit, :, :, 0].reshape(8, 8, 8, 8).mean(axis=(1, 3))
    assert np.corrcoef(blocks.ravel(), digits.images[origin["index"]].ravel())[0, 1] > 0.9
    assert demo.category[first_digit] == f"digit-{digits.target[origin['index']]}"

    lfw = np.load(os.path.join(skimage_data_dir(), "lfw_subset.npy"))
    first_face = demo.group.index("face")
    face = lfw[demo.origin[first_face]["index"]]
    assert demo.origin[first_face]["index"] < 100  # the first 100 of lfw_subset are faces
    shrunk = resize(demo.images[first_face, :, :, 0].astype(float), (25, 25), anti_aliasing=True)
    assert np.corrcoef(shrunk.ravel(), face.ravel())[0, 1] > 0.9

    import imageio.v3 as iio

    first_photo = demo.group.index("photo")
    top, left, side = demo.origin[first_photo]["crop_top_left_side"]
    photo = np.asarray(iio.imread(os.path.join(skimage_data_dir(), PHOTO_FILES[demo.category[first_photo]])), float)
    crop = photo[top : top + side, left : left + side]
    crop = crop if crop.ndim == 3 else np.repeat(crop[..., None], 3, axis=2)
    small = resize(crop[..., :3], (64, 64, 3), anti_aliasing=True, preserve_range=True)
    assert np.corrcoef(small.ravel(), demo.images[first_photo].astype(float).ravel())[0, 1] > 0.99

    split = np.array(assign_split(demo, 12, seed=1))
    assert (split == "test").sum() == 12
    assert set(np.asarray(demo.group)[split == "test"]) == {"digit", "face", "nonface", "photo"}


def test_image_features_hand_worked_examples():
    grey = np.full((3, 64, 64), 128, dtype=np.uint8)
    grey[0, 0:16, 0:16] = 255  # a bright square in the top-left cell of the 4 x 4 grid
    grey[1, :, :] = np.where((np.arange(64) // 4) % 2 == 0, 40, 215)[None, :]  # vertical stripes
    grey[2, :, :] = np.where((np.arange(64) // 4) % 2 == 0, 40, 215)[:, None]  # horizontal stripes
    features = image_features(grey)
    assert np.argmax(features["contrast_energy"][0]) == 0
    assert np.argmax(features["luminance_energy"][0]) == 0
    # Orientation 0 filters respond to luminance changing along x (vertical stripes).
    shares = features["orientation_energy"].reshape(3, 4, 4)  # image, quadrant, orientation
    assert np.all(np.argmax(shares[1], axis=1) == 0)
    assert np.all(np.argmax(shares[2], axis=1) == 2)
    np.testing.assert_allclose(shares.sum(axis=2), 1.0, atol=1e-4)
    assert set(features) == set(LOW_LEVEL_FEATURES) | {"shape"}


def test_generator_features_are_far_from_a_pixel_embedding():
    """A ridge from a generic embedding (PCA of pixels) explains < half their variance."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    demo = load_demo_images(900, seed=0)
    split = np.array(assign_split(demo, 200, seed=0))
    train, test = split == "train", split == "test"
    raw = image_features(demo.images, demo.category)
    features = standardise(raw, {name: values[train] for name, values in raw.items()})
    pixels = demo.images.reshape(len(demo), -1).astype(np.float64) / 255.0
    embedding = PCA(128, random_state=0).fit(pixels[train]).transform(pixels)

    def held_out_r2(target: np.ndarray) -> float:
        ridge = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(embedding[train], target[train])
        return r2_score(target[test], ridge.predict(embedding[test]))

    every = np.concatenate([features[name] for name in LOW_LEVEL_FEATURES + HIGH_LEVEL_FEATURES], axis=1)
    overall = held_out_r2(every)
    assert 0.05 < overall < 0.5, overall  # related to the images, yet not a linear map of them
    for name in LOW_LEVEL_FEATURES + HIGH_LEVEL_FEATURES:
        assert held_out_r2(features[name]) < 0.5, name


@pytest.mark.slow  # embeds 450 images with the CNN: about a minute on 2 cores
def test_generator_features_are_far_from_the_demo_target_space():
    """The demo's target space (pretrained EfficientNet-Lite0 embeddings, neurodec.targets)
    explains less than half the variance of what drives the simulated responses."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    from neurodec.simulate.features import generator_features
    from neurodec.targets import get_extractor

    demo = load_demo_images(450, seed=0)
    split = np.array(assign_split(demo, 100, seed=0))
    train, test = split == "train", split == "test"
    raw = image_features(demo.images, demo.category)
    early, late = generator_features(standardise(raw, {name: values[train] for name, values in raw.items()}))
    driving = np.concatenate([early, late], axis=1)
    embedding = get_extractor("image_pretrained_cnn").embed(list(demo.images), batch_size=64)
    ridge = RidgeCV(alphas=np.logspace(-2, 6, 17)).fit(embedding[train], driving[train])
    r2 = r2_score(driving[test], ridge.predict(embedding[test]))
    assert 0.05 < r2 < 0.5, r2


# -------------------------------------------------------------------------- store
def test_tiny_cohort_is_a_valid_store(tiny):
    study, report = tiny
    reopened = open_store(study.url)
    reopened.validate(deep=True)
    assert sorted(reopened.recording_keys) == sorted(
        f"sub-{s}/ses-{m}/run-01" for s in ("01", "02") for m in ("eeg", "meg", "fmri")
    )
    stimuli = reopened.stimuli
    assert stimuli.n_rows == 50
    assert (stimuli["split"] == "test").sum() == 10
    demo = load_demo_images(50, seed=0)
    np.testing.assert_array_equal(reopened.stimulus_content(demo.ids), demo.images)
    test_ids = set(stimuli["id"][stimuli["split"] == "test"].tolist())

    for recording in reopened.recordings():
        assert recording.preprocessing == []
        converter = recording.attrs["converter"]
        assert converter["name"] == "neurodec.simulate" and converter["parameters"]["seed"] == 0
        assert converter["parameters"]["n_train"] == 40
        events = recording.events
        assert recording.n_trials == events.n_rows == 60
        counts = {}
        for stimulus, repetition in zip(events["stimulus_id"].tolist(), events["repetition"].tolist()):
            counts.setdefault(stimulus, []).append(repetition)
        assert all(sorted(r) == ([0, 1] if s in test_ids else [0]) for s, r in counts.items())
        assert len(counts) == 50
        assert np.all(np.diff(events["onset"]) > 0)
        ceiling = recording.attrs["info"]["noise_ceiling"]
        assert ceiling == report.recordings[recording.key]["noise_ceiling"]

    eeg = reopened.recording(subject="01", session="eeg")
    meg = reopened.recording(subject="01", session="meg")
    assert eeg.shape == (60, 64, 200) and meg.shape == (60, 96, 200)
    assert eeg.sfreq == 200.0 and eeg.tmin == pytest.approx(-0.2)
    assert set(eeg.ch_types) == {"eeg"} and set(eeg.units) == {"V"}
    assert set(meg.ch_types) == {"mag"} and set(meg.units) == {"T"}
    assert 1e-6 < float(np.std(eeg.data[...])) < 1e-4  # tens of microvolts
    assert 1e-14 < float(np.std(meg.data[...])) < 1e-11  # hundreds of femtotesla
    assert eeg.data.dtype == np.float32


def test_sensors_are_real_mne_geometry(tiny):
    import mne
    from mne.io.constants import FIFF
    from mne.transforms import apply_trans

    study, _ = tiny
    template = mne.channels.make_standard_montage("biosemi64")
    template_info = mne.create_info(template.ch_names, 200.0, "eeg").set_montage(template)
    template_positions = np.array([c["loc"][:3] for c in template_info["chs"]])
    eeg_positions = [study.recording(subject=s, session="eeg").sensor_positions for s in ("01", "02")]
    for positions in eeg_positions:
        shift = np.linalg.norm(positions - template_positions, axis=1)
        assert 0.0005 < np.median(shift) < 0.008 and shift.max() < 0.02
    assert not np.allclose(eeg_positions[0], eeg_positions[1])

    poses = []
    for subject in ("01", "02"):
        meg = study.recording(subject=subject, session="meg")
        info = meg.attrs["info"]
        loc = np.array(info["ch_loc"])
        device_to_head = np.array(info["dev_head_t"])
        poses.append(device_to_head)
        assert set(info["coil_types"]) == {FIFF.FIFFV_COIL_POINT_MAGNETOMETER}
        np.testing.assert_allclose(apply_trans(device_to_head, loc[:, :3]), meg.sensor_positions, atol=1e-9)
        # Rebuild the MNE Info from the store alone; MNE reads the same head-frame layout.
        rebuilt = mne.create_info(meg.ch_names, meg.sfreq, "mag")
        with rebuilt._unlock():
            rebuilt["dev_head_t"] = mne.transforms.Transform("meg", "head", device_to_head)
        for channel, row, coil in zip(rebuilt["chs"], loc, info["coil_types"]):
            channel["loc"], channel["coil_type"], channel["coord_frame"] = row, coil, FIFF.FIFFV_COORD_DEVICE
        epochs = mne.EpochsArray(meg.data[:4].astype(np.float64), rebuilt, tmin=meg.tmin, verbose=False)
        assert epochs.get_channel_types(unique=True) == ["mag"]
        centre = np.array(info["head_model"]["centre_m"])
        radius = info["head_model"]["radius_m"]
        normals_head = loc[:, 9:12] @ device_to_head[:3, :3].T
        outward = meg.sensor_positions - centre
        assert np.all(np.sum(normals_head * outward, axis=1) > 0)  # coils face away from the head
        assert np.linalg.norm(outward, axis=1).min() > radius + 0.005
        rotation_deg = np.degrees(np.arccos(np.clip((np.trace(device_to_head[:3, :3]) - 1) / 2, -1, 1)))
        assert rotation_deg < 10
    assert not np.allclose(poses[0], poses[1])


def test_meg_info_uses_the_helmet_surface():
    import mne

    info = make_meg_info(200.0, n_sensors=120)
    helmet = mne.read_bem_surfaces(
        os.path.join(os.path.dirname(mne.__file__), "data", "helmets", "306m.fif.gz"), verbose=False
    )[0]
    positions = np.array([c["loc"][:3] for c in info["chs"]])
    distance = np.min(np.linalg.norm(positions[:, None] - helmet["rr"][None], axis=2), axis=1)
    assert distance.max() < 1e-9  # every sensor sits on a helmet vertex
    assert len(np.unique(positions, axis=0)) == 120


# ------------------------------------------------------------ what the data show
def test_evoked_peak_latencies(tiny):
    from scipy.signal import find_peaks

    study, _ = tiny
    for recording in study.recordings():
        if recording.layout != "epoched":
            continue
        evoked = _clean_epochs(recording).mean(axis=0)
        times = recording.tmin + np.arange(evoked.shape[1]) / recording.sfreq
        baseline = times < 0
        field_power = np.sqrt((evoked**2).mean(axis=0))
        peaks, _ = find_peaks(field_power, prominence=field_power[baseline].mean())
        latencies = times[peaks]
        strength = field_power[peaks] / field_power[baseline].mean()
        early = (latencies >= 0.07) & (latencies <= 0.14) & (strength > 3)
        late = (latencies >= 0.2) & (latencies <= 0.4) & (strength > 1.5)
        assert early.any() and late.any(), (recording.key, list(zip(latencies, strength)))
        if recording.modality == "eeg":
            occipital, _, _ = _channel_groups(recording)
            after = times >= 0
            occipital_power = np.sqrt((evoked[occipital] ** 2).mean(axis=0))
            assert 0.07 <= times[after][np.argmax(occipital_power[after])] <= 0.14, recording.key


def test_background_spectrum_alpha_and_mains(tiny):
    study, report = tiny
    exponent = report.parameters["background_exponent"]
    for recording in study.recordings():
        if recording.layout != "epoched":
            continue
        clean = _clean_epochs(recording)
        frequencies, power = _welch(clean, recording.sfreq)
        occipital, frontal, central = _channel_groups(recording)

        # 1/f background: log-log slope over 2-30 Hz without the alpha band, once the
        # average evoked response is removed.
        _, background = _welch(clean - clean.mean(axis=0), recording.sfreq)
        fit = (frequencies >= 2) & (frequencies <= 30) & ~((frequencies >= 7) & (frequencies <= 14))
        slope = np.polyfit(np.log10(frequencies[fit]), np.log10(background[central][:, fit].mean(axis=0)), 1)[0]
        assert -2.0 < slope < -1.1 and abs(slope + exponent) < 0.35, (recording.key, slope)

        # Posterior alpha: more 8-12 Hz power at the back than at the front, and a peak
        # standing above the power law fitted to the neighbouring frequencies.
        alpha = (frequencies >= 8) & (frequencies <= 12)
        assert power[occipital][:, alpha].mean() > 2 * power[frontal][:, alpha].mean(), recording.key
        back = power[occipital].mean(axis=0)
        flanks = ((frequencies >= 3) & (frequencies <= 6)) | ((frequencies >= 16) & (frequencies <= 30))
        law = np.polyfit(np.log10(frequencies[flanks]), np.log10(back[flanks]), 1)
        peak = frequencies[alpha][np.argmax(back[alpha])]
        assert back[frequencies == peak][0] > 2 * 10 ** np.polyval(law, np.log10(peak)), recording.key
        alpha_frequency = recording.attrs["info"]["alpha_frequency_hz"]
        assert abs(peak - alpha_frequency) <= 1.5

        # Mains at 50 Hz against the neighbouring bins.
        neighbours = ((frequencies >= 44) & (frequencies <= 48)) | ((frequencies >= 52) & (frequencies <= 56))
        mains = power[:, frequencies == 50][:, 0].mean() / power[:, neighbours].mean()
        assert mains > 5, (recording.key, mains)


def test_blinks_are_frontal(tiny):
    from scipy.signal import butter, sosfiltfilt

    study, _ = tiny
    for recording in study.recordings(modality="eeg"):
        data = recording.data[...].astype(np.float64)
        low = sosfiltfilt(butter(4, 4.0, "lowpass", fs=recording.sfreq, output="sos"), data, axis=2)
        occipital, frontal, _ = _channel_groups(recording)
        frontal_swing = np.ptp(low[:, frontal], axis=2).mean(axis=1)
        occipital_swing = np.ptp(low[:, occipital], axis=2).mean(axis=1)
        # The epochs with the largest slow frontal swings (the blinks) ...
        largest = np.argsort(-frontal_swing)[:5]
        # ... stand out from the typical epoch at the front, much less at the back.
        assert np.median(frontal_swing[largest]) > 3 * np.median(frontal_swing)
        assert np.median(frontal_swing[largest]) > 1.5 * np.median(occipital_swing[largest])
        assert recording.attrs["info"]["n_blinks"] > 0


def test_fmri_voxels_in_the_bundled_template(tiny):
    from nilearn.datasets import load_mni152_brain_mask

    study, _ = tiny
    template = load_mni152_brain_mask(resolution=4)
    brain = np.asarray(template.get_fdata()) > 0.5
    counts = []
    for recording in study.recordings(modality="fmri"):
        ijk = recording.voxel_ijk
        counts.append(len(ijk))
        assert 2000 <= len(ijk) <= 5000
        assert recording.shape == (60, len(ijk))
        np.testing.assert_allclose(recording.affine, template.affine)
        assert recording.mask.shape == brain.shape and recording.mask.sum() == len(ijk)
        np.testing.assert_array_equal(np.argwhere(recording.mask), ijk)
        assert brain[tuple(ijk.T)].all()
        world = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
        assert world[:, 1].max() < -40  # occipito-temporal
        assert recording.attrs["info"]["units"] == "percent signal change"
    assert len(set(counts)) == len(counts)


def test_noise_ceiling_agrees_with_split_half_reliability(reliable):
    study, report = reliable
    for recording in study.recordings():
        data = recording.data[...].astype(np.float64)
        if recording.layout == "epoched":
            times = recording.tmin + np.arange(data.shape[2]) / recording.sfreq
            data = data[:, :, (times >= 0) & (times <= 0.6)]
        events = recording.events
        first, second = {}, {}
        presentations = zip(events["stimulus_id"].tolist(), events["repetition"].tolist())
        for trial, (stimulus, repetition) in enumerate(presentations):
            (first if repetition == 0 else second)[stimulus] = trial
        repeated = sorted(second)
        assert len(repeated) == 80
        a = data[[first[s] for s in repeated]].reshape(len(repeated), -1)
        b = data[[second[s] for s in repeated]].reshape(len(repeated), -1)
        r = np.array([np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(a.shape[1])])
        ceiling = report.recordings[recording.key]["noise_ceiling"]
        assert 0 < ceiling["signal_fraction"] < 1
        assert ceiling["split_half_r"] == pytest.approx(r.mean(), abs=1e-6)
        # 80 repeated stimuli: the split-half estimate has a standard error of ~0.02.
        assert abs(r.mean() - ceiling["signal_fraction"]) < 0.05, (recording.key, r.mean(), ceiling)
    assert set(report.noise_ceiling) == {"eeg", "fmri"}


def test_linear_decoder_recovers_category(reliable):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    study, _ = reliable
    for recording in study.recordings():
        data = recording.data[...].astype(np.float64)
        if recording.layout == "epoched":
            times = recording.tmin + np.arange(data.shape[2]) / recording.sfreq
            windows = [(start, start + 0.05) for start in np.arange(0.05, 0.5, 0.05)]
            data = np.concatenate([data[:, :, (times >= a) & (times < b)].mean(axis=2) for a, b in windows], axis=1)
        stimulus_ids = recording.events["stimulus_id"]
        groups = _groups_of(study, stimulus_ids)
        decoder = make_pipeline(StandardScaler(), RidgeClassifier(alpha=float(data.shape[1])))
        # Folds split by stimulus, so a repeated image never sits in both train and test.
        accuracy = cross_val_score(
            decoder, data, groups, groups=stimulus_ids, cv=GroupKFold(5), scoring="balanced_accuracy"
        ).mean()
        # Chance is 0.25 (4 groups, balanced accuracy); its SD over 280 trials is ~0.03.
        assert accuracy > 0.35, (recording.key, accuracy)


# ---------------------------------------------------------------- reproducibility
def test_same_seed_same_arrays_and_streams_are_independent(tiny, tmp_path):
    study, _ = tiny
    # EEG only, one subject: must equal subject 01 of the full tiny cohort, because each
    # (subject, modality) draws from its own random stream.
    again, _ = simulate_cohort(tmp_path / "again.zarr", size="tiny", n_subjects=1, modalities=("eeg", "fmri"), seed=0)
    for session in ("eeg", "fmri"):
        np.testing.assert_array_equal(
            again.recording(subject="01", session=session).data[...],
            study.recording(subject="01", session=session).data[...],
        )
    np.testing.assert_array_equal(
        again.recording(subject="01", session="fmri").voxel_ijk,
        study.recording(subject="01", session="fmri").voxel_ijk,
    )
    other, _ = simulate_cohort(tmp_path / "other.zarr", size="tiny", n_subjects=1, modalities=("eeg",), seed=1)
    first = study.recording(subject="01", session="eeg").data[...]
    second = other.recording(subject="01", session="eeg").data[...]
    assert first.shape == second.shape and not np.allclose(first, second)
    assert other.stimuli["id"].tolist() != study.stimuli["id"].tolist()


def test_parameters_and_arguments_are_checked(tiny):
    study, _ = tiny
    with pytest.raises(ConfigError, match="unknown"):
        SimulationParameters.preset("tiny", n_trails=10)
    with pytest.raises(ConfigError, match="size"):
        SimulationParameters.preset("huge")
    with pytest.raises(ConfigError, match="soa_min_s"):
        SimulationParameters.preset("tiny", soa_min_s=0.5)
    with pytest.raises(ConfigError, match="modalities"):
        simulate_cohort("memory://never.zarr", size="tiny", modalities=("ecog",))
    with pytest.raises(StoreExistsError):
        simulate_cohort(study.url, size="tiny", modalities=("fmri",))
    assert SimulationParameters.preset("tiny").n_trials == 60
    assert SimulationParameters.preset("default").n_trials == 1100


@pytest.mark.slow
def test_default_cohort_size_and_time(tmp_path):
    started = time.perf_counter()
    study, report = simulate_cohort(tmp_path / "demo.zarr", size="default")
    elapsed = time.perf_counter() - started
    assert elapsed < 180, elapsed
    assert study.subjects == ["01", "02", "03", "04"]
    assert all(r.n_trials == 1100 for r in study.recordings())
    voxels = [r.shape[1] for r in study.recordings(modality="fmri")]
    assert len(set(voxels)) == 4
    for modality, ceiling in report.noise_ceiling.items():
        assert abs(ceiling["signal_fraction"] - ceiling["split_half_r"]) < 0.03, modality
