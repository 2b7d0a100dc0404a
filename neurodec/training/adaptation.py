"""New-subject adaptation: freeze a trained run's shared model, fit only the new subject's weights.

MindBridge's "reset-tuning" and MindEye2's fine-tuning of a new subject: the encoder of a run
trained on other subjects is rebuilt with a slot for the new subject (its own adapter, subject
layer or embedding, sized for its voxels), every shared weight is loaded and frozen, and only
the new subject's weights (:meth:`BrainEncoder.subject_weights`) are trained, on ``K`` trials
of that subject's training stimuli (the run's split; test stimuli are never trained on). The
best state on the new subject's validation stimuli is kept (early stopping), and the test
stimuli (repetitions averaged as the run's config says) are scored with
:func:`neurodec.metrics.evaluate_retrieval`.

The new subject's adapter does not start at random where the trained subjects can say more
(``init="aligned"``, the default; fMRI encoders whose per-subject stage is one linear map of
the voxels, as MindEye's): an *anatomical prior*, each new voxel's weights being the mean of
the trained subjects' adapter weights for voxels at the same position (only when every
recording declares the same template space), plus a *functional* ridge correction fitted on
the K trials towards the trained subjects' latents of the same stimuli (their adapters on
their own responses, averaged). The penalty, or the prior alone, is chosen on the new
subject's validation stimuli by the rule of early stopping (by default the validation loss),
and the chosen initial state competes with the fine-tuned ones.

The reference is a model trained from scratch on the same ``K`` trials, with the same steps,
batches and early stopping (:func:`adapt_curve`), and :func:`leave_one_subject_out` trains one
new run per held-out subject (a fresh model every fold) and adapts it to that subject.

>>> from neurodec.training.adaptation import adapt, adapt_curve
>>> result = adapt("runs/fmri", "04", n_trials=100, seed=0)        # doctest: +SKIP
>>> result.metrics["full-set top-1"]                                # doctest: +SKIP
>>> curve = adapt_curve("runs/fmri", "04", grid=(25, 50, 100))     # doctest: +SKIP
>>> curve["by_k"]["25"]["adapted"]["mean"]                          # doctest: +SKIP

Read ``docs/adaptation.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from neurodec.config import ExperimentConfig, load_config
from neurodec.errors import ConfigError, SplitError, StoreError

logger = logging.getLogger("neurodec")

#: Optimisation steps of one adaptation when ``steps`` is not given.
DEFAULT_STEPS = 300
#: Validations without strict improvement before stopping, when the run's config sets none.
DEFAULT_PATIENCE = 5
#: Validations over one adaptation (every ``steps // VALIDATIONS_PER_FIT`` steps, at least 1).
VALIDATIONS_PER_FIT = 20
DEFAULT_GRID = (25, 50, 100, 200, 400)
#: How the new subject's weights start: ``"aligned"`` (from the trained subjects: an anatomical
#: prior and a ridge fit to their latents, see the module docstring) or ``"random"`` (the fresh
#: model's own initialisation).
INITIALISATIONS = ("aligned", "random")
#: Early stopping (and the choice among initial states) when ``selection_metric`` is not given:
#: the contrastive loss over all validation items, far less noisy than an N-way top-1 over a
#: few dozen items (docs/adaptation.md).
DEFAULT_SELECTION = "val/loss"
RESULT_FILE = "adapt.json"
CURVE_FILE, CURVE_MARKDOWN = "curve.json", "curve.md"
LOSO_FILE = "loso.json"

_METRIC = re.compile(r"^val/(?:(stimulus->brain)/)?(?:(\d+)-way top-(\d+)|full-set top-(\d+))$")


@dataclass
class AdaptResult:
    """One adaptation (or from-scratch fit) of a new subject, and its test scores.

    ``metrics`` are the test scores of the selected (best on validation) state:
    ``"<N>-way top-1"`` (N = 200, or the number of test items when fewer) and
    ``"full-set top-1"``, brain -> stimulus, plus ``"n_way"``. ``init`` says how the new
    subject's weights started (``"aligned"`` with the candidate chosen and the validation score
    of each, or ``"random"``, with ``init_note`` saying why where aligned was asked for);
    ``train_stimuli`` lists the stimulus ids of the K training items. ``encoder`` holds the
    selected state (not in :meth:`to_dict`).
    """

    subject: str
    mode: str
    n_trials: int
    seed: int
    steps: int
    steps_done: int
    best_step: int
    stopped_early: bool
    selection_metric: str
    best_value: float
    metrics: dict[str, float]
    subject_index: int
    n_trained_parameters: int
    n_test_items: int
    run_dir: str
    init: dict[str, Any] = field(default_factory=dict)
    train_stimuli: list[str] = field(default_factory=list)
    encoder: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no encoder)."""
        return {key: value for key, value in self.__dict__.items() if key != "encoder"}


# ------------------------------------------------------------------ the run and the new subject
@dataclass
class _Context:
    """A run and a new subject, loaded once for any number of fits."""

    run_dir: Path
    config: ExperimentConfig
    subject: str
    subject_index: int
    base_encoder: Any
    loss_state: dict[str, torch.Tensor]
    trained_subjects: list[str]
    encoder_config: dict[str, Any]
    positions: np.ndarray | None
    train_set: Any
    val_set: Any
    test_set: Any
    study: Any = None
    subject_labels: list[str] = field(default_factory=list)
    splits: dict[str, Any] = field(default_factory=dict)
    trained_recordings: list[str] = field(default_factory=list)
    reference: Any = None  # the trained subjects' latents per stimulus, computed on first use
    prior: Any = None  # the anatomical prior of the new subject's adapter, computed on first use


