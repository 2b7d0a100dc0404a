"""The experiment config: a validated schema (pydantic v2) read from plain YAML, with dotted overrides.

Every section refuses unknown keys and values of the wrong type; the error is a one-line
:class:`~neurodec.errors.ConfigError` naming the key path (``train.lr: ...``). The one open
section is ``model``: besides ``name`` it holds the model's constructor arguments, which the
trainer checks against the registered model before any training starts.

>>> from neurodec.config import ExperimentConfig
>>> config = ExperimentConfig.model_validate({"data": {"store": "study.zarr", "target": "clip"},
...                                          "model": {"name": "nice", "n_filters": 8}})
>>> config.train.batch_size, config.model.arguments()
(64, {'n_filters': 8})

From a file, with overrides as on the command line (``neurodec train CONFIG train.lr=1e-3``)::

    config = load_config("configs/demo/eeg.yaml", overrides=["optim.lr=1e-3", "model.n_outputs=64"])

This module imports nothing of neurodec but :mod:`neurodec.errors` (it is the schema; the
trainer, evaluation and command line all read it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neurodec.errors import ConfigError

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SpeechEvaluationConfig",
    "SplitConfig",
    "TrainConfig",
    "ValidationConfig",
    "WindowConfig",
    "apply_overrides",
    "config_error",
    "load_config",
    "save_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------ data
class StandardScalerSpec(_Section):
    """Per-channel mean and standard deviation (:class:`neurodec.data.StandardScaler`)."""

    name: Literal["standard_scaler"]
    per_subject: bool = False


class RobustScalerSpec(_Section):
    """Per-channel median and IQR (:class:`neurodec.data.RobustScaler`, Défossez et al.)."""

    name: Literal["robust_scaler"]
    max_trials: int = Field(1000, ge=1)
    seed: int = 0
    quantile_range: tuple[float, float] = (25.0, 75.0)
    per_subject: bool = False


class ClampSpec(_Section):
    """Clip to ``[-limit, limit]`` (:class:`neurodec.data.Clamp`)."""

    name: Literal["clamp"]
    limit: float = Field(20.0, gt=0)
    per_subject: bool = False


class TemporalPoolSpec(_Section):
    """Average groups of ``factor`` time samples (:class:`neurodec.data.transforms.TemporalPool`).

    The trainer fills the model's ``n_times`` and ``sfreq`` from the stored (unpooled) data:
    set ``model.n_times`` and ``model.sfreq`` to the pooled values."""

    name: Literal["temporal_pool"]
    factor: int = Field(4, ge=1)
    per_subject: bool = False


class MVNNSpec(_Section):
    """Multivariate noise normalisation (:class:`neurodec.data.MVNN`, NICE / THINGS-EEG2)."""

    name: Literal["mvnn"]
    per_time: bool = False
    shrinkage: Union[Literal["auto"], Annotated[float, Field(ge=0, le=1)]] = "auto"
    per_subject: bool = True


TransformSpec = Annotated[
    Union[StandardScalerSpec, RobustScalerSpec, ClampSpec, TemporalPoolSpec, MVNNSpec], Field(discriminator="name")
]


class SplitConfig(_Section):
    """How trials are held out. ``by: stimulus`` uses the stimuli table's test split (or
    ``test_fraction``); ``by: runs`` holds out ``test_runs`` or the last ``test_fraction`` of
    each recording. Validation is ``val_fraction`` of the training stimuli, drawn with ``seed``;
    with ``val_groups`` (a metadata field of the stimuli, e.g. ``block`` for speech segments)
    whole groups of them."""

    by: Literal["stimulus", "runs"] = "stimulus"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    test_fraction: float | None = Field(None, gt=0, lt=1)
    test_runs: list[str] | None = None
    val_groups: str | None = None


class WindowConfig(_Section):
    """Windows cut from continuous recordings around each onset (seconds; see WindowDataset)."""

    tmin: float = -0.5
    tmax: float = 2.5
    shift: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> "WindowConfig":
        if not self.tmax > self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be later than tmin ({self.tmin})")
        return self


class DataConfig(_Section):
    """Which store, recordings and target, how to split, which transforms (fitted on train only)."""

    store: str
    target: str
    modality: Literal["eeg", "meg", "ieeg", "fmri"] | None = None
    recordings: list[str] | None = None
    subjects: list[str] | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    average_train_repetitions: bool = False
    average_val_repetitions: bool = True
    average_test_repetitions: bool = True
    transforms: list[TransformSpec] = Field(default_factory=list)
    cache_dir: str | None = None
    window: WindowConfig | None = None
    voxel_batches: Literal["by_subject", "pad"] = "by_subject"


# ----------------------------------------------------------------------- model
class ModelConfig(BaseModel):
    """``name`` of a registered encoder and its constructor arguments (any other key).

    ``n_chans``, ``n_times``, ``sfreq``, ``n_subjects``, ``n_voxels`` and ``n_outputs`` are
    filled from the data and the target when omitted; the trainer refuses arguments the
    model does not accept.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments given in the config (everything but ``name``)."""
        return dict(self.model_extra or {})


# ------------------------------------------------------------------------ loss
class MixCoConfig(_Section):
    """MixCo input mixing, applied when a loss term is ``mixco`` (MindEye's BiMixCo)."""

    beta: float = Field(0.15, gt=0)
    probability: float = Field(0.5, ge=0, le=1)
    until_fraction: float = Field(1.0, gt=0, le=1)


class LossConfig(_Section):
    """Loss terms as :class:`neurodec.losses.WeightedLoss` takes them: ``{name: weight}`` or
    ``{name: {weight, loss, brain, target, ...loss arguments}}``."""

    terms: dict[str, Union[float, dict[str, Any]]] = Field(default_factory=lambda: {"clip": 1.0})
    mixco: MixCoConfig = Field(default_factory=MixCoConfig)

    @model_validator(mode="after")
    def _has_terms(self) -> "LossConfig":
        if not self.terms:
            raise ValueError("at least one loss term is needed, e.g. {clip: 1.0}")
        return self


# ----------------------------------------------------------------------- optim
class OptimConfig(_Section):
    """AdamW with a learning-rate schedule, set per step.

    ``warmup_cosine``: linear warm-up over ``warmup_steps`` then cosine decay to
    ``min_lr_ratio * lr``; ``one_cycle``: cosine rise over ``pct_start`` of the steps from
    ``lr / div_factor`` to ``lr``, then cosine decay to ``lr / (div_factor * final_div_factor)``
    (the learning rate only; Adam's betas stay fixed).
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["none", "warmup_cosine", "one_cycle"] = "none"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, ge=1)
    final_div_factor: float = Field(1e4, ge=1)
    grad_clip_norm: float | None = Field(None, gt=0)


# ----------------------------------------------------------------------- train
class ValidationConfig(_Section):
    """Retrieval metrics computed on the validation split (``val/<metric>``)."""

    n_ways: list[int] = Field(default_factory=lambda: [2, 10, 50, 100, 200])
    top_ks: list[int] = Field(default_factory=lambda: [1, 5])
    full_set_top_ks: list[int] = Field(default_factory=lambda: [1, 10])
    n_repeats: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)


class TrainConfig(_Section):
    """The training loop. ``batch_size`` is the GLOBAL batch (split across processes)."""

    epochs: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=2)
    drop_last: bool = True
    window_batches: int = Field(1, ge=1)
    seed: int = 0
    n_seeds: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(1, ge=1)
    val_unit: Literal["epoch", "step"] = "epoch"
    checkpoint_every_steps: int = Field(100, ge=1)
    selection_metric: str = "val/loss"
    selection_mode: Literal["max", "min"] | None = None
    early_stopping_patience: int | None = Field(None, ge=1)
    sync_batchnorm: bool = False
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _has_length(self) -> "TrainConfig":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps (or both: training stops at the first reached)")
        if not self.selection_metric.startswith("val/"):
            raise ValueError(f"selection_metric must be a validation metric 'val/...', found "
                             f"{self.selection_metric!r} (checkpoints are never selected on training or test data)")
        return self

    @property
    def mode(self) -> str:
        """``selection_mode``, or ``min`` for a loss and ``max`` for anything else."""
        if self.selection_mode is not None:
            return self.selection_mode
        return "min" if self.selection_metric.endswith("loss") else "max"


class OutputConfig(_Section):
    """Where the run folder goes: ``<runs_dir>/<name>`` (name defaults to the config file's stem)."""

    runs_dir: str = "runs"
    name: str | None = None


class RidgeBaselineConfig(_Section):
    """The ridge baseline of ``neurodec evaluate`` (see ``neurodec.evaluation.baselines``)."""

    # M/EEG: average groups of this many consecutive time samples of the transformed trials
    # before flattening (5 at 50 Hz = 100 ms bins). Fewer features than single trials keeps the
    # linear map from fitting noise; 1 keeps every sample. fMRI items have no time axis.
    time_pool: int = Field(1, ge=1)
    alphas: list[Annotated[float, Field(gt=0)]] | None = None   # default: logspace(-2, 6, 17)


class SpeechEvaluationConfig(_Section):
    """Speech segment retrieval in ``neurodec evaluate`` (docs/speech-evaluation.md).

    ``enabled: auto`` scores it when the run reads windows of continuous recordings
    (``data.window``) and every test stimulus is an ``audio`` segment whose metadata names
    its ``word``; ``true`` requires it (an error says what is missing), ``false`` skips it.
    ``max_negatives`` caps the candidates of each query, the true segment included
    (brainmagick's ``wer_negatives``: 10,000)."""

    enabled: Union[bool, Literal["auto"]] = "auto"
    max_negatives: int = Field(10_000, ge=2)
    top_ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 10])
    word_top_ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10])


