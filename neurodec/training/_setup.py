"""Everything the trainer checks and builds before the first step: splits, datasets,
transforms, model arguments. Each problem is a one-line neurodec error raised here, before
any training starts (a missing store or target, an empty split, a subject unseen in
training, a model whose output does not match the target, an unknown model argument)."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurodec.config import ExperimentConfig
from neurodec.errors import ConfigError, NeurodecError, SplitError, StoreError

logger = logging.getLogger("neurodec")

SPLITS_FILE = "splits.json"
DATA_FILE = "data.json"
TRANSFORM_FOLDER = "transform"
SIGNAL_ARGUMENTS = ("n_chans", "n_times", "sfreq", "n_subjects", "n_voxels", "n_outputs")


@dataclass
class Prepared:
    """The data side of a run, ready to train on."""

    splits: Any
    splits_record: dict[str, Any]
    train_set: Any
    val_set: Any
    transform: Any
    model_name: str
    model_arguments: dict[str, Any]
    subject_labels: list[str]
    subject_positions: dict[int, np.ndarray] = field(default_factory=dict)
    target_shape: tuple[int, ...] = ()
    val_metric_names: list[str] = field(default_factory=list)
    data_record: dict[str, Any] = field(default_factory=dict)


def _open(config: ExperimentConfig):
    from neurodec.store import open_store

    try:
        return open_store(config.data.store)
    except NeurodecError as error:
        raise type(error)(f"data.store: {error}") from None


def make_splits(config: ExperimentConfig, study) -> tuple[Any, dict[str, Any]]:
    """The train/val/test split the config asks for, and its JSON record for ``splits.json``."""
    from neurodec.data import split_runs, split_stimuli

    split = config.data.split
    recordings = _recording_keys(config, study)
    if split.by == "stimulus":
        splits = split_stimuli(study, val_fraction=split.val_fraction, seed=split.seed, recordings=recordings,
                               test_fraction=split.test_fraction, val_groups=split.val_groups)
        record = {"by": "stimulus", **{part: getattr(splits, part).tolist() for part in ("train", "val", "test")}}
        if not len(splits.val):
            raise SplitError("data.split.val_fraction: the validation split is empty; the trainer selects "
                             "checkpoints on validation data (never on test), so give val_fraction > 0")
    else:
        splits = split_runs(study, recordings, test_runs=split.test_runs, test_fraction=split.test_fraction or 0.2,
                            val_fraction=split.val_fraction, seed=split.seed)
        record = {"by": "runs",
                  **{part: {key: rows.tolist() for key, rows in getattr(splits, part).items()}
                     for part in ("train", "val", "test")}}
        if not any(len(rows) for rows in splits.val.values()):
            raise SplitError("data.split.val_fraction: the validation split is empty (no event falls into it); "
                             "the trainer selects checkpoints on validation data, so give val_fraction > 0")
    record["seed"], record["val_fraction"] = split.seed, split.val_fraction
    return splits, record


def _recording_keys(config: ExperimentConfig, study) -> list[str]:
    """Recordings selected by ``data.recordings``, ``data.subjects`` and ``data.modality``."""
    data = config.data
    found = {recording.key: recording for recording in study.recordings()}
    keys = list(found) if data.recordings is None else list(data.recordings)
    unknown = [key for key in keys if key not in found]
    if unknown:
        raise StoreError(f"data.recordings: {unknown} are not in {study.url}; it holds {list(found)}")
    if data.subjects is not None:
        missing = sorted(set(data.subjects) - set(study.subjects))
        if missing:
            raise StoreError(f"data.subjects: {missing} are not in {study.url}; it holds {study.subjects}")
        keys = [key for key in keys if found[key].subject in set(data.subjects)]
    if data.modality is not None:
        keys = [key for key in keys if found[key].modality == data.modality]
    wanted = ("continuous",) if data.window is not None else ("epoched", "fmri")
    keys = [key for key in keys if found[key].layout in wanted]
    if not keys:
        raise StoreError(f"data: no {' or '.join(wanted)} recording of {study.url} matches (recordings="
                         f"{data.recordings}, subjects={data.subjects}, modality={data.modality}); "
                         f"{'set data.window for continuous recordings' if data.window is None else ''}".rstrip("; "))
    return keys


def make_dataset(config: ExperimentConfig, study, splits, part: str, *, average: bool):
    from neurodec.data import TrialDataset, WindowDataset

    data = config.data
    common = dict(recordings=_recording_keys(config, study), **splits.selection(part), average_repetitions=average,
                  target=data.target, cache_dir=data.cache_dir)
    try:
        if data.window is not None:
            return WindowDataset(study, tmin=data.window.tmin, tmax=data.window.tmax, shift=data.window.shift,
                                 **common)
        return TrialDataset(study, voxel_batches=data.voxel_batches, **common)
    except SplitError as error:
        raise SplitError(f"split {part!r}: {error}") from None


def build_transform(config: ExperimentConfig):
    """The configured transforms as one (unfitted) transform, or None."""
    from neurodec.data.transforms import Compose, PerSubject, create_transform

    steps = []
    for spec in config.data.transforms:
        transform = create_transform(spec.name, **spec.model_dump(exclude={"name", "per_subject"}))
        steps.append(PerSubject(transform) if spec.per_subject and transform.needs_fit else transform)
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)


def _voxel_counts(study, keys: list[str], subject_labels: list[str]) -> list[int]:
    counts = {}
    for key in keys:
        recording = study.recording(key)
        counts.setdefault(recording.subject, int(recording.data.shape[-1]))
    # Subjects outside the selection keep a placeholder adapter (their index exists in the store).
    return [counts.get(subject, 1) for subject in subject_labels]


def model_arguments(config: ExperimentConfig, study, train_set, target_shape: tuple[int, ...]) -> dict[str, Any]:
    """The model's constructor arguments: the config's, with signal arguments filled from the data."""
    from neurodec.errors import RegistryError
    from neurodec.models import get_model_class

    try:
        model_class = get_model_class(config.model.name)
    except RegistryError as error:
        raise RegistryError(f"model.name: {error}") from None
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
    given = config.model.arguments()
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ConfigError(f"model: {', '.join('model.' + k for k in unknown)} not accepted by "
                          f"'{config.model.name}' ({model_class.__name__}); accepted: {sorted(accepted)}")
    filled: dict[str, Any] = {}
    if model_class.input_kind == "fmri":
        filled["n_voxels"] = _voxel_counts(study, train_set.recording_keys, train_set.subject_labels)
        filled["n_subjects"] = len(train_set.subject_labels)
    else:
        shape = train_set.brain_shape
        filled.update(n_chans=int(shape[0]), n_times=int(shape[1]), sfreq=float(train_set.sfreq),
                      n_subjects=len(train_set.subject_labels))
    if len(target_shape) == 1:
        filled["n_outputs"] = int(target_shape[0])
    arguments = {key: value for key, value in filled.items() if key in accepted}
    arguments.update(given)
    if "n_outputs" in accepted and "n_outputs" not in arguments:
        raise ConfigError(f"model.n_outputs: the target '{config.data.target}' has shape {target_shape} per "
                          f"stimulus, so n_outputs cannot be inferred; set it")
    return arguments


def subject_positions(study, keys: list[str], subject_labels: list[str]) -> dict[int, np.ndarray]:
    """Each selected subject's sensor positions (head frame, metres), for encoders that need them."""
    positions = {}
    for key in keys:
        recording = study.recording(key)
        index = subject_labels.index(recording.subject)
        if index in positions:
            continue
        if recording.sensor_positions is None:
            raise StoreError(f"{study.url} {key}: the model needs sensor positions (field sensor_positions) "
                             f"and the recording has none")
        positions[index] = np.asarray(recording.sensor_positions, dtype=np.float32)
    return positions


