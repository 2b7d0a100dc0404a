"""Diffusion decoders: embeddings (of images, or predicted from brain data) -> images.

Three paths, all on real diffusers classes:

- :class:`ConditionalImageDecoder`, trained from scratch by :func:`train_image_decoder`: a
  small ``UNet2DConditionModel`` cross-attending to the embedding projected to a few tokens;
  classifier-free guidance, any compatible diffusers scheduler by name, img2img.
- :class:`LowLevelDecoder`: a ridge map from brain embeddings or features to a blurry image
  (or VAE latents), the starting point of img2img (MindEye, Brain-Diffuser).
- :func:`load_generator`: pretrained generators from a local folder or the Hugging Face cache
  (``"unclip"``, ``"kandinsky22"``, ``"ip-adapter-sd15"``, ``"ip-adapter-sdxl"``) wrapped as
  :class:`PretrainedImageGenerator`, with :class:`EmbeddingProjector` mapping brain embeddings
  into the embedding the generator expects.

Images are uint8 RGB arrays ``(N, H, W, 3)`` at the API boundary.

>>> from neurodec.generate import train_image_decoder, ImageDecoderConfig   # doctest: +SKIP
>>> decoder = train_image_decoder(train_images, train_embeddings, config=ImageDecoderConfig())   # doctest: +SKIP
>>> images = decoder.generate(brain_embeddings, seeds=range(len(brain_embeddings)))             # doctest: +SKIP

Importing this package imports neither torch nor diffusers; the classes load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it; resolved on first attribute access (PEP 562), so
# `import neurodec.generate` stays light.
_EXPORTS = {
    "ConditionalImageDecoder": "neurodec.generate.decoder",
    "ConditioningProjection": "neurodec.generate.decoder",
    "ImageDecoderConfig": "neurodec.generate.decoder",
    "train_image_decoder": "neurodec.generate.decoder",
    "LowLevelDecoder": "neurodec.generate.low_level",
    "EmbeddingProjector": "neurodec.generate.pretrained",
    "GENERATOR_KINDS": "neurodec.generate.pretrained",
    "PretrainedImageGenerator": "neurodec.generate.pretrained",
    "load_generator": "neurodec.generate.pretrained",
    "scheduler_names": "neurodec.generate._common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neurodec.generate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
