"""The compact conditional image decoder: a small diffusers UNet trained from scratch.

A :class:`ConditionalImageDecoder` turns target embeddings (a pooled ``(D,)`` vector such as
EfficientNet or CLIP image features, or tokens ``(T, D)``) into images. The embedding is
standardised with statistics of the training embeddings, projected by a learned linear layer
to a few conditioning tokens, and a real ``diffusers.UNet2DConditionModel`` cross-attends to
them (optionally their mean also joins the timestep embedding, a global signal every ResNet
block sees). It denoises in pixel space at ``sample_size`` (the images are then resized to
``image_size``) or, with ``space="latent"``, in the latent space of a tiny
``diffusers.AutoencoderKL`` trained first on the same images.

Classifier-free guidance: during training the tokens are replaced by learned null tokens with
probability ``condition_dropout``; at sampling ``guidance_scale`` > 1 pushes the prediction
away from the unconditional one. Any diffusers scheduler compatible with DDPM samples
(``scheduler="DPMSolverMultistepScheduler"``...). ``img2img`` starts from a given image noised
to the timestep set by ``strength`` (a low-level reconstruction, as MindEye and Brain-Diffuser).

>>> from neurodec.generate import ImageDecoderConfig, train_image_decoder
>>> decoder = train_image_decoder(images, embeddings, config=ImageDecoderConfig(), seed=0)   # doctest: +SKIP
>>> decoder.generate(test_embeddings, seeds=range(len(test_embeddings))).shape             # doctest: +SKIP
(200, 64, 64, 3)
>>> decoder.save_pretrained("decoder"); same = ConditionalImageDecoder.from_pretrained("decoder")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from neurodec._logging import progress
from neurodec.errors import ConfigError
from neurodec.generate._common import (
    TRAINING_SCHEDULER,
    build_scheduler,
    check_embeddings,
    check_images,
    check_same_count,
    draw_noise,
    flush_denormals,
    image_generators,
    img2img_timesteps,
    quiet_loading_options,
    resolve_seeds,
    scheduler_class,
    step_accepts_generator,
    to_uint8,
    to_unit_range,
    write_folder_atomically,
)

logger = logging.getLogger("neurodec")

DECODER_FILE = "neurodec_decoder.json"
CONDITIONING_FILE = "conditioning.safetensors"
# Bumped when the layout of a saved decoder folder changes.
DECODER_FORMAT_VERSION = 1


class ImageDecoderConfig(BaseModel):
    """Architecture and training settings of :class:`ConditionalImageDecoder` (unknown keys are errors).

    The defaults are the ones measured for the demo (docs/generate.md): 64 x 64 RGB stimuli,
    decoded in pixel space at 32 x 32 and resized, about 2-3 minutes of training on 2 CPU cores.

    >>> ImageDecoderConfig(sample_size=16, training_steps=10).sample_size
    16
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what is generated
    image_size: int = 64
    space: Literal["pixel", "latent"] = "pixel"
    sample_size: int = 16
    # UNet
    block_out_channels: list[int] = [32, 64, 64]
    attention_levels: list[bool] = [False, True, True]
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    only_cross_attention: bool = True
    # conditioning
    n_tokens: int = 4
    cross_attention_dim: int = 64
    time_embedding_conditioning: bool = True
    # noise schedule (of training; sampling may use any compatible scheduler)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    clip_sample: bool = True
    # latent space only: the tiny AutoencoderKL trained first
    vae_block_out_channels: list[int] = [32, 64, 64]
    vae_latent_channels: int = 4
    vae_training_steps: int = 300
    vae_kl_weight: float = 1e-6
    # training
    training_steps: int = 500
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 20
    condition_dropout: float = 0.1
    ema_decay: float = 0.0
    # sampling defaults
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    sampling_scheduler: str = "DDPMScheduler"

    @model_validator(mode="after")
    def _consistent(self) -> "ImageDecoderConfig":
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, block_out_channels "
                             f"{len(self.block_out_channels)}; give one per UNet level")
        if any(channels % self.norm_num_groups for channels in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every block_out_channels "
                             f"{self.block_out_channels}")
        if self.space == "latent":
            factor = 2 ** (len(self.vae_block_out_channels) - 1)
            if self.image_size % factor or self.image_size // factor != self.sample_size:
                raise ValueError(f"space 'latent': sample_size must be image_size / {factor} "
                                 f"(the VAE's downsampling) = {self.image_size / factor}, found {self.sample_size}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must lie in [0, 1), found {self.condition_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), found {self.ema_decay}")
        return self

    @field_validator("sampling_scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        scheduler_class(name)
        return name


def decoder_config(config: ImageDecoderConfig | dict[str, Any] | None) -> ImageDecoderConfig:
    """A validated :class:`ImageDecoderConfig` from an object, a dict or None (defaults)."""
    if isinstance(config, ImageDecoderConfig):
        return config
    try:
        return ImageDecoderConfig.model_validate(config or {})
    except ValidationError as error:
        from neurodec.config import config_error

        raise config_error(error, "image decoder config") from None


class ConditioningProjection(torch.nn.Module):
    """Embeddings -> conditioning tokens ``(N, n_tokens, cross_attention_dim)``, and the null tokens.

    Pooled ``(D,)`` embeddings go through one linear layer to ``n_tokens`` tokens; token
    embeddings ``(T, D)`` are projected token by token (``T`` tokens out). The input is first
    standardised per feature with the training embeddings' mean and spread (buffers set by
    :meth:`fit_standardisation`), so the learning rate suits any embedding scale.
    """

    def __init__(self, embedding_shape: Sequence[int], n_tokens: int, cross_attention_dim: int):
        super().__init__()
        self.embedding_shape = tuple(int(n) for n in embedding_shape)
        if len(self.embedding_shape) not in (1, 2):
            raise ConfigError(f"embedding_shape: expected (D,) or (T, D), found {self.embedding_shape}")
        self.pooled = len(self.embedding_shape) == 1
        self.n_tokens = int(n_tokens) if self.pooled else self.embedding_shape[0]
        self.cross_attention_dim = int(cross_attention_dim)
        features = self.embedding_shape[-1]
        outputs = self.n_tokens * self.cross_attention_dim if self.pooled else self.cross_attention_dim
        self.register_buffer("embedding_mean", torch.zeros(features))
        self.register_buffer("embedding_scale", torch.ones(features))
        self.linear = torch.nn.Linear(features, outputs)
        self.norm = torch.nn.LayerNorm(self.cross_attention_dim)
        self.null_tokens = torch.nn.Parameter(0.02 * torch.randn(self.n_tokens, self.cross_attention_dim))

    @torch.no_grad()
    def fit_standardisation(self, embeddings: torch.Tensor) -> None:
        flat = embeddings.reshape(-1, embeddings.shape[-1]).float()
        self.embedding_mean.copy_(flat.mean(0))
        # Features that never vary (dead ReLU units) keep scale 1 instead of dividing by ~0.
        spread = flat.std(0)
        self.embedding_scale.copy_(torch.where(spread > 1e-6, spread, torch.ones_like(spread)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        standardised = (embeddings - self.embedding_mean) / self.embedding_scale
        tokens = self.linear(standardised)
        if self.pooled:
            tokens = tokens.reshape(embeddings.shape[0], self.n_tokens, self.cross_attention_dim)
        return self.norm(tokens)

    def null(self, batch_size: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)


def _build_unet(config: ImageDecoderConfig, channels: int):
    from diffusers import UNet2DConditionModel

    down = ["CrossAttnDownBlock2D" if attention else "DownBlock2D" for attention in config.attention_levels]
    up = ["CrossAttnUpBlock2D" if attention else "UpBlock2D" for attention in reversed(config.attention_levels)]
    extra: dict[str, Any] = {}
    if config.time_embedding_conditioning:
        extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": config.cross_attention_dim}
    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        only_cross_attention=config.only_cross_attention,
        **extra,
    )


def _build_vae(config: ImageDecoderConfig):
    from diffusers import AutoencoderKL

    levels = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=1,
        latent_channels=config.vae_latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.image_size,
    )


def _build_training_scheduler(config: ImageDecoderConfig):
    return scheduler_class(TRAINING_SCHEDULER)(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=config.clip_sample and config.space == "pixel",
        # "trailing" spacing reaches the last (pure-noise) timestep with few inference steps.
        timestep_spacing="trailing",
    )


class ConditionalImageDecoder(torch.nn.Module):
    """A small conditional diffusion model from embeddings to images (see the module docstring).

    Build it with :func:`train_image_decoder`, or load a saved one with :meth:`from_pretrained`.

    >>> decoder = ConditionalImageDecoder(ImageDecoderConfig(sample_size=16, image_size=16,
    ...     block_out_channels=[16, 32], attention_levels=[False, True]), embedding_shape=(8,))
    >>> decoder.generate(np.zeros((2, 8), np.float32), num_inference_steps=2, progress=False).shape
    (2, 16, 16, 3)
    """

    def __init__(self, config: ImageDecoderConfig | dict[str, Any] | None, embedding_shape: Sequence[int]):
        super().__init__()
        self.config = decoder_config(config)
        self.embedding_shape = tuple(int(n) for n in embedding_shape)
        self.projection = ConditioningProjection(self.embedding_shape, self.config.n_tokens,
                                                 self.config.cross_attention_dim)
        self.vae = _build_vae(self.config) if self.config.space == "latent" else None
        channels = self.config.vae_latent_channels if self.vae is not None else 3
        self.unet = _build_unet(self.config, channels)
        self.scheduler = _build_training_scheduler(self.config)
        # Latents are scaled to unit variance (as Stable Diffusion's scaling_factor); set from data.
        self.register_buffer("latent_scale", torch.ones(()))
        #: Training losses per step (mean denoising MSE of each batch), for inspection.
        self.training_losses: list[float] = []

    # ------------------------------------------------------------ conversions
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _channels(self) -> int:
        return self.config.vae_latent_channels if self.vae is not None else 3

    def images_to_samples(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images -> what the UNet denoises (pixels at sample_size, or scaled VAE latents)."""
        if self.vae is None:
            return to_unit_range(images, self.config.sample_size, self.device)
        pixels = to_unit_range(images, self.config.image_size, self.device).to(self.dtype)
        with torch.no_grad():
            return self.vae.encode(pixels).latent_dist.mean.float() * self.latent_scale

    def samples_to_images(self, samples: torch.Tensor) -> np.ndarray:
        """What the UNet denoised -> uint8 images of image_size."""
        if self.vae is None:
            return to_uint8(samples, self.config.image_size)
        with torch.no_grad():
            decoded = self.vae.decode((samples / self.latent_scale).to(self.dtype)).sample
            return to_uint8(decoded, self.config.image_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def condition(self, embeddings: Any) -> torch.Tensor:
        """Conditioning tokens of the embeddings, ``(N, n_tokens, cross_attention_dim)``."""
        array = check_embeddings(embeddings, self.embedding_shape)
        return self.projection(torch.from_numpy(array).to(self.device, self.dtype))

    def _predict_noise(self, samples: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # The UNet runs in its own dtype (fp16 on GPU when moved there); the scheduler's
        # arithmetic stays in fp32.
        class_labels = tokens.mean(1) if self.config.time_embedding_conditioning else None
        return self.unet(samples.to(self.dtype), timesteps, encoder_hidden_states=tokens,
                         class_labels=class_labels).sample.float()

    # --------------------------------------------------------------- training
    def denoising_loss(self, samples: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Epsilon-prediction MSE at random timesteps (noise and timesteps from ``generator``)."""
        batch = samples.shape[0]
        noise = torch.randn(samples.shape, generator=generator).to(samples.device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator)
        timesteps = timesteps.to(samples.device)
        noisy = self.scheduler.add_noise(samples, noise, timesteps)
        return torch.nn.functional.mse_loss(self._predict_noise(noisy, timesteps, tokens), noise)

    @torch.no_grad()
    def evaluate_denoising_loss(self, images: Any, embeddings: Any, *, seed: int = 0, repeats: int = 4) -> float:
        """Mean denoising MSE over fixed noise and timesteps (``seed``): lower means a better model.

        The same ``seed`` draws the same noise and timesteps, so two models (e.g. before and
        after training) are compared on identical problems.
        """
        images = check_images(images)
        embeddings = check_embeddings(embeddings, self.embedding_shape)
        check_same_count(images, "images", embeddings, "embeddings")
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        with flush_denormals():
            samples, tokens = self.images_to_samples(images), self.condition(embeddings)
            losses = [float(self.denoising_loss(samples, tokens, generator)) for _ in range(repeats)]
        self.train(was_training)
        return float(np.mean(losses))

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        embeddings: Any,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: Any = None,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
        batch_size: int = 32,
        init_images: Any = None,
        strength: float | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Images ``(N, image_size, image_size, 3)`` uint8 decoded from ``embeddings`` ``(N, ...)``.

        Parameters
        ----------
        num_inference_steps, guidance_scale
            Denoising steps and classifier-free guidance (1 = no guidance); default from the config.
        scheduler
            A diffusers scheduler name (``"DDIMScheduler"``, ``"DPMSolverMultistepScheduler"``...)
            or object; default the config's ``sampling_scheduler``.
        seeds, generator
            ``seeds`` gives image ``i`` its own noise, which depends on ``seeds[i]`` alone (not on
            the batch it falls in); default ``range(N)``. A ``generator`` instead draws the noise
            of all images in order (so it depends on the batching).
        init_images, strength
            img2img: start from these uint8 images noised to the ``strength`` point of the
            schedule (0 keeps them, 1 ignores them); see :meth:`img2img`.

        >>> decoder.generate(brain_embeddings, seeds=[7] * len(brain_embeddings))  # doctest: +SKIP
        """
        embeddings = check_embeddings(embeddings, self.embedding_shape)
        n_images = len(embeddings)
        steps = int(num_inference_steps or self.config.num_inference_steps)
        scale = float(self.config.guidance_scale if guidance_scale is None else guidance_scale)
        per_image_seeds = resolve_seeds(n_images, seeds, generator)
        if (init_images is None) != (strength is None):
            raise ConfigError("generate: init_images and strength go together (img2img); give both or neither")
        if init_images is not None:
            init_images = check_images(init_images, "init_images")
            check_same_count(init_images, "init_images", embeddings, "embeddings")
        chosen_scheduler = self.config.sampling_scheduler if scheduler is None else scheduler
        was_training = self.training
        self.eval()
        batches = range(0, n_images, max(1, int(batch_size)))
        outputs = []
        with flush_denormals():
            for start in _progress_if(batches, progress, "generating images", len(batches)):
                stop = min(start + int(batch_size), n_images)
                generators = image_generators(per_image_seeds[start:stop]) if per_image_seeds is not None else generator
                batch_init = None if init_images is None else init_images[start:stop]
                scheduler_object = build_scheduler(chosen_scheduler, self.scheduler.config)
                samples = self._denoise(embeddings[start:stop], scheduler_object, steps, scale, generators,
                                        batch_init, strength)
                outputs.append(self.samples_to_images(samples))
        self.train(was_training)
        return np.concatenate(outputs)

    def img2img(self, init_images: Any, embeddings: Any, *, strength: float = 0.5, **options: Any) -> np.ndarray:
        """Refine ``init_images`` (e.g. low-level reconstructions) towards ``embeddings``.

        The images are noised to the timestep ``strength`` of the way into the schedule and
        denoised from there (diffusers' img2img): 0 returns them as they are (resized to
        ``image_size``), 1 is plain generation. Other options as :meth:`generate`.

        >>> refined = decoder.img2img(blurry, embeddings, strength=0.7, seeds=range(len(blurry)))  # doctest: +SKIP
        """
        return self.generate(embeddings, init_images=init_images, strength=strength, **options)

    def _denoise(self, embeddings, scheduler, steps, scale, generators, init_images, strength) -> torch.Tensor:
        device = self.device
        n_images = len(embeddings)
        shape = (n_images, self._channels(), self.config.sample_size, self.config.sample_size)
        noise = draw_noise(shape, generators, device)
        if init_images is None:
            scheduler.set_timesteps(steps, device=device)
            timesteps = scheduler.timesteps
            samples = noise * scheduler.init_noise_sigma
        else:
            timesteps = img2img_timesteps(scheduler, steps, strength, device)
            samples = self.images_to_samples(init_images)
            if len(timesteps) == 0:
                return samples
            samples = scheduler.add_noise(samples, noise, timesteps[:1].repeat(n_images))
        tokens = self.condition(embeddings)
        guided = scale != 1.0
        if guided:
            tokens = torch.cat([self.projection.null(n_images), tokens])
        step_options = {"generator": generators} if step_accepts_generator(scheduler) else {}
        for timestep in timesteps:
            model_input = torch.cat([samples, samples]) if guided else samples
            model_input = scheduler.scale_model_input(model_input, timestep)
            predicted = self._predict_noise(model_input, timestep.expand(model_input.shape[0]), tokens)
            if guided:
                unconditional, conditional = predicted.chunk(2)
                predicted = unconditional + scale * (conditional - unconditional)
            samples = scheduler.step(predicted, timestep, samples, **step_options).prev_sample
        if not bool(torch.isfinite(samples).all()):
            raise ConfigError(f"scheduler: {type(scheduler).__name__} with {len(timesteps)} steps diverged "
                              "(non-finite values); choose another scheduler or more num_inference_steps")
        return samples

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write a diffusers-style folder, atomically (a temporary folder renamed when complete).

        ``unet/`` (the UNet's own ``save_pretrained``), ``scheduler/scheduler_config.json``,
        ``vae/`` (latent space only), ``conditioning.safetensors`` (projection, null tokens,
        standardisation, latent scale) and ``neurodec_decoder.json`` (the config).

        >>> decoder.save_pretrained("decoder")   # doctest: +SKIP
        """
        from safetensors.torch import save_file

        from neurodec.models.base import _json_ready, _write_atomically

        def write(temporary: Path) -> None:
            self.unet.save_pretrained(temporary / "unet")
            self.scheduler.save_pretrained(temporary / "scheduler")
            if self.vae is not None:
                self.vae.save_pretrained(temporary / "vae")
            tensors = {f"projection.{name}": tensor.detach().cpu().contiguous()
                       for name, tensor in self.projection.state_dict().items()}
            tensors["latent_scale"] = self.latent_scale.detach().cpu().reshape(1)
            _write_atomically(temporary / CONDITIONING_FILE, lambda path: save_file(tensors, path))
            document = {
                "kind": "conditional_image_decoder",
                "format_version": DECODER_FORMAT_VERSION,
                "embedding_shape": list(self.embedding_shape),
                "config": _json_ready(self.config.model_dump(), "image decoder config"),
            }
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
            _write_atomically(temporary / DECODER_FILE, lambda path: Path(path).write_text(text, encoding="utf-8"))

        return write_folder_atomically(folder, write, DECODER_FILE)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str],
                        device: str | torch.device = "cpu") -> "ConditionalImageDecoder":
        """Load a folder written by :meth:`save_pretrained` (local files only).

        >>> decoder = ConditionalImageDecoder.from_pretrained("decoder")   # doctest: +SKIP
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from safetensors.torch import load_file

        from neurodec.errors import WeightsNotFoundError

        folder = Path(folder)
        document_path = folder / DECODER_FILE
        if not document_path.is_file():
            raise WeightsNotFoundError(f"{document_path}: not found; a saved image decoder folder holds "
                                       f"{DECODER_FILE}, written by ConditionalImageDecoder.save_pretrained")
        try:
            document = json.loads(document_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{document_path}: not valid JSON ({error})") from None
        if document.get("format_version") != DECODER_FORMAT_VERSION:
            raise ConfigError(f"{document_path}: format_version {document.get('format_version')!r} is not readable "
                              f"by this neurodec (reads {DECODER_FORMAT_VERSION})")
        decoder = cls(document["config"], document["embedding_shape"])
        decoder.unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True,
                                                            **quiet_loading_options())
        if decoder.config.space == "latent":
            decoder.vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True,
                                                        **quiet_loading_options())
        decoder.scheduler = scheduler_class(TRAINING_SCHEDULER).from_pretrained(folder / "scheduler")
        tensors = load_file(str(folder / CONDITIONING_FILE))
        decoder.latent_scale.copy_(tensors.pop("latent_scale").reshape(()))
        decoder.projection.load_state_dict({name[len("projection."):]: tensor for name, tensor in tensors.items()},
                                           strict=True)
        return decoder.to(device).eval()


def _progress_if(iterable, show: bool, description: str, total: int):
    return progress(iterable, description, total=total) if show else iterable


# ------------------------------------------------------------------ training
def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (a short run ends at a low learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress_fraction = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_fraction)))


def _train_vae(decoder: ConditionalImageDecoder, pixels: torch.Tensor, generator: torch.Generator,
               show_progress: bool) -> None:
    """Fit the tiny AutoencoderKL (L1 reconstruction + a small KL term), then set the latent scale."""
    config, vae = decoder.config, decoder.vae
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    steps = config.vae_training_steps
    vae.train()
    for step in _progress_if(range(steps), show_progress, "training the image autoencoder", steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(step, config.warmup_steps, steps)
        index = torch.randint(0, len(pixels), (config.batch_size,), generator=generator)
        batch = pixels[index.to(pixels.device)]
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(batch.device)
        latents = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latents).sample
        loss = (reconstruction - batch).abs().mean() + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
        decoder.latent_scale.fill_(1.0 / float(latents.std().clamp_min(1e-6)))
    vae.requires_grad_(False)
    logger.info("image decoder: autoencoder trained for %d steps, latent scale %.3f", steps,
                float(decoder.latent_scale))


def train_image_decoder(
    images: Any,
    embeddings: Any,
    *,
    config: ImageDecoderConfig | dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ConditionalImageDecoder:
    """Train a :class:`ConditionalImageDecoder` from scratch on (image, embedding) pairs.

    Epsilon-prediction MSE at uniformly drawn timesteps, AdamW with warm-up and cosine decay,
    conditioning dropped (null tokens) with probability ``config.condition_dropout`` for
    classifier-free guidance. Every random draw (weights, batches, noise, timesteps,
    dropout) comes from ``seed``: the same call gives the same decoder on CPU. In latent
    space the autoencoder is trained first (``vae_training_steps``).

    Parameters
    ----------
    images
        uint8 RGB ``(N, H, W, 3)`` training images (resized to the decoder's resolution).
    embeddings
        Their target embeddings, ``(N, D)`` or ``(N, T, D)``.

    >>> decoder = train_image_decoder(train_images, train_embeddings, config={"training_steps": 300})  # doctest: +SKIP
    >>> decoder.training_losses[-1] < decoder.training_losses[0]                                        # doctest: +SKIP
    True
    """
    config = decoder_config(config)
    images = check_images(images)
    embeddings = check_embeddings(embeddings)
    check_same_count(images, "images", embeddings, "embeddings")
    with flush_denormals():
        return _train(images, embeddings, config, seed, torch.device(device), progress)


def _train(images: np.ndarray, embeddings: np.ndarray, config: ImageDecoderConfig, seed: int,
           device: torch.device, progress: bool) -> ConditionalImageDecoder:
    with torch.random.fork_rng(devices=[]):
        # Weights are initialised from the global generator: seed it, without leaking the seed outside.
        torch.manual_seed(seed)
        decoder = ConditionalImageDecoder(config, embeddings.shape[1:]).to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    embedding_tensor = torch.from_numpy(embeddings).to(device)
    decoder.projection.fit_standardisation(embedding_tensor)
    if decoder.vae is not None:
        _train_vae(decoder, to_unit_range(images, config.image_size, device), generator, progress)
    samples = decoder.images_to_samples(images)
    parameters = [p for name, p in decoder.named_parameters() if not name.startswith("vae.")]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    average = None
    if config.ema_decay > 0:
        average = torch.optim.swa_utils.AveragedModel(
            decoder, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay))
    decoder.train()
    if decoder.vae is not None:
        decoder.vae.eval()
    steps = config.training_steps
    batch_size = min(config.batch_size, len(images))
    losses = []
    for step in _progress_if(range(steps), progress, "training the image decoder", steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(step, config.warmup_steps, steps)
        index = torch.randperm(len(images), generator=generator)[:batch_size].to(device)
        tokens = decoder.projection(embedding_tensor[index])
        dropped = torch.rand(batch_size, generator=generator).to(device) < config.condition_dropout
        tokens = torch.where(dropped[:, None, None], decoder.projection.null(batch_size), tokens)
        loss = decoder.denoising_loss(samples[index], tokens, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(decoder)
        losses.append(loss.item())
    if average is not None:
        decoder.load_state_dict(average.module.state_dict())
    decoder.training_losses = losses
    if losses:
        logger.info("image decoder: %d steps, denoising loss %.4f (first 10 steps) -> %.4f (last 10 steps)",
                    steps, float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
    return decoder.eval()
