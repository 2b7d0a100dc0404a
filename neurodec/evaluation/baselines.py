"""Baselines that every decoder must beat: a ridge regression from brain data to target embeddings.

The ridge baseline maps flattened brain data (channels x times, or voxels) to the target
embeddings with an L2-penalised linear map, the "linear decoder" that Benchetrit et al. and
Brain Captioning compare against, and the per-subject adapter of MindEye2 without the
backbone. The penalty ``alpha`` is chosen on the **validation split**: a model is fitted on
the training split for every ``alpha`` of the grid, each is scored on the validation split,
and the best one is kept. The test split is only ever predicted, never scored here.

Validation score (``scoring=``)
    ``"cosine"`` (default): the mean over validation items of the cosine similarity between
    the predicted and the true embedding, both centred on the **training** target mean.
    Centring matters: image embeddings (CLIP) share a large common direction, so a huge
    ``alpha`` (predicting the mean for every item) would score a high raw cosine while
    telling no item from another; retrieval ranks items by what sets them apart. Like
    cosine retrieval, it ignores the overall scale of the predictions, so with many more
    features than items it changes little across small alphas (only the direction counts).
    ``"r2"``: the variance-weighted coefficient of determination
    ``1 - sum((Y - P)^2) / sum((Y - mean_val(Y))^2)`` (scikit-learn's
    ``r2_score(multioutput="variance_weighted")``), a mean-squared-error criterion.

Refit policy
    The returned model is the one fitted on the training split alone at the chosen ``alpha``
    (no refit on training + validation), so the validation scores describe exactly the model
    that predicts the test split.

Speed
    One eigendecomposition of the centred Gram matrix of the training data (the SVD of ``X``,
    through the smaller of ``X X^T`` and ``X^T X``) serves every ``alpha``: for 1,000 trials x
    12,800 features that is one 1,000 x 1,000 problem instead of 17 ridge solves. The solution
    is scikit-learn's ``Ridge(alpha, fit_intercept=True)`` (checked in the tests).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> weights = rng.standard_normal((30, 4))
>>> X = rng.standard_normal((120, 30)); Y = X @ weights + 0.1 * rng.standard_normal((120, 4))
>>> result = ridge_baseline(X[:80], Y[:80], X[80:100], Y[80:100], X[100:])
>>> result.predictions_test.shape, result.alpha in result.val_scores
((20, 4), True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from neurodec.errors import MetricInputError

logger = logging.getLogger("neurodec")

DEFAULT_ALPHAS = np.logspace(-2, 6, 17)
SCORINGS = ("cosine", "r2")


@dataclass
class RidgeModel:
    """A fitted linear map ``Y = X_flat @ weights + intercept`` (the ridge solution at ``alpha``).

    ``target_shape`` is the shape of one target embedding (e.g. ``(768,)`` or ``(256, 1664)``);
    :meth:`predict` flattens the brain data after the first axis and restores that shape.
    """

    weights: np.ndarray  # (n_features, n_target_values)
    intercept: np.ndarray  # (n_target_values,)
    alpha: float
    target_shape: tuple[int, ...]

    def predict(self, X) -> np.ndarray:
        """Predicted target embeddings, shape ``(n_items, *target_shape)``."""
        flat = _flatten(X, "X")
        if flat.shape[1] != self.weights.shape[0]:
            raise MetricInputError(
                f"X: expected {self.weights.shape[0]} features per item (as in training), found {flat.shape[1]}"
            )
        return (flat @ self.weights + self.intercept).reshape((flat.shape[0], *self.target_shape))


@dataclass
class RidgeResult:
    """The ridge baseline of one subject (or one pooled feature space).

    ``val_scores`` maps each ``alpha`` of the grid to its validation score (``scoring``);
    ``alpha`` is the best of them; ``model`` is fitted on the training split at that alpha.
    """

    predictions_test: np.ndarray
    alpha: float
    val_scores: dict[float, float]
    model: RidgeModel = field(repr=False)
    scoring: str = "cosine"

    def to_dict(self) -> dict:
        """JSON-ready summary for the report: alpha, scoring and the validation curve."""
        return {
            "alpha": self.alpha,
            "scoring": self.scoring,
            "alphas": [float(alpha) for alpha in self.val_scores],
            "val_scores": [float(score) for score in self.val_scores.values()],
            "refit": "training split only",
        }


def _flatten(array, name: str) -> np.ndarray:
    values = np.asarray(array, dtype=np.float64)
    if values.ndim < 2:
        raise MetricInputError(f"{name}: expected (n_items, features...), found shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise MetricInputError(f"{name}: expected finite values, found NaN or Inf")
    return values.reshape(values.shape[0], -1)


def _check_items(name_x: str, X: np.ndarray, name_y: str, Y: np.ndarray) -> None:
    if X.shape[0] != Y.shape[0]:
        raise MetricInputError(
            f"{name_x} and {name_y}: expected one target per item, found {X.shape[0]} and {Y.shape[0]} items"
        )


def validation_score(predicted: np.ndarray, true: np.ndarray, scoring: str, center: np.ndarray) -> float:
    """The selection criterion of :func:`ridge_baseline` (module docstring); higher is better.

    ``center`` is the training target mean (used by ``"cosine"``).

    >>> validation_score(np.array([[2.0, 1.0]]), np.array([[3.0, 1.0]]), "cosine", np.array([1.0, 1.0]))
    1.0
    """
    if scoring == "cosine":
        predicted, true = predicted - center, true - center
        norms = np.linalg.norm(predicted, axis=1) * np.linalg.norm(true, axis=1)
        # A prediction equal to the mean has no direction: it scores 0, as chance would.
        cosines = np.divide(np.sum(predicted * true, axis=1), norms, out=np.zeros(len(norms)), where=norms > 0)
        return float(np.mean(cosines))
    if scoring == "r2":
        total = np.sum((true - true.mean(axis=0)) ** 2)
        return float(1.0 - np.sum((true - predicted) ** 2) / total) if total > 0 else 0.0
    raise MetricInputError(f"scoring: expected one of {SCORINGS}, found {scoring!r}")


class _RidgePath:
    """Ridge solutions for many alphas from one eigendecomposition of the centred training data.

    With ``Xc = X - mean(X)`` and ``Yc = Y - mean(Y)`` (scikit-learn's ``fit_intercept``), the
    ridge weights are ``Xc^T (Xc Xc^T + alpha I)^-1 Yc`` (dual form, used when there are more
    features than items) or ``(Xc^T Xc + alpha I)^-1 Xc^T Yc`` (primal form). Diagonalising
    the smaller Gram matrix once, ``G = Q diag(lam) Q^T``, makes each alpha a rescaling of
    ``Q^T (.)`` by ``1 / (lam + alpha)``.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray):
        self.x_mean = X.mean(axis=0)
        self.y_mean = Y.mean(axis=0)
        self.x_centered = X - self.x_mean
        self.dual = X.shape[1] > X.shape[0]
        y_centered = Y - self.y_mean
        if self.dual:
            gram = self.x_centered @ self.x_centered.T
            rhs = y_centered
        else:
            gram = self.x_centered.T @ self.x_centered
            rhs = self.x_centered.T @ y_centered
        eigenvalues, self.eigenvectors = np.linalg.eigh(gram)
        # Rounding can leave tiny negative eigenvalues of a positive semi-definite matrix.
        self.eigenvalues = np.clip(eigenvalues, 0.0, None)
        self.projected_rhs = self.eigenvectors.T @ rhs

    def _basis(self, X_new: np.ndarray) -> np.ndarray:
        """New items expressed in the eigenbasis: (n_new, rank) such that prediction = basis @ scaled rhs."""
        centered = X_new - self.x_mean
        if self.dual:
            return (centered @ self.x_centered.T) @ self.eigenvectors
        return centered @ self.eigenvectors

    def predictor(self, X_new: np.ndarray):
        """A function ``alpha -> predictions for X_new`` that reuses the projection of X_new."""
        basis = self._basis(X_new)

        def predict(alpha: float) -> np.ndarray:
            return basis @ (self.projected_rhs / (self.eigenvalues + alpha)[:, None]) + self.y_mean

        return predict

    def model(self, alpha: float, target_shape: tuple[int, ...]) -> RidgeModel:
        scaled = self.projected_rhs / (self.eigenvalues + alpha)[:, None]
        if self.dual:
            weights = self.x_centered.T @ (self.eigenvectors @ scaled)
        else:
            weights = self.eigenvectors @ scaled
        intercept = self.y_mean - self.x_mean @ weights
        return RidgeModel(weights=weights, intercept=intercept, alpha=float(alpha), target_shape=target_shape)