class EvaluationConfig(_Section):
    """What ``neurodec evaluate`` computes beyond the encoder's own retrieval.

    Speech runs (docs/speech-evaluation.md) embed and rank the test windows ``chunk_items``
    at a time and keep only per-query ranks; the sections that need every flattened
    prediction at once (N-way / full-set retrieval, the ridge baseline) are computed only
    when their arrays fit ``max_memory_gb``, else the report says they were left out."""

    ridge: RidgeBaselineConfig = Field(default_factory=RidgeBaselineConfig)
    speech: SpeechEvaluationConfig = Field(default_factory=SpeechEvaluationConfig)
    max_memory_gb: float = Field(4.0, gt=0)
    chunk_items: int = Field(512, ge=1)


class ReconstructionConfig(_Section):
    """How ``neurodec reconstruct`` turns a run's brain embeddings into images (docs/reconstruction.md)."""

    decoder: str | None = None            # a saved image decoder folder (neurodec train-decoder)
    prior: bool = False                   # sample the run's diffusion_prior term first
    low_level: bool = True                # ridge brain embedding -> blurry image, then img2img
    low_level_size: int = Field(16, ge=2)  # side of the blurry image the ridge predicts
    strength: float = Field(0.75, gt=0, le=1)  # img2img: how far into the schedule the blurry image is noised
    num_inference_steps: int | None = Field(None, ge=1)   # default: the decoder's
    guidance_scale: float | None = Field(None, ge=0)      # default: the decoder's
    scheduler: str | None = None          # a diffusers scheduler class name; default: the decoder's
    seed: int = 0                         # item i is generated from seed + i
    batch_size: int = Field(32, ge=1)
    items_per_subject: int | None = Field(None, ge=1)  # the first items of each subject only (None: all)
    max_items: int | None = Field(None, ge=1)  # then the first items of the split only (None: all)


