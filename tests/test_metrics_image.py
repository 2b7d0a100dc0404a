"""Image-reconstruction metrics against scikit-image, torchvision, scipy and hand-worked cases."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from neurodec.errors import ConfigError, MetricInputError, RegistryError, TargetError, WeightsNotFoundError
from neurodec.metrics.image import (
    IMAGE_FEATURE_NETWORKS,
    PAPER_NETWORKS,
    SSIM_MINDEYE,
    SSIM_MINDVIDEO,
    MetricUnavailable,
    correlation_distance,
    evaluate_reconstructions,
    format_image_metrics_table,
    load_feature_network,
    locate_feature_weights,
    pixcorr,
    random_derangement,
    ssim_mindeye,
    ssim_mindvideo,
    structural_similarity_batch,
    two_way_identification,
)
from neurodec.metrics.statistics import bootstrap_interval

# Photographs that ship inside scikit-image's wheel (read from its folder: nothing is downloaded).
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def photos(size: int, count: int = len(PHOTOS)) -> np.ndarray:
    """``count`` bundled photographs, centre square crops resized to ``size`` (uint8 (N, size, size, 3))."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    images = []
    for name in PHOTOS[:count]:
        with Image.open(folder / name) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.crop((left, top, left + side, top + side))
            images.append(np.asarray(square.resize((size, size), Image.BICUBIC)))
    return np.stack(images)


