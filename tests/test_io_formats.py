"""Every real recording in the shared test folder, ingested and compared with what MNE,
mne-bids or nibabel return for the same file (and with the checksums of MANIFEST.tsv)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from neurodec.errors import EventError
from neurodec.io import ingest, read_recording, recording_from_raw
from neurodec.store import open_store

mne = pytest.importorskip("mne")


def manifest_sha256(real_data: Path) -> dict[str, str]:
    with open(real_data / "MANIFEST.tsv", newline="") as handle:
        return {row["path"]: row["sha256"] for row in csv.DictReader(handle, delimiter="\t")}


def f32(values) -> np.ndarray:
    return np.asarray(values).astype(np.float32)


def ingest_one(real_data: Path, tmp_path: Path, relative: str, options=None):
    study = ingest([real_data / relative], tmp_path / "study.zarr", options=options)
    (recording,) = study.recordings()
    return study, recording


# (file, how MNE finds its events: "annotations" | "stim" | None, extra options)
RAW_FILES = [
    ("edf/test_edf_overlapping_annotations.edf", "annotations", {}),
    ("edf/test_reduced.edf", "annotations", {}),
    ("edf/test_utf8_annotations.edf", "annotations", {}),
    ("bdf/multiple_annotation_chans.bdf", "annotations", {}),
    ("bdf/test_bdf_stim_channel.bdf", "stim", {}),
    ("brainvision/test.vhdr", "annotations", {}),
    ("brainvision/testbva.vhdr", "annotations", {}),
    ("eeglab/test_raw.set", "annotations", {}),
    ("kit/test_as-raw.con", "stim", {}),
    ("fif/sample_audvis_trunc_raw_sss.fif", None, {}),
    ("fif/sample_ecog_ieeg.fif", None, {}),
    ("fif/somMDYO-18av.ds_raw.fif", "stim", {"events": {"source": "stim", "shortest_event": 1}}),
]


@pytest.mark.parametrize("relative, event_origin, options", RAW_FILES, ids=[f[0] for f in RAW_FILES])
def test_raw_file_matches_mne(real_data, tmp_path, relative, event_origin, options):
    study, recording = ingest_one(real_data, tmp_path, relative, options)
    raw = mne.io.read_raw(real_data / relative, preload=True, verbose="error")

    assert recording.layout == "continuous"
    np.testing.assert_array_equal(recording.data[...], f32(raw.get_data()))
    assert recording.ch_names == raw.ch_names
    assert recording.ch_types == raw.get_channel_types()
    assert recording.sfreq == raw.info["sfreq"]
    assert recording.attrs["bads"] == raw.info["bads"]
    assert recording.source["sha256"] == manifest_sha256(real_data)[relative]
    assert recording.attrs["info"]["first_samp"] == raw.first_samp

    events = recording.events
    if event_origin == "annotations":
        mne_events, event_id = mne.events_from_annotations(raw, verbose="error")
        description_of = {code: name for name, code in event_id.items()}
        assert events["sample"].tolist() == (mne_events[:, 0] - raw.first_samp).tolist()
        assert events["stimulus_id"].tolist() == [description_of[c] for c in mne_events[:, 2]]
    elif event_origin == "stim":
        shortest = options.get("events", {}).get("shortest_event", 2)
        mne_events = mne.find_events(raw, shortest_event=shortest, initial_event=True, verbose="error")
        mne_events = mne_events[mne_events[:, 2] != 0]
        assert len(mne_events) > 0
        assert events["sample"].tolist() == (mne_events[:, 0] - raw.first_samp).tolist()
        assert events["stimulus_id"].tolist() == [str(v) for v in mne_events[:, 2]]
    else:
        assert events.n_rows == 0
    # The stimuli table holds exactly the stimuli the events name (rule "{trial_type}").
    assert sorted(study.stimuli["id"].tolist()) == sorted(set(events["stimulus_id"].tolist()))


def test_companion_files_are_checksummed(real_data, tmp_path):
    sha = manifest_sha256(real_data)
    _, bva = ingest_one(real_data, tmp_path, "brainvision/testbva.vhdr")
    assert bva.source["companions"] == {
        "testbva.dat": sha["brainvision/testbva.dat"],
        "testbva.vmrk": sha["brainvision/testbva.vmrk"],
    }
    eeglab = read_recording(real_data / "eeglab/test_raw.set")
    assert eeglab.source["companions"] == {"test_raw.fdt": sha["eeglab/test_raw.fdt"]}
    assert eeglab.source["format"] == "eeglab"


def test_modality_and_positions_follow_channel_types(real_data):
    ecog = read_recording(real_data / "fif/sample_ecog_ieeg.fif")
    raw = mne.io.read_raw(real_data / "fif/sample_ecog_ieeg.fif", verbose="error")
    assert ecog.modality == "ieeg"
    # iEEG contacts are stored by MNE in the head frame: positions are loc[:3] as is.
    expected = np.array([ch["loc"][:3] for ch in raw.info["chs"]])
    np.testing.assert_allclose(ecog.sensor_positions, expected)

    meg = read_recording(real_data / "fif/sample_audvis_trunc_raw_sss.fif")
    raw = mne.io.read_raw(real_data / "fif/sample_audvis_trunc_raw_sss.fif", verbose="error")
    assert meg.modality == "meg"
    trans = raw.info["dev_head_t"]["trans"]
    picks = mne.pick_types(raw.info, meg=True)
    for index in picks[:20]:
        device = raw.info["chs"][index]["loc"][:3]
        np.testing.assert_allclose(meg.sensor_positions[index], trans[:3, :3] @ device + trans[:3, 3], atol=1e-12)
    stim = mne.pick_types(raw.info, meg=False, stim=True)
    assert np.isnan(meg.sensor_positions[stim]).all()  # no location: NaN rows
    assert meg.info["coil_types"] == [int(ch["coil_type"]) for ch in raw.info["chs"]]
    expected_units = {"mag": "T", "grad": "T/m", "eeg": "V"}
    assert {expected_units[t] for t, u in zip(meg.ch_types, meg.units) if t in expected_units} == {"T", "T/m", "V"}
    assert all(u == expected_units[t] for t, u in zip(meg.ch_types, meg.units) if t in expected_units)
    np.testing.assert_allclose(meg.info["dev_head_t"], trans)

    edf = read_recording(real_data / "edf/test_reduced.edf")
    assert np.isnan(edf.sensor_positions).all()  # EDF stores no positions


def test_eeglab_epochs_match_mne(real_data, tmp_path):
    _, recording = ingest_one(real_data, tmp_path, "eeglab/test_epochs.set")
    epochs = mne.read_epochs_eeglab(real_data / "eeglab/test_epochs.set", verbose="error")
    names = {code: name for name, code in epochs.event_id.items()}
    assert recording.layout == "epoched"
    np.testing.assert_array_equal(recording.data[...], f32(epochs.get_data()))
    assert recording.tmin == pytest.approx(epochs.tmin)
    assert recording.events["stimulus_id"].tolist() == [names[c] for c in epochs.events[:, 2]]
    assert recording.events["value"].tolist() == [str(c) for c in epochs.events[:, 2]]


def test_evoked_files_store_every_condition(real_data, tmp_path):
    import gzip

    study, recording = ingest_one(real_data, tmp_path, "fif/test-ave.fif.gz")
    # MNE reads a gzip stream slowly (it seeks); the reference reads a decompressed copy.
    plain = tmp_path / "test-ave.fif"
    plain.write_bytes(gzip.decompress((real_data / "fif/test-ave.fif.gz").read_bytes()))
    evokeds = mne.read_evokeds(plain, verbose="error")
    assert recording.layout == "epoched" and recording.shape == (4, 376, 421)
    np.testing.assert_array_equal(recording.data[...], f32(np.stack([e.data for e in evokeds])))
    assert recording.events["stimulus_id"].tolist() == [e.comment for e in evokeds]
    assert recording.attrs["info"]["nave"] == [e.nave for e in evokeds]
    assert recording.tmin == pytest.approx(evokeds[0].tmin)
    assert recording.sfreq == evokeds[0].info["sfreq"]
    assert sorted(study.stimuli["id"].tolist()) == sorted(e.comment for e in evokeds)

    # An ERP CORE file: BIDS entities in its name give the labels; a rule names conditions.
    p3 = read_recording(real_data / "fif/sub-015_ses-P3_task-P3_ave.fif", {"events": {"rule": "condition-{condition}"}})
    evokeds = mne.read_evokeds(real_data / "fif/sub-015_ses-P3_task-P3_ave.fif", verbose="error")
    assert (p3.subject, p3.session, p3.task) == ("015", "P3", "P3")
    assert p3.events["stimulus_id"].tolist() == ["condition-0", "condition-1", "condition-2"]
    assert p3.info["nave"] == [40, 160, 32] == [e.nave for e in evokeds]
    np.testing.assert_array_equal(f32(p3.data), f32(np.stack([e.data for e in evokeds])))


def test_event_files_of_the_sample_raw(real_data, tmp_path):
    """The -eve.fif files count samples of the full MNE sample raw; they fall outside the
    1-second SSS excerpt (checked), so they are read onto a synthetic raw that covers them."""
    sss = mne.io.read_raw(real_data / "fif/sample_audvis_trunc_raw_sss.fif", verbose="error")
    for name in ("sample_audvis_trunc_raw-eve.fif", "test_raw-eve.fif"):
        events_file = real_data / "fif" / name
        mne_events = mne.read_events(events_file)
        assert mne_events[:, 0].min() > sss.first_samp + sss.n_times  # outside the excerpt
        with pytest.raises(EventError, match="outside the recording"):
            read_recording(real_data / "fif/sample_audvis_trunc_raw_sss.fif", {"events": {"file": str(events_file)}})

        first_samp = int(mne_events[:, 0].min()) - 100
        n_times = int(mne_events[:, 0].max()) - first_samp + 100
        info = mne.create_info(["EEG 001", "EEG 002"], 600.614990234375, "eeg")
        rng = np.random.default_rng(0)
        raw = mne.io.RawArray(rng.normal(size=(2, n_times)) * 1e-6, info, first_samp=first_samp, verbose="error")
        recording = recording_from_raw(raw, options={"events": {"file": str(events_file)}})
        stimulus_events = mne_events[mne_events[:, 2] != 0]  # 0 marks a trigger's return to rest
        assert recording.events["sample"].tolist() == (stimulus_events[:, 0] - first_samp).tolist()
        assert recording.events["stimulus_id"].tolist() == [str(v) for v in stimulus_events[:, 2]]
        np.testing.assert_allclose(recording.events["onset"], (stimulus_events[:, 0] - first_samp) / info["sfreq"])


def test_bids_folder_through_mne_bids(real_data, tmp_path):
    mne_bids = pytest.importorskip("mne_bids")
    root = real_data / "bids/eeg_edf_bids"
    study = ingest([root], tmp_path / "bids.zarr", options={"keep_personal": True})
    (recording,) = study.recordings()
    bids_path = mne_bids.BIDSPath(subject="S1", session="01", task="Experiment", run="01", datatype="eeg", root=root)
    raw = mne_bids.read_raw_bids(bids_path, verbose="error")
    assert (recording.subject, recording.session, recording.run, recording.attrs["task"]) == ("S1", "01", "01", "Experiment")
    np.testing.assert_array_equal(recording.data[...], f32(raw.get_data()))
    assert recording.ch_names == raw.ch_names and recording.ch_types == raw.get_channel_types()
    assert recording.attrs["info"]["participant"] == {"participant_id": "sub-S1", "Gender": "M", "Age": "32"}
    sha = manifest_sha256(real_data)
    companions = recording.source["companions"]
    assert companions["sub-S1_ses-01_task-Experiment_run-01_channels.tsv"] == sha[
        "bids/eeg_edf_bids/sub-S1/ses-01/eeg/sub-S1_ses-01_task-Experiment_run-01_channels.tsv"
    ]
    # Without keep_personal the participants row (age, sex) is not copied.
    default = ingest([root], tmp_path / "plain.zarr").recordings()[0]
    assert "participant" not in default.attrs["info"]


def test_bids_sidecars_as_events_and_channel_metadata(real_data, tmp_path):
    """ds000248 ships sidecars only: its events.tsv and channels.tsv are applied to a
    synthetic raw with some of its channels, at its sampling frequency."""
    folder = real_data / "bids/ds000248_sidecars/sub-01/meg"
    events_tsv = folder / "sub-01_task-audiovisual_run-01_events.tsv"
    channels_tsv = folder / "sub-01_task-audiovisual_run-01_channels.tsv"
    names = ["MEG 0113", "MEG 0111", "MEG 2443", "EEG 053", "EEG 001", "STI 014", "EOG 061"]
    sfreq = 600.614990234375
    raw = mne.io.RawArray(
        np.random.default_rng(1).normal(size=(len(names), int(240 * sfreq))) * 1e-12,
        mne.create_info(names, sfreq, "misc"),
        verbose="error",
    )
    table = tmp_path / "stimuli.tsv"
    table.write_text(
        "trial_type\tstimulus_id\tcategory\tsplit\n"
        "Auditory/Left\ttone-left\tauditory\ttrain\nAuditory/Right\ttone-right\tauditory\ttrain\n"
        "Visual/Left\tcheck-left\tvisual\ttest\nVisual/Right\tcheck-right\tvisual\ttest\n"
    )
    options = {
        "channels_file": str(channels_tsv),
        "stimuli": str(table),
        "events": {"source": "file", "file": str(events_tsv), "ignore": ["Button", "Smiley"]},
    }
    recording = recording_from_raw(raw, options=options)
    assert recording.ch_types == ["grad", "mag", "grad", "eeg", "eeg", "stim", "eog"]
    assert recording.bads == ["MEG 2443", "EEG 053"]

    import pandas as pd

    tsv = pd.read_csv(events_tsv, sep="\t", encoding="utf-8-sig")
    kept = tsv[~tsv["trial_type"].isin(["Button", "Smiley"])]
    # The dataset's own "sample" column (written by mne-bids) equals onset x sfreq, rounded.
    assert recording.events["sample"].tolist() == kept["sample"].tolist()
    mapping = {"Auditory/Left": "tone-left", "Auditory/Right": "tone-right",
               "Visual/Left": "check-left", "Visual/Right": "check-right"}
    assert recording.events["stimulus_id"].tolist() == [mapping[t] for t in kept["trial_type"]]
    assert recording.events["value"].tolist() == [str(v) for v in kept["value"]]

    # Smiley is a stimulus the table does not list: naming it is an error, not a silent drop.
    options["events"]["ignore"] = ["Button"]
    with pytest.raises(EventError, match="Smiley"):
        recording_from_raw(raw, options=options)


def test_nifti_beta_maps_match_nibabel(real_data, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from nilearn.masking import compute_epi_mask

    path = real_data / "nifti/example4d.nii.gz"
    study, recording = ingest_one(real_data, tmp_path, "nifti/example4d.nii.gz")
    image = nibabel.load(path)
    mask = compute_epi_mask(image).get_fdata() > 0
    assert recording.layout == "fmri" and recording.modality == "fmri"
    np.testing.assert_array_equal(recording.mask, mask)
    np.testing.assert_array_equal(recording.voxel_ijk, np.argwhere(mask))
    np.testing.assert_array_equal(recording.affine, image.affine)
    np.testing.assert_array_equal(recording.data[...], f32(image.get_fdata()[mask].T))
    assert recording.events["stimulus_id"].tolist() == ["example4d_000", "example4d_001"]
    assert recording.source["sha256"] == manifest_sha256(real_data)["nifti/example4d.nii.gz"]

    # A 3D EPI volume as one beta map, with the computed mask and with a mask file.
    epi_path = real_data / "nifti/someones_epi.nii.gz"
    epi = nibabel.load(epi_path)
    computed = read_recording(epi_path)
    epi_mask = compute_epi_mask(epi).get_fdata() > 0
    np.testing.assert_array_equal(computed.data, f32(epi.get_fdata()[epi_mask][None, :]))
    given_mask = epi.get_fdata() > 50
    mask_path = tmp_path / "mask.nii.gz"
    nibabel.save(nibabel.Nifti1Image(given_mask.astype(np.uint8), epi.affine), mask_path)
    given = read_recording(epi_path, {"fmri": {"mask": str(mask_path)}})
    assert given.data.shape == (1, int(given_mask.sum()))
    np.testing.assert_array_equal(given.data, f32(epi.get_fdata()[given_mask][None, :]))
    assert "mask.nii.gz" in given.source["companions"]


@pytest.mark.parametrize("name", ["functional.nii", "nipy_functional.nii.gz"])
def test_nifti_series_volumes_as_betas(real_data, name):
    nibabel = pytest.importorskip("nibabel")
    from nilearn.masking import compute_epi_mask

    image = nibabel.load(real_data / "nifti" / name)
    # Three slices only: the default opening would erode the whole brain away.
    recording = read_recording(real_data / "nifti" / name, {"fmri": {"method": "betas", "mask_opening": 0}})
    mask = compute_epi_mask(image, opening=False).get_fdata() > 0
    assert recording.data.shape == (20, int(mask.sum()))
    np.testing.assert_array_equal(recording.data, f32(image.get_fdata()[mask].T))


def test_store_holds_what_was_read(real_data, tmp_path):
    """Reading the store back gives the RecordingData written, field by field."""
    recording = read_recording(real_data / "brainvision/test.vhdr")
    study = ingest([real_data / "brainvision/test.vhdr"], tmp_path / "s.zarr")
    stored = open_store(study.url).recordings()[0]
    np.testing.assert_array_equal(stored.data[...], recording.data)
    assert stored.units == recording.units
    np.testing.assert_array_equal(stored.sensor_positions, recording.sensor_positions)
    assert stored.events["stimulus_id"].tolist() == recording.events["stimulus_id"].tolist()


def test_bids_named_file_uses_the_events_tsv_beside_it(real_data, tmp_path):
    """A BIDS-named recording given as a file (not through its BIDS folder) still takes its
    events from the events.tsv next to it; labels come from the name."""
    import shutil

    events_tsv = real_data / "bids/ds000248_sidecars/sub-01/meg/sub-01_task-audiovisual_run-01_events.tsv"
    shutil.copy(events_tsv, tmp_path / "sub-01_task-audiovisual_run-01_events.tsv")
    sfreq = 600.614990234375
    raw = mne.io.RawArray(np.zeros((2, int(240 * sfreq))), mne.create_info(["EEG 001", "EEG 002"], sfreq, "eeg"),
                          verbose="error")
    path = tmp_path / "sub-01_task-audiovisual_run-01_meg.fif"
    raw.save(path, verbose="error")
    recording = read_recording(path, {"events": {"rule": "{value}"}})
    import pandas as pd

    tsv = pd.read_csv(events_tsv, sep="\t", encoding="utf-8-sig")
    assert (recording.subject, recording.run, recording.task) == ("01", "01", "audiovisual")
    assert recording.events["sample"].tolist() == tsv["sample"].tolist()
    assert recording.events["stimulus_id"].tolist() == [str(v) for v in tsv["value"]]
    assert "sub-01_task-audiovisual_run-01_events.tsv" in recording.source["companions"]
