"""The generator's image features: what the simulated brain responds to.

They are deliberately unlike a generic image embedding (a linear projection of the
pixels, such as PCA or the first layer of a network): every feature is a nonlinear
function of the pixels (energies, logarithms, thresholds, labels), so a linear map from
such an embedding explains less than half of their variance (tested), while the
responses still carry the images' category and appearance.

* ``contrast_energy`` (n, 16): log of local contrast energy, the squared outputs of
  quadrature Gabor pairs (4 orientations, 2 scales) pooled over a 4 x 4 grid of
  retinotopic locations, divisively normalised by the image's mean energy.
* ``orientation_energy`` (n, 16): in each quadrant of the image, the share of the energy
  carried by each of 4 orientations.
* ``luminance_energy`` (n, 16): log of the local energy of luminance about mid-grey on
  the same 4 x 4 grid, divisively normalised by the image's mean.
* ``shape`` (n, 14): descriptors of the figure (the thresholded luminance): area, log Hu
  moments, eccentricity, solidity, compactness, number of parts, symmetry, edge density,
  spectral slope and luminance entropy.
* ``category`` (n, 8), only when categories are given: a fixed random code per
  category, made of a shared code for its group (digits, faces, non-faces, photographs)
  plus a code for the category itself.

Low-level features (``contrast_energy``, ``orientation_energy``, ``luminance_energy``)
drive the early occipital response; ``shape`` and ``category`` the later one.

The responses are driven by :func:`generator_features`: these features plus
*conjunctions*, products of pairs of them (a response to a contour of one orientation at
one place *and* another elsewhere; to a shape feature *and* a category). Products are far
less linearly predictable from an image embedding than their factors: with them, a ridge
from the demo's pretrained EfficientNet-Lite0 embeddings explains less than half of the
generator's feature variance (tested), so a decoder has to learn a nonlinear mapping.
"""

from __future__ import annotations

import zlib

import numpy as np

LOW_LEVEL_FEATURES = ("contrast_energy", "orientation_energy", "luminance_energy")
HIGH_LEVEL_FEATURES = ("shape", "category")
GRID = 4
N_ORIENTATIONS = 4
CATEGORY_DIMENSIONS = 8
# Conjunction features per original feature, in each of the early and late groups.
CONJUNCTIONS_PER_FEATURE = 3
# Gabor wavelengths in pixels for a 64-pixel image; scaled with the image size.
WAVELENGTHS = (4.0, 8.0)
_BATCH = 128


def luminance(images: np.ndarray) -> np.ndarray:
    """Relative luminance in [0, 1] of uint8 images (n, h, w[, 3])."""
    values = np.asarray(images, dtype=np.float32) / 255.0
    if values.ndim == 4:
        values = values[..., :3] @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return values


def _gabor_bank(size: int) -> np.ndarray:
    """Complex Gabor filters in the Fourier domain: (orientations * scales, size, size)."""
    frequencies = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    bank = []
    for wavelength in WAVELENGTHS:
        wavelength = wavelength * size / 64.0
        centre = 1.0 / wavelength
        bandwidth = centre / 2.5
        for k in range(N_ORIENTATIONS):
            theta = np.pi * k / N_ORIENTATIONS
            u = fx * np.cos(theta) + fy * np.sin(theta)
            v = -fx * np.sin(theta) + fy * np.cos(theta)
            # One-sided Gaussian in frequency: its inverse transform is the complex
            # (quadrature) pair, whose squared modulus is the phase-invariant energy.
            bank.append(np.exp(-((u - centre) ** 2 + v**2) / (2 * bandwidth**2)))
    return np.stack(bank).astype(np.complex64)


