"""Brain encoders: one base class, a registry by name, and the published architectures.

Registered models (``list_models()``):

- ``brainmagick``: Défossez et al. 2023 M/EEG encoder (speech, images): spatial attention
  over sensor positions, subject layer, dilated residual conv stack; time-resolved or
  pooled output (:class:`BrainMagickEncoder`).
- ``nice``: NICE EEG encoder (THINGS-EEG2): ShallowNet-like temporal-spatial conv and a
  residual projection head (:class:`NiceEncoder`).
- ``atm``: ATM EEG encoder: channel-wise attention with a subject token, then NICE's
  convolutions (:class:`AtmEncoder`).
- ``mindeye``: MindEye2 fMRI encoder: per-subject ridge adapters into a shared latent,
  residual MLP, token head, CLIP projector, low-level head (:class:`MindEyeEncoder`).
- ``mindbridge``: MindBridge fMRI encoder: adaptive max pooling of each subject's voxels,
  per-subject embedders, residual MLP (:class:`MindBridgeEncoder`).

Every encoder is called as ``model(x, subject)`` with ``subject`` a LongTensor of
per-sample subject indices, records its constructor arguments as ``model.config``, and is
saved with ``model.save_pretrained(folder)`` and loaded with ``load_pretrained(folder)``.

>>> import torch
>>> from neurodec.models import create_model, list_models
>>> model = create_model("atm", n_chans=17, n_times=100, n_subjects=2, n_outputs=32).eval()
>>> model(torch.randn(4, 17, 100), torch.tensor([0, 1, 0, 1])).shape
torch.Size([4, 32])
"""

from neurodec.models.base import (
    BrainEncoder,
    create_model,
    get_model_class,
    list_models,
    load_pretrained,
    register_model,
)
from neurodec.models.brainmagick import BrainMagickEncoder
from neurodec.models.layers import (
    FourierPositionEmbedding,
    ResidualMLP,
    SelfAttentionLayer,
    SpatialAttention,
    SubjectEmbedding,
    SubjectLinear,
    project_positions_2d,
)
from neurodec.models.mindeye import (
    NSD_NSDGENERAL_VOXELS,
    BottleneckAdapter,
    LowLevelHead,
    MindBridgeEncoder,
    MindEyeEncoder,
    SubjectModules,
)
from neurodec.models.nice import AtmEncoder, NiceEncoder, shallow_feature_size

__all__ = [
    "NSD_NSDGENERAL_VOXELS",
    "AtmEncoder",
    "BottleneckAdapter",
    "BrainEncoder",
    "BrainMagickEncoder",
    "FourierPositionEmbedding",
    "LowLevelHead",
    "MindBridgeEncoder",
    "MindEyeEncoder",
    "NiceEncoder",
    "ResidualMLP",
    "SelfAttentionLayer",
    "SpatialAttention",
    "SubjectEmbedding",
    "SubjectLinear",
    "SubjectModules",
    "create_model",
    "get_model_class",
    "list_models",
    "load_pretrained",
    "project_positions_2d",
    "register_model",
    "shallow_feature_size",
]
