"""The demo cohort: realistic simulated EEG, MEG and fMRI responses to real images, and
continuous MEG and EEG of listeners to synthesised speech (the auditory part).

Everything needed ships inside installed packages (images from scikit-learn and
scikit-image, MNE's helmet surfaces and montages, nilearn's MNI template), so the whole
platform can run offline. See ``docs/demo-cohort.md`` for the forward model.

>>> from neurodec.simulate import simulate_cohort, simulate_speech
>>> study, report = simulate_cohort("demo.zarr", size="tiny")  # doctest: +SKIP
>>> speech, speech_report = simulate_speech("speech.zarr", size="tiny")  # doctest: +SKIP
"""

from neurodec.simulate.cohort import MODALITIES, SimulationReport, simulate_cohort, trial_order
from neurodec.simulate.features import image_features
from neurodec.simulate.images import DemoImages, assign_split, load_demo_images
from neurodec.simulate.parameters import SimulationParameters
from neurodec.simulate.sensors import head_sphere, make_eeg_info, make_meg_info
from neurodec.simulate.speech import SpeechParameters, SpeechSimulationReport, simulate_speech

__all__ = [
    "MODALITIES",
    "DemoImages",
    "SimulationParameters",
    "SimulationReport",
    "SpeechParameters",
    "SpeechSimulationReport",
    "assign_split",
    "head_sphere",
    "image_features",
    "load_demo_images",
    "make_eeg_info",
    "make_meg_info",
    "simulate_cohort",
    "simulate_speech",
    "trial_order",
]