def _run_config(run_dir: Path) -> ExperimentConfig:
    from neurodec.training.trainer import CONFIG_FILE, SUMMARY_FILE

    if (run_dir / SUMMARY_FILE).exists():
        seeds = sorted(p.name for p in run_dir.glob("seed-*"))
        raise ConfigError(f"{run_dir}: a folder of repeated seeds; adapt one of its runs ({seeds})")
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / "best" / "encoder").is_dir():
        raise ConfigError(f"{run_dir}: not a finished run folder (expected {CONFIG_FILE} and best/encoder/, "
                          f"written by neurodec.training.train)")
    return load_config(run_dir / CONFIG_FILE)


def trained_subjects(run_dir: str | os.PathLike) -> list[str]:
    """The subjects a run trained on (those of its training recordings, from ``data.json``).

    >>> trained_subjects("runs/fmri")          # doctest: +SKIP
    ['01', '02']
    """
    from neurodec.store import open_store
    from neurodec.training._setup import DATA_FILE

    record = json.loads((Path(run_dir) / DATA_FILE).read_text(encoding="utf-8"))
    study = open_store(record["store"])
    recordings = record.get("train", {}).get("recordings", record["recordings"])
    return sorted({study.recording(key).subject for key in recordings})


def _subject_recordings(config: ExperimentConfig, study, subject: str) -> list[str]:
    if subject not in study.subjects:
        raise StoreError(f"subject {subject!r} is not in {study.url}; it holds {study.subjects}")
    if config.data.window is not None:
        raise ConfigError("data.window: adaptation reads trials (epoched or fMRI layouts); continuous recordings "
                          "with windows are not supported yet")
    keys = [r.key for r in study.recordings(subject=subject)
            if r.layout in ("epoched", "fmri") and (config.data.modality is None or r.modality == config.data.modality)]
    if not keys:
        raise StoreError(f"subject {subject!r} of {study.url} has no epoched or fmri recording"
                         f"{'' if config.data.modality is None else ' of modality ' + config.data.modality}")
    return keys


def _load_context(run_dir: str | os.PathLike, subject: str) -> _Context:
    from safetensors.torch import load_file

    from neurodec.data import TrialDataset
    from neurodec.models import load_pretrained
    from neurodec.store import open_store
    from neurodec.training import _checkpoint as checkpoints
    from neurodec.training._setup import DATA_FILE, SPLITS_FILE

    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    subject = str(subject)
    trained = trained_subjects(run_dir)
    if subject in trained:
        raise ConfigError(f"subject {subject!r} is not new: {run_dir} was trained on {trained}; adapt a run "
                          f"trained without it (data.subjects), e.g. with leave_one_subject_out")
    record = json.loads((run_dir / DATA_FILE).read_text(encoding="utf-8"))
    splits = json.loads((run_dir / SPLITS_FILE).read_text(encoding="utf-8"))
    if splits.get("by") != "stimulus":
        raise ConfigError(f"{run_dir / SPLITS_FILE}: adaptation needs a split by stimulus (data.split.by: stimulus), "
                          f"found by={splits.get('by')!r}")
    study = open_store(record["store"])
    keys = _subject_recordings(config, study, subject)
    common = dict(recordings=keys, target=config.data.target, voxel_batches="pad")
    try:
        train_set = TrialDataset(study, stimuli=splits["train"],
                                 average_repetitions=config.data.average_train_repetitions, **common)
        val_set = TrialDataset(study, stimuli=splits["val"], average_repetitions=config.data.average_val_repetitions,
                               **common)
        test_set = TrialDataset(study, stimuli=splits["test"], average_repetitions=config.data.average_test_repetitions,
                                **common)
    except SplitError as error:
        raise SplitError(f"subject {subject!r}: {error}") from None
    if train_set.brain_shape is None:
        raise StoreError(f"subject {subject!r}: its recordings {keys} differ in shape; adaptation needs one shape")

    base = load_pretrained(run_dir / "best" / checkpoints.ENCODER_FOLDER).eval()
    labels = list(record["subject_labels"])
    # A subject of the store the run did not train on keeps its index (a placeholder slot);
    # a subject added to the store after training gets the next index.
    index = labels.index(subject) if subject in labels else len(labels)
    encoder_config = base.config
    n_subjects = max(base.n_subjects, index + 1)
    if "n_subjects" in encoder_config:
        encoder_config["n_subjects"] = n_subjects
    if base.input_kind == "fmri":
        counts = list(base.n_voxels) + [1] * (n_subjects - len(base.n_voxels))
        counts[index] = int(train_set.brain_shape[-1])
        encoder_config["n_voxels"] = counts
    elif base.n_chans is not None and train_set.brain_shape[0] != base.n_chans:
        raise ConfigError(f"subject {subject!r} has {train_set.brain_shape[0]} channels, the run's encoder reads "
                          f"{base.n_chans}")
    positions = None
    if hasattr(base, "set_subject_positions"):
        from neurodec.training._setup import subject_positions

        positions = subject_positions(study, keys[:1], [subject])[0]
    loss_state = load_file(str(run_dir / "best" / checkpoints.LOSS_FILE))
    return _Context(run_dir=run_dir, config=config, subject=subject, subject_index=index, base_encoder=base,
                    loss_state=loss_state, trained_subjects=trained, encoder_config=encoder_config,
                    positions=positions, train_set=train_set, val_set=val_set, test_set=test_set, study=study,
                    subject_labels=labels, splits=splits,
                    trained_recordings=list(record.get("train", {}).get("recordings", record["recordings"])))


