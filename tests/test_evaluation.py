"""Evaluation of a trained run on a tiny real fMRI store: the loaded encoder against a forward
pass computed by hand, evaluate_run's numbers against the metrics called directly, the ridge
baseline's alpha against an independent fit, learning against chance, the report files, and
the errors for broken run folders and stores.

The store holds brain data that are a per-subject linear map of random target embeddings plus
noise (two subjects of different voxel counts, every stimulus shown twice), so retrieval can be
learned in a few dozen steps.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from neurodec.config import load_config
from neurodec.errors import ConfigError, NeurodecError, SplitError, StoreError, StoreNotFoundError
from neurodec.evaluation import (
    RunFolderError,
    UnknownSubjectError,
    describe_target_space,
    evaluate_run,
    load_encoder,
    ridge_baseline,
    retrieve,
)
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table
from neurodec.training import train

N_TRAIN_POOL, N_TEST, DIM = 48, 16, 16
VOXELS = {"01": 40, "02": 36}
METRIC_OPTIONS = dict(n_ways=(2, 10, 50), n_repeats=3, n_bootstrap=50, n_permutations=50, seed=0)


def write_fmri_store(path, seed=0, with_targets=True):
    """Two subjects, every stimulus shown twice; brain = targets @ W_subject + noise."""
    rng = np.random.default_rng(seed)
    ids = [f"img-{i:03d}" for i in range(N_TRAIN_POOL + N_TEST)]
    targets = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    with StoreWriter(path, name="evaluation tests", overwrite=True) as writer:
        writer.set_stimuli(stimulus_table(ids, "image", split=["train"] * N_TRAIN_POOL + ["test"] * N_TEST))
        for subject, n_voxels in VOXELS.items():
            mapping = rng.standard_normal((DIM, n_voxels)) / np.sqrt(DIM)
            rows = np.concatenate([rng.permutation(len(ids)), rng.permutation(len(ids))])
            data = 3.0 + targets[rows] @ mapping + 0.5 * rng.standard_normal((len(rows), n_voxels))
            mask = np.zeros((4, 4, 4), dtype=bool)
            mask.flat[:n_voxels] = True
            writer.add_recording(RecordingData(
                subject=subject, modality="fmri", layout="fmri", data=data.astype(np.float32),
                events=event_table([ids[i] for i in rows], repetition=[0] * len(ids) + [1] * len(ids)),
                mask=mask, affine=np.eye(4), voxel_ijk=np.argwhere(mask)))
    if with_targets:
        open_store(path, mode="r+").add_targets("clip", ids, targets, {"extractor": "random-test-vectors"})
    return {"path": path, "ids": ids, "targets": targets}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    store = write_fmri_store(root / "fmri.zarr")
    config = load_config({
        "data": {"store": str(store["path"]), "target": "clip", "split": {"val_fraction": 0.25, "seed": 0},
                 "transforms": [{"name": "robust_scaler", "per_subject": True}]},
        "model": {"name": "mindeye", "hidden_dim": 32, "n_blocks": 1, "dropout": 0.0, "n_tokens": None,
                  "low_level": False, "projector": False},
        "optim": {"lr": 3e-3, "schedule": "warmup_cosine", "warmup_steps": 4},
        "train": {"max_steps": 45, "epochs": None, "batch_size": 16, "log_every": 5, "checkpoint_every_steps": 50,
                  "selection_metric": "val/full-set top-1",
                  "validation": {"n_ways": [], "top_ks": [1], "full_set_top_ks": [1], "n_repeats": 2}},
        "output": {"runs_dir": str(root / "runs"), "name": "fmri"},
    })
    trained = train(config)
    results = evaluate_run(trained.run_dir, **METRIC_OPTIONS)
    return {"store": store, "run_dir": trained.run_dir, "results": results, "root": root}


def _test_trials(store_path, subject, test_ids):
    """Raw test trials of one subject straight from the store (every repetition), with their stimulus ids."""
    recording = open_store(store_path).recording(subject=subject)
    events = recording.events.to_pandas()
    rows = np.flatnonzero(events["stimulus_id"].isin(test_ids).to_numpy())
    return np.asarray(recording.data[rows.tolist()]), events["stimulus_id"].to_numpy()[rows]


def _training_trials(store_path, subject, train_ids):
    recording = open_store(store_path).recording(subject=subject)
    events = recording.events.to_pandas()
    rows = np.flatnonzero(events["stimulus_id"].isin(train_ids).to_numpy())
    return np.asarray(recording.data[rows.tolist()])


def _forward(run_dir, brain, subject_index):
    from neurodec.models import load_pretrained

    encoder = load_pretrained(run_dir / "best" / "encoder").eval()
    with torch.no_grad():
        return encoder(torch.from_numpy(brain.astype(np.float32)),
                       torch.full((len(brain),), subject_index, dtype=torch.long)).numpy()


# ----------------------------------------------------------------------- encoder
def test_embed_equals_robust_scaling_and_forward_by_hand(run):
    splits = json.loads((run["run_dir"] / "splits.json").read_text())
    encoder = load_encoder(run["run_dir"])
    assert encoder.subject_labels == ["01", "02"] and encoder.trained_subjects == ["01", "02"]
    assert encoder.target_key == "clip" and encoder.input_kind == "fmri" and not encoder.encoder.training
    raws = {}
    for index, subject in enumerate(["01", "02"]):
        raw, _ = raws[subject] = _test_trials(run["store"]["path"], subject, splits["test"])
        assert raw.shape == (2 * N_TEST, VOXELS[subject])
        # The saved per-subject robust scaler, recomputed by hand: median and interquartile
        # range of each voxel over that subject's training trials (all repetitions).
        training = _training_trials(run["store"]["path"], subject, splits["train"])
        low, median, high = np.percentile(training, [25, 50, 75], axis=0)
        expected = _forward(run["run_dir"], (raw - median) / (high - low), index)
        embedded = encoder.embed(raw, subject=subject, batch_size=7)  # several batches
        assert embedded.shape == (2 * N_TEST, DIM)
        np.testing.assert_allclose(embedded, expected, rtol=1e-4, atol=1e-5)

    with pytest.raises(UnknownSubjectError, match="neurodec adapt") as error:
        encoder.embed(raw, subject="07")
    assert "07" in str(error.value) and "['01', '02']" in str(error.value)
    with pytest.raises(UnknownSubjectError, match="subject="):
        encoder.embed(raw)  # two subjects: which one must be said
    with pytest.raises(NeurodecError, match=r"expected \(n_trials, 36\)"):
        encoder.embed(raws["01"][0], subject="02")  # subject 01's 40 voxels for subject 02


def test_retrieve_matches_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(3)
    ids = np.array([f"s{i}" for i in range(30)])
    candidates, queries = rng.standard_normal((30, 6)), rng.standard_normal((9, 6))
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        candidates / np.linalg.norm(candidates, axis=1, keepdims=True)).T
    found = retrieve(queries, (ids, candidates), k=4)
    np.testing.assert_array_equal(found.ids, ids[np.argsort(-cosine, axis=1)[:, :4]])
    np.testing.assert_allclose(found.scores, -np.sort(-cosine, axis=1)[:, :4], atol=1e-6)

    subset = ids[::3][::-1]  # candidates restricted (and reordered) by id
    found = retrieve(queries, (ids, candidates), k=2, candidate_ids=subset)
    columns = np.array([int(name[1:]) for name in subset])
    best = np.argsort(-cosine[:, columns], axis=1)[:, :2]
    np.testing.assert_array_equal(found.ids, subset[best])
    with pytest.raises(NeurodecError, match="not among the targets"):
        retrieve(queries, (ids, candidates), candidate_ids=["nope"])


# -------------------------------------------------------------------- evaluation
def test_evaluate_run_equals_the_metrics_on_embeddings_computed_by_hand(run):
    from neurodec.data import TrialDataset, load_transform
    from neurodec.metrics import evaluate_retrieval

    results, run_dir = run["results"], run["run_dir"]
    splits = json.loads((run_dir / "splits.json").read_text())
    # The test set the protocol asks for: test stimuli, repetitions averaged, the run's transform.
    test = TrialDataset(run["store"]["path"], stimuli=splits["test"], average_repetitions=True, target="clip",
                        transform=load_transform(run_dir / "transform"))
    assert len(test) == 2 * N_TEST
    batch = test.read_batch(np.arange(len(test)))
    order = np.concatenate([np.flatnonzero(batch["subject"] == s) for s in (0, 1)])
    brain = np.concatenate([_forward(run_dir, np.stack([batch["brain"][i] for i in order[batch["subject"][order] == s]]),
                                     s) for s in (0, 1)])
    store_targets = dict(zip(run["store"]["ids"], run["store"]["targets"]))
    targets = np.stack([store_targets[name] for name in np.asarray(batch["stimulus_id"])[order]])
    subjects = np.array(["01", "02"])[batch["subject"][order]]
    direct = evaluate_retrieval(brain, targets, subjects=subjects, **METRIC_OPTIONS)

    metrics = results["retrieval"]["fmri / mindeye"]["metrics"]
    for direction in ("brain->stimulus", "stimulus->brain"):
        for name, value in direct[direction]["pooled"].items():
            assert metrics[direction]["pooled"][name] == pytest.approx(value, abs=1e-6), (direction, name)
        assert metrics[direction]["p_value"] == pytest.approx(direct[direction]["p_value"])
        assert metrics[direction]["interval"].keys() == direct[direction]["interval"].keys()
    assert metrics["n_items"] == {"01": N_TEST, "02": N_TEST}
    assert "50-way" in metrics["skipped"]  # 16 test items per subject: larger N-way sizes are skipped

    # An independent count: full-set top-1 within each subject by cosine argmax.
    unit_brain = brain / np.linalg.norm(brain, axis=1, keepdims=True)
    unit_targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    hits = [np.argmax(unit_brain[subjects == s] @ unit_targets[subjects == s].T, axis=1) == np.arange(N_TEST)
            for s in ("01", "02")]
    assert metrics["brain->stimulus"]["pooled"]["full-set top-1"] == pytest.approx(np.mean(hits))

    # Learned: far above chance, with a permutation p-value at its floor.
    pooled, chance = metrics["brain->stimulus"]["pooled"], metrics["chance"]["pooled"]
    assert chance["10-way top-5"] == pytest.approx(0.5) and chance["full-set top-1"] == pytest.approx(1 / N_TEST)
    assert pooled["10-way top-5"] > 0.75 and pooled["full-set top-1"] > 3 * chance["full-set top-1"]
    assert metrics["brain->stimulus"]["p_value"]["10-way top-1"] == pytest.approx(1 / 51)

    meta = results["meta"]
    assert meta["split"] == "test" and meta["average_repetitions"] is True and meta["n_items"] == 2 * N_TEST
    assert meta["target_space"]["pretrained"] is False and meta["target_space"]["key"] == "clip"
    assert meta["target_space"]["extractor"] == "random-test-vectors" and meta["target_space"]["dim"] == [DIM]
    assert meta["checkpoint"]["step"] == json.loads((run_dir / "best" / "meta.json").read_text())["step"]
    assert results["training_history"] == [json.loads(line) for line in
                                           (run_dir / "metrics.jsonl").read_text().splitlines()]
    excerpt = np.asarray(results["similarity_excerpt"]["matrix"])
    np.testing.assert_allclose(excerpt, unit_brain[:N_TEST] @ unit_targets[:N_TEST].T, atol=1e-5)


def test_ridge_baseline_alpha_is_chosen_on_the_runs_validation_split(run):
    from neurodec.data import TrialDataset, load_transform

    results, run_dir = run["results"], run["run_dir"]
    splits = json.loads((run_dir / "splits.json").read_text())
    transform = load_transform(run_dir / "transform")
    store_targets = dict(zip(run["store"]["ids"], run["store"]["targets"]))
    entry = results["baselines"]["fmri / ridge"]
    for subject in ("01", "02"):
        parts = {}
        for part, average in (("train", False), ("val", True), ("test", True)):
            dataset = TrialDataset(run["store"]["path"], stimuli=splits[part], subjects=[subject],
                                   average_repetitions=average, transform=transform)
            batch = dataset.read_batch(np.arange(len(dataset)))
            parts[part] = (batch["brain"], np.stack([store_targets[name] for name in batch["stimulus_id"]]))
        assert len(parts["train"][0]) == 2 * len(splits["train"])  # single trials, both repetitions
        independent = ridge_baseline(parts["train"][0], parts["train"][1], parts["val"][0], parts["val"][1],
                                     parts["test"][0])
        assert entry["parameters"]["alpha"][subject] == independent.alpha
        curve = entry["parameters"]["validation_curves"][subject]
        assert curve["val_scores"] == pytest.approx(list(independent.val_scores.values()))
    ridge = entry["metrics"]["brain->stimulus"]["pooled"]
    chance = entry["metrics"]["chance"]["pooled"]
    assert ridge["2-way top-1"] > chance["2-way top-1"] == 0.5  # a linear map is learnable here too


def test_report_files_round_trip(run):
    report_dir = run["run_dir"] / "report"
    for name in ("report.json", "report.md", "report.html"):
        assert (report_dir / name).stat().st_size > 0
    document = json.loads((report_dir / "report.json").read_text())
    written = {key: value for key, value in document.items() if key != "report"}
    assert written == json.loads(json.dumps(run["results"]))
    value = run["results"]["retrieval"]["fmri / mindeye"]["metrics"]["brain->stimulus"]["pooled"]["10-way top-1"]
    assert f"{100 * value:.2f}" in (report_dir / "report.md").read_text()
    assert "fmri / ridge" in (report_dir / "report.html").read_text()


# ------------------------------------------------------------------------ errors
def _copy_run(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run["run_dir"], copy, ignore=shutil.ignore_patterns("report", "last"))
    return copy


def test_broken_run_folders_are_named(run, tmp_path):
    with pytest.raises(RunFolderError, match="no run folder"):
        evaluate_run(tmp_path / "nothing")
    copy = _copy_run(run, tmp_path)
    (copy / "best" / "encoder" / "model.safetensors").unlink()
    with pytest.raises(RunFolderError, match="model.safetensors: missing"):
        load_encoder(copy)
    copy2 = _copy_run(run, tmp_path / "b")
    (copy2 / "splits.json").unlink()
    with pytest.raises(RunFolderError, match="splits.json: missing"):
        evaluate_run(copy2, report=False)
    copy3 = _copy_run(run, tmp_path / "c")
    (copy3 / "splits.json").write_text(json.dumps({**json.loads((copy3 / "splits.json").read_text()), "test": []}))
    with pytest.raises(SplitError, match="'test' split is empty"):
        evaluate_run(copy3, report=False)


def test_moved_store_and_missing_target(run, tmp_path):
    copy = _copy_run(run, tmp_path)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data"]["store"] = str(tmp_path / "moved.zarr")
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(StoreNotFoundError, match="store=") as error:
        evaluate_run(copy, report=False)
    assert "moved.zarr" in str(error.value)
    # Pointed at the store's real location, the moved run evaluates to the same numbers.
    options = dict(n_ways=(2,), n_repeats=3, n_bootstrap=0, n_permutations=0, baselines=False, report=False)
    moved = evaluate_run(copy, store=run["store"]["path"], **options)
    original = evaluate_run(run["run_dir"], **options)
    assert moved["retrieval"] == original["retrieval"]

    without = write_fmri_store(tmp_path / "no-targets.zarr", with_targets=False)
    with pytest.raises(StoreError, match="no longer holds these targets"):
        evaluate_run(run["run_dir"], store=without["path"], report=False)


def test_target_space_provenance():
    untrained = describe_target_space("clip", {"extractor": "open_clip", "model": "ViT-B-32", "pretrained": None,
                                               "allow_random_weights": True}, (512,))
    assert untrained["pretrained"] is False and "random" in untrained["name"] and untrained["dim"] == [512]
    tagged = describe_target_space("clip", {"extractor": "open_clip", "model": "ViT-H-14",
                                            "pretrained": "laion2b_s32b_b79k"})
    assert tagged["pretrained"] is True and "laion2b" in tagged["name"]
    assert describe_target_space("x", {"extractor": "precomputed", "path": "e.npz"})["pretrained"] is True
    # The record Study.target_config returns wraps the extractor's config.
    record = {"key": "cnn", "config": {"extractor": "image_pretrained_cnn"}, "config_hash": "abc"}
    assert describe_target_space("cnn", record)["pretrained"] is True


def test_ridge_time_pool_averages_consecutive_samples(tmp_path):
    from neurodec.data import TrialDataset
    from neurodec.evaluation.run import _brain_by_subject

    rng = np.random.default_rng(3)
    ids = [f"img-{i}" for i in range(6)]
    data = rng.standard_normal((6, 2, 7)).astype(np.float32)
    with StoreWriter(tmp_path / "eeg.zarr", name="pooling") as writer:
        writer.set_stimuli(stimulus_table(ids, "image"))
        writer.add_recording(RecordingData(subject="01", modality="eeg", layout="epoched", data=data,
                                           events=event_table(ids), sfreq=100.0, tmin=0.0,
                                           ch_names=["C3", "C4"], ch_types=["eeg", "eeg"], units=["V", "V"]))
    dataset = TrialDataset(tmp_path / "eeg.zarr", stimuli=ids)
    pooled = _brain_by_subject(dataset, time_pool=3)[0]
    # 7 samples in groups of 3: samples 0-2 and 3-5 averaged, the 7th dropped.
    by_hand = np.stack([data[:, :, 0:3].mean(2), data[:, :, 3:6].mean(2)], axis=2).reshape(6, 4)
    np.testing.assert_allclose(pooled, by_hand, rtol=1e-6)
    assert _brain_by_subject(dataset)[0].shape == (6, 14)
    with pytest.raises(ConfigError, match="evaluation.ridge.time_pool"):
        load_config({"data": {"store": "x", "target": "t"}, "model": {"name": "nice"},
                     "evaluation": {"ridge": {"time_pool": 0}}})
