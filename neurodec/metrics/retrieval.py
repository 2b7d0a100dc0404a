"""Retrieval metrics with the published protocols: N-way (NICE, ATM, MindEye) and full-set (brainmagick).

Item ``i`` pairs ``brain[i]`` (a decoded embedding) with ``targets[i]`` (the embedding of
the stimulus it should match). Two directions are scored:

* ``"brain->stimulus"``: query ``brain[i]``, candidates ``targets``;
* ``"stimulus->brain"``: query ``targets[i]``, candidates ``brain`` (the transposed similarities).

Every metric is computed **within each subject** (the items of one subject never serve as
another's distractors), then pooled: the pooled value is the mean over every query
evaluation of every subject, and the mean and standard deviation over subjects are given
as well (NICE and ATM report the mean over subjects). Ranks are pessimistic about ties
(see :mod:`neurodec.metrics.similarity`).

N-way top-k (:func:`n_way_topk`)
    Each query competes with ``n_way - 1`` distractors drawn at random from the other items
    of its subject, and counts as correct when the true item is among the ``k`` best of the
    ``n_way`` candidates. Two ways of drawing, both repeated ``n_repeats`` times (30, as
    MindEye) from ``numpy.random.default_rng(seed)``:

    ``protocol="subset"`` (MindEye2 ``final_evaluations``, the default)
        Each repeat draws ``rng.choice(n_items, size=n_way, replace=False)``; every item of
        the subset is a query against the others of the subset. The same subsets serve both
        directions. A repeat's accuracy is the mean over its ``n_way`` queries.
    ``protocol="per_query"`` (ATM ``evaluate_model``)
        Each repeat draws ``keys = rng.random((n_items, n_items - 1))``; row ``i`` orders the
        other items (by index, skipping ``i``) and query ``i`` gets the ``n_way - 1`` with the
        smallest keys. The same distractors serve both directions.

    With ``n_way`` equal to the number of items both reduce to NICE-EEG's ranking of each
    query against every test item (200-way on THINGS-EEG2). Items must be distinct
    stimuli: average repetitions first, as NICE, ATM and MindEye do.

Full-set top-k (:func:`full_set_topk`)
    brainmagick's segment-level protocol: each query is ranked against every candidate of
    its subject. When there are more than ``max_negatives + 1`` items (10,000 negatives by
    default, as brainmagick's ``wer_negatives``) one pool of ``max_negatives + 1`` items is
    drawn at random (``rng.permutation``) and shared by all queries; a query in the pool
    meets the rest of it, a query outside it meets all but the pool's last item, so every
    query faces exactly ``max_negatives`` negatives. With ``labels`` (e.g. segment hashes),
    candidates with the query's label count as correct, as brainmagick's hash comparison.

Chance is ``k / n_way`` for N-way, and for full-set the probability that a random order
puts a correct candidate in the top ``k`` (``k / n_candidates`` with one correct candidate).

>>> import numpy as np
>>> from neurodec.metrics import n_way_topk
>>> rng = np.random.default_rng(0)
>>> targets = rng.standard_normal((50, 16)).astype(np.float32)
>>> scores = n_way_topk(targets, targets, n_way=10, k=1, n_repeats=5)
>>> scores["10-way top-1"]["brain->stimulus"].value
1.0
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from neurodec.errors import MetricInputError
from neurodec.metrics.similarity import (
    DEFAULT_TIE_TOLERANCE,
    as_embedding_matrix,
    check_similarity,
    label_codes,
    rank_against,
    rank_of_true,
    resolve_device,
    similarity_matrix,
)

logger = logging.getLogger("neurodec")

BRAIN_TO_STIMULUS = "brain->stimulus"
STIMULUS_TO_BRAIN = "stimulus->brain"
DIRECTIONS = (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN)
PROTOCOLS = ("subset", "per_query")
# Rows of distractor keys drawn at once in the per-query protocol (bounds memory, not results).
_KEY_ROWS = 512


def n_way_name(n_way: int, k: int) -> str:
    """``"200-way top-1"``: the name of an N-way metric in results."""
    return f"{n_way}-way top-{k}"


def full_set_name(k: int) -> str:
    """``"full-set top-10"``: the name of a full-set metric in results."""
    return f"full-set top-{k}"


@dataclass
class RetrievalScore:
    """One metric in one direction, pooled over subjects and per subject.

    ``per_query`` holds what the statistics resample, one value per item in the caller's
    order (``query_subjects`` names each one's subject): the hit (0/1) for full-set metrics;
    for N-way metrics the exact probability of a hit over all random distractor sets (from
    the query's rank among all items of its subject), of which the sampled ``value`` is an
    estimate.
    """

    metric: str
    direction: str
    value: float
    chance: float
    per_subject: dict[str, float]
    chance_per_subject: dict[str, float]
    n_queries: int
    per_query: np.ndarray = field(repr=False)
    query_subjects: np.ndarray = field(repr=False)
    repeats: list[float] | None = None

    @property
    def subject_mean(self) -> float:
        return float(np.mean(list(self.per_subject.values())))

    @property
    def subject_sd(self) -> float:
        values = list(self.per_subject.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    @property
    def expected(self) -> float:
        """Mean of ``per_query``: for N-way, the exact expectation the repeats estimate."""
        return float(np.mean(self.per_query))

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no per-query arrays)."""
        summary = {
            "metric": self.metric,
            "direction": self.direction,
            "value": self.value,
            "chance": self.chance,
            "subject_mean": self.subject_mean,
            "subject_sd": self.subject_sd,
            "per_subject": dict(self.per_subject),
            "chance_per_subject": dict(self.chance_per_subject),
            "n_queries": self.n_queries,
        }
        if self.repeats is not None:
            summary["repeats"] = list(self.repeats)
            summary["repeat_sd"] = float(np.std(self.repeats, ddof=1)) if len(self.repeats) > 1 else 0.0
        return summary


def _check_directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise MetricInputError(f"direction: expected 'both' or one of {DIRECTIONS}, found {direction!r}")
    return (direction,)


def _as_ks(k: int | Sequence[int]) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    if not ks or any(int(value) < 1 for value in ks):
        raise MetricInputError(f"k: expected positive integers, found {k!r}")
    return tuple(int(value) for value in ks)


def subject_groups(subjects, n_items: int) -> list[tuple[str, np.ndarray]]:
    """``[(subject name, item indices), ...]`` in sorted subject order; one group when ``subjects`` is None.

    >>> subject_groups(["b", "a", "b"], 3)
    [('a', array([1])), ('b', array([0, 2]))]
    """
    if subjects is None:
        return [("all", np.arange(n_items))]
    labels = np.asarray(subjects.cpu() if isinstance(subjects, torch.Tensor) else subjects)
    if labels.shape != (n_items,):
        raise MetricInputError(f"subjects: expected {n_items} labels (one per item), found shape {labels.shape}")
    names, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(n_items)
    return [(str(name), np.flatnonzero(codes == index)) for index, name in enumerate(names)]


def paired_embeddings(brain, targets, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Brain and target embeddings as float32 (n_items, features) tensors of the same shape."""
    brain = as_embedding_matrix(brain, "brain", device)
    targets = as_embedding_matrix(targets, "targets", device)
    if brain.shape != targets.shape:
        raise MetricInputError(
            f"brain and targets: expected the same shape (one target per brain embedding), "
            f"found {tuple(brain.shape)} and {tuple(targets.shape)}"
        )
    return brain, targets


def _pessimistic_ranks(true_scores: torch.Tensor, rival_scores: torch.Tensor, tie_tolerance: float) -> torch.Tensor:
    """``1 + #{rivals >= true}`` per row, with the tie tolerance of the similarity module."""
    threshold = true_scores - tie_tolerance * true_scores.abs().clamp_min(1.0)
    return 1 + (rival_scores >= threshold[..., None]).sum(dim=-1)


def expected_n_way_hits(ranks, n_items: int, n_way: int, k: int) -> np.ndarray:
    """Exact probability that an N-way draw puts the true item in the top ``k``, per query.

    A query whose true item has (pessimistic) rank ``r`` among all ``n_items`` items has
    ``r - 1`` rivals scoring at least as high. Drawing ``n_way - 1`` distractors from the
    ``n_items - 1`` others without replacement, the query is correct when fewer than ``k``
    of them are rivals: a hypergeometric probability.

    >>> expected_n_way_hits([1, 2, 3], n_items=3, n_way=2, k=1).tolist()
    [1.0, 0.5, 0.0]
    """
    from scipy.stats import hypergeom

    ranks = np.asarray(ranks, dtype=np.int64)
    if k >= n_way:
        return np.ones(ranks.shape, dtype=np.float64)
    table = hypergeom.cdf(k - 1, n_items - 1, np.arange(n_items), n_way - 1)
    return table[ranks - 1]


def _check_n_way(n_way: int, ks: tuple[int, ...], groups: list[tuple[str, np.ndarray]]) -> None:
    if n_way < 2:
        raise MetricInputError(f"n_way: expected at least 2 candidates, found {n_way}")
    for k in ks:
        if k >= n_way:
            raise MetricInputError(f"k: expected k < n_way = {n_way} (top-{k} of {n_way} is always right), found {k}")
    for name, items in groups:
        if n_way > len(items):
            where = "" if name == "all" else f" of subject {name}"
            raise MetricInputError(
                f"n_way: {n_way}-way retrieval needs at least {n_way} items{where}, found {len(items)}"
            )


def _subset_ranks(
    brain: torch.Tensor,
    targets: torch.Tensor,
    n_way: int,
    n_repeats: int,
    seed: int,
    similarity: str,
    tie_tolerance: float,
) -> dict[str, np.ndarray]:
    """MindEye's protocol: (n_repeats, n_way) ranks per direction within random subsets."""
    rng = np.random.default_rng(seed)
    ranks = {direction: np.empty((n_repeats, n_way), dtype=np.int64) for direction in DIRECTIONS}
    for repeat in range(n_repeats):
        subset = torch.as_tensor(rng.choice(brain.shape[0], size=n_way, replace=False), device=brain.device)
        scores = similarity_matrix(brain[subset], targets[subset], similarity=similarity)
        true_scores = scores.diagonal()
        # The true item is among its own "rivals" here; it always ties with itself, so subtract it.
        ranks[BRAIN_TO_STIMULUS][repeat] = (_pessimistic_ranks(true_scores, scores, tie_tolerance) - 1).cpu().numpy()
        ranks[STIMULUS_TO_BRAIN][repeat] = (_pessimistic_ranks(true_scores, scores.T, tie_tolerance) - 1).cpu().numpy()
    return ranks


def _per_query_ranks(
    brain: torch.Tensor,
    targets: torch.Tensor,
    n_way: int,
    n_repeats: int,
    seed: int,
    similarity: str,
    tie_tolerance: float,
) -> dict[str, np.ndarray]:
    """ATM's protocol: (n_repeats, n_items) ranks per direction, each query with its own distractors.

    Holds the (n_items, n_items) similarity matrix: 256 MB for 8,000 items.
    """
    rng = np.random.default_rng(seed)
    n_items = brain.shape[0]
    scores = {BRAIN_TO_STIMULUS: similarity_matrix(brain, targets, similarity=similarity)}
    scores[STIMULUS_TO_BRAIN] = scores[BRAIN_TO_STIMULUS].T
    true_scores = scores[BRAIN_TO_STIMULUS].diagonal()
    ranks = {direction: np.empty((n_repeats, n_items), dtype=np.int64) for direction in DIRECTIONS}
    for repeat in range(n_repeats):
        # Keys are drawn in row blocks; numpy's stream makes this identical to one (n_items, n_items - 1) draw.
        for start in range(0, n_items, _KEY_ROWS):
            stop = min(start + _KEY_ROWS, n_items)
            keys = rng.random((stop - start, n_items - 1))
            others = np.argpartition(keys, n_way - 2, axis=1)[:, : n_way - 1]
            distractors = torch.as_tensor(others + (others >= np.arange(start, stop)[:, None]), device=brain.device)
            for direction in DIRECTIONS:
                rivals = torch.gather(scores[direction][start:stop], 1, distractors)
                ranks[direction][repeat, start:stop] = (
                    _pessimistic_ranks(true_scores[start:stop], rivals, tie_tolerance).cpu().numpy()
                )
    return ranks


def _full_ranks(
    brain: torch.Tensor, targets: torch.Tensor, similarity: str, tie_tolerance: float, device: torch.device
) -> dict[str, np.ndarray]:
    """Rank of each item among all items of its group, both directions (no cap)."""
    index = np.arange(brain.shape[0])
    options = {"similarity": similarity, "tie_tolerance": tie_tolerance, "device": device}
    return {
        BRAIN_TO_STIMULUS: rank_of_true(brain, targets, index, **options),
        STIMULUS_TO_BRAIN: rank_of_true(targets, brain, index, **options),
    }


def _assemble(
    metric: str,
    direction: str,
    hits: dict[str, np.ndarray],
    per_query: dict[str, np.ndarray],
    chance: dict[str, np.ndarray],
    groups: list[tuple[str, np.ndarray]],
    repeat_axis: bool,
) -> RetrievalScore:
    """Pool per-subject hits (arrays of shape (n_repeats, n) or (n,)) into one score."""
    names = [name for name, _ in groups]
    total_hits = sum(float(hits[name].sum()) for name in names)
    total_evaluations = sum(hits[name].size for name in names)
    repeats = None
    if repeat_axis:
        per_repeat_hits = np.sum([hits[name].sum(axis=1) for name in names], axis=0)
        per_repeat_count = sum(hits[name].shape[1] for name in names)
        repeats = (per_repeat_hits / per_repeat_count).tolist()
    chance_values = np.concatenate([chance[name] for name in names])
    # Per-query values go back to the caller's item order.
    n_items = sum(len(items) for _, items in groups)
    per_query_values = np.empty(n_items)
    query_subjects = np.empty(n_items, dtype=object)
    for name, items in groups:
        per_query_values[items] = per_query[name]
        query_subjects[items] = name
    return RetrievalScore(
        metric=metric,
        direction=direction,
        value=total_hits / total_evaluations,
        chance=float(chance_values.mean()),
        per_subject={name: float(hits[name].mean()) for name in names},
        chance_per_subject={name: float(chance[name].mean()) for name in names},
        n_queries=n_items,
        per_query=per_query_values,
        query_subjects=query_subjects,
        repeats=repeats,
    )


def n_way_topk(
    brain,
    targets,
    n_way: int,
    k: int | Sequence[int] = 1,
    n_repeats: int = 30,
    seed: int = 0,
    *,
    subjects=None,
    protocol: str = "subset",
    direction: str = "both",
    similarity: str = "cosine",
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, RetrievalScore]]:
    """N-way top-k retrieval accuracy, averaged over ``n_repeats`` random draws (module docstring).

    Parameters
    ----------
    brain, targets
        (n_items, features...) paired embeddings, one distinct stimulus per item (per subject).
    n_way
        Candidates per query, the true item included (2 ... number of items of a subject).
    k
        One top-k or several (``(1, 5)``); each needs ``k < n_way``. The draws are shared.
    subjects
        Optional (n_items,) subject label of each item; retrieval runs within each subject,
        with the same ``seed`` for every subject (so one subject alone gives the same numbers).
    protocol
        ``"subset"`` (MindEye, default) or ``"per_query"`` (ATM).

    Returns
    -------
    dict
        ``{"300-way top-1": {"brain->stimulus": RetrievalScore, "stimulus->brain": ...}}``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> brain, targets = rng.standard_normal((2, 40, 8))
    >>> score = n_way_topk(brain, targets, n_way=2, k=1, seed=0)["2-way top-1"]["brain->stimulus"]
    >>> 0.3 < score.value < 0.7, score.chance
    (True, 0.5)
    """
    check_similarity(similarity)
    if protocol not in PROTOCOLS:
        raise MetricInputError(f"protocol: expected one of {PROTOCOLS}, found {protocol!r}")
    if n_repeats < 1:
        raise MetricInputError(f"n_repeats: expected at least 1, found {n_repeats}")
    directions = _check_directions(direction)
    ks = _as_ks(k)
    device = resolve_device(device, brain, targets)
    brain, targets = paired_embeddings(brain, targets, device)
    groups = subject_groups(subjects, brain.shape[0])
    _check_n_way(n_way, ks, groups)

    draw = _subset_ranks if protocol == "subset" else _per_query_ranks
    sampled_ranks, full_ranks = {}, {}
    for name, items in groups:
        index = torch.as_tensor(items, device=device)
        group_brain, group_targets = brain[index], targets[index]
        sampled_ranks[name] = draw(group_brain, group_targets, n_way, n_repeats, seed, similarity, tie_tolerance)
        full_ranks[name] = _full_ranks(group_brain, group_targets, similarity, tie_tolerance, device)

    results: dict[str, dict[str, RetrievalScore]] = {}
    for top in ks:
        metric = n_way_name(n_way, top)
        results[metric] = {}
        for dir_name in directions:
            hits = {name: (sampled_ranks[name][dir_name] <= top).astype(np.float64) for name, _ in groups}
            expected = {
                name: expected_n_way_hits(full_ranks[name][dir_name], len(items), n_way, top) for name, items in groups
            }
            chance = {name: np.full(len(items), top / n_way) for name, items in groups}
            results[metric][dir_name] = _assemble(metric, dir_name, hits, expected, chance, groups, repeat_axis=True)
    return results


def _negative_pool(n_items: int, max_negatives: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The shared candidate pool and, per query, the pool position it must not see."""
    if max_negatives < 1:
        raise MetricInputError(f"max_negatives: expected at least 1, found {max_negatives}")
    if n_items <= max_negatives + 1:
        pool = np.arange(n_items)
        return pool, pool.copy()
    pool = rng.permutation(n_items)[: max_negatives + 1]
    position = np.full(n_items, len(pool) - 1, dtype=np.int64)
    position[pool] = np.arange(len(pool))
    return pool, position


def _chance_with_labels(k: int, pool_size: int, n_correct: np.ndarray) -> np.ndarray:
    """P(a uniformly random order puts at least one of ``n_correct`` among the first ``k``)."""
    from scipy.stats import hypergeom

    return 1.0 - hypergeom.pmf(0, pool_size, n_correct, min(k, pool_size))


def full_set_topk(
    brain,
    targets,
    k: int | Sequence[int] = (1, 10),
    *,
    subjects=None,
    labels=None,
    max_negatives: int = 10_000,
    seed: int = 0,
    direction: str = "both",
    similarity: str = "cosine",
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, RetrievalScore]]:
    """brainmagick's full-set ranking: top-k among all candidates of a subject, negatives capped.

    Parameters
    ----------
    brain, targets
        (n_items, features...) paired embeddings (e.g. one 3-s speech segment per item).
    k
        One or several top-k (brainmagick reports top-1 and top-10).
    labels
        Optional (n_items,) stimulus identity (segment hash, word). Candidates sharing the
        query's label count as correct.
    max_negatives
        Most negatives per query (10,000 as brainmagick); beyond that a random pool is shared.

    Returns
    -------
    dict
        ``{"full-set top-10": {"brain->stimulus": RetrievalScore, ...}, ...}``.

    >>> import numpy as np
    >>> targets = np.random.default_rng(0).standard_normal((30, 8))
    >>> full_set_topk(targets, targets, k=1)["full-set top-1"]["stimulus->brain"].value
    1.0
    """
    check_similarity(similarity)
    directions = _check_directions(direction)
    ks = _as_ks(k)
    device = resolve_device(device, brain, targets)
    brain, targets = paired_embeddings(brain, targets, device)
    n_items = brain.shape[0]
    groups = subject_groups(subjects, n_items)
    codes = None if labels is None else label_codes(labels, "labels", n_items)

    ranks: dict[str, dict[str, np.ndarray]] = {}
    correct_in_pool: dict[str, np.ndarray] = {}
    pool_sizes: dict[str, int] = {}
    for name, items in groups:
        if len(items) < 2:
            raise MetricInputError(f"subject {name}: full-set ranking needs at least 2 items, found {len(items)}")
        pool, hidden = _negative_pool(len(items), max_negatives, np.random.default_rng(seed))
        pool_sizes[name] = len(pool)
        index = torch.as_tensor(items, device=device)
        group = {"brain": brain[index], "targets": targets[index]}
        group_codes = None if codes is None else codes[items]
        pool_codes = None if codes is None else group_codes[pool]
        if group_codes is None:
            correct_in_pool[name] = np.ones(len(items))
        else:
            # Correct candidates a query sees: its label's count in the pool, less the hidden slot's, plus itself.
            counts = np.bincount(pool_codes, minlength=codes.max() + 1)
            correct_in_pool[name] = counts[group_codes] - (pool_codes[hidden] == group_codes) + 1
        pool_t = torch.as_tensor(pool, device=device)
        ranks[name] = {}
        for dir_name, query_key, candidate_key in (
            (BRAIN_TO_STIMULUS, "brain", "targets"),
            (STIMULUS_TO_BRAIN, "targets", "brain"),
        ):
            if dir_name not in directions:
                continue
            candidates = group[candidate_key] if len(pool) == len(items) else group[candidate_key][pool_t]
            ranks[name][dir_name] = rank_against(
                group[query_key],
                candidates,
                true_vectors=group[candidate_key],
                exclude_index=hidden,
                query_labels=group_codes,
                candidate_labels=pool_codes,
                similarity=similarity,
                chunk_size=chunk_size,
                tie_tolerance=tie_tolerance,
            )

    results: dict[str, dict[str, RetrievalScore]] = {}
    for top in ks:
        metric = full_set_name(top)
        chance = {name: _chance_with_labels(top, pool_sizes[name], correct_in_pool[name]) for name, _ in groups}
        results[metric] = {}
        for dir_name in directions:
            hits = {name: (ranks[name][dir_name] <= top).astype(np.float64) for name, _ in groups}
            results[metric][dir_name] = _assemble(metric, dir_name, hits, hits, chance, groups, repeat_axis=False)
    return results


def evaluate_retrieval(
    brain,
    targets,
    *,
    subjects=None,
    n_ways: Sequence[int] = (2, 4, 10, 50, 100, 200),
    top_ks: Sequence[int] = (1, 5),
    full_set_top_ks: Sequence[int] = (1, 10),
    labels=None,
    max_negatives: int = 10_000,
    n_repeats: int = 30,
    protocol: str = "subset",
    seed: int = 0,
    n_bootstrap: int = 1000,
    n_permutations: int = 0,
    confidence: float = 0.95,
    similarity: str = "cosine",
    device: torch.device | str | None = None,
) -> dict:
    """Every retrieval metric, both directions, per subject and pooled, as a JSON-ready dict.

    N-way sizes larger than the smallest subject and top-k not below N are left out (listed
    under ``"skipped"``); ``n_ways=()`` or ``full_set_top_ks=()`` turn a protocol off.
    Intervals are percentile bootstraps over queries (stratified by subject) of the per-query
    values (:class:`RetrievalScore`); p-values come from
    :func:`neurodec.metrics.statistics.permutation_tests` when ``n_permutations > 0``.

    Returns a dict of plain floats, lists and strings::

        {"similarity": "cosine", "subjects": [...], "n_items": {...}, "confidence": 0.95,
         "protocols": {...},
         "brain->stimulus": {"pooled": {"200-way top-1": 0.31, ...}, "subject_mean": {...},
                             "subject_sd": {...}, "repeat_sd": {...}, "per_subject": {"01": {...}},
                             "interval": {"200-way top-1": [0.27, 0.35]}, "p_value": {...}},
         "stimulus->brain": {...},
         "chance": {"pooled": {...}, "per_subject": {...}},
         "skipped": {"300-way": "..."}}

    >>> import json, numpy as np
    >>> targets = np.random.default_rng(0).standard_normal((20, 8))
    >>> report = evaluate_retrieval(targets, targets, n_ways=(2, 10), n_repeats=3, n_bootstrap=100)
    >>> report["brain->stimulus"]["pooled"]["10-way top-1"], "10-way top-5" in report["chance"]["pooled"]
    (1.0, True)
    >>> _ = json.dumps(report)
    """
    from neurodec.metrics.statistics import bootstrap_interval, permutation_tests

    device = resolve_device(device, brain, targets)
    brain, targets = paired_embeddings(brain, targets, device)
    groups = subject_groups(subjects, brain.shape[0])
    smallest = min(len(items) for _, items in groups)
    skipped: dict[str, str] = {}
    scores: dict[str, dict[str, RetrievalScore]] = {}
    permutation_metrics: dict[str, tuple[int | None, int]] = {}

    for n_way in n_ways:
        if n_way > smallest:
            skipped[f"{n_way}-way"] = f"needs {n_way} items per subject; the smallest subject has {smallest}"
            logger.warning("retrieval: %d-way skipped, the smallest subject has %d items", n_way, smallest)
            continue
        ks = tuple(top for top in top_ks if top < n_way)
        if not ks:
            continue
        scores.update(
            n_way_topk(brain, targets, n_way, ks, n_repeats, seed, subjects=subjects, protocol=protocol,
                       similarity=similarity, device=device)
        )
        permutation_metrics.update({n_way_name(n_way, top): (n_way, top) for top in ks})
    if full_set_top_ks:
        scores.update(
            full_set_topk(brain, targets, tuple(full_set_top_ks), subjects=subjects, labels=labels,
                          max_negatives=max_negatives, seed=seed, similarity=similarity, device=device)
        )
        permutation_metrics.update({full_set_name(top): (None, top) for top in full_set_top_ks})

    p_values: dict[str, dict[str, float]] = {direction: {} for direction in DIRECTIONS}
    if n_permutations > 0:
        for direction in DIRECTIONS:
            tests = permutation_tests(brain, targets, permutation_metrics, subjects=subjects, direction=direction,
                                      n_permutations=n_permutations, seed=seed, similarity=similarity, device=device)
            p_values[direction] = {metric: test.p_value for metric, test in tests.items()}

    report: dict = {
        "similarity": similarity,
        "subjects": [name for name, _ in groups],
        "n_items": {name: int(len(items)) for name, items in groups},
        "confidence": confidence,
        "protocols": {
            "n-way": {"protocol": protocol, "n_repeats": n_repeats, "seed": seed},
            "full-set": {"max_negatives": max_negatives, "seed": seed, "labels": labels is not None},
        },
        "chance": {"pooled": {}, "per_subject": {name: {} for name, _ in groups}},
        "skipped": skipped,
    }
    for direction in DIRECTIONS:
        section = {"pooled": {}, "subject_mean": {}, "subject_sd": {}, "repeat_sd": {},
                   "per_subject": {name: {} for name, _ in groups}, "interval": {}, "p_value": p_values[direction]}
        for metric, by_direction in scores.items():
            score = by_direction[direction]
            summary = score.to_dict()
            section["pooled"][metric] = score.value
            section["subject_mean"][metric] = summary["subject_mean"]
            section["subject_sd"][metric] = summary["subject_sd"]
            if "repeat_sd" in summary:
                section["repeat_sd"][metric] = summary["repeat_sd"]
            for name, value in score.per_subject.items():
                section["per_subject"][name][metric] = value
            if n_bootstrap > 0:
                interval = bootstrap_interval(score.per_query, n_resamples=n_bootstrap, confidence=confidence,
                                              seed=seed, strata=score.query_subjects)
                section["interval"][metric] = [interval.low, interval.high]
            report["chance"]["pooled"][metric] = score.chance
            for name, value in score.chance_per_subject.items():
                report["chance"]["per_subject"][name][metric] = value
        report[direction] = section
    return report
