"""The diffusion prior: brain embeddings in, target embeddings (CLIP image embeddings...) out.

As in DALL-E 2 and MindEye2, a transformer denoiser learns to recover a clean target
embedding ``x0`` from a noised one, conditioned on the brain embedding; sampling starts from
Gaussian noise and denoises step by step, which turns a brain embedding into a plausible
target embedding (what an unCLIP decoder takes).

- Input tokens: ``[brain tokens, timestep token, noised target tokens, learned query tokens]``,
  each with a learned position embedding; the prediction is read from the query tokens.
- Full (bidirectional) attention by default, as MindEye2's prior (``causal=False``):
  DALL-E 2's causal mask came with its decoder-only transformer and buys nothing here, since
  the prediction is read from the last tokens, which see every other token either way;
  without the mask, the brain and noised-target tokens can refine each other too.
  ``causal=True`` gives DALL-E 2's variant.
- It predicts ``x0`` (DALL-E 2; MindEye2 ``predict_x_start``), with diffusers'
  ``DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample")``: the cosine
  schedule, ``timesteps`` (default 100) training steps.
- Classifier-free guidance: during training the brain embedding of a sample is replaced by a
  learned null embedding with probability ``cond_drop_prob`` (default 0.2, MindEye2).
  Sampling defaults to ``guidance_scale=1.0``: MindEye2's reconstructions sample with
  ``cond_scale=1.`` (and 20 of 100 steps, ``num_inference_steps=20`` here).

It is trained by neurodec's trainer as a loss term (``loss.terms.diffusion_prior``, see
:class:`DiffusionPriorLoss`), jointly with the encoder, as MindEye2 does; :func:`load_prior`
takes it out of a run folder.

>>> import torch
>>> prior = DiffusionPrior(dim=16, hidden_dim=32, n_layers=2, n_heads=4)
>>> brain, target = torch.randn(8, 16), torch.randn(8, 16)
>>> prior.forward_loss(brain, target).shape
torch.Size([])
>>> prior.sample(brain, num_inference_steps=10, seeds=range(8)).shape
torch.Size([8, 16])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurodec.errors import ConfigError, RunFolderError
from neurodec.models.base import _json_ready, check_config_digest, read_module_folder, save_module_folder

PRIOR_NAME = "diffusion_prior"
# Run-folder file names (docs/run-folder.md); spelled here because models never import training.
_RUN_CONFIG_FILE = "config.yaml"
_RUN_LOSS_FILE = "loss.safetensors"
# Options of a loss term that WeightedLoss reads itself, not the loss module.
_TERM_KEYS = ("weight", "loss", "brain", "target")

Generators = torch.Generator | Sequence[torch.Generator] | None


class DiffusionPrior(nn.Module):
    """A DALL-E 2 / MindEye2-style transformer prior from brain embeddings to target embeddings.

    Shapes: targets are ``(batch, dim)`` when ``n_tokens`` is None (pooled embeddings) or
    ``(batch, n_tokens, dim)`` (token sequences, e.g. MindEye2's 256 x 1664 OpenCLIP tokens);
    brain embeddings ``(batch, brain_dim)`` when ``n_brain_tokens`` is None or
    ``(batch, n_brain_tokens, brain_dim)``. ``brain_dim`` and ``n_brain_tokens`` default to the
    target's, MindEye2's layout (the backbone outputs tokens shaped like the targets).

    Arguments:

    - ``dim``: the target embedding size (per token); ``hidden_dim``: the transformer width
      (default ``dim``, as MindEye2), divisible by ``n_heads``.
    - ``n_layers`` (default 6, MindEye2), ``n_heads``, ``ff_mult`` (feed-forward width /
      ``hidden_dim``), ``dropout``, ``causal`` (see the module docstring).
    - ``timesteps``: training steps of the cosine noise schedule (default 100, MindEye2).
    - ``cond_drop_prob``: probability, per training sample, of replacing its brain embedding
      with the learned null embedding (classifier-free guidance).
    - ``target_scale``: targets are multiplied by it before noising (and samples divided by it)
      so they have about unit variance per component, as the noise does: DALL-E 2 uses
      ``sqrt(dim)`` for L2-normalised CLIP embeddings; MindEye2's raw OpenCLIP tokens use 1.

    The constructor arguments are recorded as :attr:`config` (JSON), so
    ``DiffusionPrior(**prior.config)`` rebuilds the architecture.

    >>> import torch
    >>> prior = DiffusionPrior(dim=16, n_tokens=4, hidden_dim=32, n_layers=2, n_heads=4)
    >>> prior.forward_loss(torch.randn(2, 4, 16), torch.randn(2, 4, 16)).ndim
    0
    """

    def __init__(
        self,
        dim: int,
        n_tokens: int | None = None,
        brain_dim: int | None = None,
        n_brain_tokens: int | None = None,
        hidden_dim: int | None = None,
        n_layers: int = 6,
        n_heads: int = 8,
        ff_mult: int = 4,
        dropout: float = 0.0,
        causal: bool = False,
        timesteps: int = 100,
        cond_drop_prob: float = 0.2,
        target_scale: float = 1.0,
    ) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        arguments = dict(dim=dim, n_tokens=n_tokens, brain_dim=brain_dim, n_brain_tokens=n_brain_tokens,
                         hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, ff_mult=ff_mult,
                         dropout=dropout, causal=causal, timesteps=timesteps, cond_drop_prob=cond_drop_prob,
                         target_scale=target_scale)
        self._config = _json_ready(arguments, "DiffusionPrior config")
        for name in ("dim", "n_layers", "n_heads", "ff_mult", "timesteps"):
            if int(arguments[name]) < 1:
                raise ConfigError(f"DiffusionPrior: {name} must be a positive integer, found {arguments[name]!r}")
        for name in ("n_tokens", "brain_dim", "n_brain_tokens", "hidden_dim"):
            if arguments[name] is not None and int(arguments[name]) < 1:
                raise ConfigError(f"DiffusionPrior: {name} must be None or a positive integer, "
                                  f"found {arguments[name]!r}")
        if not 0.0 <= float(cond_drop_prob) <= 1.0:
            raise ConfigError(f"DiffusionPrior: cond_drop_prob must lie in [0, 1], found {cond_drop_prob!r}")
        if not float(target_scale) > 0:
            raise ConfigError(f"DiffusionPrior: target_scale must be positive, found {target_scale!r}")
        self.dim = int(dim)
        self.n_tokens = None if n_tokens is None else int(n_tokens)
        self.brain_dim = self.dim if brain_dim is None else int(brain_dim)
        self.n_brain_tokens = self.n_tokens if n_brain_tokens is None else int(n_brain_tokens)
        self.hidden_dim = self.dim if hidden_dim is None else int(hidden_dim)
        if self.hidden_dim % int(n_heads):
            raise ConfigError(f"DiffusionPrior: hidden_dim ({self.hidden_dim}) must be divisible by n_heads "
                              f"({n_heads})")
        self.timesteps, self.cond_drop_prob = int(timesteps), float(cond_drop_prob)
        self.causal, self.target_scale = bool(causal), float(target_scale)
        target_count, brain_count = self.n_tokens or 1, self.n_brain_tokens or 1
        width = self.hidden_dim

        self.null_brain_embedding = nn.Parameter(torch.randn(brain_count, self.brain_dim))
        self.brain_projection = nn.Linear(self.brain_dim, width)
        self.target_projection = nn.Linear(self.dim, width)
        # diffusers' sinusoidal timestep features + MLP (the UNets' timestep embedding).
        self.timestep_features = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedding = TimestepEmbedding(width, width)
        self.queries = nn.Parameter(torch.randn(target_count, width) * width**-0.5)
        self.positions = nn.Parameter(torch.randn(brain_count + 1 + 2 * target_count, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, int(n_heads), int(ff_mult) * width, float(dropout),
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, int(n_layers), enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(width)
        self.output_projection = nn.Linear(width, self.dim)
        self.scheduler = self._new_scheduler()

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (a copy), JSON-ready."""
        return json.loads(json.dumps(self._config))

    def _new_scheduler(self):
        from diffusers import DDPMScheduler

        # clip_sample off: embeddings are not images in [-1, 1]. "trailing" spacing starts
        # strided sampling at the last training step (pure noise), whatever the step count.
        return DDPMScheduler(num_train_timesteps=self.timesteps, beta_schedule="squaredcos_cap_v2",
                             prediction_type="sample", clip_sample=False, timestep_spacing="trailing")

    # ----------------------------------------------------------------- shapes
    def _tokens(self, value: torch.Tensor, count: int | None, size: int, what: str) -> torch.Tensor:
        expected = (size,) if count is None else (count, size)
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
            raise ValueError(f"DiffusionPrior: {what} must be (batch, {', '.join(map(str, expected))}), "
                             f"found {tuple(value.shape)}")
        return value if count is not None else value.unsqueeze(1)

    def _target_layout(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.n_tokens is not None else tokens[:, 0]

    # --------------------------------------------------------------- forward
    def condition(self, brain_embedding: torch.Tensor, drop_probability: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The conditioning tokens ``(batch, brain tokens, brain_dim)``: each sample's brain
        embedding, replaced by the learned null embedding with probability ``drop_probability``
        (1.0: the unconditional input of classifier-free guidance).

        >>> import torch
        >>> prior = DiffusionPrior(dim=8, n_layers=1, n_heads=2)
        >>> bool((prior.condition(torch.randn(3, 8), 1.0) == prior.null_brain_embedding).all())
        True
        """
        tokens = self._tokens(brain_embedding, self.n_brain_tokens, self.brain_dim, "brain_embedding")
        if drop_probability <= 0:
            return tokens
        null = self.null_brain_embedding.to(tokens.dtype).unsqueeze(0)
        if drop_probability >= 1:
            return null.expand_as(tokens)
        draws = torch.rand(tokens.shape[0], generator=generator,
                           device=tokens.device if generator is None else generator.device).to(tokens.device)
        keep = (draws >= drop_probability).reshape(-1, 1, 1)
        return torch.where(keep, tokens, null)

    def denoise(self, noisy_target: torch.Tensor, timestep: torch.Tensor | int,
                condition_tokens: torch.Tensor) -> torch.Tensor:
        """The predicted clean target (diffusion space, ``target * target_scale``) from noised
        targets at ``timestep`` (int or one per sample) and conditioning tokens from
        :meth:`condition`; in the target's layout."""
        noisy = self._tokens(noisy_target, self.n_tokens, self.dim, "noisy_target")
        batch = noisy.shape[0]
        timestep = torch.as_tensor(timestep, device=noisy.device).reshape(-1).expand(batch)
        time_token = self.timestep_embedding(self.timestep_features(timestep).to(noisy.dtype)).unsqueeze(1)
        brain = self.brain_projection(condition_tokens)
        dtype = brain.dtype  # bfloat16 under autocast: every token in the dtype of the layers' outputs
        tokens = torch.cat([brain, time_token.to(dtype), self.target_projection(noisy).to(dtype),
                            self.queries.to(dtype).unsqueeze(0).expand(batch, -1, -1)], dim=1)
        tokens = tokens + self.positions
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device,
                                                                 dtype=tokens.dtype)
        hidden = self.transformer(tokens, mask=mask, is_causal=self.causal)
        queries = hidden[:, -self.queries.shape[0]:]
        return self._target_layout(self.output_projection(self.output_norm(queries)))

    def predict_clean(self, noisy_target: torch.Tensor, timestep: torch.Tensor | int,
                      brain_embedding: torch.Tensor, guidance_scale: float = 1.0) -> torch.Tensor:
        """The guided ``x0`` prediction: ``uncond + guidance_scale * (cond - uncond)``, where
        ``cond`` is conditioned on ``brain_embedding`` and ``uncond`` on the null embedding.
        ``guidance_scale=1`` is the conditional prediction alone (one pass)."""
        condition = self.condition(brain_embedding)
        if guidance_scale == 1.0:
            return self.denoise(noisy_target, timestep, condition)
        null = self.condition(brain_embedding, 1.0)
        both = self.denoise(torch.cat([noisy_target, noisy_target]), timestep, torch.cat([condition, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def forward_loss(self, brain_embedding: torch.Tensor, target: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss of one random timestep and noise per sample: the mean squared
        error between the predicted and the true clean target (in diffusion space). In
        training mode, conditioning is dropped with probability ``cond_drop_prob``.
        Random draws come from ``generator`` or the global generator of the target's device.

        >>> import torch
        >>> prior = DiffusionPrior(dim=8, n_layers=1, n_heads=2)
        >>> prior.forward_loss(torch.randn(4, 8), torch.randn(4, 8)).item() > 0
        True
        """
        clean = self._tokens(target, self.n_tokens, self.dim, "target").float() * self.target_scale
        batch, device = clean.shape[0], clean.device
        draw_on = device if generator is None else generator.device
        timestep = torch.randint(0, self.timesteps, (batch,), generator=generator, device=draw_on).to(device)
        noise = torch.randn(clean.shape, generator=generator, device=draw_on).to(device)
        noisy = self.scheduler.add_noise(clean, noise, timestep)
        condition = self.condition(brain_embedding, self.cond_drop_prob if self.training else 0.0, generator)
        prediction = self.denoise(self._target_layout(noisy), timestep, condition)
        return F.mse_loss(prediction.float(), self._target_layout(clean))

    def forward(self, brain_embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_loss` (the training objective)."""
        return self.forward_loss(brain_embedding, target)

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        brain_embedding: torch.Tensor,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: Generators = None,
        seeds: Iterable[int] | None = None,
    ) -> torch.Tensor:
        """Target embeddings predicted from brain embeddings by ancestral DDPM sampling.

        ``num_inference_steps`` (default: every one of the ``timesteps`` training steps;
        MindEye2 reconstructs with 20 of 100) strides the schedule. ``guidance_scale`` weighs
        classifier-free guidance (1.0: conditional only, MindEye2's setting). Randomness:
        ``seeds`` (one integer per sample: each sample's noise depends on its seed alone, so
        a sample's result does not depend on which others share its batch), or ``generator``
        (one torch.Generator, or a list with one per sample), or torch's global generator.
        Runs in eval mode (the module's mode is restored after). Returns float32 embeddings in
        the target's layout, divided by ``target_scale``.

        >>> import torch
        >>> prior = DiffusionPrior(dim=8, n_layers=1, n_heads=2)
        >>> a = prior.sample(torch.randn(3, 8), num_inference_steps=5, seeds=[1, 2, 3])
        >>> b = prior.sample(torch.randn(3, 8)[:0], num_inference_steps=5, seeds=[])
        >>> a.shape, b.shape
        (torch.Size([3, 8]), torch.Size([0, 8]))
        """
        from diffusers.utils.torch_utils import randn_tensor

        brain = self._tokens(brain_embedding, self.n_brain_tokens, self.brain_dim, "brain_embedding")
        batch, device = brain.shape[0], brain.device
        if seeds is not None:
            if generator is not None:
                raise ValueError("DiffusionPrior.sample: pass seeds or generator, not both")
            seeds = [int(seed) for seed in seeds]
            if len(seeds) != batch:
                raise ValueError(f"DiffusionPrior.sample: seeds must hold one integer per sample ({batch}), "
                                 f"found {len(seeds)}")
            generator = [torch.Generator().manual_seed(seed) for seed in seeds]
        elif isinstance(generator, Sequence) and len(generator) != batch:
            raise ValueError(f"DiffusionPrior.sample: a list of generators must hold one per sample ({batch}), "
                             f"found {len(generator)}")
        shape = (batch, self.dim) if self.n_tokens is None else (batch, self.n_tokens, self.dim)
        if batch == 0:
            return torch.zeros(shape, device=device)
        steps = self.timesteps if num_inference_steps is None else int(num_inference_steps)
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"DiffusionPrior.sample: num_inference_steps must lie in [1, {self.timesteps}], "
                             f"found {num_inference_steps}")
        # A fresh scheduler per call: set_timesteps changes a scheduler's state.
        scheduler = self._new_scheduler()
        scheduler.set_timesteps(steps, device=device)
        generator = list(generator) if isinstance(generator, Sequence) else generator
        sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        was_training = self.training
        self.eval()
        try:
            for timestep in scheduler.timesteps:
                clean = self.predict_clean(sample, timestep, brain_embedding, guidance_scale).float()
                sample = scheduler.step(clean, timestep, sample, generator=generator).prev_sample
        finally:
            self.train(was_training)
        return sample / self.target_scale

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/config.json`` and ``folder/model.safetensors`` (each atomically), the
        layout of saved encoders; the weights carry a digest of the config.

        >>> prior.save_pretrained("runs/nsd/prior")        # doctest: +SKIP
        >>> DiffusionPrior.from_pretrained("runs/nsd/prior")   # doctest: +SKIP
        """
        return save_module_folder(self, folder, PRIOR_NAME, self.config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> DiffusionPrior:
        """Rebuild a prior saved by :meth:`save_pretrained` (in eval mode)."""
        from safetensors.torch import load_file

        def check(document: Any, config_path: Path) -> None:
            if not isinstance(document, dict) or document.get("model") != PRIOR_NAME or "config" not in document:
                found = document.get("model") if isinstance(document, dict) else type(document).__name__
                raise ConfigError(f"{config_path}: field 'model' must be '{PRIOR_NAME}' with a 'config', "
                                  f"found {found!r}")

        document, config_path, weights_path = read_module_folder(folder, "prior", check)
        check_config_digest(document, config_path, weights_path, "prior")
        config = document["config"]
        try:
            prior = cls(**config)
        except TypeError as error:
            raise ConfigError(f"{config_path}: field 'config': {error}") from None
        _load_exactly(prior, load_file(str(weights_path), device="cpu"), weights_path)
        return prior.to(device).eval()


def _load_exactly(prior: DiffusionPrior, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = prior.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ConfigError(f"{source}: tensors do not match the prior's config (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]})")
    prior.load_state_dict(state, strict=True)


class DiffusionPriorLoss(nn.Module):
    """The prior's denoising loss as a training loss term, holding the prior being trained.

    Registered in :mod:`neurodec.losses` as ``"diffusion_prior"``: the trainer optimises the
    loss module's parameters with the encoder and saves them in each checkpoint's
    ``loss.safetensors``, so the prior trains jointly with the encoder (MindEye2, prior loss
    weight 30). Its options are :class:`DiffusionPrior`'s plus ``detach_brain``: False (the
    default, MindEye2) back-propagates the prior loss into the encoder; True trains the prior
    alone on the encoder's outputs. ``dim`` (the target's size per token) is required: the
    prior's parameters must exist before the optimiser and DDP are built (a lazy layer would
    leave them uninitialised there). With MindEye's encoders, read the backbone tokens::

        loss:
          terms:
            clip: {weight: 1.0, brain: embedding}
            diffusion_prior: {weight: 30, brain: backbone, dim: 1664, n_tokens: 256}

    >>> import torch
    >>> loss = DiffusionPriorLoss(dim=8, n_layers=1, n_heads=2)
    >>> loss(torch.randn(4, 8), torch.randn(4, 8)).ndim
    0
    """

    def __init__(self, dim: int, detach_brain: bool = False, **prior_options: Any) -> None:
        super().__init__()
        self.detach_brain = bool(detach_brain)
        self.prior = DiffusionPrior(dim=dim, **prior_options)

    def forward(self, brain: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.prior.forward_loss(brain.detach() if self.detach_brain else brain, target)


def load_prior(run_dir: str | os.PathLike[str], checkpoint: str = "best", term: str | None = None,
               device: str | torch.device = "cpu") -> DiffusionPrior:
    """The diffusion prior trained as loss term ``term`` of a run, from its ``checkpoint``
    (``"best"`` or ``"last"``), in eval mode. ``term`` may be omitted when the run's config has
    a single ``diffusion_prior`` term.

    >>> prior = load_prior("runs/nsd-subj01")                        # doctest: +SKIP
    >>> image_embeddings = prior.sample(backbone, seeds=range(len(backbone)))  # doctest: +SKIP
    """
    import yaml
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path = run_dir / _RUN_CONFIG_FILE
    if not config_path.is_file():
        raise RunFolderError(f"{run_dir}: no {_RUN_CONFIG_FILE}; not a run folder written by neurodec's trainer")
    seed_folders = sorted(path.name for path in run_dir.glob("seed-*") if path.is_dir())
    if seed_folders and not (run_dir / checkpoint).exists():
        raise RunFolderError(f"{run_dir}: holds repeated seeds ({', '.join(seed_folders)}); pass one of them")
    document = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    terms = (document.get("loss") or {}).get("terms") or {}
    priors = {name: spec for name, spec in terms.items()
              if isinstance(spec, dict) and spec.get("loss", name) == PRIOR_NAME}
    if not priors:
        raise RunFolderError(f"{config_path}: field loss.terms has no '{PRIOR_NAME}' term (found "
                             f"{sorted(terms)}); this run trained no diffusion prior")
    if term is None:
        if len(priors) > 1:
            raise ConfigError(f"{config_path}: loss.terms has several diffusion priors {sorted(priors)}; "
                              "choose one with term=")
        term = next(iter(priors))
    if term not in priors:
        raise ConfigError(f"{config_path}: loss.terms has no diffusion prior named '{term}' "
                          f"(diffusion priors: {sorted(priors)})")
    options = {key: value for key, value in priors[term].items() if key not in _TERM_KEYS}
    try:
        prior = DiffusionPriorLoss(**options).prior
    except TypeError as error:
        raise ConfigError(f"{config_path}: loss.terms.{term}: {error}") from None
    weights_path = run_dir / checkpoint / _RUN_LOSS_FILE
    if not weights_path.is_file():
        raise RunFolderError(f"{weights_path}: not found; checkpoint '{checkpoint}' of this run is missing "
                             "(the trainer writes 'best' and 'last')")
    # WeightedLoss keeps its terms in a ModuleDict named "terms"; the prior is the term's "prior".
    prefix = f"terms.{term}.prior."
    state = {key[len(prefix):]: value for key, value in load_file(str(weights_path)).items()
             if key.startswith(prefix)}
    _load_exactly(prior, state, weights_path)
    return prior.to(device).eval()


__all__ = ["DiffusionPrior", "DiffusionPriorLoss", "load_prior"]
