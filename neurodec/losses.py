"""Training losses: CLIP/InfoNCE, SoftCLIP, MixCo, regression, and a weighted sum of named terms.

Contrastive losses compare a batch of brain embeddings with the batch of target embeddings
of the same stimuli: sample ``i``'s positive is target ``i``, every other target in the
batch is a negative.

Under ``torch.distributed`` (DDP, ``torchrun``) the contrastive losses first gather the
embeddings of every process *with their gradients*, and compute the loss over the global
batch: the negatives, the loss value and (after DDP's averaging of parameter gradients)
the gradients are those of one process holding the whole batch, whatever the number of
processes. Each rank's loss value is the global one. Each rank's gradient with respect to
its own embeddings is ``world_size`` times the single-process gradient of those rows,
which is what DDP's averaging expects (it divides by ``world_size``), as for any loss
averaged over the local batch.

>>> import torch
>>> from neurodec.losses import ClipLoss, WeightedLoss
>>> brain, target = torch.randn(8, 16), torch.randn(8, 16)
>>> loss = ClipLoss()                     # learnable temperature, starts at 0.07
>>> loss(brain, target).item() > 0
True
>>> total, terms = WeightedLoss({"clip": 1.0, "mse": 0.5})(brain, target)
>>> sorted(terms)
['clip', 'mse']
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurodec.errors import ConfigError, RegistryError

NORMALIZATIONS = ("both", "target", "none")


# ------------------------------------------------------------------ distributed
def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along the batch axis whose backward sends each rank the gradient of its rows.

    Local batches may differ in size (they are padded for the collective, then trimmed).
    The backward sums the gradients every rank computed for the gathered tensor, so a
    rank's rows receive the contributions of all ranks' losses.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.int64)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        largest = max(counts)
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded.contiguous())
        ctx.counts, ctx.rank, ctx.largest = counts, rank, largest
        return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (batch first) from every process in rank order, keeping gradients.

    Without an initialised process group (or with one process) it returns ``tensor``.

    >>> import torch
    >>> gather_with_grad(torch.ones(3, 2)).shape      # single process: unchanged
    torch.Size([3, 2])
    """
    if _world_size() == 1:
        return tensor
    return _GatherWithGradient.apply(tensor)


