"""What every image decoder shares: image <-> tensor conversion, per-image seeds, schedulers by name.

Images cross the public API as ``uint8`` RGB arrays ``(N, H, W, 3)``; inside, diffusion works
on float tensors ``(N, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurodec.errors import ConfigError, DecoderInputError

#: Scheduler used to train the compact decoder; every name of :func:`scheduler_names` can sample.
TRAINING_SCHEDULER = "DDPMScheduler"


# ------------------------------------------------------------------- images
def check_images(images: Any, what: str = "images") -> np.ndarray:
    """``images`` as a ``uint8`` array ``(N, H, W, 3)``, or a :class:`DecoderInputError` saying why not."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise DecoderInputError(f"{what}: expected uint8 RGB images (N, H, W, 3), found dtype {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise DecoderInputError(f"{what}: expected uint8 RGB images (N, H, W, 3) with N >= 1, "
                                f"found shape {array.shape}")
    return array


def check_embeddings(embeddings: Any, embedding_shape: Sequence[int] | None = None,
                     what: str = "embeddings") -> np.ndarray:
    """``embeddings`` as float32 ``(N, D)`` or ``(N, T, D)``, finite, matching ``embedding_shape`` if given."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim not in (2, 3) or array.shape[0] == 0:
        raise DecoderInputError(f"{what}: expected pooled (N, D) or token (N, T, D) embeddings with N >= 1, "
                                f"found shape {array.shape}")
    if embedding_shape is not None and tuple(array.shape[1:]) != tuple(embedding_shape):
        raise DecoderInputError(f"{what}: expected one embedding of shape {tuple(embedding_shape)} per image "
                                f"(as in training), found {tuple(array.shape[1:])}")
    if not np.all(np.isfinite(array)):
        raise DecoderInputError(f"{what}: expected finite values, found NaN or Inf")
    return array


def check_same_count(first: np.ndarray, first_name: str, second: np.ndarray, second_name: str) -> None:
    if len(first) != len(second):
        raise DecoderInputError(f"{first_name} and {second_name}: expected one per image, "
                                f"found {len(first)} and {len(second)}")


def to_unit_range(images: np.ndarray, size: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, size, size)`` in ``[-1, 1]`` (anti-aliased resize)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return resize(tensor, size) if size is not None else tensor


def resize(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize of ``(N, C, H, W)``: anti-aliased when shrinking, bicubic when enlarging."""
    if tensor.shape[-1] == size and tensor.shape[-2] == size:
        return tensor
    shrinking = size < tensor.shape[-1]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear" if shrinking else "bicubic",
                                           antialias=shrinking, align_corners=False)


