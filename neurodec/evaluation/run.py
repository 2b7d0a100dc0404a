"""Evaluate a trained run: load its encoder, embed the test split, score retrieval, compare
with a ridge baseline and chance, and write the report.

A run folder (docs/run-folder.md) holds everything needed to rebuild the exact preprocessing
of training: the resolved config, the split, the fitted transform and the subject indices.
:func:`load_encoder` turns it into a :class:`TrainedEncoder` that embeds new trials;
:func:`evaluate_run` rebuilds the test dataset the way NICE-EEG and MindEye evaluate (test
stimuli, repetitions averaged when the config says so) and runs the protocols of
:func:`neurodec.metrics.evaluate_retrieval`.

Speech runs (windows of continuous recordings around word onsets, docs/speech-evaluation.md)
also get brainmagick's segment retrieval in ``results["speech"]``; a run folder of repeated
seeds (``train.n_seeds``) is evaluated seed by seed and reported with the mean and sd over seeds.

>>> from neurodec.evaluation import evaluate_run, load_encoder, retrieve
>>> results = evaluate_run("runs/fmri-demo")                                 # doctest: +SKIP
>>> results["retrieval"]["fmri / mindeye"]["metrics"]["brain->stimulus"]["pooled"]["300-way top-1"]  # doctest: +SKIP
>>> encoder = load_encoder("runs/fmri-demo")                                 # doctest: +SKIP
>>> brain = encoder.embed(new_trials, subject="01")                          # doctest: +SKIP
>>> retrieve(brain, study.targets("clip"), k=5).ids[0]                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neurodec.errors import (
    ConfigError,
    MetricInputError,
    NeurodecError,
    RunFolderError,
    SplitError,
    StoreError,
    StoreNotFoundError,
    UnknownSubjectError,
)

logger = logging.getLogger("neurodec")

CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
DATA_FILE = "data.json"
TRANSFORM_FOLDER = "transform"
ENCODER_FOLDER = "encoder"
REPORT_FOLDER = "report"
SUMMARY_FILE = "summary.json"
SPLIT_PARTS = ("test", "val")
DEFAULT_N_WAYS = (2, 4, 10, 50, 100, 200, 300)
# Extractors whose weights come from outside the study (a published checkpoint, a file the
# user supplied) rather than from a random initialisation.
_EXTERNAL_EXTRACTORS = {
    "image_pretrained_cnn": "ImageNet-pretrained CNN weights shipped in a package",
    "precomputed": "embeddings read from a file supplied by the user",
    "wav2vec2": "wav2vec2 weights loaded from a local folder or cache",
    "mel": "fixed signal features (a mel spectrogram: no learned weights)",
}


# ----------------------------------------------------------------------- run folder
def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise RunFolderError(f"{path}: missing ({what}); the run folder {path.parent} is incomplete. "
                             f"A run folder written by neurodec.training.train holds config.yaml, splits.json, "
                             f"data.json and best/encoder")
    return path


def _read_json(path: Path) -> Any:
    _require_file(path, "written by neurodec.training.train")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: not valid JSON ({error})") from None


def _check_run_dir(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no run folder there (expected the folder neurodec.training.train wrote, "
                             f"holding config.yaml, splits.json, data.json, best/encoder)")
    if (run_dir / SUMMARY_FILE).exists() and not (run_dir / SPLITS_FILE).exists():
        seeds = sorted(p.name for p in run_dir.glob("seed-*") if p.is_dir())
        raise RunFolderError(f"{run_dir}: holds repeated seeds ({', '.join(seeds) or 'summary.json only'}), one "
                             f"encoder each; load one seed folder, e.g. {run_dir / (seeds[0] if seeds else 'seed-0')} "
                             f"(evaluate_run takes the whole folder and reports the mean and sd over seeds)")
    return run_dir


def _seed_run_dirs(run_dir: Path) -> list[Path]:
    """The seed folders of a run of repeated seeds (``train.n_seeds > 1``), in training order; [] otherwise."""
    if not (run_dir / SUMMARY_FILE).exists() or (run_dir / SPLITS_FILE).exists():
        return []
    summary = _read_json(run_dir / SUMMARY_FILE)
    names = summary.get("runs") if isinstance(summary, dict) else None
    if not isinstance(names, list) or not names:
        names = sorted(p.name for p in run_dir.glob("seed-*") if p.is_dir())
    folders = [run_dir / str(name) for name in names]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing or not folders:
        raise RunFolderError(f"{run_dir / SUMMARY_FILE}: lists seed runs {names}, but {missing or 'none'} "
                             f"are not folders of {run_dir}; the run of repeated seeds is incomplete")
    return folders


def _load_run_config(run_dir: Path):
    from neurodec.config import load_config

    return load_config(_require_file(run_dir / CONFIG_FILE, "the resolved config"))


# ---------------------------------------------------------------- trained encoder
@dataclass
class TrainedEncoder:
    """A trained encoder and what it needs to embed new data as it was trained to.

    ``transform`` is the transform fitted on the run's training data (or None), applied to
    each trial before the model; ``subject_labels`` gives each subject index's label (the
    store's subjects, in order); ``trained_subjects`` those with training trials;
    ``sensor_positions`` the 2-D sensor positions stored in the encoder (label -> (n_chans, 2),
    for encoders with a spatial attention over sensors; None otherwise).

    >>> encoder = load_encoder("runs/eeg-demo")                       # doctest: +SKIP
    >>> encoder.embed(trials, subject="01").shape                      # doctest: +SKIP
    (40, 768)
    """

    encoder: Any
    transform: Any
    subject_labels: list[str]
    trained_subjects: list[str]
    target_key: str
    store: str
    config: Any
    run_dir: Path
    checkpoint: str
    sensor_positions: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self):
        return next(self.encoder.parameters()).device

    @property
    def input_kind(self) -> str:
        """``"meeg"`` (trials x channels x times) or ``"fmri"`` (trials x voxels)."""
        return self.encoder.input_kind

    def subject_index(self, subject: str | None) -> int:
        """The encoder's index of a subject label; raises :class:`UnknownSubjectError` if it has none."""
        if subject is None:
            if len(self.trained_subjects) == 1:
                return self.subject_labels.index(self.trained_subjects[0])
            raise UnknownSubjectError(f"subject: the encoder of {self.run_dir} knows subjects "
                                      f"{self.trained_subjects}; say which one the trials come from (subject=...)")
        subject = str(subject)
        if subject not in self.trained_subjects:
            where = ("has no training trials in this run" if subject in self.subject_labels
                     else "is not a subject of the training store")
            raise UnknownSubjectError(
                f"subject {subject!r} {where}, so the encoder of {self.run_dir} has no subject-specific weights for "
                f"it (trained subjects: {self.trained_subjects}). To decode a new subject, fit its subject-specific "
                f"layers first with `neurodec adapt` (trains the new subject's adapter on a little of its data)")
        return self.subject_labels.index(subject)

    def _check_trials(self, data: np.ndarray, index: int, raw_shape: tuple[int, ...]) -> None:
        """``data``: (a trial of) the input; the error names the raw shape the user gave."""
        label = self.subject_labels[index]
        if self.input_kind == "fmri":
            expected = self.encoder.n_voxels[index]
            if data.ndim != 2 or data.shape[1] != expected:
                raise MetricInputError(f"trials: expected (n_trials, {expected}) voxels of subject {label!r} "
                                       f"(as in training), found shape {raw_shape}")
            return
        after = "" if self.transform is None else f" after the run's transform (which gave {data.shape[1:]})"
        n_chans, n_times = self.encoder.n_chans, self.encoder.n_times
        if data.ndim != 3 or (n_chans is not None and data.shape[1] != n_chans) or (
                n_times is not None and data.shape[2] != n_times):
            raise MetricInputError(f"trials: expected {n_chans} channels x {n_times} times (as in training){after}, "
                                   f"found shape {raw_shape}")

    def embed(self, trials, subject: str | None = None, *, batch_size: int = 256) -> np.ndarray:
        """Embed raw trials of one subject: the saved transform, then the model (eval mode, no grad).

        ``trials`` is a numpy array, trials x channels x times (M/EEG) or trials x voxels
        (fMRI), in the units of the store. ``subject`` is the subject's label (may be left
        out when the encoder knows one subject). Returns ``(n_trials, *embedding_shape)``.

        >>> encoder.embed(np.zeros((3, 63, 250), np.float32), subject="01").shape   # doctest: +SKIP
        (3, 768)
        """
        import torch

        from neurodec._logging import progress

        index = self.subject_index(subject)
        data = np.asarray(trials, dtype=np.float32)
        # The model's input shape is the shape after the run's transform (e.g. temporal_pool).
        first = data[:1]
        if self.input_kind == "fmri":  # voxel transforms keep the voxel count: check before transforming
            self._check_trials(first, index, data.shape)
        if self.transform is not None and len(first):
            try:
                first = self.transform.transform(first, subjects=np.full(1, index, dtype=np.int64))
            except (ValueError, IndexError, NeurodecError) as error:
                raise MetricInputError(f"trials of shape {data.shape}: the run's transform cannot read them "
                                       f"({' '.join(str(error).split())}); give trials shaped as the training "
                                       f"data") from None
        self._check_trials(first, index, data.shape)
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected >= 1, found {batch_size}")
        self.encoder.eval()
        device = self.device
        outputs = []
        starts = range(0, len(data), batch_size)
        with torch.no_grad():
            for start in progress(starts, "embedding trials", total=len(starts)):
                chunk = data[start: start + batch_size]
                subjects = np.full(len(chunk), index, dtype=np.int64)
                if self.transform is not None:
                    chunk = self.transform.transform(chunk, subjects=subjects)
                brain = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(device)
                embedded = self.encoder(brain, torch.from_numpy(subjects).to(device))
                outputs.append(embedded.float().cpu().numpy())
        if not outputs:
            raise MetricInputError("trials: expected at least one trial, found none")
        return np.concatenate(outputs)

    def embed_dataset(self, dataset, *, batch_size: int = 256) -> np.ndarray:
        """Embed every item of a neurodec dataset (its own transform and averaging apply), in item order.

        The dataset must be built on this run's store (subject indices are the store's) and
        its ``transform`` set to :attr:`transform` for the encoder to see what it was trained on.
        """
        return self.embed_rows(dataset, np.arange(len(dataset)), batch_size=batch_size)

    def embed_rows(self, dataset, rows, *, batch_size: int = 256, show_progress: bool = True) -> np.ndarray:
        """Embed some items of a neurodec dataset (``rows``, item indices), in that order; as
        :meth:`embed_dataset`, which is ``embed_rows(dataset, range(len(dataset)))``.

        >>> encoder.embed_rows(test_set, np.arange(256, 512)).shape      # doctest: +SKIP
        (256, 40, 361)
        """
        import torch

        from neurodec._logging import progress

        rows = np.asarray(rows, dtype=np.int64)
        self.encoder.eval()
        device = self.device
        outputs = []
        starts = range(0, len(rows), batch_size)
        if show_progress:
            starts = progress(starts, "embedding the evaluation split", total=len(starts))
        with torch.no_grad():
            for start in starts:
                batch = dataset[rows[start: start + batch_size].tolist()]
                brain = batch["brain"]
                brain = ({key: value.to(device) for key, value in brain.items()} if isinstance(brain, dict)
                         else brain.to(device))
                outputs.append(self.encoder(brain, batch["subject"].to(device)).float().cpu().numpy())
        return np.concatenate(outputs)


