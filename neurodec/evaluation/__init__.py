"""Evaluation: baselines (ridge) that every decoder is compared against, in the same report.

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

__all__ = [
    "DEFAULT_ALPHAS",
    "RidgeModel",
    "RidgeResult",
    "ridge_baseline",
    "ridge_baseline_per_subject",
    "validation_score",
]
