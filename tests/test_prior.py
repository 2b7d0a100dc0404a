"""The diffusion prior (neurodec.models.prior): shapes, classifier-free conditioning dropout,
guidance, the sampler against a hand-written DDPM with the cosine schedule, determinism,
learning a linear brain -> target map, saving, and training as a loss term of the real trainer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neurodec.errors import ConfigError, RunFolderError
from neurodec.losses import WeightedLoss, create_loss
from neurodec.models.prior import DiffusionPrior, DiffusionPriorLoss, load_prior

TINY = {"hidden_dim": 32, "n_layers": 2, "n_heads": 4}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are tiny: one thread is faster than several on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_prior(seed=0, **options):
    torch.manual_seed(seed)
    return DiffusionPrior(**{"dim": 8, **TINY, **options})


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("options, brain_shape, target_shape", [
    ({}, (5, 8), (5, 8)),                                                     # pooled
    ({"n_tokens": 3}, (5, 3, 8), (5, 3, 8)),                                  # token sequences
    ({"n_tokens": 3, "brain_dim": 6, "n_brain_tokens": 2}, (5, 2, 6), (5, 3, 8)),
    ({"causal": True, "brain_dim": 4}, (5, 4), (5, 8)),                       # DALL-E 2's causal mask
])
def test_shapes_of_the_loss_the_prediction_and_the_samples(options, brain_shape, target_shape):
    prior = tiny_prior(**options)
    brain, target = torch.randn(brain_shape, requires_grad=True), torch.randn(target_shape)
    loss = prior.forward_loss(brain, target)
    assert loss.shape == () and math.isfinite(loss.item())
    loss.backward()
    assert brain.grad is not None and brain.grad.abs().sum() > 0  # the loss reaches the brain embedding
    assert all(p.grad is not None for p in prior.parameters() if p is not prior.null_brain_embedding)
    prediction = prior.denoise(torch.randn(target_shape), torch.tensor([0, 10, 50, 90, 99]), prior.condition(brain))
    assert prediction.shape == target_shape
    samples = prior.sample(brain.detach(), num_inference_steps=4, seeds=range(5))
    assert samples.shape == target_shape and torch.isfinite(samples).all()
    with pytest.raises(ValueError, match="brain_embedding must be"):
        prior.forward_loss(torch.randn(5, 7), target)
    with pytest.raises(ValueError, match="target must be"):
        prior.forward_loss(brain, torch.randn(5, 9))


def test_invalid_options_are_config_errors():
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        DiffusionPrior(dim=8, hidden_dim=30, n_heads=4)
    with pytest.raises(ConfigError, match="cond_drop_prob"):
        DiffusionPrior(dim=8, n_heads=2, cond_drop_prob=1.5)
    with pytest.raises(ConfigError, match="diffusion_prior.*unexpected keyword"):
        create_loss("diffusion_prior", dim=8, n_heads=2, n_layer=3)


def test_the_noise_schedule_is_the_cosine_schedule_of_nichol_and_dhariwal():
    prior = tiny_prior()
    steps = prior.timesteps
    assert steps == 100

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
    expected = np.cumprod(1 - np.array(betas))
    np.testing.assert_allclose(prior.scheduler.alphas_cumprod.numpy(), expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------- conditioning dropout
def test_conditioning_is_replaced_by_the_null_embedding_at_the_given_rate_during_training():
    prior = tiny_prior(cond_drop_prob=0.2)
    seen = []
    prior.brain_projection.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    n = 5000
    brain = torch.randn(n, 8)
    prior.forward_loss(brain, torch.randn(n, 8), generator=torch.Generator().manual_seed(3))
    tokens = seen[-1][:, 0]
    dropped = (tokens == prior.null_brain_embedding[0]).all(dim=1)
    kept = (tokens == brain).all(dim=1)
    assert bool((dropped ^ kept).all())  # every sample is either itself or the null embedding
    sd = math.sqrt(0.2 * 0.8 / n)
    assert abs(dropped.float().mean().item() - 0.2) < 4 * sd

    # In eval mode (and with cond_drop_prob=0) the brain embedding is always used.
    prior.eval()
    prior.forward_loss(brain, torch.randn(n, 8))
    assert torch.equal(seen[-1][:, 0], brain)

    # With cond_drop_prob=1 the loss does not depend on the brain embedding at all.
    prior.train()
    prior.cond_drop_prob = 1.0
    losses = [prior.forward_loss(torch.randn(16, 8), torch.ones(16, 8), generator=torch.Generator().manual_seed(0))
              for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    prior.cond_drop_prob = 0.0
    losses = [prior.forward_loss(torch.randn(16, 8), torch.ones(16, 8), generator=torch.Generator().manual_seed(0))
              for _ in range(2)]
    assert not torch.equal(losses[0], losses[1])


def test_guidance_combines_conditional_and_unconditional_predictions():
    prior = tiny_prior().eval()
    noisy, brain, step = torch.randn(6, 8), torch.randn(6, 8), torch.tensor(40)
    with torch.no_grad():
        conditional = prior.denoise(noisy, step, prior.condition(brain))
        unconditional = prior.denoise(noisy, step, prior.null_brain_embedding.expand(6, 1, 8))
        assert torch.equal(prior.predict_clean(noisy, step, brain, guidance_scale=1.0), conditional)
        torch.testing.assert_close(prior.predict_clean(noisy, step, brain, guidance_scale=3.5),
                                   unconditional + 3.5 * (conditional - unconditional), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(conditional, unconditional, atol=1e-3)  # guidance has something to weigh


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_sampling_follows_a_hand_written_ddpm_posterior(guidance_scale):
    """The x0-parameterised DDPM reverse step (Ho et al. 2020, eq. 7) with 'trailing' strided
    timesteps and per-sample generators, written out by hand."""
    prior = tiny_prior().eval()
    brain, seeds, steps = torch.randn(3, 8), [11, 12, 13], 10
    alphas = prior.scheduler.alphas_cumprod.double()
    timesteps = [round(t) - 1 for t in np.arange(prior.timesteps, 0, -prior.timesteps / steps)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.cat([torch.randn(1, 8, generator=g) for g in generators]).double()
    with torch.no_grad():
        for index, t in enumerate(timesteps):
            x0 = prior.predict_clean(x.float(), torch.tensor(t), brain, guidance_scale).double()
            previous = timesteps[index + 1] if index + 1 < len(timesteps) else -1
            a_t, a_prev = alphas[t], (alphas[previous] if previous >= 0 else torch.tensor(1.0, dtype=torch.double))
            beta = 1 - a_t / a_prev
            mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t) * x
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)
            noise = torch.cat([torch.randn(1, 8, generator=g) for g in generators]).double()
            x = mean + variance.sqrt() * noise
    samples = prior.sample(brain, num_inference_steps=steps, guidance_scale=guidance_scale, seeds=seeds)
    torch.testing.assert_close(samples.double(), x, rtol=1e-4, atol=1e-4)


def test_sampling_is_deterministic_per_seed_and_independent_of_the_batch():
    prior = tiny_prior(n_tokens=2)
    brain = torch.randn(6, 2, 8)
    first = prior.sample(brain, num_inference_steps=8, seeds=range(6))
    assert torch.equal(first, prior.sample(brain, num_inference_steps=8, seeds=range(6)))
    # Samples 1 and 4 alone, in the other order, with their own seeds: the same results.
    alone = prior.sample(brain[[4, 1]], num_inference_steps=8, seeds=[4, 1])
    torch.testing.assert_close(alone, first[[4, 1]], rtol=0, atol=1e-6)
    other_seeds = prior.sample(brain, num_inference_steps=8, seeds=range(10, 16))
    assert (other_seeds - first).abs().amax(dim=(1, 2)).min() > 1e-3
    # One generator: reproducible from its seed; the module's training mode is left as it was.
    assert prior.training
    one = prior.sample(brain, num_inference_steps=8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, prior.sample(brain, num_inference_steps=8, generator=torch.Generator().manual_seed(5)))
    assert prior.training
    with pytest.raises(ValueError, match="one integer per sample"):
        prior.sample(brain, seeds=[1, 2])


# ---------------------------------------------------------------------------- learning
def test_a_tiny_prior_learns_a_linear_brain_to_target_map():
    """Targets are an orthogonal map of brain embeddings plus a little noise. After 200 steps,
    samples on held-out brain embeddings are far closer to their targets than the training
    mean is (the best guess without the brain)."""
    generator = torch.Generator().manual_seed(0)
    mapping = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
    brain = torch.randn(640, 8, generator=generator)
    target = brain @ mapping + 0.05 * torch.randn(640, 8, generator=generator)
    train_brain, train_target, val_brain, val_target = brain[:512], target[:512], brain[512:], target[512:]
    prior = tiny_prior(hidden_dim=64)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(200):
        rows = torch.randint(0, 512, (128,), generator=generator)
        loss = prior.forward_loss(train_brain[rows], train_target[rows], generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    samples = prior.sample(val_brain, num_inference_steps=20, seeds=range(128))
    sample_mse = float(((samples - val_target) ** 2).mean())
    mean_mse = float(((train_target.mean(0) - val_target) ** 2).mean())
    assert mean_mse > 0.8  # unit-variance targets
    assert sample_mse < 0.1 * mean_mse, (sample_mse, mean_mse)
    # The unconditional prior knows nothing about the sample: no better than the mean.
    unconditional = prior.sample(val_brain, num_inference_steps=20, guidance_scale=0.0, seeds=range(128))
    assert float(((unconditional - val_target) ** 2).mean()) > 0.8 * mean_mse


# ---------------------------------------------------------------------------- saving
def test_save_and_load_round_trip(tmp_path):
    prior = tiny_prior(n_tokens=2, brain_dim=6, target_scale=2.0)
    with torch.no_grad():
        prior.null_brain_embedding.add_(1.0)  # not the initial values
    folder = prior.save_pretrained(tmp_path / "prior")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = DiffusionPrior.from_pretrained(folder)
    assert loaded.config == prior.config and not loaded.training
    state, loaded_state = prior.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    brain = torch.randn(3, 2, 6)
    assert torch.equal(prior.sample(brain, num_inference_steps=5, seeds=[0, 1, 2]),
                       loaded.sample(brain, num_inference_steps=5, seeds=[0, 1, 2]))
    # A config that does not belong to the weights is refused.
    config_path = folder / "config.json"
    config_path.write_text(config_path.read_text().replace('"n_layers": 2', '"n_layers": 3'))
    with pytest.raises(ConfigError, match="config_sha256 mismatch"):
        DiffusionPrior.from_pretrained(folder)


# ------------------------------------------------------------------ the real trainer
def test_the_trainer_trains_the_prior_as_a_loss_term_and_load_prior_takes_it_out(tmp_path):
    from test_train import DIM, config_dict, write_fmri_store

    from neurodec.config import load_config
    from neurodec.data import TrialDataset
    from neurodec.training import train

    store = write_fmri_store(tmp_path / "fmri.zarr")
    terms = {"clip": {"weight": 1.0, "brain": "embedding"},
             "diffusion_prior": {"weight": 30, "brain": "backbone", "dim": DIM, "hidden_dim": 32, "n_layers": 2,
                                 "n_heads": 4, "timesteps": 50}}
    config = load_config(config_dict(store["path"], tmp_path / "runs", name="prior", loss={"terms": terms},
                                     train={"max_steps": 60, "log_every": 10}))
    run = train(config)

    history = [row for row in run.history if "train/diffusion_prior" in row]
    assert len(history) == 6
    # The prior learned: its denoising loss fell over training.
    assert history[-1]["train/diffusion_prior"] < 0.7 * history[0]["train/diffusion_prior"]
    # The total is clip + 30 x prior, as configured.
    row = history[-1]
    assert row["train/loss"] == pytest.approx(row["train/clip"] + 30 * row["train/diffusion_prior"], rel=1e-5)

    prior = load_prior(run.run_dir)
    saved = load_file(str(run.run_dir / "best" / "loss.safetensors"))
    prefix = "terms.diffusion_prior.prior."
    assert {k for k in saved if k.startswith(prefix)} == {prefix + k for k in prior.state_dict()}
    assert all(torch.equal(value, saved[prefix + key]) for key, value in prior.state_dict().items())
    last = load_prior(run.run_dir, checkpoint="last")
    assert prior.config == last.config and prior.timesteps == 50

    # Sampling from the saved encoder's backbone gives embeddings shaped like the targets.
    encoder = run.load_encoder().eval()
    val = TrialDataset(store["path"], stimuli=[f"img-{i:03d}" for i in range(6)], target="clip")
    batch = val[list(range(4))]
    with torch.no_grad():
        backbone = encoder.forward_outputs(batch["brain"], batch["subject"])["backbone"]
    samples = prior.sample(backbone, num_inference_steps=10, seeds=range(4))
    assert samples.shape == batch["target"].shape == (4, DIM) and torch.isfinite(samples).all()

    # A run that trained no prior, and a missing checkpoint, are named as such.
    with pytest.raises(RunFolderError, match="checkpoint 'nope'"):
        load_prior(run.run_dir, checkpoint="nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.yaml").write_text("loss:\n  terms:\n    clip: 1.0\n")
    with pytest.raises(RunFolderError, match="no 'diffusion_prior' term"):
        load_prior(tmp_path / "plain")


def test_detach_brain_stops_the_prior_loss_at_the_encoder_output():
    for detach, expect_gradient in ((False, True), (True, False)):
        torch.manual_seed(0)
        loss = WeightedLoss({"diffusion_prior": {"weight": 30.0, "dim": 8, "detach_brain": detach, **TINY}})
        assert isinstance(loss.terms["diffusion_prior"], DiffusionPriorLoss)
        brain = torch.randn(4, 8, requires_grad=True)
        total, parts = loss(brain, torch.randn(4, 8))
        assert torch.isclose(total, 30.0 * parts["diffusion_prior"])
        total.backward()
        assert (brain.grad is not None and brain.grad.abs().sum() > 0) == expect_gradient
