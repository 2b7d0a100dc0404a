"""The extractor base class, the registry of extractors by name, and input loading.

An extractor turns stimuli (images, sounds, texts or stimulus ids) into one array of
embeddings. Everything that changes what it computes is its ``config``, a JSON-able dict
whose hash names the cached targets in the store; options that only change where or how
fast it runs (``device``, ``cache_dir``) are runtime options, kept out of the config.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from neurodec._logging import progress
from neurodec.errors import ConfigError, RegistryError, TargetError

logger = logging.getLogger("neurodec")

RUNTIME_OPTIONS = ("device", "cache_dir")


@dataclass(frozen=True)
class Waveform:
    """A mono sound and its sampling rate in Hz (what audio extractors take)."""

    samples: np.ndarray
    sample_rate: float


class Extractor:
    """Base class of every embedding extractor.

    Subclasses declare ``name``, ``input_kind`` (``image``, ``audio``, ``text`` or ``id``:
    which stimuli they read), ``defaults`` (every config key with its default) and
    implement :meth:`embed_batch`. Unknown config keys are errors, so a typo never
    silently falls back to a default.

    >>> from neurodec.targets import get_extractor
    >>> mel = get_extractor("mel", rate=100.0, n_mels=40)
    >>> mel.config["n_mels"]
    40
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "image"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, device: str = "cpu", cache_dir: str | None = None, **config: Any):
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"extractor {self.name!r}: unknown config keys {unknown}; expected some of {sorted(self.defaults)}"
            )
        merged = {**self.defaults, **config}
        self._config = _json_roundtrip(merged, self.name)
        self.device = device
        self.cache_dir = cache_dir
        self.check_config(self._config)

    @property
    def config(self) -> dict[str, Any]:
        """The full configuration, with defaults filled in and the extractor's name."""
        return {"extractor": self.name, **self._config}

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise :class:`~neurodec.errors.ConfigError` on invalid values (override)."""

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        """Embeddings of one batch of stimuli, one row per stimulus (override)."""
        raise NotImplementedError

    def embed(self, stimuli: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``stimuli`` computed in batches, stacked along the first axis.

        Each stimulus is what :attr:`input_kind` asks for: an image (``uint8`` array
        ``(H, W, 3)`` or ``(H, W)``, a PIL image, or a file path), a sound
        (:class:`Waveform` or a file path to a ``.wav``), a text (``str``), or a stimulus id.
        """
        if batch_size < 1:
            raise ConfigError(f"extractor {self.name!r}: batch_size must be >= 1, found {batch_size}")
        n = len(stimuli)
        if n == 0:
            raise TargetError(f"extractor {self.name!r}: no stimuli to embed")
        starts = range(0, n, batch_size)
        chunks = []
        for start in progress(starts, f"{self.name} embeddings", total=len(starts)):
            batch = list(stimuli[start : start + batch_size])
            values = np.asarray(self.embed_batch(batch), dtype=np.float32)
            if values.shape[0] != len(batch):
                raise TargetError(
                    f"extractor {self.name!r}: a batch of {len(batch)} stimuli gave {values.shape[0]} embeddings"
                )
            if chunks and values.shape[1:] != chunks[0].shape[1:]:
                raise TargetError(
                    f"extractor {self.name!r}: embeddings of stimuli {start}..{start + len(batch) - 1} have shape "
                    f"{values.shape[1:]}, earlier ones {chunks[0].shape[1:]}; stimuli of one target set must give "
                    "embeddings of one shape (for sounds of different lengths set 'duration')"
                )
            chunks.append(values)
        return np.concatenate(chunks, axis=0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config}>"


