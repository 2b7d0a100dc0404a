"""Speech and sound targets: log-mel spectrograms and wav2vec2 hidden states, (n, dim, time).

Both give frame ``k`` at time ``k / rate`` seconds from the sound's start, and
``round(duration * rate)`` frames, so a mel and a wav2vec2 target of one sound line up.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from neurodec.errors import ConfigError, TargetError, WeightsNotFoundError
from neurodec.targets.base import (
    Extractor,
    fit_length,
    load_waveform,
    register_extractor,
    resample_waveform,
    stack_same_length,
)


def hertz_to_mel(frequency: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (as the Auditory Toolbox): linear below 1 kHz, logarithmic above."""
    frequency = np.asarray(frequency, dtype=np.float64)
    linear = 3.0 * frequency / 200.0
    logarithmic = 15.0 + 27.0 * np.log(np.maximum(frequency, 1e-10) / 1000.0) / np.log(6.4)
    return np.where(frequency >= 1000.0, logarithmic, linear)


def mel_to_hertz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    logarithmic = 1000.0 * np.exp(np.log(6.4) * (mel - 15.0) / 27.0)
    return np.where(mel >= 15.0, logarithmic, linear)


def mel_filter_bank(n_fft: int, n_mels: int, sample_rate: float, f_min: float, f_max: float) -> np.ndarray:
    """Triangular, area-normalised (Slaney) mel filters, ``(n_fft // 2 + 1, n_mels)``.

    >>> bank = mel_filter_bank(512, 40, 16000, 0.0, 8000.0)
    >>> bank.shape
    (257, 40)
    """
    edges = mel_to_hertz(np.linspace(hertz_to_mel(f_min), hertz_to_mel(f_max), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins[:, None]) / (upper - centre)[None, :]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Equal area per filter, so a broadband sound gives a flat mel spectrum.
    return triangles * (2.0 / (upper - lower))[None, :]


class _AudioExtractor(Extractor):
    input_kind = "audio"

    def _clips(self, batch: list[Any], target_rate: float) -> np.ndarray:
        clips = []
        for item in batch:
            waveform = load_waveform(item)
            clips.append(resample_waveform(waveform.samples, waveform.sample_rate, target_rate))
        duration = self._config["duration"]
        if duration is not None:
            clips = [fit_length(c, int(round(duration * target_rate))) for c in clips]
        return stack_same_length(clips, lambda: f"extractor {self.name!r}")

    def _check_rate_and_duration(self, config: Mapping[str, Any]) -> None:
        if not (isinstance(config["rate"], (int, float)) and config["rate"] > 0):
            raise ConfigError(f"extractor {self.name!r}: 'rate' must be a positive number of Hz, found {config['rate']!r}")
        duration = config["duration"]
        if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
            raise ConfigError(f"extractor {self.name!r}: 'duration' must be positive seconds or null, found {duration!r}")


@register_extractor
class MelSpectrogram(_AudioExtractor):
    """Log-mel spectrogram at ``rate`` frames per second, ``(n, n_mels, time)``; no weights.

    Sounds are resampled to ``rate * round(sample_rate / rate)`` Hz so that the hop is a
    whole number of samples and frame ``k`` sits exactly at ``k / rate`` seconds (frames
    centred, reflect-padded, periodic Hann window of ``n_fft`` samples). Values are
    ``log(mel power + log_offset)``.

    >>> import numpy as np
    >>> from neurodec.targets import Waveform, get_extractor
    >>> tone = Waveform(np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    >>> get_extractor("mel", rate=100, n_mels=40).embed([tone]).shape
    (1, 40, 100)
    """

    name = "mel"
    defaults = {
        "rate": 120.0,
        "n_mels": 80,
        "n_fft": 512,
        "sample_rate": 16000,
        "f_min": 0.0,
        "f_max": None,
        "log_offset": 1e-6,
        "duration": None,
    }

    def check_config(self, config: Mapping[str, Any]) -> None:
        self._check_rate_and_duration(config)
        if self.hop_length < 1:
            raise ConfigError(f"mel: sample_rate {config['sample_rate']} is below the frame rate {config['rate']}")
        f_max = self.f_max
        if not 0 <= config["f_min"] < f_max <= self.analysis_rate / 2:
            raise ConfigError(
                f"mel: expected 0 <= f_min < f_max <= {self.analysis_rate / 2} Hz (Nyquist), "
                f"found f_min={config['f_min']}, f_max={f_max}"
            )
        if int(config["n_mels"]) < 1 or int(config["n_fft"]) < 2:
            raise ConfigError(f"mel: n_mels and n_fft must be positive, found {config['n_mels']}, {config['n_fft']}")

    @property
    def hop_length(self) -> int:
        return int(round(self._config["sample_rate"] / self._config["rate"]))

    @property
    def analysis_rate(self) -> float:
        return float(self._config["rate"]) * self.hop_length

    @property
    def f_max(self) -> float:
        f_max = self._config["f_max"]
        return self.analysis_rate / 2 if f_max is None else float(f_max)

    def filter_bank(self) -> np.ndarray:
        config = self._config
        return mel_filter_bank(config["n_fft"], config["n_mels"], self.analysis_rate, config["f_min"], self.f_max)

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        import torch

        config = self._config
        clips = self._clips(batch, self.analysis_rate)
        n_fft, hop = int(config["n_fft"]), self.hop_length
        if clips.shape[1] <= n_fft // 2:
            raise TargetError(f"mel: sounds of {clips.shape[1]} samples are shorter than half a window ({n_fft // 2})")
        n_frames = int(round(clips.shape[1] / hop))
        with torch.no_grad():
            spectrum = torch.stft(
                torch.from_numpy(clips).double(),
                n_fft=n_fft,
                hop_length=hop,
                window=torch.hann_window(n_fft, periodic=True, dtype=torch.float64),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spectrum.abs() ** 2
            bank = torch.from_numpy(self.filter_bank())
            mel = torch.einsum("fm,nft->nmt", bank, power)[..., :n_frames]
            return torch.log(mel + float(config["log_offset"])).float().numpy()


@register_extractor
class Wav2Vec2Features(_AudioExtractor):
    """wav2vec2 hidden states averaged over ``layers``, resampled to ``rate``: ``(n, dim, time)``.

    ``model`` is a local folder written by ``save_pretrained`` or a Hugging Face repo id
    already in the local cache (nothing is downloaded). Layer ``i`` is
    ``hidden_states[i]`` of transformers' ``Wav2Vec2Model`` (0 = the input of the first
    transformer layer), so the default 14..18 with ``facebook/wav2vec2-large-xlsr-53``
    is the target of Défossez et al. (2023). Sounds are resampled to the model's 16 kHz,
    standardised per sound when ``normalize_waveform`` (as the model's feature extractor
    does), and the ~50 Hz features linearly interpolated to ``rate``.

    >>> extractor = get_extractor("wav2vec2", model="/models/wav2vec2-large-xlsr-53")  # doctest: +SKIP
    >>> extractor.embed([Waveform(samples, 16000)]).shape  # doctest: +SKIP
    (1, 1024, 120)
    """

    name = "wav2vec2"
    defaults = {
        "model": "facebook/wav2vec2-large-xlsr-53",
        "layers": [14, 15, 16, 17, 18],
        "rate": 120.0,
        "model_sample_rate": 16000,
        "normalize_waveform": True,
        "duration": None,
    }

    def check_config(self, config: Mapping[str, Any]) -> None:
        self._check_rate_and_duration(config)
        layers = config["layers"]
        if not (isinstance(layers, list) and layers and all(isinstance(i, int) and i >= 0 for i in layers)):
            raise ConfigError(f"wav2vec2: 'layers' must be a non-empty list of layer numbers >= 0, found {layers!r}")
        self._model = None

    def load(self):
        """Load the model from disk (once); raises WeightsNotFoundError when it is absent."""
        if self._model is not None:
            return self._model
        from transformers import Wav2Vec2Model

        source = self._config["model"]
        looks_like_folder = os.path.isabs(source) or source.startswith(".") or os.path.exists(source)
        if looks_like_folder and not os.path.isdir(source):
            raise WeightsNotFoundError(
                f"wav2vec2: model folder {source} does not exist; expected a folder holding config.json and "
                "model.safetensors (from Wav2Vec2Model.save_pretrained) or a Hugging Face repo id in the local cache"
            )
        try:
            model = Wav2Vec2Model.from_pretrained(source, local_files_only=True, cache_dir=self.cache_dir)
        except OSError as error:
            raise WeightsNotFoundError(
                f"wav2vec2: weights for {source!r} are not on this machine (looked in "
                f"{'the folder' if looks_like_folder else 'the Hugging Face cache ' + str(self.cache_dir or '$HF_HOME/hub')}; "
                f"{str(error).splitlines()[0]}). Provide them with `hf download {source}` (or "
                f"`huggingface-cli download {source}`) on a machine with network and copy the cache, or set "
                "model: /path/to/folder with config.json and model.safetensors"
            ) from None
        n_layers = model.config.num_hidden_layers
        too_deep = [i for i in self._config["layers"] if i > n_layers]
        if too_deep:
            raise ConfigError(f"wav2vec2: model {source!r} has hidden states 0..{n_layers}; layers {too_deep} do not exist")
        self._model = model.eval().to(self.device)
        return self._model

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        import torch

        model = self.load()
        config = self._config
        clips = self._clips(batch, float(config["model_sample_rate"]))
        if config["normalize_waveform"]:
            clips = (clips - clips.mean(axis=1, keepdims=True)) / np.sqrt(clips.var(axis=1, keepdims=True) + 1e-7)
        n_frames = int(round(clips.shape[1] / config["model_sample_rate"] * config["rate"]))
        with torch.no_grad():
            output = model(torch.from_numpy(clips).float().to(self.device), output_hidden_states=True)
            hidden = torch.stack([output.hidden_states[i] for i in config["layers"]]).mean(0)
            features = hidden.transpose(1, 2)  # (n, dim, frames)
            features = torch.nn.functional.interpolate(features, size=n_frames, mode="linear", align_corners=False)
        return features.float().cpu().numpy()