def noisy(images: np.ndarray, sd: float, seed: int) -> np.ndarray:
    """The images plus seeded Gaussian noise, as uint8 ("reconstructions" of known quality)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(images + rng.normal(0, sd, images.shape)), 0, 255).astype(np.uint8)


def torchvision_resized(image: np.ndarray, size: int, unit_range: bool = True) -> np.ndarray:
    """(size, size, 3) float64: torchvision's Resize on a float tensor, as MindEye's notebook runs it."""
    from torchvision import transforms

    tensor = torch.from_numpy(image).permute(2, 0, 1).to(torch.float64)
    if unit_range:
        tensor = tensor / 255.0
    resized = transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True)
    return resized(tensor).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    """Four truths at 128 px and noisy reconstructions of them at 96 px (the sizes differ on purpose)."""
    truths = photos(128, 4)
    recons = noisy(photos(96, 4), 30.0, seed=0)
    return recons, truths


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """Empty torch hub and Hugging Face caches, so no weight file can be found by default."""
    import huggingface_hub.constants

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # OpenCLIP's own ~/.cache/clip fallback
    return tmp_path


# ------------------------------------------------------------------------------ PixCorr
def test_pixcorr_matches_torchvision_resize_and_corrcoef(pairs):
    recons, truths = pairs
    expected = [
        np.corrcoef(torchvision_resized(r, 425).ravel(), torchvision_resized(t, 425).ravel())[0, 1]
        for r, t in zip(recons, truths)
    ]
    np.testing.assert_allclose(pixcorr(recons, truths), expected, rtol=0, atol=1e-9)
    # Downsampling (antialiased) too: 500 px to 425.
    big = photos(500, 2)
    np.testing.assert_allclose(
        pixcorr(big, big[::-1]),
        [np.corrcoef(torchvision_resized(a, 425).ravel(), torchvision_resized(b, 425).ravel())[0, 1]
         for a, b in zip(big, big[::-1])],
        rtol=0,
        atol=1e-9,
    )


def test_pixcorr_hand_worked():
    # At 425 px nothing is resized. Truth: rows 0-169 bright (A, 40% of pixels); reconstruction:
    # rows 0-254 bright (B, 60%). Pearson r of two indicators (any affine scaling):
    # (P(AB) - P(A)P(B)) / sqrt(P(A)(1-P(A))P(B)(1-P(B))) = (0.4 - 0.24) / 0.24 = 2/3.
    truth = np.full((1, 425, 425, 3), 20, np.uint8)
    truth[0, :170] = 220
    recon = np.full((1, 425, 425, 3), 5, np.uint8)
    recon[0, :255] = 105
    assert pixcorr(recon, truth)[0] == pytest.approx(2 / 3, abs=1e-12)
    assert pixcorr(255 - truth, truth)[0] == pytest.approx(-1.0, abs=1e-9)


def test_pixcorr_rejects_bad_inputs():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(MetricInputError, match="same number of images"):
        pixcorr(images, images[:1])
    with pytest.raises(MetricInputError, match="dtype uint8"):
        pixcorr(images.astype(np.float32), images)
    with pytest.raises(MetricInputError, match=r"\(N, H, W, 3\)"):
        pixcorr(images[..., 0], images[..., 0])

    # A constant (blank) image has no pattern: scored 0, not an error and not a success.
    noisy_truths = noisy(images, 40.0, seed=1)
    assert pixcorr(images, noisy_truths).tolist() == [0.0, 0.0]
    one_blank = noisy(images, 40.0, seed=2)
    one_blank[1] = 7
    values = pixcorr(one_blank, noisy_truths)
    # ...and leaves the other pairs' values as they are alone.
    assert values[1] == 0.0 and values[0] == pytest.approx(pixcorr(one_blank[:1], noisy_truths[:1])[0], abs=1e-12)
    assert values[0] > 0.05


# ------------------------------------------------------------------------------ SSIM
def test_ssim_mindeye_equals_skimage(pairs):
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    recons, truths = pairs
    expected = [
        structural_similarity(
            rgb2gray(torchvision_resized(r, 425)),
            rgb2gray(torchvision_resized(t, 425)),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for r, t in zip(recons, truths)
    ]
    values = ssim_mindeye(recons, truths, batch_size=3)  # two batches
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6)
    assert 0.3 < values.min() and values.max() < 0.9  # noisy copies: neither chance nor identity


def test_ssim_mindvideo_equals_skimage(pairs):
    from skimage.metrics import structural_similarity

    recons, truths = pairs
    frames = noisy(photos(256, 4), 20.0, seed=2)  # already 256 px: compared as they are
    for recon_set, truth_set, resize in ((recons, truths, True), (frames, photos(256, 4), False)):
        expected = []
        for r, t in zip(recon_set, truth_set):
            a = torchvision_resized(r, 256, unit_range=False) if resize else r.astype(np.float64)
            b = torchvision_resized(t, 256, unit_range=False) if resize else t.astype(np.float64)
            expected.append(structural_similarity(a, b, data_range=255, channel_axis=-1))
        np.testing.assert_allclose(ssim_mindvideo(recon_set, truth_set), expected, rtol=0, atol=1e-6)
    # skimage on the uint8 frames directly (its own float conversion) agrees as well.
    direct = [structural_similarity(r, t, data_range=255, channel_axis=-1) for r, t in zip(frames, photos(256, 4))]
    np.testing.assert_allclose(ssim_mindvideo(frames, photos(256, 4)), direct, rtol=0, atol=1e-6)


def test_ssim_hand_worked():
    images = photos(64, 3)
    np.testing.assert_allclose(ssim_mindeye(images, images), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim_mindvideo(images, images), 1.0, atol=1e-12)

    # MinD-Video recipe, an image against the constant image at its mean. The image repeats a
    # 7 x 7 tile holding 24 pixels of m - d, 24 of m + d and one of m (m = 100, d = 10), so every
    # 7 x 7 window (skimage only scores windows wholly inside the image) holds one whole tile:
    # local mean m, sample variance 49/48 * (48 d^2 / 49) = d^2, and against the constant m the
    # covariance is 0, so SSIM = (2 m m + C1)(0 + C2) / ((m^2 + m^2 + C1)(d^2 + 0 + C2))
    # = C2 / (C2 + d^2) with C2 = (0.03 * 255)^2 = 58.5225: 58.5225 / 158.5225.
    tile = np.array([90] * 24 + [110] * 24 + [100], np.uint8)[np.random.default_rng(3).permutation(49)]
    pattern = np.tile(tile.reshape(7, 7), (37, 37))[:256, :256]
    image = np.repeat(pattern[None, :, :, None], 3, axis=3)
    mean_image = np.full_like(image, 100)
    assert ssim_mindvideo(image, mean_image)[0] == pytest.approx(58.5225 / 158.5225, abs=1e-12)

    # MindEye recipe, two constant grey images a = 51/255 = 0.2 and b = 153/255 = 0.6: variances
    # and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2:
    # (0.24 + 0.0001) / (0.4 + 0.0001) = 0.2401 / 0.4001.
    dark, light = np.full((1, 50, 50, 3), 51, np.uint8), np.full((1, 50, 50, 3), 153, np.uint8)
    assert ssim_mindeye(dark, light)[0] == pytest.approx(0.2401 / 0.4001, abs=1e-9)


def test_structural_similarity_batch_options_equal_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(4)
    a = rng.random((3, 30, 41))
    b = 0.6 * a + 0.4 * rng.random((3, 30, 41))
    for options in (
        {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
        {"gaussian_weights": True, "sigma": 0.8},
        {"win_size": 5},
        {},
    ):
        expected = [structural_similarity(x, y, data_range=1.0, **options) for x, y in zip(a, b)]
        np.testing.assert_allclose(structural_similarity_batch(a, b, data_range=1.0, **options), expected, atol=1e-10)
    with pytest.raises(MetricInputError, match="at least 7 x 7"):
        structural_similarity_batch(a[:, :5, :5], b[:, :5, :5], data_range=1.0)


# ------------------------------------------------------------------------------ 2-way and correlation distance
def test_two_way_identification_hand_worked():
    # Truth features t0, t1, t2 = unit vectors; corr(ti, tj) = -1/2 for i != j (centred: (2,-1,-1)/3 ...).
    truths = np.eye(3)
    recons = np.array(
        [
            [1.0, 0.0, 0.0],  # = t0: r = 1 against t0, -1/2 against t1 and t2: wins both -> 1
            [0.0, 0.0, 1.0],  # = t2: own truth t1 gives -1/2, t0 ties at -1/2 (a failure), t2 gives 1 -> 0
            [2.0, 0.0, 1.0],  # centred (1,-1,0): r = 0 with own t2, sqrt(3)/2 with t0, -sqrt(3)/2 with t1 -> 1/2
        ]
    )
    np.testing.assert_array_equal(two_way_identification(recons, truths), [1.0, 0.0, 0.5])


def test_two_way_identification_matches_mindeye_formulation():
    # MindEye's final_evaluations: r = np.corrcoef(reals, preds)[:n, n:]; success = r < diag(r);
    # per prediction the count over rows, divided by n - 1.
    rng = np.random.default_rng(5)
    truths = rng.standard_normal((40, 3, 5, 5)).astype(np.float32)
    recons = (0.3 * truths + rng.standard_normal(truths.shape)).astype(np.float32)
    n = len(truths)
    r = np.corrcoef(truths.reshape(n, -1), recons.reshape(n, -1))[:n, n:]
    expected = (r < np.diag(r)).sum(axis=0) / (n - 1)
    values = two_way_identification(recons, truths)
    np.testing.assert_allclose(values, expected, atol=0)
    assert 0.6 < values.mean() < 1.0
    with pytest.raises(MetricInputError, match="at least 2 images"):
        two_way_identification(recons[:1], truths[:1])


def test_correlation_distance_matches_scipy():
    from scipy.spatial.distance import correlation

    rng = np.random.default_rng(6)
    truths = rng.standard_normal((6, 50))
    recons = truths + rng.standard_normal((6, 50))
    expected = [correlation(t, r) for t, r in zip(truths, recons)]
    np.testing.assert_allclose(correlation_distance(recons, truths), expected, atol=1e-12)
    with pytest.raises(MetricInputError, match="same"):
        correlation_distance(recons[:, :10], truths)


def test_random_derangement_is_seeded_and_has_no_fixed_point():
    for n in (2, 3, 10, 100):
        order = random_derangement(n, seed=7)
        assert sorted(order.tolist()) == list(range(n))
        assert not np.any(order == np.arange(n))
        np.testing.assert_array_equal(order, random_derangement(n, seed=7))
    assert random_derangement(2).tolist() == [1, 0]
    with pytest.raises(MetricInputError, match="at least 2"):
        random_derangement(1)


# ------------------------------------------------------------------------------ feature networks
def test_unavailable_weights_name_the_missing_file(tmp_path, empty_caches):
    absent = tmp_path / "nowhere" / "alexnet.pth"
    record = locate_feature_weights("alexnet-2", weights=absent)
    assert isinstance(record, MetricUnavailable)
    assert record.text.startswith(f"unavailable: weight file {absent} not found (")
    assert "alexnet-owt-7be5be79.pth" in record.how_to_supply
    with pytest.raises(WeightsNotFoundError, match=str(absent)):
        load_feature_network("alexnet-2", weights=absent)

    # Without an explicit file: the torch hub cache entry under torchvision's file name.
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    expected_files = {
        "alexnet-5": "alexnet-owt-7be5be79.pth",
        "inceptionv3": "inception_v3_google-0cc3c7bd.pth",
        "efficientnet-b1": "efficientnet_b1-c27df63c.pth",
        "swav": "swav_800ep_pretrain.pth.tar",
    }
    for name, file_name in expected_files.items():
        record = locate_feature_weights(name)
        assert record.text.startswith(f"unavailable: weight file {checkpoints / file_name} not found (download ")
    clip = locate_feature_weights("clip-vit-l-14")
    assert clip.text.startswith("unavailable: OpenCLIP ViT-L-14-quickgelu 'openai' weights in the Hugging Face cache (")
    assert "timm/vit_large_patch14_clip_224.openai" in clip.text
    with pytest.raises(RegistryError, match="known networks"):
        locate_feature_weights("vgg16")
    with pytest.raises(ConfigError, match="ship inside"):
        locate_feature_weights("efficientnet-lite0", weights=absent)


def test_weights_found_in_the_hub_cache(empty_caches):
    import torchvision

    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    state = torchvision.models.efficientnet_b1(weights=None).state_dict()
    torch.save(state, checkpoints / "efficientnet_b1-c27df63c.pth")
    assert locate_feature_weights("efficientnet-b1") == str(checkpoints / "efficientnet_b1-c27df63c.pth")


def _swav_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint laid out as facebookresearch/swav's: "module." names plus head and prototypes."""
    state = {f"module.{key}": value for key, value in model.state_dict().items() if not key.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    state["module.prototypes.weight"] = torch.zeros(3000, 128)
    return state


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """``(model, weight file)`` of a seeded torchvision model, written once per architecture."""
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    saved = {}

    def save(builder: str, options: dict, swav_layout: bool = False):
        if builder not in saved:
            torch.manual_seed(1)
            model = getattr(torchvision.models, builder)(weights=None, **options).eval()
            path = folder / f"{builder}.pth"
            torch.save(_swav_checkpoint(model) if swav_layout else model.state_dict(), path)
            saved[builder] = (model, path)
        return saved[builder]

    return save


@pytest.mark.parametrize(
    ("name", "builder", "options", "layer", "size"),
    [
        ("alexnet-2", "alexnet", {}, "features.4", 256),
        ("alexnet-5", "alexnet", {}, "features.11", 256),
        pytest.param(
            "inceptionv3",
            "inception_v3",
            {"aux_logits": True, "transform_input": True, "init_weights": False},
            "avgpool",
            342,
            marks=pytest.mark.slow,
        ),
        pytest.param("efficientnet-b1", "efficientnet_b1", {}, "avgpool", 255, marks=pytest.mark.slow),
        ("swav", "resnet50", {}, "avgpool", 224),
    ],
)
def test_feature_network_reads_local_file_and_matches_torchvision(saved_model, name, builder, options, layer, size):
    # A weight file written here from a seeded model stands in for the published one: the loader
    # must read every tensor from it and give MindEye's features (create_feature_extractor on the
    # same model after MindEye's Resize + Normalize).
    from torchvision import transforms
    from torchvision.models.feature_extraction import create_feature_extractor

    model, path = saved_model(builder, options, swav_layout=name == "swav")
    network = load_feature_network(name, weights=path, device="cpu")
    assert network.weights == str(path)
    images = photos(80, 2)
    features = network.features(images, batch_size=1)  # two batches

    preprocess = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_feature_extractor's note about train/eval graphs
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
        reference = create_feature_extractor(model, [layer])(preprocess(pixels))
    reference = reference[layer].flatten(1).numpy()
    assert features.shape == reference.shape
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())


