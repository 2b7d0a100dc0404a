"""Simulated sensor arrays: a 64-channel EEG cap and a whole-head magnetometer array.

Both are described as MNE ``Info`` objects so MNE's forward model can use them as is.

* EEG: the BioSemi 64 template montage (``mne.channels.make_standard_montage``), each
  electrode displaced by a small random amount along the scalp for each subject (caps
  never sit exactly on the template positions).
* MEG: point magnetometers (``FIFFV_COIL_POINT_MAGNETOMETER``) on vertices of MNE's
  bundled Neuromag helmet surface (``mne/data/helmets/306m.fif.gz``, device frame),
  spread evenly by farthest-point sampling, each oriented along the helmet's outward
  normal. Each subject's head sits in the helmet with a small random rotation and
  translation (``dev_head_t``).

The head is MNE's three-shell sphere model fitted to the template montage (radius
95 mm, centre 40 mm above the head frame's origin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

EEG_MONTAGE = "biosemi64"
MEG_HELMET = "306m"
# The smallest gap allowed between a magnetometer and the scalp sphere, metres.
MIN_SENSOR_GAP_M = 0.006


@dataclass(frozen=True)
class HeadSphere:
    """The spherical head: centre (head frame, metres) and scalp radius (metres)."""

    centre: tuple[float, float, float]
    radius: float

    @property
    def brain_radius(self) -> float:
        """Radius of the innermost shell of ``mne.make_sphere_model`` (90% of the scalp)."""
        return 0.90 * self.radius

    def conductor(self):
        import mne

        return mne.make_sphere_model(r0=np.asarray(self.centre), head_radius=self.radius, verbose=False)


def template_montage():
    import mne

    return mne.channels.make_standard_montage(EEG_MONTAGE)


def head_sphere() -> HeadSphere:
    """The sphere fitted to the template EEG montage (what every subject's head is)."""
    import mne

    info = mne.create_info(template_montage().ch_names, 100.0, "eeg")
    info.set_montage(template_montage(), verbose=False)
    radius, centre, _ = mne.bem.fit_sphere_to_headshape(info, dig_kinds=("eeg",), units="m", verbose=False)
    return HeadSphere(centre=tuple(float(c) for c in centre), radius=float(radius))


def _random_rotation(rng: np.random.Generator, sd_degrees: float) -> np.ndarray:
    """A rotation about a random axis by a normally distributed angle (Rodrigues)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.normal(0.0, sd_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def make_eeg_info(
    sfreq: float = 200.0,
    *,
    electrode_jitter_m: float = 0.0,
    rng: np.random.Generator | None = None,
):
    """MNE ``Info`` of a 64-channel BioSemi cap, electrodes jittered along the scalp.

    Each electrode moves by a normal random displacement of SD ``electrode_jitter_m``
    tangential to the head sphere and keeps its distance to the centre.

    >>> info = make_eeg_info(200.0)
    >>> len(info.ch_names), info["chs"][0]["loc"][:3].round(3).tolist()
    (64, [-0.029, 0.09, 0.037])
    """
    import mne

    montage = template_montage()
    # The template's positions lie on a sphere in the montage's own frame; set_montage
    # moves them into the head frame through the fiducials, jittered or not.
    positions = montage.get_positions()
    names = list(montage.ch_names)
    ch_pos = np.array([positions["ch_pos"][name] for name in names], dtype=np.float64)
    if electrode_jitter_m > 0:
        if rng is None:
            raise ValueError("make_eeg_info: electrode_jitter_m > 0 needs an rng")
        centre = _fit_sphere_centre(ch_pos)
        radial = ch_pos - centre
        distance = np.linalg.norm(radial, axis=1, keepdims=True)
        step = rng.normal(0.0, electrode_jitter_m, size=ch_pos.shape)
        step -= np.sum(step * radial, axis=1, keepdims=True) * radial / distance**2
        moved = radial + step
        ch_pos = centre + moved * distance / np.linalg.norm(moved, axis=1, keepdims=True)
    montage = mne.channels.make_dig_montage(
        ch_pos=dict(zip(names, ch_pos)),
        nasion=positions["nasion"],
        lpa=positions["lpa"],
        rpa=positions["rpa"],
        coord_frame="unknown",
    )
    info = mne.create_info(names, float(sfreq), "eeg")
    info.set_montage(montage, verbose=False)
    return info


def helmet_surface(name: str = MEG_HELMET):
    """Vertices and outward normals (device frame, metres) of one of MNE's helmet surfaces."""
    import mne

    path = os.path.join(os.path.dirname(mne.__file__), "data", "helmets", f"{name}.fif.gz")
    surface = mne.read_bem_surfaces(path, verbose=False)[0]
    vertices = np.asarray(surface["rr"], dtype=np.float64)
    normals = np.asarray(surface["nn"], dtype=np.float64)
    centre = _fit_sphere_centre(vertices)
    outward = np.sign(np.sum((vertices - centre) * normals, axis=1, keepdims=True))
    return vertices, normals * np.where(outward == 0, 1.0, outward)


def _fit_sphere_centre(points: np.ndarray) -> np.ndarray:
    design = np.c_[2 * points, np.ones(len(points))]
    solution = np.linalg.lstsq(design, np.sum(points**2, axis=1), rcond=None)[0]
    return solution[:3]


def _farthest_points(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` points spread evenly, starting from the top-most (deterministic)."""
    chosen = [int(np.argmax(points[:, 2]))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return np.sort(np.array(chosen))


def _coil_frame(normal: np.ndarray) -> np.ndarray:
    """Rows ex, ey, ez of a right-handed frame whose ez is the coil normal."""
    ez = normal / np.linalg.norm(normal)
    helper = np.array([1.0, 0.0, 0.0]) if abs(ez[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    ex = np.cross(helper, ez)
    ex /= np.linalg.norm(ex)
    return np.stack([ex, np.cross(ez, ex), ez])


def make_meg_info(
    sfreq: float = 200.0,
    *,
    n_sensors: int = 128,
    head_rotation_sd_deg: float = 0.0,
    head_translation_sd_m: float = 0.0,
    rng: np.random.Generator | None = None,
    sphere: HeadSphere | None = None,
):
    """MNE ``Info`` of a whole-head array of point magnetometers in a Neuromag helmet.

    Sensors sit on ``n_sensors`` evenly spread vertices of MNE's ``306m`` helmet surface
    (device frame), oriented along its outward normal; ``loc`` holds position and
    orientation as MNE expects (``loc[9:12]`` is the normal). ``dev_head_t`` centres the
    helmet on the head sphere, then turns and shifts the head by a random amount.

    >>> info = make_meg_info(200.0, n_sensors=100)
    >>> len(info.ch_names), info.get_channel_types()[0], int(info["chs"][0]["coil_type"])
    (100, 'mag', 2000)
    """
    import mne
    from mne.io.constants import FIFF
    from mne.transforms import Transform, apply_trans

    sphere = sphere or head_sphere()
    vertices, normals = helmet_surface()
    if not 8 <= n_sensors <= len(vertices):
        raise ValueError(f"n_sensors must be in [8, {len(vertices)}] (helmet vertices), found {n_sensors}")
    chosen = _farthest_points(vertices, n_sensors)
    positions, orientations = vertices[chosen], normals[chosen]

    # Device -> head: the helmet's centre goes to the head sphere's centre, then the
    # subject's own pose (rotation about that centre, then a shift). Poses that would
    # put a sensor inside the scalp (plus a margin) are drawn again.
    helmet_centre = _fit_sphere_centre(vertices)
    head_centre = np.asarray(sphere.centre)
    random_pose = head_rotation_sd_deg > 0 or head_translation_sd_m > 0
    if random_pose and rng is None:
        raise ValueError("make_meg_info: a random head pose needs an rng")
    for _attempt in range(100):
        rotation, translation = np.eye(3), np.zeros(3)
        if random_pose:
            rotation = _random_rotation(rng, head_rotation_sd_deg)
            translation = rng.normal(0.0, head_translation_sd_m, size=3)
        device_to_head = np.eye(4)
        device_to_head[:3, :3] = rotation
        device_to_head[:3, 3] = head_centre + translation - rotation @ helmet_centre
        gap = np.linalg.norm(apply_trans(device_to_head, positions) - head_centre, axis=1) - sphere.radius
        if gap.min() >= MIN_SENSOR_GAP_M:
            break
    else:
        raise ValueError(
            f"make_meg_info: no head pose in 100 draws keeps every sensor {MIN_SENSOR_GAP_M * 1000:.0f} mm "
            f"from the scalp; use a smaller head rotation or translation"
        )

    names = [f"MAG{i + 1:03d}" for i in range(n_sensors)]
    info = mne.create_info(names, float(sfreq), "mag")
    with info._unlock():
        info["dev_head_t"] = Transform("meg", "head", device_to_head)
    for channel, position, normal in zip(info["chs"], positions, orientations):
        channel["coil_type"] = FIFF.FIFFV_COIL_POINT_MAGNETOMETER
        channel["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        channel["loc"] = np.concatenate([position, _coil_frame(normal).ravel()])
    return info


def sensor_positions_head(info) -> np.ndarray:
    """Channel positions in the head frame (metres); MEG positions moved by ``dev_head_t``."""
    from mne.io.constants import FIFF
    from mne.transforms import apply_trans

    positions = np.array([channel["loc"][:3] for channel in info["chs"]], dtype=np.float64)
    in_device = np.array([channel["coord_frame"] == FIFF.FIFFV_COORD_DEVICE for channel in info["chs"]])
    if in_device.any():
        positions[in_device] = apply_trans(info["dev_head_t"], positions[in_device])
    return positions
