"""The trainer on a tiny real fMRI store: learning, the run folder, exact resume after SIGKILL,
two processes against one, repeated seeds, and errors raised before any training starts.

The store holds brain data that are a per-subject linear map of random target embeddings plus
noise, so retrieval on the validation split can be learned and is measured against chance and
against an independent computation from the saved encoder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from neurodec.config import load_config
from neurodec.data import split_stimuli
from neurodec.errors import ConfigError, RegistryError, SplitError, StoreError, StoreNotFoundError
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table
from neurodec.training import read_history, train

PROJECT_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN_POOL, N_TEST, DIM = 48, 12, 16
VOXELS = {"01": 40, "02": 36}


def fmri_recording(subject, ids, rows, targets, mapping, rng, noise=0.5, repetitions=None):
    data = targets[rows] @ mapping + noise * rng.standard_normal((len(rows), mapping.shape[1]))
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask.flat[: mapping.shape[1]] = True
    return RecordingData(subject=subject, modality="fmri", layout="fmri", data=data.astype(np.float32),
                         events=event_table([ids[i] for i in rows], repetition=repetitions),
                         mask=mask, affine=np.eye(4), voxel_ijk=np.argwhere(mask))


def write_fmri_store(path, seed=0):
    """Two subjects, every stimulus shown twice; brain = targets @ W_subject + noise."""
    rng = np.random.default_rng(seed)
    ids = [f"img-{i:03d}" for i in range(N_TRAIN_POOL + N_TEST)]
    targets = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    mappings = {}
    with StoreWriter(path, name="trainer tests", overwrite=True) as writer:
        writer.set_stimuli(stimulus_table(ids, "image", split=["train"] * N_TRAIN_POOL + ["test"] * N_TEST))
        for subject, n_voxels in VOXELS.items():
            mappings[subject] = rng.standard_normal((DIM, n_voxels)) / np.sqrt(DIM)
            rows = np.concatenate([rng.permutation(len(ids)), rng.permutation(len(ids))])
            writer.add_recording(fmri_recording(subject, ids, rows, targets, mappings[subject], rng,
                                                repetitions=[0] * len(ids) + [1] * len(ids)))
    open_store(path, mode="r+").add_targets("clip", ids, targets, {"model": "random"})
    return {"path": path, "ids": ids, "targets": targets, "mappings": mappings}


@pytest.fixture(scope="module")
def fmri(tmp_path_factory):
    return write_fmri_store(tmp_path_factory.mktemp("fmri") / "fmri.zarr")


def config_dict(store, runs_dir, name="run", **sections):
    document = {
        "data": {"store": str(store), "target": "clip", "split": {"val_fraction": 0.25, "seed": 0}},
        "model": {"name": "mindeye", "hidden_dim": 32, "n_blocks": 1, "dropout": 0.0, "n_tokens": None,
                  "low_level": False, "projector": False},
        "optim": {"lr": 3e-3, "schedule": "warmup_cosine", "warmup_steps": 4},
        "train": {"max_steps": 40, "epochs": None, "batch_size": 16, "log_every": 5, "checkpoint_every_steps": 10,
                  "selection_metric": "val/full-set top-1",
                  # N-way scores cost ~0.1 s each (scipy's hypergeometric); most tests skip them.
                  "validation": {"n_ways": [], "top_ks": [1], "full_set_top_ks": [1], "n_repeats": 2}},
        "output": {"runs_dir": str(runs_dir), "name": name},
    }
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    return document


def full_set_top1(brain, targets, subjects):
    """Top-1 retrieval of each item among its subject's validation items, by cosine similarity,
    pooled over items (an independent count)."""
    brain = brain / np.linalg.norm(brain, axis=1, keepdims=True)
    targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    hits = []
    for subject in np.unique(subjects):
        rows = np.flatnonzero(subjects == subject)
        hits += (np.argmax(brain[rows] @ targets[rows].T, axis=1) == np.arange(len(rows))).tolist()
    return float(np.mean(hits))


# ------------------------------------------------------------------------ learning
def test_training_learns_and_the_run_folder_holds_what_evaluation_reads(fmri, tmp_path):
    from neurodec.data import TrialDataset, load_transform
    from neurodec.models import load_pretrained

    config = load_config(config_dict(fmri["path"], tmp_path / "runs", name="learn",
                                     data={"transforms": [{"name": "robust_scaler", "per_subject": True}]}),
                         ["train.selection_metric=val/10-way top-1", "train.validation.n_ways=[10]"])
    run = train(config)
    run_dir = tmp_path / "runs" / "learn"
    assert run.run_dir == run_dir and run.best_checkpoint == run_dir / "best"

    validations = [row for row in run.history if "val/loss" in row]
    assert [row["step"] for row in validations] == [9, 18, 27, 36, 40]  # 9 batches per epoch, then the end
    first, best = validations[0], max(validations, key=lambda row: row["val/10-way top-1"])
    # Learned: far above the 10% chance of 10-way top-1, and above the first epoch's value.
    assert best["val/10-way top-1"] >= 0.4 > 0.1 and best["val/10-way top-1"] > first["val/10-way top-1"]
    assert validations[-1]["val/loss"] < first["val/loss"]
    assert run.final_metrics["val/10-way top-1"] == best["val/10-way top-1"]

    # The selected checkpoint is the validation maximum (the first one reaching it).
    meta = json.loads((run_dir / "best" / "meta.json").read_text())
    assert meta["step"] == best["step"] and meta["value"] == best["val/10-way top-1"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["best_step"] == best["step"] and result["steps"] == 40

    # Independent check of a validation metric: embed the validation split with the saved
    # encoder and count top-1 hits by hand.
    splits = json.loads((run_dir / "splits.json").read_text())
    expected = split_stimuli(fmri["path"], val_fraction=0.25, seed=0)
    assert splits["val"] == expected.val.tolist() and splits["test"] == expected.test.tolist()
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["train"] + splits["val"]) & set(
        fmri["ids"][N_TRAIN_POOL:])
    transform = load_transform(run_dir / "transform")
    val = TrialDataset(fmri["path"], stimuli=splits["val"], average_repetitions=True, target="clip",
                       transform=transform)
    encoder = load_pretrained(run_dir / "best" / "encoder").eval()
    with torch.no_grad():
        batch = val[list(range(len(val)))]
        brain = encoder(batch["brain"], batch["subject"]).numpy()
    assert brain.shape == (24, DIM)
    by_hand = full_set_top1(brain, batch["target"].numpy(), batch["subject"].numpy())
    assert by_hand == pytest.approx(meta["metrics"]["val/full-set top-1"])

    # The transform was fitted on training trials only: each subject's centre is the median of
    # that subject's training trials (all voxels of the 36 training stimuli x 2 repetitions).
    train_ids = set(splits["train"])
    study = open_store(fmri["path"])
    for index, subject in enumerate(study.subjects):
        recording = study.recording(subject=subject)
        rows = np.isin(recording.events["stimulus_id"], list(train_ids))
        np.testing.assert_allclose(transform.by_subject[index].center,
                                   np.median(recording.data[...][rows], axis=0), rtol=1e-6)
        assert transform.by_subject[index].fitted_on["n_trials"] == 2 * len(train_ids) * 2  # both subjects' trials
    # Resolved config, metrics as JSONL and CSV with the same rows.
    assert load_config(run_dir / "config.yaml") == config
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(read_history(run_dir)) and csv_lines[0].startswith("step,epoch,time")
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "splits.json", "data.json", "transform",
                                                   "metrics.jsonl", "metrics.csv", "best", "last", "result.json"}
    assert not list(run_dir.glob(".*"))  # no temporary files left

    # The same command again finds the finished run and does not train again.
    again = train(config)
    assert again.history == run.history and again.final_metrics == run.final_metrics


# ---------------------------------------------------------------------- resume
CHILD = """
import logging, sys, time
import torch
logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
from neurodec.training import train
delay = float(sys.argv[3])
train(sys.argv[1], run_dir=sys.argv[2], step_callback=(lambda step: time.sleep(delay)) if delay else None)
"""


def tensors_of(folder):
    weights = load_file(str(folder / "encoder" / "model.safetensors"))
    weights.update({f"loss.{k}": v for k, v in load_file(str(folder / "loss.safetensors")).items()})
    return weights


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_a_run_killed_at_a_random_step_resumes_to_bitwise_the_same_parameters(fmri, tmp_path):
    # Dropout, MixCo (random partners and mixing weights) and the data order all draw random
    # numbers: the resumed run must replay every one of them.
    document = config_dict(fmri["path"], tmp_path / "runs", name="resume",
                           data={"voxel_batches": "pad"},
                           model={"dropout": 0.2},
                           loss={"terms": {"clip": 1.0, "mixco": {"weight": 0.5, "temperature": 0.1}}},
                           train={"log_every": 1, "checkpoint_every_steps": 8, "max_steps": 40})
    config_path = tmp_path / "resume.yaml"
    config_path.write_text(yaml.safe_dump(document))
    (tmp_path / "child.py").write_text(CHILD)
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(tmp_path / "child.py"), str(config_path), str(killed_dir)]

    child = subprocess.Popen(command + ["0.05"], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 180  # the child imports torch first: slow on a loaded machine
    while not (killed_dir / "last" / "meta.json").exists():  # at least one checkpoint (step 8)
        assert child.poll() is None and time.time() < deadline, child.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    while max([row["step"] for row in read_history(killed_dir)] or [0]) < 10:
        assert child.poll() is None and time.time() < deadline, "the child ended before step 10"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = max(row["step"] for row in read_history(killed_dir))
    checkpoint_step = json.loads((killed_dir / "last" / "meta.json").read_text())["step"]
    assert checkpoint_step % 8 == 0 and killed_at < 40 and not (killed_dir / "result.json").exists()

    resumed = subprocess.run(command + ["0"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {killed_dir} from step {checkpoint_step} " in resumed.stderr

    # The reference: the same training, uninterrupted, also on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(load_config(config_path), run_dir=tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    final, expected = tensors_of(killed_dir / "last"), tensors_of(reference.run_dir / "last")
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    best, expected_best = tensors_of(killed_dir / "best"), tensors_of(reference.run_dir / "best")
    assert all(torch.equal(best[name], expected_best[name]) for name in expected_best)
    # The log was cut back to the checkpoint and replayed: the same rows, none twice.
    assert without_time(read_history(killed_dir)) == without_time(reference.history)
    assert [r["step"] for r in read_history(killed_dir) if "train/loss" in r] == list(range(1, 41))


# ----------------------------------------------------------------- two processes
def launch_torchrun(config_path, run_dir, cwd, n_processes=2, timeout=240):
    """``neurodec train CONFIG --run-dir RUN_DIR`` under ``torchrun`` (CPU, gloo); fails the test on error."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n_processes),
         "-m", "neurodec", "train", str(config_path), "--run-dir", str(run_dir)],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    return launched