def ridge_baseline(
    train_X,
    train_Y,
    val_X,
    val_Y,
    test_X,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    scoring: str = "cosine",
) -> RidgeResult:
    """Ridge regression from flattened brain data to target embeddings, alpha chosen on validation.

    Parameters
    ----------
    train_X, val_X, test_X
        Brain data ``(n_items, features...)`` of one subject (channels x times, voxels),
        flattened after the first axis. All three must have the same features.
    train_Y, val_Y
        Target embeddings ``(n_items, dims...)`` paired with ``train_X`` / ``val_X``.
    alphas
        The penalty grid (default ``logspace(-2, 6, 17)``); ties go to the larger alpha.
    scoring
        ``"cosine"`` (mean centred cosine, default) or ``"r2"``; see the module docstring.

    Returns
    -------
    RidgeResult
        Test predictions (shaped like one target per item), the chosen alpha, the validation
        score of every alpha and the model fitted on the training split at the chosen alpha.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> X, Y = rng.standard_normal((60, 10)), rng.standard_normal((60, 3))
    >>> ridge_baseline(X[:40], Y[:40], X[40:50], Y[40:50], X[50:], alphas=[1.0, 10.0]).predictions_test.shape
    (10, 3)
    """
    if scoring not in SCORINGS:
        raise MetricInputError(f"scoring: expected one of {SCORINGS}, found {scoring!r}")
    alpha_grid = [float(alpha) for alpha in np.atleast_1d(np.asarray(alphas, dtype=np.float64))]
    if not alpha_grid or any(alpha <= 0 for alpha in alpha_grid):
        raise MetricInputError(f"alphas: expected a non-empty grid of positive penalties, found {alpha_grid}")
    train_Y_array = np.asarray(train_Y)
    target_shape = tuple(train_Y_array.shape[1:])
    train_X, train_Y = _flatten(train_X, "train_X"), _flatten(train_Y_array, "train_Y")
    val_X, val_Y = _flatten(val_X, "val_X"), _flatten(val_Y, "val_Y")
    test_X = _flatten(test_X, "test_X")
    _check_items("train_X", train_X, "train_Y", train_Y)
    _check_items("val_X", val_X, "val_Y", val_Y)
    for name, array in (("val_X", val_X), ("test_X", test_X)):
        if array.shape[1] != train_X.shape[1]:
            raise MetricInputError(
                f"{name}: expected {train_X.shape[1]} features per item (as train_X), found {array.shape[1]}"
            )
    if val_Y.shape[1] != train_Y.shape[1]:
        raise MetricInputError(f"val_Y: expected {train_Y.shape[1]} target values per item, found {val_Y.shape[1]}")
    if train_X.shape[0] < 2 or val_X.shape[0] < 1:
        raise MetricInputError(
            f"ridge_baseline: expected at least 2 training and 1 validation items, "
            f"found {train_X.shape[0]} and {val_X.shape[0]}"
        )

    path = _RidgePath(train_X, train_Y)
    predict_val = path.predictor(val_X)
    val_scores = {
        alpha: validation_score(predict_val(alpha), val_Y, scoring, path.y_mean) for alpha in alpha_grid
    }
    # Ties (e.g. several alphas all predicting the mean) go to the larger, simpler model.
    best_alpha = max(alpha_grid, key=lambda alpha: (val_scores[alpha], alpha))
    logger.info(
        "ridge baseline: alpha %.3g chosen on validation (%s score %.4f; %d train, %d validation items, %d features)",
        best_alpha, scoring, val_scores[best_alpha], train_X.shape[0], val_X.shape[0], train_X.shape[1],
    )
    if len(alpha_grid) > 1 and best_alpha in (min(alpha_grid), max(alpha_grid)):
        logger.warning("ridge baseline: the chosen alpha %.3g is at the edge of the grid; widen it", best_alpha)
    model = path.model(best_alpha, target_shape)
    return RidgeResult(
        predictions_test=model.predict(test_X),
        alpha=best_alpha,
        val_scores=val_scores,
        model=model,
        scoring=scoring,
    )


