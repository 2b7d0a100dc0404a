"""New-subject adaptation on tiny real fMRI stores whose subjects share a latent code.

Targets are random; each subject's voxels are ``(targets @ W_shared) @ A_s + noise`` with a
shared ``W_shared`` and a per-subject mixing ``A_s`` (different voxel counts), so a shared
model trained on two subjects needs only a new linear adapter for a third: adaptation from
few trials must beat training from scratch on the same trials. (64-d targets from an 8-d
latent: from 16 trials, scratch measured 6.7 +- 3.8 % 40-way top-1, adapted 26.7 +- 1.4 %.)
The aligned initialisation is checked against a ridge and a robust scaling written here with
numpy and scikit-learn, and the anatomical prior against a position-by-position average.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neurodec.config import load_config
from neurodec.errors import ConfigError, SplitError, StoreError
from neurodec.models import create_model, load_pretrained
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table
from neurodec.training import adapt, adapt_curve, leave_one_subject_out, train
from neurodec.training.adaptation import _fit_data, _load_context, subject_masks, trained_subjects

N_TRAIN_POOL, N_TEST, DIM, LATENT = 150, 40, 64, 8
VOXELS = {"01": 40, "02": 36, "03": 30}


def subject_recording(subject, ids, targets, shared, rng, n_voxels, noise=0.3):
    """Every training stimulus once, every test stimulus twice (repetitions 0 and 1)."""
    mixing = rng.standard_normal((LATENT, n_voxels)) / np.sqrt(LATENT)
    rows = np.concatenate([rng.permutation(N_TRAIN_POOL), N_TRAIN_POOL + np.arange(N_TEST),
                           N_TRAIN_POOL + np.arange(N_TEST)])
    repetition = [0] * (N_TRAIN_POOL + N_TEST) + [1] * N_TEST
    data = targets[rows] @ shared @ mixing + noise * rng.standard_normal((len(rows), n_voxels))
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask.flat[:n_voxels] = True
    return RecordingData(subject=subject, modality="fmri", layout="fmri", data=data.astype(np.float32),
                         events=event_table([ids[i] for i in rows], repetition=repetition),
                         mask=mask, affine=np.eye(4), voxel_ijk=np.argwhere(mask))


def write_store(path, subjects, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"img-{i:03d}" for i in range(N_TRAIN_POOL + N_TEST)]
    targets = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    shared = rng.standard_normal((DIM, LATENT)) / np.sqrt(DIM)
    with StoreWriter(path, name="adaptation tests", overwrite=True) as writer:
        writer.set_stimuli(stimulus_table(ids, "image", split=["train"] * N_TRAIN_POOL + ["test"] * N_TEST))
        for subject in subjects:
            writer.add_recording(subject_recording(subject, ids, targets, shared, rng, VOXELS[subject]))
    open_store(path, mode="r+").add_targets("clip", ids, targets, {"model": "random"})
    return {"ids": ids, "targets": targets, "shared": shared, "rng": rng}


def config_dict(store, runs_dir, name, **data):
    return {
        "data": {"store": str(store), "target": "clip", "split": {"val_fraction": 0.2, "seed": 0}, **data},
        "model": {"name": "mindeye", "hidden_dim": 32, "n_blocks": 1, "dropout": 0.0, "n_tokens": None,
                  "low_level": False, "projector": False},
        "optim": {"lr": 1e-2},
        "train": {"max_steps": 120, "epochs": None, "batch_size": 32, "log_every": 20, "checkpoint_every_steps": 1000,
                  "val_every": 20, "val_unit": "step", "selection_metric": "val/full-set top-1",
                  "validation": {"n_ways": [], "top_ks": [1], "full_set_top_ks": [1], "n_repeats": 2}},
        "output": {"runs_dir": str(runs_dir), "name": name},
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than several on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_and_new_subject(tmp_path_factory):
    """A run trained on sub-01 and sub-02; sub-03 joins the store afterwards (a new index)."""
    root = tmp_path_factory.mktemp("adapt")
    store = root / "study.zarr"
    made = write_store(store, ["01", "02"])
    # A per-subject robust scaler, as the demo's fMRI config: the new subject's is fitted on its K trials.
    run = train(load_config(config_dict(store, root / "runs", "shared",
                                        transforms=[{"name": "robust_scaler", "per_subject": True}])))
    open_store(store, mode="r+").add_recording(
        subject_recording("03", made["ids"], made["targets"], made["shared"], made["rng"], VOXELS["03"]))
    return {"store": store, "run_dir": run.run_dir}


def test_adaptation_trains_only_the_new_subject_and_beats_scratch_at_small_k(run_and_new_subject, tmp_path):
    run_dir = run_and_new_subject["run_dir"]
    base = load_pretrained(run_dir / "best" / "encoder")
    assert base.n_voxels == [40, 36]

    result = adapt(run_dir, "03", n_trials=16, seed=0, steps=60, out_dir=tmp_path / "one")
    encoder = result.encoder
    assert result.subject_index == 2 and encoder.n_voxels == [40, 36, 30]
    # Only the new subject's adapter changed: every tensor of the run's encoder is bitwise as loaded.
    adapted_state, base_state = encoder.state_dict(), base.state_dict()
    new_subject = {name for name, mask in subject_masks(encoder, 2).items() if mask.any()}
    assert new_subject == {"adapters.2.weight", "adapters.2.bias"}
    assert set(adapted_state) - new_subject == set(base_state)
    for name, tensor in base_state.items():
        assert torch.equal(adapted_state[name], tensor), name
    assert result.n_trained_parameters == 32 * 30 + 32
    # ... and it did change from its fresh initialisation (same seed, same construction).
    torch.manual_seed(0)
    fresh = create_model("mindeye", **encoder.config)
    assert not torch.equal(fresh.adapters[2].weight, encoder.adapters[2].weight)
    # The saved record and encoder agree with the result.
    saved = json.loads((tmp_path / "one" / "k16-seed0" / "adapt.json").read_text())
    assert saved["metrics"] == result.metrics and saved["n_trials"] == 16
    reloaded = load_pretrained(tmp_path / "one" / "k16-seed0" / "encoder")
    assert torch.equal(reloaded.adapters[2].weight, encoder.adapters[2].weight)

    # The comparison over three seeds: adapted beats scratch at small K, and rises with K.
    curve = adapt_curve(run_dir, "03", grid=(16, 1000), seeds=(0, 1, 2), steps=100, out_dir=tmp_path / "curve")
    assert curve["grid"] == [16, 120]  # 150 training stimuli, 30 of them validation: capped at 120
    assert curve["metric"] == "40-way top-1"  # 40 test stimuli, repetitions averaged
    small, large = curve["by_k"]["16"], curve["by_k"]["120"]
    assert small["adapted"]["mean"] > small["scratch"]["mean"] + 0.1
    assert large["adapted"]["mean"] > small["adapted"]["mean"]
    assert small["adapted"]["mean"] > 3 * (1 / 40)  # well above chance
    # Means and sds are those of the per-seed runs.
    adapted_small = [r["metrics"]["40-way top-1"] for r in curve["runs"] if r["n_trials"] == 16 and
                     r["mode"] == "adapted"]
    assert small["adapted"]["values"] == adapted_small and len(adapted_small) == 3
    assert small["adapted"]["sd"] == pytest.approx(np.std(adapted_small, ddof=1))
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["by_k"] == curve["by_k"]
    assert "| 16 |" in (tmp_path / "curve" / "curve.md").read_text()


def robust_scaled(rows, fitting_rows):
    """Per voxel: minus the median, over the interquartile range, both of ``fitting_rows``."""
    low, median, high = np.percentile(fitting_rows, [25, 50, 75], axis=0)
    return (rows - median) / np.where(high > low, high - low, 1.0)


def stored_trials(study, subject):
    recording = study.recording(subject=subject)
    ids = np.asarray(recording.events.to_pandas()["stimulus_id"])
    return ids, np.asarray(recording.data[:], dtype=np.float64)


def test_aligned_initialisation_is_a_ridge_to_the_trained_subjects_latents(run_and_new_subject, tmp_path):
    from sklearn.linear_model import Ridge

    run_dir, store = run_and_new_subject["run_dir"], run_and_new_subject["store"]
    result = adapt(run_dir, "03", n_trials=16, seed=0, steps=0, out_dir=tmp_path)  # the initial state alone
    assert result.steps_done == 0 and result.best_step == 0
    init = result.init
    # The test store declares no template space: no anatomical prior, the ridge alone.
    assert init["init"] == "aligned" and init["anatomical_prior"] is False and init["n_shared_trials"] == 16
    assert init["init_score"] == min(init["init_scores"].values())  # chosen on the lowest validation loss
    assert len(init["init_scores"]) == 17 and init["ridge_alpha"] is not None

    # Independently: the trained subjects' latents (their adapter on their robust-scaled voxels,
    # scaled with statistics of the run's training split), averaged per stimulus.
    study = open_store(store)
    base = load_pretrained(run_dir / "best" / "encoder").requires_grad_(False)
    splits = json.loads((run_dir / "splits.json").read_text())
    latents: dict[str, list[np.ndarray]] = {}
    for index, subject in enumerate(["01", "02"]):
        ids, data = stored_trials(study, subject)
        scaled = robust_scaled(data, data[np.isin(ids, splits["train"])])
        latent = scaled @ base.adapters[index].weight.double().numpy().T + base.adapters[index].bias.double().numpy()
        for row in np.flatnonzero(np.isin(ids, splits["train"])):
            latents.setdefault(ids[row], []).append(latent[row])
    # The new subject's K trials, scaled with statistics of those K trials only.
    ids, data = stored_trials(study, "03")
    raw = data[[int(np.flatnonzero(ids == stimulus)[0]) for stimulus in result.train_stimuli]]
    x = robust_scaled(raw, raw)
    y = np.stack([np.mean(latents[stimulus], axis=0) for stimulus in result.train_stimuli])
    centred = x - x.mean(axis=0)
    # RIDGE_ALPHAS are relative to the mean squared singular value of the centred trials.
    penalty = init["ridge_alpha"] * np.sum(centred ** 2) / np.linalg.matrix_rank(centred)
    ridge = Ridge(alpha=penalty).fit(x, y)
    adapter = result.encoder.adapters[2]
    scale = np.abs(ridge.coef_).max()
    np.testing.assert_allclose(adapter.weight.double().numpy(), ridge.coef_, atol=1e-4 * scale)
    np.testing.assert_allclose(adapter.bias.double().numpy(), ridge.intercept_, atol=1e-4 * np.abs(y).max())

    # Before any step, the aligned adapter decodes the new subject well above chance (1/40),
    # where the fresh (random) adapter does not.
    fresh = adapt(run_dir, "03", n_trials=16, seed=0, steps=0, init="random", out_dir=tmp_path)
    assert fresh.init == {"init": "random"} and fresh.metrics["40-way top-1"] < 3 / 40
    assert result.metrics["40-way top-1"] > 0.3  # measured 0.575
    assert result.metrics["40-way top-1"] > fresh.metrics["40-way top-1"] + 0.1


def test_each_fit_refits_the_transform_on_its_own_raw_trials(run_and_new_subject):
    """A context serves many fits (adapt_curve): each fit's transform is fitted on its K raw
    trials, never on trials already transformed by the previous fit's."""
    context = _load_context(run_and_new_subject["run_dir"], "03")
    first, _, _ = _fit_data(context, 16, 0)
    _fit_data(context, 40, 1)
    again, _, _ = _fit_data(context, 16, 0)
    assert torch.equal(first["brain"], again["brain"])
    ids, data = stored_trials(open_store(run_and_new_subject["store"]), "03")
    raw = data[[int(np.flatnonzero(ids == stimulus)[0]) for stimulus in first["stimulus_id"]]]
    np.testing.assert_allclose(first["brain"].numpy(), robust_scaled(raw, raw), rtol=1e-5, atol=1e-5)