# ---------------------------------------------------------------------- the encoders
def subject_masks(encoder, subject: int) -> dict[str, torch.Tensor]:
    """Per parameter name, a boolean mask of the elements that belong to ``subject`` alone.

    Found by writing through the views :meth:`BrainEncoder.subject_weights` returns, so
    stacked per-subject weights (one matrix per subject in one tensor) give row masks.

    >>> from neurodec.models import create_model
    >>> model = create_model("mindeye", n_voxels=[5, 4], n_outputs=8, hidden_dim=16, n_blocks=1)
    >>> masks = subject_masks(model, 1)
    >>> sorted(name for name, mask in masks.items() if mask.any())
    ['adapters.1.bias', 'adapters.1.weight']
    """
    parameters = dict(encoder.named_parameters())
    with torch.no_grad():
        saved = {name: p.detach().clone() for name, p in parameters.items()}
        try:
            for p in parameters.values():
                p.zero_()
            views = encoder.subject_weights(subject)
            for view in views:
                view.fill_(1.0)
            masks = {name: p.detach() != 0 for name, p in parameters.items()}
        finally:
            for name, p in parameters.items():
                p.copy_(saved[name])
    expected = sum(view.numel() for view in views)
    if sum(int(m.sum()) for m in masks.values()) != expected or not expected:
        raise ConfigError(f"{type(encoder).__name__}: subject_weights({subject}) are not views of its parameters "
                          f"({expected} values); the new subject's weights cannot be told from the shared ones")
    return masks


def _build_encoder(context: _Context, seed: int):
    from neurodec.models import create_model

    torch.manual_seed(seed)
    encoder = create_model(context.base_encoder.model_name, **context.encoder_config)
    if context.positions is not None:
        encoder.set_subject_positions(context.subject_index, context.positions)
    return encoder


def _load_shared(encoder, base, masks: dict[str, torch.Tensor], index: int) -> None:
    """Copy every weight of ``base`` into ``encoder`` except the new subject's (masked) ones."""
    source, target = base.state_dict(), encoder.state_dict()
    unexpected = sorted(set(source) - set(target))
    if unexpected:
        raise ConfigError(f"the run's encoder has tensors {unexpected[:5]} the adapted one lacks")
    with torch.no_grad():
        for name, tensor in target.items():
            mask = masks.get(name)
            if name not in source:
                if mask is None or not bool(mask.all()):
                    raise ConfigError(f"{name}: not in the run's encoder and not the new subject's own weight")
                continue
            old = source[name]
            if old.shape == tensor.shape:
                if mask is None:
                    tensor.copy_(old)
                else:
                    tensor[~mask] = old[~mask]
            elif mask is not None and bool(mask.all()):
                continue  # the new subject's own module, sized for its voxels
            elif (tensor.ndim and tensor.shape[1:] == old.shape[1:] and tensor.shape[0] == old.shape[0] + 1
                  and index == old.shape[0] and (mask is None or not bool(mask[: old.shape[0]].any()))):
                tensor[: old.shape[0]] = old  # a per-subject stack grown by the new subject's row
            else:
                raise ConfigError(f"{name}: shape {tuple(old.shape)} in the run's encoder, {tuple(tensor.shape)} with "
                                  f"the new subject; cannot carry the shared weights over")


def _freeze_shared(encoder, masks: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """requires_grad only where the new subject owns elements; returns the partly owned tensors
    (name -> (parameter, frozen copy)) whose shared rows are restored after every step."""
    partial = {}
    for name, p in encoder.named_parameters():
        owned = masks[name]
        p.requires_grad_(bool(owned.any()))
        if owned.any() and not owned.all():
            partial[name] = (p, p.detach().clone())
    return partial


def _frozen_norms_to_eval(encoder) -> None:
    """Batch-norm layers of the frozen model keep their running statistics (eval mode)."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


# ---------------------------------------------------------------------- aligned initialisation
#: Penalties of the aligned initialisation's ridge, as multiples of the mean squared singular
#: value of the new subject's centred (K, voxels) matrix; one is chosen on validation stimuli.
RIDGE_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-4.0, 4.01, 0.5))


def _linear_subject_stage(encoder, index: int) -> torch.nn.Linear | None:
    """The subject's own stage when it is one linear map of its voxels (MindEye's adapters)."""
    adapters = getattr(encoder, "adapters", None)
    if getattr(encoder, "input_kind", None) != "fmri" or adapters is None or index >= len(adapters):
        return None
    module = adapters[index]
    return module if type(module) is torch.nn.Linear else None


def _reference_latents(context: _Context) -> dict[str, np.ndarray] | None:
    """Per stimulus id of the run's training split, the trained subjects' mean latent: each
    trained subject's own adapter on its own responses (transformed by the run's transform,
    repetitions averaged), averaged over the trained subjects that saw the stimulus. None
    where the run's encoder has no linear per-subject stage."""
    if context.reference is not None:
        return context.reference or None
    from neurodec.data import TrialDataset
    from neurodec.data.transforms import load_transform
    from neurodec.training._setup import TRANSFORM_FOLDER

    base = context.base_encoder
    labels = list(context.subject_labels)
    if _linear_subject_stage(base, 0) is None:
        context.reference = {}
        return None
    transform = load_transform(context.run_dir / TRANSFORM_FOLDER) if context.config.data.transforms else None
    dataset = TrialDataset(context.study, recordings=context.trained_recordings,
                           stimuli=list(context.splits["train"]), average_repetitions=True, transform=transform)
    if list(dataset.subject_labels[: len(labels)]) != labels:  # the run's subject indices no longer hold
        logger.warning("the store's subjects %s no longer start with the run's %s: the trained subjects' latents "
                       "are not used to initialise sub-%s", dataset.subject_labels, labels, context.subject)
        context.reference = {}
        return None
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for begin in range(0, len(dataset), 256):
            batch = dataset.read_batch(np.arange(begin, min(begin + 256, len(dataset))))
            for subject in np.unique(batch["subject"]).tolist():
                rows = np.flatnonzero(batch["subject"] == subject)
                voxels = torch.from_numpy(np.stack([batch["brain"][r] for r in rows]).astype(np.float32))
                latents = base.adapters[subject](voxels).double().numpy()
                for row, latent in zip(rows.tolist(), latents):
                    key = batch["stimulus_id"][row]
                    sums[key] = sums.get(key, 0.0) + latent
                    counts[key] = counts.get(key, 0) + 1
    context.reference = {key: (total / counts[key]).astype(np.float32) for key, total in sums.items()}
    return context.reference


