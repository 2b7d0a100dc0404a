"""The M/EEG encoder of Défossez et al. 2023 ("brainmagick"), for speech and image decoding.

Spatial attention over 2-D sensor positions to 270 virtual channels, a 1x1 convolution,
a per-subject linear layer, ten residual dilated convolution blocks with a GLU every two
blocks, and two final 1x1 convolutions to ``n_outputs`` features per time step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neurodec.errors import ConfigError
from neurodec.models.base import BrainEncoder, is_compiling, register_model
from neurodec.models.layers import SpatialAttention, SubjectLinear, project_positions_2d

TEMPORAL_POOLINGS = ("none", "mean", "linear")


class _DilatedResidualBlock(nn.Module):
    """Conv1d (odd kernel, 'same' length) -> BatchNorm -> GELU -> Dropout, plus a skip if shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 batch_norm: bool, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation)
        self.norm = nn.BatchNorm1d(out_channels) if batch_norm else nn.Identity()
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.activation(self.norm(self.conv(x))))
        return x + y if self.residual else y


@register_model("brainmagick")
class BrainMagickEncoder(BrainEncoder):
    """Défossez et al. 2023 brain module: spatial attention, subject layer, dilated conv stack.

    Input ``x``: ``(batch, n_chans, n_times)``; ``subject``: ``(batch,)`` subject indices;
    ``positions`` (optional): ``(batch, n_chans, 2)`` or ``(n_chans, 2)`` sensor positions in
    [0, 1] (see :func:`neurodec.models.project_positions_2d`), NaN for a channel to ignore
    (missing or padding; its values must still be finite). With ``positions``, ``x`` may have
    any number of channels (the attention does not depend on it). Without ``positions``, each
    sample uses its subject's stored montage (:meth:`set_subject_positions`), which is saved
    with the weights. Output: ``(batch, n_outputs, n_times)`` with ``temporal_pooling="none"``
    (the paper: a time-resolved CLIP loss), else ``(batch, n_outputs)`` ("mean" over time, or
    "linear": a learned weighting of the ``n_times`` steps).

    Defaults are the paper's speech configuration (MEG-MASC: 208 sensors, 27 subjects, 3 s at
    120 Hz, wav2vec2 targets of 1024 features): 270 virtual channels, 2048 Fourier position
    features (32 x 32 frequencies), spatial dropout radius 0.2, 10 blocks of 320 channels,
    kernel 3, dilations 1, 2, 4, 8, 16 repeated, a GLU (kernel 3) after every second block.

    >>> import torch
    >>> model = BrainMagickEncoder(n_chans=5, n_times=40, n_subjects=2, n_outputs=8, spatial_channels=6,
    ...                            position_dim=8, hidden_channels=12, n_blocks=2).eval()
    >>> model.set_subject_positions(0, torch.rand(5, 2)); model.set_subject_positions(1, torch.rand(5, 2))
    >>> model(torch.randn(3, 5, 40), torch.tensor([0, 1, 0])).shape
    torch.Size([3, 8, 40])
    """

    def __init__(
        self,
        n_chans: int = 208,
        n_times: int = 360,
        sfreq: float = 120.0,
        n_subjects: int = 27,
        n_outputs: int = 1024,
        spatial_channels: int = 270,
        position_dim: int = 2048,
        position_margin: float = 0.2,
        spatial_dropout: float = 0.2,
        subject_layer: bool = True,
        hidden_channels: int = 320,
        n_blocks: int = 10,
        kernel_size: int = 3,
        dilation_period: int = 5,
        glu_every: int = 2,
        glu_context: int = 1,
        batch_norm: bool = True,
        conv_dropout: float = 0.0,
        temporal_pooling: str = "none",
    ) -> None:
        super().__init__(n_outputs=n_outputs, n_chans=n_chans, n_times=n_times, sfreq=sfreq, n_subjects=n_subjects)
        if kernel_size % 2 != 1:
            raise ConfigError("BrainMagickEncoder: kernel_size must be odd (length-preserving padding), "
                              f"found {kernel_size}")
        if temporal_pooling not in TEMPORAL_POOLINGS:
            raise ConfigError(f"BrainMagickEncoder: temporal_pooling must be one of {TEMPORAL_POOLINGS}, "
                              f"found {temporal_pooling!r}")
        if temporal_pooling == "linear" and not n_times:
            raise ConfigError("BrainMagickEncoder: temporal_pooling='linear' needs n_times")
        self.temporal_pooling = temporal_pooling
        self.spatial_attention = SpatialAttention(spatial_channels, position_dim, spatial_dropout, position_margin)
        self.initial_conv = nn.Conv1d(spatial_channels, spatial_channels, 1)
        self.subject_layer = SubjectLinear(spatial_channels, spatial_channels, n_subjects) if subject_layer else None

        blocks, glus = [], []
        channels = spatial_channels
        for index in range(n_blocks):
            dilation = 2 ** (index % dilation_period) if dilation_period else 1
            blocks.append(_DilatedResidualBlock(channels, hidden_channels, kernel_size, dilation, batch_norm,
                                                conv_dropout))
            channels = hidden_channels
            if glu_every and (index + 1) % glu_every == 0:
                glus.append(nn.Sequential(nn.Conv1d(hidden_channels, 2 * hidden_channels, 2 * glu_context + 1,
                                                    padding=glu_context), nn.GLU(dim=1)))
            else:
                glus.append(nn.Identity())
        self.blocks, self.glus = nn.ModuleList(blocks), nn.ModuleList(glus)
        self.final = nn.Sequential(nn.Conv1d(channels, 2 * hidden_channels, 1), nn.GELU(),
                                   nn.Conv1d(2 * hidden_channels, n_outputs, 1))
        self.time_weights = nn.Linear(n_times, 1) if temporal_pooling == "linear" else None
        # Each subject's montage in [0, 1]^2; NaN until set. Saved with the weights.
        self.register_buffer("subject_positions", torch.full((n_subjects, n_chans, 2), float("nan")))

    def set_subject_positions(self, subject: int, positions: Any) -> None:
        """Store subject ``subject``'s sensor positions: ``(n_chans, 2)`` in [0, 1], or head-frame
        ``(n_chans, 3)`` in metres (projected with :func:`project_positions_2d`). NaN rows are
        channels to ignore."""
        positions = torch.as_tensor(positions, dtype=torch.float32)
        if positions.ndim == 2 and positions.shape[1] == 3:
            positions = project_positions_2d(positions)
        if tuple(positions.shape) != (self.n_chans, 2):
            raise ValueError(f"set_subject_positions: expected ({self.n_chans}, 2) or ({self.n_chans}, 3) "
                             f"positions, found {tuple(positions.shape)}")
        with torch.no_grad():
            self.subject_positions[subject] = positions.to(self.subject_positions.device)

    def _positions_for(self, x: torch.Tensor, subject: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        batch, n_channels, _ = x.shape
        if positions is None:
            if n_channels != self.n_chans:
                raise ValueError(f"BrainMagickEncoder: x has {n_channels} channels but the stored montages have "
                                 f"{self.n_chans}; pass positions=")
            positions = self.subject_positions[subject]
            if not is_compiling() and not torch.isfinite(positions).all(dim=-1).any(dim=-1).all():
                unset = sorted(set(subject[~torch.isfinite(positions).all(dim=-1).any(dim=-1)].tolist()))
                raise ValueError(f"BrainMagickEncoder: no sensor positions for subjects {unset}; pass positions= "
                                 "or call set_subject_positions")
            return positions
        positions = positions.to(dtype=x.dtype, device=x.device)
        if positions.ndim == 2:
            positions = positions.expand(batch, -1, -1)
        if tuple(positions.shape) != (batch, n_channels, 2):
            raise ValueError(f"BrainMagickEncoder: positions must be ({batch}, {n_channels}, 2) or "
                             f"({n_channels}, 2), found {tuple(positions.shape)}")
        return positions

    def forward(self, x: torch.Tensor, subject: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"BrainMagickEncoder: x must be (batch, channels, times), found {tuple(x.shape)}")
        subject = self._check_subject(subject, x.shape[0])
        if self.time_weights is not None and x.shape[-1] != self.n_times:
            raise ValueError(f"BrainMagickEncoder: temporal_pooling='linear' was built for n_times={self.n_times}, "
                             f"found {x.shape[-1]} samples")
        h = self.spatial_attention(x, self._positions_for(x, subject, positions))
        h = self.initial_conv(h)
        if self.subject_layer is not None:
            h = self.subject_layer(h, subject)
        for block, glu in zip(self.blocks, self.glus, strict=True):
            h = glu(block(h))
        h = self.final(h)
        if self.temporal_pooling == "mean":
            return h.mean(dim=-1)
        if self.time_weights is not None:
            return self.time_weights(h).squeeze(-1)
        return h

    def dummy_inputs(self, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
        inputs = super().dummy_inputs(batch_size, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        # One random montage per subject, shared by that subject's samples.
        montages = torch.rand(self.n_subjects, self.n_chans, 2, generator=generator)
        inputs["positions"] = montages[inputs["subject"]]
        return inputs
