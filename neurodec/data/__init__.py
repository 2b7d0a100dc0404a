"""PyTorch loading from the study store: datasets, chunk-aware batches, leak-free splits, transforms.

Read ``docs/loading.md`` for a walk through. In short::

    from neurodec.data import TrialDataset, split_stimuli
    from neurodec.data.transforms import MVNN

    splits = split_stimuli("study.zarr", val_fraction=0.1, seed=0)
    train = TrialDataset("study.zarr", stimuli=splits.train, target="clip", cache_dir="cache")
    train.transform = MVNN().fit(train)          # fitted on training trials only
    for batch in train.loader(batch_size=256, num_workers=4):
        ...
"""

from neurodec.data.datasets import TrialDataset, WindowDataset, collate
from neurodec.data.samplers import ChunkAwareBatchSampler
from neurodec.data.splits import EventSplits, Splits, check_no_leakage, split_runs, split_stimuli
from neurodec.data.transforms import (
    MVNN,
    Clamp,
    Compose,
    PerSubject,
    RobustScaler,
    StandardScaler,
    TemporalPool,
    Transform,
    load_transform,
)

__all__ = [
    "MVNN",
    "ChunkAwareBatchSampler",
    "Clamp",
    "Compose",
    "EventSplits",
    "PerSubject",
    "RobustScaler",
    "Splits",
    "StandardScaler",
    "TemporalPool",
    "Transform",
    "TrialDataset",
    "WindowDataset",
    "check_no_leakage",
    "collate",
    "load_transform",
    "split_runs",
    "split_stimuli",
]
