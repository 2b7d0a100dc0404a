"""neurodec.data: datasets, windows, averaging, splits, transforms, workers, the disk cache, memory.

Every store here is a real zarr store written with StoreWriter; expected values come from
the numpy arrays the stores were written from, indexed by hand.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from functools import partial

import numpy as np
import pytest
import torch

import neurodec.data._reader as reader_module
import neurodec.store.study as store_module
from neurodec.data import (
    MVNN,
    ChunkAwareBatchSampler,
    Clamp,
    Compose,
    PerSubject,
    RobustScaler,
    Splits,
    StandardScaler,
    TrialDataset,
    WindowDataset,
    check_no_leakage,
    collate,
    load_transform,
    split_runs,
    split_stimuli,
)
from neurodec.data.transforms import TemporalPool
from neurodec.errors import ConfigError, EventError, RegistryError, SplitError, StoreError
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table

STIMULI = [f"img-{i:02d}" for i in range(12)]
TEST_STIMULI = STIMULI[9:]
N_CHANNELS, N_TIMES, SFREQ = 4, 20, 100.0
TRIALS_PER_CHUNK = 8


def stimuli_table(split=True):
    return stimulus_table(
        STIMULI, "image", split=["test" if s in TEST_STIMULI else "train" for s in STIMULI] if split else None
    )


def epoched_recordings(seed=0, test_seed=None):
    """Two subjects x two runs; each run shows every stimulus twice in random order.

    ``test_seed`` redraws only the trials of test stimuli (to show fits ignore them).
    """
    rng = np.random.default_rng(seed)
    recordings = []
    for subject in ("01", "02"):
        for run_index, run in enumerate(("01", "02")):
            order = rng.permutation(np.repeat(np.arange(len(STIMULI)), 2))
            data = rng.standard_normal((len(order), N_CHANNELS, N_TIMES)).astype(np.float32)
            # A stimulus-specific pattern, so that condition means differ from each other.
            data += np.asarray([np.sin(np.arange(N_TIMES) * (s + 1) / 5.0) for s in order], dtype=np.float32)[
                :, None, :
            ]
            if test_seed is not None:
                redraw = np.isin(order, [STIMULI.index(s) for s in TEST_STIMULI])
                data[redraw] = 50 + 10 * np.random.default_rng(test_seed).standard_normal(data[redraw].shape)
            ids = [STIMULI[s] for s in order]
            seen: dict[str, int] = {}
            repetition = []
            for s in ids:  # presentations to this subject, counted across runs
                repetition.append(seen.get(s, 2 * run_index))
                seen[s] = repetition[-1] + 1
            recordings.append(
                RecordingData(
                    subject=subject,
                    run=run,
                    modality="eeg",
                    layout="epoched",
                    data=data,
                    events=event_table(ids, onset=np.arange(len(ids)) * 2.0, repetition=repetition),
                    sfreq=SFREQ,
                    tmin=-0.05,
                    ch_names=["Oz", "Pz", "Cz", "Fz"],
                    ch_types=["eeg"] * 4,
                    units=["V"] * 4,
                )
            )
    return recordings


def write_store(url, recordings, split=True, chunk_bytes=None):
    """Write a store; ``chunk_bytes`` shrinks the store's chunk target to get several chunks."""
    with pytest.MonkeyPatch.context() as patch:
        if chunk_bytes is not None:
            patch.setattr(store_module, "TARGET_CHUNK_BYTES", chunk_bytes)
        with StoreWriter(url, name="data tests", overwrite=True) as writer:
            writer.set_stimuli(stimuli_table(split))
            for recording in recordings:
                writer.add_recording(recording)
    return url


def source_trials(recordings):
    """Every written trial as {(subject, stimulus id, repetition): array}."""
    trials = {}
    for recording in recordings:
        events = recording.events
        for row, (s, r) in enumerate(zip(events["stimulus_id"].tolist(), events["repetition"].tolist())):
            trials[(recording.subject, s, r)] = recording.data[row]
    return trials