def test_two_processes_give_the_metrics_and_parameters_of_one(fmri, tmp_path):
    document = config_dict(fmri["path"], tmp_path / "runs", name="ddp", train={"max_steps": 24})
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(document))
    launch_torchrun(config_path, tmp_path / "two", cwd=tmp_path)
    one = train(load_config(config_path), run_dir=tmp_path / "one")
    two_history = read_history(tmp_path / "two")
    assert [r["step"] for r in two_history] == [r["step"] for r in one.history]  # rank 0 alone wrote the log
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    validations = [(a, b) for a, b in zip(one.history, two_history, strict=True) if "val/loss" in a]
    assert len(validations) == 3  # after epochs 1 and 2, and at step 24
    for single, double in validations:
        assert double["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
        for name in single:
            if name.startswith("val/") and name != "val/loss":
                assert double[name] == pytest.approx(single[name], abs=1e-9), name
    for single, double in zip(one.history, two_history):
        if "train/loss" in single:  # the global contrastive loss, whatever the number of processes
            assert double["train/loss"] == pytest.approx(single["train/loss"], rel=1e-4)
    final_one, final_two = tensors_of(tmp_path / "one" / "last"), tensors_of(tmp_path / "two" / "last")
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ repeated runs
def test_repeated_seeds_write_one_run_each_and_a_summary(fmri, tmp_path):
    document = config_dict(fmri["path"], tmp_path / "runs", name="seeds", train={"max_steps": 9, "n_seeds": 2,
                                                                                   "seed": 7})
    run = train(load_config(document))
    assert [r.run_dir.name for r in run.seed_runs] == ["seed-7", "seed-8"]
    summary = json.loads((run.run_dir / "summary.json").read_text())
    finals = [json.loads((run.run_dir / f"seed-{s}" / "result.json").read_text())["best_metrics"] for s in (7, 8)]
    for name in ("val/loss", "val/full-set top-1"):
        values = [final[name] for final in finals]
        assert summary["mean"][name] == pytest.approx(np.mean(values))
        assert summary["sd"][name] == pytest.approx(np.std(values, ddof=1))
    assert finals[0]["val/loss"] != finals[1]["val/loss"]  # the seeds differ (init and data order)
    assert yaml.safe_load((run.run_dir / "seed-8" / "config.yaml").read_text())["train"]["seed"] == 8


# ------------------------------------------------------------------ bad input
def add_val_only_subject(store, seed=0):
    """A subject '03' that saw only validation stimuli."""
    splits = split_stimuli(store, val_fraction=0.25, seed=seed)
    study = open_store(store, mode="r+")
    ids = study.stimuli["id"].tolist()
    rows = np.asarray([ids.index(s) for s in splits.val])
    targets = study.targets("clip")[1]
    rng = np.random.default_rng(3)
    study.add_recording(fmri_recording("03", ids, rows, targets, rng.standard_normal((DIM, 30)), rng))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"data": {"store": "MISSING"}}, StoreNotFoundError, r"data\.store: no study store at .*MISSING"),
        ({"data": {"target": "dinov2"}}, StoreError, r"data\.target: .* has no targets 'dinov2'; it holds \['clip'\]"),
        ({"data": {"split": {"val_fraction": 0.0}}}, SplitError, r"validation split is empty"),
        ({"data": {"subjects": ["07"]}}, StoreError, r"data\.subjects: \['07'\] are not in"),
        ({"model": {"n_outputs": 8}}, ConfigError,
         r"model\.n_outputs: the encoder gives \(8,\) per sample .* target 'clip' has \(16,\)"),
        ({"model": {"hidden": 8}}, ConfigError, r"model: model\.hidden not accepted by 'mindeye'"),
        ({"model": {"name": "mindeyes"}}, RegistryError, r"model\.name: unknown model 'mindeyes'; known models: atm"),
        ({"train": {"selection_metric": "val/50-way top-1"}}, ConfigError,
         r"train\.selection_metric: 'val/50-way top-1' will not be computed .* available: \['val/loss'"),
        ({"train": {"batch_size": 500}}, SplitError, r"split 'train' holds 144 items, fewer than"),
        ({"loss": {"terms": {"clipp": 1.0}}}, ConfigError, r"loss\.terms: unknown loss 'clipp'; known losses"),
        ({"data": {"voxel_batches": "by_subject"}, "loss": {"terms": {"mixco": 1.0}}}, ConfigError,
         r"mixco mixes samples of one tensor.*set data\.voxel_batches=pad"),
        ("unseen subject", SplitError, r"validation holds subjects \['03'\] that have no training trials"),
    ],
)
def test_bad_input_fails_in_one_line_before_training(tmp_path, change, error, message):
    store = write_fmri_store(tmp_path / "store.zarr")["path"]
    document = config_dict(store, tmp_path / "runs", name="bad")
    if change == "unseen subject":
        add_val_only_subject(store)
    else:
        for section, values in change.items():
            document.setdefault(section, {}).update(values)
        if change.get("data", {}).get("store") == "MISSING":
            document["data"]["store"] = str(tmp_path / "MISSING.zarr")
    with pytest.raises(error, match=message) as caught:
        train(load_config(document))
    assert "\n" not in str(caught.value)
    run_dir = tmp_path / "runs" / "bad"
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "last").exists()


