"""fMRI: NIfTI images (nibabel) into trials x voxels.

Three ways to get one row per trial (``options.fmri.method``):

- ``betas``: each volume of a 3D/4D image already is one trial's response (beta maps);
- ``glm``: a 4D series and its events, one regressor per trial (least-squares-all) in a
  design matrix from ``nilearn.glm.first_level.make_first_level_design_matrix``, fitted with
  nilearn's ``run_glm`` (what ``FirstLevelModel`` runs inside);
- ``hrf_shift``: per trial, the mean of the volumes acquired from ``onset + hrf_delay`` up to
  (not including) ``onset + hrf_delay + duration``.

Voxels are those of a mask (a NIfTI file, or ``nilearn.masking.compute_epi_mask``), in
``numpy.argwhere`` order, kept as ``voxel_ijk`` with the mask and the image affine.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from neurodec.errors import ConfigError, EventError, InputFileError, InvalidDataError, MaskError
from neurodec.io import preprocess
from neurodec.io._files import describe_source, read_with
from neurodec.io.events import EventList, StimulusMapping, event_rows, read_events_file
from neurodec.io.meeg import converter_record, recording_labels
from neurodec.io.options import IngestOptions, load_options
from neurodec.store import RecordingData

logger = logging.getLogger("neurodec")


@contextmanager
def _warnings_to_log(where: str):
    """nilearn speaks through ``warnings``; pass what it says to the neurodec logger instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.info("%s: %s", where, warning.message)


def load_image(image) -> tuple[Any, Path | None]:
    """A nibabel image from a path or an image object."""
    if isinstance(image, (str, Path)):
        import nibabel

        path = Path(image)
        return read_with(lambda: nibabel.load(path), path, "NIfTI (nibabel.load)"), path
    return image, None


def repetition_time(image, options: IngestOptions, where: str) -> float:
    """TR in seconds: ``fmri.tr`` when given, else the header's fourth zoom (in its time unit)."""
    if options.fmri.tr is not None:
        return float(options.fmri.tr)
    zooms = image.header.get_zooms()
    _, time_unit = image.header.get_xyzt_units()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        raise ConfigError(f"{where}: the header gives no repetition time; set fmri.tr (seconds)")
    factor = {"msec": 1e-3, "usec": 1e-6}.get(time_unit, 1.0)
    return float(zooms[3]) * factor


def load_mask(mask, image, where: str, opening: int = 2) -> tuple[np.ndarray, str]:
    """A boolean mask that matches the image's grid, and a description of where it came from.

    A mask of another shape or affine raises :class:`MaskError`; with no mask given,
    ``nilearn.masking.compute_epi_mask`` computes one from the image.
    """
    if mask is None:
        from nilearn.masking import compute_epi_mask

        try:
            with _warnings_to_log(where):
                computed = compute_epi_mask(image, opening=opening if opening else False)
        except Exception as error:
            raise MaskError(f"{where}: compute_epi_mask could not find a brain mask ({error}); give fmri.mask") from None
        values, origin = np.asarray(computed.get_fdata()) > 0, "nilearn.masking.compute_epi_mask"
        affine = computed.affine
    else:
        mask_image, mask_path = load_image(mask)
        origin = mask_path.name if mask_path is not None else "mask image"
        values = np.asarray(mask_image.get_fdata())
        if values.ndim == 4 and values.shape[3] == 1:
            values = values[..., 0]
        affine = mask_image.affine
        if values.shape != tuple(image.shape[:3]):
            raise MaskError(
                f"{where}: mask {origin} has shape {values.shape}, the image's volumes have {tuple(image.shape[:3])}"
            )
        if not np.allclose(affine, image.affine, atol=1e-4):
            raise MaskError(
                f"{where}: mask {origin} is on another grid: its affine\n{np.round(affine, 4)}\n"
                f"differs from the image's\n{np.round(image.affine, 4)}"
            )
        values = values > 0
    if not values.any():
        hint = "; try fmri.mask_opening: 0 or give fmri.mask" if mask is None else ""
        raise MaskError(f"{where}: mask {origin} selects no voxel{hint}")
    return values, origin


def _volume_events(n_volumes: int, stem: str) -> EventList:
    names = [stem] if n_volumes == 1 else [f"{stem}_{k:03d}" for k in range(n_volumes)]
    return EventList.build(
        trial_type=names, value=[str(k) for k in range(n_volumes)], origin="volumes",
        extra={"volume": [str(k) for k in range(n_volumes)]},
    )


