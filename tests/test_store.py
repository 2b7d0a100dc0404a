"""The study store: round trips, schema and version checks, atomic writes, remote URLs."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from neurodec.errors import (
    EventError,
    IncompleteStoreError,
    InvalidDataError,
    StoreExistsError,
    StoreNotFoundError,
    StoreSchemaError,
    StoreVersionError,
)
from neurodec.store import (
    RecordingData,
    StoreWriter,
    event_table,
    open_store,
    stimulus_table,
    summarize,
)


def make_stimuli(n: int = 6):
    ids = [f"img-{i:02d}" for i in range(n)]
    return stimulus_table(
        ids,
        "image",
        category=["face" if i % 2 else "house" for i in range(n)],
        split=["test" if i >= n - 2 else "train" for i in range(n)],
        metadata=[{"index": i} for i in range(n)],
        content_array=["images"] * n,
        content_index=list(range(n)),
    )


def make_images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)


def make_epoched(subject="01", run="01", n_trials=6, seed=0) -> RecordingData:
    rng = np.random.default_rng(seed)
    stimuli = [f"img-{i % 6:02d}" for i in range(n_trials)]
    return RecordingData(
        subject=subject,
        run=run,
        modality="eeg",
        layout="epoched",
        data=rng.standard_normal((n_trials, 3, 20)).astype(np.float32) * 1e-5,
        events=event_table(stimuli, onset=np.arange(n_trials) * 1.5),
        sfreq=100.0,
        tmin=-0.05,
        ch_names=["Oz", "Pz", "Cz"],
        ch_types=["eeg"] * 3,
        units=["V"] * 3,
        sensor_positions=rng.standard_normal((3, 3)) * 0.05,
        source={"file": "sub-01.fif", "sha256": "0" * 64, "format": "fif"},
    )


def make_fmri(subject="01", n_voxels=7) -> RecordingData:
    mask = np.zeros((3, 3, 2), dtype=bool)
    mask.flat[:n_voxels] = True
    return RecordingData(
        subject=subject,
        session="fmri",
        modality="fmri",
        layout="fmri",
        data=np.arange(6 * n_voxels, dtype=np.float32).reshape(6, n_voxels),
        events=event_table([f"img-{i:02d}" for i in range(6)]),
        mask=mask,
        affine=np.diag([2.0, 2.0, 2.0, 1.0]),
        voxel_ijk=np.argwhere(mask),
    )


def write_store(path, recordings=None) -> None:
    with StoreWriter(path, name="unit") as writer:
        writer.set_stimuli(make_stimuli(), content={"images": make_images()})
        for recording in recordings if recordings is not None else [make_epoched(), make_fmri()]:
            writer.add_recording(recording)


def test_round_trip_keeps_arrays_tables_and_metadata(tmp_path):
    epoched, fmri = make_epoched(), make_fmri()
    write_store(tmp_path / "s.zarr", [epoched, fmri])
    study = open_store(tmp_path / "s.zarr")

    assert study.recording_keys == ["sub-01/ses-01/run-01", "sub-01/ses-fmri/run-01"]
    stored = study.recording(subject="01")
    np.testing.assert_array_equal(stored.data[...], epoched.data)
    np.testing.assert_array_equal(stored.data[2:4], epoched.data[2:4])
    np.testing.assert_array_equal(stored.sensor_positions, epoched.sensor_positions)
    assert stored.ch_names == ["Oz", "Pz", "Cz"] and stored.sfreq == 100.0 and stored.tmin == -0.05
    assert stored.source["file"] == "sub-01.fif"
    events = stored.events
    assert events["stimulus_id"].tolist() == epoched.events["stimulus_id"].tolist()
    np.testing.assert_array_equal(events["onset"], np.arange(6) * 1.5)
    np.testing.assert_array_equal(events["repetition"], np.zeros(6))

    stored_fmri = study.recording(subject="01", session="fmri")
    np.testing.assert_array_equal(stored_fmri.data[...], fmri.data)
    np.testing.assert_array_equal(stored_fmri.mask, fmri.mask)
    np.testing.assert_array_equal(stored_fmri.voxel_ijk, np.argwhere(fmri.mask))

    stimuli = study.stimuli
    assert stimuli["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert json.loads(stimuli["metadata"][3]) == {"index": 3}
    images = make_images()
    np.testing.assert_array_equal(study.stimulus_content(["img-04", "img-01"]), images[[4, 1]])


def test_repetition_index_counts_earlier_presentations():
    events = event_table(["a", "b", "a", "a", "b"])
    assert events["repetition"].tolist() == [0, 0, 1, 2, 1]


def test_additions_become_visible_and_targets_are_keyed_by_config(tmp_path):
    write_store(tmp_path / "s.zarr", [make_epoched()])
    study = open_store(tmp_path / "s.zarr", mode="r+")
    study.add_recording(make_epoched(run="02", seed=3))
    study.add_targets("toy", ["img-00", "img-01"], np.eye(2), {"model": "toy", "dim": 2})

    reopened = open_store(tmp_path / "s.zarr")
    assert reopened.recording_keys == ["sub-01/ses-01/run-01", "sub-01/ses-01/run-02"]
    ids, embeddings = reopened.targets("toy")
    assert ids.tolist() == ["img-00", "img-01"]
    np.testing.assert_array_equal(embeddings, np.eye(2, dtype=np.float32))
    assert reopened.target_config("toy")["config"] == {"model": "toy", "dim": 2}
    with pytest.raises(StoreExistsError):
        study.add_recording(make_epoched(run="02"))


def test_summary_counts_trials_per_split(tmp_path):
    write_store(tmp_path / "s.zarr", [make_epoched(n_trials=12), make_fmri(subject="02", n_voxels=5)])
    summary = summarize(open_store(tmp_path / "s.zarr"))
    eeg, fmri = summary["recordings"]
    # stimuli img-04 and img-05 are test; 12 trials cycle through 6 stimuli
    assert eeg["events_per_split"] == {"test": 4, "train": 8}
    assert fmri["voxels"] == 5
    assert summary["stimuli"]["by_split"] == {"test": 2, "train": 4}
    assert summary["subjects"] == {"01": {"sessions": ["01"], "runs": 1}, "02": {"sessions": ["fmri"], "runs": 1}}
    assert summary["size_bytes"] == sum(f.stat().st_size for f in (tmp_path / "s.zarr").rglob("*") if f.is_file())


def test_bad_recordings_are_refused_before_writing(tmp_path):
    nan = make_epoched()
    nan.data[1, 2, 3] = np.nan
    with pytest.raises(InvalidDataError, match="1 samples are NaN or Inf"):
        write_store(tmp_path / "nan.zarr", [nan])
    assert not (tmp_path / "nan.zarr").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary store is removed too

    unknown = make_epoched()
    unknown.events = event_table(["img-00"] * 5 + ["nope"])
    with pytest.raises(EventError, match="nope"):
        write_store(tmp_path / "unknown.zarr", [unknown])

    wrong_shape = make_epoched()
    wrong_shape.ch_names = ["Oz", "Pz"]
    with pytest.raises(StoreSchemaError, match="ch_names has 2 entries, data have 3 channels"):
        wrong_shape.validate()

    with pytest.raises(StoreSchemaError, match="repeated"):
        stimulus_table(["a", "a"], "image")
    with pytest.raises(StoreSchemaError, match="kind"):
        stimulus_table(["a"], "smell")


def test_existing_store_is_not_replaced_without_overwrite(tmp_path):
    write_store(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match="overwrite"):
        StoreWriter(tmp_path / "s.zarr")
    write_store_overwrite = StoreWriter(tmp_path / "s.zarr", overwrite=True)
    write_store_overwrite.set_stimuli(make_stimuli(), content={"images": make_images()})
    write_store_overwrite.add_recording(make_epoched(subject="09"))
    write_store_overwrite.commit()
    assert open_store(tmp_path / "s.zarr").subjects == ["09"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def _set_manifest_field(path: Path, field: str, value) -> None:
    metadata = json.loads((path / "zarr.json").read_text())
    metadata["attributes"]["neurodec"][field] = value
    (path / "zarr.json").write_text(json.dumps(metadata))


def test_version_and_schema_failures_name_the_problem(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no study store"):
        open_store(tmp_path / "missing.zarr")

    write_store(tmp_path / "newer.zarr")
    _set_manifest_field(tmp_path / "newer.zarr", "format_version", "1.7")
    with pytest.raises(StoreVersionError, match="1.7 cannot be read.*upgrade neurodec"):
        open_store(tmp_path / "newer.zarr")

    write_store(tmp_path / "foreign.zarr")
    _set_manifest_field(tmp_path / "foreign.zarr", "format_version", "0.3")
    with pytest.raises(StoreVersionError, match="migrate"):
        open_store(tmp_path / "foreign.zarr")

    write_store(tmp_path / "other.zarr")
    _set_manifest_field(tmp_path / "other.zarr", "format", "somebody-else")
    with pytest.raises(StoreSchemaError, match="somebody-else"):
        open_store(tmp_path / "other.zarr")

    import zarr

    zarr.open_group(tmp_path / "plain.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(IncompleteStoreError, match="no neurodec manifest"):
        open_store(tmp_path / "plain.zarr")

    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(IncompleteStoreError):
        open_store(tmp_path / "empty.zarr")

    write_store(tmp_path / "broken.zarr")
    metadata = json.loads((tmp_path / "broken.zarr" / "zarr.json").read_text())
    entry = metadata["attributes"]["neurodec"]["recordings"][0]
    entry["path"] = "recordings/gone"
    (tmp_path / "broken.zarr" / "zarr.json").write_text(json.dumps(metadata))
    with pytest.raises(StoreSchemaError, match="recordings/gone is missing"):
        open_store(tmp_path / "broken.zarr")


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import make_epoched, make_stimuli, make_images
    from neurodec.store import StoreWriter, open_store, event_table
    import neurodec.store.study as study_module
    study_module.TARGET_CHUNK_BYTES = 4096  # many small chunks: a long write to interrupt
    big = make_epoched(run="02", n_trials=3000)
    big.data = np.random.default_rng(0).standard_normal((3000, 3, 2000)).astype(np.float32)
    big.events = event_table(["img-00"] * 3000)
    if sys.argv[1] == "new":
        with StoreWriter({target!r}) as writer:
            writer.set_stimuli(make_stimuli(), content={{"images": make_images()}})
            print("writing", flush=True)
            writer.add_recording(big)
    else:
        study = open_store({target!r}, mode="r+")
        print("writing", flush=True)
        study.add_recording(big)
    """
)