def _ridge_path(x: np.ndarray, y: np.ndarray):
    """Closed-form ridge from ``x`` (n, features) to ``y`` (n, outputs) with an unpenalised
    intercept, for each relative penalty: ``(x_mean, y_mean, right, left, singular, scale)``
    such that the weights for ``alpha`` are ``right @ diag(s / (s**2 + alpha * scale)) @ left``
    (the SVD of the centred ``x``: dual form, cheap when n << features)."""
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    u, singular, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    keep = singular > singular.max() * 1e-10
    u, singular, vt = u[:, keep], singular[keep], vt[keep]
    scale = float(np.mean(singular ** 2))
    return x_mean, y_mean, vt.T, u.T @ (y - y_mean), singular, scale


def _anatomical_prior(context: _Context) -> np.ndarray | None:
    """The new subject's adapter weights (hidden, voxels) read off the trained subjects' adapters
    at the same position in a common space: each new voxel gets the mean of the trained
    subjects' adapter columns of voxels at its position (within half a voxel), zero where no
    trained subject has one. None unless every recording declares the same template space
    (``info["space"]``): in native spaces, positions do not correspond across subjects."""
    if context.prior is not None:
        return context.prior if context.prior.size else None
    from scipy.spatial import cKDTree

    context.prior = np.empty(0)
    base, labels = context.base_encoder, list(context.subject_labels)
    new_recording = context.study.recording(context.train_set.recording_keys[0])
    recordings = [context.study.recording(key) for key in context.trained_recordings]
    spaces = {str((r.attrs.get("info") or {}).get("space", "")) for r in recordings + [new_recording]}
    if len(spaces) != 1 or "" in spaces or new_recording.voxel_ijk is None:
        logger.info("no anatomical prior for sub-%s: the recordings declare spaces %s, one common template "
                    "space is needed", context.subject, sorted(spaces))
        return None

    def world(recording) -> np.ndarray:
        ijk = np.asarray(recording.voxel_ijk, dtype=np.float64)
        affine = np.asarray(recording.affine, dtype=np.float64)
        return ijk @ affine[:3, :3].T + affine[:3, 3]

    target = world(new_recording)
    total = np.zeros((base.adapters[0].out_features, len(target)))
    count = np.zeros(len(target))
    for recording in recordings:
        index = labels.index(recording.subject)
        half_voxel = 0.5 * float(np.min(np.linalg.norm(np.asarray(recording.affine)[:3, :3], axis=0)))
        distance, column = cKDTree(world(recording)).query(target, distance_upper_bound=half_voxel)
        found = np.isfinite(distance)
        weight = base.adapters[index].weight.detach().double().cpu().numpy()
        total[:, found] += weight[:, column[found]]
        count[found] += 1
    if not count.any():
        return None
    context.prior = total / np.maximum(count, 1)
    logger.info("anatomical prior for sub-%s: %.0f%% of its voxels have a trained subject's voxel at their position",
                context.subject, 100 * np.mean(count > 0))
    return context.prior


def _initialise_new_subject(context: _Context, encoder, train: dict, score: Callable[[], float],
                            maximise: bool) -> dict[str, Any]:
    """Set the new subject's linear adapter from what the trained subjects give (see module doc).

    Candidates: the anatomical prior alone, and the prior plus a ridge correction (for each
    penalty of :data:`RIDGE_ALPHAS`) fitted on the K trials whose stimuli the trained subjects
    saw, towards their latents; the candidate with the best ``score()`` (the validation rule
    of early stopping) is kept. Falls back to the fresh (random) initialisation when neither
    a prior nor two shared stimuli exist."""
    stage = _linear_subject_stage(encoder, context.subject_index)
    if stage is None:
        return {"init": "random", "init_note": "the new subject's weights are not one linear map of its voxels"}
    prior = _anatomical_prior(context)
    reference = _reference_latents(context)
    shared = np.array([reference is not None and key in reference for key in train["stimulus_id"]])
    if prior is None and shared.sum() < 2:
        return {"init": "random", "init_note": f"no common space and {int(shared.sum())} training stimuli shared "
                                               f"with the trained subjects"}
    prior = np.zeros((stage.out_features, stage.in_features)) if prior is None else prior
    candidates: list[tuple[float | None, np.ndarray, np.ndarray]] = []  # (ridge penalty or None, weight, bias)
    if shared.sum() >= 2:
        x = train["brain"][torch.from_numpy(shared)].double().numpy()
        y = np.stack([reference[key] for key in train["stimulus_id"][shared]]).astype(np.float64)
        # Ridge on what the prior leaves unexplained, so the penalty shrinks towards the prior
        # (towards zero without one); the intercept is not penalised.
        x_mean, residual_mean, right, left, singular, scale = _ridge_path(x, y - x @ prior.T)
        if prior.any():
            candidates.append((None, prior, residual_mean))
        for alpha in sorted(RIDGE_ALPHAS, reverse=True):  # ties go to the more regularised
            correction = right @ ((singular / (singular ** 2 + alpha * scale))[:, None] * left)  # (voxels, hidden)
            candidates.append((alpha, prior + correction.T, residual_mean - x_mean @ correction))
    else:
        bias = np.mean([context.base_encoder.adapters[context.subject_labels.index(s)].bias.detach().double().numpy()
                        for s in context.trained_subjects], axis=0)
        candidates.append((None, prior, bias))
    scores = []
    for _, weight, bias in candidates:
        with torch.no_grad():
            stage.weight.copy_(torch.from_numpy(weight))
            stage.bias.copy_(torch.from_numpy(bias))
        scores.append(float(score()))
    finite = [v if math.isfinite(v) else -math.inf for v in (scores if maximise else [-v for v in scores])]
    best = int(np.argmax(finite))  # the first best: ties go to the more regularised candidate
    alpha, weight, bias = candidates[best]
    with torch.no_grad():
        stage.weight.copy_(torch.from_numpy(weight))
        stage.bias.copy_(torch.from_numpy(bias))
    names = ["prior" if a is None else f"ridge alpha={a:g}" for a, _, _ in candidates]
    return {"init": "aligned", "init_choice": names[best], "ridge_alpha": alpha, "init_score": scores[best],
            "anatomical_prior": bool(prior.any()), "n_shared_trials": int(shared.sum()),
            "init_scores": dict(zip(names, scores))}


