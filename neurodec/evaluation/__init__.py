"""Evaluation: trained runs scored on their test split, and the baselines (ridge) that every
decoder is compared against, in the same report.

>>> from neurodec.evaluation import evaluate_run, load_encoder, retrieve
>>> results = evaluate_run("runs/eeg-demo")                            # doctest: +SKIP
>>> brain = load_encoder("runs/eeg-demo").embed(trials, subject="01")  # doctest: +SKIP
>>> retrieve(brain, study.targets("clip"), k=5).ids                    # doctest: +SKIP

>>> from neurodec.evaluation import ridge_baseline
>>> result = ridge_baseline(train_X, train_Y, val_X, val_Y, test_X)   # doctest: +SKIP
>>> result.alpha, result.predictions_test.shape                       # doctest: +SKIP
"""

from neurodec.evaluation.baselines import (
    DEFAULT_ALPHAS,
    RidgeModel,
    RidgeResult,
    ridge_baseline,
    ridge_baseline_per_subject,
    validation_score,
)
from neurodec.errors import RunFolderError, UnknownSubjectError
from neurodec.evaluation.run import (
    RetrievalResult,
    TrainedEncoder,
    describe_target_space,
    evaluate_run,
    load_encoder,
    retrieve,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "RetrievalResult",
    "RidgeModel",
    "RidgeResult",
    "RunFolderError",
    "TrainedEncoder",
    "UnknownSubjectError",
    "describe_target_space",
    "evaluate_run",
    "load_encoder",
    "retrieve",
    "ridge_baseline",
    "ridge_baseline_per_subject",
    "validation_score",
]