def _as_events(events, where: str) -> EventList | None:
    if events is None or isinstance(events, EventList):
        return events
    if isinstance(events, (str, Path)):
        return read_events_file(events)
    import pandas as pd

    if isinstance(events, pd.DataFrame):
        columns = {c: events[c].tolist() for c in events.columns}
        return EventList.build(
            onset=columns.get("onset"), duration=columns.get("duration"), trial_type=columns.get("trial_type"),
            value=columns.get("value"), origin="events table",
        )
    raise ConfigError(f"{where}: events must be a path, a DataFrame or an EventList, found {type(events).__name__}")


def glm_betas(series: np.ndarray, tr: float, events: EventList, options: IngestOptions):
    """Least-squares-all betas: ``(n_trials, n_voxels)`` and the design matrix used.

    ``series`` is ``(n_scans, n_voxels)``. Each trial is its own regressor (convolved with
    the HRF) next to the drift terms and the constant of nilearn's design matrix.
    """
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

    settings = options.fmri
    n_scans = series.shape[0]
    frame_times = (np.arange(n_scans) + settings.slice_time_ref) * tr
    names = [f"trial_{i:05d}" for i in range(len(events))]
    table = pd.DataFrame({"onset": events.onset, "duration": events.duration, "trial_type": names})
    design = make_first_level_design_matrix(
        frame_times, table, hrf_model=settings.hrf_model, drift_model=settings.drift_model,
        high_pass=settings.high_pass, drift_order=settings.drift_order,
    )
    labels, results = run_glm(series, design.to_numpy(), noise_model=settings.noise_model, n_jobs=1)
    betas = np.empty((design.shape[1], series.shape[1]))
    for label, result in results.items():
        betas[:, labels == label] = result.theta
    columns = [design.columns.get_loc(name) for name in names]
    return betas[columns], design


def hrf_shift_average(series: np.ndarray, tr: float, events: EventList, options: IngestOptions, where: str) -> np.ndarray:
    """Per trial, the mean of the volumes acquired in ``[onset + delay, onset + delay + length)``.

    Volume ``k`` is acquired at ``(k + slice_time_ref) * tr``; ``length`` is ``fmri.window``
    when set, else the event's duration.
    """
    settings = options.fmri
    acquired = (np.arange(series.shape[0]) + settings.slice_time_ref) * tr
    out = np.empty((len(events), series.shape[1]))
    for trial in range(len(events)):
        start = events.onset[trial] + settings.hrf_delay
        length = settings.window if settings.window is not None else events.duration[trial]
        volumes = np.flatnonzero((acquired >= start - 1e-9) & (acquired < start + length - 1e-9))
        if len(volumes) == 0:
            raise EventError(
                f"{where}: trial {trial} ({events.trial_type[trial]!r}, onset {events.onset[trial]} s) has no volume "
                f"acquired between {start:.3f} s and {start + length:.3f} s (TR {tr} s, {series.shape[0]} volumes); "
                f"set fmri.window to at least the TR or check the onsets"
            )
        out[trial] = series[volumes].mean(axis=0)
    return out