# ---------------------------------------------------------------------- data in memory
def _read(dataset, items: Sequence[int], subject_index: int) -> dict[str, torch.Tensor]:
    batch = dataset.read_batch(list(items))
    return {
        "brain": torch.from_numpy(np.ascontiguousarray(batch["brain"], dtype=np.float32)),
        "target": torch.from_numpy(np.asarray(batch["target"], dtype=np.float32)),
        "subject": torch.full((len(items),), subject_index, dtype=torch.int64),
        "stimulus": np.asarray(batch["stimulus"]),
        "stimulus_id": np.asarray(batch["stimulus_id"]),
    }


def _available_trials(context: _Context) -> int:
    return len(context.train_set)


def _fit_data(context: _Context, n_trials: int, seed: int):
    """K training items (seeded), the transform fitted on them only, and validation and test data."""
    from neurodec.training._setup import build_transform

    available = _available_trials(context)
    if n_trials < 2:
        raise ConfigError(f"n_trials: contrastive training needs at least 2 trials, found {n_trials}")
    if n_trials > available:
        raise SplitError(f"n_trials={n_trials}: subject {context.subject!r} has only {available} training "
                         f"{'items' if context.config.data.average_train_repetitions else 'trials'} in the run's "
                         f"training split")
    chosen = np.sort(np.random.default_rng(seed).choice(available, size=n_trials, replace=False))
    transform = build_transform(context.config)
    for dataset in (context.train_set, context.val_set, context.test_set):
        dataset.transform = None  # the previous fit's transform must not be fitted over again
    if transform is not None:
        raw = context.train_set.read_batch(chosen.tolist())
        transform.fit(np.asarray(raw["brain"], dtype=np.float32), conditions=np.asarray(raw["stimulus"]),
                      subjects=np.asarray(raw["subject"]))
    for dataset in (context.train_set, context.val_set, context.test_set):
        dataset.transform = transform
    index = context.subject_index
    return (_read(context.train_set, chosen, index), _read(context.val_set, range(len(context.val_set)), index),
            _read(context.test_set, range(len(context.test_set)), index))


# ---------------------------------------------------------------------- fitting
def _selection(config: ExperimentConfig, n_val: int, metric: str | None = DEFAULT_SELECTION
               ) -> tuple[str, str, dict[str, Any]]:
    """The selection metric (``metric``, or the run's ``train.selection_metric`` when None), its
    mode and the evaluate_retrieval arguments that compute it."""
    if metric is None:
        name, mode = config.train.selection_metric, config.train.mode
    else:
        name, mode = metric, "min" if metric == "val/loss" else "max"
        if metric != "val/loss" and _METRIC.match(metric) is None:
            raise ConfigError(f"selection_metric: expected 'val/loss', 'val/<N>-way top-<k>' or 'val/full-set "
                              f"top-<k>' (or None for the run's train.selection_metric), found {metric!r}")
    match = _METRIC.match(name)
    if match is None:
        return "val/loss", "min", {}
    _, n_way, k, full_k = match.groups()
    if n_way is not None and int(n_way) > n_val:
        logger.warning("%s needs %s validation items, the new subject has %d; selecting on val/loss", name, n_way,
                       n_val)
        return "val/loss", "min", {}
    options = ({"n_ways": (int(n_way),), "top_ks": (int(k),), "full_set_top_ks": ()} if n_way is not None
               else {"n_ways": (), "top_ks": (), "full_set_top_ks": (int(full_k),)})
    return name, mode, options


def _validate(objective, val: dict[str, torch.Tensor], config: ExperimentConfig, options: dict[str, Any],
              subject: str, device: torch.device) -> dict[str, float]:
    from neurodec.metrics import evaluate_retrieval
    from neurodec.training.trainer import _local_loss

    embedded, total, size = [], 0.0, config.train.batch_size
    was_training = objective.training
    objective.eval()
    with torch.no_grad(), _local_loss(objective.loss):
        for begin in range(0, len(val["target"]), size):
            brain = val["brain"][begin: begin + size].to(device)
            target = val["target"][begin: begin + size].to(device)
            outputs = objective.embed(brain, val["subject"][begin: begin + size].to(device))
            value, _ = objective.loss(outputs, target)
            total += float(value) * len(target)
            embedded.append((outputs["embedding"] if isinstance(outputs, dict) else outputs).float().cpu())
    objective.train(was_training)
    metrics = {"val/loss": total / len(val["target"])}
    if options:
        embedding = torch.cat(embedded).reshape(len(val["target"]), -1).numpy()
        labels = None if config.data.average_val_repetitions else val["stimulus"]
        report = evaluate_retrieval(embedding, val["target"].reshape(len(embedding), -1).numpy(),
                                    subjects=np.full(len(embedding), subject), labels=labels,
                                    n_repeats=config.train.validation.n_repeats, seed=0, n_bootstrap=0, **options)
        for direction, prefix in (("brain->stimulus", "val/"), ("stimulus->brain", "val/stimulus->brain/")):
            metrics.update({prefix + key: float(v) for key, v in report[direction]["pooled"].items()})
    return metrics


