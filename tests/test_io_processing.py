"""Preprocessing during ingestion equals MNE's (and sklearn's, nilearn's, a hand
computation's) for the same parameters, and each step is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurodec.errors import EventError, MaskError
from neurodec.io import ingest, read_recording, recording_from_epochs, recording_from_nifti, to_mne

mne = pytest.importorskip("mne")
nibabel = pytest.importorskip("nibabel")

EDF = "edf/test_edf_overlapping_annotations.edf"


def f32(values) -> np.ndarray:
    return np.asarray(values).astype(np.float32)


def test_bandpass_epochs_resample_equal_mne(real_data):
    options = {
        "preprocessing": {"bandpass": {"l_freq": 1.0, "h_freq": 30.0}, "resample": 64.0},
        "epochs": {"tmin": -0.1, "tmax": 0.5, "baseline": [None, 0]},
    }
    recording = read_recording(real_data / EDF, options)

    raw = mne.io.read_raw(real_data / EDF, preload=True, verbose="error")
    raw.filter(1.0, 30.0, verbose="error")
    events, event_id = mne.events_from_annotations(raw, verbose="error")
    epochs = mne.Epochs(raw, events, event_id, tmin=-0.1, tmax=0.5, baseline=(None, 0), reject=None,
                        reject_by_annotation=False, preload=True, verbose="error")
    epochs.resample(64.0, verbose="error")
    names = {code: name for name, code in event_id.items()}

    assert recording.layout == "epoched"
    assert recording.sfreq == 64.0 and recording.tmin == pytest.approx(epochs.tmin)
    np.testing.assert_allclose(recording.data, f32(epochs.get_data()), rtol=1e-6, atol=0)
    assert recording.events["stimulus_id"].tolist() == [names[c] for c in epochs.events[:, 2]]
    # The first annotation starts at 0 s: its epoch would begin before the data, as in MNE.
    assert len(epochs) == recording.events.n_rows == 37
    assert [s["step"] for s in recording.preprocessing] == ["bandpass_filter", "epochs", "resample"]
    bandpass, epoching, resampling = recording.preprocessing
    assert (bandpass["l_freq"], bandpass["h_freq"], bandpass["method"]) == (1.0, 30.0, "fir")
    assert epoching["baseline"] == [None, 0] and epoching["n_events"] == 38 and epoching["n_epochs"] == 37
    assert (resampling["from_sfreq"], resampling["sfreq"]) == (128.0, 64.0)
    assert recording.info["original_sfreq"] == 128.0 and recording.info["lowpass"] == pytest.approx(30.0)


def test_crop_notch_resample_continuous_equal_mne(real_data):
    path = real_data / "brainvision/test.vhdr"
    options = {"preprocessing": {"crop": [1.0, 6.0], "notch": [50.0], "resample": 250.0}}
    recording = read_recording(path, options)

    raw = mne.io.read_raw(path, preload=True, verbose="error")
    raw.crop(1.0, 6.0).notch_filter([50.0], verbose="error")
    events, event_id = mne.events_from_annotations(raw, verbose="error")
    raw, events = raw.resample(250.0, events=events, verbose="error")
    names = {code: name for name, code in event_id.items()}

    assert recording.layout == "continuous" and recording.sfreq == 250.0
    np.testing.assert_allclose(recording.data, f32(raw.get_data()), rtol=1e-6, atol=0)
    assert recording.events["sample"].tolist() == (events[:, 0] - raw.first_samp).tolist()
    assert recording.events["stimulus_id"].tolist() == [names[c] for c in events[:, 2]]
    assert [s["step"] for s in recording.preprocessing] == ["crop", "notch_filter", "resample"]
    assert recording.preprocessing[1]["freqs"] == [50.0]


def test_robust_scaling_and_clamp_equal_sklearn(real_data):
    from sklearn.preprocessing import RobustScaler

    path = real_data / "brainvision/testbva.vhdr"
    # These EEG traces stay within about 0.7 IQR of their median: a clamp at 0.5 bites.
    recording = read_recording(path, {"preprocessing": {"robust_scale": True, "clamp": 0.5}})
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    data = raw.get_data()
    scaled_channels = np.isin(raw.get_channel_types(), ["eeg", "eog", "ecg", "emg"])
    assert scaled_channels.any()
    expected = data.copy()
    expected[scaled_channels] = np.clip(RobustScaler().fit_transform(data[scaled_channels].T).T, -0.5, 0.5)
    np.testing.assert_allclose(recording.data, f32(expected), rtol=1e-6, atol=1e-7)
    assert np.abs(recording.data[scaled_channels]).max() == pytest.approx(0.5)
    np.testing.assert_array_equal(recording.data[~scaled_channels], f32(data[~scaled_channels]))  # misc unscaled
    assert [u for u, s in zip(recording.units, scaled_channels) if s] == ["a.u."] * int(scaled_channels.sum())
    scale_step, clamp_step = recording.preprocessing
    assert scale_step["step"] == "robust_scale" and clamp_step == {
        "step": "clamp", "limit": 0.5, "n_values_clipped": int(np.sum(np.abs(
            RobustScaler().fit_transform(data[scaled_channels].T)) > 0.5)),
    }

    # Trials: each channel is scaled over all trials and times together.
    epochs = mne.read_epochs_eeglab(real_data / "eeglab/test_epochs.set", verbose="error")
    trials = recording_from_epochs(epochs, options={"preprocessing": {"robust_scale": True}})
    values = epochs.get_data()
    flat = values.transpose(0, 2, 1).reshape(-1, values.shape[1])
    expected = RobustScaler().fit_transform(flat).reshape(values.shape[0], values.shape[2], -1).transpose(0, 2, 1)
    np.testing.assert_allclose(trials.data, f32(expected), rtol=1e-6, atol=1e-7)


def test_personal_data_dropped_unless_kept(real_data, tmp_path):
    path = real_data / "bdf/multiple_annotation_chans.bdf"
    raw = mne.io.read_raw(path, verbose="error")
    assert raw.info["subject_info"]["last_name"] == "OPSA614"  # what must not leak

    study = ingest([path], tmp_path / "anonymous.zarr")
    info = study.recordings()[0].attrs["info"]
    assert "meas_date" not in info and "subject_info" not in info
    stored_text = b"".join(p.read_bytes() for p in Path(study.url).rglob("*") if p.is_file())
    assert b"OPSA614" not in stored_text and b"2019-12-15" not in stored_text
    # Useful, non-personal metadata stay.
    assert info["lowpass"] == raw.info["lowpass"] and info["original_sfreq"] == raw.info["sfreq"]

    kept = ingest([path], tmp_path / "personal.zarr", options={"keep_personal": True}).recordings()[0]
    assert kept.attrs["info"]["meas_date"] == raw.info["meas_date"].isoformat()
    assert kept.attrs["info"]["subject_info"]["last_name"] == "OPSA614"
    assert kept.attrs["info"]["subject_info"]["birthday"] == "2000-01-01"
    # Anonymising shifts dates only: the events are the same either way.
    assert kept.events["sample"].tolist() == study.recordings()[0].events["sample"].tolist()
    restored = to_mne(kept)
    assert restored.info["meas_date"] == raw.info["meas_date"]
    assert restored.info["subject_info"]["last_name"] == "OPSA614"
    assert to_mne(study.recordings()[0]).info["meas_date"] is None


# ------------------------------------------------------------------ fMRI
def _save(tmp_path: Path, name: str, values: np.ndarray, affine: np.ndarray) -> Path:
    path = tmp_path / name
    nibabel.save(nibabel.Nifti1Image(values, affine), path)
    return path


def test_glm_betas_equal_independent_least_squares(tmp_path):
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    rng = np.random.default_rng(7)
    tr, n_scans, shape = 2.0, 90, (3, 3, 2)
    onsets = np.array([10.0, 32.0, 50.0, 74.0, 96.0, 120.0, 140.0])
    table = pd.DataFrame({"onset": onsets, "duration": 2.0, "trial_type": [f"img{i}" for i in range(len(onsets))]})
    design = make_first_level_design_matrix(np.arange(n_scans) * tr, table, hrf_model="glover",
                                            drift_model="cosine", high_pass=0.01)
    trial_columns = [f"img{i}" for i in range(len(onsets))]
    n_voxels = int(np.prod(shape))
    true_betas = rng.normal(size=(len(onsets), n_voxels))
    series = design[trial_columns].to_numpy() @ true_betas + 100.0 + 0.05 * rng.normal(size=(n_scans, n_voxels))
    image = _save(tmp_path, "bold.nii.gz", series.T.reshape(*shape, n_scans), np.diag([3.0, 3.0, 3.0, 1.0]))
    mask = _save(tmp_path, "mask.nii.gz", np.ones(shape, dtype=np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))
    events = tmp_path / "events.tsv"
    table.to_csv(events, sep="\t", index=False)

    recording = recording_from_nifti(image, events=events, mask=mask,
                                     options={"fmri": {"method": "glm", "tr": tr}, "events": {"rule": "{trial_type}"}})
    independent = np.linalg.lstsq(design.to_numpy(), series, rcond=None)[0]
    expected = independent[[design.columns.get_loc(c) for c in trial_columns]]
    np.testing.assert_allclose(recording.data, f32(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recording.data, true_betas, atol=0.2)  # and they recover the truth
    assert recording.events["stimulus_id"].tolist() == trial_columns
    np.testing.assert_allclose(recording.events["onset"], onsets)
    assert recording.sfreq == pytest.approx(1 / tr)
    glm = recording.preprocessing[-1]
    assert glm["step"] == "glm" and glm["noise_model"] == "ols" and glm["hrf_model"] == "glover"


def test_hrf_shift_average_equals_hand_computation(real_data, tmp_path):
    import pandas as pd

    path = real_data / "nifti/functional.nii"
    image = nibabel.load(path)
    volumes = image.get_fdata()
    mask_values = volumes.mean(axis=3) > 2000
    mask = _save(tmp_path, "mask.nii", mask_values.astype(np.uint8), image.affine)
    events = pd.DataFrame({"onset": [0.0, 10.0, 20.0], "duration": [6.0, 4.0, 6.0], "trial_type": ["a", "b", "c"]})
    options = {"fmri": {"method": "hrf_shift", "hrf_delay": 4.0, "mask": str(mask)}}
    recording = recording_from_nifti(path, events=events, options=options)

    # TR 2 s: volumes at 0, 2, 4, ... s. Trial a: [4, 10) s -> volumes 2, 3, 4;
    # trial b: [14, 18) s -> 7, 8; trial c: [24, 30) s -> 12, 13, 14.
    masked = volumes[mask_values]
    expected = np.stack([masked[:, [2, 3, 4]].mean(1), masked[:, [7, 8]].mean(1), masked[:, [12, 13, 14]].mean(1)])
    np.testing.assert_allclose(recording.data, f32(expected), rtol=1e-6)
    np.testing.assert_array_equal(recording.voxel_ijk, np.argwhere(mask_values))

    # A fixed window of one TR replaces the durations: one volume per trial.
    options["fmri"]["window"] = 2.0
    single = recording_from_nifti(path, events=events, options=options)
    np.testing.assert_allclose(single.data, f32(masked[:, [2, 7, 12]].T), rtol=1e-6)

    late = pd.DataFrame({"onset": [100.0], "duration": [4.0], "trial_type": ["a"]})
    with pytest.raises(EventError, match="no volume"):
        recording_from_nifti(path, events=late, options=options)


def test_masks_that_do_not_fit_raise_mask_error(real_data, tmp_path):
    path = real_data / "nifti/someones_epi.nii.gz"
    image = nibabel.load(path)
    other_shape = _save(tmp_path, "small.nii.gz", np.ones((17, 21, 3), dtype=np.uint8), image.affine)
    with pytest.raises(MaskError, match=r"small.nii.gz has shape \(17, 21, 3\)"):
        read_recording(path, {"fmri": {"mask": str(other_shape)}})
    shifted = image.affine.copy()
    shifted[:3, 3] += 6.0
    other_grid = _save(tmp_path, "shifted.nii.gz", np.ones(image.shape, dtype=np.uint8), shifted)
    with pytest.raises(MaskError, match="another grid"):
        read_recording(path, {"fmri": {"mask": str(other_grid)}})
    empty = _save(tmp_path, "empty.nii.gz", np.zeros(image.shape, dtype=np.uint8), image.affine)
    with pytest.raises(MaskError, match="selects no voxel"):
        read_recording(path, {"fmri": {"mask": str(empty)}})