def to_uint8(tensor: torch.Tensor, size: int | None = None) -> np.ndarray:
    """float ``(N, 3, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, size, size, 3)``."""
    tensor = tensor.detach().float()
    if size is not None:
        tensor = resize(tensor, size)
    scaled = ((tensor.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()


@contextlib.contextmanager
def flush_denormals():
    """Run the block with denormal floats flushed to zero on CPU (as GPUs do by default).

    Small diffusion UNets produce denormal gradients and activations; on x86 CPUs each
    operation on them costs ~100x, which made a 10-step training run take 40 s instead of
    1.5 s (measured, docs/generate.md). torch has no getter for the mode, so it is switched
    off again afterwards (its default).
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


# -------------------------------------------------------------------- seeds
def resolve_seeds(n_images: int, seeds: Sequence[int] | None, generator: torch.Generator | None) -> list[int] | None:
    """One seed per image (``None`` when a single shared ``generator`` drives the noise instead).

    Without either, image ``i`` gets seed ``i``, so a call is reproducible by default.
    """
    if seeds is not None and generator is not None:
        raise ConfigError("generate: give either seeds (one per image) or generator, not both")
    if generator is not None:
        return None
    if seeds is None:
        return list(range(n_images))
    seeds = [int(seed) for seed in seeds]
    if len(seeds) != n_images:
        raise DecoderInputError(f"seeds: expected one seed per image ({n_images}), found {len(seeds)}")
    return seeds


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """CPU generators, one per image: noise drawn from them does not depend on the batch or device."""
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def draw_noise(shape: Sequence[int], generators: list[torch.Generator] | torch.Generator,
               device: str | torch.device) -> torch.Tensor:
    """Gaussian noise ``shape``; with one generator per image, row ``i`` comes from generator ``i`` alone."""
    if isinstance(generators, torch.Generator):
        return torch.randn(tuple(shape), generator=generators).to(device)
    rows = [torch.randn(tuple(shape[1:]), generator=generator) for generator in generators]
    return torch.stack(rows).to(device)


# --------------------------------------------------------------- schedulers
def scheduler_names() -> list[str]:
    """Names of the diffusers schedulers that can sample from a model trained with DDPM noise (epsilon).

    >>> "DDIMScheduler" in scheduler_names()
    True
    """
    import diffusers

    training = getattr(diffusers, TRAINING_SCHEDULER)
    names = {cls.__name__ for cls in training._get_compatibles()} | {TRAINING_SCHEDULER}
    # diffusers lists EDM schedulers as compatible, but they assume EDM's preconditioned model, not
    # an epsilon-predicting DDPM one: measured, their images do not correlate with the target (docs/generate.md).
    return sorted(name for name in names if not name.startswith("EDM"))


def scheduler_class(name: str):
    """The diffusers scheduler class called ``name``; an unknown name lists the valid ones.

    >>> scheduler_class("EulerDiscreteScheduler").__name__
    'EulerDiscreteScheduler'
    """
    import diffusers

    valid = scheduler_names()
    if name not in valid:
        raise ConfigError(f"scheduler: unknown scheduler {name!r}; valid names (diffusers classes): "
                          f"{', '.join(valid)}")
    return getattr(diffusers, name)


def build_scheduler(scheduler: Any, base_config: Any):
    """A fresh scheduler: ``scheduler`` is a class name, a scheduler object, or None (the saved one).

    A fresh object per batch matters: multistep schedulers keep the previous model outputs.
    """
    from diffusers import SchedulerMixin

    if scheduler is None:
        return scheduler_class(base_config["_class_name"]).from_config(base_config)
    if isinstance(scheduler, str):
        return scheduler_class(scheduler).from_config(base_config)
    if isinstance(scheduler, SchedulerMixin):
        return type(scheduler).from_config(scheduler.config)
    raise ConfigError(f"scheduler: expected a diffusers scheduler name or object, found {type(scheduler).__name__}")


def step_accepts_generator(scheduler) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float, device) -> torch.Tensor:
    """The tail of the schedule that img2img runs: the last ``strength`` of the steps.

    As diffusers' img2img pipelines: ``strength`` 1 runs every step from pure noise, 0 none.
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise ConfigError(f"strength: expected a number in [0, 1], found {strength!r}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    n_run = min(int(num_inference_steps * float(strength)), num_inference_steps)
    start = max(num_inference_steps - n_run, 0)
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return timesteps


# ------------------------------------------------------------ saved folders
def quiet_loading_options() -> dict[str, Any]:
    """``from_pretrained`` options: without accelerate, say so up front (else every load warns about it)."""
    import importlib.util

    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}



def write_folder_atomically(folder: str | os.PathLike[str], write: Callable[[Path], None], marker: str) -> Path:
    """Write a whole folder into a temporary sibling, then rename it to ``folder``.

    A reader never sees a half-written folder. An existing ``folder`` is replaced only when
    it holds ``marker`` (an earlier save of the same kind) or is empty.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / marker).is_file())):
        raise ConfigError(f"{folder}: exists and is not a saved folder of this kind (no {marker}); "
                          "refusing to replace it; choose another path")
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(temporary)
        if folder.exists():
            # Two renames: the old folder stays whole until the new one is complete.
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            retired.rmdir()
            os.replace(folder, retired)
            os.replace(temporary, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def save_array_folder(folder: str | os.PathLike[str], *, arrays: dict[str, np.ndarray], weights_file: str,
                      document: dict[str, Any], document_file: str, what: str,
                      extra: Callable[[Path], None] | None = None) -> Path:
    """A folder of numpy arrays (safetensors) and a JSON description, written atomically.

    ``extra(temporary)`` may add more (e.g. a VAE's own folder) before the folder is renamed
    into place; ``document_file`` is the marker :func:`write_folder_atomically` checks.
    """
    import json

    from safetensors.numpy import save_file

    from neurodec.models.base import _json_ready, _write_atomically

    def write(temporary: Path) -> None:
        tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
        _write_atomically(temporary / weights_file, lambda path: save_file(tensors, path))
        if extra is not None:
            extra(temporary)
        text = json.dumps(_json_ready(document, what), indent=2, sort_keys=True) + "\n"
        _write_atomically(temporary / document_file, lambda path: Path(path).write_text(text, encoding="utf-8"))

    return write_folder_atomically(folder, write, document_file)


def read_array_folder(folder: str | os.PathLike[str], *, weights_file: str, document_file: str,
                      format_version: int, writer: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(document, arrays)`` of a folder written by :func:`save_array_folder`, its format checked."""
    import json

    from safetensors.numpy import load_file

    from neurodec.errors import WeightsNotFoundError

    folder = Path(folder)
    if not (folder / document_file).is_file():
        raise WeightsNotFoundError(f"{folder / document_file}: not found; such a folder is written by {writer}")
    document = json.loads((folder / document_file).read_text(encoding="utf-8"))
    if document.get("format_version") != format_version:
        raise ConfigError(f"{folder / document_file}: format_version {document.get('format_version')!r} "
                          f"is not readable (reads {format_version})")
    return document, load_file(str(folder / weights_file))