class ExperimentConfig(_Section):
    """The whole experiment. See ``docs/training.md`` for every key."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    reconstruction: ReconstructionConfig = Field(default_factory=ReconstructionConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON/YAML values (model arguments included)."""
        return self.model_dump(mode="json")


# ------------------------------------------------------------------- loading
def config_error(error: ValidationError, source: str = "config") -> ConfigError:
    """One-line :class:`ConfigError` from pydantic's error list, naming each key path."""
    parts = []
    for item in error.errors():
        # Discriminated unions add the tag (e.g. 'clamp') to the path; keep it, it helps.
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        found = item.get("input")
        quiet = item["type"] in ("missing", "extra_forbidden") or isinstance(found, dict)
        shown = "" if quiet else f" (found {found!r})"
        parts.append(f"{path}: {message}{shown}")
    return ConfigError(f"{source}: " + "; ".join(parts))


def _yaml_loader():
    """A safe YAML loader that reads ``1e-3`` as a number (YAML 1.1 would read a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )
    return Loader


def _read_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return _read_yaml(text)
    except yaml.YAMLError:
        return text


def _schema_of(annotation: Any) -> Any:
    """The BaseModel class inside an annotation (``X | None``), else None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _schema_of(argument)
        if found is not None:
            return found
    return None


