"""Tiny, randomly initialised configurations of real diffusers pipelines, built in code.

For tests and benchmarks that need the real classes (UNet2DConditionModel, AutoencoderKL,
VQModel, CLIP text/vision models, tokenizers) without downloading weights: each builder saves
a complete pipeline folder (``save_pretrained``) that ``neurodec.generate.load_generator``
reads back with local files only. The weights are random: these pipelines measure and test
the machinery, never image quality.

>>> from neurodec.generate.tiny import BUILDERS          # doctest: +SKIP
>>> BUILDERS["kandinsky22"](Path("tiny-kandinsky"))     # doctest: +SKIP
>>> load_generator("kandinsky22", "tiny-kandinsky")      # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TEXT_DIM, IMAGE_EMBED_DIM = 32, 16


def tiny_tokenizer(folder: Path):
    """A CLIP BPE tokenizer from a 56-entry vocab.json and a 2-merge merges.txt written here."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for letter in "abcdefghijklmnopqrstuvwxyz":
            vocab[letter + suffix] = len(vocab)
    vocab.update({"ca": len(vocab), "cat</w>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=16, local_files_only=True)


def tiny_text_encoder(vocab_size: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=TEXT_DIM,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def tiny_sd_unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, **extra)


def ip_adapter_weights(unet) -> dict:
    """IP-Adapter tensors in the published file layout (image_proj.*, ip_adapter.{1,3,5..}.to_{k,v}_ip.weight)."""
    cross, channels = unet.config.cross_attention_dim, unet.config.block_out_channels
    tensors = {"image_proj.proj.weight": 0.3 * torch.randn(4 * cross, IMAGE_EMBED_DIM),
               "image_proj.proj.bias": torch.zeros(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1
    for name in unet.attn_processors:  # one pair per cross-attention layer, in the UNet's order
        if name.endswith("attn1.processor"):
            continue
        level = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        hidden = (channels[-1] if level is None else
                  list(reversed(channels))[level] if name.startswith("up_blocks") else channels[level])
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = 0.3 * torch.randn(hidden, cross)
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = 0.3 * torch.randn(hidden, cross)
        key += 2
    return tensors


def build_unclip(folder: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer = tiny_tokenizer(folder.parent / "unclip-tokenizer-files")
    vision = CLIPVisionConfig(hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=IMAGE_EMBED_DIM)
    StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        image_encoder=CLIPVisionModelWithProjection(vision).eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=IMAGE_EMBED_DIM),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer)),
        unet=tiny_sd_unet(TEXT_DIM, class_embed_type="projection",
                          projection_class_embeddings_input_dim=2 * IMAGE_EMBED_DIM),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=tiny_vae(),
    ).save_pretrained(folder)


def build_kandinsky22(folder: Path) -> None:
    from diffusers import DDIMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    unet = UNet2DConditionModel(
        sample_size=16, out_channels=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=4, down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), resnet_time_scale_shift="scale_shift",
        addition_embed_type="image", encoder_hid_dim=IMAGE_EMBED_DIM, encoder_hid_dim_type="image_proj",
        cross_attention_dim=TEXT_DIM)
    # MoVQ's spatial norm has 32 groups built in: 32 channels is its smallest width.
    movq = VQModel(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                   up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, layers_per_block=1,
                   norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(folder)


def build_ip_adapter_sd15(folder: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    tokenizer = tiny_tokenizer(folder.parent / "sd15-tokenizer-files")
    unet = tiny_sd_unet(TEXT_DIM)
    StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                set_alpha_to_one=False, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    ).save_pretrained(folder)
    (folder / "models").mkdir()
    save_file(ip_adapter_weights(unet), str(folder / "models" / "ip-adapter_sd15.safetensors"))


def build_ip_adapter_sdxl(folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    tokenizer = tiny_tokenizer(folder.parent / "sdxl-tokenizer-files")
    # SDXL: cross-attention over both text encoders' states; time ids and pooled text in the time embedding.
    unet = tiny_sd_unet(2 * TEXT_DIM, addition_embed_type="text_time", addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM, use_linear_projection=True)
    StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)),
        text_encoder_2=tiny_text_encoder(len(tokenizer), with_projection=True), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         steps_offset=1),
        image_encoder=None, feature_extractor=None, add_watermarker=False,
    ).save_pretrained(folder)
    (folder / "sdxl_models").mkdir()
    save_file(ip_adapter_weights(unet), str(folder / "sdxl_models" / "ip-adapter_sdxl.safetensors"))


BUILDERS = {"unclip": build_unclip, "kandinsky22": build_kandinsky22,
            "ip-adapter-sd15": build_ip_adapter_sd15, "ip-adapter-sdxl": build_ip_adapter_sdxl}


# A compact decoder of about 1M UNet parameters (the size issue-level tests and the GPU
# benchmark use), 64 px pixel space.
COMPACT_DECODER = {"image_size": 64, "sample_size": 32, "block_out_channels": [32, 64, 64],
                   "attention_levels": [False, True, True], "n_tokens": 4, "cross_attention_dim": 64}


def build_compact_decoder(folder: Path, embedding_dim: int = 1280, config: dict | None = None) -> Path:
    """Save an untrained :class:`~neurodec.generate.ConditionalImageDecoder` of ``COMPACT_DECODER`` size."""
    from neurodec.generate import ConditionalImageDecoder

    torch.manual_seed(0)
    decoder = ConditionalImageDecoder({**COMPACT_DECODER, **(config or {})}, (embedding_dim,))
    decoder.projection.fit_standardisation(torch.from_numpy(
        np.random.default_rng(0).standard_normal((64, embedding_dim)).astype(np.float32)))
    return decoder.save_pretrained(folder)
