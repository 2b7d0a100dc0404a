"""Losses: values against NumPy computations written out by hand, and the distributed gather
checked with two real processes (gloo on CPU) against one process holding the whole batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurodec.errors import ConfigError, RegistryError
from neurodec.losses import (
    BrainMagickClipLoss,
    ClipLoss,
    MixCoLoss,
    MixCoPlan,
    SoftClipLoss,
    WeightedLoss,
    clip_loss,
    create_loss,
    gather_with_grad,
    list_losses,
    mixco,
    mixco_loss,
    soft_clip_loss,
    time_resolved_clip_loss,
)


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_info_nce(brain, target, scale, symmetric=True, normalize_brain=True):
    b = unit_rows(brain) if normalize_brain else brain
    logits = scale * b @ unit_rows(target).T
    n = len(logits)
    forward = -np.mean([log_softmax_rows(logits)[i, i] for i in range(n)])
    if not symmetric:
        return forward
    backward = -np.mean([log_softmax_rows(logits.T)[i, i] for i in range(n)])
    return (forward + backward) / 2


@pytest.fixture
def pair():
    generator = np.random.default_rng(0)
    return generator.normal(size=(6, 5)), generator.normal(size=(6, 5))


def test_clip_loss_matches_numpy(pair):
    brain, target = pair
    value = clip_loss(torch.tensor(brain), torch.tensor(target), logit_scale=1 / 0.07)
    assert value.item() == pytest.approx(numpy_info_nce(brain, target, 1 / 0.07), rel=1e-9)
    one_way = clip_loss(torch.tensor(brain), torch.tensor(target), logit_scale=3.0, symmetric=False)
    assert one_way.item() == pytest.approx(numpy_info_nce(brain, target, 3.0, symmetric=False), rel=1e-9)
    # Two samples, worked by hand: cosines [[1, 0], [0, 1]] at scale 1 -> -log(e / (e + 1)).
    eye = torch.eye(2)
    assert clip_loss(eye, eye, logit_scale=1.0).item() == pytest.approx(-math.log(math.e / (math.e + 1)))


def test_clip_loss_module_temperature_is_learnable_and_clamped(pair):
    brain, target = (torch.tensor(v, dtype=torch.float32) for v in pair)
    loss = ClipLoss()
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    value = loss(brain, target)
    assert value.item() == pytest.approx(numpy_info_nce(pair[0], pair[1], 1 / 0.07), rel=1e-5)
    value.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)  # beyond log(100): used as 100, as open_clip clamps it
    assert loss.scale().item() == pytest.approx(100.0, rel=1e-6)
    assert loss(brain, target).item() == pytest.approx(numpy_info_nce(pair[0], pair[1], 100.0), rel=1e-5)
    fixed = ClipLoss(temperature=0.5, learnable_temperature=False)
    assert list(fixed.parameters()) == [] and fixed.scale().item() == pytest.approx(2.0)


def test_brainmagick_clip_is_the_unnormalised_one_way_time_resolved_loss():
    generator = np.random.default_rng(1)
    brain, target = generator.normal(size=(4, 3, 7)), generator.normal(size=(4, 3, 7))
    # Brainmagick: score[i, j] = <brain_i, target_j / |target_j|> over features and time.
    scores = np.einsum("bft,oft->bo", brain, target / np.linalg.norm(target.reshape(4, -1), axis=1)[:, None, None])
    expected = -np.mean(np.diag(log_softmax_rows(scores)))
    args = (torch.tensor(brain), torch.tensor(target))
    assert time_resolved_clip_loss(*args).item() == pytest.approx(expected, rel=1e-9)
    assert BrainMagickClipLoss()(*args).item() == pytest.approx(expected, rel=1e-9)
    assert list(BrainMagickClipLoss().parameters()) == []
    # Time-shifted targets are different segments: the flattened comparison sees it.
    flat = numpy_info_nce(brain.reshape(4, -1), target.reshape(4, -1), 1.0, symmetric=False, normalize_brain=False)
    assert expected == pytest.approx(flat)
    with pytest.raises(ValueError, match="batch, features, times"):
        time_resolved_clip_loss(torch.randn(4, 3), torch.randn(4, 3))


def test_soft_clip_matches_numpy(pair):
    brain, target = pair
    b, t = unit_rows(brain), unit_rows(target)
    temperature = 0.2
    labels = np.exp(log_softmax_rows(t @ t.T / temperature))
    logits = b @ t.T / temperature
    expected = (-(labels * log_softmax_rows(logits)).sum(1).mean()
                - (labels.T * log_softmax_rows(logits.T)).sum(1).mean()) / 2
    value = soft_clip_loss(torch.tensor(brain), torch.tensor(target), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert SoftClipLoss(temperature)(torch.tensor(brain), torch.tensor(target)).item() == pytest.approx(expected)


def test_mixco_mixes_inputs_and_builds_soft_labels():
    torch.manual_seed(0)
    x = torch.randn(8, 10)
    mixed, plan = mixco(x, beta=0.15, mix_probability=0.5)
    lam, partner = plan.lam, plan.partner
    torch.testing.assert_close(mixed, lam[:, None] * x + (1 - lam[:, None]) * x[partner])
    assert ((lam == 1) | ((lam > 0) & (lam < 1))).all()
    labels = plan.soft_labels()
    expected = np.zeros((8, 8))
    for i in range(8):
        expected[i, i] += lam[i].item()
        expected[i, partner[i].item()] += 1 - lam[i].item()
    np.testing.assert_allclose(labels.numpy(), expected, rtol=1e-6)
    # A sample paired with itself keeps its whole label (assigning instead of adding would lose it).
    self_paired = MixCoPlan(partner=torch.tensor([0, 2, 1]), lam=torch.tensor([0.3, 0.6, 1.0]))
    np.testing.assert_allclose(self_paired.soft_labels().sum(1).numpy(), [1.0, 1.0, 1.0], rtol=1e-6)
    # With subjects, partners come from the same subject.
    subject = torch.tensor([0, 1, 0, 1, 2, 0, 1, 2])
    _, plan = mixco(x, mix_probability=1.0, subject=subject)
    assert torch.equal(subject[plan.partner], subject)


def test_mixco_loss_matches_numpy_and_reduces_to_info_nce(pair):
    brain, target = pair
    plan = MixCoPlan(partner=torch.tensor([1, 0, 2, 5, 4, 3]), lam=torch.tensor([0.7, 1.0, 0.4, 0.9, 1.0, 0.2],
                                                                                 dtype=torch.float64))
    labels = plan.soft_labels().numpy()
    logits = unit_rows(brain) @ unit_rows(target).T / 0.05
    expected = (-(labels * log_softmax_rows(logits)).sum(1).mean()
                - (labels.T * log_softmax_rows(logits.T)).sum(1).mean()) / 2
    b, t = torch.tensor(brain), torch.tensor(target)
    assert mixco_loss(b, t, plan, temperature=0.05).item() == pytest.approx(expected, rel=1e-9)
    assert MixCoLoss(temperature=0.05)(b, t, mixco=plan).item() == pytest.approx(expected, rel=1e-9)
    assert mixco_loss(b, t, None, temperature=0.05).item() == pytest.approx(
        clip_loss(b, t, logit_scale=20.0).item(), rel=1e-9)


def test_weighted_loss_sums_named_terms():
    torch.manual_seed(0)
    brain = {"embedding": torch.randn(5, 8, requires_grad=True), "low_level": torch.randn(5, 2, 4, 4)}
    target = {"image": torch.randn(5, 8), "text": torch.randn(5, 8), "latent": torch.randn(5, 2, 4, 4)}
    loss = WeightedLoss({
        "image": {"loss": "clip", "weight": 0.99, "brain": "embedding", "target": "image"},
        "text": {"loss": "clip", "weight": 0.01, "brain": "embedding", "target": "text", "temperature": 0.1},
        "mixco": {"weight": 0.5, "brain": "embedding", "target": "image", "temperature": 0.05},
        "l1": {"weight": 2.0, "brain": "low_level", "target": "latent"},
    })
    plan = MixCoPlan(partner=torch.tensor([1, 0, 2, 4, 3]), lam=torch.tensor([0.5, 0.8, 1.0, 0.3, 0.9]))
    total, terms = loss(brain, target, mixco=plan)
    e = brain["embedding"]
    expected = {
        "image": clip_loss(e, target["image"], logit_scale=1 / 0.07),
        "text": clip_loss(e, target["text"], logit_scale=10.0),
        "mixco": mixco_loss(e, target["image"], plan, temperature=0.05),
        "l1": torch.nn.functional.l1_loss(brain["low_level"], target["latent"]),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value.detach())
    torch.testing.assert_close(total, 0.99 * expected["image"] + 0.01 * expected["text"] + 0.5 * expected["mixco"]
                               + 2.0 * expected["l1"])
    # Learnable temperatures are parameters of the loss (for the optimizer).
    assert len(list(loss.parameters())) == 2
    loss.weights["mixco"] = 0.0
    total_without, terms_without = loss(brain, target, mixco=plan)
    assert "mixco" not in terms_without
    torch.testing.assert_close(total_without, total - 0.5 * expected["mixco"])


def test_weighted_loss_configuration_errors():
    with pytest.raises(RegistryError) as error:
        WeightedLoss({"contrastive": 1.0})
    for name in list_losses():
        assert name in str(error.value)
    with pytest.raises(ConfigError, match="weight"):
        WeightedLoss({"clip": {"temperature": 0.1}})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        create_loss("mse", temperature=0.1)
    with pytest.raises(KeyError, match="reads target\\['image'\\]"):
        WeightedLoss({"clip": {"weight": 1.0, "target": "image"}})(torch.randn(3, 4), {"text": torch.randn(3, 4)})


def test_gather_is_the_identity_in_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


# ---------------------------------------------------------------- distributed
GLOBAL_BATCH, FEATURES, EMBEDDING = 8, 6, 4


def global_batch():
    generator = torch.Generator().manual_seed(123)
    return torch.randn(GLOBAL_BATCH, FEATURES, generator=generator), torch.randn(GLOBAL_BATCH, EMBEDDING,
                                                                                 generator=generator)


def run_step(inputs, targets, loss_name, model=None):
    """One step: a linear 'brain encoder', a loss, a backward. Returns what the test compares."""
    if model is None:
        torch.manual_seed(0)
        model = torch.nn.Linear(FEATURES, EMBEDDING)
    torch.manual_seed(1)
    loss_module = create_loss(loss_name)
    embeddings = model(inputs)
    embeddings.retain_grad()
    value = loss_module(embeddings, targets)
    value.backward()
    return {
        "loss": value.detach(),
        "embedding_grad": embeddings.grad.detach(),
        "weight_grad": next(iter(model.parameters())).grad.detach().clone(),
        "loss_parameter_grads": [p.grad.detach().clone() for p in loss_module.parameters()],
    }


def distributed_worker(rank: int, world_size: int, init_file: str, splits: list, output: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        inputs, targets = global_batch()
        results = {}
        for split_name, sizes in splits:
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            for loss_name in ("clip", "soft_clip", "brainmagick_clip"):
                torch.manual_seed(0)
                model = torch.nn.Linear(FEATURES, EMBEDDING)
                result = run_step(inputs[rows], targets[rows], loss_name, model)
                # What DistributedDataParallel does to parameter gradients: the mean over ranks.
                # (DDP itself costs ~6 s to set up here; its averaging is this all-reduce.)
                dist.all_reduce(result["weight_grad"], op=dist.ReduceOp.SUM)
                result["weight_grad"] /= world_size
                results[(split_name, loss_name)] = result
        torch.save(results, f"{output}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_loss_equals_single_process_on_the_global_batch(tmp_path):
    """Two gloo processes, each holding part of a fixed batch, against one process holding it all.

    Each rank's loss equals the single-process loss; each rank's gradient w.r.t. its own
    embeddings is world_size x the single-process gradient of those rows (DDP's convention:
    it averages over ranks), and the rank-averaged weight gradient of the encoder (what DDP
    applies) equals the single-process one. Equal and unequal local batches.
    """
    import torch.multiprocessing as mp

    world_size = 2
    splits = [("equal", [4, 4]), ("unequal", [3, 5])]
    mp.spawn(distributed_worker, args=(world_size, str(tmp_path / "rendezvous"), splits, str(tmp_path)),
             nprocs=world_size, join=True)
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)]
    inputs, targets = global_batch()
    for split_name, sizes in splits:
        for loss_name in ("clip", "soft_clip", "brainmagick_clip"):
            single = run_step(inputs, targets, loss_name)
            start = 0
            for rank in range(world_size):
                result = per_rank[rank][(split_name, loss_name)]
                rows = slice(start, start + sizes[rank])
                start += sizes[rank]
                torch.testing.assert_close(result["loss"], single["loss"], rtol=1e-6, atol=1e-7)
                torch.testing.assert_close(result["embedding_grad"] / world_size, single["embedding_grad"][rows],
                                           rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(result["weight_grad"], single["weight_grad"], rtol=1e-5, atol=1e-7)
                for ours, reference in zip(result["loss_parameter_grads"], single["loss_parameter_grads"], strict=True):
                    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
