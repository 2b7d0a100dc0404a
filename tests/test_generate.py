"""Image decoders (neurodec.generate), on real diffusers components built tiny in code.

- ConditionalImageDecoder: a ~0.1M-parameter UNet trained for a few steps on real demo images
  (sklearn digits, scikit-image photographs); shapes, seeds, batch independence, save/load,
  schedulers by name, img2img, latent space with a tiny AutoencoderKL, token embeddings.
- LowLevelDecoder: ridge predictions compared with scikit-learn's Ridge and with a direct
  VAE decode.
- Pretrained generators: tiny StableUnCLIPImg2Img, KandinskyV22, Stable Diffusion (1.5-style)
  and SDXL pipelines with IP-Adapter weights in the published file layout
  (neurodec.generate.tiny), saved with save_pretrained, loaded back through load_generator
  with local files only.
- EmbeddingProjector: ridge against scikit-learn, the MLP against the mean predictor.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from neurodec.errors import ConfigError, DecoderInputError, WeightsNotFoundError  # noqa: E402
from neurodec.generate import (  # noqa: E402
    ConditionalImageDecoder,
    EmbeddingProjector,
    LowLevelDecoder,
    load_generator,
    scheduler_names,
    train_image_decoder,
)
# The tiny pipelines (random weights, real classes), shared with the GPU benchmark.
from neurodec.generate.tiny import BUILDERS, IMAGE_EMBED_DIM, build_unclip  # noqa: E402

TINY = dict(image_size=16, sample_size=16, block_out_channels=[16, 32], attention_levels=[False, True],
            n_tokens=2, cross_attention_dim=16, attention_head_dim=8, batch_size=16, warmup_steps=2,
            num_inference_steps=4, training_steps=20, learning_rate=3e-3)
EMBEDDING_DIM = 24


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine their spin-waits cost seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demo_pairs() -> tuple[np.ndarray, np.ndarray]:
    """48 real 16 x 16 stimuli and embeddings that carry their content (a fixed projection of 4 x 4 pixels)."""
    from neurodec.simulate.images import load_demo_images

    images = load_demo_images(48, size=16, seed=0).images
    coarse = images.reshape(48, 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(48, -1) / 255.0
    projection = np.random.default_rng(0).standard_normal((coarse.shape[1], EMBEDDING_DIM))
    return images, (coarse @ projection).astype(np.float32)


@pytest.fixture(scope="module")
def trained(demo_pairs) -> ConditionalImageDecoder:
    images, embeddings = demo_pairs
    return train_image_decoder(images, embeddings, config=TINY, seed=0, progress=False)


def pixel_correlation(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first.ravel().astype(float), second.ravel().astype(float))[0, 1])


# ------------------------------------------------------- package and config
def test_import_is_light():
    code = ("import sys, neurodec.generate as g; heavy = [m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_unknown_scheduler_name_lists_valid_ones(trained, demo_pairs):
    with pytest.raises(ConfigError, match="NoSuchScheduler.*DDIMScheduler.*EulerDiscreteScheduler"):
        trained.generate(demo_pairs[1][:1], scheduler="NoSuchScheduler", progress=False)
    with pytest.raises(ConfigError, match="sampling_scheduler.*unknown scheduler 'FastScheduler'"):
        ConditionalImageDecoder({"sampling_scheduler": "FastScheduler"}, embedding_shape=(4,))
    with pytest.raises(ConfigError, match="blocks: unknown key"):
        train_image_decoder(demo_pairs[0][:4], demo_pairs[1][:4], config={"blocks": 3}, progress=False)


def test_bad_inputs_name_what_was_expected(trained, demo_pairs):
    with pytest.raises(DecoderInputError, match=r"expected one embedding of shape \(24,\).*found \(5,\)"):
        trained.generate(np.zeros((2, 5), np.float32), progress=False)
    with pytest.raises(DecoderInputError, match="uint8"):
        trained.img2img(demo_pairs[0][:2].astype(np.float32), demo_pairs[1][:2], strength=0.5, progress=False)
    with pytest.raises(DecoderInputError, match="seeds: expected one seed per image"):
        trained.generate(demo_pairs[1][:3], seeds=[1, 2], progress=False)


# ------------------------------------------------------------ training
def test_training_reduces_denoising_loss(trained, demo_pairs):
    images, embeddings = demo_pairs
    untrained = train_image_decoder(images, embeddings, config={**TINY, "training_steps": 0}, seed=0, progress=False)
    before = untrained.evaluate_denoising_loss(images, embeddings, seed=3)
    after = trained.evaluate_denoising_loss(images, embeddings, seed=3)
    # A random UNet predicts noise of about its own scale (MSE ~1); 20 steps reach ~0.37 (measured).
    assert before > 0.8
    assert after < 0.5 * before
    assert np.mean(trained.training_losses[-5:]) < np.mean(trained.training_losses[:5])


def test_training_is_deterministic_for_a_seed(demo_pairs):
    images, embeddings = demo_pairs
    config = {**TINY, "training_steps": 3}
    first = train_image_decoder(images, embeddings, config=config, seed=5, progress=False)
    second = train_image_decoder(images, embeddings, config=config, seed=5, progress=False)
    other = train_image_decoder(images, embeddings, config=config, seed=6, progress=False)
    first_state, second_state, other_state = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    assert not torch.equal(first_state["unet.conv_in.weight"], other_state["unet.conv_in.weight"])
    assert first.training_losses == second.training_losses


# ------------------------------------------------------------ generation
def test_generate_shapes_and_seeds(trained, demo_pairs):
    embeddings = demo_pairs[1][:3]
    first = trained.generate(embeddings, seeds=[1, 2, 3], progress=False)
    again = trained.generate(embeddings, seeds=[1, 2, 3], progress=False)
    other = trained.generate(embeddings, seeds=[4, 5, 6], progress=False)
    assert first.shape == (3, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert all(np.abs(first[i].astype(int) - other[i]).mean() > 3 for i in range(3))


def test_each_image_noise_depends_on_its_seed_only(trained, demo_pairs):
    embeddings = demo_pairs[1][:4]
    together = trained.generate(embeddings, seeds=[10, 11, 12, 13], batch_size=4, progress=False)
    # Other companions, other order, other batch size: image 2 with seed 12 must come out the same.
    alone = trained.generate(embeddings[[2, 0]], seeds=[12, 10], batch_size=1, progress=False)
    mixed = trained.generate(embeddings[[3, 2]], seeds=[13, 12], batch_size=2, progress=False)
    for image in (alone[0], mixed[1]):
        assert np.abs(together[2].astype(int) - image).max() <= 1
    np.testing.assert_allclose(together[0], alone[1], atol=1)


def test_schedulers_by_name_solve_the_same_sampling_problem(trained, demo_pairs):
    embeddings, seeds = demo_pairs[1][:3], [0, 1, 2]
    euler = trained.generate(embeddings, scheduler="EulerDiscreteScheduler", num_inference_steps=20, seeds=seeds,
                             progress=False)
    # Deterministic solvers of the same probability-flow ODE, from the same noise, land on the same images
    # (up to solver error): a scheduler built or scaled wrongly (init sigma, input scaling) would not.
    for name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LMSDiscreteScheduler"):
        other = trained.generate(embeddings, scheduler=name, num_inference_steps=20, seeds=seeds, progress=False)
        assert all(pixel_correlation(other[i], euler[i]) > 0.95 for i in range(3)), name
    # Ancestral samplers add fresh noise per step (from each image's own generator): other images.
    ancestral = trained.generate(embeddings, scheduler="EulerAncestralDiscreteScheduler", num_inference_steps=20,
                                 seeds=seeds, progress=False)
    assert np.abs(ancestral.astype(int) - euler).mean() > 3
    assert {"DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler"} <= set(scheduler_names())


def test_classifier_free_guidance_changes_the_prediction(trained, demo_pairs):
    embeddings = demo_pairs[1][:2]
    plain = trained.generate(embeddings, guidance_scale=1.0, seeds=[0, 1], progress=False)
    guided = trained.generate(embeddings, guidance_scale=3.0, seeds=[0, 1], progress=False)
    assert np.abs(plain.astype(int) - guided).mean() > 1
    # The null tokens are learned parameters, distinct from any projected embedding.
    tokens = trained.condition(embeddings)
    assert tokens.shape == (2, 2, 16)
    assert not torch.allclose(trained.projection.null(2), tokens)


def test_img2img_strength(trained, demo_pairs):
    images, embeddings = demo_pairs[0][:3], demo_pairs[1][:3]
    kept = trained.img2img(images, embeddings, strength=0.0, seeds=[0, 1, 2], progress=False)
    # Pixel space at the images' own size: strength 0 is an exact round trip.
    np.testing.assert_array_equal(kept, images)
    distance = {strength: np.abs(trained.img2img(images, embeddings, strength=strength, seeds=[0, 1, 2],
                                                 num_inference_steps=10, progress=False).astype(int) - images).mean()
                for strength in (0.3, 1.0)}
    assert 0 < distance[0.3] < distance[1.0]
    with pytest.raises(ConfigError, match="strength"):
        trained.img2img(images, embeddings, strength=1.5, progress=False)


def test_save_and_load_give_identical_generations(trained, demo_pairs, tmp_path):
    folder = trained.save_pretrained(tmp_path / "decoder")
    assert (folder / "unet" / "config.json").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    document = json.loads((folder / "neurodec_decoder.json").read_text())
    assert document["embedding_shape"] == [EMBEDDING_DIM] and document["config"]["n_tokens"] == 2
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left
    loaded = ConditionalImageDecoder.from_pretrained(folder)
    embeddings = demo_pairs[1][:3]
    for options in ({}, {"scheduler": "DPMSolverMultistepScheduler", "guidance_scale": 3.0}):
        np.testing.assert_array_equal(trained.generate(embeddings, seeds=[3, 4, 5], progress=False, **options),
                                      loaded.generate(embeddings, seeds=[3, 4, 5], progress=False, **options))
    trained.save_pretrained(folder)  # replacing an earlier save is allowed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a saved folder"):
        trained.save_pretrained(tmp_path / "other")
    with pytest.raises(WeightsNotFoundError, match="neurodec_decoder.json"):
        ConditionalImageDecoder.from_pretrained(tmp_path / "missing")


def test_latent_space_decoder_and_token_embeddings(demo_pairs, tmp_path):
    images, embeddings = demo_pairs
    config = {**TINY, "space": "latent", "sample_size": 8, "vae_block_out_channels": [8, 16],
              "vae_training_steps": 3, "training_steps": 3}
    decoder = train_image_decoder(images, embeddings, config=config, seed=0, progress=False)
    assert decoder.vae is not None and float(decoder.latent_scale) != 1.0
    generated = decoder.generate(embeddings[:2], seeds=[0, 1], progress=False)
    assert generated.shape == (2, 16, 16, 3) and generated.dtype == np.uint8
    loaded = ConditionalImageDecoder.from_pretrained(decoder.save_pretrained(tmp_path / "latent"))
    np.testing.assert_array_equal(generated, loaded.generate(embeddings[:2], seeds=[0, 1], progress=False))
    # Token embeddings (T, D): projected token by token, T conditioning tokens.
    tokens = embeddings.reshape(len(embeddings), 3, 8)
    token_decoder = train_image_decoder(images, tokens, config={**TINY, "training_steps": 2}, seed=0, progress=False)
    assert token_decoder.condition(tokens[:2]).shape == (2, 3, 16)
    assert token_decoder.generate(tokens[:2], progress=False).shape == (2, 16, 16, 3)


# ------------------------------------------------------------ low-level path
def test_low_level_ridge_matches_scikit_learn(demo_pairs):
    from sklearn.linear_model import Ridge

    images = demo_pairs[0]
    rng = np.random.default_rng(1)
    targets = images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0  # output_size = image size
    features = targets @ rng.standard_normal((targets.shape[1], 30)) + 0.1 * rng.standard_normal((len(images), 30))
    low = LowLevelDecoder.fit(features[:36], images[:36], features[36:42], images[36:42], output_size=16,
                              alphas=[0.1, 10.0, 1000.0])
    assert low.alpha in (0.1, 10.0, 1000.0) and set(low.val_scores) == {0.1, 10.0, 1000.0}
    reference = Ridge(alpha=low.alpha).fit(features[:36], targets[:36]).predict(features[42:])
    expected = np.clip(np.rint((reference.reshape(-1, 16, 16, 3) + 1.0) * 127.5), 0, 255)
    predicted = low.predict(features[42:])
    assert predicted.shape == (6, 16, 16, 3) and predicted.dtype == np.uint8
    assert np.abs(predicted.astype(int) - expected).max() <= 1


def test_low_level_vae_latents_and_img2img_from_it(trained, demo_pairs, tmp_path):
    from diffusers import AutoencoderKL

    images, embeddings = demo_pairs
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = vae.encode(pixels).latent_dist.mean
        direct = vae.decode(latents).sample
    direct = np.clip(np.rint((direct.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5), 0, 255)
    # Features that are the latents themselves: a nearly unpenalised ridge is the identity map.
    features = latents.reshape(len(images), -1).numpy()
    low = LowLevelDecoder.fit(features[:40], images[:40], features[40:], images[40:], vae=vae, alphas=[1e-6])
    # 256 latent values and 40 items: an unpenalised ridge reproduces its training items exactly.
    predicted = low.predict(features[:40])
    assert predicted.shape == (40, 16, 16, 3)
    assert np.abs(predicted.astype(int) - direct[:40]).max() <= 2
    loaded = LowLevelDecoder.from_pretrained(low.save_pretrained(tmp_path / "low"))
    np.testing.assert_array_equal(loaded.predict(features[:40]), predicted)
    predicted = predicted[:8]
    refined = trained.img2img(predicted, embeddings[:8], strength=0.5, seeds=range(8), progress=False)
    assert refined.shape == (8, 16, 16, 3)
    assert pixel_correlation(refined, predicted) > pixel_correlation(refined, predicted[::-1])


# ------------------------------------------------------------ pretrained generators
@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny_generator(request, tmp_path_factory):
    kind = request.param
    folder = tmp_path_factory.mktemp("pipelines") / kind
    torch.manual_seed(0)
    BUILDERS[kind](folder)
    # IP-Adapter weights sit in the same folder here, laid out as in the h94/IP-Adapter repository.
    options = {"ip_adapter": folder} if kind.startswith("ip-adapter") else {}
    return load_generator(kind, folder, **options)


def test_pretrained_generator_images_and_seeds(tiny_generator):
    embeddings = np.random.default_rng(0).standard_normal((3, IMAGE_EMBED_DIM)).astype(np.float32)
    options = dict(num_inference_steps=2, height=32, width=32, progress=False)
    first = tiny_generator.generate(embeddings, seeds=[1, 2, 3], **options)
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, tiny_generator.generate(embeddings, seeds=[1, 2, 3], **options))
    other_seeds = tiny_generator.generate(embeddings, seeds=[4, 5, 6], **options)
    assert np.abs(first.astype(int) - other_seeds).mean() > 2
    # Image 2's noise comes from its seed alone, whatever batch it is generated in.
    alone = tiny_generator.generate(embeddings[2:], seeds=[3], batch_size=1, **options)
    assert np.abs(first[2].astype(int) - alone[0]).max() <= 1
    # The embedding reaches the UNet: same seed, another embedding, another image.
    shifted = tiny_generator.generate(embeddings[::-1].copy(), seeds=[1, 2, 3], **options)
    assert np.abs(first[0].astype(int) - shifted[0]).mean() > 0.5


def test_missing_pretrained_folder_names_it(tmp_path):
    missing = tmp_path / "no-such-unclip"
    with pytest.raises(WeightsNotFoundError, match=f"folder '{missing}' does not exist.*save_pretrained"):
        load_generator("unclip", missing)
    with pytest.raises(WeightsNotFoundError, match="repository 'someone/not-in-the-cache' is not in the local Hugging "
                                                   "Face cache.*huggingface-cli download someone/not-in-the-cache"):
        load_generator("kandinsky22", "someone/not-in-the-cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="folder '.*empty' exists but does not hold it.*model_index.json"):
        load_generator("ip-adapter-sd15", tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown generator 'dalle'.*unclip"):
        load_generator("dalle", missing)


def test_unclip_embeds_images_and_projector_feeds_it(tmp_path, demo_pairs):
    folder = tmp_path / "unclip"
    torch.manual_seed(0)
    build_unclip(folder)
    generator = load_generator("unclip", folder)
    images = np.stack([np.kron(image, np.ones((2, 2, 1), np.uint8)) for image in demo_pairs[0][:12]])  # 32 x 32
    clip = generator.embed_images(images)
    assert clip.shape == (12, IMAGE_EMBED_DIM)
    # The embedding follows the image: the same image twice gives the same embedding, others differ.
    np.testing.assert_allclose(generator.embed_images(images[:2]), clip[:2], atol=1e-5)
    assert np.abs(clip[0] - clip[1]).max() > 1e-3
    projector = EmbeddingProjector.fit(demo_pairs[1][:8], clip[:8], demo_pairs[1][8:12], clip[8:12])
    generated = generator.generate(projector.transform(demo_pairs[1][:2]), num_inference_steps=2, progress=False)
    assert generated.shape == (2, 32, 32, 3)


def test_embedding_projector_against_scikit_learn(tmp_path):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(4)
    x = rng.standard_normal((150, 12))
    y = x @ rng.standard_normal((12, 5)) + 0.3 * rng.standard_normal((150, 5))
    projector = EmbeddingProjector.fit(x[:100], y[:100], x[100:125], y[100:125], alphas=[0.01, 1.0, 100.0, 1e4],
                                       scoring="r2")
    reference = Ridge(alpha=projector.alpha).fit(x[:100], y[:100]).predict(x[125:])
    np.testing.assert_allclose(projector.transform(x[125:]), reference, atol=1e-4)
    assert projector.alpha < 1e4  # the noise is small: a light penalty wins on validation
    loaded = EmbeddingProjector.from_pretrained(projector.save_pretrained(tmp_path / "projector"))
    np.testing.assert_array_equal(loaded.transform(x[125:]), projector.transform(x[125:]))
    normed = EmbeddingProjector.fit(x[:100], y[:100], x[100:125], y[100:125], match_norm=True)
    np.testing.assert_allclose(np.linalg.norm(normed.transform(x[125:]), axis=1),
                               np.linalg.norm(y[:100], axis=1).mean(), rtol=1e-5)
    mlp = EmbeddingProjector.fit(x[:100], y[:100], x[100:125], y[100:125], method="mlp", hidden_dim=32, epochs=150)
    mean_error = np.mean((y[125:] - y[:100].mean(0)) ** 2)
    assert np.mean((mlp.transform(x[125:]) - y[125:]) ** 2) < 0.2 * mean_error
    with pytest.raises(ConfigError, match="'ridge' or 'mlp'"):
        EmbeddingProjector.fit(x[:10], y[:10], x[10:12], y[10:12], method="svm")