def test_feature_network_rejects_an_incomplete_file(tmp_path):
    import torchvision

    state = torchvision.models.alexnet(weights=None).state_dict()
    del state["features.3.weight"]
    path = tmp_path / "alexnet-partial.pth"
    torch.save(state, path)
    with pytest.raises(TargetError, match="features.3.weight"):
        load_feature_network("alexnet-2", weights=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TargetError, match="not a readable PyTorch weight file"):
        load_feature_network("alexnet-2", weights=path)


@pytest.fixture(scope="module")
def lite0():
    return load_feature_network("efficientnet-lite0", device="cpu")


def test_efficientnet_lite0_features_identify_images(lite0):
    images = photos(96)
    features = lite0.features(images, batch_size=5)
    assert features.shape == (len(images), 1280) and np.isfinite(features).all()
    np.testing.assert_array_equal(two_way_identification(features, features), 1.0)
    # Each truth paired with another image's features: that image's own truth always beats it.
    order = random_derangement(len(images), seed=0)
    shuffled = two_way_identification(features[order], features)
    assert np.all(shuffled <= (len(images) - 2) / (len(images) - 1))
    assert shuffled.mean() < 0.8


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    truths = photos(64)
    recons = noisy(photos(48), 25.0, seed=8)
    absent = tmp_path_factory.mktemp("absent-weights")
    weights = {name: absent / f"{name}.pth" for name in PAPER_NETWORKS}
    results = evaluate_reconstructions(
        recons,
        truths,
        extra_networks=("efficientnet-lite0",),
        weights=weights,
        n_bootstrap=300,
        seed=3,
        device="cpu",
        batch_size=5,
    )
    return recons, truths, absent, results


