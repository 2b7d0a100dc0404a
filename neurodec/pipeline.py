"""``BrainToImagePipeline``: brain trials in, images out, in the style of a diffusers pipeline.

The pipeline declares its components and runs them in order:

- ``encoder``: a trained brain encoder with its fitted transform and subject labels
  (:class:`neurodec.evaluation.TrainedEncoder`, as :func:`neurodec.load_encoder` returns);
- ``prior`` (optional): a :class:`neurodec.models.prior.DiffusionPrior` that turns the
  encoder's output into a target embedding by sampling;
- ``low_level`` (optional): a :class:`neurodec.generate.LowLevelDecoder`, brain embedding ->
  blurry image, the starting point of img2img;
- ``decoder``: a :class:`neurodec.generate.ConditionalImageDecoder`, embedding -> image.

>>> pipe = BrainToImagePipeline.from_run("runs/fmri-demo", decoder="decoders/demo")   # doctest: +SKIP
>>> out = pipe(trials, subject="01", generator=torch.Generator().manual_seed(0))      # doctest: +SKIP
>>> out.images.shape, out.embeddings.shape                                           # doctest: +SKIP
((10, 64, 64, 3), (10, 1280))
>>> pipe.save_pretrained("pipelines/fmri-demo")                                      # doctest: +SKIP
>>> same = BrainToImagePipeline.from_pretrained("pipelines/fmri-demo").to("cuda")    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neurodec.errors import ConfigError, RunFolderError

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT_VERSION = 1
COMPONENTS = ("encoder", "prior", "low_level", "decoder")


@dataclass
class BrainToImageOutput:
    """What a :class:`BrainToImagePipeline` call returns."""

    images: np.ndarray                       # (N, H, W, 3) uint8
    embeddings: np.ndarray                   # what conditioned the decoder (after the prior when there is one)
    brain_embeddings: np.ndarray             # the encoder's output
    low_level_images: np.ndarray | None = None


class BrainToImagePipeline:
    """Brain trials -> (prior) -> decoder images; see the module docstring."""

    def __init__(self, encoder, decoder, *, prior=None, low_level=None, strength: float = 0.75):
        if decoder is None or encoder is None:
            raise ConfigError("BrainToImagePipeline: encoder and decoder are required components")
        self.encoder, self.decoder, self.prior, self.low_level = encoder, decoder, prior, low_level
        if not 0 < strength <= 1:
            raise ConfigError(f"strength: expected a number in (0, 1], found {strength}")
        self.strength = float(strength)

    @property
    def components(self) -> dict[str, Any]:
        """The declared components by name (None where absent), as diffusers pipelines list theirs."""
        return {name: getattr(self, name) for name in COMPONENTS}

    @property
    def device(self):
        return self.encoder.device

    def to(self, device) -> "BrainToImagePipeline":
        """Move every torch component to ``device`` (``"cuda"``, ``"cpu"``...); returns the pipeline."""
        self.encoder.encoder.to(device)
        self.decoder.to(device)
        if self.prior is not None:
            self.prior.to(device)
        return self

    # ------------------------------------------------------------------ building
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, decoder, *, checkpoint: str = "best", low_level=None,
                 prior: bool = False, strength: float = 0.75, device: str | None = None) -> "BrainToImagePipeline":
        """The pipeline of a trained run: its encoder (and its diffusion prior with ``prior=True``).

        ``decoder`` and ``low_level`` are objects or saved folders (``low_level`` as written by
        ``neurodec reconstruct`` in ``RUN/reconstructions/test/low_level``).
        """
        from neurodec.evaluation import load_encoder
        from neurodec.generate import ConditionalImageDecoder, LowLevelDecoder

        trained = load_encoder(run_dir, checkpoint, device=device)
        if isinstance(decoder, (str, os.PathLike)):
            decoder = ConditionalImageDecoder.from_pretrained(decoder, device=trained.device)
        if isinstance(low_level, (str, os.PathLike)):
            low_level = LowLevelDecoder.from_pretrained(low_level)
        prior_model = None
        if prior:
            from neurodec.evaluation.reconstruct import _prior_for_run

            prior_model, prior_input = _prior_for_run(trained.run_dir, trained.config, trained.device)
            if prior_input:
                raise ConfigError(f"{run_dir}: the prior reads the encoder's {prior_input!r} output; the pipeline "
                                  f"conditions the prior on the encoder's embedding only")
        return cls(trained, decoder.to(trained.device), prior=prior_model, low_level=low_level, strength=strength)

    # ------------------------------------------------------------------ running
    def __call__(
        self,
        trials,
        subject: str | None = None,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        generator=None,
        seeds: Sequence[int] | None = None,
        strength: float | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> BrainToImageOutput:
        """Images decoded from raw ``trials`` of one ``subject`` (units and shape of the store).

        ``seeds`` gives item ``i`` its own noise (default ``range(N)``); a torch ``generator``
        instead draws one seed per item from it, so the same generator state gives the same images.
        """
        brain = self.encoder.embed(trials, subject=subject)
        if seeds is None:
            if generator is not None:
                import torch

                seeds = torch.randint(0, 2**31 - 1, (len(brain),), generator=generator).tolist()
            else:
                seeds = list(range(len(brain)))
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(brain):
            raise ConfigError(f"seeds: expected one per trial ({len(brain)}), found {len(seeds)}")
        conditioning = brain
        if self.prior is not None:
            import torch

            with torch.no_grad():
                conditioning = self.prior.sample(torch.from_numpy(brain).to(self.device), seeds=seeds).float().cpu().numpy()
        low_images = None
        extra: dict[str, Any] = {}
        if self.low_level is not None:
            low_images = self.low_level.predict(brain.reshape(len(brain), -1))
            extra = {"init_images": low_images, "strength": self.strength if strength is None else float(strength)}
        images = self.decoder.generate(conditioning, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, scheduler=scheduler, seeds=seeds,
                                       batch_size=batch_size, progress=progress, **extra)
        return BrainToImageOutput(images=images, embeddings=conditioning, brain_embeddings=brain,
                                  low_level_images=low_images)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write every component into ``folder`` (a temporary folder renamed into place when complete)."""
        from neurodec.generate._common import write_folder_atomically

        trained = self.encoder

        def write(temporary: Path) -> None:
            trained.encoder.save_pretrained(temporary / "encoder")
            if trained.transform is not None:
                trained.transform.save(temporary / "transform")
            self.decoder.save_pretrained(temporary / "decoder")
            if self.prior is not None:
                self.prior.save_pretrained(temporary / "prior")
            if self.low_level is not None:
                self.low_level.save_pretrained(temporary / "low_level")
            document = {
                "format_version": PIPELINE_FORMAT_VERSION,
                "class": type(self).__name__,
                "components": {name: (type(value).__name__ if value is not None else None)
                               for name, value in self.components.items()},
                "subject_labels": list(trained.subject_labels),
                "trained_subjects": list(trained.trained_subjects),
                "target_key": trained.target_key,
                "store": trained.store,
                "source_run": str(trained.run_dir),
                "checkpoint": trained.checkpoint,
                "strength": self.strength,
            }
            (temporary / PIPELINE_FILE).write_text(json.dumps(document, indent=1))

        return write_folder_atomically(folder, write, PIPELINE_FILE)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str = "cpu") -> "BrainToImagePipeline":
        """Load a pipeline written by :meth:`save_pretrained`."""
        from neurodec.data import load_transform
        from neurodec.evaluation import TrainedEncoder
        from neurodec.generate import ConditionalImageDecoder, LowLevelDecoder
        from neurodec.models import load_pretrained
        from neurodec.models.prior import DiffusionPrior

        folder = Path(folder)
        path = folder / PIPELINE_FILE
        if not path.is_file():
            raise RunFolderError(f"{path}: missing; {folder} is not a saved BrainToImagePipeline")
        document = json.loads(path.read_text())
        if document.get("format_version") != PIPELINE_FORMAT_VERSION:
            raise RunFolderError(f"{path}: format_version {document.get('format_version')!r}; this neurodec reads "
                                 f"{PIPELINE_FORMAT_VERSION}")
        encoder = load_pretrained(folder / "encoder", device=device).eval()
        transform = load_transform(folder / "transform") if (folder / "transform").is_dir() else None
        trained = TrainedEncoder(encoder=encoder, transform=transform, subject_labels=document["subject_labels"],
                                 trained_subjects=document["trained_subjects"], target_key=document["target_key"],
                                 store=document["store"], config=None, run_dir=folder,
                                 checkpoint=document["checkpoint"])
        decoder = ConditionalImageDecoder.from_pretrained(folder / "decoder", device=device)
        prior = DiffusionPrior.from_pretrained(folder / "prior", device=device) if (folder / "prior").is_dir() else None
        low_level = LowLevelDecoder.from_pretrained(folder / "low_level") if (folder / "low_level").is_dir() else None
        return cls(trained, decoder, prior=prior, low_level=low_level, strength=document["strength"])
