"""neurodec: decode EEG, MEG and fMRI recordings into what a person saw or heard.

``import neurodec`` stays light: heavy libraries (torch, mne, diffusers, open_clip) are
imported by the sub-packages that use them.
"""

from neurodec.errors import NeurodecError
from neurodec.store import StoreWriter, open_store

__version__ = "0.1.0"

__all__ = ["NeurodecError", "StoreWriter", "__version__", "open_store"]