def test_evaluate_reconstructions_end_to_end(evaluation):
    recons, truths, absent, results = evaluation
    json.loads(json.dumps(results))  # JSON-ready
    metrics, shuffled = results["metrics"], results["shuffled"]
    assert results["n_images"] == 8
    assert list(metrics) == [
        "PixCorr", SSIM_MINDEYE, SSIM_MINDVIDEO, "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV",
        "2-way (efficientnet-lite0)",
    ]
    assert list(shuffled["metrics"]) == list(metrics)

    pix = metrics["PixCorr"]
    expected = pixcorr(recons, truths)
    np.testing.assert_allclose(pix["per_image"], expected, atol=1e-12)
    assert pix["value"] == pytest.approx(expected.mean())
    interval = bootstrap_interval(expected, n_resamples=300, seed=3)
    assert pix["ci95"] == pytest.approx([interval.low, interval.high])
    assert pix["higher_is_better"] and "425" in pix["recipe"]
    np.testing.assert_allclose(metrics[SSIM_MINDEYE]["per_image"], ssim_mindeye(recons, truths), atol=1e-12)
    np.testing.assert_allclose(metrics[SSIM_MINDVIDEO]["per_image"], ssim_mindvideo(recons, truths), atol=1e-12)

    # The shuffled section: reconstruction order[i] against truth i, a seeded derangement.
    order = np.array(shuffled["recon_for_truth"])
    np.testing.assert_array_equal(order, random_derangement(8, seed=3))
    np.testing.assert_allclose(shuffled["metrics"]["PixCorr"]["per_image"], pixcorr(recons[order], truths), atol=1e-12)
    for name in ("PixCorr", SSIM_MINDEYE, SSIM_MINDVIDEO, "2-way (efficientnet-lite0)"):
        assert shuffled["metrics"][name]["value"] < metrics[name]["value"] - 0.1, name

    # Paper networks whose weights are absent: reported, naming the file, never computed.
    for name, metric in zip(PAPER_NETWORKS, ["AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV"]):
        for section in (metrics, shuffled["metrics"]):
            assert set(section[metric]) == {"unavailable"}
            assert section[metric]["unavailable"].startswith("unavailable: ")
            assert str(absent / f"{name}.pth") in section[metric]["unavailable"]
    assert list(results["networks"]) == ["efficientnet-lite0"]

    two_way = metrics["2-way (efficientnet-lite0)"]
    assert two_way["value"] > 0.7 and two_way["ci95"][0] <= two_way["value"] <= two_way["ci95"][1]