@pytest.fixture(scope="module")
def epoched(tmp_path_factory):
    recordings = epoched_recordings()
    path = tmp_path_factory.mktemp("epoched") / "eeg.zarr"
    write_store(path, recordings, chunk_bytes=TRIALS_PER_CHUNK * N_CHANNELS * N_TIMES * 4)
    embeddings = np.random.default_rng(5).standard_normal((len(STIMULI), 6)).astype(np.float32)
    open_store(path, mode="r+").add_targets("toy", STIMULI[::-1], embeddings[::-1], {"model": "toy"})
    return {"path": path, "recordings": recordings, "trials": source_trials(recordings), "embeddings": embeddings}


def items_of(dataset):
    return [dataset[i] for i in range(len(dataset))]


# --------------------------------------------------------------------- epoched
def test_trial_items_equal_the_written_trials(epoched):
    dataset = TrialDataset(epoched["path"], target="toy")
    assert len(dataset) == 4 * 24 and dataset.subject_labels == ["01", "02"]
    for item in items_of(dataset):
        subject = dataset.subject_labels[item["subject"]]
        expected = epoched["trials"][(subject, item["stimulus_id"], item["repetition"])]
        np.testing.assert_array_equal(item["brain"].numpy(), expected)
        assert item["brain"].dtype == torch.float32 and item["brain"].shape == (N_CHANNELS, N_TIMES)
        assert dataset.stimulus_list[item["stimulus"]] == item["stimulus_id"]
        np.testing.assert_array_equal(item["target"].numpy(), epoched["embeddings"][STIMULI.index(item["stimulus_id"])])
    # A batch in any order, with a repeated index, holds the same items.
    indices = [50, 3, 77, 3, 12]
    batch = dataset[indices]
    for position, index in enumerate(indices):
        item = dataset[index]
        np.testing.assert_array_equal(batch["brain"][position].numpy(), item["brain"].numpy())
        assert batch["stimulus_id"][position] == item["stimulus_id"]
        assert int(batch["subject"][position]) == item["subject"]


def test_selection_by_subject_and_recording(epoched):
    only_02 = TrialDataset(epoched["path"], subjects=["02"])
    assert set(only_02.subject_index.tolist()) == {1} and len(only_02) == 48
    one_run = TrialDataset(epoched["path"], ["sub-01/ses-01/run-02"])
    assert len(one_run) == 24 and set(one_run.trial_events) == {("sub-01/ses-01/run-02", row) for row in range(24)}
    with pytest.raises(StoreError, match="no subjects"):
        TrialDataset(epoched["path"], subjects=["99"])
    with pytest.raises(SplitError, match="no trials left"):
        TrialDataset(epoched["path"], events={"sub-01/ses-01/run-01": []})