def test_anatomical_prior_averages_the_trained_adapters_at_each_position(run_and_new_subject, tmp_path):
    """Voxels in one template space: each new voxel's prior column is the mean of the trained
    subjects' adapter columns at its world position (grids may differ), zero where none."""
    from neurodec.data import TrialDataset
    from neurodec.training.adaptation import _anatomical_prior

    rng = np.random.default_rng(5)
    ids = [f"img-{i}" for i in range(6)]
    volumes = {"01": (rng.random((3, 3, 3)) < 0.6, np.eye(4)),
               # sub-02 on a grid one voxel larger in i, shifted so that its voxel i+1 lies at world i
               "02": (np.pad(rng.random((3, 3, 3)) < 0.6, ((1, 0), (0, 0), (0, 0))), np.diag([1.0, 1, 1, 1])),
               "03": (np.ones((3, 3, 3), dtype=bool), np.eye(4))}
    volumes["02"][1][0, 3] = -1.0

    def write(path, spaces):
        with StoreWriter(path, name="anatomy", overwrite=True) as writer:
            writer.set_stimuli(stimulus_table(ids, "image", split=["train"] * 6))
            for subject, (mask, affine) in volumes.items():
                writer.add_recording(RecordingData(
                    subject=subject, modality="fmri", layout="fmri",
                    data=rng.standard_normal((6, int(mask.sum()))).astype(np.float32), events=event_table(ids),
                    mask=mask, affine=affine, voxel_ijk=np.argwhere(mask), info={"space": spaces[subject]}))
        return open_store(path)

    counts = [int(volumes[s][0].sum()) for s in ("01", "02", "03")]
    torch.manual_seed(0)
    base = create_model("mindeye", n_voxels=counts, n_outputs=8, hidden_dim=6, n_blocks=1, n_tokens=None,
                        low_level=False, projector=False)
    template = _load_context(run_and_new_subject["run_dir"], "03")  # a real context, its store swapped below

    def context_for(study):
        keys = [r.key for r in study.recordings()]
        return dataclasses.replace(template, study=study, base_encoder=base, subject_labels=["01", "02", "03"],
                                   trained_recordings=keys[:2], prior=None,
                                   train_set=TrialDataset(study, recordings=keys[2:]))

    prior = _anatomical_prior(context_for(write(tmp_path / "mni.zarr", {s: "MNI152" for s in volumes})))
    by_position: dict[tuple, list[np.ndarray]] = {}
    for index, subject in enumerate(["01", "02"]):
        mask, affine = volumes[subject]
        for column, ijk in enumerate(np.argwhere(mask)):
            world = tuple(int(v) for v in ijk + affine[:3, 3])
            by_position.setdefault(world, []).append(base.adapters[index].weight[:, column].detach().double().numpy())
    expected = np.stack([np.mean(by_position[tuple(ijk)], axis=0) if tuple(ijk) in by_position else np.zeros(6)
                         for ijk in np.argwhere(volumes["03"][0])], axis=1)
    assert {len(v) for v in by_position.values()} == {1, 2} and len(by_position) < 27  # shared, single, uncovered
    np.testing.assert_allclose(prior, expected, atol=1e-6)
    # Spaces that differ (a native one among them): positions do not correspond, no prior.
    native = write(tmp_path / "native.zarr", {"01": "MNI152", "02": "T1w", "03": "MNI152"})
    assert _anatomical_prior(context_for(native)) is None