def test_evaluate_reconstructions_rejects_unknown_networks():
    images = photos(32, 2)
    with pytest.raises(ConfigError, match="unknown"):
        evaluate_reconstructions(images, images, networks=("vgg16",), n_bootstrap=0)
    with pytest.raises(ConfigError, match="unknown"):
        evaluate_reconstructions(images, images, networks=(), weights={"alexnet-2": "x.pth"}, n_bootstrap=0)
    with pytest.raises(MetricInputError, match="at least 2"):
        evaluate_reconstructions(images[:1], images[:1], networks=(), n_bootstrap=0)


def test_evaluate_without_networks_or_shuffle():
    images = photos(32, 3)
    results = evaluate_reconstructions(images, images, networks=(), n_bootstrap=0, shuffled_baseline=False)
    assert results["shuffled"] is None
    assert results["metrics"]["PixCorr"]["value"] == pytest.approx(1.0)
    assert results["metrics"]["PixCorr"]["ci95"] is None
    table = format_image_metrics_table(results, "copies")
    assert "shuffled" not in table and "| copies | 1.000 | 1.000 |" in table


def test_image_metrics_table(evaluation):
    _, _, absent, results = evaluation
    table = format_image_metrics_table(results, "noisy copies")
    lines = table.splitlines()
    header = lines[0]
    paper_columns = ("PixCorr ↑", "SSIM ↑ [a]", "Alex(2) ↑", "Alex(5) ↑", "Incep ↑", "CLIP ↑", "Eff ↓", "SwAV ↓")
    for column in paper_columns + ("SSIM ↑ [b]", "2-way (efficientnet-lite0) ↑"):
        assert column in header
    assert header.index("PixCorr") < header.index("Alex(2)") < header.index("SwAV") < header.index("2-way")
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[2:4]}
    assert set(rows) == {"noisy copies", "noisy copies, shuffled pairing (chance)"}
    metrics = results["metrics"]
    real = rows["noisy copies"]
    assert real[0] == f"{metrics['PixCorr']['value']:.3f}"
    assert real[1] == f"{metrics[SSIM_MINDEYE]['value']:.3f}"
    assert real[8] == f"{metrics[SSIM_MINDVIDEO]['value']:.3f}"
    assert real[9] == f"{100 * metrics['2-way (efficientnet-lite0)']['value']:.1f}%"
    assert all(cell.startswith("n/a [") for cell in real[2:8])
    shuffled_pix = results["shuffled"]["metrics"]["PixCorr"]["value"]
    assert rows["noisy copies, shuffled pairing (chance)"][0] == f"{shuffled_pix:.3f}"
    # Both SSIM recipes named, and footnotes naming each missing weight file.
    assert SSIM_MINDEYE in table and SSIM_MINDVIDEO in table
    for name in PAPER_NETWORKS:
        assert str(absent / f"{name}.pth") in table
