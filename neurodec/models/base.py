"""The base class of every brain encoder, its saved form, and the registry of encoders by name.

A brain encoder is a ``torch.nn.Module`` that maps a batch of brain recordings and the
subject index of each sample to embeddings::

    y = model(x, subject)           # x: (batch, n_chans, n_times) or (batch, voxels)
                                    # subject: LongTensor (batch,)
                                    # y: (batch, n_outputs) or (batch, n_outputs, time)

Every encoder takes the same signal arguments (``n_chans``, ``n_times``, ``sfreq``,
``n_subjects``, ``n_outputs``; fMRI encoders ``n_voxels``, one count per subject), records
its constructor arguments as ``model.config``, and is saved to a folder holding
``config.json`` and ``model.safetensors``:

>>> from neurodec.models import create_model, load_pretrained
>>> model = create_model("nice", n_chans=17, n_times=100, n_outputs=32)
>>> model.save_pretrained("my-encoder")                     # doctest: +SKIP
>>> same = load_pretrained("my-encoder")                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from neurodec.errors import ConfigError, RegistryError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Bumped when the layout of a saved folder changes, so old folders can be migrated.
SAVED_FORMAT_VERSION = 1

_REGISTRY: dict[str, type[BrainEncoder]] = {}

EncoderClass = TypeVar("EncoderClass", bound=type["BrainEncoder"])


def _json_ready(value: Any, where: str) -> Any:
    """Turn tuples, numpy scalars and arrays into JSON types; refuse what JSON cannot hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_ready(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_ready(item, where) for key, item in value.items()}
    if hasattr(value, "tolist"):  # numpy arrays and scalars, 0-d tensors
        return _json_ready(value.tolist(), where)
    raise ConfigError(
        f"{where}: constructor arguments must be JSON values (numbers, strings, lists, dicts) "
        f"so the model can be saved; found {type(value).__name__}"
    )


def _config_digest(name: str, config: dict[str, Any]) -> str:
    canonical = json.dumps({"model": name, "config": config}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``.

    A reader never sees a half-written file: ``os.replace`` is atomic on one file system.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_module_folder(module: torch.nn.Module, folder: str | os.PathLike[str], name: str,
                       config: dict[str, Any]) -> Path:
    """``folder/config.json`` (name, format version, config) and ``folder/model.safetensors``
    (the state dict, with a digest of the config), each written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in module.state_dict().items()}
    metadata = {"neurodec_model": name, "config_sha256": _config_digest(name, config),
                "format_version": str(SAVED_FORMAT_VERSION)}
    _write_atomically(folder / WEIGHTS_FILE, lambda path: save_file(tensors, path, metadata=metadata))
    document = {"model": name, "format_version": SAVED_FORMAT_VERSION, "config": config}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    _write_atomically(folder / CONFIG_FILE, lambda path: Path(path).write_text(text, encoding="utf-8"))
    return folder


def read_module_folder(folder: str | os.PathLike[str], what: str,
                       check_document: Callable[[Any, Path], None]) -> tuple[dict[str, Any], Path, Path]:
    """``(document, config_path, weights_path)`` of a folder written by :func:`save_module_folder`.

    Checks that both files exist, that ``config.json`` is JSON accepted by
    ``check_document(document, config_path)`` and that its format version is readable;
    :func:`check_config_digest` then checks the weights belong to this config.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; a saved {what} folder holds {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE}, written by save_pretrained")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{config_path}: not valid JSON ({error})") from error
    check_document(document, config_path)
    version = document.get("format_version", SAVED_FORMAT_VERSION)
    if version != SAVED_FORMAT_VERSION:
        raise ConfigError(f"{config_path}: format_version {version} is not readable by this neurodec "
                          f"(reads {SAVED_FORMAT_VERSION})")
    return document, config_path, weights_path


def check_config_digest(document: dict[str, Any], config_path: Path, weights_path: Path, what: str) -> None:
    """The weights of a :func:`save_module_folder` folder must carry the digest of its config."""
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("config_sha256") not in (None, _config_digest(document["model"], document["config"])):
        raise ConfigError(f"{weights_path}: these weights were saved with a different config than "
                          f"{config_path} (config_sha256 mismatch); save the {what} again")


def is_compiling() -> bool:
    """Whether torch.compile is tracing (checks that read tensor values are skipped then)."""
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(check()) if check is not None else False