def _test_scores(encoder, test: dict[str, torch.Tensor], config: ExperimentConfig, subject: str,
                 device: torch.device) -> dict[str, float]:
    from neurodec.metrics import evaluate_retrieval, full_set_name, n_way_name

    encoder.eval()
    with torch.no_grad():
        parts = [encoder(test["brain"][b: b + 256].to(device), test["subject"][b: b + 256].to(device)).float().cpu()
                 for b in range(0, len(test["target"]), 256)]
    embedding = torch.cat(parts).reshape(len(test["target"]), -1).numpy()
    n_way = min(200, len(embedding))
    labels = None if config.data.average_test_repetitions else test["stimulus"]
    report = evaluate_retrieval(embedding, test["target"].reshape(len(embedding), -1).numpy(),
                                subjects=np.full(len(embedding), subject), n_ways=(n_way,), top_ks=(1,),
                                full_set_top_ks=(1,), labels=labels, n_repeats=config.train.validation.n_repeats,
                                seed=0, n_bootstrap=0)
    pooled = report["brain->stimulus"]["pooled"]
    return {n_way_name(n_way, 1): float(pooled[n_way_name(n_way, 1)]),
            full_set_name(1): float(pooled[full_set_name(1)]), "n_way": n_way}


def _fit_one(context: _Context, n_trials: int, seed: int, steps: int, mode: str, init: str = "aligned",
             selection_metric: str | None = DEFAULT_SELECTION) -> AdaptResult:
    """Adapt (frozen shared model, new subject's weights only) or train from scratch (everything)."""
    from neurodec.losses import WeightedLoss, mixco
    from neurodec.training._distributed import Processes
    from neurodec.training.trainer import _Objective, _resolve_device, learning_rate, make_optimizer

    config = context.config
    train, val, test = _fit_data(context, n_trials, seed)
    device = _resolve_device(config.train.device, Processes())  # one process: adaptation is small
    encoder = _build_encoder(context, seed)
    loss = WeightedLoss(config.loss.terms)
    if mode == "adapted":
        masks = subject_masks(encoder, context.subject_index)
        _load_shared(encoder, context.base_encoder, masks, context.subject_index)
        partial = _freeze_shared(encoder, masks)
        loss.load_state_dict(context.loss_state, strict=True)
        loss.requires_grad_(False)  # the learned temperature is part of the shared model
    else:
        partial = {}
    encoder.to(device).train()
    loss.to(device)
    if mode == "adapted":
        _frozen_norms_to_eval(encoder)
    use_outputs = any(isinstance(spec, dict) and spec.get("brain") for spec in config.loss.terms.values())
    uses_mixco = any((spec.get("loss", name) if isinstance(spec, dict) else name) == "mixco"
                     for name, spec in config.loss.terms.items())
    objective = _Objective(encoder, loss, use_outputs)
    selection, selection_mode, options = _selection(config, len(val["target"]), selection_metric)
    initialisation: dict[str, Any] = {"init": "random"}
    if mode == "adapted" and init == "aligned":
        def score() -> float:  # early stopping's rule picks the initial state too
            return _validate(objective, val, config, options, context.subject, device)[selection]

        initialisation = _initialise_new_subject(context, encoder, train, score, selection_mode == "max")
        _frozen_norms_to_eval(encoder)
    optimizer, trained = make_optimizer(config, encoder, loss)
    frozen_copies = [(p, copy.to(device), ~masks[name].to(device)) for name, (p, copy) in partial.items()]

    patience = config.train.early_stopping_patience or DEFAULT_PATIENCE
    val_every = max(1, steps // VALIDATIONS_PER_FIT)
    batch_size = min(config.train.batch_size, n_trials)
    order = np.random.default_rng(seed + 7_919)  # batches: the same for adapted and scratch fits of a seed
    torch.manual_seed(seed)
    queue: list[int] = []
    best_value, best_step, best_state, bad, stopped = None, 0, None, 0, False

    def validate_and_keep(step: int) -> bool:
        """Validate; keep the state when it is the best so far; True when patience ran out."""
        nonlocal best_value, best_step, best_state, bad
        value = _validate(objective, val, config, options, context.subject, device)[selection]
        if mode == "adapted":
            _frozen_norms_to_eval(encoder)
        if math.isfinite(value) and (best_value is None or (
                value > best_value if selection_mode == "max" else value < best_value)):
            best_value, best_step, bad = value, step, 0
            best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
            return False
        bad += 1
        return bad >= patience

    step = 0
    validate_and_keep(0)  # the initial state is a candidate too (an aligned initialisation is often the best)
    while step < steps:
        if len(queue) < batch_size:
            queue += order.permutation(n_trials).tolist()
        rows, queue = queue[:batch_size], queue[batch_size:]
        brain, target = train["brain"][rows].to(device), train["target"][rows].to(device)
        subject = train["subject"][rows].to(device)
        plan = None
        if uses_mixco and step < config.loss.mixco.until_fraction * steps:
            brain, plan = mixco(brain, config.loss.mixco.beta, config.loss.mixco.probability, subject=subject)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, steps)
        total, _ = objective(brain, subject, target, plan)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(trained, config.optim.grad_clip_norm)
        optimizer.step()
        with torch.no_grad():  # other subjects' rows of stacked per-subject weights stay as loaded
            for p, copy, shared in frozen_copies:
                p[shared] = copy[shared]
        step += 1
        if (step % val_every == 0 or step == steps) and validate_and_keep(step):
            stopped = True
            break
    if best_state is not None:
        encoder.load_state_dict(best_state)
    encoder.requires_grad_(False)
    metrics = _test_scores(encoder, test, config, context.subject, device)
    encoder.cpu().eval()
    return AdaptResult(subject=context.subject, mode=mode, n_trials=n_trials, seed=seed, steps=steps, steps_done=step,
                       best_step=best_step, stopped_early=stopped, selection_metric=selection,
                       best_value=float("nan") if best_value is None else float(best_value), metrics=metrics,
                       subject_index=context.subject_index,
                       n_trained_parameters=int(sum(int(m.sum()) for m in masks.values()) if mode == "adapted"
                                                else sum(p.numel() for p in trained)),
                       n_test_items=len(test["target"]), run_dir=str(context.run_dir), init=initialisation,
                       train_stimuli=[str(key) for key in train["stimulus_id"]], encoder=encoder)


def _default_out_dir(run_dir: Path, subject: str) -> Path:
    return Path(run_dir) / f"adapt-sub-{subject}"


