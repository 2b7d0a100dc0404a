"""neurodec: decode EEG, MEG and fMRI recordings into what a person saw or heard.

``import neurodec`` stays light: heavy libraries (torch, mne, nibabel, diffusers,
open_clip) are imported by the functions that use them.

>>> import neurodec
>>> study = neurodec.open_store("demo.zarr")        # doctest: +SKIP
>>> print(neurodec.info(study))                     # doctest: +SKIP
"""

__version__ = "0.1.0"

from neurodec.api import (  # noqa: E402
    adapt,
    convert,
    embed,
    evaluate,
    info,
    ingest,
    load_encoder,
    open_store,
    reconstruct,
    retrieve,
    simulate_cohort,
    simulate_speech,
    train,
    train_decoder,
)
from neurodec.errors import NeurodecError  # noqa: E402
from neurodec.store import StoreWriter  # noqa: E402

__all__ = [
    "NeurodecError",
    "StoreWriter",
    "__version__",
    "adapt",
    "convert",
    "embed",
    "evaluate",
    "info",
    "ingest",
    "load_encoder",
    "open_store",
    "reconstruct",
    "retrieve",
    "simulate_cohort",
    "simulate_speech",
    "train",
    "train_decoder",
    "BrainToImagePipeline",
]


def __getattr__(name: str):
    # The image pipeline pulls in torch and diffusers: imported on first use only.
    if name == "BrainToImagePipeline":
        from neurodec.pipeline import BrainToImagePipeline

        return BrainToImagePipeline
    raise AttributeError(f"module 'neurodec' has no attribute {name!r}")
