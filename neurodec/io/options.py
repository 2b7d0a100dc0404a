"""What an ingestion does, as one validated options model.

``IngestOptions`` is plain pydantic (v2) with ``extra="forbid"`` everywhere, so a misspelt key
in a YAML file or a dict is an error that names the key, instead of an option silently ignored.
It is filled from YAML, from a dict, or from command-line flags through
:func:`options_from_flags`; every field has a default that reproduces what the native reader
returns (no filtering, no resampling, no rejection, personal data dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from neurodec.errors import ConfigError
from neurodec.store.records import STIMULUS_KINDS

EventSource = Literal["auto", "annotations", "stim", "bids", "file", "none"]
StimulusKind = Literal[STIMULUS_KINDS]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EventOptions(_Section):
    """Where the events of a recording come from and how they name stimuli.

    ``source``: ``auto`` takes, in order, an events ``file`` when given, the BIDS
    ``events.tsv`` of a BIDS recording, the recording's annotations, then its stim channel.
    ``rule`` is a format template over the fields of an event (``trial_type``, ``value``,
    ``sample``, ``comment`` for evoked files, ``volume`` for fMRI beta maps); it is used
    when no ``stimuli`` table is given. Events whose ``trial_type`` or ``value`` is listed in
    ``ignore`` are dropped before naming; events the table does not name raise
    :class:`~neurodec.errors.EventError` unless ``unmapped="drop"``.
    """

    source: EventSource = "auto"
    file: Path | None = None
    rule: str = "{trial_type}"
    ignore: list[str] = []
    unmapped: Literal["error", "drop"] = "error"
    stim_channel: str | list[str] | None = None
    shortest_event: int = 2

    @field_validator("ignore", mode="before")
    @classmethod
    def _ignore_as_strings(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            value = [value]
        return [str(v) for v in value] if value is not None else []


class EpochOptions(_Section):
    """Cut continuous recordings into trials around each event (``mne.Epochs``).

    ``baseline`` is ``None`` (no baseline correction) by default; give ``[null, 0]`` for
    MNE's usual pre-stimulus baseline. ``reject`` takes MNE's peak-to-peak thresholds, e.g.
    ``{"eeg": 150e-6}``; nothing is rejected by default.
    """

    tmin: float
    tmax: float
    baseline: tuple[float | None, float | None] | None = None
    reject: dict[str, float] | None = None
    reject_by_annotation: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "EpochOptions":
        if self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be greater than tmin ({self.tmin})")
        return self


class BandPassOptions(_Section):
    """``raw.filter(l_freq, h_freq)``; either edge may be ``None`` (high- or low-pass only)."""

    l_freq: float | None = None
    h_freq: float | None = None
    method: Literal["fir", "iir"] = "fir"

    @model_validator(mode="after")
    def _one_edge(self) -> "BandPassOptions":
        if self.l_freq is None and self.h_freq is None:
            raise ValueError("give l_freq, h_freq or both")
        return self


class PreprocessingOptions(_Section):
    """Steps applied in this order: crop, notch, band-pass, (epoching), resample,
    robust scaling, clamp. Each step applied is recorded in the recording's
    ``preprocessing`` list with its parameters."""

    crop: tuple[float, float | None] | None = None
    notch: list[float] | None = None
    bandpass: BandPassOptions | None = None
    resample: float | None = None
    # MNE's resampling method. "fft" (MNE's default, npad="auto") moves samples by up to half
    # an output sample on short recordings (the padded length rounds the rate ratio);
    # "polyphase" (scipy's resample_poly) keeps every output sample k at time k / sfreq.
    resample_method: Literal["fft", "polyphase"] = "fft"
    robust_scale: bool = False
    clamp: float | None = None

    @field_validator("notch", mode="before")
    @classmethod
    def _notch_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) else value

    @field_validator("resample", "clamp")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be positive, found {value}")
        return value


class FmriOptions(_Section):
    """How NIfTI images become trials x voxels.

    ``method``: ``betas`` (each volume of a 3D/4D image is one trial), ``glm`` (a
    least-squares-all GLM on a 4D series: one regressor per trial, nilearn's design matrix),
    ``hrf_shift`` (per trial, the mean of the volumes acquired from ``onset + hrf_delay`` to
    ``onset + hrf_delay + duration``; ``window`` replaces the events' durations), or ``auto``
    (``glm`` for a 4D image with events, ``betas`` otherwise). ``mask`` is a NIfTI file; when
    not given it is computed with ``nilearn.masking.compute_epi_mask`` (``mask_opening`` is its
    ``opening``: 0 keeps thin volumes of a few slices from being eroded away).
    """

    method: Literal["auto", "betas", "glm", "hrf_shift"] = "auto"
    mask: Path | None = None
    mask_opening: int = 2
    tr: float | None = None
    slice_time_ref: float = 0.0
    hrf_model: str | None = "glover"
    drift_model: Literal["cosine", "polynomial"] | None = "cosine"
    high_pass: float = 0.01
    drift_order: int = 1
    noise_model: Literal["ols", "ar1"] = "ols"
    hrf_delay: float = 5.0
    window: float | None = None


class IngestOptions(_Section):
    """Everything :func:`neurodec.io.ingest` can be told.

    For single files, ``subject``/``session``/``run``/``task`` set the labels of the stored
    recordings (default: BIDS entities of the file name, else subject ``01``, session ``01``,
    runs numbered in the order given). For a BIDS folder they select which recordings to
    ingest. ``picks`` keeps only some channels (MNE channel types or names).

    >>> options = IngestOptions.model_validate({"subject": "07", "epochs": {"tmin": -0.1, "tmax": 0.5}})
    >>> options.epochs.tmax, options.events.source
    (0.5, 'auto')
    """

    subject: str | None = None
    session: str | None = None
    run: str | None = None
    task: str | None = None
    modality: Literal["eeg", "meg", "ieeg", "fmri"] | None = None
    kind: StimulusKind = "image"
    stimuli: Path | None = None
    keep_personal: bool = False
    picks: list[str] | None = None
    channels_file: Path | None = None
    name: str = ""
    events: EventOptions = EventOptions()
    epochs: EpochOptions | None = None
    preprocessing: PreprocessingOptions = PreprocessingOptions()
    fmri: FmriOptions = FmriOptions()

    @field_validator("subject", "session", "run", "task", mode="before")
    @classmethod
    def _label_as_string(cls, value: Any) -> Any:
        # YAML turns "01" written without quotes into the integer 1; keep labels as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @classmethod
    def from_yaml(cls, path: str | Path) -> "IngestOptions":
        """Read options from a YAML file (the same keys as the model)."""
        import yaml

        path = Path(path)
        try:
            content = yaml.load(path.read_text(), Loader=_yaml_loader()) or {}
        except OSError as error:
            raise ConfigError(f"options file {path}: cannot read it ({error})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"options file {path}: not valid YAML ({error})") from None
        if not isinstance(content, Mapping):
            raise ConfigError(f"options file {path}: expected a mapping of options, found {type(content).__name__}")
        return _validate(content, where=f"options file {path}")


def _yaml_loader():
    import yaml

    class LabelKeepingLoader(yaml.SafeLoader):
        """YAML reads ``subject: 01`` as the integer 1; labels with leading zeros stay text."""

    def integer_or_label(loader, node):
        text = loader.construct_scalar(node)
        if len(text) > 1 and text.startswith("0") and text.isdigit():
            return text
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    LabelKeepingLoader.add_constructor("tag:yaml.org,2002:int", integer_or_label)
    return LabelKeepingLoader


def _validate(content: Mapping[str, Any], where: str) -> IngestOptions:
    try:
        return IngestOptions.model_validate(dict(content))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(top level)'}: {problem['msg']}"
            + (f" (found {problem['input']!r})" if problem["type"] != "extra_forbidden" else " (unknown key)")
            for problem in error.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def load_options(options: IngestOptions | Mapping[str, Any] | str | Path | None = None) -> IngestOptions:
    """Options from a model, a dict, a YAML file path, or ``None`` (all defaults).

    >>> load_options({"events": {"rule": "{value}"}}).events.rule
    '{value}'
    """
    if options is None:
        return IngestOptions()
    if isinstance(options, IngestOptions):
        return options
    if isinstance(options, (str, Path)):
        return IngestOptions.from_yaml(options)
    if isinstance(options, Mapping):
        return _validate(options, where="ingest options")
    raise ConfigError(
        f"ingest options: expected IngestOptions, a mapping or a YAML path, found {type(options).__name__}"
    )


def options_from_flags(
    base: IngestOptions | Mapping[str, Any] | str | Path | None = None,
    *,
    subject: str | None = None,
    session: str | None = None,
    run: str | None = None,
    task: str | None = None,
    stimuli: str | Path | None = None,
    events_from: str | None = None,
    events_file: str | Path | None = None,
    epochs: tuple[float, float] | None = None,
    keep_personal: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> IngestOptions:
    """Options from a base (file, dict, model) with command-line flags laid over it.

    Flags left at ``None`` keep the base's value. ``overrides`` takes dotted keys
    (``{"preprocessing.resample": 100}``), as the command line's ``--set`` would.

    >>> options_from_flags(subject="03", epochs=(-0.2, 0.8), events_from="stim").epochs.tmin
    -0.2
    """
    content = load_options(base).model_dump(exclude_unset=True)
    flags = {
        "subject": subject,
        "session": session,
        "run": run,
        "task": task,
        "stimuli": stimuli,
        "keep_personal": keep_personal,
        "events.source": events_from,
        "events.file": events_file,
    }
    if epochs is not None:
        tmin, tmax = epochs
        flags["epochs.tmin"] = float(tmin)
        flags["epochs.tmax"] = float(tmax)
    flags.update(overrides or {})
    for dotted, value in flags.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        section = content
        for parent in parents:
            section = section.setdefault(parent, {})
            if not isinstance(section, dict):
                raise ConfigError(f"option override {dotted!r}: {parent!r} is not a section")
        section[leaf] = value
    return _validate(content, where="ingest options (with command-line flags)")
