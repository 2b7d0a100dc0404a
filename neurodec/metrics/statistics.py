"""Uncertainty and significance of retrieval accuracy: bootstrap intervals and permutation tests.

Both are vectorised over resamples and permutations, and seeded.

* :func:`bootstrap_interval`: percentile bootstrap over queries. Queries are drawn with
  replacement (within each stratum, e.g. subject, when ``strata`` is given, so every
  subject keeps its size), the mean is recomputed per resample, and the interval is the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means.
* :func:`permutation_tests`: is the accuracy above what unrelated brain and stimulus
  embeddings would reach? The pairing of brain and targets is shuffled (within subject),
  the accuracy recomputed for each shuffle, and
  ``p = (1 + #{permuted accuracy >= observed}) / (1 + n_permutations)``.
  The statistic must be exact, not itself random, so a shuffle can be scored from one
  sort of the similarity matrix: full-set top-k is ``mean(rank <= k)`` over all items of
  each subject (no negatives cap), and N-way top-k is its exact expectation over all
  random distractor sets (:func:`neurodec.metrics.retrieval.expected_n_way_hits`),
  which the 30-repeat protocol estimates.

>>> import numpy as np
>>> from neurodec.metrics.statistics import bootstrap_interval, permutation_test
>>> hits = np.r_[np.ones(60), np.zeros(40)]
>>> interval = bootstrap_interval(hits, n_resamples=2000, seed=0)
>>> interval.low < 0.6 < interval.high
True
>>> targets = np.random.default_rng(0).standard_normal((40, 8))
>>> permutation_test(targets, targets, k=1, n_permutations=99).p_value
0.01
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np
import torch

from neurodec.errors import MetricInputError
from neurodec.metrics.retrieval import (
    BRAIN_TO_STIMULUS,
    DIRECTIONS,
    expected_n_way_hits,
    paired_embeddings,
    subject_groups,
)
from neurodec.metrics.similarity import DEFAULT_TIE_TOLERANCE, check_similarity, resolve_device, similarity_matrix

# Most elements of one resample or permutation block (bounds memory, not results).
_BLOCK_ELEMENTS = 1 << 22


class BootstrapInterval(NamedTuple):
    """A percentile-bootstrap interval around ``observed`` (the plain mean)."""

    low: float
    high: float
    observed: float
    confidence: float
    n_resamples: int


class PermutationResult(NamedTuple):
    """Observed statistic, its permutation p-value and the null distribution it came from."""

    observed: float
    p_value: float
    null: np.ndarray
    n_permutations: int


def bootstrap_interval(
    values,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    strata=None,
) -> BootstrapInterval:
    """Percentile-bootstrap interval of the mean of per-query ``values``.

    Parameters
    ----------
    values
        (n_queries,) per-query values: hits (0/1) or hit probabilities.
    n_resamples
        Bootstrap resamples (1000 by default; 10,000 for a publication).
    confidence
        Coverage of the interval (0.95).
    strata
        Optional (n_queries,) labels (subjects): resampling happens within each stratum.

    >>> bootstrap_interval([1.0, 1.0, 1.0]).low
    1.0
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise MetricInputError(
            f"values: expected a non-empty 1-d array of per-query values, found shape {values.shape}"
        )
    if not 0 < confidence < 1:
        raise MetricInputError(f"confidence: expected a number between 0 and 1, found {confidence}")
    if n_resamples < 1:
        raise MetricInputError(f"n_resamples: expected at least 1, found {n_resamples}")
    if strata is None:
        groups = [values]
    else:
        labels = np.asarray(strata)
        if labels.shape != values.shape:
            raise MetricInputError(f"strata: expected {values.size} labels, found shape {labels.shape}")
        _, codes = np.unique(labels, return_inverse=True)
        groups = [values[codes.reshape(-1) == code] for code in range(codes.max() + 1)]

    rng = np.random.default_rng(seed)
    totals = np.zeros(n_resamples)
    for group in groups:
        block = max(1, _BLOCK_ELEMENTS // group.size)
        for start in range(0, n_resamples, block):
            stop = min(start + block, n_resamples)
            draws = rng.integers(0, group.size, size=(stop - start, group.size))
            totals[start:stop] += group[draws].sum(axis=1)
    means = totals / values.size
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return BootstrapInterval(float(low), float(high), float(values.mean()), confidence, n_resamples)


def _rank_to_value_table(n_items: int, n_way: int | None, k: int) -> np.ndarray:
    """Per-query value of each possible rank 1..n_items for one metric."""
    ranks = np.arange(1, n_items + 1)
    if n_way is None:
        return (ranks <= k).astype(np.float64)
    if not 2 <= n_way <= n_items:
        raise MetricInputError(f"n_way: expected 2 <= n_way <= {n_items} (items of a subject), found {n_way}")
    return expected_n_way_hits(ranks, n_items, n_way, k)


def permutation_tests(
    brain,
    targets,
    metrics: Mapping[str, tuple[int | None, int]],
    *,
    subjects=None,
    direction: str = BRAIN_TO_STIMULUS,
    n_permutations: int = 1000,
    seed: int = 0,
    similarity: str = "cosine",
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
) -> dict[str, PermutationResult]:
    """Permutation p-values of several retrieval accuracies from the same shuffles.

    Parameters
    ----------
    metrics
        ``{name: (n_way, k)}``; ``n_way=None`` means full-set top-k.
    subjects
        Optional (n_items,) subject labels; pairings are shuffled within each subject and
        the statistic is the mean over all queries.
    direction
        ``"brain->stimulus"`` or ``"stimulus->brain"`` (the transposed similarities).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> brain, targets = rng.standard_normal((2, 30, 8))
    >>> tests = permutation_tests(brain, targets, {"10-way top-1": (10, 1)}, n_permutations=199)
    >>> tests["10-way top-1"].p_value > 0.05
    True
    """
    check_similarity(similarity)
    if direction not in DIRECTIONS:
        raise MetricInputError(f"direction: expected one of {DIRECTIONS}, found {direction!r}")
    if n_permutations < 1:
        raise MetricInputError(f"n_permutations: expected at least 1, found {n_permutations}")
    if not metrics:
        raise MetricInputError("metrics: expected at least one {name: (n_way, k)}, found none")
    device = resolve_device(device, brain, targets)
    brain, targets = paired_embeddings(brain, targets, device)
    groups = subject_groups(subjects, brain.shape[0])
    rng = np.random.default_rng(seed)

    names = list(metrics)
    observed = np.zeros(len(names))
    null = np.zeros((len(names), n_permutations))
    for _, items in groups:
        n_items = len(items)
        tables = torch.as_tensor(
            np.stack([_rank_to_value_table(n_items, *metrics[name]) for name in names]), device=device
        )
        index = torch.as_tensor(items, device=device)
        scores = similarity_matrix(brain[index], targets[index], similarity=similarity)
        if direction != BRAIN_TO_STIMULUS:
            scores = scores.T
        ordered = scores.sort(dim=1).values.contiguous()
        rows = torch.arange(n_items, device=device)

        def metric_sums(true_columns: torch.Tensor) -> torch.Tensor:
            """(metrics, permutations) sums of per-query values; true_columns is (permutations, n_items)."""
            true_scores = scores[rows[None, :], true_columns]
            threshold = true_scores - tie_tolerance * true_scores.abs().clamp_min(1.0)
            # Entries at or above the threshold: the true one and every rival tying or beating it.
            position = torch.searchsorted(ordered, threshold.T.contiguous(), side="left")
            ranks = (n_items - position).T  # (permutations, n_items), 1-based
            return tables[:, ranks - 1].sum(dim=2)

        observed += metric_sums(rows[None, :]).cpu().numpy()[:, 0]
        block = max(1, _BLOCK_ELEMENTS // (n_items * len(names)))
        for start in range(0, n_permutations, block):
            stop = min(start + block, n_permutations)
            shuffles = torch.as_tensor(np.argsort(rng.random((stop - start, n_items)), axis=1), device=device)
            null[:, start:stop] += metric_sums(shuffles).cpu().numpy()

    n_total = sum(len(items) for _, items in groups)
    observed /= n_total
    null /= n_total
    results = {}
    for row, name in enumerate(names):
        # Sums of the same float64 terms in another order may differ in the last bit: count near-equal as >=.
        at_least = int(np.sum(null[row] >= observed[row] - 1e-12))
        p_value = (1 + at_least) / (1 + n_permutations)
        results[name] = PermutationResult(float(observed[row]), float(p_value), null[row].copy(), n_permutations)
    return results


def permutation_test(
    brain,
    targets,
    *,
    k: int = 1,
    n_way: int | None = None,
    subjects=None,
    direction: str = BRAIN_TO_STIMULUS,
    n_permutations: int = 1000,
    seed: int = 0,
    similarity: str = "cosine",
    device: torch.device | str | None = None,
) -> PermutationResult:
    """Permutation p-value of one accuracy: full-set top-k, or N-way top-k with ``n_way``.

    >>> import numpy as np
    >>> targets = np.random.default_rng(0).standard_normal((20, 4))
    >>> result = permutation_test(targets, targets, k=1, n_way=2, n_permutations=99)
    >>> result.observed, result.p_value
    (1.0, 0.01)
    """
    name = "statistic"
    return permutation_tests(
        brain,
        targets,
        {name: (n_way, k)},
        subjects=subjects,
        direction=direction,
        n_permutations=n_permutations,
        seed=seed,
        similarity=similarity,
        device=device,
    )[name]