def test_an_existing_run_with_another_config_is_not_resumed(fmri, tmp_path):
    document = config_dict(fmri["path"], tmp_path / "runs", name="twice", train={"max_steps": 2})
    train(load_config(document))
    with pytest.raises(ConfigError, match=r"started with another config \(changed: optim\.lr\)"):
        train(load_config(document, ["optim.lr=1e-2"]))
    with pytest.raises(ConfigError, match="a run folder exists there"):
        train(load_config(document), resume=False)
    # Evaluation and reconstruction settings are read after training: they may change, and the
    # saved config then holds the new values for `neurodec evaluate` to read.
    again = train(load_config(document, ["evaluation.ridge.time_pool=5", "reconstruction.strength=0.5"]))
    saved = load_config(again.run_dir / "config.yaml")
    assert saved.evaluation.ridge.time_pool == 5 and saved.reconstruction.strength == 0.5


# ------------------------------------------------------------ continuous M/EEG
def write_meg_store(path, seed=1):
    """Two subjects x two continuous runs; each onset adds a target-dependent burst."""
    rng = np.random.default_rng(seed)
    ids = [f"w-{i:02d}" for i in range(40)]
    targets = rng.standard_normal((len(ids), 8)).astype(np.float32)
    sfreq, n_channels = 50.0, 6
    burst = np.hanning(25)
    with StoreWriter(path, name="continuous trainer tests", overwrite=True) as writer:
        writer.set_stimuli(stimulus_table(ids, "audio"))
        for subject in ("01", "02"):
            mapping = rng.standard_normal((n_channels, 8)) / np.sqrt(8)
            positions = np.c_[rng.uniform(-0.08, 0.08, (n_channels, 2)), np.full(n_channels, 0.05)]
            for run in ("01", "02"):
                order = rng.permutation(len(ids))
                onsets = 50 + 50 * np.arange(len(order))  # one per second
                data = 0.3 * rng.standard_normal((n_channels, int(onsets[-1] + 100)))
                for stimulus, onset in zip(order, onsets):
                    data[:, onset: onset + 25] += (mapping @ targets[stimulus])[:, None] * burst
                writer.add_recording(RecordingData(
                    subject=subject, run=run, modality="meg", layout="continuous", data=data.astype(np.float32),
                    events=event_table([ids[i] for i in order], sample=onsets, onset=onsets / sfreq), sfreq=sfreq,
                    ch_names=[f"MEG{c:03d}" for c in range(n_channels)], ch_types=["mag"] * n_channels,
                    units=["T"] * n_channels, sensor_positions=positions))
    open_store(path, mode="r+").add_targets("wav2vec", ids, targets, {"model": "random"})
    return path