def _write_json(path: Path, document: Any) -> None:
    from neurodec.training._logs import _write_text_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomically(path, json.dumps(document, indent=1))


# ---------------------------------------------------------------------- public API
def adapt(
    run_dir: str | os.PathLike,
    subject: str,
    n_trials: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    out_dir: str | os.PathLike | None = None,
    init: str = "aligned",
    selection_metric: str | None = DEFAULT_SELECTION,
) -> AdaptResult:
    """Adapt a trained run to a new subject from ``n_trials`` of its training trials.

    The run's best encoder is rebuilt with a slot for ``subject``, its shared weights (and the
    loss's learned temperature) loaded and frozen; only the new subject's weights are trained
    for ``steps`` (default :data:`DEFAULT_STEPS`) steps on ``n_trials`` items drawn (with
    ``seed``) from the subject's trials of the run's training stimuli. Validation on the
    subject's validation stimuli selects the state and stops early; the test stimuli are
    scored. Writes ``adapt.json``, the adapted ``encoder/`` and, when the run's config has
    transforms, ``transform/`` (fitted on the K trials) to ``out_dir/k<K>-seed<s>/``
    (``out_dir`` defaults to ``run_dir/adapt-sub-<subject>``).

    ``init="aligned"`` (default) starts a linear fMRI adapter from the trained subjects: their
    adapter weights at the new subject's voxel positions (when all recordings declare one
    template space), corrected by a ridge fit from the K trials to the trained subjects'
    latents of the same stimuli; ``init="random"`` keeps the fresh initialisation (see
    ``AdaptResult.init`` for what was used). ``selection_metric`` drives early stopping and the
    choice of initial state (default ``"val/loss"``; None: the run's ``train.selection_metric``).

    Errors: a subject the run trained on (:class:`ConfigError`), one absent from the store
    (:class:`StoreError`), more trials than the subject has in the training split
    (:class:`SplitError`; :func:`adapt_curve` caps its grid instead).

    >>> result = adapt("runs/fmri", "04", n_trials=50, seed=0)     # doctest: +SKIP
    >>> result.metrics["200-way top-1"], result.n_trained_parameters   # doctest: +SKIP
    """
    _check_init(init)
    context = _load_context(run_dir, subject)
    result = _fit_one(context, int(n_trials), int(seed), int(_steps(steps)), "adapted", init, selection_metric)
    folder = Path(out_dir) if out_dir is not None else _default_out_dir(context.run_dir, context.subject)
    folder = folder / f"k{result.n_trials}-seed{result.seed}"
    result.encoder.save_pretrained(folder / "encoder")
    if context.train_set.transform is not None:  # fitted on the K trials: the encoder's input
        context.train_set.transform.save(folder / "transform")
    _write_json(folder / RESULT_FILE, result.to_dict())
    return result


def _check_init(init: str) -> None:
    if init not in INITIALISATIONS:
        raise ConfigError(f"init: expected one of {list(INITIALISATIONS)}, found {init!r}")


def _steps(steps: int | None) -> int:
    """``steps``, :data:`DEFAULT_STEPS` when None; 0 scores the initial state alone."""
    if steps is not None and int(steps) < 0:
        raise ConfigError(f"steps: expected a number of optimisation steps >= 0, found {steps}")
    return DEFAULT_STEPS if steps is None else int(steps)


def _grid(grid: Sequence[int], available: int) -> list[int]:
    capped = sorted({min(int(k), available) for k in grid})
    if any(int(k) > available for k in grid):
        logger.warning("n_trials grid %s capped at the %d training items available: %s", list(grid), available, capped)
    return capped


