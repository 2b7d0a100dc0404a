"""EEG image encoders of NICE (Song et al. 2024) and ATM (Li et al. 2024).

Both end in the same ShallowNet-like temporal-spatial convolution and residual projection
head; ATM first mixes channels with a transformer layer over channel tokens (plus a
subject token).
"""

from __future__ import annotations

import torch
from torch import nn

from neurodec.errors import ConfigError
from neurodec.models.base import BrainEncoder, register_model
from neurodec.models.layers import SelfAttentionLayer, SubjectEmbedding


def shallow_feature_size(n_times: int, n_filters: int, temporal_kernel: int, pool_kernel: int, pool_stride: int) -> int:
    """Length of the flattened ShallowNet feature: ``n_filters * n_pooled_steps``.

    >>> shallow_feature_size(250, 40, 25, 51, 5)   # NICE on THINGS-EEG2: 40 * 36
    1440
    """
    convolved = n_times - temporal_kernel + 1
    pooled = (convolved - pool_kernel) // pool_stride + 1
    if convolved < 1 or pooled < 1:
        raise ConfigError(f"{n_times} time samples are too few for a temporal kernel of {temporal_kernel} "
                          f"and pooling of {pool_kernel}")
    return n_filters * pooled


class _ResidualProjection(nn.Module):
    """Linear(in, out) -> x + Dropout(Linear(GELU(x))) -> LayerNorm (NICE's projection head)."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.residual = nn.Sequential(nn.GELU(), nn.Linear(out_features, out_features), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.norm(x + self.residual(x))


@register_model("nice")
class NiceEncoder(BrainEncoder):
    """NICE EEG encoder: temporal conv, average pooling, spatial conv, 1x1 conv, projection.

    ``x``: ``(batch, n_chans, n_times)`` -> ``(batch, n_outputs)``. The convolution stage is
    Conv2d(1, F, (1, temporal_kernel)), AvgPool (1, pool_kernel) stride pool_stride,
    BatchNorm, ELU, Conv2d(F, F, (n_chans, 1)), BatchNorm, ELU, Dropout, Conv2d(F, F, 1),
    flattened to ``F * pooled_steps`` (1440 for 63 channels x 250 samples), then a
    residual projection head. Defaults: NICE on THINGS-EEG2 (63 ch, 250 Hz, 250 samples,
    768-d CLIP ViT-L/14 targets).

    Options: ``channel_attention`` puts an ATM-style transformer layer over channel tokens
    (each channel's time course linearly embedded to ``attention_dim`` features, default
    ``n_times``) before the convolutions; ``subject_embedding`` adds a learned subject
    token to that attention (or, without attention, a learned per-subject vector added to
    the flattened feature).

    >>> import torch
    >>> model = NiceEncoder(n_chans=17, n_times=100, n_outputs=32).eval()
    >>> model(torch.randn(2, 17, 100), torch.zeros(2, dtype=torch.long)).shape
    torch.Size([2, 32])
    """

    def __init__(
        self,
        n_chans: int = 63,
        n_times: int = 250,
        sfreq: float = 250.0,
        n_subjects: int = 10,
        n_outputs: int = 768,
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_kernel: int = 51,
        pool_stride: int = 5,
        conv_dropout: float = 0.5,
        projection_dropout: float = 0.5,
        channel_attention: bool = False,
        attention_dim: int | None = None,
        attention_heads: int = 4,
        attention_feedforward: int = 256,
        attention_dropout: float = 0.25,
        subject_embedding: bool = False,
    ) -> None:
        super().__init__(n_outputs=n_outputs, n_chans=n_chans, n_times=n_times, sfreq=sfreq, n_subjects=n_subjects)
        conv_length = n_times
        self.token_embedding = self.attention = self.attention_norm = self.subject_token = None
        self.subject_bias = None
        if channel_attention:
            attention_dim = attention_dim or n_times
            conv_length = attention_dim
            self.token_embedding = nn.Linear(n_times, attention_dim)
            self.attention = SelfAttentionLayer(attention_dim, attention_heads, attention_feedforward,
                                                attention_dropout)
            self.attention_norm = nn.LayerNorm(attention_dim)
            if subject_embedding:
                self.subject_token = SubjectEmbedding(n_subjects, attention_dim)
        self.feature_size = shallow_feature_size(conv_length, n_filters, temporal_kernel, pool_kernel, pool_stride)
        if subject_embedding and not channel_attention:
            self.subject_bias = SubjectEmbedding(n_subjects, self.feature_size)
            nn.init.zeros_(self.subject_bias.weight)  # start subject-agnostic
        self.temporal_spatial = nn.Sequential(
            nn.Conv2d(1, n_filters, (1, temporal_kernel)),
            nn.AvgPool2d((1, pool_kernel), (1, pool_stride)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Conv2d(n_filters, n_filters, (n_chans, 1)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Dropout(conv_dropout),
            nn.Conv2d(n_filters, n_filters, 1),
        )
        self.projection = _ResidualProjection(self.feature_size, n_outputs, projection_dropout)

    def features(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        """The flattened convolution feature (``batch, feature_size``) before the projection head."""
        self._check_meeg_input(x)
        subject = self._check_subject(subject, x.shape[0])
        if self.attention is not None:
            tokens = self.token_embedding(x)  # (batch, channels, attention_dim)
            if self.subject_token is not None:
                tokens = torch.cat([tokens, self.subject_token(subject)[:, None]], dim=1)
            tokens = self.attention_norm(self.attention(tokens))
            x = tokens[:, : self.n_chans]  # the subject token only informs the channels
        h = self.temporal_spatial(x[:, None])  # (batch, filters, 1, steps)
        # Flatten step-major, filter-minor, as NICE's (h w) e rearrangement does.
        h = h.flatten(2).transpose(1, 2).flatten(1)
        if self.subject_bias is not None:
            h = h + self.subject_bias(subject)
        return h

    def forward(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(x, subject))


@register_model("atm")
class AtmEncoder(NiceEncoder):
    """ATM (Li et al. 2024): channel-wise attention with a subject token, then NICE's convolutions.

    The same network as :class:`NiceEncoder` with ``channel_attention`` and
    ``subject_embedding`` on and ATM's sizes: 250-d channel tokens, one post-norm
    transformer layer with 4 heads (of 62 features) and a 256-wide feed-forward, dropout
    0.25, then a 1024-d projection (OpenCLIP ViT-H-14 targets).

    >>> import torch
    >>> model = AtmEncoder(n_chans=17, n_times=100, n_subjects=3, n_outputs=32).eval()
    >>> model(torch.randn(2, 17, 100), torch.tensor([0, 2])).shape
    torch.Size([2, 32])
    """

    def __init__(
        self,
        n_chans: int = 63,
        n_times: int = 250,
        sfreq: float = 250.0,
        n_subjects: int = 10,
        n_outputs: int = 1024,
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_kernel: int = 51,
        pool_stride: int = 5,
        conv_dropout: float = 0.5,
        projection_dropout: float = 0.5,
        channel_attention: bool = True,
        attention_dim: int | None = None,
        attention_heads: int = 4,
        attention_feedforward: int = 256,
        attention_dropout: float = 0.25,
        subject_embedding: bool = True,
    ) -> None:
        super().__init__(
            n_chans=n_chans, n_times=n_times, sfreq=sfreq, n_subjects=n_subjects, n_outputs=n_outputs,
            n_filters=n_filters, temporal_kernel=temporal_kernel, pool_kernel=pool_kernel, pool_stride=pool_stride,
            conv_dropout=conv_dropout, projection_dropout=projection_dropout, channel_attention=channel_attention,
            attention_dim=attention_dim, attention_heads=attention_heads,
            attention_feedforward=attention_feedforward, attention_dropout=attention_dropout,
            subject_embedding=subject_embedding,
        )