def test_continuous_windows_split_by_runs_train_brainmagick(tmp_path):
    from neurodec.data import split_runs

    store = write_meg_store(tmp_path / "meg.zarr")
    document = {
        "data": {"store": str(store), "target": "wav2vec", "window": {"tmin": 0.0, "tmax": 0.5},
                 "split": {"by": "runs", "test_fraction": 0.2, "val_fraction": 0.2, "seed": 0},
                 "transforms": [{"name": "standard_scaler"}, {"name": "clamp", "limit": 20}]},
        "model": {"name": "brainmagick", "spatial_channels": 8, "position_dim": 32, "hidden_channels": 16,
                  "n_blocks": 2, "temporal_pooling": "mean", "spatial_dropout": 0.0},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 16, "selection_metric": "val/full-set top-1",
                  "validation": {"n_ways": [], "full_set_top_ks": [1]}},
        "output": {"runs_dir": str(tmp_path / "runs"), "name": "meg"},
    }
    run = train(load_config(document))
    splits = json.loads((run.run_dir / "splits.json").read_text())
    expected = split_runs(store, test_fraction=0.2, val_fraction=0.2, seed=0)
    assert splits["by"] == "runs"
    for part in ("train", "val", "test"):
        assert splits[part] == {key: rows.tolist() for key, rows in getattr(expected, part).items()}
    # The last 20% of each run's onsets (8 of 40) are test, and never read by the trainer.
    assert all(rows == list(range(32, 40)) for rows in splits["test"].values()) and len(splits["test"]) == 4
    data = json.loads((run.run_dir / "data.json").read_text())
    n_train = sum(len(rows) for rows in expected.train.values())
    assert data["n_items"]["train"] == n_train and data["brain_shape"] == [6, 25]
    assert data["train"]["n_trials"] == n_train  # the transform's record: training windows only
    encoder = run.load_encoder()
    assert encoder.config["n_outputs"] == 8 and encoder.config["n_times"] == 25
    # The sensor positions of each subject reached the encoder (projected to 2-D, finite).
    assert torch.isfinite(encoder.subject_positions).all()
    assert [row["step"] for row in run.history if "val/loss" in row] == [n_train // 16 * e for e in (1, 2)]


# -------------------------------------------------------- selection details
def test_early_stopping_ends_after_patience_validations_without_improvement(fmri, tmp_path):
    # A learning rate of 1e-12 leaves float32 weights bitwise unchanged, so the metric stays
    # flat: the first validation is the best (a strict improvement is needed), and the next two
    # (patience 2) end the run.
    document = config_dict(fmri["path"], tmp_path / "runs", name="early", optim={"lr": 1e-12, "schedule": "none"},
                           train={"max_steps": None, "epochs": 10, "early_stopping_patience": 2,
                                  "selection_metric": "val/loss", "selection_mode": "max"})
    run = train(load_config(document))
    result = json.loads((run.run_dir / "result.json").read_text())
    assert result["stopped_early"] and result["epochs_completed"] == 3 and result["steps"] == 27
    assert result["best_step"] == 9
    assert json.loads((run.run_dir / "best" / "meta.json").read_text())["step"] == 9


def test_learning_rate_schedules_by_hand(fmri):
    from neurodec.training import learning_rate

    base = {"data": {"store": "s", "target": "t"}, "model": {"name": "nice"}}
    one_cycle = load_config({**base, "optim": {"lr": 1.0, "schedule": "one_cycle", "pct_start": 0.25,
                                              "div_factor": 10.0, "final_div_factor": 100.0}})
    values = [learning_rate(one_cycle, step, 8) for step in range(9)]
    assert values[0] == pytest.approx(0.1)  # lr / div_factor
    assert values[1] == pytest.approx(0.1 + 0.9 * 0.5)  # half way up the cosine (rise = 2 steps)
    assert values[2] == pytest.approx(1.0)
    assert values[5] == pytest.approx(0.001 + (1 - 0.001) * 0.5 * (1 + np.cos(np.pi * 3 / 6)))
    assert values[8] == pytest.approx(0.001)  # lr / (div_factor * final_div_factor)
    cosine = load_config({**base, "optim": {"lr": 2.0, "schedule": "warmup_cosine", "warmup_steps": 3,
                                           "min_lr_ratio": 0.1}})
    assert [learning_rate(cosine, s, 13) for s in (0, 2, 3, 8, 13)] == pytest.approx(
        [2 / 3, 2.0, 2.0, 2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 5 / 10))), 0.2])


def test_bf16_autocast_follows_the_fp32_run_closely(fmri, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        document = config_dict(fmri["path"], tmp_path / "runs", name=precision,
                               train={"max_steps": 4, "log_every": 1, "precision": precision})
        run = train(load_config(document))
        losses[precision] = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert losses["fp32"] != losses["bf16"]  # bf16 matrix products did run (they round differently)
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)
