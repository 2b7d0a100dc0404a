"""Transforms fitted across trials: fitted on training data only, saved with the run.

Each transform is fitted from a dataset (or an array) and applied to batches of trials,
``(trials, channels, times)`` or ``(trials, voxels)``, as numpy arrays. Fitting streams
through the trials in batches, so it never holds the training set in memory, and it reads
the trials raw (no transform, no averaging over repetitions). Give it the *training*
dataset: the statistics then cannot see a validation or test trial, and the record kept
in ``fitted_on`` (store, recordings, number of trials, a hash of the stimulus ids) says
which data they came from.

>>> scaler = Compose([RobustScaler(), Clamp(20.0)]).fit(train)      # doctest: +SKIP
>>> scaler.save(run_dir / "transform")                              # doctest: +SKIP
>>> train.transform = test.transform = load_transform(run_dir / "transform")  # doctest: +SKIP

Saved form: a folder with ``transform.json`` (class, constructor arguments, ``fitted_on``)
and ``transform.npz`` (the fitted arrays).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neurodec.errors import ConfigError, RegistryError, StoreError


# ----------------------------------------------------------------- trial sources
class _ArraySource:
    """Trials given as an array, with optional condition and subject labels."""

    def __init__(self, data: np.ndarray, conditions: Sequence[int] | None, subjects: Sequence[int] | None):
        self.data = np.asarray(data, dtype=np.float32)
        n = len(self.data)
        self.conditions = np.arange(n) if conditions is None else np.asarray(conditions)
        self.subjects = np.zeros(n, dtype=np.int64) if subjects is None else np.asarray(subjects, dtype=np.int64)
        if len(self.conditions) != n or len(self.subjects) != n:
            raise ConfigError(
                f"fit: {n} trials but {len(self.conditions)} conditions and {len(self.subjects)} subjects"
            )

    def trial_batches(self, batch_trials: int = 512, *, by_condition: bool = False, subject: int | None = None):
        rows = np.arange(len(self.data)) if subject is None else np.flatnonzero(self.subjects == subject)
        _, codes = np.unique(self.conditions[rows], return_inverse=True)
        if by_condition:
            rows, codes = rows[np.argsort(codes, kind="stable")], np.sort(codes, kind="stable")
        begin = 0
        while begin < len(rows):
            end = min(len(rows), begin + batch_trials)
            while by_condition and end < len(rows) and codes[end] == codes[end - 1]:
                end += 1
            chosen = rows[begin:end]
            yield self.data[chosen], codes[begin:end], self.subjects[chosen]
            begin = end

    def present_subjects(self) -> list[int]:
        return np.unique(self.subjects).tolist()

    def describe(self) -> dict[str, Any]:
        return {"array_shape": list(self.data.shape), "n_trials": len(self.data)}


class _Through:
    """A source whose trials pass through already fitted transforms (for :class:`Compose`)."""

    def __init__(self, source, steps: Sequence["Transform"]):
        self.source, self.steps = source, list(steps)

    def trial_batches(self, batch_trials: int = 512, *, by_condition: bool = False, subject: int | None = None):
        for brain, conditions, subjects in self.source.trial_batches(
            batch_trials, by_condition=by_condition, subject=subject
        ):
            for step in self.steps:
                brain = step.transform(brain, subjects=subjects)
            yield brain, conditions, subjects

    def present_subjects(self) -> list[int]:
        return self.source.present_subjects()

    def describe(self) -> dict[str, Any]:
        return self.source.describe()


class _OneSubject:
    def __init__(self, source, subject: int):
        self.source, self.subject = source, subject

    def trial_batches(self, batch_trials: int = 512, *, by_condition: bool = False, subject: int | None = None):
        return self.source.trial_batches(batch_trials, by_condition=by_condition, subject=self.subject)

    def present_subjects(self) -> list[int]:
        return [self.subject]

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "subject_index": self.subject}


def _as_source(data, conditions=None, subjects=None):
    if hasattr(data, "trial_batches"):
        if conditions is not None or subjects is not None:
            raise ConfigError("fit: conditions and subjects come from the dataset; pass them only with an array")
        return data
    return _ArraySource(data, conditions, subjects)


def _per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """Per-channel statistics shaped to broadcast over (trials, channels, ...)."""
    return values.reshape((1, -1) + (1,) * (ndim - 2))


# ------------------------------------------------------------------------ base
class Transform:
    """Base class: ``fit`` on training trials, ``transform`` batches, ``save``/``load`` to a folder."""

    needs_fit = True

    def __init__(self) -> None:
        self.fitted_on: dict[str, Any] | None = None

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return {}

    def fit(self, data, conditions: Sequence[int] | None = None, subjects: Sequence[int] | None = None) -> "Transform":
        """Fit on a (training) dataset, or on an array of trials with optional labels."""
        source = _as_source(data, conditions, subjects)
        self._fit(source)
        self.fitted_on = source.describe()
        return self

    def _fit(self, source) -> None:
        pass

    def transform(self, brain: np.ndarray, subjects: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, brain: np.ndarray, subjects: np.ndarray | None = None) -> np.ndarray:
        return self.transform(brain, subjects=subjects)

    def _require_fitted(self) -> None:
        if self.needs_fit and self.fitted_on is None:
            raise ConfigError(f"{type(self).__name__} is not fitted: call .fit(training dataset) first")

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments}){'' if self.fitted_on or not self.needs_fit else ' (not fitted)'}"

    # ------------------------------------------------------------- saving
    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(spec, arrays)``: what :meth:`save` writes."""
        self._require_fitted()
        spec = {"transform": type(self).__name__, "config": self.get_config(), "fitted_on": self.fitted_on}
        return spec, self._arrays()

    @classmethod
    def from_state(cls, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Transform":
        transform = _transform_class(spec["transform"])(**spec.get("config", {}))
        transform._set_arrays(arrays)
        transform.fitted_on = spec.get("fitted_on")
        return transform

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``transform.json`` and ``transform.npz`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec, arrays = self.state()
        np.savez(folder / "transform.npz", **arrays)
        (folder / "transform.json").write_text(json.dumps({"format": 1, **spec}, indent=1, default=float))
        return folder

    @staticmethod
    def load(folder: str | os.PathLike) -> "Transform":
        return load_transform(folder)


def load_transform(folder: str | os.PathLike) -> Transform:
    """Read a transform written by :meth:`Transform.save`.

    >>> transform = load_transform("runs/eeg/transform")     # doctest: +SKIP
    """
    folder = Path(folder)
    spec_path, arrays_path = folder / "transform.json", folder / "transform.npz"
    if not spec_path.exists() or not arrays_path.exists():
        raise StoreError(f"{folder}: expected transform.json and transform.npz (written by Transform.save)")
    spec = json.loads(spec_path.read_text())
    with np.load(arrays_path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return _transform_class(spec.get("transform", "")).from_state(spec, arrays)


def create_transform(name: str, **options) -> Transform:
    """A transform by the name experiment configs use (``robust_scaler``, ``temporal_pool``...).

    >>> create_transform("clamp", limit=20.0).limit
    20.0
    """
    by_config_name = {
        "standard_scaler": StandardScaler,
        "robust_scaler": RobustScaler,
        "clamp": Clamp,
        "temporal_pool": TemporalPool,
        "mvnn": MVNN,
    }
    if name not in by_config_name:
        raise RegistryError(f"unknown transform {name!r}; known transforms: {sorted(by_config_name)}")
    return by_config_name[name](**options)


def _transform_class(name: str) -> type[Transform]:
    classes = (StandardScaler, RobustScaler, Clamp, TemporalPool, MVNN, Compose, PerSubject)
    known = {cls.__name__: cls for cls in classes}
    if name not in known:
        raise RegistryError(f"unknown transform {name!r}; known transforms: {sorted(known)}")
    return known[name]


# ---------------------------------------------------------------------- scalers
class StandardScaler(Transform):
    """Per-channel (or per-voxel) standardisation: mean and standard deviation over trials and times.

    >>> StandardScaler().fit(train).transform(batch).mean()       # doctest: +SKIP
    """

    def __init__(self) -> None:
        super().__init__()
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def _fit(self, source) -> None:
        count, mean, squares = 0, None, None
        for brain, _, _ in source.trial_batches():
            x = np.moveaxis(brain.astype(np.float64), 1, 0).reshape(brain.shape[1], -1)
            n, batch_mean = x.shape[1], x.mean(axis=1)
            batch_squares = ((x - batch_mean[:, None]) ** 2).sum(axis=1)
            if mean is None:
                count, mean, squares = n, batch_mean, batch_squares
                continue
            # Chan et al.'s pairwise update: stable for long streams of batches.
            delta = batch_mean - mean
            total = count + n
            mean = mean + delta * n / total
            squares = squares + batch_squares + delta**2 * count * n / total
            count = total
        std = np.sqrt(squares / count)
        self.mean, self.scale = mean, np.where(std > 0, std, 1.0)

    def transform(self, brain, subjects=None):
        self._require_fitted()
        return ((brain - _per_channel(self.mean, brain.ndim)) / _per_channel(self.scale, brain.ndim)).astype(np.float32)

    def _arrays(self):
        return {"mean": self.mean, "scale": self.scale}

    def _set_arrays(self, arrays):
        self.mean, self.scale = arrays["mean"], arrays["scale"]


class RobustScaler(Transform):
    """Per-channel median and interquartile range (as the Défossez et al. MEG pipeline).

    Quantiles need the values themselves, so they are taken from a seeded uniform sample
    of at most ``max_trials`` training trials (all of them when there are fewer).
    """

    def __init__(self, max_trials: int = 1000, seed: int = 0, quantile_range: Sequence[float] = (25.0, 75.0)):
        super().__init__()
        self.max_trials, self.seed, self.quantile_range = int(max_trials), int(seed), tuple(quantile_range)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def get_config(self):
        return {"max_trials": self.max_trials, "seed": self.seed, "quantile_range": list(self.quantile_range)}

    def _fit(self, source) -> None:
        rng = np.random.default_rng(self.seed)
        kept_keys, kept = np.empty(0), None
        for brain, _, _ in source.trial_batches():
            # Bottom-k of random keys: a uniform sample of fixed size from a stream.
            keys = np.concatenate([kept_keys, rng.random(len(brain))])
            pool = brain if kept is None else np.concatenate([kept, brain])
            chosen = np.argsort(keys)[: self.max_trials]
            kept_keys, kept = keys[chosen], pool[chosen]
        values = np.moveaxis(kept, 1, 0).reshape(kept.shape[1], -1)
        low, median, high = np.percentile(values, [self.quantile_range[0], 50.0, self.quantile_range[1]], axis=1)
        spread = high - low
        self.center, self.scale = median, np.where(spread > 0, spread, 1.0)

    def transform(self, brain, subjects=None):
        self._require_fitted()
        return ((brain - _per_channel(self.center, brain.ndim)) / _per_channel(self.scale, brain.ndim)).astype(
            np.float32
        )

    def _arrays(self):
        return {"center": self.center, "scale": self.scale}

    def _set_arrays(self, arrays):
        self.center, self.scale = arrays["center"], arrays["scale"]


class Clamp(Transform):
    """Clip values to ``[-limit, limit]`` (after scaling; 20 in Défossez et al.). Needs no fit."""

    needs_fit = False

    def __init__(self, limit: float = 20.0):
        super().__init__()
        self.limit = float(limit)

    def get_config(self):
        return {"limit": self.limit}

    def transform(self, brain, subjects=None):
        return np.clip(brain, -self.limit, self.limit).astype(np.float32, copy=False)


class TemporalPool(Transform):
    """Average non-overlapping groups of ``factor`` time samples: 200 Hz -> 50 Hz with ``factor=4``.

    A boxcar low-pass then a downsample, done on the trials already epoched: it cuts the
    cost of every temporal layer (and the ridge's feature count) by ``factor``. Trailing
    samples that do not fill a group are dropped. Needs no fit; the output sampling rate is
    ``sfreq / factor`` and a model reading it must be built for ``n_times // factor`` samples.

    >>> TemporalPool(4).transform(np.ones((2, 3, 10), dtype=np.float32)).shape
    (2, 3, 2)
    """

    needs_fit = False

    def __init__(self, factor: int = 4):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ConfigError(f"TemporalPool factor must be a whole number >= 1, found {factor!r}")
        self.factor = int(factor)

    def get_config(self):
        return {"factor": self.factor}

    def transform(self, brain, subjects=None):
        if brain.ndim != 3:
            raise ConfigError(f"TemporalPool needs trials x channels x times, found shape {brain.shape}")
        n_steps = brain.shape[2] // self.factor
        if n_steps == 0:
            raise ConfigError(f"TemporalPool: {brain.shape[2]} time samples are fewer than factor={self.factor}")
        grouped = brain[:, :, : n_steps * self.factor].reshape(brain.shape[0], brain.shape[1], n_steps, self.factor)
        return grouped.mean(axis=3, dtype=np.float32)


class MVNN(Transform):
    """Multivariate noise normalisation (THINGS-EEG2, NICE): whiten channels by the noise covariance.

    The noise is each training trial's residual around the mean of its condition (subject,
    stimulus). Its channel covariance is estimated per time point (pooled over conditions,
    ``n - 1`` degrees of freedom per condition), then averaged over time (default) or kept
    per time point (``per_time=True``), shrunk towards ``trace/p * I`` by ``shrinkage``
    (a number in [0, 1], or ``"auto"`` for the Ledoit-Wolf coefficient of the residuals,
    computed from streamed sums with sklearn's formula), and its inverse square root is
    applied to every split. Stimuli shown once contribute no residual.
    """

    def __init__(self, per_time: bool = False, shrinkage: float | str = "auto"):
        super().__init__()
        if shrinkage != "auto" and not 0 <= float(shrinkage) <= 1:
            raise ConfigError(f"MVNN shrinkage must be 'auto' or in [0, 1], found {shrinkage!r}")
        self.per_time, self.shrinkage = bool(per_time), shrinkage if shrinkage == "auto" else float(shrinkage)
        self.whitener: np.ndarray | None = None
        self.covariance: np.ndarray | None = None
        self.shrinkage_: np.ndarray | None = None

    def get_config(self):
        return {"per_time": self.per_time, "shrinkage": self.shrinkage}

    def _fit(self, source) -> None:
        scatter = fourth = None
        rows = 0  # residual rows (trials of repeated conditions), per time point
        dof = 0
        for brain, conditions, _ in source.trial_batches(by_condition=True):
            if brain.ndim != 3:
                raise ConfigError(f"MVNN needs trials x channels x times, found trials of shape {brain.shape[1:]}")
            order = np.argsort(conditions, kind="stable")  # each condition's trials side by side
            x, labels = brain[order].astype(np.float64), conditions[order]
            starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
            counts = np.diff(np.r_[starts, len(labels)])
            means = np.add.reduceat(x, starts, axis=0) / counts[:, None, None]
            repeated = np.repeat(counts > 1, counts)
            residuals = (x - np.repeat(means, counts, axis=0))[repeated]
            by_time = residuals.transpose(2, 0, 1)  # (times, trials, channels)
            batch_scatter = by_time.transpose(0, 2, 1) @ by_time
            batch_fourth = ((by_time**2).sum(axis=2) ** 2).sum(axis=1)
            scatter = batch_scatter if scatter is None else scatter + batch_scatter
            fourth = batch_fourth if fourth is None else fourth + batch_fourth
            rows += int(repeated.sum())
            dof += int((counts[counts > 1] - 1).sum())
        if scatter is None or dof == 0:
            raise ConfigError(
                "MVNN cannot be fitted: no training stimulus was presented more than once, so there is no "
                "residual around a condition mean (fit it on data with repeated presentations)"
            )
        if not self.per_time:  # pool the time points
            scatter, fourth, rows, dof = (
                scatter.sum(axis=0)[None],
                fourth.sum(keepdims=True),
                rows * scatter.shape[0],
                dof * scatter.shape[0],
            )
        n_channels = scatter.shape[-1]
        if self.shrinkage == "auto":
            shrinkage = np.asarray([_ledoit_wolf_coefficient(s, f, rows) for s, f in zip(scatter, fourth)])
        else:
            shrinkage = np.full(len(scatter), self.shrinkage)
        covariance = scatter / dof
        identity = np.eye(n_channels)
        mu = np.trace(covariance, axis1=1, axis2=2) / n_channels
        covariance = (1 - shrinkage)[:, None, None] * covariance + (shrinkage * mu)[:, None, None] * identity
        values, vectors = np.linalg.eigh(covariance)
        if np.any(values <= 0):
            raise ConfigError(
                f"MVNN: the noise covariance is singular ({int((values <= 0).sum())} non-positive eigenvalues; "
                f"{dof} residual degrees of freedom for {n_channels} channels); use shrinkage > 0"
            )
        whitener = (vectors * values[:, None, :] ** -0.5) @ vectors.transpose(0, 2, 1)
        if not self.per_time:
            covariance, whitener, shrinkage = covariance[0], whitener[0], shrinkage[0]
        self.covariance, self.whitener, self.shrinkage_ = covariance, whitener, shrinkage

    def transform(self, brain, subjects=None):
        self._require_fitted()
        whitener = self.whitener.astype(np.float32)
        if brain.ndim != 3:
            raise ConfigError(f"MVNN transforms trials x channels x times, found shape {brain.shape}")
        if not self.per_time:
            return np.matmul(whitener, brain.astype(np.float32, copy=False))
        if brain.shape[2] != len(whitener):
            raise ConfigError(f"MVNN was fitted on {len(whitener)} time points, the batch has {brain.shape[2]}")
        by_time = brain.astype(np.float32, copy=False).transpose(2, 1, 0)  # (times, channels, trials)
        return np.ascontiguousarray((whitener @ by_time).transpose(2, 1, 0))

    def _arrays(self):
        return {"whitener": self.whitener, "covariance": self.covariance, "shrinkage": np.asarray(self.shrinkage_)}

    def _set_arrays(self, arrays):
        self.whitener, self.covariance, self.shrinkage_ = arrays["whitener"], arrays["covariance"], arrays["shrinkage"]


def _ledoit_wolf_coefficient(scatter: np.ndarray, fourth_moment: float, n_rows: int) -> float:
    """Ledoit-Wolf shrinkage of zero-mean rows from their sums (sklearn's formula).

    ``scatter`` is ``X.T @ X`` and ``fourth_moment`` the sum over rows of ``|x|**4``;
    ``sklearn.covariance.ledoit_wolf_shrinkage(X, assume_centered=True)`` gives the same.
    """
    p = scatter.shape[0]
    empirical = scatter / n_rows
    mu = np.trace(empirical) / p
    frobenius = float((empirical**2).sum())
    beta = (fourth_moment / n_rows - frobenius) / (p * n_rows)
    delta = (frobenius - p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


# ---------------------------------------------------------------- combinations
class Compose(Transform):
    """Transforms in sequence; each is fitted on the output of those before it.

    >>> Compose([RobustScaler(), Clamp(20)]).fit(train)     # doctest: +SKIP
    """

    def __init__(self, steps: Sequence[Transform]):
        super().__init__()
        self.steps = list(steps)

    def get_config(self):
        return {}

    def __repr__(self) -> str:
        return f"Compose({self.steps!r})"

    def _fit(self, source) -> None:
        for position, step in enumerate(self.steps):
            if step.needs_fit:
                step._fit(_Through(source, self.steps[:position]))
                step.fitted_on = source.describe()

    def transform(self, brain, subjects=None):
        for step in self.steps:
            brain = step.transform(brain, subjects=subjects)
        return brain

    def state(self):
        self._require_fitted()
        specs, arrays = [], {}
        for position, step in enumerate(self.steps):
            spec, step_arrays = step.state()
            specs.append(spec)
            arrays.update({f"{position}/{name}": value for name, value in step_arrays.items()})
        return {"transform": "Compose", "config": {}, "fitted_on": self.fitted_on, "steps": specs}, arrays

    @classmethod
    def from_state(cls, spec, arrays):
        steps = []
        for position, step_spec in enumerate(spec["steps"]):
            prefix = f"{position}/"
            own = {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}
            steps.append(_transform_class(step_spec["transform"]).from_state(step_spec, own))
        composed = cls(steps)
        composed.fitted_on = spec.get("fitted_on")
        return composed


class PerSubject(Transform):
    """One copy of a transform per subject, fitted on that subject's trials only.

    Needed where subjects differ in shape (fMRI voxel counts), and usual for MVNN (NICE
    whitens each subject separately). Batches are routed by their ``subject`` indices.

    >>> PerSubject(StandardScaler()).fit(train_fmri)     # doctest: +SKIP
    """

    def __init__(self, template: Transform):
        super().__init__()
        self.template = template
        self.by_subject: dict[int, Transform] = {}

    def _fit(self, source) -> None:
        self.by_subject = {
            int(subject): _clone(self.template).fit(_OneSubject(source, int(subject)))
            for subject in source.present_subjects()
        }

    def transform(self, brain, subjects=None):
        self._require_fitted()
        if subjects is None:
            raise ConfigError("PerSubject.transform needs the subject index of each trial (subjects=...)")
        subjects = np.asarray(subjects)
        missing = sorted(set(np.unique(subjects).tolist()) - set(self.by_subject))
        if missing:
            raise ConfigError(
                f"PerSubject: no transform fitted for subject indices {missing} (fitted: {sorted(self.by_subject)})"
            )
        present = np.unique(subjects)
        if present.size == 1:
            return self.by_subject[int(present[0])].transform(brain, subjects=subjects)
        out = None
        for subject in present.tolist():
            rows = np.flatnonzero(subjects == subject)
            part = self.by_subject[subject].transform(brain[rows], subjects=subjects[rows])
            if out is None:
                out = np.empty((len(brain),) + part.shape[1:], dtype=part.dtype)
            out[rows] = part
        return out

    def state(self):
        self._require_fitted()
        specs, arrays = {}, {}
        for subject, fitted in self.by_subject.items():
            spec, subject_arrays = fitted.state()
            specs[str(subject)] = spec
            arrays.update({f"{subject}/{name}": value for name, value in subject_arrays.items()})
        return {"transform": "PerSubject", "config": {}, "fitted_on": self.fitted_on, "subjects": specs}, arrays

    @classmethod
    def from_state(cls, spec, arrays):
        by_subject = {}
        for subject, subject_spec in spec["subjects"].items():
            prefix = f"{subject}/"
            own = {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}
            by_subject[int(subject)] = _transform_class(subject_spec["transform"]).from_state(subject_spec, own)
        transform = cls(_clone(next(iter(by_subject.values()))))
        transform.by_subject = by_subject
        transform.fitted_on = spec.get("fitted_on")
        return transform


def _clone(transform: Transform) -> Transform:
    """An unfitted copy with the same constructor arguments."""
    if isinstance(transform, Compose):
        return Compose([_clone(step) for step in transform.steps])
    if isinstance(transform, PerSubject):
        return PerSubject(_clone(transform.template))
    return type(transform)(**transform.get_config())