def _check_override_path(keys: list[str], pair: str) -> None:
    """Refuse an override naming a key the schema does not have (the open model section aside)."""
    schema: Any = ExperimentConfig
    for depth, key in enumerate(keys):
        if schema is None:
            return  # inside a free-form dict (loss terms, model arguments) or a list
        fields = schema.model_fields
        if key not in fields:
            if schema.model_config.get("extra") == "allow":
                return
            where = ".".join(keys[:depth]) or "the top level"
            raise ConfigError(f"override {pair!r}: unknown key {'.'.join(keys[: depth + 1])!r}; "
                              f"{where} has {sorted(fields)}")
        schema = _schema_of(fields[key].annotation)


def apply_overrides(document: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` pairs in a (copied) config dict; values are parsed as YAML.

    >>> apply_overrides({"train": {"seed": 0}}, ["train.seed=3", "optim.lr=1e-4"])
    {'train': {'seed': 3}, 'optim': {'lr': 0.0001}}
    """
    import copy

    document = copy.deepcopy(document)
    for pair in overrides:
        keys, value = split_override(pair)
        _check_override_path(keys, pair)
        node = document
        for depth, part in enumerate(keys[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {pair!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return document


def split_override(pair: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` as ``(["a", "b"], value)``, the value read as YAML (``1e-3`` a number).

    >>> split_override("preprocessing.resample=100")
    (['preprocessing', 'resample'], 100)
    """
    key, separator, value = str(pair).partition("=")
    key = key.strip()
    if not separator or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override expects dotted.key=value (e.g. train.lr=1e-3), found {pair!r}")
    return key.split("."), _parse_value(value)


def load_config(
    source: str | os.PathLike | dict[str, Any],
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Read a YAML config (or a dict), apply dotted overrides, validate.

    ``output.name`` defaults to the file's stem, so the same command finds the same run
    folder again (and resumes it).

    >>> config = load_config({"data": {"store": "s.zarr", "target": "clip"}, "model": {"name": "nice"}},
    ...                      overrides=["train.batch_size=32", "model.n_outputs=64"])
    >>> config.train.batch_size, config.model.arguments()["n_outputs"]
    (32, 64)
    """
    import yaml

    name = "config"
    if isinstance(source, dict):
        document = source
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            document = _read_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            first_line = str(error).splitlines()[0] if str(error) else "invalid YAML"
            raise ConfigError(f"{path}: not valid YAML ({first_line})") from None
        if document is None:
            document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: expected a mapping of sections (data, model, ...), found {type(document).__name__}")
    document = apply_overrides(document, overrides)
    try:
        config = ExperimentConfig.model_validate(document)
    except ValidationError as error:
        raise config_error(error, name) from None
    if config.output.name is None:
        config.output.name = Path(name).stem if not isinstance(source, dict) else "run"
    return config


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temporary file, then rename).

    >>> save_config(config, "runs/demo/config.yaml")     # doctest: +SKIP
    """
    import tempfile

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)
    return path