def recording_from_nifti(
    image,
    *,
    events=None,
    mask=None,
    options: IngestOptions | dict | None = None,
    mapping: StimulusMapping | None = None,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
    source: dict[str, Any] | None = None,
) -> RecordingData:
    """A NIfTI image (path or nibabel image) as trials x voxels.

    ``events`` (a TSV path, a DataFrame with ``onset``/``duration``/``trial_type``, or an
    ``EventList``) are the trials of a 4D series, or name the volumes of beta maps (one row
    per volume). Without events, beta volumes are named after the file (``stem`` or
    ``stem_000``...). ``mask`` overrides ``options.fmri.mask``.

    >>> rec = recording_from_nifti("sub-01_bold.nii.gz", events="sub-01_events.tsv",
    ...                            options={"fmri": {"method": "glm"}})      # doctest: +SKIP
    >>> rec.data.shape                                                      # doctest: +SKIP
    (120, 40211)
    """
    options = load_options(options)
    mapping = mapping or StimulusMapping.from_options(options)
    image, path = load_image(image)
    stem = path.name.split(".")[0] if path is not None else "volume"
    where = str(path) if path is not None else "NIfTI image"
    if image.ndim not in (3, 4):
        raise InputFileError(f"{where}: expected a 3D or 4D image, found {image.ndim} dimensions {image.shape}")
    events = _as_events(events if events is not None else options.events.file, where)
    n_volumes = 1 if image.ndim == 3 else image.shape[3]
    method = options.fmri.method
    if method == "auto":
        method = "glm" if image.ndim == 4 and events is not None else "betas"
    if method != "betas" and image.ndim != 4:
        raise ConfigError(f"{where}: fmri.method {method!r} needs a 4D series, found a 3D image")
    if method != "betas" and events is None:
        raise EventError(f"{where}: fmri.method {method!r} needs an events table (onset, duration, trial_type)")

    # nibabel reads voxels lazily: a truncated or corrupt file fails here, named.
    volumes = read_with(image.get_fdata, path, "NIfTI voxel data") if path is not None else image.get_fdata()
    mask_values, mask_origin = load_mask(
        mask if mask is not None else options.fmri.mask, image, where, opening=options.fmri.mask_opening
    )
    voxel_ijk = np.argwhere(mask_values)
    series = volumes[mask_values].T if image.ndim == 4 else volumes[mask_values][None, :]
    if not np.all(np.isfinite(series)):
        bad = int(np.size(series) - np.count_nonzero(np.isfinite(series)))
        raise InvalidDataError(f"{where}: {bad} voxel values inside the mask are NaN or Inf; expected finite values")

    steps: list[dict[str, Any]] = [{"step": "mask", "origin": mask_origin, "n_voxels": int(len(voxel_ijk))}]
    info: dict[str, Any] = {
        "image_shape": [int(s) for s in image.shape],
        "zooms": [float(z) for z in image.header.get_zooms()],
        "mask_origin": mask_origin,
    }
    sfreq = None
    if method == "betas":
        if events is None:
            events = _volume_events(n_volumes, stem)
        elif len(events) != n_volumes:
            raise EventError(f"{where}: {len(events)} events name {n_volumes} beta volumes; give one row per volume")
        events, stimulus_ids, rows = mapping.assign(events, where)
        trials = series[rows]
        steps.append({"step": "betas", "volumes": [int(r) for r in rows]})
    else:
        tr = repetition_time(image, options, where)
        info["tr"] = tr
        sfreq = 1.0 / tr
        if not np.all(np.isfinite(events.onset)):
            raise EventError(f"{where}: every event needs an onset in seconds for fmri.method {method!r}")
        events, stimulus_ids, _ = mapping.assign(events, where)
        if len(events) == 0:
            raise EventError(f"{where}: no trial is left once events are named")
        settings = options.fmri
        if method == "glm":
            with _warnings_to_log(where):
                trials, design = glm_betas(series, tr, events, options)
            steps.append(
                {
                    "step": "glm",
                    "function": "nilearn.glm.first_level.run_glm",
                    "design": "nilearn make_first_level_design_matrix, one regressor per trial (least-squares-all)",
                    "hrf_model": settings.hrf_model,
                    "drift_model": settings.drift_model,
                    "high_pass": settings.high_pass,
                    "drift_order": settings.drift_order,
                    "noise_model": settings.noise_model,
                    "slice_time_ref": settings.slice_time_ref,
                    "tr": tr,
                    "regressors": list(design.columns),
                }
            )
        else:
            trials = hrf_shift_average(series, tr, events, options, where)
            steps.append(
                {
                    "step": "hrf_shift",
                    "hrf_delay": settings.hrf_delay,
                    "window": settings.window,
                    "slice_time_ref": settings.slice_time_ref,
                    "tr": tr,
                }
            )
    if len(events) == 0:
        raise EventError(f"{where}: no trial is left once events are named")
    features = np.ones(trials.shape[1], dtype=bool)
    trials = preprocess.scale_and_clamp(trials, 1, features, [], options, steps)
    if source is None:
        extra = [p for p in (options.events.file, options.fmri.mask if mask is None else mask) if isinstance(p, (str, Path))]
        source = describe_source(path, "nifti", [Path(p) for p in extra]) if path is not None else {
            "file": "", "sha256": "", "format": "in-memory nibabel image"}
    return RecordingData(
        **recording_labels(options, subject, session, run, task),
        modality="fmri",
        layout="fmri",
        data=np.asarray(trials, dtype=np.float32),
        events=event_rows(events, stimulus_ids),
        sfreq=sfreq,
        preprocessing=steps,
        source=source,
        converter=converter_record(f"recording_from_nifti ({method})", options),
        info=info,
        mask=mask_values,
        affine=np.asarray(image.affine, dtype=np.float64),
        voxel_ijk=voxel_ijk.astype(np.int32),
    )
