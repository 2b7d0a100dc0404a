"""The trainer: single process or ``torchrun`` DDP, validation-based selection, exact resume.

>>> from neurodec.training import train
>>> run = train("configs/demo/eeg.yaml", overrides=["train.epochs=5"])     # doctest: +SKIP
>>> run.best_checkpoint                                                     # doctest: +SKIP
PosixPath('runs/eeg/best')

Read ``docs/training.md`` (the loop, resume, DDP) and ``docs/run-folder.md`` (what a run
folder holds, for the evaluation code).
"""

from neurodec.training._logs import read_history
from neurodec.training.adaptation import AdaptResult, adapt, adapt_curve, leave_one_subject_out
from neurodec.training.trainer import Run, learning_rate, summarize_seeds, train

__all__ = ["AdaptResult", "Run", "adapt", "adapt_curve", "learning_rate", "leave_one_subject_out", "read_history",
           "summarize_seeds", "train"]