def test_errors_name_the_problem(run_and_new_subject, tmp_path):
    run_dir = run_and_new_subject["run_dir"]
    assert trained_subjects(run_dir) == ["01", "02"]
    with pytest.raises(ConfigError, match=r"subject '01' is not new: .* trained on \['01', '02'\]"):
        adapt(run_dir, "01", n_trials=16, steps=5, out_dir=tmp_path)
    with pytest.raises(StoreError, match=r"subject '07' is not in .*; it holds \['01', '02', '03'\]"):
        adapt(run_dir, "07", n_trials=16, steps=5, out_dir=tmp_path)
    with pytest.raises(SplitError, match=r"n_trials=121: subject '03' has only 120 training trials"):
        adapt(run_dir, "03", n_trials=121, steps=5, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="at least 2 trials"):
        adapt(run_dir, "03", n_trials=1, steps=5, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a finished run folder"):
        adapt(tmp_path, "03", n_trials=16, steps=5)
    with pytest.raises(ConfigError, match=r"init: expected one of \['aligned', 'random'\], found 'zero'"):
        adapt(run_dir, "03", n_trials=16, steps=5, init="zero", out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"selection_metric: expected 'val/loss'.*found 'val/accuracy'"):
        adapt(run_dir, "03", n_trials=16, steps=5, selection_metric="val/accuracy", out_dir=tmp_path)


def test_leave_one_subject_out_builds_a_fresh_model_in_every_fold(tmp_path):
    store = tmp_path / "three.zarr"
    write_store(store, ["01", "02", "03"], seed=1)
    # A per-subject transform: adaptation fits the held-out subject's own on its K trials.
    document = config_dict(store, tmp_path / "runs", "loso",
                           transforms=[{"name": "robust_scaler", "per_subject": True}])
    document["train"].update(max_steps=20, val_every=10)
    config = load_config(document)
    initial, built = {}, {}

    def record(subject, encoder):
        initial[subject] = {name: t.detach().clone() for name, t in encoder.state_dict().items()}
        built[subject] = encoder  # keep the objects alive, so their identities cannot be reused

    folds = leave_one_subject_out(config, subjects=["02", "03"], n_trials=16, steps=10, fold_callback=record)
    assert list(folds["folds"]) == ["02", "03"] and list(initial) == ["02", "03"]
    for held_out, fold in folds["folds"].items():
        others = [s for s in ("01", "02", "03") if s != held_out]
        assert fold["trained_subjects"] == others and trained_subjects(fold["run_dir"]) == others
        # The fold's initial parameters are exactly a fresh model built from the config's seed.
        encoder = built[held_out]
        torch.manual_seed(config.train.seed)
        fresh = create_model("mindeye", **encoder.config)
        assert fresh.n_voxels == [VOXELS[s] if s != held_out else 1 for s in ("01", "02", "03")]
        assert set(fresh.state_dict()) == set(initial[held_out])
        for name, tensor in fresh.state_dict().items():
            assert torch.equal(initial[held_out][name], tensor), (held_out, name)
        assert 0 <= fold["metrics"]["40-way top-1"] <= 1 and fold["n_test_items"] == N_TEST
        assert fold["n_trials"] == 16 and fold["subject_index"] == int(held_out) - 1
        adapted = tmp_path / "runs" / "loso-loso" / f"without-sub-{held_out}" / f"adapt-sub-{held_out}" / "k16-seed0"
        assert (adapted / "transform" / "transform.json").is_file()
        assert json.loads((adapted / "adapt.json").read_text())["metrics"] == fold["metrics"]
    # No parameter object is shared between folds, and the second fold did not start where the
    # first one's training ended (the leakage of ATM's issue #7).
    first, second = built["02"], built["03"]
    assert first is not second
    assert not {id(p) for p in first.parameters()} & {id(p) for p in second.parameters()}
    # The second fold starts from its seeded initialisation (checked above), not from the first
    # fold's trained weights.
    trained_first = load_pretrained(tmp_path / "runs" / "loso-loso" / "without-sub-02" / "last" / "encoder")
    backbone = [name for name in initial["03"] if name.startswith("backbone.")]
    assert not all(torch.equal(trained_first.state_dict()[name], initial["03"][name]) for name in backbone)
    saved = json.loads((tmp_path / "runs" / "loso-loso" / "loso.json").read_text())
    assert saved["mean"]["40-way top-1"] == pytest.approx(
        np.mean([f["metrics"]["40-way top-1"] for f in folds["folds"].values()]))


def test_stacked_subject_weights_carry_over_row_by_row():
    """Subject weights stacked in one tensor (ATM's subject embeddings): the new subject owns
    one row; the other rows are the run's, the new row is the fresh model's."""
    from neurodec.training.adaptation import _load_shared

    torch.manual_seed(0)
    base = create_model("atm", n_chans=5, n_times=100, n_subjects=2, n_outputs=8)
    torch.manual_seed(1)
    grown = create_model("atm", n_chans=5, n_times=100, n_subjects=3, n_outputs=8)
    fresh_rows = {name: t.detach().clone() for name, t in grown.state_dict().items()}
    masks = subject_masks(grown, 2)
    owned = {name: mask for name, mask in masks.items() if mask.any()}
    assert owned and all(mask.shape[0] == 3 and mask[2].all() and not mask[:2].any() for mask in owned.values())
    _load_shared(grown, base, masks, 2)
    for name, tensor in grown.state_dict().items():
        if name in owned:
            assert torch.equal(tensor[:2], base.state_dict()[name]) and torch.equal(tensor[2], fresh_rows[name][2])
        else:
            assert torch.equal(tensor, base.state_dict()[name]), name
    with pytest.raises(ConfigError, match="cannot carry the shared weights over"):
        _load_shared(create_model("atm", n_chans=5, n_times=100, n_subjects=3, n_outputs=8), base, masks, 1)


def test_cli_adapt_passes_the_initialisation_and_selection_on(run_and_new_subject, tmp_path, capsys):
    from neurodec.cli import main

    run_dir = run_and_new_subject["run_dir"]
    assert main(["adapt", str(run_dir), "--subject", "03", "--n-trials", "16", "--steps", "0", "--init", "random",
                 "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "cli" / "k16-seed0" / "adapt.json").read_text())
    direct = adapt(run_dir, "03", n_trials=16, seed=0, steps=0, init="random", out_dir=tmp_path / "api")
    assert saved["init"] == direct.init and saved["metrics"] == direct.metrics
    assert f"{direct.metrics['full-set top-1']}" in printed
    assert main(["adapt", str(run_dir), "--subject", "03", "--n-trials", "16", "--init", "aligned",
                 "--selection-metric", "train/loss", "--out", str(tmp_path / "bad")]) == 1
    assert "selection_metric" in capsys.readouterr().err
