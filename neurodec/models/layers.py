"""Building blocks shared by the encoders: subject layers, spatial attention, residual MLPs.

Modules here that hold weights belonging to single subjects implement
``weights_of_subject(s) -> list[Tensor]`` (views of that subject's weights), which
:meth:`neurodec.models.BrainEncoder.subject_weights` collects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from neurodec.errors import ConfigError


def project_positions_2d(
    positions_3d: Any,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    normalize: bool = True,
) -> torch.Tensor:
    """Flatten head-frame 3-D sensor positions onto a plane, as MNE's topomap layouts do.

    The azimuthal equidistant projection around the vertical axis through ``origin`` (the
    head sphere centre, metres): a sensor at distance ``r`` from the origin, polar angle
    ``theta`` from the +z axis and azimuth ``phi`` lands at
    ``r * theta / (pi / 2) * (cos phi, sin phi)`` (the sensors on the equator of the head
    sphere land on the circle of radius ``r``). This is the math of
    ``mne.channels.layout._auto_topomap_coords(..., to_sphere=True)``. With ``normalize``,
    x and y are each rescaled to [0, 1] over the finite sensors (as brainmagick rescales
    MNE layouts), the input the spatial attention expects. Sensors with a non-finite 3-D
    position come out as NaN, which the spatial attention reads as "no position: ignore".

    >>> import torch
    >>> xy = project_positions_2d(torch.tensor([[0.0, 0.0, 0.09], [0.09, 0.0, 0.0], [-0.09, 0.0, 0.0],
    ...                                         [0.0, 0.09, 0.0]]), normalize=False)
    >>> [[round(v, 3) for v in row] for row in xy.tolist()]
    [[0.0, 0.0], [0.09, 0.0], [-0.09, 0.0], [0.0, 0.09]]
    """
    positions = torch.as_tensor(np.asarray(positions_3d, dtype=np.float64))
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions_3d must be (n_sensors, 3), found shape {tuple(positions.shape)}")
    finite = torch.isfinite(positions).all(dim=1)
    centred = positions - torch.as_tensor(origin, dtype=positions.dtype)
    radius = centred.norm(dim=1)
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))
    polar = torch.arccos((centred[:, 2] / safe_radius).clamp(-1.0, 1.0))
    azimuth = torch.atan2(centred[:, 1], centred[:, 0])
    distance = polar * radius / (math.pi / 2)
    flat = torch.stack([distance * torch.cos(azimuth), distance * torch.sin(azimuth)], dim=1)
    flat[~finite] = float("nan")
    if normalize and finite.any():
        low = flat[finite].min(dim=0).values
        span = flat[finite].max(dim=0).values - low
        # A single sensor, or sensors on one line, have no extent on an axis: centre them.
        scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, torch.ones_like(span)),
                             torch.full_like(flat, 0.5))
        flat = torch.where(finite[:, None], scaled, flat)
    return flat.float()


class SubjectLinear(nn.Module):
    """One ``in_features x out_features`` matrix per subject, picked by each sample's subject.

    Input ``(batch, in_features, ...)`` (channels first, any trailing axes such as time),
    output ``(batch, out_features, ...)``. Initialised like ``nn.Linear`` (uniform in
    +-1/sqrt(in_features)), or to the identity with ``identity_init``.

    >>> layer = SubjectLinear(3, 2, n_subjects=4)
    >>> layer(torch.randn(5, 3, 7), torch.tensor([0, 1, 2, 3, 0])).shape
    torch.Size([5, 2, 7])
    """

    def __init__(self, in_features: int, out_features: int, n_subjects: int, bias: bool = False,
                 identity_init: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.n_subjects = in_features, out_features, n_subjects
        self.weight = nn.Parameter(torch.empty(n_subjects, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_subjects, out_features)) if bias else None
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if identity_init:
            if in_features != out_features:
                raise ConfigError(f"SubjectLinear identity_init needs in_features == out_features, "
                                  f"found {in_features} and {out_features}")
            with torch.no_grad():
                self.weight.copy_(torch.eye(in_features).expand(n_subjects, -1, -1))

    def forward(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        weight = self.weight[subject]  # (batch, in, out)
        out = torch.einsum("bi...,bio->bo...", x, weight)
        if self.bias is not None:
            out = out + self.bias[subject].reshape(*self.bias[subject].shape, *([1] * (x.ndim - 2)))
        return out

    def weights_of_subject(self, subject: int) -> list[torch.Tensor]:
        views = [self.weight[subject]]
        if self.bias is not None:
            views.append(self.bias[subject])
        return views

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, n_subjects={self.n_subjects}, bias={self.bias is not None}"


class SubjectEmbedding(nn.Embedding):
    """A learned vector per subject (``nn.Embedding`` that reports its rows as subject weights)."""

    def weights_of_subject(self, subject: int) -> list[torch.Tensor]:
        return [self.weight[subject]]


class FourierPositionEmbedding(nn.Module):
    """Fourier features of 2-D positions in [0, 1]: ``cos`` and ``sin`` of ``2 pi k . p / width``.

    All integer frequency pairs ``(kx, ky)`` in ``[0, n_frequencies)^2`` are used, so the
    output has ``2 * n_frequencies**2`` features. Positions are shifted by ``margin`` and the
    period is ``1 + 2 margin``, so the (periodic) features do not wrap around inside [0, 1].

    >>> FourierPositionEmbedding(dimension=8)(torch.rand(3, 5, 2)).shape
    torch.Size([3, 5, 8])
    """

    def __init__(self, dimension: int = 2048, margin: float = 0.2) -> None:
        super().__init__()
        n_frequencies = int(round(math.sqrt(dimension / 2)))
        if 2 * n_frequencies**2 != dimension:
            raise ConfigError(f"FourierPositionEmbedding: dimension must be 2 * k**2 (e.g. 2048 = 2 * 32**2), "
                              f"found {dimension}")
        self.dimension, self.margin = dimension, margin
        grid = torch.stack(torch.meshgrid(torch.arange(n_frequencies), torch.arange(n_frequencies),
                                          indexing="ij"), dim=-1).reshape(-1, 2).float()
        # Frequencies are fixed, not learned: a buffer that travels with .to(device).
        self.register_buffer("frequencies", 2 * math.pi * grid / (1 + 2 * margin), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        phase = (positions + self.margin) @ self.frequencies.T
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class SpatialAttention(nn.Module):
    """Re-map any sensor montage to ``n_virtual`` channels by attention over sensor positions.

    Each virtual channel ``j`` has a learned vector ``z_j``; its weight on sensor ``i`` is
    ``softmax_i(z_j . fourier(position_i))``, so the layer depends on where sensors are, not
    on their order or count, and montages may differ between subjects. Sensors whose
    position is NaN (missing, or padding) get zero weight. While training, all sensors
    within ``dropout_radius`` of a random point (one per sample) are dropped.

    >>> layer = SpatialAttention(n_virtual=6, position_dim=8)
    >>> layer(torch.randn(2, 5, 30), torch.rand(2, 5, 2)).shape
    torch.Size([2, 6, 30])
    """

    def __init__(self, n_virtual: int = 270, position_dim: int = 2048, dropout_radius: float = 0.2,
                 margin: float = 0.2) -> None:
        super().__init__()
        self.embedding = FourierPositionEmbedding(position_dim, margin)
        self.queries = nn.Parameter(torch.randn(n_virtual, position_dim) / math.sqrt(position_dim))
        self.dropout_radius = dropout_radius

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        known = torch.isfinite(positions).all(dim=-1)  # (batch, sensors)
        safe_positions = torch.where(known[..., None], positions, torch.zeros_like(positions))
        scores = torch.einsum("bsd,vd->bvs", self.embedding(safe_positions), self.queries)
        keep = known
        if self.training and self.dropout_radius > 0:
            centre = torch.rand(positions.shape[0], 1, 2, device=positions.device, dtype=positions.dtype)
            outside = (safe_positions - centre).norm(dim=-1) > self.dropout_radius
            dropped_keep = keep & outside
            # Never drop every sensor of a sample: the softmax would have nothing to weigh.
            keep = torch.where(dropped_keep.any(dim=1, keepdim=True), dropped_keep, keep)
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bst,bvs->bvt", x, weights)


class ResidualMLP(nn.Module):
    """``n_blocks`` residual MLP blocks of width ``dim``: ``x = x + block(x)``.

    ``style="post_norm"`` blocks are Linear, LayerNorm, GELU, Dropout (MindEye1, MindBridge);
    ``style="pre_norm"`` blocks are LayerNorm, Linear, GELU, Dropout, Linear (MindEye2's
    backbone).

    >>> ResidualMLP(16, n_blocks=2)(torch.randn(3, 16)).shape
    torch.Size([3, 16])
    """

    def __init__(self, dim: int, n_blocks: int, dropout: float = 0.15, style: str = "post_norm") -> None:
        super().__init__()
        if style == "post_norm":
            make = lambda: nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout))  # noqa: E731
        elif style == "pre_norm":
            make = lambda: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout),  # noqa: E731
                                         nn.Linear(dim, dim))
        else:
            raise ConfigError(f"ResidualMLP: style must be 'post_norm' or 'pre_norm', found {style!r}")
        self.blocks = nn.ModuleList([make() for _ in range(n_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class SelfAttentionLayer(nn.Module):
    """A post-norm transformer encoder layer whose head size is ``dim // n_heads``.

    Unlike ``nn.TransformerEncoderLayer``, ``dim`` need not be divisible by ``n_heads``
    (ATM uses 250-wide tokens with 4 heads of 62): queries, keys and values are projected to
    ``n_heads * (dim // n_heads)`` features and back to ``dim``.

    >>> SelfAttentionLayer(dim=10, n_heads=4, feedforward_dim=16)(torch.randn(2, 7, 10)).shape
    torch.Size([2, 7, 10])
    """

    def __init__(self, dim: int, n_heads: int, feedforward_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        if self.head_dim < 1:
            raise ConfigError(f"SelfAttentionLayer: dim {dim} is too small for {n_heads} heads")
        inner = n_heads * self.head_dim
        self.query, self.key, self.value = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)
        self.norm_attention, self.norm_feedforward = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(feedforward_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        split = lambda t: t.reshape(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        attended = nn.functional.scaled_dot_product_attention(
            split(self.query(tokens)), split(self.key(tokens)), split(self.value(tokens)),
            dropout_p=self.attention_dropout if self.training else 0.0)
        attended = self.out(attended.transpose(1, 2).reshape(batch, length, -1))
        tokens = self.norm_attention(tokens + self.dropout(attended))
        return self.norm_feedforward(tokens + self.dropout(self.feedforward(tokens)))