def test_averaging_repetitions_equals_the_mean_of_that_subjects_trials(epoched):
    dataset = TrialDataset(epoched["path"], stimuli=TEST_STIMULI, average_repetitions=True)
    assert len(dataset) == 2 * len(TEST_STIMULI) and dataset.n_trials == 2 * len(TEST_STIMULI) * 4
    batch = dataset[list(range(len(dataset)))]
    for position in range(len(dataset)):
        subject = dataset.subject_labels[int(batch["subject"][position])]
        stimulus = batch["stimulus_id"][position]
        expected = np.mean(
            [t for (sub, s, _), t in epoched["trials"].items() if sub == subject and s == stimulus], axis=0
        )
        np.testing.assert_allclose(batch["brain"][position].numpy(), expected, rtol=1e-6, atol=1e-6)
        assert int(batch["repetition"][position]) == -1
        np.testing.assert_allclose(dataset[position]["brain"].numpy(), expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- windows
@pytest.fixture(scope="module")
def continuous(tmp_path_factory):
    rng = np.random.default_rng(3)
    n_times = 1200
    recordings = []
    for run in ("01", "02"):
        samples = np.sort(rng.choice(np.arange(100, n_times - 100), size=10, replace=False))
        samples[4] = 500 if run == "01" else samples[4]
        samples = np.concatenate([[5], samples, [n_times - 10]])  # two onsets too near the edges
        ids = [STIMULI[i % 12] for i in range(len(samples))]
        recordings.append(
            RecordingData(
                subject="01",
                run=run,
                modality="meg",
                layout="continuous",
                data=rng.standard_normal((3, n_times)).astype(np.float32),
                events=event_table(ids, sample=samples, onset=samples / SFREQ),
                sfreq=SFREQ,
                ch_names=["MEG1", "MEG2", "MEG3"],
                ch_types=["mag"] * 3,
                units=["T"] * 3,
            )
        )
    path = tmp_path_factory.mktemp("continuous") / "meg.zarr"
    write_store(path, recordings, chunk_bytes=100 * 3 * 4)  # 100 samples per chunk
    return {"path": path, "recordings": recordings}


def test_windows_are_cut_at_the_hand_computed_samples(continuous, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="neurodec"):
        windows = WindowDataset(continuous["path"], tmin=-0.2, tmax=0.3, shift=0.1)
    # -0.2 s + 0.1 s shift = 10 samples before the onset; 0.5 s = 50 samples.
    assert windows.n_times == 50 and windows.n_dropped == 4 and len(windows) == 2 * 10
    assert "leave the recording" in caplog.text
    np.testing.assert_allclose(windows.times[[0, -1]], [-0.1, 0.39])
    recording = continuous["recordings"][0]
    row = int(np.flatnonzero(recording.events["sample"] == 500)[0])
    position = windows.trial_events.index(("sub-01/ses-01/run-01", row))
    np.testing.assert_array_equal(windows[position]["brain"].numpy(), recording.data[:, 490:540])
    cached = WindowDataset(continuous["path"], tmin=-0.2, tmax=0.3, shift=0.1, cache_dir=tmp_path / "cache")
    expected = []
    for key, row in windows.trial_events:
        data = continuous["recordings"][0 if key.endswith("01") else 1]
        start = int(data.events["sample"][row]) - 10
        expected.append(data.data[:, start : start + 50])
    for index in range(len(windows)):
        np.testing.assert_array_equal(windows[index]["brain"].numpy(), expected[index])
        np.testing.assert_array_equal(cached[index]["brain"].numpy(), expected[index])
    # Decoding one chunk at a time: windows across two decoded pieces still come out whole.
    monkeypatch.setattr(reader_module, "MAX_DECODE_BYTES", 1)
    np.testing.assert_array_equal(windows[list(range(len(windows)))]["brain"].numpy(), np.stack(expected))
    with pytest.raises(EventError, match="leave the recording"):
        WindowDataset(continuous["path"], tmin=-0.2, tmax=0.3, on_outside="raise")


# ---------------------------------------------------------------------- splits
def test_stimulus_splits_never_leak_and_validation_is_seeded(epoched):
    splits = split_stimuli(epoched["path"], val_fraction=0.34, seed=0)
    assert splits.test.tolist() == TEST_STIMULI
    assert sorted(splits.train.tolist() + splits.val.tolist()) == STIMULI[:9] and len(splits.val) == 3
    assert not set(splits.val) & set(splits.train)
    assert np.array_equal(split_stimuli(epoched["path"], val_fraction=0.34, seed=0).val, splits.val)
    assert any(
        not np.array_equal(split_stimuli(epoched["path"], val_fraction=0.34, seed=s).val, splits.val)
        for s in range(1, 6)
    )

    train = TrialDataset(epoched["path"], **splits.selection("train"))
    val = TrialDataset(epoched["path"], **splits.selection("val"))
    test = TrialDataset(epoched["path"], **splits.selection("test"))
    assert not set(train.stimulus_ids) & set(TEST_STIMULI) and set(test.stimulus_ids) == set(TEST_STIMULI)
    assert len(train) + len(val) + len(test) == 96
    check_no_leakage(train, test, val=val)
    with pytest.raises(SplitError, match="'train' and 'test'"):
        check_no_leakage(TrialDataset(epoched["path"]), test)
    with pytest.raises(SplitError, match="split 'train' is empty"):
        split_stimuli(epoched["path"], val_fraction=0.99)
    with pytest.raises(SplitError, match="split 'test' is empty"):
        Splits(train=np.asarray(STIMULI), val=np.asarray([]), test=np.asarray([]))


def test_stimulus_split_needs_test_stimuli(tmp_path):
    path = write_store(tmp_path / "unmarked.zarr", epoched_recordings()[:1], split=False)
    with pytest.raises(SplitError, match="split 'test' is empty"):
        split_stimuli(path)
    drawn = split_stimuli(path, test_fraction=0.25, val_fraction=0.1, seed=3)
    assert len(drawn.test) == 3 and not set(drawn.test) & set(drawn.train)


def test_run_splits_hold_out_whole_runs_or_the_last_onsets(epoched, continuous):
    by_run = split_runs(epoched["path"], test_runs=["02"], val_fraction=0.25, seed=1)
    assert {k: len(v) for k, v in by_run.test.items()} == {
        "sub-01/ses-01/run-01": 0,
        "sub-01/ses-01/run-02": 24,
        "sub-02/ses-01/run-01": 0,
        "sub-02/ses-01/run-02": 24,
    }
    train = TrialDataset(epoched["path"], **by_run.selection("train"))
    val = TrialDataset(epoched["path"], **by_run.selection("val"))
    assert not set(train.stimulus_ids) & set(val.stimulus_ids)
    assert {key for key, _ in train.trial_events} == {"sub-01/ses-01/run-01", "sub-02/ses-01/run-01"}

    by_time = split_runs(continuous["path"], test_fraction=0.2, val_fraction=0.0)
    for recording in continuous["recordings"]:
        samples = recording.events["sample"]
        train_rows, test_rows = by_time.train[recording.key], by_time.test[recording.key]
        assert len(test_rows) == 3 and samples[train_rows].max() < samples[test_rows].min()
    windows = {
        part: WindowDataset(continuous["path"], tmin=-0.1, tmax=0.2, **by_time.selection(part))
        for part in ("train", "test")
    }
    check_no_leakage(windows["train"], windows["test"], by="event")
    with pytest.raises(SplitError, match="share"):
        check_no_leakage(WindowDataset(continuous["path"], tmin=-0.1, tmax=0.2), windows["test"], by="event")


# ------------------------------------------------------------------ transforms
def test_transforms_are_fitted_on_training_rows_only(epoched, tmp_path):
    # The same store with different test trials: every fitted statistic must stay the same.
    changed = write_store(tmp_path / "changed.zarr", epoched_recordings(test_seed=9))
    fitted = {}
    for name, path in (("original", epoched["path"]), ("changed", changed)):
        train = TrialDataset(path, stimuli=STIMULI[:9])
        fitted[name] = [StandardScaler().fit(train), RobustScaler().fit(train), MVNN(shrinkage="auto").fit(train)]
    for original, other in zip(fitted["original"], fitted["changed"]):
        for name, value in original.state()[1].items():
            np.testing.assert_array_equal(value, other.state()[1][name])
    # ... while a fit that includes the test trials does change.
    everything = StandardScaler().fit(TrialDataset(changed))
    assert not np.allclose(everything.mean, fitted["changed"][0].mean)

    train_trials = np.stack([t for (_, s, _), t in epoched["trials"].items() if s not in TEST_STIMULI]).astype(
        np.float64
    )
    scaler = fitted["original"][0]
    np.testing.assert_allclose(scaler.mean, train_trials.mean(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(scaler.scale, train_trials.std(axis=(0, 2)), rtol=1e-10)
    robust = fitted["original"][1]  # fewer trials than max_trials: exact quantiles
    values = train_trials.transpose(1, 0, 2).reshape(N_CHANNELS, -1)
    np.testing.assert_allclose(robust.center, np.median(values, axis=1), rtol=1e-6)
    np.testing.assert_allclose(robust.scale, np.subtract(*np.percentile(values, [75, 25], axis=1)), rtol=1e-6)
    assert scaler.fitted_on["n_trials"] == len(train_trials) and scaler.fitted_on["n_stimuli"] == 9


def residual_covariances(trials_by_condition):
    """Per-time-point covariance of residuals around each condition mean (n - 1 per condition)."""
    residuals = [x - x.mean(axis=0) for x in trials_by_condition if len(x) > 1]
    dof = sum(len(x) - 1 for x in trials_by_condition if len(x) > 1)
    stacked = np.concatenate(residuals)  # trials x channels x times
    return np.einsum("nct,ndt->tcd", stacked, stacked) / dof, stacked


def training_conditions(trials, transform=None):
    groups = {}
    for (subject, stimulus, _), trial in trials.items():
        if stimulus not in TEST_STIMULI:
            groups.setdefault((subject, stimulus), []).append(trial)
    arrays = [np.stack(g).astype(np.float64) for g in groups.values()]
    if transform is not None:
        arrays = [transform.transform(a.astype(np.float32)).astype(np.float64) for a in arrays]
    return arrays


def test_mvnn_makes_the_training_noise_covariance_the_identity(epoched):
    from sklearn.covariance import ledoit_wolf_shrinkage

    train = TrialDataset(epoched["path"], stimuli=STIMULI[:9])
    averaged = MVNN(shrinkage=0.0).fit(train)
    covariance, _ = residual_covariances(training_conditions(epoched["trials"], averaged))
    np.testing.assert_allclose(covariance.mean(axis=0), np.eye(N_CHANNELS), atol=1e-5)

    per_time = MVNN(per_time=True, shrinkage=0.0).fit(train)
    covariance, _ = residual_covariances(training_conditions(epoched["trials"], per_time))
    np.testing.assert_allclose(covariance, np.broadcast_to(np.eye(N_CHANNELS), covariance.shape), atol=1e-5)

    # The streamed Ledoit-Wolf coefficient is sklearn's, on the residual vectors of all time points.
    _, residuals = residual_covariances(training_conditions(epoched["trials"]))
    rows = residuals.transpose(0, 2, 1).reshape(-1, N_CHANNELS)
    assert MVNN(shrinkage="auto").fit(train).shrinkage_ == pytest.approx(
        ledoit_wolf_shrinkage(rows, assume_centered=True), rel=1e-6
    )
    fixed = MVNN(shrinkage=0.3).fit(train)
    raw, _ = residual_covariances(training_conditions(epoched["trials"]))
    raw = raw.mean(axis=0)
    expected = 0.7 * raw + 0.3 * np.trace(raw) / N_CHANNELS * np.eye(N_CHANNELS)
    np.testing.assert_allclose(fixed.covariance, expected, rtol=1e-6)


def test_fitted_transforms_round_trip_through_a_folder(epoched, tmp_path):
    train = TrialDataset(epoched["path"], stimuli=STIMULI[:9])
    batch = train.read_batch(range(20))
    transforms = {
        "compose": Compose([StandardScaler(), MVNN(per_time=True, shrinkage=0.1), Clamp(3.0)]).fit(train),
        "per_subject": PerSubject(RobustScaler()).fit(train),
    }
    for name, transform in transforms.items():
        transform.save(tmp_path / name)
        loaded = load_transform(tmp_path / name)
        assert type(loaded) is type(transform) and loaded.fitted_on == transform.fitted_on
        np.testing.assert_array_equal(
            loaded.transform(batch["brain"], subjects=batch["subject"]),
            transform.transform(batch["brain"], subjects=batch["subject"]),
        )
    assert np.abs(transforms["compose"].transform(batch["brain"] * 1e3)).max() == 3.0
    # Per subject: each subject's statistics come from that subject's training trials only.
    subject_two = np.stack([t for (sub, s, _), t in epoched["trials"].items() if sub == "02" and s not in TEST_STIMULI])
    np.testing.assert_allclose(
        transforms["per_subject"].by_subject[1].center,
        np.median(subject_two.transpose(1, 0, 2).reshape(N_CHANNELS, -1), axis=1),
        rtol=1e-6,
    )
    with pytest.raises(ConfigError, match="not fitted"):
        StandardScaler().transform(batch["brain"])
    (tmp_path / "compose" / "transform.json").write_text('{"transform": "Nope"}')
    with pytest.raises(RegistryError, match="known transforms"):
        load_transform(tmp_path / "compose")


def test_temporal_pool_is_a_reshape_mean_and_the_scaler_after_it_sees_pooled_trials(epoched, tmp_path):
    from neurodec.config import load_config
    from neurodec.training._setup import build_transform

    train = TrialDataset(epoched["path"], stimuli=STIMULI[:9])
    batch = train.read_batch(range(20))["brain"]  # 20 trials x 4 channels x 20 samples
    pooled = TemporalPool(3).transform(batch)
    # 20 samples in groups of 3: the last 2 are dropped, 6 means remain.
    expected = batch.astype(np.float64)[:, :, :18].reshape(20, N_CHANNELS, 6, 3).mean(axis=3)
    assert pooled.shape == (20, N_CHANNELS, 6) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    np.testing.assert_allclose(pooled[3, 1, 0], batch[3, 1, :3].astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_array_equal(TemporalPool(1).transform(batch), batch)

    # Built from a config, as the trainer does; the robust scaler is fitted on pooled training trials.
    config = load_config({"data": {"store": str(epoched["path"]), "target": "clip",
                                   "transforms": [{"name": "temporal_pool", "factor": 4}, {"name": "robust_scaler"}]},
                          "model": {"name": "nice"}})
    composed = build_transform(config).fit(train)
    train_trials = np.stack([t for (_, s, _), t in epoched["trials"].items() if s not in TEST_STIMULI])
    pooled_train = train_trials.astype(np.float64).reshape(len(train_trials), N_CHANNELS, 5, 4).mean(axis=3)
    values = pooled_train.transpose(1, 0, 2).reshape(N_CHANNELS, -1)
    np.testing.assert_allclose(composed.steps[1].center, np.median(values, axis=1), rtol=1e-5)
    composed.save(tmp_path / "pooled")
    loaded = load_transform(tmp_path / "pooled")
    assert isinstance(loaded.steps[0], TemporalPool) and loaded.steps[0].factor == 4
    np.testing.assert_array_equal(loaded.transform(batch), composed.transform(batch))
    assert loaded.transform(batch).shape == (20, N_CHANNELS, 5)

    with pytest.raises(ConfigError, match="trials x channels x times"):
        TemporalPool(2).transform(np.zeros((3, 10), dtype=np.float32))
    with pytest.raises(ConfigError, match="fewer than factor"):
        TemporalPool(30).transform(batch)
    with pytest.raises(ConfigError, match="whole number"):
        TemporalPool(0)


def test_dataset_applies_its_transform_before_averaging(epoched):
    train = TrialDataset(epoched["path"], stimuli=STIMULI[:9])
    scaler = StandardScaler().fit(train)
    test = TrialDataset(epoched["path"], stimuli=TEST_STIMULI, average_repetitions=True, transform=scaler)
    item = test[0]
    subject = test.subject_labels[item["subject"]]
    trials = np.stack(
        [t for (sub, s, _), t in epoched["trials"].items() if sub == subject and s == item["stimulus_id"]]
    )
    expected = ((trials - scaler.mean[None, :, None]) / scaler.scale[None, :, None]).mean(axis=0)
    np.testing.assert_allclose(item["brain"].numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- workers and batching
def batches_of(loader):
    return [(b["brain"].numpy().copy(), list(b["stimulus_id"]), b["subject"].numpy().copy()) for b in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (brain_a, ids_a, subjects_a), (brain_b, ids_b, subjects_b) in zip(first, second):
        np.testing.assert_array_equal(brain_a, brain_b)
        assert ids_a == ids_b and np.array_equal(subjects_a, subjects_b)


def test_two_workers_give_the_same_batches_as_none(epoched, tmp_path):
    plain = TrialDataset(epoched["path"])
    cached = TrialDataset(epoched["path"], cache_dir=tmp_path / "cache")  # two workers fill one cache
    reference = batches_of(plain.loader(batch_size=16, seed=4, num_workers=0))
    assert_same_batches(reference, batches_of(cached.loader(batch_size=16, seed=4, num_workers=2)))
    assert_same_batches(reference, batches_of(plain.loader(batch_size=16, seed=4, num_workers=2)))
    # A pickled dataset (as spawn-started workers get it) carries the URL, not open zarr handles.
    clone = pickle.loads(pickle.dumps(cached))
    assert clone._handle._opened is None and clone._caches[0]._opened is None
    np.testing.assert_array_equal(clone[5]["brain"].numpy(), plain[5]["brain"].numpy())
    # The per-item path (DataLoader's own batching calls __getitems__).
    loaders = [torch.utils.data.DataLoader(plain, batch_size=10, num_workers=w) for w in (0, 2)]
    assert_same_batches(*[batches_of(loader) for loader in loaders])


def test_chunk_aware_batches_decode_each_chunk_once_per_epoch(epoched):
    dataset = TrialDataset(epoched["path"])
    n_chunks = sum(reader.layout.n_chunks for reader in dataset._readers)
    sampler = ChunkAwareBatchSampler(dataset, batch_size=2 * TRIALS_PER_CHUNK, seed=0)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
        assert all(batch == sorted(batch) for batch in batches)
    assert epochs[0] != epochs[1]
    sampler.set_epoch(0)
    assert list(sampler) == epochs[0]
    for batch in epochs[0]:
        dataset[batch]
    assert sum(reader.chunks_decoded for reader in dataset._readers) == n_chunks
    # Trials drawn fully at random decode most chunks several times.
    random_order = np.random.default_rng(0).permutation(len(dataset))
    for start in range(0, len(dataset), 16):
        dataset[np.sort(random_order[start : start + 16])]
    assert sum(reader.chunks_decoded for reader in dataset._readers) > 2 * n_chunks
    ranks = [list(ChunkAwareBatchSampler(dataset, 16, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_disk_cache_gives_the_same_arrays_and_spares_zarr_later(epoched, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(epoched["path"], store)
    reference = batches_of(TrialDataset(store).loader(batch_size=12, seed=1))
    first = TrialDataset(store, cache_dir=tmp_path / "cache")
    assert_same_batches(reference, batches_of(first.loader(batch_size=12, seed=1)))
    cache_files = sorted((tmp_path / "cache").glob("*/data.npy"))
    assert len(cache_files) == 1  # all four recordings share one row shape
    written = cache_files[0].stat().st_mtime_ns
    # Remove every chunk of the recordings' data: zarr would now read its fill value (0).
    for chunks in store.glob("recordings/*/data/c"):
        shutil.rmtree(chunks)
    assert not np.any(TrialDataset(store)[0]["brain"].numpy())
    second = TrialDataset(store, cache_dir=tmp_path / "cache")
    assert_same_batches(reference, batches_of(second.loader(batch_size=12, seed=1)))
    assert sum(reader.chunks_decoded for reader in second._readers) == 0
    assert cache_files[0].stat().st_mtime_ns == written
    cached_rows = np.load(cache_files[0], mmap_mode="r")
    np.testing.assert_array_equal(cached_rows[:24], epoched["recordings"][0].data)


def test_memory_stays_flat_while_iterating_a_larger_store(tmp_path):
    import tracemalloc

    import psutil

    n_trials, n_channels, n_times = 1600, 32, 250  # 51 MB of float32
    rng = np.random.default_rng(0)
    recordings = [
        RecordingData(
            subject=f"{i:02d}",
            modality="eeg",
            layout="epoched",
            data=rng.standard_normal((n_trials // 2, n_channels, n_times), dtype=np.float32),
            events=event_table([STIMULI[j % 12] for j in range(n_trials // 2)]),
            sfreq=SFREQ,
            ch_names=[f"E{c}" for c in range(n_channels)],
            ch_types=["eeg"] * n_channels,
            units=["V"] * n_channels,
        )
        for i in (1, 2)
    ]
    path = write_store(tmp_path / "large.zarr", recordings)
    del recordings
    store_bytes = n_trials * n_channels * n_times * 4
    process = psutil.Process()

    def anonymous() -> int:  # resident memory that is not a mapped file
        info = process.memory_info()
        return info.rss - info.shared

    for cache_dir in (None, tmp_path / "cache"):
        dataset = TrialDataset(path, cache_dir=cache_dir)
        for epoch in range(2):  # with the cache: the cold epoch, then the warm one
            loader = dataset.loader(batch_size=64, seed=epoch)
            iterator = iter(loader)
            next(iterator)
            before = anonymous()
            tracemalloc.start()
            total = sum(float(batch["brain"][:, 0, 0].sum()) for batch in iterator)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert np.isfinite(total)
            # A batch is 2 MB and a zarr chunk 1 MB: nothing near the store's size is ever held.
            assert peak < store_bytes / 4, (
                f"{peak / 1e6:.1f} MB allocated at once for a {store_bytes / 1e6:.0f} MB store"
            )
            assert anonymous() - before < store_bytes / 8


def test_a_memory_url_store_works_through_the_same_dataset(tmp_path):
    import fsspec

    recordings = epoched_recordings()[:2]
    url = write_store("memory://neurodec-data-tests/eeg.zarr", recordings)
    try:
        trials = source_trials(recordings)
        for dataset in (TrialDataset(url), TrialDataset(url, cache_dir=tmp_path / "cache")):
            for item in items_of(dataset):
                np.testing.assert_array_equal(
                    item["brain"].numpy(), trials[("01", item["stimulus_id"], item["repetition"])]
                )
    finally:
        fsspec.filesystem("memory").rm("/neurodec-data-tests", recursive=True)


# ------------------------------------------------------------------------ fMRI
def test_fmri_subjects_with_different_voxel_counts(tmp_path):
    rng = np.random.default_rng(2)
    recordings, arrays = [], {}
    for subject, n_voxels in (("01", 30), ("02", 45)):
        mask = np.zeros((4, 4, 4), dtype=bool)
        mask.flat[:n_voxels] = True
        ids = [STIMULI[i % 12] for i in range(12)]
        arrays[subject] = rng.standard_normal((12, n_voxels)).astype(np.float32) + 5
        recordings.append(
            RecordingData(
                subject=subject,
                modality="fmri",
                layout="fmri",
                data=arrays[subject],
                events=event_table(ids),
                mask=mask,
                affine=np.eye(4),
                voxel_ijk=np.argwhere(mask),
            )
        )
    path = write_store(tmp_path / "fmri.zarr", recordings)
    dataset = TrialDataset(path)
    assert dataset.brain_shape is None and dataset[13]["brain"].shape == (45,)
    np.testing.assert_array_equal(dataset[13]["brain"].numpy(), arrays["02"][1])

    indices = [0, 12, 1, 13, 14]
    by_subject = dataset[indices]
    np.testing.assert_array_equal(by_subject["brain"][0].numpy(), arrays["01"][[0, 1]])
    np.testing.assert_array_equal(by_subject["brain"][1].numpy(), arrays["02"][[0, 1, 2]])
    padded = TrialDataset(path, voxel_batches="pad")[indices]
    assert padded["brain"].shape == (5, 45) and padded["n_voxels"].tolist() == [30, 45, 30, 45, 45]
    np.testing.assert_array_equal(padded["brain"][0, :30].numpy(), arrays["01"][0])
    assert not padded["brain"][0, 30:].any()
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=partial(collate, voxel_batches="pad"))
    first = next(iter(loader))
    np.testing.assert_array_equal(first["brain"].numpy(), arrays["01"][:5])

    with pytest.raises(ConfigError, match="PerSubject"):
        StandardScaler().fit(dataset)
    scaler = PerSubject(StandardScaler()).fit(dataset)
    np.testing.assert_allclose(scaler.by_subject[1].mean, arrays["02"].mean(axis=0, dtype=np.float64), rtol=1e-6)
    scaled = TrialDataset(path, transform=scaler)[list(range(24))]
    np.testing.assert_allclose(scaled["brain"][1].numpy().mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled["brain"][0].numpy().std(axis=0), 1, rtol=1e-5)
