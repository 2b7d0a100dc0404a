"""Real stimulus images that ship inside installed packages, so the demo needs no download.

Three sources, all read from files inside the installed wheels:

* scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: bundled, 8 x 8);
* scikit-image's ``lfw_subset.npy`` (200 images of 25 x 25: 100 faces then 100 non-faces);
* crops of scikit-image's sample photographs (``astronaut.png``, ``chelsea.png``, ...),
  read with imageio from ``skimage/data/`` (never through ``skimage.data`` loaders, which
  may download).

Every image becomes ``size x size`` RGB ``uint8``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from neurodec.errors import InputFileError

logger = logging.getLogger("neurodec")

#: Sample photographs of scikit-image that ship in its wheel; crops of them form one
#: category per photograph.
PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "rocket": "rocket.jpg",
    "horse": "horse.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "motorcycle": "motorcycle_left.png",
    "hubble": "hubble_deep_field.jpg",
}

#: Share of each stimulus group in a set; faces and non-faces are capped at the 100
#: images of each that ``lfw_subset.npy`` holds.
GROUP_SHARES = {"digit": 0.45, "face": 0.11, "nonface": 0.11, "photo": 0.33}
STIMULUS_GROUPS = tuple(GROUP_SHARES)


@dataclass
class DemoImages:
    """A set of stimulus images with their labels.

    ``category`` is the fine label (``"digit-3"``, ``"face"``, ``"nonface"`` or the
    photograph's name for crops); ``group`` the superordinate one (``digit``, ``face``,
    ``nonface``, ``photo``); ``origin`` a JSON-able description of where each image came from.
    """

    ids: list[str]
    images: np.ndarray
    category: list[str]
    group: list[str]
    origin: list[dict]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "DemoImages":
        index = np.asarray(index)
        return DemoImages(
            ids=[self.ids[i] for i in index],
            images=self.images[index],
            category=[self.category[i] for i in index],
            group=[self.group[i] for i in index],
            origin=[self.origin[i] for i in index],
        )


def skimage_data_dir() -> str:
    """The folder of sample data inside the installed scikit-image wheel."""
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def category_group(category: str) -> str:
    """The superordinate group of a fine category (``"digit-3"`` -> ``"digit"``)."""
    if category.startswith("digit-"):
        return "digit"
    if category in ("face", "nonface"):
        return category
    if category in PHOTO_FILES:
        return "photo"
    raise ValueError(f"unknown demo category {category!r}")


def _to_rgb_uint8(gray_or_rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` (anti-aliased) and return RGB uint8."""
    from skimage.transform import resize

    image = np.asarray(gray_or_rgb, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    resized = resize(image, (size, size, image.shape[2]), order=1, anti_aliasing=True, preserve_range=True)
    if resized.shape[2] == 1:
        resized = np.repeat(resized, 3, axis=2)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _read_photo(name: str) -> np.ndarray:
    import imageio.v3 as iio

    path = os.path.join(skimage_data_dir(), PHOTO_FILES[name])
    try:
        image = np.asarray(iio.imread(path))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: cannot read scikit-image sample photograph ({error})") from None
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 4:
        # Composite transparent parts (horse.png is a silhouette) on white.
        alpha = image[..., 3:4].astype(np.float64) / 255.0
        image = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.asarray(image, dtype=np.float64)


def _read_lfw() -> np.ndarray:
    path = os.path.join(skimage_data_dir(), "lfw_subset.npy")
    try:
        faces = np.load(path)
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: cannot read scikit-image's lfw_subset ({error})") from None
    if faces.shape[0] != 200:
        raise InputFileError(f"{path}: expected 200 images (100 faces, 100 non-faces), found {faces.shape}")
    return faces


def _group_counts(n_images: int) -> dict[str, int]:
    counts = {group: int(round(share * n_images)) for group, share in GROUP_SHARES.items()}
    counts["face"] = min(counts["face"], 100)
    counts["nonface"] = min(counts["nonface"], 100)
    counts["digit"] += n_images - sum(counts.values())
    return counts


def load_demo_images(n_images: int = 900, *, size: int = 64, seed: int = 0) -> DemoImages:
    """Load ``n_images`` real images from files bundled with scikit-learn and scikit-image.

    About 45% digits, 11% faces, 11% non-faces (from ``lfw_subset.npy``) and 33% random
    crops of twelve sample photographs; the same ``seed`` gives the same images.

    >>> demo = load_demo_images(40, seed=0)
    >>> demo.images.shape, demo.images.dtype
    ((40, 64, 64, 3), dtype('uint8'))
    >>> sorted(set(demo.group))
    ['digit', 'face', 'nonface', 'photo']
    """
    from sklearn.datasets import load_digits

    if n_images < len(GROUP_SHARES):
        raise ValueError(f"n_images must be at least {len(GROUP_SHARES)} (one per group), found {n_images}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A6E5]))
    counts = _group_counts(n_images)
    images, category, group, origin, ids = [], [], [], [], []

    digits = load_digits()
    chosen = np.sort(rng.choice(len(digits.images), size=counts["digit"], replace=False))
    for index in chosen:
        # Digits are 0..16 ink on a dark background; shown as light strokes on black.
        images.append(_to_rgb_uint8(digits.images[index] * (255.0 / 16.0), size))
        category.append(f"digit-{int(digits.target[index])}")
        group.append("digit")
        origin.append({"source": "sklearn.datasets.load_digits", "index": int(index)})
        ids.append(f"digit{int(index):04d}")

    lfw = _read_lfw()
    for label, offset in (("face", 0), ("nonface", 100)):
        chosen = np.sort(rng.choice(100, size=counts[label], replace=False)) + offset
        for index in chosen:
            images.append(_to_rgb_uint8(lfw[index] * 255.0, size))
            category.append(label)
            group.append(label)
            origin.append({"source": "skimage/data/lfw_subset.npy", "index": int(index)})
            ids.append(f"{label}{int(index):03d}")

    names = list(PHOTO_FILES)
    per_photo = np.full(len(names), counts["photo"] // len(names))
    per_photo[: counts["photo"] % len(names)] += 1
    for name, n_crops in zip(names, per_photo):
        if n_crops == 0:
            continue
        photo = _read_photo(name)
        height, width = photo.shape[:2]
        for crop in range(int(n_crops)):
            side = int(rng.uniform(0.3, 0.9) * min(height, width))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            images.append(_to_rgb_uint8(photo[top : top + side, left : left + side], size))
            category.append(name)
            group.append("photo")
            origin.append({"source": f"skimage/data/{PHOTO_FILES[name]}", "crop_top_left_side": [top, left, side]})
            ids.append(f"{name}{crop:03d}")
    logger.debug("loaded %d demo images: %s", len(ids), counts)
    return DemoImages(ids=ids, images=np.stack(images), category=category, group=group, origin=origin)


def assign_split(demo: DemoImages, n_test: int, *, seed: int = 0) -> list[str]:
    """``"train"`` / ``"test"`` per image, the test set drawn evenly from every group."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
    groups = np.asarray(demo.group)
    split = np.array(["train"] * len(demo), dtype=object)
    if not 0 <= n_test < len(demo):
        raise ValueError(f"n_test must be in [0, {len(demo)}), found {n_test}")
    # Largest-remainder allocation of the test set in proportion to group sizes.
    names = sorted(set(groups.tolist()))
    sizes = np.array([np.sum(groups == g) for g in names])
    exact = sizes * n_test / len(demo)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota))[: n_test - quota.sum()]] += 1
    for name, k in zip(names, quota):
        members = np.flatnonzero(groups == name)
        split[rng.choice(members, size=min(k, len(members)), replace=False)] = "test"
    return split.tolist()
