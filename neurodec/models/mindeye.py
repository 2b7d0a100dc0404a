"""fMRI encoders of MindEye2 (Scotti et al. 2024) and MindBridge (Wang et al. 2024).

Subjects have different voxel counts. Both encoders map each subject's voxels into one
shared latent with subject-specific first layers, then share everything after:

- ``mindeye``: a linear ("ridge") adapter per subject, voxels -> 4096.
- ``mindbridge``: adaptive max pooling of each subject's voxels to a fixed count (8192),
  then a per-subject (or shared) embedder.

fMRI input, two equivalent forms (the two batch layouts of ``neurodec.data.collate``):

- a padded tensor ``x: (batch, max_voxels)`` with ``subject: (batch,)``: sample ``i``'s
  adapter reads only its first ``n_voxels[subject[i]]`` columns (the rest is ignored and
  may hold anything, NaN included);
- a dict ``{subject index: tensor (n_s, n_voxels[s])}`` with ``subject: (batch,)``: the rows
  of entry ``s`` are the samples where ``subject == s``, in batch order.

Outputs keep the batch order of ``subject``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from neurodec.errors import ConfigError
from neurodec.models.base import BrainEncoder, register_model
from neurodec.models.layers import ResidualMLP

#: nsdgeneral voxel counts of NSD subjects 1-8 (MindEye2's defaults).
NSD_NSDGENERAL_VOXELS = (15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386)


class SubjectModules(nn.ModuleList):
    """One module per subject; every parameter of module ``s`` belongs to subject ``s``."""

    def weights_of_subject(self, subject: int) -> list[torch.Tensor]:
        return list(self[subject].parameters())


class BottleneckAdapter(nn.Module):
    """``x + up(ReLU(down(x)))`` with ``up`` initialised to zero (MindBridge's LoRA-style adapter).

    At initialisation it is the identity, so ``down`` receives no gradient until ``up`` has
    moved away from zero.
    """

    def __init__(self, features: int, bottleneck: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(features, bottleneck), nn.Linear(bottleneck, features)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class LowLevelHead(nn.Module):
    """Latent -> small image-shaped tensor (e.g. the 4 x 28 x 28 VAE latent of a blurry image).

    Linear to ``seed_channels x seed_size x seed_size``, GroupNorm, then one stage per
    doubling (nearest 2x upsampling, 3x3 conv, GroupNorm, SiLU) up to ``size``, then a 1x1
    conv to ``channels``.

    >>> LowLevelHead(16, channels=4, size=28, seed_channels=8, seed_size=7)(torch.randn(2, 16)).shape
    torch.Size([2, 4, 28, 28])
    """

    def __init__(self, in_features: int, channels: int = 4, size: int = 28, seed_channels: int = 64,
                 seed_size: int = 7) -> None:
        super().__init__()
        n_doublings = 0
        while seed_size * 2**n_doublings < size:
            n_doublings += 1
        if seed_size * 2**n_doublings != size:
            raise ConfigError(f"LowLevelHead: size {size} must be seed_size {seed_size} times a power of two")
        self.seed_channels, self.seed_size = seed_channels, seed_size
        self.seed = nn.Linear(in_features, seed_channels * seed_size * seed_size)
        self.seed_norm = nn.GroupNorm(1, seed_channels)
        self.upsample = nn.Sequential(*[
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.Conv2d(seed_channels, seed_channels, 3, padding=1),
                          nn.GroupNorm(1, seed_channels), nn.SiLU())
            for _ in range(n_doublings)
        ])
        self.out = nn.Conv2d(seed_channels, channels, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.seed(latent).reshape(-1, self.seed_channels, self.seed_size, self.seed_size)
        return self.out(self.upsample(self.seed_norm(h)))


class _FmriEncoder(BrainEncoder):
    """Shared part of the fMRI encoders: per-subject routing, backbone, heads."""

    input_kind = "fmri"

    def _build_shared(self, hidden_dim: int, n_blocks: int, dropout: float, backbone_style: str,
                      n_tokens: int | None, projector: bool, low_level: bool, low_level_channels: int,
                      low_level_size: int, low_level_seed_channels: int, low_level_seed_size: int) -> None:
        if n_tokens is not None and n_tokens < 1:
            raise ConfigError(f"{type(self).__name__}: n_tokens must be None or >= 1, found {n_tokens}")
        self.n_tokens = n_tokens
        self.backbone = ResidualMLP(hidden_dim, n_blocks, dropout, backbone_style)
        self.head = nn.Linear(hidden_dim, (n_tokens or 1) * self.n_outputs)
        d = self.n_outputs
        # MindEye2's CLIP projector, applied to each token: three (LayerNorm, GELU, Linear).
        self.projector = nn.Sequential(
            nn.LayerNorm(d), nn.GELU(), nn.Linear(d, d),
            nn.LayerNorm(d), nn.GELU(), nn.Linear(d, d),
            nn.LayerNorm(d), nn.GELU(), nn.Linear(d, d),
        ) if projector else None
        self.low_level = LowLevelHead(hidden_dim, low_level_channels, low_level_size, low_level_seed_channels,
                                      low_level_seed_size) if low_level else None

    def _per_subject(self, x: Any, subject: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(s, rows of the batch, that subject's voxels (len(rows), n_voxels[s]))``."""
        name = type(self).__name__
        if isinstance(x, dict):
            present = set(torch.unique(subject).tolist())
            given = {int(s) for s in x}
            if present != given:
                raise ValueError(f"{name}: the voxel dict has subjects {sorted(given)} but subject lists "
                                 f"{sorted(present)}")
            for s, voxels in x.items():
                s = int(s)
                rows = torch.nonzero(subject == s).flatten()
                if voxels.ndim != 2 or voxels.shape != (len(rows), self.n_voxels[s]):
                    raise ValueError(f"{name}: subject {s} has {len(rows)} samples of {self.n_voxels[s]} voxels, "
                                     f"its tensor has shape {tuple(voxels.shape)}")
                yield s, rows, voxels
            return
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name}: x must be a padded (batch, max_voxels) tensor or a dict of per-subject "
                             f"tensors, found {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}")
        for s in torch.unique(subject).tolist():
            if x.shape[1] < self.n_voxels[s]:
                raise ValueError(f"{name}: subject {s} has {self.n_voxels[s]} voxels but x has only {x.shape[1]} "
                                 "columns")
            rows = torch.nonzero(subject == s).flatten()
            yield s, rows, x[rows, : self.n_voxels[s]]

    def _embed_subject(self, s: int, voxels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent(self, x: Any, subject: torch.Tensor) -> torch.Tensor:
        """The shared latent ``(batch, hidden_dim)`` after the subject-specific stage and backbone."""
        subject = torch.as_tensor(subject)
        subject = self._check_subject(subject, subject.shape[0] if isinstance(x, dict) else x.shape[0])
        order, parts = [], []
        for s, rows, voxels in self._per_subject(x, subject):
            order.append(rows)
            parts.append(self._embed_subject(s, voxels))
        embedded = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return self.backbone(embedded)

    def _heads(self, latent: torch.Tensor, with_low_level: bool = True) -> dict[str, torch.Tensor]:
        backbone_tokens = self.head(latent).reshape(latent.shape[0], self.n_tokens or 1, self.n_outputs)
        embedding = self.projector(backbone_tokens) if self.projector is not None else backbone_tokens
        outputs = {"embedding": embedding, "backbone": backbone_tokens}
        if self.n_tokens is None:
            outputs = {key: value[:, 0] for key, value in outputs.items()}
        if with_low_level and self.low_level is not None:
            outputs["low_level"] = self.low_level(latent)
        return outputs

    def forward_outputs(self, x: Any, subject: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding`` (after the projector: the contrastive output), ``backbone`` (before it:
        the diffusion prior's input) and, with ``low_level``, ``low_level`` (batch, C, size, size)."""
        return self._heads(self.latent(x, subject))

    def forward(self, x: Any, subject: torch.Tensor) -> torch.Tensor:
        return self._heads(self.latent(x, subject), with_low_level=False)["embedding"]

    def dummy_inputs(self, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
        """A zero-padded ``(batch, max(n_voxels))`` tensor, samples cycling over subjects."""
        generator = torch.Generator().manual_seed(seed)
        subject = torch.arange(batch_size) % self.n_subjects
        x = torch.zeros(batch_size, max(self.n_voxels))
        for row, s in enumerate(subject.tolist()):
            x[row, : self.n_voxels[s]] = torch.randn(self.n_voxels[s], generator=generator)
        return {"x": x, "subject": subject}


def _check_voxels(name: str, n_voxels: Any, n_subjects: int | None) -> list[int]:
    counts = [int(n) for n in n_voxels]
    if not counts or min(counts) < 1:
        raise ConfigError(f"{name}: n_voxels must list one positive voxel count per subject, found {n_voxels!r}")
    if n_subjects is not None and n_subjects != len(counts):
        raise ConfigError(f"{name}: n_subjects={n_subjects} but n_voxels lists {len(counts)} subjects")
    return counts


@register_model("mindeye")
class MindEyeEncoder(_FmriEncoder):
    """MindEye2-style fMRI encoder: per-subject ridge adapters, shared residual MLP, CLIP heads.

    voxels of subject s --Linear(n_voxels[s], hidden_dim)--> shared latent --ResidualMLP-->
    Linear(hidden_dim, n_tokens * n_outputs) ("backbone" tokens, the diffusion prior's
    input) --per-token projector--> ``embedding``; optional low-level head from the latent.
    ``forward`` returns ``(batch, n_outputs)`` when ``n_tokens`` is None, else
    ``(batch, n_tokens, n_outputs)``.

    Defaults are MindEye2's (8 NSD subjects, nsdgeneral voxels, latent 4096, 4 pre-norm
    blocks, 256 x 1664 OpenCLIP bigG tokens, projector, 4 x 28 x 28 low-level latent):
    2,377,570,756 parameters, 1.75 billion of them in the 4096 -> 256 * 1664 head and 0.48
    billion in the eight subjects' adapters. MindEye2's blocks also
    mix along the token axis, which with one input token (its setting) is a 1 x 1 MLP of 6
    parameters per block; it is left out here.

    >>> import torch
    >>> model = MindEyeEncoder(n_voxels=[50, 40], n_outputs=8, hidden_dim=16, n_blocks=1, n_tokens=None,
    ...                        low_level=False).eval()
    >>> x = torch.randn(3, 50); subject = torch.tensor([0, 1, 1])
    >>> model(x, subject).shape
    torch.Size([3, 8])
    """

    def __init__(
        self,
        n_voxels: list[int] = NSD_NSDGENERAL_VOXELS,  # type: ignore[assignment]
        n_subjects: int | None = None,
        n_outputs: int = 1664,
        n_tokens: int | None = 256,
        hidden_dim: int = 4096,
        n_blocks: int = 4,
        dropout: float = 0.15,
        backbone_style: str = "pre_norm",
        projector: bool = True,
        low_level: bool = True,
        low_level_channels: int = 4,
        low_level_size: int = 28,
        low_level_seed_channels: int = 64,
        low_level_seed_size: int = 7,
    ) -> None:
        counts = _check_voxels(type(self).__name__, n_voxels, n_subjects)
        super().__init__(n_outputs=n_outputs, n_subjects=len(counts), n_voxels=counts)
        self.adapters = SubjectModules([nn.Linear(n, hidden_dim) for n in counts])
        self._build_shared(hidden_dim, n_blocks, dropout, backbone_style, n_tokens, projector, low_level,
                           low_level_channels, low_level_size, low_level_seed_channels, low_level_seed_size)

    def _embed_subject(self, s: int, voxels: torch.Tensor) -> torch.Tensor:
        return self.adapters[s](voxels)


@register_model("mindbridge")
class MindBridgeEncoder(_FmriEncoder):
    """MindBridge-style fMRI encoder: adaptive pooling to a fixed voxel count, embedder, ResMLP.

    voxels of subject s --AdaptiveMaxPool1d(pool_size)--> [bottleneck adapter] -->
    Linear(pool_size, hidden_dim), LayerNorm, GELU, Dropout (per subject, or one shared
    embedder with ``shared_embedder``) --> post-norm ResidualMLP --> Linear(hidden_dim,
    n_tokens * n_outputs). Pooling lets any voxel count, including a new subject's, enter
    the same embedder size. Defaults are MindBridge's (pool 8192, hidden 2048, 2 blocks,
    257 x 768 CLIP ViT-L/14 image tokens, adapter bottleneck 128).

    At initialisation the bottleneck adapters' ``down`` layers get no gradient (their ``up``
    layers start at zero): see ``parameters_without_gradient``.

    >>> import torch
    >>> model = MindBridgeEncoder(n_voxels=[50, 40], n_outputs=8, n_tokens=None, pool_size=32, hidden_dim=16,
    ...                           adapter_bottleneck=4).eval()
    >>> model(torch.randn(3, 50), torch.tensor([0, 1, 1])).shape
    torch.Size([3, 8])
    """

    parameters_without_gradient = ("bottleneck.down.weight", "bottleneck.down.bias")

    def __init__(
        self,
        n_voxels: list[int] = NSD_NSDGENERAL_VOXELS,  # type: ignore[assignment]
        n_subjects: int | None = None,
        n_outputs: int = 768,
        n_tokens: int | None = 257,
        pool_size: int = 8192,
        pool_type: str = "max",
        hidden_dim: int = 2048,
        n_blocks: int = 2,
        dropout: float = 0.15,
        embedder_dropout: float = 0.5,
        adapter_bottleneck: int = 128,
        shared_embedder: bool = False,
        backbone_style: str = "post_norm",
        projector: bool = False,
        low_level: bool = False,
        low_level_channels: int = 4,
        low_level_size: int = 28,
        low_level_seed_channels: int = 64,
        low_level_seed_size: int = 7,
    ) -> None:
        counts = _check_voxels(type(self).__name__, n_voxels, n_subjects)
        super().__init__(n_outputs=n_outputs, n_subjects=len(counts), n_voxels=counts)
        if pool_type not in ("max", "avg"):
            raise ConfigError(f"MindBridgeEncoder: pool_type must be 'max' or 'avg', found {pool_type!r}")
        self.pool = nn.AdaptiveMaxPool1d(pool_size) if pool_type == "max" else nn.AdaptiveAvgPool1d(pool_size)

        def embedder() -> nn.Module:
            layers: dict[str, nn.Module] = {}
            if adapter_bottleneck:
                layers["bottleneck"] = BottleneckAdapter(pool_size, adapter_bottleneck)
            layers.update(linear=nn.Linear(pool_size, hidden_dim), norm=nn.LayerNorm(hidden_dim),
                          activation=nn.GELU(), dropout=nn.Dropout(embedder_dropout))
            return nn.Sequential(OrderedDict(layers))  # named layers: "bottleneck", "linear", ...

        self.embedders = nn.ModuleList([embedder()]) if shared_embedder else SubjectModules(
            [embedder() for _ in counts])
        self.shared_embedder = shared_embedder
        self._build_shared(hidden_dim, n_blocks, dropout, backbone_style, n_tokens, projector, low_level,
                           low_level_channels, low_level_size, low_level_seed_channels, low_level_seed_size)

    def _embed_subject(self, s: int, voxels: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(voxels[:, None, :])[:, 0]
        return self.embedders[0 if self.shared_embedder else s](pooled)

