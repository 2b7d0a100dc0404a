"""Simulated fMRI: single-trial betas of occipito-temporal voxels in MNI space.

The grid is nilearn's bundled MNI152 brain mask (``load_mni152_brain_mask``, shipped in
the wheel; no download) resampled to a coarse resolution and restricted to an
occipito-temporal box. Each subject keeps a different, spatially coherent part of it (a
smooth random field ranks the voxels), so voxel counts differ between subjects.

A voxel's beta for a stimulus is a linear map of the generator's features whose weights
are spatially smooth random fields: posterior voxels are tuned to low-level features
(with a contralateral bias), anterior ones to shape and category. Added noise has a
spatially correlated and an independent part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurodec.simulate.ceiling import signal_fraction
from neurodec.simulate.features import GRID
from neurodec.simulate.parameters import SimulationParameters

# The occipito-temporal box, MNI millimetres.
ROI_MAX_Y_MM = -40.0
ROI_MAX_Z_MM = 30.0
# Voxels behind this y (MNI mm) are mostly early visual cortex; the tuning shifts from
# low-level to high-level features over a few millimetres around it.
EARLY_VISUAL_Y_MM = -75.0
N_NOISE_COMPONENTS = 20
TEMPLATE = "MNI152 brain mask bundled with nilearn (load_mni152_brain_mask)"


@dataclass
class FmriGrid:
    """The coarse MNI grid and the occipito-temporal region every subject samples."""

    brain_mask: np.ndarray
    affine: np.ndarray
    roi: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.brain_mask.shape)

    def world(self, ijk: np.ndarray) -> np.ndarray:
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def make_fmri_grid(resolution_mm: int) -> FmriGrid:
    """The bundled MNI152 brain mask at ``resolution_mm`` and its occipito-temporal box.

    >>> grid = make_fmri_grid(4)
    >>> grid.shape, int(grid.roi.sum()) > 5000
    ((50, 59, 48), True)
    """
    from nilearn.datasets import load_mni152_brain_mask

    image = load_mni152_brain_mask(resolution=resolution_mm)
    brain = np.asarray(image.get_fdata()) > 0.5
    affine = np.asarray(image.affine, dtype=np.float64)
    ijk = np.argwhere(brain)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (xyz[:, 1] < ROI_MAX_Y_MM) & (xyz[:, 2] < ROI_MAX_Z_MM)
    roi = np.zeros_like(brain)
    roi[tuple(ijk[inside].T)] = True
    return FmriGrid(brain_mask=brain, affine=affine, roi=roi)


def _smooth_fields(shape, n_fields: int, sigma_voxels: float, rng: np.random.Generator, where: np.ndarray):
    """``n_fields`` Gaussian-smoothed white-noise volumes, read at ``where`` (voxels x fields),
    each scaled to unit SD over those voxels."""
    from scipy.ndimage import gaussian_filter

    # Smooth only the bounding box of the voxels (plus a margin) to save time.
    low = np.maximum(where.min(axis=0) - int(3 * sigma_voxels) - 1, 0)
    high = np.minimum(where.max(axis=0) + int(3 * sigma_voxels) + 2, shape)
    box = tuple(int(h - l) for l, h in zip(low, high))
    local = where - low
    out = np.empty((len(where), n_fields))
    for k in range(n_fields):
        field = gaussian_filter(rng.standard_normal(box), sigma_voxels, mode="nearest")
        values = field[tuple(local.T)]
        out[:, k] = (values - values.mean()) / (values.std() + 1e-12)
    return out


def select_subject_voxels(grid: FmriGrid, n_voxels: int, sigma_voxels: float, rng: np.random.Generator):
    """The ``n_voxels`` voxels of the region where a smooth random field is highest
    (a subject's coverage and signal dropout), as a boolean volume."""
    candidates = np.argwhere(grid.roi)
    n_voxels = min(n_voxels, len(candidates))
    score = _smooth_fields(grid.shape, 1, 2 * sigma_voxels, rng, candidates)[:, 0]
    keep = candidates[np.argsort(-score)[:n_voxels]]
    mask = np.zeros(grid.shape, dtype=bool)
    mask[tuple(keep.T)] = True
    return mask


@dataclass
class FmriSimulation:
    betas: np.ndarray  # trials x voxels, float32
    mask: np.ndarray
    voxel_ijk: np.ndarray
    signal_fraction: float


def simulate_fmri(
    grid: FmriGrid,
    n_voxels: int,
    low: np.ndarray,
    high: np.ndarray,
    trial_stimulus: np.ndarray,
    parameters: SimulationParameters,
    subject_rng: np.random.Generator,
    shared_rng: np.random.Generator,
) -> FmriSimulation:
    """Single-trial betas (percent signal change) of one subject's voxels."""
    p = parameters
    sigma = p.fmri_smoothness_mm / p.fmri_resolution_mm
    mask = select_subject_voxels(grid, n_voxels, sigma, subject_rng)
    voxel_ijk = np.argwhere(mask)  # C order, as the store expects
    xyz = grid.world(voxel_ijk)
    n_low, n_high = low.shape[1], high.shape[1]

    # Tuning fields drawn on the whole region, so a cohort-wide pattern is shared by
    # voxels at the same MNI position across subjects.
    roi_ijk = np.argwhere(grid.roi)
    position = {tuple(v): i for i, v in enumerate(roi_ijk)}
    rows = np.array([position[tuple(v)] for v in voxel_ijk])
    shared = _smooth_fields(grid.shape, n_low + n_high + 1, sigma, shared_rng, roi_ijk)[rows]
    own = _smooth_fields(grid.shape, n_low + n_high + 1, sigma, subject_rng, voxel_ijk)
    fields = np.sqrt(p.subject_similarity) * shared + np.sqrt(1 - p.subject_similarity) * own

    early = 1.0 / (1.0 + np.exp((xyz[:, 1] - EARLY_VISUAL_Y_MM) / 6.0))
    # Contralateral bias: a feature at a left-field location (grid columns 0-1) weighs
    # more in the right hemisphere (x > 0), and the other way round.
    columns = np.tile(np.arange(GRID), GRID)
    side = np.where(columns < GRID / 2, 1.0, -1.0)
    contralateral = 1.0 / (1.0 + np.exp(-xyz[:, 0:1] * side[None, :] / 8.0))
    low_weights = fields[:, :n_low] * early[:, None]
    low_weights[:, :GRID * GRID] *= 2 * contralateral
    low_weights[:, -GRID * GRID :] *= 2 * contralateral
    high_weights = fields[:, n_low : n_low + n_high] * (1.0 - early)[:, None]

    specific = low @ low_weights.T + high @ high_weights.T  # stimuli x voxels
    specific = (specific - specific.mean(axis=0)) / (specific.std(axis=0) + 1e-12)
    # Voxels differ in how strongly they respond (a smooth gain between ~0.3 and ~1.7).
    gain = np.exp(0.4 * fields[:, -1])
    signal = p.fmri_signal_change_percent * gain[None, :] * (0.5 + specific)

    n_trials = len(trial_stimulus)
    noise_scale = p.fmri_signal_change_percent * np.sqrt(np.mean(gain**2) / p.fmri_snr)
    components = _smooth_fields(grid.shape, N_NOISE_COMPONENTS, 2 * sigma, subject_rng, voxel_ijk)
    components /= np.linalg.norm(components, axis=1, keepdims=True) + 1e-12
    correlated = subject_rng.standard_normal((n_trials, N_NOISE_COMPONENTS)) @ components.T
    independent = subject_rng.standard_normal((n_trials, len(voxel_ijk)))
    noise = noise_scale * (np.sqrt(0.3) * correlated + np.sqrt(0.7) * independent)
    trial_signal = signal[trial_stimulus]
    return FmriSimulation(
        betas=(trial_signal + noise).astype(np.float32),
        mask=mask,
        voxel_ijk=voxel_ijk.astype(np.int32),
        signal_fraction=signal_fraction(trial_signal, noise),
    )
