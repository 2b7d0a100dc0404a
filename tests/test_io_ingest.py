"""The ingest() entry point: stores written, round trips to MNE, bad input refused with the
specific error, an existing store never damaged, and the options model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from neurodec.errors import (
    ChannelMismatchError,
    ConfigError,
    EventError,
    InputFileError,
    InvalidDataError,
    StoreExistsError,
)
from neurodec.io import (
    IngestOptions,
    check_channel_sets,
    ingest,
    load_options,
    options_from_flags,
    read_recording,
    recording_from_raw,
    to_mne,
)
from neurodec.store import open_store

mne = pytest.importorskip("mne")

EDF = "edf/test_edf_overlapping_annotations.edf"


def f32(values) -> np.ndarray:
    return np.asarray(values).astype(np.float32)


def store_checksum(url: str) -> str:
    """Every file of a local store (names and bytes): the manifest and all data chunks."""
    digest = hashlib.sha256()
    root = Path(url)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ round trips
def test_round_trip_continuous_edf(real_data, tmp_path):
    raw = mne.io.read_raw(real_data / EDF, preload=True, verbose="error")
    study = ingest([real_data / EDF], tmp_path / "edf.zarr")
    back = to_mne(study.recording(subject="01"))

    assert isinstance(back, mne.io.RawArray)
    np.testing.assert_array_equal(back.get_data(), f32(raw.get_data()))
    assert back.ch_names == raw.ch_names and back.get_channel_types() == raw.get_channel_types()
    assert back.info["sfreq"] == raw.info["sfreq"]
    # Onsets are stored as samples: equal to the original within half a sample, and the
    # events MNE derives from the annotations are identical.
    np.testing.assert_allclose(back.annotations.onset, raw.annotations.onset, rtol=0, atol=0.5 / raw.info["sfreq"])
    back_events, back_id = mne.events_from_annotations(back, verbose="error")
    events, event_id = mne.events_from_annotations(raw, verbose="error")
    np.testing.assert_array_equal(back_events, events)
    assert back_id == event_id
    np.testing.assert_allclose(back.annotations.duration, raw.annotations.duration)
    assert list(back.annotations.description) == list(raw.annotations.description)


def test_round_trip_meg_keeps_locations_and_coil_types(real_data, tmp_path):
    path = real_data / "fif/sample_audvis_trunc_raw_sss.fif"
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    back = to_mne(ingest([path], tmp_path / "meg.zarr").recordings()[0])

    np.testing.assert_array_equal(back.get_data(), f32(raw.get_data()))
    assert back.ch_names == raw.ch_names and back.get_channel_types() == raw.get_channel_types()
    for restored, original in zip(back.info["chs"], raw.info["chs"]):
        np.testing.assert_array_equal(restored["loc"], original["loc"])
        assert restored["coil_type"] == original["coil_type"]
    np.testing.assert_allclose(back.info["dev_head_t"]["trans"], raw.info["dev_head_t"]["trans"])
    # Coil types are what MNE's 2-D layouts are chosen from.
    assert mne.channels.find_layout(back.info, ch_type="grad").kind == mne.channels.find_layout(
        raw.info, ch_type="grad"
    ).kind
    assert back.info["highpass"] == raw.info["highpass"] and back.info["lowpass"] == raw.info["lowpass"]


def test_round_trip_epochs(real_data, tmp_path):
    options = {"epochs": {"tmin": -0.1, "tmax": 0.4}}
    study = ingest([real_data / EDF], tmp_path / "epochs.zarr", options=options)
    stored = study.recordings()[0]
    back = to_mne(stored)

    raw = mne.io.read_raw(real_data / EDF, preload=True, verbose="error")
    events, event_id = mne.events_from_annotations(raw, verbose="error")
    epochs = mne.Epochs(raw, events, event_id, tmin=-0.1, tmax=0.4, baseline=None, preload=True, verbose="error")
    names = {code: name for name, code in event_id.items()}
    assert isinstance(back, mne.EpochsArray)
    np.testing.assert_array_equal(back.get_data(), f32(epochs.get_data()))
    assert back.tmin == pytest.approx(epochs.tmin) and back.ch_names == epochs.ch_names
    back_names = {code: name for name, code in back.event_id.items()}
    assert [back_names[c] for c in back.events[:, 2]] == [names[c] for c in epochs.events[:, 2]]
    np.testing.assert_array_equal(back.events[:, 0], epochs.events[:, 0])
    assert back.metadata["stimulus_id"].tolist() == stored.events["stimulus_id"].tolist()
    assert back.metadata["repetition"].tolist() == stored.events["repetition"].tolist()


# ------------------------------------------------------------------ several runs, stimuli, append
def test_several_files_become_runs_with_repetitions_across_runs(real_data, tmp_path):
    table = tmp_path / "stimuli.csv"
    table.write_text("value,stimulus_id,category,split,kind,uri\n"
                     "T0,rest,baseline,train,image,rest.png\nT1,left-fist,motor,train,image,left.png\n"
                     "T2,right-fist,motor,test,image,right.png\nT9,never-shown,motor,test,image,x.png\n")
    study = ingest([real_data / EDF, real_data / EDF], tmp_path / "runs.zarr", options={"stimuli": str(table)})
    assert study.recording_keys == ["sub-01/ses-01/run-01", "sub-01/ses-01/run-02"]
    stimuli = study.stimuli.to_pandas().set_index("id")
    assert list(stimuli.index) == ["rest", "left-fist", "right-fist", "never-shown"]  # the whole table
    assert stimuli.loc["right-fist", "split"] == "test" and stimuli.loc["left-fist", "uri"] == "left.png"
    assert stimuli.loc["rest", "category"] == "baseline"

    first, second = (r.events for r in study.recordings())
    counts = {s: int(np.sum(first["stimulus_id"] == s)) for s in ("rest", "left-fist", "right-fist")}
    for stimulus, count in counts.items():
        # Second presentations to the same subject continue the count of the first run.
        assert second["repetition"][second["stimulus_id"] == stimulus].tolist() == list(range(count, 2 * count))


def test_append_adds_a_run(real_data, tmp_path):
    out = tmp_path / "study.zarr"
    ingest([real_data / EDF], out)
    study = ingest([real_data / EDF], out, append=True)
    assert study.recording_keys == ["sub-01/ses-01/run-01", "sub-01/ses-01/run-02"]
    np.testing.assert_array_equal(study.recordings()[1].data[...], study.recordings()[0].data[...])
    with pytest.raises(StoreExistsError):
        ingest([real_data / EDF], out)  # a new store over an existing one needs overwrite=True
    replaced = ingest([real_data / "edf/test_utf8_annotations.edf"], out, overwrite=True)
    assert replaced.recording_keys == ["sub-01/ses-01/run-01"] and replaced.recordings()[0].shape == (11, 2000)


def test_failed_append_leaves_store_unchanged(real_data, tmp_path):
    out = tmp_path / "study.zarr"
    ingest([real_data / EDF], out)
    before = store_checksum(str(out))
    manifest = open_store(out).manifest

    # Events naming stimuli the store does not hold.
    with pytest.raises(EventError, match="does not hold"):
        ingest([real_data / EDF], out, append=True, options={"events": {"rule": "new-{trial_type}"}})
    # A run of the same subject with other channels.
    with pytest.raises(ChannelMismatchError, match="channels differ"):
        ingest([real_data / "edf/test_utf8_annotations.edf"], out, append=True, options={"events": {"source": "none"}})
    # A good file followed by a corrupt one: nothing of the good one is written either.
    broken = tmp_path / "broken.edf"
    broken.write_bytes((real_data / EDF).read_bytes()[:5000])
    with pytest.raises(InputFileError, match="broken.edf"):
        ingest([real_data / EDF, broken], out, append=True)

    assert store_checksum(str(out)) == before
    assert open_store(out).manifest == manifest


# ------------------------------------------------------------------ bad input
def test_corrupt_edf_copies_raise_input_file_error(real_data, tmp_path):
    original = (real_data / EDF).read_bytes()
    truncated = tmp_path / "truncated.edf"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(InputFileError, match=r"truncated\.edf: truncated EDF file: its header promises 124 data records"):
        read_recording(truncated)

    garbled = tmp_path / "garbled.edf"
    header = bytearray(original)
    header[236:244] = b"garbage!"  # the number of data records
    garbled.write_bytes(bytes(header))
    with pytest.raises(InputFileError, match="garbled.edf"):
        read_recording(garbled)

    with pytest.raises(InputFileError, match="does not exist"):
        ingest([tmp_path / "absent.edf"], tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()


def test_nan_samples_raise_invalid_data_error(tmp_path):
    info = mne.create_info(["Fz", "Cz", "Pz"], 100.0, "eeg")
    data = np.random.default_rng(0).normal(size=(3, 500)) * 1e-6
    data[1, 10:13] = np.nan
    raw = mne.io.RawArray(data, info, verbose="error")
    with pytest.raises(InvalidDataError, match=r"Cz \(3\)"):
        recording_from_raw(raw)
    path = tmp_path / "with_nan_raw.fif"
    raw.save(path, verbose="error")
    with pytest.raises(InvalidDataError, match="with_nan_raw.fif"):
        ingest([path], tmp_path / "nan.zarr")
    assert not (tmp_path / "nan.zarr").exists()


def test_channel_sets_of_one_subject_must_match(real_data, tmp_path):
    with pytest.raises(ChannelMismatchError, match="missing"):
        ingest([real_data / "edf/test_utf8_annotations.edf", real_data / "bdf/test_bdf_stim_channel.bdf"],
               tmp_path / "mismatch.zarr")
    # Different subjects may differ.
    study = ingest([real_data / "edf/test_utf8_annotations.edf"], tmp_path / "a.zarr", options={"subject": "02"})
    assert study.subjects == ["02"]

    # The same set in another order is reordered to the first run's order.
    info = mne.create_info(["Fz", "Cz", "Pz"], 100.0, "eeg")
    data = np.arange(3 * 50, dtype=float).reshape(3, 50) * 1e-6
    first = recording_from_raw(mne.io.RawArray(data, info, verbose="error"), options={"run": "01"})
    swapped = mne.io.RawArray(data[[2, 0, 1]], mne.create_info(["Pz", "Fz", "Cz"], 100.0, "eeg"), verbose="error")
    second = recording_from_raw(swapped, options={"run": "02"})
    check_channel_sets([first, second])
    assert second.ch_names == ["Fz", "Cz", "Pz"]
    np.testing.assert_array_equal(second.data, first.data)


def test_unknown_stimuli_raise_event_error(real_data, tmp_path):
    table = tmp_path / "stimuli.tsv"
    table.write_text("trial_type\tstimulus_id\nT0\trest\nT1\tleft\n")
    with pytest.raises(EventError, match=r"\['T2'\]"):
        ingest([real_data / EDF], tmp_path / "s.zarr", options={"stimuli": str(table)})
    assert not (tmp_path / "s.zarr").exists()
    dropped = read_recording(real_data / EDF, {"stimuli": str(table), "events": {"unmapped": "drop"}})
    assert set(dropped.events["stimulus_id"].tolist()) == {"rest", "left"}


# ------------------------------------------------------------------ options
def test_options_refuse_unknown_keys_and_load_from_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"events\.bogus: .*unknown key"):
        load_options({"events": {"bogus": 1}})
    with pytest.raises(ConfigError, match=r"epochs\.tmax"):
        load_options({"epochs": {"tmin": 0.5}})
    path = tmp_path / "ingest.yaml"
    path.write_text(
        "subject: 01\nkind: audio\nevents:\n  source: stim\n  ignore: [0, 32]\n"
        "epochs: {tmin: -0.2, tmax: 0.8, baseline: [null, 0]}\n"
        "preprocessing: {bandpass: {l_freq: 0.1, h_freq: 40}, resample: 100}\n"
    )
    options = load_options(path)
    assert options.subject == "01" and options.kind == "audio"
    assert options.events.ignore == ["0", "32"] and options.epochs.baseline == (None, 0.0)
    assert options.preprocessing.bandpass.h_freq == 40 and options.preprocessing.resample == 100
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocessing:\n  resampel: 100\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: preprocessing\.resampel"):
        load_options(bad)


def test_options_from_command_line_flags(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("kind: image\nevents: {rule: '{value}'}\n")
    options = options_from_flags(
        base, subject="03", session="2", stimuli="table.tsv", events_from="stim", epochs=(-0.1, 0.6),
        keep_personal=True, overrides={"preprocessing.resample": 200},
    )
    assert isinstance(options, IngestOptions)
    assert (options.subject, options.session, options.keep_personal) == ("03", "2", True)
    assert options.events.source == "stim" and options.events.rule == "{value}"
    assert (options.epochs.tmin, options.epochs.tmax) == (-0.1, 0.6)
    assert options.preprocessing.resample == 200 and str(options.stimuli) == "table.tsv"
    with pytest.raises(ConfigError, match="events.source"):
        options_from_flags(events_from="trigger")


def test_truncated_nifti_raises_input_file_error(real_data, tmp_path):
    original = (real_data / "nifti/functional.nii").read_bytes()
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(original[:20000])
    with pytest.raises(InputFileError, match=r"truncated\.nii: .*Expected 42840 bytes"):
        read_recording(truncated)


def test_event_arrays_from_numpy_and_csv_files(tmp_path):
    sfreq, first_samp = 250.0, 1000
    raw = mne.io.RawArray(np.zeros((2, 2500)), mne.create_info(["C3", "C4"], sfreq, "eeg"),
                          first_samp=first_samp, verbose="error")
    array = np.array([[1100, 0, 3], [1110, 3, 0], [1600, 0, 7], [3400, 0, 3]])  # MNE convention
    np.save(tmp_path / "events.npy", array)
    from_numpy = recording_from_raw(raw, options={"events": {"file": str(tmp_path / "events.npy")}})
    assert from_numpy.events["sample"].tolist() == [100, 600, 2400]
    assert from_numpy.events["stimulus_id"].tolist() == ["3", "7", "3"]
    assert from_numpy.events["repetition"].tolist() == [0, 0, 1]

    (tmp_path / "events.csv").write_text("onset,duration,trial_type\n0.4,0.5,face\n2.0,0.5,house\n")
    table = tmp_path / "stimuli.csv"
    table.write_text("trial_type,stimulus_id\nface,face-001\nhouse,house-001\n")
    from_csv = recording_from_raw(
        raw, options={"stimuli": str(table), "events": {"file": str(tmp_path / "events.csv")},
                      "epochs": {"tmin": -0.1, "tmax": 0.3}})
    assert from_csv.layout == "epoched" and from_csv.data.shape == (2, 2, 101)
    assert from_csv.events["stimulus_id"].tolist() == ["face-001", "house-001"]
    np.testing.assert_allclose(from_csv.events["onset"], [0.4, 2.0])
    np.testing.assert_allclose(from_csv.events["duration"], [0.5, 0.5])