def check_subjects(train_set, val_set) -> None:
    trained = set(train_set.present_subjects())
    unseen = sorted(set(val_set.present_subjects()) - trained)
    if unseen:
        labels = [train_set.subject_labels[s] for s in unseen]
        raise SplitError(f"validation holds subjects {labels} that have no training trials; subject-specific "
                         f"weights would stay untrained (select them out with data.subjects, or train on them)")


def validation_metric_names(config: ExperimentConfig, val_set) -> list[str]:
    """The ``val/...`` metrics validation will report, by the rules of evaluate_retrieval."""
    from neurodec.metrics import full_set_name, n_way_name

    options = config.train.validation
    per_subject = np.bincount(np.asarray(val_set.subject_index))
    smallest = int(per_subject[per_subject > 0].min())
    names = ["val/loss"]
    for n_way in options.n_ways:
        if n_way <= smallest:
            names += [f"val/{n_way_name(n_way, k)}" for k in options.top_ks if k < n_way]
    names += [f"val/{full_set_name(k)}" for k in options.full_set_top_ks]
    return names


def prepare(config: ExperimentConfig, run_dir: Path | None = None, fit_transform: bool = True) -> Prepared:
    """Check the config against the store and build the training and validation data.

    With ``run_dir`` holding a fitted transform (a resumed run), that one is loaded instead
    of fitting again. The test split is recorded (its stimulus ids) but never loaded.
    """
    from neurodec.data.transforms import load_transform

    study = _open(config)
    if config.data.target not in study.target_keys:
        raise StoreError(f"data.target: {study.url} has no targets {config.data.target!r}; it holds "
                         f"{study.target_keys or 'none'} (compute them with neurodec.targets)")
    target_shape = tuple(study.target_shape(config.data.target)[1:])
    splits, record = make_splits(config, study)
    train_set = make_dataset(config, study, splits, "train", average=config.data.average_train_repetitions)
    val_set = make_dataset(config, study, splits, "val", average=config.data.average_val_repetitions)
    check_subjects(train_set, val_set)
    if config.data.subjects is not None:
        trained = {train_set.subject_labels[s] for s in train_set.present_subjects()}
        missing = sorted(set(config.data.subjects) - trained)
        if missing:
            raise SplitError(f"data.subjects: {missing} have no training trials in the selected recordings")
    if len(train_set) < config.train.batch_size and config.train.drop_last:
        raise SplitError(f"split 'train' holds {len(train_set)} items, fewer than train.batch_size="
                         f"{config.train.batch_size} (with train.drop_last no batch would be drawn)")

    transform = None
    saved = None if run_dir is None else Path(run_dir) / TRANSFORM_FOLDER
    if saved is not None and (saved / "transform.json").exists():
        transform = load_transform(saved)
    elif config.data.transforms and fit_transform:
        transform = build_transform(config).fit(train_set)  # training trials only
    train_set.transform = val_set.transform = transform

    arguments = model_arguments(config, study, train_set, target_shape)
    from neurodec.models import get_model_class

    positions = {}
    if hasattr(get_model_class(config.model.name), "set_subject_positions"):
        positions = subject_positions(study, train_set.recording_keys, train_set.subject_labels)
    names = validation_metric_names(config, val_set)
    if config.train.selection_metric not in names:
        raise ConfigError(f"train.selection_metric: {config.train.selection_metric!r} will not be computed on "
                          f"this validation split ({len(val_set)} items); available: {names}")
    data_record = {
        "store": study.url,
        "target": config.data.target,
        "target_shape": list(target_shape),
        "subject_labels": list(train_set.subject_labels),
        "recordings": list(train_set.recording_keys),
        "brain_shape": None if train_set.brain_shape is None else list(train_set.brain_shape),
        "sfreq": train_set.sfreq,
        "n_items": {"train": len(train_set), "val": len(val_set)},
        "train": train_set.describe(),
        "val": val_set.describe(),
    }
    return Prepared(splits=splits, splits_record=record, train_set=train_set, val_set=val_set, transform=transform,
                    model_name=config.model.name, model_arguments=arguments,
                    subject_labels=list(train_set.subject_labels), subject_positions=positions,
                    target_shape=target_shape, val_metric_names=names, data_record=data_record)


def write_records(prepared: Prepared, run_dir: Path) -> None:
    """``splits.json``, ``data.json`` and the fitted ``transform/`` in the run folder."""
    from neurodec.training._logs import _write_text_atomically

    _write_text_atomically(run_dir / SPLITS_FILE, json.dumps(prepared.splits_record, indent=1))
    _write_text_atomically(run_dir / DATA_FILE, json.dumps(prepared.data_record, indent=1, default=str))
    if prepared.transform is not None and not (run_dir / TRANSFORM_FOLDER / "transform.json").exists():
        prepared.transform.save(run_dir / TRANSFORM_FOLDER)