def ridge_baseline_per_subject(
    train_X: Mapping[str, np.ndarray],
    train_Y: Mapping[str, np.ndarray],
    val_X: Mapping[str, np.ndarray],
    val_Y: Mapping[str, np.ndarray],
    test_X: Mapping[str, np.ndarray],
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    scoring: str = "cosine",
) -> dict[str, RidgeResult]:
    """:func:`ridge_baseline` for each subject on its own features (fMRI voxel counts differ).

    Each argument maps a subject name to that subject's array; every subject gets its own
    model and its own alpha, chosen on its own validation items.

    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> X = {"01": rng.standard_normal((30, 5)), "02": rng.standard_normal((30, 7))}
    >>> Y = {name: rng.standard_normal((30, 2)) for name in X}
    >>> results = ridge_baseline_per_subject({s: X[s][:20] for s in X}, {s: Y[s][:20] for s in X},
    ...     {s: X[s][20:25] for s in X}, {s: Y[s][20:25] for s in X}, {s: X[s][25:] for s in X}, alphas=[1.0])
    >>> sorted(results), results["02"].model.weights.shape
    (['01', '02'], (7, 2))
    """
    subjects = list(train_X)
    for name, mapping in (("train_Y", train_Y), ("val_X", val_X), ("val_Y", val_Y), ("test_X", test_X)):
        if set(mapping) != set(subjects):
            raise MetricInputError(
                f"{name}: expected the subjects of train_X {sorted(subjects)}, found {sorted(mapping)}"
            )
    from neurodec._logging import progress

    results = {}
    for subject in progress(subjects, "ridge baseline per subject"):
        logger.info("ridge baseline: subject %s", subject)
        results[subject] = ridge_baseline(
            train_X[subject], train_Y[subject], val_X[subject], val_Y[subject], test_X[subject],
            alphas=alphas, scoring=scoring,
        )
    return results