class BrainEncoder(torch.nn.Module):
    """Base class of every brain encoder: shared signal arguments, config, save and load.

    Subclasses call ``super().__init__(n_outputs=..., n_chans=..., ...)`` and implement
    ``forward(x, subject)``. The arguments of the subclass constructor are recorded
    automatically (after it returns) as :attr:`config`, so ``type(model)(**model.config)``
    rebuilds the same architecture. Constructor arguments must therefore be JSON values.

    Signal arguments, the same everywhere (None where a model does not use one):

    - ``n_outputs``: size of the embedding (per time step or per token).
    - ``n_chans``, ``n_times``, ``sfreq``: M/EEG input shape and sampling rate (Hz).
    - ``n_subjects``: number of subjects the subject-specific parts are built for.
    - ``n_voxels``: fMRI only, the voxel count of each subject (a list, one per subject).

    >>> from neurodec.models import create_model
    >>> model = create_model("nice", n_chans=17, n_times=100, n_outputs=32)
    >>> model.config["n_outputs"], model.model_name
    (32, 'nice')
    """

    #: Registry name, set by :func:`register_model`.
    model_name: ClassVar[str] = ""
    #: "meeg" (x: batch, channels, times) or "fmri" (x: batch, voxels).
    input_kind: ClassVar[str] = "meeg"
    #: Substrings of the names of parameters that legitimately receive no gradient from
    #: ``forward_outputs`` (e.g. behind a layer initialised to zero); the shared tests check them.
    parameters_without_gradient: ClassVar[tuple[str, ...]] = ()

    _config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return
        signature = inspect.signature(init)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
            raise TypeError(f"{cls.__name__}.__init__ must list its arguments by name (no *args/**kwargs) "
                            "so they can be recorded as the model's config")

        @functools.wraps(init)
        def recording_init(self: BrainEncoder, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            # Parent constructors run inside the child's: only the outermost one records.
            if type(self).__init__ is recording_init:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = {key: value for key, value in bound.arguments.items() if key != "self"}
                object.__setattr__(self, "_config", _json_ready(arguments, f"{cls.__name__} config"))

        recording_init._records_config = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(
        self,
        n_outputs: int,
        n_chans: int | None = None,
        n_times: int | None = None,
        sfreq: float | None = None,
        n_subjects: int = 1,
        n_voxels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if n_outputs is None or int(n_outputs) < 1:
            raise ConfigError(f"{type(self).__name__}: n_outputs must be a positive integer, found {n_outputs!r}")
        if int(n_subjects) < 1:
            raise ConfigError(f"{type(self).__name__}: n_subjects must be >= 1, found {n_subjects!r}")
        self.n_outputs = int(n_outputs)
        self.n_chans = None if n_chans is None else int(n_chans)
        self.n_times = None if n_times is None else int(n_times)
        self.sfreq = None if sfreq is None else float(sfreq)
        self.n_subjects = int(n_subjects)
        self.n_voxels = None if n_voxels is None else [int(n) for n in n_voxels]

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (a copy), JSON-ready; ``type(model)(**config)`` rebuilds it."""
        return copy.deepcopy(getattr(self, "_config", {}))

    @property
    def is_subject_specific(self) -> bool:
        """Whether some weights belong to single subjects (see :meth:`subject_weights`)."""
        return len(self.subject_weights(0)) > 0

    def subject_weights(self, subject: int) -> list[torch.Tensor]:
        """Views of the weights that only ``subject`` uses (its adapter, its subject layer...).

        Zeroing them changes the output of that subject's samples only; a new subject can be
        fine-tuned by training these alone (MindBridge's reset-tuning).

        >>> from neurodec.models import create_model
        >>> model = create_model("mindeye", n_voxels=[50, 40], n_outputs=8, hidden_dim=16, n_blocks=1)
        >>> [tuple(w.shape) for w in model.subject_weights(1)]
        [(16, 40), (16,)]
        """
        if not 0 <= int(subject) < self.n_subjects:
            raise IndexError(f"subject index {subject} out of range for n_subjects={self.n_subjects}")
        views: list[torch.Tensor] = []
        for module in self.modules():
            if module is not self and hasattr(module, "weights_of_subject"):
                views.extend(module.weights_of_subject(int(subject)))
        return views

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of parameter values (all, or those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---------------------------------------------------------------- forward
    def forward_outputs(self, x: Any, subject: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        """Every output of the model by name; ``"embedding"`` is what ``forward`` returns.

        Models with extra heads (e.g. MindEye's low-level head) add entries here.
        """
        return {"embedding": self(x, subject, **inputs)}

    def dummy_inputs(self, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
        """Random inputs of the right shapes, samples cycling over subjects (for tests and demos).

        >>> from neurodec.models import create_model
        >>> model = create_model("nice", n_chans=17, n_times=100, n_outputs=32).eval()
        >>> model(**model.dummy_inputs(batch_size=3)).shape
        torch.Size([3, 32])
        """
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, self.n_chans, self.n_times, generator=generator)
        return {"x": x, "subject": torch.arange(batch_size) % self.n_subjects}

    def _check_subject(self, subject: torch.Tensor, batch_size: int) -> torch.Tensor:
        if not isinstance(subject, torch.Tensor):
            subject = torch.as_tensor(subject)
        if subject.ndim != 1 or subject.shape[0] != batch_size:
            raise ValueError(f"{type(self).__name__}: subject must be a 1-D LongTensor of one index per sample "
                             f"(batch {batch_size}), found shape {tuple(subject.shape)}")
        if subject.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"{type(self).__name__}: subject must hold integer indices, found {subject.dtype}")
        # Reading the values forces a device sync; skip it while tracing with torch.compile.
        if not is_compiling() and batch_size and (
            int(subject.min()) < 0 or int(subject.max()) >= self.n_subjects
        ):
            raise ValueError(f"{type(self).__name__}: subject indices must lie in [0, {self.n_subjects}), "
                             f"found {subject.min().item()}..{subject.max().item()}")
        return subject.long()

    def _check_meeg_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3:
            raise ValueError(f"{type(self).__name__}: x must be (batch, channels, times), found shape {tuple(x.shape)}")
        if self.n_chans is not None and x.shape[1] != self.n_chans:
            raise ValueError(f"{type(self).__name__}: x has {x.shape[1]} channels, the model was built for "
                             f"n_chans={self.n_chans}")

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/config.json`` and ``folder/model.safetensors`` (each atomically).

        The weights file carries a digest of the config, so :func:`load_pretrained` notices
        a config and weights that do not belong together.

        >>> from neurodec.models import create_model, load_pretrained
        >>> model = create_model("nice", n_chans=17, n_times=100, n_outputs=32)
        >>> folder = model.save_pretrained("my-encoder")        # doctest: +SKIP
        >>> load_pretrained(folder).config == model.config      # doctest: +SKIP
        True
        """
        if not self.model_name or _REGISTRY.get(self.model_name) is not type(self):
            raise RegistryError(f"{type(self).__name__} is not registered (use @register_model) "
                                "so it could not be rebuilt from a saved folder")
        return save_module_folder(self, folder, self.model_name, self.config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> BrainEncoder:
        """Rebuild the saved encoder (the class named in ``config.json``) and load its weights.

        Called on a subclass, it also checks that the saved model is of that class.

        >>> from neurodec.models import BrainEncoder
        >>> model = BrainEncoder.from_pretrained("my-encoder")   # doctest: +SKIP
        """
        from safetensors.torch import load_file

        def check(document: Any, config_path: Path) -> None:
            if not isinstance(document, dict) or not {"model", "config"} <= set(document):
                raise ConfigError(f"{config_path}: expected an object with keys 'model' and 'config', found "
                                  f"{sorted(document) if isinstance(document, dict) else type(document).__name__}")

        document, config_path, weights_path = read_module_folder(folder, "encoder", check)
        name, config = document["model"], document["config"]
        model_class = get_model_class(name)
        if not issubclass(model_class, cls):
            raise ConfigError(f"{config_path}: holds a '{name}' model ({model_class.__name__}), "
                              f"not a {cls.__name__}")
        accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise ConfigError(f"{config_path}: field 'config' has arguments {unknown} that {model_class.__name__} "
                              f"does not accept (accepted: {sorted(accepted)})")
        check_config_digest(document, config_path, weights_path, "model")
        model = model_class(**config)
        state = load_file(str(weights_path), device="cpu")
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ConfigError(f"{weights_path}: tensors do not match a {name} built from {config_path} "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        model.load_state_dict(state, strict=True)
        return model.to(device)


# --------------------------------------------------------------------- registry
def register_model(name: str) -> Callable[[EncoderClass], EncoderClass]:
    """Class decorator: register a :class:`BrainEncoder` subclass under ``name``.

    >>> from neurodec.models import BrainEncoder, register_model
    >>> @register_model("my_linear")                                 # doctest: +SKIP
    ... class MyLinear(BrainEncoder):
    ...     def __init__(self, n_chans: int = 4, n_times: int = 10, n_outputs: int = 2, n_subjects: int = 1):
    ...         super().__init__(n_outputs=n_outputs, n_chans=n_chans, n_times=n_times, n_subjects=n_subjects)
    ...         self.linear = torch.nn.Linear(n_chans * n_times, n_outputs)
    ...     def forward(self, x, subject):
    ...         return self.linear(x.flatten(1))
    """

    def decorate(model_class: EncoderClass) -> EncoderClass:
        if not (isinstance(model_class, type) and issubclass(model_class, BrainEncoder)):
            raise TypeError(f"register_model('{name}') decorates BrainEncoder subclasses, found {model_class!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != model_class.__qualname__:
            raise RegistryError(f"model name '{name}' is already registered to {existing.__qualname__}")
        model_class.model_name = name
        _REGISTRY[name] = model_class
        return model_class

    return decorate


def list_models() -> list[str]:
    """The registered model names, sorted.

    >>> from neurodec.models import list_models
    >>> list_models()
    ['atm', 'brainmagick', 'mindbridge', 'mindeye', 'nice']
    """
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[BrainEncoder]:
    """The encoder class registered as ``name``; an unknown name lists the known ones.

    >>> from neurodec.models import get_model_class
    >>> get_model_class("brainmagick").__name__
    'BrainMagickEncoder'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown model '{name}'; known models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> BrainEncoder:
    """Build the encoder registered as ``name`` with constructor arguments ``kwargs``.

    >>> from neurodec.models import create_model
    >>> create_model("nice", n_chans=17, n_times=100, n_outputs=32).n_outputs
    32
    """
    return get_model_class(name)(**kwargs)


def load_pretrained(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> BrainEncoder:
    """Load any saved encoder folder (see :meth:`BrainEncoder.from_pretrained`)."""
    return BrainEncoder.from_pretrained(folder, device=device)
