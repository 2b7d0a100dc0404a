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
    embed,
    evaluate,
    info,
    ingest,
    load_encoder,
    open_store,
    retrieve,
    simulate_cohort,
    train,
)
from neurodec.errors import NeurodecError  # noqa: E402
from neurodec.store import StoreWriter  # noqa: E402

__all__ = [
    "NeurodecError",
    "StoreWriter",
    "__version__",
    "adapt",
    "embed",
    "evaluate",
    "info",
    "ingest",
    "load_encoder",
    "open_store",
    "retrieve",
    "simulate_cohort",
    "train",
]
