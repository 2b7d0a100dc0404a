"""The low-level path: a ridge map from brain embeddings (or features) to a blurry image.

MindEye and Brain-Diffuser first predict a coarse image (layout, colour, brightness) and then
let a diffusion model refine it with img2img. :class:`LowLevelDecoder` predicts either the
pixels of a small ``output_size`` x ``output_size`` RGB image or, given a diffusers
``AutoencoderKL``, its latents, by ridge regression (closed form, the penalty chosen on a
validation split by :func:`neurodec.evaluation.baselines.ridge_baseline`), and returns uint8
images resized to ``image_size``.

>>> low = LowLevelDecoder.fit(train_x, train_images, val_x, val_images, output_size=16)   # doctest: +SKIP
>>> blurry = low.predict(test_x)                                                          # doctest: +SKIP
>>> refined = decoder.img2img(blurry, test_embeddings, strength=0.6)                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from neurodec.errors import DecoderInputError
from neurodec.generate._common import (
    check_images,
    check_same_count,
    quiet_loading_options,
    read_array_folder,
    resize,
    save_array_folder,
    to_uint8,
    to_unit_range,
)

logger = logging.getLogger("neurodec")

LOW_LEVEL_FILE = "neurodec_low_level.json"
LOW_LEVEL_WEIGHTS = "ridge.safetensors"
LOW_LEVEL_FORMAT_VERSION = 1


def _features(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim < 2 or array.shape[0] == 0:
        raise DecoderInputError(f"{what}: expected (n_items, features...), found shape {array.shape}")
    return array.reshape(array.shape[0], -1)


class LowLevelDecoder:
    """Ridge regression from brain embeddings or features to blurry images (or VAE latents).

    Build it with :meth:`fit`. ``predict`` returns uint8 ``(N, image_size, image_size, 3)``.

    Attributes: ``weights`` ``(n_features, n_outputs)``, ``intercept``, ``alpha`` (chosen on
    validation), ``val_scores`` (validation score per alpha), ``output_size``, ``image_size``,
    ``vae`` (None for pixel targets), ``latent_shape`` (for latent targets).
    """

    def __init__(self, weights: np.ndarray, intercept: np.ndarray, *, alpha: float, output_size: int,
                 image_size: int, vae: Any = None, latent_shape: Sequence[int] | None = None,
                 vae_input_size: int | None = None, val_scores: dict[float, float] | None = None):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.alpha = float(alpha)
        self.output_size = int(output_size)
        self.image_size = int(image_size)
        self.vae = vae
        self.latent_shape = None if latent_shape is None else tuple(int(n) for n in latent_shape)
        self.vae_input_size = None if vae_input_size is None else int(vae_input_size)
        self.val_scores = dict(val_scores or {})

    # ---------------------------------------------------------------- targets
    @staticmethod
    def _latents(vae, images: np.ndarray, size: int, batch_size: int = 64) -> np.ndarray:
        device = next(vae.parameters()).device
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = to_unit_range(images[start:start + batch_size], size, device)
                chunks.append(vae.encode(pixels).latent_dist.mean.float().cpu().numpy())
        return np.concatenate(chunks)

    @staticmethod
    def _pixels(images: np.ndarray, size: int) -> np.ndarray:
        return to_unit_range(images, size).permute(0, 2, 3, 1).numpy().astype(np.float64)

    @classmethod
    def fit(
        cls,
        train_features: Any,
        train_images: Any,
        val_features: Any,
        val_images: Any,
        *,
        output_size: int = 16,
        image_size: int | None = None,
        vae: Any = None,
        vae_input_size: int | None = None,
        alphas: Sequence[float] | None = None,
        scoring: str = "r2",
    ) -> "LowLevelDecoder":
        """Fit the ridge map on the training items; choose its penalty on the validation items.

        Parameters
        ----------
        train_features, val_features
            Brain embeddings or features ``(n_items, ...)`` (flattened after the first axis).
        train_images, val_images
            The uint8 images the items showed.
        output_size
            Side of the predicted image (pixel targets); small on purpose (a blurry layout).
        image_size
            Side of the returned images (default: that of ``train_images``).
        vae, vae_input_size
            A diffusers ``AutoencoderKL``: predict its latents of the images resized to
            ``vae_input_size`` (default ``image_size``) instead of pixels, and decode them.
        alphas, scoring
            Ridge penalty grid and validation criterion (``"r2"``: mean squared error).

        >>> low = LowLevelDecoder.fit(train_x, train_images, val_x, val_images, output_size=16)  # doctest: +SKIP
        >>> low.alpha, low.predict(test_x).shape                                              # doctest: +SKIP
        (1000.0, (200, 64, 64, 3))
        """
        # Lazy: neurodec.evaluation stands after generate in the data flow (docs/generate.md).
        from neurodec.evaluation.baselines import DEFAULT_ALPHAS, ridge_baseline

        train_images = check_images(train_images, "train_images")
        val_images = check_images(val_images, "val_images")
        train_x, val_x = _features(train_features, "train_features"), _features(val_features, "val_features")
        check_same_count(train_x, "train_features", train_images, "train_images")
        check_same_count(val_x, "val_features", val_images, "val_images")
        image_size = int(image_size or train_images.shape[1])
        if vae is not None:
            vae_input_size = int(vae_input_size or image_size)
            train_y = cls._latents(vae, train_images, vae_input_size)
            val_y = cls._latents(vae, val_images, vae_input_size)
            latent_shape = train_y.shape[1:]
        else:
            train_y, val_y = cls._pixels(train_images, output_size), cls._pixels(val_images, output_size)
            latent_shape = None
        result = ridge_baseline(train_x, train_y.reshape(len(train_y), -1), val_x, val_y.reshape(len(val_y), -1),
                                val_x[:1], alphas=DEFAULT_ALPHAS if alphas is None else alphas, scoring=scoring)
        logger.info("low-level decoder: ridge alpha %.3g (%s on validation %.4f), %d features -> %d values",
                    result.alpha, scoring, result.val_scores[result.alpha], train_x.shape[1],
                    result.model.weights.shape[1])
        return cls(result.model.weights, result.model.intercept, alpha=result.alpha, output_size=output_size,
                   image_size=image_size, vae=vae, latent_shape=latent_shape, vae_input_size=vae_input_size,
                   val_scores=result.val_scores)

    def predict(self, features: Any, *, batch_size: int = 64) -> np.ndarray:
        """Blurry images ``(N, image_size, image_size, 3)`` uint8 predicted from ``features``.

        >>> low.predict(test_x).dtype   # doctest: +SKIP
        dtype('uint8')
        """
        x = _features(features, "features")
        if x.shape[1] != self.weights.shape[0]:
            raise DecoderInputError(f"features: expected {self.weights.shape[0]} values per item (as in fit), "
                                    f"found {x.shape[1]}")
        predicted = (x.astype(np.float32) @ self.weights + self.intercept).astype(np.float32)
        if self.vae is None:
            pixels = torch.from_numpy(predicted.reshape(len(x), self.output_size, self.output_size, 3))
            return to_uint8(pixels.permute(0, 3, 1, 2), self.image_size)
        device = next(self.vae.parameters()).device
        latents = torch.from_numpy(predicted.reshape(len(x), *self.latent_shape))
        images = []
        with torch.no_grad():
            for start in range(0, len(latents), batch_size):
                decoded = self.vae.decode(latents[start:start + batch_size].to(device)).sample
                images.append(to_uint8(resize(decoded.float().cpu(), self.image_size)))
        return np.concatenate(images)

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``ridge.safetensors``, ``neurodec_low_level.json`` and ``vae/`` (if any), atomically."""
        document = {
            "kind": "low_level_decoder", "format_version": LOW_LEVEL_FORMAT_VERSION, "alpha": self.alpha,
            "output_size": self.output_size, "image_size": self.image_size,
            "latent_shape": self.latent_shape, "vae_input_size": self.vae_input_size,
            "val_scores": [[alpha, score] for alpha, score in self.val_scores.items()],
        }
        vae = self.vae
        return save_array_folder(folder, arrays={"weights": self.weights, "intercept": self.intercept},
                                 weights_file=LOW_LEVEL_WEIGHTS, document=document, document_file=LOW_LEVEL_FILE,
                                 what="low-level decoder",
                                 extra=None if vae is None else lambda temporary: vae.save_pretrained(temporary / "vae"))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> "LowLevelDecoder":
        """Load a folder written by :meth:`save_pretrained`."""
        folder = Path(folder)
        document, tensors = read_array_folder(folder, weights_file=LOW_LEVEL_WEIGHTS, document_file=LOW_LEVEL_FILE,
                                              format_version=LOW_LEVEL_FORMAT_VERSION,
                                              writer="LowLevelDecoder.save_pretrained")
        vae = None
        if document["latent_shape"] is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True,
                                                **quiet_loading_options()).eval()
        return cls(tensors["weights"], tensors["intercept"], alpha=document["alpha"],
                   output_size=document["output_size"], image_size=document["image_size"], vae=vae,
                   latent_shape=document["latent_shape"], vae_input_size=document["vae_input_size"],
                   val_scores={float(alpha): float(score) for alpha, score in document["val_scores"]})