def _pool(maps: np.ndarray, cells: int) -> np.ndarray:
    """Mean over a ``cells x cells`` grid of the last two axes."""
    *lead, height, width = maps.shape
    trimmed = maps[..., : height - height % cells, : width - width % cells]
    shaped = trimmed.reshape(*lead, cells, trimmed.shape[-2] // cells, cells, trimmed.shape[-1] // cells)
    return shaped.mean(axis=(-3, -1))


def _energy_features(lum: np.ndarray) -> dict[str, np.ndarray]:
    n, size, _ = lum.shape
    bank = _gabor_bank(size)
    contrast, orientation, luminance_energy = [], [], []
    for start in range(0, n, _BATCH):
        block = lum[start : start + _BATCH]
        spectrum = np.fft.fft2(block - block.mean(axis=(1, 2), keepdims=True)).astype(np.complex64)
        responses = np.fft.ifft2(spectrum[:, None] * bank[None])
        energy = (responses.real**2 + responses.imag**2).reshape(
            len(block), len(WAVELENGTHS), N_ORIENTATIONS, size, size
        )
        # Divisive normalisation by the image's mean energy (plus a constant) makes the
        # local code depend on relative, not absolute, contrast, as in V1.
        normaliser = energy.mean(axis=(1, 2, 3, 4), keepdims=True) + 1e-3
        local = _pool(energy.sum(axis=(1, 2)), GRID)
        contrast.append(np.log(local / normaliser[:, 0, 0] + 0.05).reshape(len(block), -1))
        quadrant = _pool(energy.sum(axis=1), 2)  # (n, orientations, 2, 2)
        # Shares sum to 1; a quadrant without any structure has equal shares.
        share = (quadrant + 1e-6) / (quadrant.sum(axis=1, keepdims=True) + N_ORIENTATIONS * 1e-6)
        orientation.append(share.transpose(0, 2, 3, 1).reshape(len(block), -1))
        # Energy of luminance about mid-grey, normalised like the contrast energy.
        deviation = (block - 0.5) ** 2
        relative = _pool(deviation, GRID) / (deviation.mean(axis=(1, 2))[:, None, None] + 0.01)
        luminance_energy.append(np.log(relative + 0.05).reshape(len(block), -1))
    return {
        "contrast_energy": np.concatenate(contrast).astype(np.float64),
        "orientation_energy": np.concatenate(orientation).astype(np.float64),
        "luminance_energy": np.concatenate(luminance_energy).astype(np.float64),
    }


def _shape_descriptors(image: np.ndarray) -> np.ndarray:
    from skimage.filters import sobel, threshold_otsu
    from skimage.measure import label, moments_central, moments_hu, moments_normalized, regionprops

    size = image.shape[0]
    values = np.zeros(14)
    if np.ptp(image) < 1e-6:
        return values
    figure = image > threshold_otsu(image)
    if figure.mean() > 0.5:  # the figure is the minority phase
        figure = ~figure
    area = figure.mean()
    labels = label(figure)
    n_parts = labels.max()
    values[0] = area
    values[1] = np.log1p(n_parts)
    if n_parts:
        regions = regionprops(labels)
        largest = max(regions, key=lambda region: region.area)
        values[2] = largest.eccentricity
        values[3] = largest.solidity
        values[4] = np.log1p(largest.perimeter**2 / (4 * np.pi * largest.area))
        hu = moments_hu(moments_normalized(moments_central(figure.astype(np.float64), order=3), order=3))
        values[5:9] = np.sign(hu[:4]) * np.log10(np.abs(hu[:4]) + 1e-12)
    values[9] = np.corrcoef(image.ravel(), image[:, ::-1].ravel())[0, 1]
    values[10] = np.corrcoef(image.ravel(), image[::-1, :].ravel())[0, 1]
    edges = sobel(image)
    values[11] = np.mean(edges > 0.1)
    # Slope of the radially averaged amplitude spectrum in log-log coordinates.
    amplitude = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean())))
    yy, xx = np.indices(amplitude.shape)
    radius = np.hypot(yy - size // 2, xx - size // 2).astype(int)
    radial = np.bincount(radius.ravel(), amplitude.ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    frequencies = np.arange(2, size // 2)
    values[12] = np.polyfit(np.log(frequencies), np.log(radial[frequencies] + 1e-6), 1)[0]
    histogram = np.histogram(image, bins=16, range=(0.0, 1.0))[0] / image.size
    values[13] = -np.sum(histogram[histogram > 0] * np.log(histogram[histogram > 0]))
    return values


def category_code(category: str) -> np.ndarray:
    """The fixed code of one category: its group's code plus its own (unit norm).

    Derived from a checksum of the names, so it does not depend on the other images.
    """
    from neurodec.simulate.images import category_group

    def code(name: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(name.encode())).standard_normal(CATEGORY_DIMENSIONS)

    vector = 0.7 * code("group:" + category_group(category)) + code("category:" + category)
    return vector / np.linalg.norm(vector)


def image_features(images: np.ndarray, categories: list[str] | None = None) -> dict[str, np.ndarray]:
    """The generator's features of each image (a pure function of each image and its label).

    ``images``: uint8 (n, h, w, 3) or (n, h, w), square. Returns float64 arrays with one
    row per image; ``category`` only when ``categories`` are given.

    >>> from neurodec.simulate import load_demo_images
    >>> demo = load_demo_images(8)
    >>> features = image_features(demo.images, demo.category)
    >>> {name: value.shape for name, value in features.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'contrast_energy': (8, 16), 'orientation_energy': (8, 16), 'luminance_energy': (8, 16),
     'shape': (8, 14), 'category': (8, 8)}
    """
    lum = luminance(images)
    if lum.ndim != 3 or lum.shape[1] != lum.shape[2]:
        raise ValueError(f"images must be (n, size, size[, 3]); found shape {np.shape(images)}")
    features = _energy_features(lum)
    features["shape"] = np.stack([_shape_descriptors(image) for image in lum.astype(np.float64)])
    if categories is not None:
        if len(categories) != len(lum):
            raise ValueError(f"{len(categories)} categories for {len(lum)} images")
        features["category"] = np.stack([category_code(c) for c in categories])
    return features


def standardise(features: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None = None):
    """Z-score each feature column with the mean and SD of ``reference`` (default: itself)."""
    reference = features if reference is None else reference
    out = {}
    for name, values in features.items():
        mean = reference[name].mean(axis=0)
        scale = reference[name].std(axis=0)
        out[name] = (values - mean) / np.where(scale > 1e-12, scale, 1.0)
    return out


def conjunctions(values: np.ndarray, n: int, name: str) -> np.ndarray:
    """``n`` standardised products of fixed random pairs of distinct columns of ``values``.

    The pairs come from a checksum of ``name``, so they are the same for every cohort.
    """
    rng = np.random.default_rng(zlib.crc32(f"conjunctions:{name}".encode()))
    first = rng.integers(0, values.shape[1], n)
    second = (first + 1 + rng.integers(0, values.shape[1] - 1, n)) % values.shape[1]
    products = values[:, first] * values[:, second]
    scale = products.std(axis=0)
    return (products - products.mean(axis=0)) / np.where(scale > 1e-12, scale, 1.0)


def generator_features(standardised: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The matrices that drive the early and the late responses, from standardised features.

    ``early``: the low-level features and their conjunctions. ``late``: the shape
    descriptors, conjunctions of shape and category, then the category code itself (its
    columns last, where the late tuning gives them extra weight).
    """
    low = np.concatenate([standardised[name] for name in LOW_LEVEL_FEATURES], axis=1)
    shape_and_category = np.concatenate([standardised["shape"], standardised["category"]], axis=1)
    early = np.concatenate([low, conjunctions(low, CONJUNCTIONS_PER_FEATURE * low.shape[1], "early")], axis=1)
    late = np.concatenate(
        [
            standardised["shape"],
            conjunctions(shape_and_category, CONJUNCTIONS_PER_FEATURE * shape_and_category.shape[1], "late"),
            standardised["category"],
        ],
        axis=1,
    )
    return early, late