# ------------------------------------------------------------------- functions
def _flat_pair(brain: torch.Tensor, target: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if brain.shape[0] != target.shape[0] or brain.shape[1:].numel() != target.shape[1:].numel():
        raise ValueError(f"{where}: brain {tuple(brain.shape)} and target {tuple(target.shape)} must hold the same "
                         "number of samples and features")
    return brain.reshape(brain.shape[0], -1), target.reshape(target.shape[0], -1).to(brain.dtype)


def _normalize(brain: torch.Tensor, target: torch.Tensor, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, found {normalize!r}")
    if normalize in ("both", "target"):
        target = F.normalize(target, dim=-1, eps=1e-8)
    if normalize == "both":
        brain = F.normalize(brain, dim=-1, eps=1e-8)
    return brain, target


def clip_loss(
    brain: torch.Tensor,
    target: torch.Tensor,
    logit_scale: float | torch.Tensor = 1 / 0.07,
    symmetric: bool = True,
    normalize: str = "both",
) -> torch.Tensor:
    """InfoNCE between matching rows of ``brain`` and ``target`` (trailing axes are flattened).

    ``logits = logit_scale * brain @ target.T`` after L2-normalising both (``"both"``, CLIP),
    only the targets (``"target"``, brainmagick) or neither; cross-entropy against the
    diagonal, averaged over the brain->target and target->brain directions when
    ``symmetric``, brain->target only otherwise.

    >>> import torch
    >>> x = torch.eye(4)
    >>> round(float(clip_loss(x, x, logit_scale=100.0)), 6)    # perfect match, sharp: ~0
    0.0
    """
    brain, target = _flat_pair(brain, target, "clip_loss")
    brain, target = _normalize(brain, target, normalize)
    logits = logit_scale * brain @ target.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


def time_resolved_clip_loss(
    brain: torch.Tensor,
    target: torch.Tensor,
    logit_scale: float | torch.Tensor = 1.0,
    symmetric: bool = False,
    normalize: str = "target",
) -> torch.Tensor:
    """Brainmagick's CLIP loss over time-resolved features: (B, F, T) against (B, F, T).

    Each sample's features are flattened over features and time, so segments match only if
    their time courses match; by default as in brainmagick: the targets are L2-normalised
    over (F, T), the brain outputs are not, no temperature, brain -> target direction.

    >>> import torch
    >>> time_resolved_clip_loss(torch.randn(4, 8, 30), torch.randn(4, 8, 30)).shape
    torch.Size([])
    """
    if brain.ndim != 3 or brain.shape != target.shape:
        raise ValueError(f"time_resolved_clip_loss: brain and target must both be (batch, features, times), "
                         f"found {tuple(brain.shape)} and {tuple(target.shape)}")
    return clip_loss(brain, target, logit_scale=logit_scale, symmetric=symmetric, normalize=normalize)


def soft_clip_loss(brain: torch.Tensor, target: torch.Tensor, temperature: float = 0.125) -> torch.Tensor:
    """MindEye's SoftCLIP: cross-entropy against soft labels from target-target similarity.

    With L2-normalised rows, ``labels = softmax(target @ target.T / t)`` and
    ``logits = brain @ target.T / t``; the loss averages both directions.

    >>> import torch
    >>> t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    >>> bool(soft_clip_loss(t, t) < soft_clip_loss(torch.randn(6, 8), t))
    True
    """
    brain, target = _flat_pair(brain, target, "soft_clip_loss")
    brain, target = _normalize(brain, target, "both")
    soft_labels = torch.softmax(target @ target.T / temperature, dim=-1)
    logits = brain @ target.T / temperature
    forward = -(soft_labels * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(soft_labels.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


@dataclass
class MixCoPlan:
    """How a batch was mixed: sample ``i`` is ``lam[i] * x[i] + (1 - lam[i]) * x[partner[i]]``.

    Unmixed samples have ``lam == 1``.
    """

    partner: torch.Tensor
    lam: torch.Tensor

    def soft_labels(self) -> torch.Tensor:
        """``(batch, batch)``: ``lam[i]`` at column ``i`` plus ``1 - lam[i]`` at column ``partner[i]``."""
        batch = self.partner.shape[0]
        labels = torch.diag(self.lam)
        # Added, not assigned: a sample paired with itself keeps its full weight of 1.
        return labels.index_put((torch.arange(batch, device=labels.device), self.partner), 1 - self.lam,
                                accumulate=True)


def mixco(
    brain_inputs: torch.Tensor,
    beta: float = 0.15,
    mix_probability: float = 0.5,
    subject: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MixCoPlan]:
    """MixCo augmentation of brain *inputs* (MindEye's BiMixCo): mix samples with partners.

    Each sample is mixed with probability ``mix_probability``, with a random partner and
    ``lam ~ Beta(beta, beta)``. With ``subject``, partners are drawn from the same subject
    (voxels of different subjects do not line up). Returns the mixed inputs (a new tensor)
    and the :class:`MixCoPlan` that :func:`mixco_loss` needs. Uses torch's global RNG.

    >>> import torch
    >>> mixed, plan = mixco(torch.randn(8, 100))
    >>> mixed.shape, plan.soft_labels().sum(dim=1).allclose(torch.ones(8))
    (torch.Size([8, 100]), True)
    """
    batch = brain_inputs.shape[0]
    device = brain_inputs.device
    if subject is None:
        partner = torch.randperm(batch, device=device)
    else:
        subject = subject.to(device)
        partner = torch.arange(batch, device=device)
        for s in torch.unique(subject):
            rows = torch.nonzero(subject == s).flatten()
            partner[rows] = rows[torch.randperm(len(rows), device=device)]
    lam = torch.distributions.Beta(beta, beta).sample((batch,)).to(device=device, dtype=brain_inputs.dtype)
    lam = torch.where(torch.rand(batch, device=device) < mix_probability, lam, torch.ones_like(lam))
    shape = (batch,) + (1,) * (brain_inputs.ndim - 1)
    mixed = lam.reshape(shape) * brain_inputs + (1 - lam).reshape(shape) * brain_inputs[partner]
    return mixed, MixCoPlan(partner=partner, lam=lam)


def mixco_loss(
    brain: torch.Tensor,
    target: torch.Tensor,
    plan: MixCoPlan | None,
    temperature: float = 0.006,
    bidirectional: bool = True,
) -> torch.Tensor:
    """InfoNCE with MixCo's soft labels (plain InfoNCE when ``plan`` is None).

    ``logits = normalize(brain) @ normalize(target).T / temperature``; brain sample ``i``
    (mixed from inputs ``i`` and ``partner[i]``) should match target ``i`` with weight
    ``lam[i]`` and target ``partner[i]`` with ``1 - lam[i]``. ``bidirectional`` (BiMixCo)
    adds the target -> brain direction with the transposed labels.
    """
    brain, target = _flat_pair(brain, target, "mixco_loss")
    brain, target = _normalize(brain, target, "both")
    logits = brain @ target.T / temperature
    if plan is None:
        labels = torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    else:
        labels = plan.soft_labels().to(logits.dtype)
    loss = -(labels * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    if bidirectional:
        loss = (loss - (labels.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()) / 2
    return loss


# --------------------------------------------------------------------- modules
class ClipLoss(nn.Module):
    """Symmetric CLIP/InfoNCE loss with a learnable (or fixed) temperature, global over processes.

    ``logit_scale`` is stored as ``log(1 / temperature)`` (initial temperature 0.07, so
    ``log(1/0.07)``, as CLIP, NICE and open_clip) and clamped to ``[0, log(max_logit_scale)]``
    when used (open_clip clamps it to ``log(100)`` after each step; clamping at use has the
    same effect on the loss). With ``learnable_temperature=False`` the scale is a fixed
    buffer: ``temperature=1.0, normalize="target", symmetric=False`` is brainmagick's
    variant (:class:`BrainMagickClipLoss`). Inputs ``(batch, ...)`` are flattened per sample,
    so ``(batch, features, times)`` gives the time-resolved loss.

    >>> import torch
    >>> loss = ClipLoss()
    >>> round(loss.scale().item(), 4)
    14.2857
    >>> loss(torch.randn(4, 8), torch.randn(4, 8)).requires_grad
    True
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        max_logit_scale: float = 100.0,
        symmetric: bool = True,
        normalize: str = "both",
        gather_across_processes: bool = True,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"ClipLoss: normalize must be one of {NORMALIZATIONS}, found {normalize!r}")
        initial = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("logit_scale", initial)
        self.max_logit_scale, self.symmetric, self.normalize = max_logit_scale, symmetric, normalize
        self.gather_across_processes = gather_across_processes

    def scale(self) -> torch.Tensor:
        """The multiplier of the cosine similarities, ``exp(clamped logit_scale)``."""
        return self.logit_scale.clamp(0.0, math.log(self.max_logit_scale)).exp()

    def forward(self, brain: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.gather_across_processes:
            brain, target = gather_with_grad(brain), gather_with_grad(target)
        return clip_loss(brain, target, logit_scale=self.scale(), symmetric=self.symmetric, normalize=self.normalize)


class BrainMagickClipLoss(ClipLoss):
    """Brainmagick's CLIP loss: no temperature, targets normalised over (features, times),
    brain -> target direction; inputs ``(batch, features, times)`` or ``(batch, features)``."""

    def __init__(self, gather_across_processes: bool = True) -> None:
        super().__init__(temperature=1.0, learnable_temperature=False, symmetric=False, normalize="target",
                         gather_across_processes=gather_across_processes)


class SoftClipLoss(nn.Module):
    """:func:`soft_clip_loss` as a module, gathered across processes. ``temperature`` may be
    changed between steps (MindEye2 anneals it)."""

    def __init__(self, temperature: float = 0.125, gather_across_processes: bool = True) -> None:
        super().__init__()
        self.temperature, self.gather_across_processes = temperature, gather_across_processes

    def forward(self, brain: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.gather_across_processes:
            brain, target = gather_with_grad(brain), gather_with_grad(target)
        return soft_clip_loss(brain, target, self.temperature)


class MixCoLoss(nn.Module):
    """:func:`mixco_loss` as a module: ``loss(brain, target, mixco=plan)`` (BiMixCo by default).

    MixCo's partners index the local batch, so this loss is computed per process.
    """

    def __init__(self, temperature: float = 0.006, bidirectional: bool = True) -> None:
        super().__init__()
        self.temperature, self.bidirectional = temperature, bidirectional

    def forward(self, brain: torch.Tensor, target: torch.Tensor, mixco: MixCoPlan | None = None) -> torch.Tensor:
        return mixco_loss(brain, target, mixco, self.temperature, self.bidirectional)


class MSELoss(nn.Module):
    """Mean squared error between brain outputs and targets of the same shape."""

    def forward(self, brain: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(brain, target.to(brain.dtype))


class L1Loss(nn.Module):
    """Mean absolute error (MindEye2's low-level VAE-latent loss)."""

    def forward(self, brain: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(brain, target.to(brain.dtype))


def _diffusion_prior_loss(**options: Any) -> nn.Module:
    """:class:`neurodec.models.prior.DiffusionPriorLoss` (the prior trained as a loss term);
    imported on use, since the prior network lives with the models and needs diffusers."""
    from neurodec.models.prior import DiffusionPriorLoss

    return DiffusionPriorLoss(**options)


_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "clip": ClipLoss,
    "diffusion_prior": _diffusion_prior_loss,
    "brainmagick_clip": BrainMagickClipLoss,
    "soft_clip": SoftClipLoss,
    "mixco": MixCoLoss,
    "mse": MSELoss,
    "l1": L1Loss,
}


def list_losses() -> list[str]:
    """Names usable as loss terms in :class:`WeightedLoss`.

    >>> list_losses()
    ['brainmagick_clip', 'clip', 'diffusion_prior', 'l1', 'mixco', 'mse', 'soft_clip']
    """
    return sorted(_LOSSES)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name``; an unknown name lists the known ones.

    >>> create_loss("clip", temperature=0.05).scale().item() > 19.99
    True
    """
    try:
        loss_class = _LOSSES[name]
    except KeyError:
        raise RegistryError(f"unknown loss '{name}'; known losses: {', '.join(list_losses())}") from None
    try:
        return loss_class(**kwargs)
    except TypeError as error:
        raise ConfigError(f"loss '{name}': {error}") from error


class WeightedLoss(nn.Module):
    """A weighted sum of named loss terms, configured by a dict.

    Each entry ``name: spec`` is a weight (the term is the loss registered as ``name``) or a
    dict with ``weight``, optionally ``loss`` (the registered loss, default ``name``),
    ``brain`` and ``target`` (keys to pick from dict inputs, e.g. ``"low_level"`` of
    ``model.forward_outputs``), and further arguments of the loss. Calling it with
    ``(brain, target, **extra)`` returns ``(total, {name: unweighted term, detached})``;
    keyword arguments in ``extra`` go to the terms whose ``forward`` accepts them (e.g.
    ``mixco=plan``). ``weights`` may be changed between steps (a weight of 0 skips the term).

    ATM's 0.99 image + 0.01 text CLIP objective, for instance::

        WeightedLoss({"image": {"loss": "clip", "weight": 0.99, "target": "image"},
                      "text": {"loss": "clip", "weight": 0.01, "target": "text"}})

    >>> import torch
    >>> loss = WeightedLoss({"clip": {"weight": 1.0, "temperature": 0.1}, "mse": 10.0})
    >>> total, terms = loss(torch.randn(4, 8), torch.randn(4, 8))
    >>> bool(torch.isclose(total, terms["clip"] + 10.0 * terms["mse"]))
    True
    """

    def __init__(self, terms: dict[str, float | dict[str, Any]]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("WeightedLoss: at least one loss term is needed")
        self.weights: dict[str, float] = {}
        self.inputs: dict[str, tuple[str | None, str | None]] = {}
        losses = {}
        for name, spec in terms.items():
            if isinstance(spec, (int, float)):
                spec = {"weight": float(spec)}
            if not isinstance(spec, dict) or "weight" not in spec:
                raise ConfigError(f"WeightedLoss: term '{name}' must be a weight or a dict with 'weight', "
                                  f"found {spec!r}")
            options = dict(spec)
            self.weights[name] = float(options.pop("weight"))
            self.inputs[name] = (options.pop("brain", None), options.pop("target", None))
            losses[name] = create_loss(options.pop("loss", name), **options)
        self.terms = nn.ModuleDict(losses)
        self._accepted = {name: set(inspect.signature(loss.forward).parameters) - {"brain", "target"}
                          for name, loss in losses.items()}

    @staticmethod
    def _pick(value: Any, key: str | None, term: str, side: str) -> Any:
        if key is None:
            return value
        if not isinstance(value, dict) or key not in value:
            found = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"WeightedLoss term '{term}' reads {side}['{key}'], found {found}")
        return value[key]

    def forward(self, brain: Any, target: Any, **extra: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, loss in self.terms.items():
            weight = self.weights[name]
            if weight == 0:
                continue
            brain_key, target_key = self.inputs[name]
            kwargs = {key: value for key, value in extra.items() if key in self._accepted[name]}
            value = loss(self._pick(brain, brain_key, name, "brain"), self._pick(target, target_key, name, "target"),
                         **kwargs)
            parts[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise ConfigError("WeightedLoss: every term has weight 0")
        return total, parts