def _trained_subjects(data_record: dict, subject_labels: list[str]) -> list[str]:
    """Subjects with training recordings (keys are ``sub-<subject>/ses-<session>/run-<run>``)."""
    keys = (data_record.get("train") or {}).get("recordings") or data_record.get("recordings") or []
    present = {key.split("/")[0][len("sub-"):] for key in keys if key.startswith("sub-")}
    return [label for label in subject_labels if label in present] or list(subject_labels)


def load_encoder(run_dir: str | os.PathLike, checkpoint: str = "best", *, device: str | None = None) -> TrainedEncoder:
    """The trained encoder of a run folder, with its fitted transform and subject indices.

    ``checkpoint`` is ``"best"`` (selected on validation) or ``"last"``. Nothing is read
    from the store, so a run folder alone is enough to embed new data.

    >>> encoder = load_encoder("runs/fmri-demo")                      # doctest: +SKIP
    >>> encoder.embed(voxels, subject="01").shape                      # doctest: +SKIP
    """
    from neurodec.data import load_transform
    from neurodec.models import load_pretrained

    run_dir = _check_run_dir(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint: expected 'best' or 'last', found {checkpoint!r}")
    config = _load_run_config(run_dir)
    data_record = _read_json(run_dir / DATA_FILE)
    encoder_folder = run_dir / checkpoint / ENCODER_FOLDER
    for name in ("config.json", "model.safetensors"):
        path = encoder_folder / name
        if not path.exists():
            hint = " (no validation was completed; try checkpoint='last')" if checkpoint == "best" else ""
            raise RunFolderError(f"{path}: missing; the {checkpoint!r} checkpoint of {run_dir} is incomplete{hint}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = load_pretrained(encoder_folder, device=device).eval()
    transform = None
    if (run_dir / TRANSFORM_FOLDER / "transform.json").exists():
        transform = load_transform(run_dir / TRANSFORM_FOLDER)
    elif config.data.transforms:
        raise RunFolderError(f"{run_dir / TRANSFORM_FOLDER / 'transform.json'}: missing, but config.yaml lists "
                             f"data.transforms {[spec.name for spec in config.data.transforms]}; the run folder "
                             f"is incomplete")
    labels = data_record.get("subject_labels")
    if not isinstance(labels, list) or not labels:
        raise RunFolderError(f"{run_dir / DATA_FILE}: field 'subject_labels' expected a non-empty list, found "
                             f"{labels!r}")
    positions = None
    buffer = getattr(encoder, "subject_positions", None)
    if buffer is not None:
        values = buffer.detach().cpu().numpy()
        positions = {label: values[i] for i, label in enumerate(labels) if np.isfinite(values[i]).any()}
    meta_path = run_dir / checkpoint / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    return TrainedEncoder(encoder=encoder, transform=transform, subject_labels=[str(s) for s in labels],
                          trained_subjects=_trained_subjects(data_record, [str(s) for s in labels]),
                          target_key=str(data_record.get("target", config.data.target)),
                          store=str(data_record.get("store", config.data.store)), config=config, run_dir=run_dir,
                          checkpoint=checkpoint, sensor_positions=positions, meta=meta)


# ----------------------------------------------------------------------- retrieval
@dataclass
class RetrievalResult:
    """The ``k`` best candidates of each query, best first: ids, row indices and cosine scores (n_queries, k)."""

    ids: np.ndarray
    indices: np.ndarray
    scores: np.ndarray


def retrieve(brain_embeddings, targets, k: int = 5, *, candidate_ids: Sequence[str] | None = None,
             similarity: str = "cosine", device=None) -> RetrievalResult:
    """Rank candidate stimuli for each brain embedding by cosine similarity (chunked search).

    ``targets`` is an array ``(n_candidates, dims...)`` or ``(ids, embeddings)`` as
    ``Study.targets(key)`` returns. With ``(ids, embeddings)``, ``candidate_ids`` restricts
    the candidates to those ids (e.g. the test stimuli); with a plain array it names its rows
    (default: row numbers).

    >>> import numpy as np
    >>> ids, targets = np.array(["a", "b", "c"]), np.eye(3)
    >>> retrieve(np.array([[0.1, 1.0, 0.0]]), (ids, targets), k=2).ids.tolist()
    [['b', 'a']]
    >>> retrieve(np.array([[0.1, 1.0, 0.0]]), (ids, targets), k=1, candidate_ids=["a", "c"]).ids.tolist()
    [['a']]
    """
    from neurodec.metrics import topk_chunked

    if isinstance(targets, tuple):
        if len(targets) != 2:
            raise MetricInputError(f"targets: expected an array or (ids, embeddings), found a tuple of {len(targets)}")
        ids, embeddings = np.asarray(targets[0]).astype(str), np.asarray(targets[1])
        if len(ids) != len(embeddings):
            raise MetricInputError(f"targets: {len(ids)} ids for {len(embeddings)} embeddings")
        if candidate_ids is not None:
            row_of = {name: row for row, name in enumerate(ids.tolist())}
            wanted = [str(name) for name in candidate_ids]
            unknown = [name for name in wanted if name not in row_of]
            if unknown:
                raise MetricInputError(f"candidate_ids: {unknown[:5]} are not among the targets' ids "
                                       f"({len(ids)} ids, e.g. {ids[:3].tolist()})")
            rows = np.asarray([row_of[name] for name in wanted], dtype=np.int64)
            ids, embeddings = ids[rows], embeddings[rows]
    else:
        embeddings = np.asarray(targets)
        if candidate_ids is None:
            ids = np.arange(len(embeddings)).astype(str)
        else:
            ids = np.asarray([str(name) for name in candidate_ids])
            if len(ids) != len(embeddings):
                raise MetricInputError(f"candidate_ids: expected one id per target row ({len(embeddings)}), "
                                       f"found {len(ids)}")
    queries = np.asarray(brain_embeddings)
    if queries.ndim == 1:
        queries = queries[None]
    found = topk_chunked(queries.reshape(len(queries), -1), embeddings.reshape(len(embeddings), -1), k,
                         similarity=similarity, device=device)
    return RetrievalResult(ids=ids[found.indices], indices=found.indices, scores=found.scores)


# ------------------------------------------------------------------ target space
def describe_target_space(key: str, config: dict[str, Any], shape: Sequence[int] = ()) -> dict[str, Any]:
    """The report's ``meta.target_space``: a name and whether its extractor had trained weights.

    ``config`` is the extractor's config, or the record ``Study.target_config(key)`` returns.

    OpenCLIP without a pretrained tag (``pretrained: null``, ``allow_random_weights``) is an
    untrained target space; packaged CNN weights and precomputed embeddings count as pretrained.

    >>> describe_target_space("clip", {"extractor": "open_clip", "model": "ViT-B-32", "pretrained": None,
    ...                                "allow_random_weights": True})["pretrained"]
    False
    >>> describe_target_space("cnn", {"extractor": "image_pretrained_cnn"})["pretrained"]
    True
    """
    if "extractor" not in config and isinstance(config.get("config"), dict):
        config = config["config"]  # Study.target_config gives the store's record around the extractor's config
    extractor = str(config.get("extractor", "unknown"))
    space: dict[str, Any] = {"key": key, "extractor": extractor, "dim": [int(n) for n in shape],
                             "extractor_config": config}
    if extractor == "open_clip":
        tag = config.get("pretrained")
        space["pretrained"] = tag is not None
        space["name"] = f"open_clip {config.get('model', '?')} ({tag if tag is not None else 'random weights'})"
        space["note"] = ("weights from a pretrained tag or checkpoint" if tag is not None
                         else "untrained: random weights (allow_random_weights)")
    elif extractor in _EXTERNAL_EXTRACTORS:
        space["pretrained"] = True
        space["name"] = extractor + (f" {config['model']}" if config.get("model") else "")
        space["note"] = _EXTERNAL_EXTRACTORS[extractor]
    else:
        space["pretrained"] = False
        space["name"] = f"{key} ({extractor})"
        space["note"] = "extractor not recognised; not counted as pretrained"
    return space


# ------------------------------------------------------------------- evaluation
def _open_run_store(trained: TrainedEncoder, store):
    from neurodec.store import open_store

    location = store if store is not None else trained.config.data.store
    try:
        study = open_store(location)
    except StoreNotFoundError as error:
        raise StoreNotFoundError(
            f"{trained.run_dir / CONFIG_FILE}: data.store {location!r}: the run's study store is not there "
            f"({error}); if it moved, pass its new location (evaluate_run(..., store=...))") from None
    if trained.target_key not in study.target_keys:
        raise StoreError(f"{trained.run_dir / CONFIG_FILE}: data.target {trained.target_key!r}: {study.url} no longer "
                         f"holds these targets; it holds {study.target_keys or 'none'} (recompute them with "
                         f"neurodec.embed using the config the run was trained with)")
    return study


def _rebuild_splits(run_dir: Path, record: dict, parts: Sequence[str]):
    from neurodec.data import EventSplits, Splits

    path = run_dir / SPLITS_FILE
    by = record.get("by")
    if by not in ("stimulus", "runs") or not all(part in record for part in ("train", "val", "test")):
        raise RunFolderError(f"{path}: expected 'by' ('stimulus' or 'runs') and parts train, val, test; found "
                             f"keys {sorted(record)}")
    for part in parts:
        content = record[part]
        size = len(content) if by == "stimulus" else sum(len(rows) for rows in content.values())
        if not size:
            raise SplitError(f"{path}: the {part!r} split is empty; there is nothing to evaluate on "
                             f"(give the store test stimuli, or data.split.test_fraction / test_runs)")
    if by == "stimulus":
        return Splits(*(np.asarray(record[part], dtype=str) for part in ("train", "val", "test")))
    return EventSplits(*({key: np.asarray(rows, dtype=np.int64) for key, rows in record[part].items()}
                         for part in ("train", "val", "test")))


def _check_same_data(run_dir: Path, data_record: dict, train_set) -> None:
    """The rebuilt training set must be the one the run trained on (same trials, same stimuli)."""
    saved = data_record.get("train") or {}
    now = train_set.describe()
    changed = [key for key in ("recordings", "n_trials", "stimuli_sha256") if key in saved and saved[key] != now[key]]
    if changed:
        raise StoreError(f"{run_dir / DATA_FILE}: the store {now['store']} no longer gives the training data of this "
                         f"run ({', '.join(f'{k}: {saved[k]!r} then, {now[k]!r} now' for k in changed)}); "
                         f"evaluate on the store the run was trained on")


def _brain_by_subject(dataset, batch_size: int = 256, time_pool: int = 1) -> dict[int, np.ndarray]:
    """Each subject's items (transformed, averaged as the dataset says), flattened: {subject index: (n, features)}.

    ``time_pool`` > 1 averages groups of that many time samples of (trials, channels, times)
    items first (trailing samples that fill no group are dropped); other shapes are kept.
    """
    from neurodec._logging import progress

    subjects = np.asarray(dataset.subject_index)
    out = {}
    for subject in progress(np.unique(subjects).tolist(), "reading brain data for the ridge baseline"):
        rows = np.flatnonzero(subjects == subject)
        parts = []
        for start in range(0, len(rows), batch_size):
            brain = dataset.read_batch(rows[start: start + batch_size])["brain"]
            brain = np.stack(brain) if isinstance(brain, list) else brain
            if time_pool > 1 and brain.ndim == 3:
                steps = brain.shape[2] // time_pool
                brain = brain[:, :, : steps * time_pool].reshape(*brain.shape[:2], steps, time_pool).mean(axis=3)
            parts.append(brain.reshape(len(brain), -1))
        out[int(subject)] = np.concatenate(parts)
    return out


def _target_rows(study_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    row_of = {name: row for row, name in enumerate(study_ids.tolist())}
    return np.asarray([row_of[name] for name in wanted.tolist()], dtype=np.int64)


def _ridge_entry(trained, config, study, splits, test_set, test_targets, metric_options,
                 data_record) -> tuple[dict, np.ndarray]:
    """The ridge baseline's report entry and its test predictions (flattened, in test item order)."""
    from neurodec.evaluation.baselines import ridge_baseline_per_subject
    from neurodec.metrics import evaluate_retrieval
    from neurodec.training._setup import make_dataset

    train_set = make_dataset(config, study, splits, "train", average=config.data.average_train_repetitions)
    _check_same_data(trained.run_dir, data_record, train_set)
    val_set = make_dataset(config, study, splits, "val", average=config.data.average_val_repetitions)
    datasets = {"train": train_set, "val": val_set, "test": test_set}
    for dataset in (train_set, val_set):
        dataset.transform = trained.transform
    ids, embeddings = study.targets(trained.target_key)
    flat_targets = embeddings.reshape(len(embeddings), -1)
    options = config.evaluation.ridge
    brain = {part: _brain_by_subject(dataset, time_pool=options.time_pool) for part, dataset in datasets.items()}
    targets = {}
    for part, dataset in datasets.items():
        rows = _target_rows(ids, np.asarray(dataset.stimulus_ids))
        subjects = np.asarray(dataset.subject_index)
        targets[part] = {s: flat_targets[rows[subjects == s]] for s in np.unique(subjects).tolist()}
    tested = sorted(brain["test"])
    missing = [trained.subject_labels[s] for s in tested if s not in brain["train"] or s not in brain["val"]]
    if missing:
        raise SplitError(f"ridge baseline: subjects {missing} have test items but no training or validation items")
    label = trained.subject_labels
    results = ridge_baseline_per_subject(
        {label[s]: brain["train"][s] for s in tested}, {label[s]: targets["train"][s] for s in tested},
        {label[s]: brain["val"][s] for s in tested}, {label[s]: targets["val"][s] for s in tested},
        {label[s]: brain["test"][s] for s in tested},
        **({} if options.alphas is None else {"alphas": options.alphas}))
    test_subjects = np.asarray(test_set.subject_index)
    predictions = np.zeros_like(test_targets.reshape(len(test_targets), -1), dtype=np.float64)
    for s in tested:
        predictions[test_subjects == s] = results[label[s]].predictions_test
    metrics = evaluate_retrieval(predictions, test_targets.reshape(len(test_targets), -1), **metric_options)
    parameters = {
        "alpha": {name: result.alpha for name, result in results.items()},
        "scoring": next(iter(results.values())).scoring,
        "alpha_selection": "validation split of the run",
        "features": "flattened brain data after the run's transform"
                    + (f", time samples averaged in groups of {options.time_pool}" if options.time_pool > 1 else ""),
        "n_features": {label[s]: int(brain["train"][s].shape[1]) for s in tested},
        "validation_curves": {name: result.to_dict() for name, result in results.items()},
    }
    return {"kind": "ridge", "parameters": parameters, "metrics": metrics}, predictions


# -------------------------------------------------------------------------- speech
def _speech_words(config, study, candidate_ids: np.ndarray, run_dir: Path) -> np.ndarray | None:
    """The word of each candidate segment when the speech protocol applies, else None.

    With ``evaluation.speech.enabled: auto`` it applies when the run reads windows of
    continuous recordings (``data.window``) and every test stimulus is an ``audio`` segment
    whose metadata names its ``word`` (as :func:`neurodec.io.speech.make_segments` writes);
    ``true`` requires that, ``false`` turns it off.
    """
    setting = config.evaluation.speech.enabled
    if setting is False:
        return None
    problem, words = None, []
    if config.data.window is None:
        problem = "the run reads epoched trials (data.window is not set), not windows of continuous recordings"
    else:
        table = study.stimuli
        row_of = {name: row for row, name in enumerate(table["id"].tolist())}
        rows = np.asarray([row_of[name] for name in candidate_ids.tolist()], dtype=np.int64)
        kinds = np.asarray(table["kind"])[rows]
        metadata = np.asarray(table["metadata"])[rows]
        for name, kind, text in zip(candidate_ids.tolist(), kinds.tolist(), metadata.tolist()):
            word = json.loads(text or "{}").get("word") if kind == "audio" else None
            if kind != "audio":
                problem = f"test stimulus {name!r} is of kind {kind!r}, not an audio segment"
            elif not isinstance(word, str):
                problem = (f"test stimulus {name!r} has no 'word' in its metadata (speech segments made by "
                           f"neurodec.io.speech.make_segments have one)")
            if problem:
                break
            words.append(word)
    if problem is None:
        return np.asarray(words, dtype=object)
    if setting is True:
        raise ConfigError(f"{run_dir / CONFIG_FILE}: evaluation.speech.enabled is true, but {problem} in "
                          f"{study.url}")
    logger.info("speech segment retrieval not computed: %s", problem)
    return None


def _speech_candidates(study, key: str, stimulus_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct test segments (sorted ids), their targets (only those rows of the store)
    and each test item's row among them."""
    candidate_ids = np.asarray(sorted(set(np.asarray(stimulus_ids).tolist())), dtype=object)
    row_of = {name: row for row, name in enumerate(candidate_ids.tolist())}
    segments = np.asarray([row_of[name] for name in np.asarray(stimulus_ids).tolist()], dtype=np.int64)
    return candidate_ids, study.target_rows(key, candidate_ids), segments


def _speech_entries(config, candidates, segments, words, subjects, scored: dict, *, seed: int, n_bootstrap: int,
                    device) -> dict:
    """brainmagick's segment retrieval of each entry of ``scored`` (name -> (entry fields,
    predictions in test item order)), ranked against ``candidates``."""
    from neurodec.metrics.speech import segment_retrieval

    _, summary = _speech_options(config, seed, n_bootstrap)
    return {name: {**fields, "metrics": segment_retrieval(predictions, candidates, segments, words=words,
                                                          subjects=subjects, device=device, **summary)}
            for name, (fields, predictions) in scored.items()}


def _speech_options(config, seed: int, n_bootstrap: int) -> tuple[dict, dict]:
    """Keyword arguments of :func:`segment_ranks` and of :func:`summarize_segment_ranks`."""
    options = config.evaluation.speech
    ranking = dict(max_negatives=options.max_negatives, seed=seed)
    summary = dict(max_negatives=options.max_negatives, top_ks=tuple(options.top_ks),
                   word_top_ks=tuple(options.word_top_ks), seed=seed, n_bootstrap=n_bootstrap)
    return ranking, summary


def _stream_speech_ranks(trained, test_set, candidates, segments, words, *, chunk_items: int, batch_size: int,
                         keep_rows: np.ndarray, ranking: dict, device) -> tuple[Any, np.ndarray]:
    """Embed the test windows ``chunk_items`` at a time and rank each chunk against the candidates.

    Returns the concatenated :class:`SegmentRanks` and the predictions of ``keep_rows`` (the
    only predictions kept; the others are dropped once ranked). Chunks hold whole batches,
    so the encoder sees the batches of :meth:`TrainedEncoder.embed_dataset`."""
    from neurodec._logging import progress
    from neurodec.metrics.speech import SegmentRanks, segment_ranks

    batch = min(batch_size, chunk_items)
    chunk = max(1, chunk_items // batch) * batch
    n_items = len(test_set)
    keep = np.zeros(n_items, dtype=bool)
    keep[keep_rows] = True
    parts, kept, tail = [], [], ()
    starts = range(0, n_items, chunk)
    for start in progress(starts, "embedding and ranking the test windows", total=len(starts)):
        rows = np.arange(start, min(start + chunk, n_items))
        predictions = trained.embed_rows(test_set, rows, batch_size=batch, show_progress=False)
        tail = predictions.shape[1:]
        parts.append(segment_ranks(predictions, candidates, segments[rows], words=words, device=device, **ranking))
        if keep[rows].any():
            kept.append(predictions[keep[rows]])
    kept_array = np.concatenate(kept) if kept else np.empty((0, *tail), dtype=np.float32)
    return SegmentRanks.concatenate(parts), kept_array


def _memory_plan(config, study, trained, test_set, n_items: int, *, baselines: bool) -> dict[str, Any]:
    """Whether the sections that hold every flattened prediction fit ``evaluation.max_memory_gb``.

    Estimates (bytes): N-way / full-set retrieval holds the flattened predictions and a
    per-query copy of the targets (float32); the ridge baseline the whole target set, a
    per-item copy of it, its weight matrix (features x outputs) and test predictions (float64)."""
    budget = float(config.evaluation.max_memory_gb) * 2**30
    shape = study.target_shape(trained.target_key)
    values = int(np.prod(shape[1:], dtype=np.int64))
    retrieval = 2 * 4 * n_items * values
    plan: dict[str, Any] = {"budget_gb": config.evaluation.max_memory_gb,
                            "retrieval_gb": retrieval / 2**30, "retrieval": retrieval <= budget}
    if baselines:
        brain = test_set.read_batch(np.arange(1))["brain"]
        brain = np.stack(brain) if isinstance(brain, list) else np.asarray(brain)
        pool = config.evaluation.ridge.time_pool
        features = int(np.prod(brain.shape[1:-1], dtype=np.int64)) * (brain.shape[-1] // pool if brain.ndim == 3
                                                                        and pool > 1 else brain.shape[-1])
        ridge = 8 * values * (features + 2 * n_items) + 2 * 4 * values * shape[0]
        plan["ridge_gb"] = ridge / 2**30
        plan["ridge"] = plan["retrieval"] and ridge <= budget
    return plan


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    checkpoint: str = "best",
    n_ways: Sequence[int] = DEFAULT_N_WAYS,
    top_ks: Sequence[int] = (1, 5),
    full_set_top_ks: Sequence[int] = (1, 10),
    n_repeats: int = 30,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    baselines: bool = True,
    report: bool = True,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    store: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 256,
    reconstructions: bool | str | os.PathLike = "auto",
    image_networks: Sequence[str] = ("efficientnet-lite0",),
    max_memory_gb: float | None = None,
    chunk_items: int | None = None,
) -> dict[str, Any]:
    """Score a trained run on its test split and write report.json / .md / .html.

    Rebuilds the run's test dataset exactly as training built its data (same recordings,
    transform fitted on training data, subject indices), repetitions averaged when
    ``data.average_test_repetitions`` (as NICE-EEG and MindEye evaluate); embeds it with the
    ``checkpoint`` encoder; scores retrieval against the store's targets with
    :func:`neurodec.metrics.evaluate_retrieval` (both directions, per subject and pooled,
    bootstrap intervals, permutation p-values; N-way sizes above a subject's item count are
    skipped and listed). With ``baselines``, a per-subject ridge regression from the
    flattened, transformed brain data to the targets, alpha chosen on the run's validation
    split, is scored the same way. ``store`` points to the study store when it moved since
    training. The report goes to ``out_dir`` (default ``run_dir/report``).

    Images: when ``neurodec reconstruct`` wrote ``run_dir/reconstructions/<split>/``
    (``reconstructions="auto"``; ``True`` requires it, a path names another folder, ``False``
    skips it), the report gains an image section: PixCorr, both SSIM recipes, the paper's
    2-way identifications (unavailable where their weights are missing) plus 2-way in each
    of ``image_networks``, next to a shuffled-pairing baseline
    (:func:`neurodec.evaluation.reconstruct.score_reconstructions`).

    Speech: when the run reads windows of continuous recordings and its test stimuli are
    speech segments with words (``evaluation.speech``, docs/speech-evaluation.md), the report
    gains a ``speech`` section: brainmagick's segment top-1 / top-10 and word top-10 of the
    encoder (and of the ridge baseline), each query ranked against every test segment
    (:func:`neurodec.metrics.segment_retrieval`), with chance and 95% intervals, per subject.
    The test windows are embedded and ranked ``chunk_items`` at a time (default
    ``evaluation.chunk_items``) against the test segments' targets (only those rows are read);
    only per-query ranks are kept. N-way / full-set retrieval and the ridge baseline hold
    every flattened prediction: when that exceeds ``max_memory_gb`` (default
    ``evaluation.max_memory_gb``) the former is scored on a random subset of items that fits
    (the entry's ``note`` says so) and the latter is left out (``meta.skipped`` says why).

    Repeated seeds: a run folder of ``train.n_seeds > 1`` (``seed-<s>/`` folders and
    ``summary.json``) is evaluated seed by seed (each seed's report in its folder, or in
    ``out_dir/seed-<s>``); the returned results, written to ``out_dir`` (default
    ``run_dir/report``), list every seed's entries, the ridge baseline once (it does not
    depend on the training seed), and for speech the mean and sd over seeds.

    Returns the results dict of docs/reports.md (JSON-ready; what ``report.json`` holds).

    >>> results = evaluate_run("runs/eeg-demo", n_permutations=200)       # doctest: +SKIP
    >>> results["retrieval"]["eeg / nice"]["metrics"]["brain->stimulus"]["pooled"]["200-way top-1"]  # doctest: +SKIP
    """
    from neurodec.metrics import evaluate_retrieval
    from neurodec.metrics.speech import summarize_segment_ranks
    from neurodec.report import similarity_excerpt, validate_results, write_report
    from neurodec.training import read_history
    from neurodec.training._setup import make_dataset

    if split not in SPLIT_PARTS:
        raise ConfigError(f"split: expected one of {SPLIT_PARTS}, found {split!r}")
    seed_dirs = _seed_run_dirs(Path(run_dir)) if Path(run_dir).is_dir() else []
    if seed_dirs:
        return _evaluate_seeds(
            Path(run_dir), seed_dirs, baselines=baselines, report=report, out_dir=out_dir,
            options=dict(split=split, checkpoint=checkpoint, n_ways=n_ways, top_ks=top_ks,
                         full_set_top_ks=full_set_top_ks, n_repeats=n_repeats, n_bootstrap=n_bootstrap,
                         n_permutations=n_permutations, seed=seed, store=store, device=device, batch_size=batch_size,
                         reconstructions=reconstructions, image_networks=image_networks,
                         max_memory_gb=max_memory_gb, chunk_items=chunk_items))
    trained = load_encoder(run_dir, checkpoint, device=device)
    run_dir = trained.run_dir
    _require_file(run_dir / SPLITS_FILE, "the train/val/test split")
    data_record = _read_json(run_dir / DATA_FILE)
    study = _open_run_store(trained, store)
    config = trained.config.model_copy(deep=True)
    config.data.store = study.url
    splits = _rebuild_splits(run_dir, _read_json(run_dir / SPLITS_FILE), (split,))

    average = config.data.average_test_repetitions if split == "test" else config.data.average_val_repetitions
    test_set = make_dataset(config, study, splits, split, average=average)
    test_set.transform = trained.transform
    if not len(test_set):
        raise SplitError(f"{run_dir / SPLITS_FILE}: the {split!r} split selects no trials in {study.url}")
    unknown = sorted({trained.subject_labels[s] for s in test_set.present_subjects()} - set(trained.trained_subjects))
    if unknown:
        raise UnknownSubjectError(f"{run_dir}: the {split!r} split holds subjects {unknown} without training trials; "
                                  f"adapt the encoder to them first (`neurodec adapt`)")

    logger.info("evaluating %s (%s checkpoint) on %d %s items of %s", run_dir, checkpoint, len(test_set), split,
                study.url)
    stimulus_ids = np.asarray(test_set.stimulus_ids)
    subjects = np.asarray(trained.subject_labels)[np.asarray(test_set.subject_index)]
    # Without averaging a stimulus can be several items: for full-set ranking they count as one.
    labels = None if average else np.asarray(test_set.stimulus_index)
    metric_options = dict(subjects=subjects, n_ways=tuple(n_ways), top_ks=tuple(top_ks),
                          full_set_top_ks=tuple(full_set_top_ks), labels=labels, n_repeats=n_repeats, seed=seed,
                          n_bootstrap=n_bootstrap, n_permutations=n_permutations, device=device)
    modality = test_set.modality
    model_name = trained.encoder.model_name
    model_fields = {"modality": modality, "model": model_name, "checkpoint": checkpoint}
    if max_memory_gb is not None:
        config.evaluation.max_memory_gb = max_memory_gb
    if chunk_items is not None:
        config.evaluation.chunk_items = chunk_items
    candidate_ids = np.asarray(sorted(set(stimulus_ids.tolist())), dtype=object)
    words = _speech_words(config, study, candidate_ids, run_dir)
    skipped: dict[str, str] = {}
    speech = None
    retrieval_note = None
    if words is None:
        brain = trained.embed_dataset(test_set, batch_size=batch_size)
        ids, embeddings = study.targets(trained.target_key)
        targets = embeddings[_target_rows(ids, stimulus_ids)]
        query_rows = np.arange(len(test_set))
        run_ridge = baselines
    else:
        # Speech: time-resolved predictions of every window do not fit in memory at the paper's
        # size; they are ranked chunk by chunk and only the ranks are kept.
        candidate_ids, candidates, segments = _speech_candidates(study, trained.target_key, stimulus_ids)
        plan = _memory_plan(config, study, trained, test_set, len(test_set), baselines=baselines)
        if plan["retrieval"]:
            query_rows = np.arange(len(test_set))
        else:
            # The N-way / full-set section on a random subset of queries that fits the budget.
            fitting = int(plan["budget_gb"] * 2**30 // max(1, plan["retrieval_gb"] * 2**30 / len(test_set)))
            size = min(len(test_set), max(fitting, 10))
            query_rows = np.sort(np.random.default_rng(seed).choice(len(test_set), size, replace=False))
            retrieval_note = (f"N-way / full-set retrieval over flattened predictions on {size} of {len(test_set)} "
                              f"test items drawn at random (seed {seed}): all of them need about "
                              f"{plan['retrieval_gb']:.1f} GB, over evaluation.max_memory_gb = {plan['budget_gb']} "
                              f"(raise it, or evaluate fewer subjects, for all items). Speech segment retrieval "
                              f"uses every item.")
            logger.info("%s", retrieval_note)
        run_ridge = baselines and plan["ridge"]
        if baselines and not run_ridge:
            skipped["ridge baseline"] = (f"not computed: its arrays need about {plan['ridge_gb']:.1f} GB, over "
                                         f"evaluation.max_memory_gb = {plan['budget_gb']} (raise it, or evaluate "
                                         f"fewer subjects or a larger evaluation.ridge.time_pool)")
            logger.info("ridge baseline %s", skipped["ridge baseline"])
        ranking, summary = _speech_options(config, seed, n_bootstrap)
        logger.info("speech segment retrieval: %d queries against %d test segments (at most %d per query), "
                    "%d windows at a time", len(segments), len(candidate_ids), ranking["max_negatives"],
                    config.evaluation.chunk_items)
        ranks, brain = _stream_speech_ranks(trained, test_set, candidates, segments, words,
                                            chunk_items=config.evaluation.chunk_items, batch_size=batch_size,
                                            keep_rows=query_rows, ranking=ranking, device=device)
        speech = {f"{modality} / {model_name}": {**model_fields, "metrics": summarize_segment_ranks(
            ranks, subjects=subjects, **summary)}}
        targets = candidates[segments[query_rows]]
        if len(query_rows) < len(test_set):
            metric_options["subjects"] = subjects[query_rows]
            metric_options["labels"] = None if labels is None else labels[query_rows]
    flat_brain, flat_targets = brain.reshape(len(brain), -1), targets.reshape(len(targets), -1)
    metrics = evaluate_retrieval(flat_brain, flat_targets, **metric_options)

    retrieval = {f"{modality} / {model_name}": {**model_fields, "metrics": metrics}}
    if retrieval_note is not None:
        retrieval[f"{modality} / {model_name}"]["note"] = retrieval_note
    baseline_entries = {}
    scored = {}
    if run_ridge:
        if words is not None:
            targets = candidates[segments]
            metric_options.update(subjects=subjects, labels=labels)
        entry, ridge_predictions = _ridge_entry(trained, config, study, splits, test_set, targets, metric_options,
                                                data_record)
        baseline_entries[f"{modality} / ridge"] = {"modality": modality, **entry}
        scored[f"{modality} / ridge"] = ({"modality": modality, "kind": "ridge"}, ridge_predictions)
    if words is not None:
        speech.update(_speech_entries(config, candidates, segments, words, subjects, scored, seed=seed,
                                      n_bootstrap=n_bootstrap, device=device))

    subjects_kept = subjects[query_rows]
    first_subject = np.flatnonzero(subjects_kept == subjects_kept[0])
    meta = {
        "store": study.url,
        "config": trained.config.to_dict(),
        "target_space": describe_target_space(trained.target_key, study.target_config(trained.target_key),
                                              study.target_shape(trained.target_key)[1:]),
        "run_dir": str(run_dir),
        "checkpoint": {"name": checkpoint, **{key: trained.meta.get(key) for key in
                                              ("step", "epoch", "selection_metric", "value") if key in trained.meta}},
        "split": split,
        "average_repetitions": bool(average),
        "n_items": int(len(test_set)),
        "n_trials": int(test_set.n_trials),
        "subjects": sorted(set(subjects.tolist())),
        "transform": None if trained.transform is None else type(trained.transform).__name__,
        "seed": seed,
    }
    if store is not None:
        meta["store_at_training"] = str(trained.config.data.store)
    if skipped:
        meta["skipped"] = skipped
    results = {
        "meta": meta,
        "retrieval": retrieval,
        "baselines": baseline_entries,
        "training_history": read_history(run_dir),
        "similarity_excerpt": similarity_excerpt(flat_brain[first_subject], flat_targets[first_subject], size=50,
                                                 rows=f"brain embeddings (subject {subjects_kept[0]}, {split})",
                                                 columns=f"{trained.target_key} embeddings"),
    }
    if speech is not None:
        results["speech"] = speech
    folder = run_dir / "reconstructions" / split if reconstructions is True or reconstructions == "auto" else (
        Path(reconstructions) if reconstructions else None)
    if folder is not None and (reconstructions is not True and not (folder / "index.json").exists()):
        folder = None  # "auto": only when `neurodec reconstruct` wrote this split
    if folder is not None:
        from neurodec.evaluation.reconstruct import load_reconstructions, score_reconstructions

        scores = score_reconstructions(load_reconstructions(folder), extra_networks=image_networks,
                                       n_bootstrap=n_bootstrap, seed=seed, device=device)
        results["reconstruction"] = {f"{modality} / {model_name}": {"modality": modality, **scores}}
    results = validate_results(results)
    if report:
        out = Path(out_dir) if out_dir is not None else run_dir / REPORT_FOLDER
        title = f"{run_dir.name}: {modality} to {trained.target_key} ({model_name}, {split} split)"
        paths = write_report(out, results, title=title)
        logger.info("report written to %s", paths.html)
    return results


def _evaluate_seeds(run_dir: Path, seed_dirs: list[Path], *, baselines: bool, report: bool, out_dir,
                    options: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every seed of a run of repeated seeds; combine their results (speech: mean and sd over seeds)."""
    from neurodec.metrics import summarize_over_seeds
    from neurodec.report import validate_results, write_report

    out = Path(out_dir) if out_dir is not None else run_dir / REPORT_FOLDER
    per_seed: dict[str, dict[str, Any]] = {}
    for index, folder in enumerate(seed_dirs):
        logger.info("evaluating seed run %s (%d of %d)", folder, index + 1, len(seed_dirs))
        # The ridge baseline reads the data, split and transform, none of which depends on train.seed: once.
        per_seed[folder.name] = evaluate_run(folder, baselines=baselines and index == 0, report=report,
                                             out_dir=None if out_dir is None else out / folder.name, **options)
    names = list(per_seed)
    first = per_seed[names[0]]

    def by_seed(section: str) -> dict[str, Any]:
        return {f"{entry} ({name})": {**value, "seed": name}
                for name, results in per_seed.items() for entry, value in results.get(section, {}).items()}

    meta = {**first["meta"], "run_dir": str(run_dir), "seeds": names,
            "checkpoint": {name: results["meta"]["checkpoint"] for name, results in per_seed.items()}}
    combined: dict[str, Any] = {"meta": meta, "retrieval": by_seed("retrieval"), "baselines": first["baselines"],
                                "training_history": [], "similarity_excerpt": None}
    if any(results.get("reconstruction") for results in per_seed.values()):
        combined["reconstruction"] = by_seed("reconstruction")
    if "speech" in first:
        speech: dict[str, Any] = {}
        for entry, value in first["speech"].items():
            if "model" in value:
                runs = {name: results["speech"][entry]["metrics"] for name, results in per_seed.items()}
                speech[entry] = {"modality": value["modality"], "model": value["model"],
                                 "over_seeds": summarize_over_seeds(runs)}
        speech.update({entry: value for entry, value in by_seed("speech").items() if "model" in value})
        speech.update({entry: value for entry, value in first["speech"].items() if "model" not in value})
        combined["speech"] = speech
    combined = validate_results(combined)
    if report:
        entry = next(iter(first["retrieval"].values()))
        title = (f"{run_dir.name}: {entry['modality']} to {first['meta']['target_space']['key']} ({entry['model']}, "
                 f"{options['split']} split, {len(names)} seeds)")
        paths = write_report(out, combined, title=title)
        logger.info("report of %d seeds written to %s", len(names), paths.html)
    return combined


__all__ = ["RetrievalResult", "TrainedEncoder", "describe_target_space", "evaluate_run", "load_encoder", "retrieve"]