def adapt_curve(
    run_dir: str | os.PathLike,
    subject: str,
    *,
    grid: Sequence[int] = DEFAULT_GRID,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int | None = None,
    out_dir: str | os.PathLike | None = None,
    init: str = "aligned",
    selection_metric: str | None = DEFAULT_SELECTION,
) -> dict[str, Any]:
    """Adapted vs from-scratch test accuracy of a new subject for each K in ``grid``, over ``seeds``.

    For each K and seed, both fits use the same K trials, batches, steps and early stopping;
    the from-scratch model is the same architecture, freshly initialised, everything trained.
    ``init`` and ``selection_metric`` as :func:`adapt` (the selection rule applies to both fits;
    ``init`` to the adapted one only). K values above the available training items are capped (with a warning). Writes
    ``curve.json`` and ``curve.md`` to ``out_dir`` (default ``run_dir/adapt-sub-<subject>``).

    Returns ``{"subject", "run_dir", "metric", "grid", "seeds", "steps", "available_trials",
    "by_k": {"<K>": {"adapted": {"mean", "sd", "values", "full-set top-1": {...}},
    "scratch": {...}}}, "runs": [AdaptResult.to_dict(), ...]}`` (sd with ddof=1).

    >>> curve = adapt_curve("runs/fmri", "04", grid=(25, 100), seeds=(0, 1, 2))   # doctest: +SKIP
    >>> curve["by_k"]["25"]["adapted"]["mean"] > curve["by_k"]["25"]["scratch"]["mean"]   # doctest: +SKIP
    """
    from neurodec._logging import progress

    if len(seeds) < 1:
        raise ConfigError("seeds: give at least one seed (three or more for a standard deviation)")
    _check_init(init)
    context = _load_context(run_dir, subject)
    ks = _grid(grid, _available_trials(context))
    steps = _steps(steps)
    runs: list[AdaptResult] = []
    jobs = [(k, seed, mode) for k in ks for seed in seeds for mode in ("adapted", "scratch")]
    for k, seed, mode in progress(jobs, f"adapting to sub-{context.subject}"):
        result = _fit_one(context, k, int(seed), steps, mode, init, selection_metric)
        result.encoder = None  # keep memory flat over the grid
        runs.append(result)
    metric = next(name for name in runs[0].metrics if name.endswith("-way top-1"))
    by_k: dict[str, Any] = {}
    for k in ks:
        by_k[str(k)] = {}
        for mode in ("adapted", "scratch"):
            chosen = [r for r in runs if r.n_trials == k and r.mode == mode]
            summary: dict[str, Any] = {}
            for name in (metric, "full-set top-1"):
                values = [r.metrics[name] for r in chosen]
                summary[name] = {"mean": float(np.mean(values)),
                                 "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}
            by_k[str(k)][mode] = {**summary[metric], **{"full-set top-1": summary["full-set top-1"]}}
    curve = {"subject": context.subject, "run_dir": str(context.run_dir), "metric": metric, "grid": ks,
             "seeds": [int(s) for s in seeds], "steps": steps, "available_trials": _available_trials(context),
             "trained_subjects": context.trained_subjects, "init": init,
             "selection_metric": runs[0].selection_metric, "by_k": by_k, "runs": [r.to_dict() for r in runs]}
    folder = Path(out_dir) if out_dir is not None else _default_out_dir(context.run_dir, context.subject)
    _write_json(folder / CURVE_FILE, curve)
    from neurodec.training._logs import _write_text_atomically

    _write_text_atomically(folder / CURVE_MARKDOWN, curve_markdown(curve))
    return curve


def curve_markdown(curve: dict[str, Any]) -> str:
    """The curve as a small markdown table (mean +- sd over seeds, in percent)."""
    metric = curve["metric"]
    lines = [f"# New-subject adaptation: sub-{curve['subject']}", "",
             f"Run `{curve['run_dir']}` (trained on {', '.join(curve['trained_subjects'])}); test {metric}, "
             f"mean +- sd over seeds {curve['seeds']}; {curve['steps']} steps, early stopping on "
             f"{curve.get('selection_metric', 'validation')}; adapter initialisation: {curve.get('init', 'random')}.",
             "",
             "| K trials | adapted (frozen shared model) | from scratch | full-set top-1 adapted "
             "| full-set top-1 scratch |",
             "|---:|---:|---:|---:|---:|"]
    for k, row in curve["by_k"].items():
        a, s = row["adapted"], row["scratch"]
        lines.append(f"| {k} | {100 * a['mean']:.1f} +- {100 * a['sd']:.1f} | {100 * s['mean']:.1f} +- "
                     f"{100 * s['sd']:.1f} | {100 * a['full-set top-1']['mean']:.1f} | "
                     f"{100 * s['full-set top-1']['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def leave_one_subject_out(
    config: ExperimentConfig | str | os.PathLike | dict,
    *,
    subjects: Sequence[str] | None = None,
    n_trials: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    fold_callback: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Per held-out subject: train a NEW run on the other subjects, then adapt it to the held-out one.

    Each fold builds its model inside the trainer from the fold's config and ``train.seed``
    (never an object of another fold), in ``out_dir/without-sub-<s>/`` (default
    ``<runs_dir>/<name>-loso``); its training subjects are checked not to include the held-out
    one. ``n_trials`` (default: all the held-out subject's training items) and ``steps`` go to
    :func:`adapt`. ``fold_callback(subject, encoder)`` sees each fold's encoder after it is
    built, before the first step. Writes ``loso.json``.

    >>> folds = leave_one_subject_out("configs/fmri.yaml", n_trials=100)       # doctest: +SKIP
    >>> folds["mean"]["200-way top-1"]                                         # doctest: +SKIP
    """
    from neurodec.store import open_store
    from neurodec.training.trainer import _Trainer

    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if config.train.n_seeds != 1:
        raise ConfigError("train.n_seeds: leave_one_subject_out trains one run per fold; set n_seeds: 1")
    study = open_store(config.data.store)
    pool = list(config.data.subjects) if config.data.subjects is not None else list(study.subjects)
    held_out = list(pool if subjects is None else subjects)
    unknown = sorted(set(held_out) - set(study.subjects))
    if unknown:
        raise StoreError(f"subjects: {unknown} are not in {study.url}; it holds {study.subjects}")
    base = Path(out_dir) if out_dir is not None else Path(config.output.runs_dir) / f"{config.output.name}-loso"
    folds: dict[str, Any] = {}
    for subject in held_out:
        others = [s for s in pool if s != subject]
        if not others:
            raise ConfigError(f"leave_one_subject_out: no subject left to train on without {subject!r}")
        document = config.to_dict()
        document["data"]["subjects"] = others
        fold_config = load_config(document)
        fold_dir = base / f"without-sub-{subject}"
        trainer = _Trainer(fold_config, fold_dir, True, None)
        try:
            trainer.setup()  # a fresh model from the fold's config and seed
            if fold_callback is not None:
                fold_callback(subject, trainer.encoder)
            if trainer.counters["done"]:
                trainer.write_result()
            else:
                trainer.fit()
        finally:
            trainer.close()
        trained = trained_subjects(fold_dir)
        if subject in trained:
            raise SplitError(f"{fold_dir}: the fold trained on {trained}, which includes the held-out {subject!r}")
        context_trials = n_trials
        if context_trials is None:
            context_trials = _available_trials(_load_context(fold_dir, subject))
        result = adapt(fold_dir, subject, context_trials, seed=seed, steps=steps)
        folds[subject] = {"run_dir": str(fold_dir), "trained_subjects": trained, **result.to_dict()}
    names = sorted({name for fold in folds.values() for name in fold["metrics"] if name != "n_way"})
    summary = {
        "folds": folds,
        "mean": {n: float(np.mean([f["metrics"][n] for f in folds.values() if n in f["metrics"]])) for n in names},
        "sd": {n: float(np.std([f["metrics"][n] for f in folds.values() if n in f["metrics"]], ddof=1))
               if len(folds) > 1 else 0.0 for n in names},
    }
    _write_json(base / LOSO_FILE, summary)
    return summary


__all__ = ["AdaptResult", "adapt", "adapt_curve", "curve_markdown", "leave_one_subject_out", "subject_masks",
           "trained_subjects"]