def _json_roundtrip(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config as JSON would give it back (tuples become lists), or a ConfigError."""
    import json

    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"extractor {name!r}: config must be JSON-serialisable ({error})") from None


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Extractor]] = {}


def register_extractor(cls: type[Extractor]) -> type[Extractor]:
    """Register an :class:`Extractor` subclass under its ``name`` (usable as a decorator).

    >>> from neurodec.targets import Extractor, register_extractor
    >>> @register_extractor
    ... class PixelMean(Extractor):
    ...     name = "pixel_mean_example"
    ...     def embed_batch(self, batch):
    ...         return np.stack([np.asarray(image, float).mean(axis=(0, 1)) for image in batch])
    """
    if not (isinstance(cls, type) and issubclass(cls, Extractor)) or not cls.name:
        raise RegistryError(f"register_extractor expects an Extractor subclass with a name, found {cls!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RegistryError(f"an extractor named {cls.name!r} is already registered ({_REGISTRY[cls.name]!r})")
    _REGISTRY[cls.name] = cls
    return cls


def list_extractors() -> list[str]:
    """Names of the registered extractors."""
    return sorted(_REGISTRY)


def extractor_class(name: str) -> type[Extractor]:
    if name not in _REGISTRY:
        raise RegistryError(f"unknown extractor {name!r}; known extractors: {list_extractors()}")
    return _REGISTRY[name]


def get_extractor(name: str, **config: Any) -> Extractor:
    """Build the extractor ``name`` with ``config`` (plus runtime ``device``/``cache_dir``).

    >>> get_extractor("mel").config["rate"]
    120.0
    """
    return extractor_class(name)(**config)


# ------------------------------------------------------------------------- input loading
def load_image(item: Any):
    """An RGB PIL image from an array, a PIL image or a file path."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise TargetError(f"image file {path} does not exist")
        with Image.open(path) as image:
            return image.convert("RGB")
    array = np.asarray(item)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise TargetError(f"an image must be (H, W) or (H, W, 3), found an array of shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and array.size and 0.0 <= array.min() and array.max() <= 1.0:
            array = np.round(array * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def load_waveform(item: Any, sample_rate: float | None = None) -> Waveform:
    """A mono :class:`Waveform` from a Waveform, a ``.wav`` path, or an array and a rate."""
    if isinstance(item, Waveform):
        samples, rate = np.asarray(item.samples), float(item.sample_rate)
    elif isinstance(item, (str, os.PathLike)):
        from scipy.io import wavfile

        path = os.fspath(item)
        if not os.path.isfile(path):
            raise TargetError(f"sound file {path} does not exist")
        try:
            rate, samples = wavfile.read(path)
        except ValueError as error:
            raise TargetError(f"{path}: not a readable WAV file ({error})") from None
        if samples.dtype.kind in "iu":
            info = np.iinfo(samples.dtype)
            samples = (samples.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
        samples = samples.mean(axis=1) if samples.ndim == 2 else samples
        rate = float(rate)
    else:
        if sample_rate is None:
            raise TargetError("a sound given as a bare array needs its sampling rate: pass a Waveform(samples, rate)")
        samples, rate = np.asarray(item), float(sample_rate)
    if samples.ndim != 1:
        raise TargetError(f"a sound must be mono, 1-D samples; found shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise TargetError("a sound holds NaN or Inf samples")
    return Waveform(samples.astype(np.float32), rate)


def resample_waveform(samples: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Polyphase resampling (anti-aliased) between two rates."""
    from fractions import Fraction

    if from_rate == to_rate:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate / from_rate).limit_denominator(10000)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def fit_length(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """Crop or zero-pad at the end to exactly ``n_samples``."""
    if len(samples) >= n_samples:
        return samples[:n_samples]
    return np.pad(samples, (0, n_samples - len(samples)))


def stack_same_length(clips: list[np.ndarray], what: Callable[[], str]) -> np.ndarray:
    lengths = sorted({len(c) for c in clips})
    if len(lengths) > 1:
        raise TargetError(
            f"{what()}: sounds in one batch differ in length ({lengths[0]} to {lengths[-1]} samples); "
            "set the extractor's 'duration' (seconds) to crop or zero-pad them to one length"
        )
    return np.stack(clips)
