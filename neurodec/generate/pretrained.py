"""Pretrained image generators conditioned on image embeddings, and the map into their embedding space.

:func:`load_generator` loads one of four diffusers pipelines from a local folder, or a Hugging
Face repo id already in the local cache (``local_files_only=True``: never a download), and
wraps it as a :class:`PretrainedImageGenerator` whose ``generate(embeddings)`` returns uint8
images:

============== =============================== =================================================
kind            diffusers pipeline               conditioning given
============== =============================== =================================================
unclip          ``StableUnCLIPImg2ImgPipeline``  ``image_embeds=`` (CLIP image embeddings)
kandinsky22     ``KandinskyV22Pipeline``         ``image_embeds=`` / ``negative_image_embeds=``
                                                 (the prior is skipped: the brain gives them)
ip-adapter-sd15 ``StableDiffusionPipeline``      ``ip_adapter_image_embeds=`` (IP-Adapter loaded)
ip-adapter-sdxl ``StableDiffusionXLPipeline``    ``ip_adapter_image_embeds=``
============== =============================== =================================================

:class:`EmbeddingProjector` maps brain embeddings (or the demo's EfficientNet space) into the
embedding the generator expects, fitted by ridge (closed form) or a small MLP on pairs such as
(brain embedding, the generator's CLIP embedding of the same training image).

>>> generator = load_generator("unclip", "stabilityai/stable-diffusion-2-1-unclip-small")  # doctest: +SKIP
>>> clip_train = generator.embed_images(train_images)                                      # doctest: +SKIP
>>> projector = EmbeddingProjector.fit(brain_train, clip_train, brain_val, clip_val)       # doctest: +SKIP
>>> images = generator.generate(projector.transform(brain_test), seeds=range(len(brain_test)))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from neurodec._logging import progress as progress_bar
from neurodec.errors import ConfigError, DecoderInputError, WeightsNotFoundError
from neurodec.generate._common import (
    build_scheduler,
    check_embeddings,
    check_images,
    check_same_count,
    flush_denormals,
    image_generators,
    quiet_loading_options,
    read_array_folder,
    resolve_seeds,
    save_array_folder,
)

logger = logging.getLogger("neurodec")


@dataclass(frozen=True)
class _GeneratorKind:
    pipeline: str
    embedding_argument: str
    ip_adapter_subfolder: str = ""
    ip_adapter_weight_name: str = ""


#: The generators :func:`load_generator` knows, by kind.
GENERATOR_KINDS: dict[str, _GeneratorKind] = {
    "unclip": _GeneratorKind("StableUnCLIPImg2ImgPipeline", "image_embeds"),
    "kandinsky22": _GeneratorKind("KandinskyV22Pipeline", "image_embeds"),
    "ip-adapter-sd15": _GeneratorKind("StableDiffusionPipeline", "ip_adapter_image_embeds",
                                      "models", "ip-adapter_sd15.safetensors"),
    "ip-adapter-sdxl": _GeneratorKind("StableDiffusionXLPipeline", "ip_adapter_image_embeds",
                                      "sdxl_models", "ip-adapter_sdxl.safetensors"),
}

_HOW_TO_SUPPLY = ("pass a local folder written by the pipeline's save_pretrained, or the id of a Hugging Face "
                  "repository already in the local cache (download it once on a connected machine with "
                  "`huggingface-cli download {repo}`, then copy the cache folder {cache} here)")


def _hub_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _looks_like_repo_id(where: str) -> bool:
    return where.count("/") == 1 and not where.startswith((".", "/", "~")) and not os.path.exists(where)


def _missing(what: str, where: str, error: Exception | None) -> WeightsNotFoundError:
    reason = f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})" if error else ""
    if os.path.isdir(where):
        found = f"folder '{where}' exists but does not hold it{reason}"
    elif _looks_like_repo_id(where):
        found = f"repository '{where}' is not in the local Hugging Face cache{reason}"
    else:
        found = f"folder '{where}' does not exist"
    repo = where if _looks_like_repo_id(where) else "REPO_ID"
    return WeightsNotFoundError(f"{what}: {found}; nothing is downloaded at run time; "
                                + _HOW_TO_SUPPLY.format(repo=repo, cache=_hub_cache()))


def _load_local(load, what: str, where: str):
    """Run a diffusers/transformers ``from_pretrained``-like call, turning 'not on disk' into one error."""
    try:
        return load()
    except (OSError, ValueError) as error:  # EnvironmentError and hub errors derive from OSError
        raise _missing(what, where, error) from None


class PretrainedImageGenerator:
    """A pretrained diffusers pipeline that generates images from image embeddings (see the module).

    Built by :func:`load_generator`; ``pipeline`` is the diffusers pipeline itself.
    """

    def __init__(self, kind: str, pipeline: Any, *, image_encoder: Any = None, image_processor: Any = None):
        if kind not in GENERATOR_KINDS:
            raise ConfigError(f"kind: unknown generator {kind!r}; known: {', '.join(GENERATOR_KINDS)}")
        self.kind = kind
        self.pipeline = pipeline
        self.image_encoder = image_encoder
        self.image_processor = image_processor

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def _embedding_argument(self, embeddings: torch.Tensor, negative: torch.Tensor, guided: bool) -> dict[str, Any]:
        if self.kind == "unclip":
            return {"image_embeds": embeddings}
        if self.kind == "kandinsky22":
            return {"image_embeds": embeddings, "negative_image_embeds": negative}
        # IP-Adapter: (batch, images per prompt = 1, D) or, for token ("plus") adapters, (batch, 1, T, D);
        # with guidance the negative half comes first, as the pipelines split it.
        positive, negative = embeddings.unsqueeze(1), negative.unsqueeze(1)
        return {"ip_adapter_image_embeds": [torch.cat([negative, positive]) if guided else positive]}

    @torch.no_grad()
    def generate(
        self,
        embeddings: Any,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 4,
        negative_embeddings: Any = None,
        prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        scheduler: Any = None,
        progress: bool = True,
        **pipeline_options: Any,
    ) -> np.ndarray:
        """Images ``(N, H, W, 3)`` uint8 from embeddings ``(N, D)`` in the generator's embedding space.

        ``seeds`` gives image ``i`` noise from ``seeds[i]`` alone (default ``range(N)``);
        ``negative_embeddings`` (default zeros) is the unconditional side of guidance for
        Kandinsky and IP-Adapter; ``prompt`` the text of the text-conditioned pipelines
        (unCLIP, IP-Adapter; empty by default); ``scheduler`` a diffusers scheduler name or
        object used instead of the pipeline's for this call; other options go to the pipeline call.

        >>> images = generator.generate(clip_embeddings, num_inference_steps=30, seeds=range(8))  # doctest: +SKIP
        """
        embeddings = check_embeddings(embeddings)
        n_images = len(embeddings)
        if negative_embeddings is None:
            negative = np.zeros_like(embeddings)
        else:
            negative = check_embeddings(negative_embeddings, embeddings.shape[1:], "negative_embeddings")
            if len(negative) == 1:
                negative = np.repeat(negative, n_images, axis=0)
            check_same_count(negative, "negative_embeddings", embeddings, "embeddings")
        per_image_seeds = resolve_seeds(n_images, seeds, generator)
        options = dict(pipeline_options)
        if height is not None:
            options["height"] = int(height)
        if width is not None:
            options["width"] = int(width)
        if self.kind.startswith("ip-adapter"):
            # The SD/SDXL pipelines repeat ip_adapter_image_embeds once per prompt of the batch (one
            # adapter image shared by all prompts), so each image with its own embedding is one call.
            batch_size = 1
        original_scheduler = self.pipeline.scheduler
        if scheduler is not None:
            self.pipeline.scheduler = build_scheduler(scheduler, original_scheduler.config)
        try:
            outputs = []
            starts = range(0, n_images, max(1, int(batch_size)))
            for start in (progress_bar(starts, f"generating images ({self.kind})", total=len(starts))
                          if progress else starts):
                stop = min(start + int(batch_size), n_images)
                generators = (image_generators(per_image_seeds[start:stop]) if per_image_seeds is not None
                              else generator)
                outputs.append(self._generate_batch(embeddings[start:stop], negative[start:stop], prompt, generators,
                                                    int(num_inference_steps), float(guidance_scale), options))
        finally:
            self.pipeline.scheduler = original_scheduler
        return np.concatenate(outputs)

    def _generate_batch(self, embeddings: np.ndarray, negative: np.ndarray, prompt: str, generators: Any,
                        num_inference_steps: int, guidance_scale: float, options: dict[str, Any]) -> np.ndarray:
        dtype = self.pipeline.unet.dtype
        batch = torch.from_numpy(embeddings).to(self.device, dtype)
        batch_negative = torch.from_numpy(negative).to(self.device, dtype)
        if self.kind != "kandinsky22":
            options = {**options, "prompt": [prompt] * len(embeddings)}
        with flush_denormals():
            result = self.pipeline(
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="np",
                **self._embedding_argument(batch, batch_negative, guidance_scale > 1.0),
                **options,
            )
        images = np.asarray(result.images, dtype=np.float32)
        return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)

    @torch.no_grad()
    def embed_images(self, images: Any, *, batch_size: int = 16) -> np.ndarray:
        """The generator's own CLIP image embeddings of uint8 ``images``, ``(N, D)``.

        These are the targets an :class:`EmbeddingProjector` is fitted to. Needs an image
        encoder: unCLIP pipelines hold one; for the others give ``image_encoder=`` to
        :func:`load_generator`.

        >>> clip_train = generator.embed_images(train_images)   # doctest: +SKIP
        """
        if self.image_encoder is None or self.image_processor is None:
            raise WeightsNotFoundError(f"{self.kind}: this generator was loaded without a CLIP image encoder; pass "
                                       "image_encoder=FOLDER (a CLIPVisionModelWithProjection folder with its "
                                       "preprocessor_config.json) to load_generator")
        images = check_images(images)
        encoder_device = next(self.image_encoder.parameters()).device
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start:start + batch_size])
            pixels = self.image_processor(images=batch, return_tensors="pt").pixel_values
            output = self.image_encoder(pixels.to(encoder_device, encoder_dtype))
            chunks.append(output.image_embeds.float().cpu().numpy())
        return np.concatenate(chunks)


def load_generator(
    kind: str,
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
    ip_adapter: str | os.PathLike[str] = "h94/IP-Adapter",
    ip_adapter_subfolder: str | None = None,
    ip_adapter_weight_name: str | None = None,
    ip_adapter_scale: float = 1.0,
    image_encoder: str | os.PathLike[str] | None = None,
) -> PretrainedImageGenerator:
    """Load a pretrained image generator from local files only (see the module docstring).

    Parameters
    ----------
    kind
        ``"unclip"``, ``"kandinsky22"``, ``"ip-adapter-sd15"`` or ``"ip-adapter-sdxl"``.
    path
        A folder written by the pipeline's ``save_pretrained``, or a Hugging Face repo id
        already in the local cache. Nothing is downloaded; a missing one raises
        :class:`~neurodec.errors.WeightsNotFoundError` naming it and how to supply it.
    ip_adapter, ip_adapter_subfolder, ip_adapter_weight_name
        IP-Adapter kinds: where the adapter weights are (a folder or a cached repo id; default
        ``h94/IP-Adapter``, ``models/ip-adapter_sd15.safetensors`` or
        ``sdxl_models/ip-adapter_sdxl.safetensors``).
    image_encoder
        A ``CLIPVisionModelWithProjection`` folder (with ``preprocessor_config.json``), for
        :meth:`PretrainedImageGenerator.embed_images` with kinds that do not hold one.

    >>> generator = load_generator("kandinsky22", "kandinsky-community/kandinsky-2-2-decoder")  # doctest: +SKIP
    >>> generator.generate(image_embeds, seeds=[0, 1]).shape                                   # doctest: +SKIP
    (2, 512, 512, 3)
    """
    import diffusers

    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"kind: unknown generator {kind!r}; known: {', '.join(GENERATOR_KINDS)}")
    spec = GENERATOR_KINDS[kind]
    pipeline_class = getattr(diffusers, spec.pipeline)
    where = str(path)
    options: dict[str, Any] = {"local_files_only": True, **quiet_loading_options()}
    if torch_dtype is not None:
        options["torch_dtype"] = torch_dtype
    pipeline = _load_local(lambda: pipeline_class.from_pretrained(where, **options), f"{kind} ({spec.pipeline})", where)
    if spec.ip_adapter_weight_name:
        subfolder = spec.ip_adapter_subfolder if ip_adapter_subfolder is None else ip_adapter_subfolder
        weight_name = ip_adapter_weight_name or spec.ip_adapter_weight_name
        adapter_where = str(ip_adapter)
        # The image encoder is not needed: the embeddings are given, not computed from images.
        _load_local(lambda: pipeline.load_ip_adapter(adapter_where, subfolder=subfolder, weight_name=weight_name,
                                                     image_encoder_folder=None, local_files_only=True,
                                                     **quiet_loading_options()),
                    f"{kind} IP-Adapter weights {os.path.join(subfolder, weight_name)}", adapter_where)
        pipeline.set_ip_adapter_scale(float(ip_adapter_scale))
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    encoder = getattr(pipeline, "image_encoder", None)
    processor = getattr(pipeline, "feature_extractor", None)
    if image_encoder is not None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        encoder_where = str(image_encoder)
        encoder = _load_local(lambda: CLIPVisionModelWithProjection.from_pretrained(encoder_where,
                                                                                 local_files_only=True),
                              f"{kind} image encoder", encoder_where).to(device)
        processor = _load_local(lambda: CLIPImageProcessor.from_pretrained(encoder_where, local_files_only=True),
                                f"{kind} image processor", encoder_where)
    logger.info("loaded %s generator (%s) from %s", kind, spec.pipeline, where)
    return PretrainedImageGenerator(kind, pipeline, image_encoder=encoder, image_processor=processor)


# ------------------------------------------------------------------ projector
PROJECTOR_FILE = "neurodec_projector.json"
PROJECTOR_WEIGHTS = "projector.safetensors"
PROJECTOR_FORMAT_VERSION = 1


class EmbeddingProjector:
    """A map from one embedding space to another (brain embeddings -> a generator's CLIP space).

    ``method="ridge"``: closed-form ridge regression, penalty chosen on validation (cosine by
    default: generators read directions). ``method="mlp"``: a one-hidden-layer MLP trained
    with AdamW on MSE, the epoch with the lowest validation MSE kept. ``match_norm`` rescales
    each prediction to the mean norm of the training targets, since ridge shrinks towards the
    mean and generators expect embeddings of their usual size.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); W = rng.standard_normal((6, 3))
    >>> x = rng.standard_normal((50, 6)); projector = EmbeddingProjector.fit(x[:40], x[:40] @ W, x[40:], x[40:] @ W)
    >>> projector.transform(x[:2]).shape
    (2, 3)
    """

    def __init__(self, layers: dict[str, np.ndarray], *, method: str, target_shape: Sequence[int],
                 target_norm: float | None, alpha: float | None = None):
        self.layers = {name: np.asarray(value, dtype=np.float32) for name, value in layers.items()}
        self.method = method
        self.target_shape = tuple(int(n) for n in target_shape)
        self.target_norm = None if target_norm is None else float(target_norm)
        self.alpha = None if alpha is None else float(alpha)

    @classmethod
    def fit(cls, train_x: Any, train_y: Any, val_x: Any, val_y: Any, *, method: str = "ridge",
            alphas: Sequence[float] | None = None, scoring: str = "cosine", match_norm: bool = False,
            hidden_dim: int = 512, epochs: int = 300, learning_rate: float = 3e-3,
            seed: int = 0) -> "EmbeddingProjector":
        """Fit on training pairs; choose the ridge penalty (or MLP epoch) on the validation pairs."""
        train_x, val_x = _matrix(train_x, "train_x"), _matrix(val_x, "val_x")
        train_y_array = np.asarray(train_y, dtype=np.float64)
        target_shape = train_y_array.shape[1:]
        train_y, val_y = _matrix(train_y_array, "train_y"), _matrix(val_y, "val_y")
        check_same_count(train_x, "train_x", train_y, "train_y")
        check_same_count(val_x, "val_x", val_y, "val_y")
        target_norm = float(np.linalg.norm(train_y, axis=1).mean()) if match_norm else None
        if method == "ridge":
            # Lazy: neurodec.evaluation stands after generate in the data flow (docs/generate.md).
            from neurodec.evaluation.baselines import DEFAULT_ALPHAS, ridge_baseline

            result = ridge_baseline(train_x, train_y, val_x, val_y, val_x[:1],
                                    alphas=DEFAULT_ALPHAS if alphas is None else alphas, scoring=scoring)
            return cls({"weights": result.model.weights, "intercept": result.model.intercept}, method="ridge",
                       target_shape=target_shape, target_norm=target_norm, alpha=result.alpha)
        if method == "mlp":
            return cls(_fit_mlp(train_x, train_y, val_x, val_y, hidden_dim, epochs, learning_rate, seed),
                       method="mlp", target_shape=target_shape, target_norm=target_norm)
        raise ConfigError(f"method: expected 'ridge' or 'mlp', found {method!r}")

    def transform(self, x: Any) -> np.ndarray:
        """Projected embeddings ``(N, *target_shape)`` float32."""
        x = _matrix(x, "x").astype(np.float32)
        if x.shape[1] != self.layers["weights" if self.method == "ridge" else "hidden_weights"].shape[0]:
            expected = self.layers["weights" if self.method == "ridge" else "hidden_weights"].shape[0]
            raise DecoderInputError(f"x: expected {expected} values per item (as in fit), found {x.shape[1]}")
        if self.method == "ridge":
            y = x @ self.layers["weights"] + self.layers["intercept"]
        else:
            hidden = np.maximum(x @ self.layers["hidden_weights"] + self.layers["hidden_bias"], 0.0)
            y = x @ self.layers["skip_weights"] + hidden @ self.layers["output_weights"] + self.layers["output_bias"]
        if self.target_norm is not None:
            y = y * (self.target_norm / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12))
        return y.reshape((len(x), *self.target_shape)).astype(np.float32)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``projector.safetensors`` and ``neurodec_projector.json``, atomically."""
        document = {"kind": "embedding_projector", "format_version": PROJECTOR_FORMAT_VERSION, "method": self.method,
                    "target_shape": self.target_shape, "target_norm": self.target_norm, "alpha": self.alpha}
        return save_array_folder(folder, arrays=self.layers, weights_file=PROJECTOR_WEIGHTS, document=document,
                                 document_file=PROJECTOR_FILE, what="embedding projector")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> "EmbeddingProjector":
        """Load a folder written by :meth:`save_pretrained`."""
        document, layers = read_array_folder(folder, weights_file=PROJECTOR_WEIGHTS, document_file=PROJECTOR_FILE,
                                             format_version=PROJECTOR_FORMAT_VERSION,
                                             writer="EmbeddingProjector.save_pretrained")
        return cls(layers, method=document["method"],
                   target_shape=document["target_shape"], target_norm=document["target_norm"],
                   alpha=document["alpha"])


