"""The ridge baseline: its SVD path against scikit-learn, alpha chosen on validation, retrieval above chance."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import paired_cosine_distances

import neurodec.evaluation.baselines as baselines_module
from neurodec.errors import MetricInputError
from neurodec.evaluation import ridge_baseline, ridge_baseline_per_subject
from neurodec.evaluation.baselines import _RidgePath
from neurodec.metrics import evaluate_retrieval

ALPHAS = np.logspace(-2, 6, 17)


def linear_data(seed: int, n_items: int, n_features: int, n_dims: int = 8, noise: float = 1.0, signal: bool = True):
    """Y = X W + noise (or Y independent of X), split 60 / 20 / 20 %."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_items, n_features)) + 0.5  # a non-zero mean exercises the intercept
    weights = rng.standard_normal((n_features, n_dims)) / np.sqrt(n_features)
    Y = (X @ weights if signal else 0.0) + noise * rng.standard_normal((n_items, n_dims)) + 2.0
    train, val = int(0.6 * n_items), int(0.8 * n_items)
    return X[:train], Y[:train], X[train:val], Y[train:val], X[val:], Y[val:]


@pytest.mark.parametrize("n_items, n_features", [(80, 500), (300, 40)], ids=["dual", "primal"])
def test_svd_path_equals_sklearn_ridge_for_every_alpha(n_items, n_features):
    train_X, train_Y, val_X, _, _, _ = linear_data(0, n_items, n_features)
    path = _RidgePath(train_X, train_Y)
    predict = path.predictor(val_X)
    for alpha in ALPHAS:
        reference = Ridge(alpha=alpha).fit(train_X, train_Y)
        np.testing.assert_allclose(predict(alpha), reference.predict(val_X), rtol=1e-8, atol=1e-8)
        model = path.model(alpha, (train_Y.shape[1],))
        np.testing.assert_allclose(model.weights, reference.coef_.T, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(model.intercept, reference.intercept_, rtol=1e-8, atol=1e-8)


def brute_force_scores(train_X, train_Y, val_X, val_Y, scoring):
    """Each alpha fitted by scikit-learn and scored with scikit-learn's metrics."""
    scores = {}
    center = train_Y.mean(axis=0)
    for alpha in ALPHAS:
        predicted = Ridge(alpha=alpha).fit(train_X, train_Y).predict(val_X)
        if scoring == "cosine":
            scores[alpha] = float(np.mean(1.0 - paired_cosine_distances(predicted - center, val_Y - center)))
        else:
            scores[alpha] = r2_score(val_Y, predicted, multioutput="variance_weighted")
    return scores


@pytest.mark.parametrize("scoring", ["cosine", "r2"])
@pytest.mark.parametrize("n_items, n_features", [(150, 400), (300, 120)], ids=["dual", "primal"])
def test_alpha_is_the_brute_force_best_on_validation_and_predictions_match_sklearn(scoring, n_items, n_features):
    train_X, train_Y, val_X, val_Y, test_X, _ = linear_data(1, n_items, n_features, noise=0.5)
    result = ridge_baseline(train_X, train_Y, val_X, val_Y, test_X, alphas=ALPHAS, scoring=scoring)
    expected = brute_force_scores(train_X, train_Y, val_X, val_Y, scoring)
    best = max(expected, key=expected.get)
    assert result.alpha == best
    assert min(ALPHAS) < best < max(ALPHAS), "the data should put the optimum inside the grid"
    assert list(result.val_scores) == list(expected)
    np.testing.assert_allclose(list(result.val_scores.values()), list(expected.values()), rtol=1e-7, atol=1e-9)
    reference = Ridge(alpha=best).fit(train_X, train_Y).predict(test_X)
    np.testing.assert_allclose(result.predictions_test, reference, rtol=1e-8, atol=1e-8)
    assert result.to_dict()["alpha"] == best


def test_test_split_never_changes_the_chosen_alpha():
    train_X, train_Y, val_X, val_Y, test_X, _ = linear_data(2, 150, 300, noise=2.0)
    first = ridge_baseline(train_X, train_Y, val_X, val_Y, test_X)
    second = ridge_baseline(train_X, train_Y, val_X, val_Y, np.random.default_rng(9).standard_normal(test_X.shape))
    assert first.alpha == second.alpha and first.val_scores == second.val_scores


def test_retrieval_beats_chance_with_signal_and_not_on_pure_noise():
    chance_hits = {}
    for signal in (True, False):
        train_X, train_Y, val_X, val_Y, test_X, test_Y = linear_data(3, 1000, 200, n_dims=16, noise=1.0,
                                                                      signal=signal)
        result = ridge_baseline(train_X, train_Y, val_X, val_Y, test_X)
        metrics = evaluate_retrieval(result.predictions_test, test_Y, n_ways=(10,), full_set_top_ks=(1,),
                                     n_repeats=10, n_bootstrap=300, n_permutations=200)
        chance_hits[signal] = metrics
    signal_metrics, noise_metrics = chance_hits[True], chance_hits[False]
    assert signal_metrics["chance"]["pooled"]["10-way top-1"] == pytest.approx(0.1)
    assert signal_metrics["brain->stimulus"]["pooled"]["10-way top-1"] > 0.6
    assert signal_metrics["brain->stimulus"]["p_value"]["10-way top-1"] < 0.01
    low, high = signal_metrics["brain->stimulus"]["interval"]["full-set top-1"]
    assert low > 10 * signal_metrics["chance"]["pooled"]["full-set top-1"]
    # Pure noise: the 95 % interval holds chance and the permutation test finds nothing.
    low, high = noise_metrics["brain->stimulus"]["interval"]["10-way top-1"]
    assert low <= 0.1 <= high
    assert noise_metrics["brain->stimulus"]["p_value"]["10-way top-1"] > 0.05


def test_per_subject_fits_each_subject_on_its_own_features():
    splits = {"01": linear_data(4, 120, 50), "02": linear_data(5, 140, 90)}
    arguments = [{subject: split[index] for subject, split in splits.items()} for index in range(5)]
    results = ridge_baseline_per_subject(*arguments, alphas=ALPHAS)
    assert sorted(results) == ["01", "02"]
    for subject, split in splits.items():
        alone = ridge_baseline(*split[:5], alphas=ALPHAS)
        assert results[subject].alpha == alone.alpha
        np.testing.assert_array_equal(results[subject].predictions_test, alone.predictions_test)
    assert results["02"].model.weights.shape == (90, 8)
    arguments[3] = {"01": splits["01"][3]}
    with pytest.raises(MetricInputError, match=r"val_Y: expected the subjects of train_X \['01', '02'\]"):
        ridge_baseline_per_subject(*arguments)


def test_multi_axis_data_are_flattened_and_targets_keep_their_shape():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((60, 4, 5))
    Y = np.einsum("nct,ctde->nde", X, rng.standard_normal((4, 5, 3, 2)))
    result = ridge_baseline(X[:40], Y[:40], X[40:50], Y[40:50], X[50:], alphas=[0.1, 1.0])
    assert result.predictions_test.shape == (10, 3, 2)
    reference = Ridge(alpha=result.alpha).fit(X[:40].reshape(40, -1), Y[:40].reshape(40, -1))
    np.testing.assert_allclose(result.predictions_test.reshape(10, -1), reference.predict(X[50:].reshape(10, -1)),
                               rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "val_X": a["val_X"][:, :-1]}, r"val_X: expected 30 features per item \(as train_X\), found 29"),
        (lambda a: {**a, "train_Y": a["train_Y"][:-1]}, r"train_X and train_Y: expected one target per item"),
        (lambda a: {**a, "alphas": [1.0, -1.0]}, r"alphas: expected a non-empty grid of positive penalties"),
        (lambda a: {**a, "scoring": "accuracy"}, r"scoring: expected one of \('cosine', 'r2'\), found 'accuracy'"),
        (lambda a: {**a, "test_X": np.full_like(a["test_X"], np.nan)}, r"test_X: expected finite values"),
    ],
)
def test_bad_inputs_name_the_argument(change, message):
    train_X, train_Y, val_X, val_Y, test_X, _ = linear_data(7, 50, 30)
    arguments = {"train_X": train_X, "train_Y": train_Y, "val_X": val_X, "val_Y": val_Y, "test_X": test_X}
    arguments = change(arguments)
    with pytest.raises(MetricInputError, match=message):
        ridge_baseline(**arguments)


def test_docstring_examples():
    assert doctest.testmod(baselines_module).failed == 0