def _kill_while_writing(script: str, mode: str, watch: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", script, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "writing", process.stderr.read()
    deadline = time.monotonic() + 60
    # wait until chunks of the new recording are on disk, then kill without warning
    while time.monotonic() < deadline and not glob.glob(str(watch)):
        time.sleep(0.01)
    time.sleep(0.3)
    assert process.poll() is None, "the writer finished before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_interrupted_writes_leave_stores_as_they_were(tmp_path):
    tests_dir = str(Path(__file__).parent)
    # 1. a new store killed mid-write: nothing appears at the target path
    target = tmp_path / "new.zarr"
    script = _WRITER_SCRIPT.format(tests=tests_dir, target=str(target))
    _kill_while_writing(script, "new", tmp_path / ".new.zarr.partial-*/recordings/*/data/c")
    assert not target.exists()
    with pytest.raises(StoreNotFoundError):
        open_store(target)

    # 2. an addition killed mid-write: the store opens exactly as before
    existing = tmp_path / "existing.zarr"
    write_store(existing)
    before = open_store(existing)
    manifest_before = before.manifest
    data_before = before.recording(subject="01").data[...]
    script = _WRITER_SCRIPT.format(tests=tests_dir, target=str(existing))
    _kill_while_writing(script, "add", existing / "recordings" / "sub-01_ses-01_run-02" / "data" / "c")
    after = open_store(existing)
    assert after.manifest == manifest_before
    np.testing.assert_array_equal(after.recording(subject="01").data[...], data_before)
    # the next write of the same recording replaces the orphaned partial group
    writable = open_store(existing, mode="r+")
    writable.add_recording(make_epoched(run="02", seed=7))
    np.testing.assert_array_equal(
        open_store(existing).recording(subject="01", run="02").data[...], make_epoched(seed=7).data
    )
    # replacing a listed recording swaps it in and removes the old group
    writable.add_recording(make_epoched(run="02", seed=8), overwrite=True)
    np.testing.assert_array_equal(
        open_store(existing).recording(subject="01", run="02").data[...], make_epoched(seed=8).data
    )
    assert sorted(p.name for p in (existing / "recordings").iterdir() if p.is_dir()) == [
        "sub-01_ses-01_run-01",
        "sub-01_ses-01_run-02~" + writable.manifest["recordings"][-1]["path"].split("~")[1],
        "sub-01_ses-fmri_run-01",
    ]


def test_fsspec_memory_store_works_like_a_directory():
    url = "memory://neurodec-tests/study.zarr"
    write_store(url)
    study = open_store(url, mode="r+")
    np.testing.assert_array_equal(study.recording(subject="01").data[...], make_epoched().data)
    study.add_recording(make_epoched(subject="02"))
    assert open_store(url).subjects == ["01", "02"]
    assert summarize(open_store(url))["size_bytes"] > 0
    import fsspec

    fsspec.filesystem("memory").rm("/neurodec-tests", recursive=True)