def _matrix(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < 2 or array.shape[0] == 0 or not np.all(np.isfinite(array)):
        raise DecoderInputError(f"{what}: expected finite (n_items, features...), found shape {array.shape}")
    return array.reshape(array.shape[0], -1)


def _fit_mlp(train_x, train_y, val_x, val_y, hidden_dim, epochs, learning_rate, seed) -> dict[str, np.ndarray]:
    """A linear skip plus one ReLU hidden layer, full-batch AdamW; the best validation epoch is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        skip = torch.nn.Linear(train_x.shape[1], train_y.shape[1], bias=False)
        hidden = torch.nn.Linear(train_x.shape[1], hidden_dim)
        output = torch.nn.Linear(hidden_dim, train_y.shape[1])
    modules = torch.nn.ModuleList([skip, hidden, output])
    optimizer = torch.optim.AdamW(modules.parameters(), lr=learning_rate, weight_decay=1e-2)
    tx, ty = torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y, dtype=torch.float32)
    vx, vy = torch.tensor(val_x, dtype=torch.float32), torch.tensor(val_y, dtype=torch.float32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return skip(x) + output(torch.relu(hidden(x)))

    best, best_loss = None, float("inf")
    for _ in range(int(epochs)):
        loss = torch.nn.functional.mse_loss(forward(tx), ty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(forward(vx), vy))
        if val_loss < best_loss:
            best_loss = val_loss
            best = {"skip_weights": skip.weight.detach().T.numpy().copy(),
                    "hidden_weights": hidden.weight.detach().T.numpy().copy(),
                    "hidden_bias": hidden.bias.detach().numpy().copy(),
                    "output_weights": output.weight.detach().T.numpy().copy(),
                    "output_bias": output.bias.detach().numpy().copy()}
    logger.info("embedding projector (mlp): best validation MSE %.4g", best_loss)
    return best
