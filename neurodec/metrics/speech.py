"""Speech segment retrieval as Défossez et al. (2023) evaluate it (brainmagick's ``bm/wer.py``).

Each query is one decoded test window (a subject hearing a segment): its time-resolved
prediction, flattened over (features, times), is compared with the targets of the test
segments, and the candidates are ranked. Three kinds of numbers come out:

segment top-k
    The true segment is among the ``k`` best candidates. Chance ``k / n_candidates``.
word top-k
    A candidate among the ``k`` best starts with the same word as the true segment (the
    true segment itself counts). brainmagick's ``wer`` is ``1 -`` this at ``k = 10``. Chance,
    for a query whose word starts ``c`` of the ``n`` candidates (itself included), is the
    probability that ``k`` candidates drawn at random without replacement include one of
    them::

        chance = 1 - C(n - c, k) / C(n, k)

    (a hypergeometric probability), averaged over queries.

Candidates
    The distinct test segments (``targets``, one row each), whoever heard them: every query,
    of every subject, is ranked against the same set. When there are more than
    ``max_negatives`` segments, one pool of ``max_negatives`` segments is drawn once,
    ``numpy.random.default_rng(seed).permutation(n_segments)[:max_negatives]``, and shared by
    all queries, as brainmagick draws ``wer_negatives`` rows once: a query whose segment is in
    the pool meets the pool; any other query meets the pool without its last segment, plus
    its own segment (brainmagick writes the true target over the pool's last row). Every
    query so faces ``min(n_segments, max_negatives)`` candidates, the true one included
    (``max_negatives - 1`` negatives when capped; 10,000 candidates as brainmagick).
Score
    brainmagick ranks with the dot product of the prediction and the L2-normalised
    candidate (its CLIP loss's ``get_scores``); dividing by the prediction's norm, a positive
    constant of each query, does not change a query's ranking, so the cosine of
    :mod:`neurodec.metrics.similarity` gives the same ranks. Ranks are pessimistic about ties
    (rank = 1 + candidates scoring at least as high, within ``1e-6 * max(1, |score|)``).
Subjects
    Values per subject (the mean over that subject's queries), pooled (the mean over all
    queries) and the mean and sd over subjects; 95% percentile-bootstrap intervals over
    queries (stratified by subject when pooled), from
    :func:`neurodec.metrics.statistics.bootstrap_interval`.

Nothing holds the (queries x candidates) score matrix: queries go through in chunks of at
most ``block_bytes`` of predictions, and each chunk meets the candidates in blocks
(:func:`neurodec.metrics.similarity.rank_against`). Memory is the inputs, one copy of the
candidate pool when capped, and a few blocks.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> targets = rng.standard_normal((30, 4, 5)).astype(np.float32)        # 30 segments, 4 features x 5 times
>>> segments = np.r_[np.arange(30), np.arange(30)]                      # two subjects heard every segment
>>> brain = targets[segments] + 0.1 * rng.standard_normal((60, 4, 5)).astype(np.float32)
>>> words = np.array(["the", "cat", "sat"] * 10)
>>> result = segment_retrieval(brain, targets, segments, words=words, subjects=["01"] * 30 + ["02"] * 30,
...                            n_bootstrap=100)
>>> result["pooled"]["segment top-1"], round(result["chance"]["pooled"]["segment top-10"], 4)
(1.0, 0.3333)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from neurodec._logging import progress
from neurodec.errors import MetricInputError
from neurodec.metrics.retrieval import _chance_with_labels, subject_groups
from neurodec.metrics.similarity import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_TIE_TOLERANCE,
    as_embedding_matrix,
    label_codes,
    rank_against,
    resolve_device,
)
from neurodec.metrics.statistics import bootstrap_interval

logger = logging.getLogger("neurodec")

#: brainmagick's ``test.wer_negatives``: candidates per query, the true segment included.
DEFAULT_MAX_NEGATIVES = 10_000
SCORE_DESCRIPTION = ("dot product of the prediction with the L2-normalised candidate over (features x times); "
                     "per query the same ranking as cosine")


def segment_metric_name(k: int) -> str:
    """``"segment top-10"``: the name of a segment-level metric."""
    return f"segment top-{k}"


def word_metric_name(k: int) -> str:
    """``"word top-10"``: the name of a word-level metric."""
    return f"word top-{k}"


def candidate_pool(n_segments: int, max_negatives: int = DEFAULT_MAX_NEGATIVES, seed: int = 0) -> np.ndarray:
    """The segments every query is ranked against (row indices of the targets).

    All of them when ``n_segments <= max_negatives``, else the first ``max_negatives`` of
    ``numpy.random.default_rng(seed).permutation(n_segments)``.

    >>> candidate_pool(5, max_negatives=10).tolist()
    [0, 1, 2, 3, 4]
    >>> len(candidate_pool(50, max_negatives=10, seed=1))
    10
    """
    if max_negatives < 2:
        raise MetricInputError(f"max_negatives: expected at least 2 candidates per query (the true segment and "
                               f"one negative), found {max_negatives}")
    if n_segments <= max_negatives:
        return np.arange(n_segments)
    return np.random.default_rng(seed).permutation(n_segments)[:max_negatives]


@dataclass
class SegmentRanks:
    """Per-query ranks of :func:`segment_ranks` (1 = best, pessimistic about ties).

    ``segment``: rank of the true segment among the query's candidates; ``word``: rank of
    the best-scoring candidate that starts with the true word among the candidates that do
    not (None without words); ``same_word``: how many of the query's candidates start with
    the true word, itself included; ``in_pool``: whether the query's segment is in the pool
    (else it replaced the pool's last segment); ``n_candidates``: candidates per query.
    """

    segment: np.ndarray
    word: np.ndarray | None
    same_word: np.ndarray | None
    in_pool: np.ndarray
    pool: np.ndarray
    n_candidates: int
    n_segments: int

    @property
    def capped(self) -> bool:
        """Whether the candidates are a random pool rather than every segment."""
        return self.n_candidates < self.n_segments

    @classmethod
    def concatenate(cls, parts: Sequence["SegmentRanks"]) -> "SegmentRanks":
        """The ranks of several query chunks ranked against the same candidates, in chunk order.

        A query's ranks depend only on the query, its segment and the candidate pool, so
        ranking the queries chunk by chunk (:func:`segment_ranks` on each, same targets, same
        ``max_negatives`` and ``seed``) and concatenating gives the ranks of one call.

        >>> import numpy as np
        >>> targets = np.eye(3, dtype=np.float32)
        >>> parts = [segment_ranks(targets[[i]], targets, [i]) for i in range(3)]
        >>> SegmentRanks.concatenate(parts).segment.tolist()
        [1, 1, 1]
        """
        if not parts:
            raise MetricInputError("parts: expected the ranks of at least one chunk of queries, found none")
        first = parts[0]
        for part in parts[1:]:
            if (part.n_segments != first.n_segments or part.n_candidates != first.n_candidates
                    or not np.array_equal(part.pool, first.pool) or (part.word is None) != (first.word is None)):
                raise MetricInputError("parts: expected chunks ranked against the same candidates (same targets, "
                                       "max_negatives and seed, words given to all or none)")
        join = (lambda name: None if getattr(first, name) is None
                else np.concatenate([getattr(part, name) for part in parts]))
        return cls(segment=join("segment"), word=join("word"), same_word=join("same_word"), in_pool=join("in_pool"),
                   pool=first.pool, n_candidates=first.n_candidates, n_segments=first.n_segments)


def _as_segment_index(segments, n_queries: int, n_segments: int) -> np.ndarray:
    array = np.asarray(segments.cpu() if isinstance(segments, torch.Tensor) else segments)
    if array.shape != (n_queries,) or not np.issubdtype(array.dtype, np.integer):
        raise MetricInputError(f"segments: expected {n_queries} integer rows of targets (one per query), found "
                               f"shape {array.shape} of {array.dtype}")
    if n_queries and (array.min() < 0 or array.max() >= n_segments):
        raise MetricInputError(f"segments: expected rows in [0, {n_segments}) of targets, found "
                               f"{array.min()}..{array.max()}")
    return array.astype(np.int64)


def _query_chunk_size(n_features: int, n_candidates: int, block_bytes: int) -> int:
    """Queries per chunk: a chunk of predictions (normalised once, a copy) and its block of
    scores each stay within ``block_bytes``."""
    return max(1, min(block_bytes // (4 * max(1, n_features)), block_bytes // (4 * max(1, n_candidates))))


def normalize_words(words) -> np.ndarray:
    """Words as the word-level metric compares them: lower case, without trailing or leading
    full stops (brainmagick's word hash), so "The", "the" and "the." are one word.

    >>> normalize_words(["The", "the.", "Cat"]).tolist()
    ['the', 'the', 'cat']
    """
    return np.asarray([str(word).lower().strip(".") for word in np.asarray(words, dtype=object).ravel()],
                      dtype=object)


def segment_ranks(
    brain,
    targets,
    segments,
    *,
    words=None,
    max_negatives: int = DEFAULT_MAX_NEGATIVES,
    seed: int = 0,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> SegmentRanks:
    """Rank of each query's segment, and of its word, among the candidate segments.

    Parameters
    ----------
    brain
        (n_queries, features...) predictions, e.g. (n, n_features, n_times).
    targets
        (n_segments, features...) targets of the distinct test segments (the candidates).
    segments
        (n_queries,) row of ``targets`` that each query heard.
    words
        Optional (n_segments,) word each segment starts with; compared after
        :func:`normalize_words` (case and full stops ignored, as brainmagick's word hash).
    max_negatives, seed
        The candidate pool (module docstring, :func:`candidate_pool`).

    >>> import numpy as np
    >>> targets = np.eye(3, dtype=np.float32)
    >>> ranks = segment_ranks(np.array([[0.0, 1.0, 0.9]]), targets, [2], words=["a", "b", "b"])
    >>> ranks.segment.tolist(), ranks.word.tolist(), ranks.same_word.tolist()
    ([2], [1], [2])
    """
    device = resolve_device(device, brain, targets)
    queries = as_embedding_matrix(brain, "brain", device)
    candidates_all = as_embedding_matrix(targets, "targets", device)
    if queries.shape[1] != candidates_all.shape[1]:
        raise MetricInputError(f"brain and targets: expected the same number of values per item (features x "
                               f"times), found {queries.shape[1]} and {candidates_all.shape[1]}")
    n_queries, n_segments = queries.shape[0], candidates_all.shape[0]
    if n_segments < 2:
        raise MetricInputError(f"targets: segment retrieval needs at least 2 segments, found {n_segments}")
    segment = _as_segment_index(segments, n_queries, n_segments)
    codes = None if words is None else label_codes(normalize_words(words), "words", n_segments)

    pool = candidate_pool(n_segments, max_negatives, seed)
    capped = len(pool) < n_segments
    position = np.full(n_segments, -1, dtype=np.int64)
    position[pool] = np.arange(len(pool))
    in_pool = position[segment] >= 0
    candidates = candidates_all[torch.as_tensor(pool, device=device)] if capped else candidates_all
    pool_codes = None if codes is None else codes[pool]

    same_word = None
    if codes is not None:
        counts = np.bincount(pool_codes, minlength=int(codes.max()) + 1)
        true_codes = codes[segment]
        # Outside the pool a query loses the pool's last segment and gains its own.
        outside_change = 1 - (pool_codes[-1] == true_codes).astype(np.int64)
        same_word = counts[true_codes] + np.where(in_pool, 0, outside_change)

    options = dict(tie_tolerance=tie_tolerance, block_bytes=block_bytes)
    segment_rank = np.empty(n_queries, dtype=np.int64)
    word_rank = None if codes is None else np.empty(n_queries, dtype=np.int64)
    chunk = _query_chunk_size(queries.shape[1], len(pool), block_bytes)
    starts = range(0, n_queries, chunk)
    for start in progress(starts, "ranking speech segments", total=len(starts)):
        rows = np.arange(start, min(start + chunk, n_queries))
        for inside in (True, False):
            picked = rows[in_pool[rows] == inside]
            if not len(picked):
                continue
            picked_t = torch.as_tensor(picked, device=device)
            if inside:
                where = position[segment[picked]]
                common = dict(true_index=where, exclude_index=where, chunk_size=len(picked), **options)
                seen = candidates
            else:
                # The pool without its last segment; the true target is scored on its own.
                common = dict(true_vectors=candidates_all[torch.as_tensor(segment[picked], device=device)],
                              chunk_size=len(picked), **options)
                seen = candidates[:-1]
            segment_rank[picked] = rank_against(queries[picked_t], seen, **common)
            if codes is not None:
                word_rank[picked] = rank_against(queries[picked_t], seen, query_labels=codes[segment[picked]],
                                                 candidate_labels=pool_codes if inside else pool_codes[:-1],
                                                 **common)
    return SegmentRanks(segment=segment_rank, word=word_rank, same_word=same_word, in_pool=in_pool, pool=pool,
                        n_candidates=len(pool), n_segments=n_segments)


def _check_ks(ks: Sequence[int], name: str) -> tuple[int, ...]:
    values = tuple(int(k) for k in ks)
    if any(k < 1 for k in values):
        raise MetricInputError(f"{name}: expected positive integers, found {list(ks)}")
    return values


def segment_retrieval(
    brain,
    targets,
    segments,
    *,
    words=None,
    subjects=None,
    max_negatives: int = DEFAULT_MAX_NEGATIVES,
    top_ks: Sequence[int] = (1, 10),
    word_top_ks: Sequence[int] = (10,),
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> dict:
    """Segment- and word-level top-k of speech segment retrieval, per subject and pooled (JSON-ready).

    Arguments as :func:`segment_ranks`; ``subjects`` (n_queries,) labels each query's subject
    (one subject ``"all"`` without). ``word_top_ks`` needs ``words``. Bootstrap intervals use
    ``n_bootstrap`` resamples (0: none) seeded with ``seed``.

    Returns::

        {"metrics": ["segment top-1", "segment top-10", "word top-10"],
         "pooled": {...}, "interval": {metric: [low, high]}, "subject_mean": {...}, "subject_sd": {...},
         "per_subject": {subject: {...}}, "per_subject_interval": {subject: {metric: [low, high]}},
         "chance": {"pooled": {...}, "per_subject": {subject: {...}}},
         "subjects": [...], "n_queries": {subject: n}, "n_segments": 1200, "n_candidates": 1200,
         "max_negatives": 10000, "capped": False, "seed": 0, "confidence": 0.95, "n_bootstrap": 1000,
         "score": "...", "ties": "pessimistic"}

    >>> import numpy as np
    >>> targets = np.random.default_rng(0).standard_normal((20, 3, 4))
    >>> segment_retrieval(targets, targets, np.arange(20), n_bootstrap=0)["pooled"]
    {'segment top-1': 1.0, 'segment top-10': 1.0}
    """
    _check_ks(top_ks, "top_ks")
    if words is not None:
        _check_ks(word_top_ks, "word_top_ks")
    if not top_ks and not (words is not None and word_top_ks):
        raise MetricInputError("top_ks and word_top_ks: expected at least one top-k, found none")
    ranks = segment_ranks(brain, targets, segments, words=words, max_negatives=max_negatives, seed=seed,
                          tie_tolerance=tie_tolerance, device=device, block_bytes=block_bytes)
    return summarize_segment_ranks(ranks, subjects=subjects, max_negatives=max_negatives, top_ks=top_ks,
                                   word_top_ks=word_top_ks, seed=seed, n_bootstrap=n_bootstrap,
                                   confidence=confidence)


def summarize_segment_ranks(
    ranks: SegmentRanks,
    *,
    subjects=None,
    max_negatives: int = DEFAULT_MAX_NEGATIVES,
    top_ks: Sequence[int] = (1, 10),
    word_top_ks: Sequence[int] = (10,),
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
) -> dict:
    """:func:`segment_retrieval`'s output from per-query ranks (:func:`segment_ranks`).

    What :func:`segment_retrieval` computes after ranking, so ranks gathered chunk by chunk
    (:meth:`SegmentRanks.concatenate`) give the same numbers as one call on every query.
    ``word_top_ks`` apply when the ranks have word ranks; arguments as :func:`segment_retrieval`.

    >>> import numpy as np
    >>> targets = np.eye(4, dtype=np.float32)
    >>> ranks = SegmentRanks.concatenate([segment_ranks(targets[:2], targets, [0, 1]),
    ...                                   segment_ranks(targets[2:], targets, [2, 3])])
    >>> summarize_segment_ranks(ranks, top_ks=(1,), n_bootstrap=0)["pooled"]
    {'segment top-1': 1.0}
    """
    top_ks = _check_ks(top_ks, "top_ks")
    word_top_ks = _check_ks(word_top_ks, "word_top_ks") if ranks.word is not None else ()
    if not top_ks and not word_top_ks:
        raise MetricInputError("top_ks and word_top_ks: expected at least one top-k, found none")
    n_queries, n = len(ranks.segment), ranks.n_candidates
    groups = subject_groups(subjects, n_queries)

    hits: dict[str, np.ndarray] = {}
    chance: dict[str, np.ndarray] = {}
    for k in top_ks:
        name = segment_metric_name(k)
        hits[name] = (ranks.segment <= k).astype(np.float64)
        chance[name] = np.full(n_queries, min(1.0, k / n))
    for k in word_top_ks:
        name = word_metric_name(k)
        hits[name] = (ranks.word <= k).astype(np.float64)
        chance[name] = _chance_with_labels(k, n, ranks.same_word).astype(np.float64)

    # Each query's group, so the pooled interval resamples within subjects.
    strata = None
    if subjects is not None:
        strata = np.empty(n_queries, dtype=object)
        for name, items in groups:
            strata[items] = name
    result: dict = {
        "metrics": list(hits),
        "pooled": {}, "interval": {}, "subject_mean": {}, "subject_sd": {},
        "per_subject": {name: {} for name, _ in groups},
        "per_subject_interval": {name: {} for name, _ in groups},
        "chance": {"pooled": {}, "per_subject": {name: {} for name, _ in groups}},
        "subjects": [name for name, _ in groups],
        "n_queries": {name: int(len(items)) for name, items in groups},
        "n_segments": int(ranks.n_segments),
        "n_candidates": int(n),
        "max_negatives": int(max_negatives),
        "capped": ranks.capped,
        "seed": int(seed),
        "confidence": float(confidence),
        "n_bootstrap": int(n_bootstrap),
        "score": SCORE_DESCRIPTION,
        "ties": "pessimistic",
    }
    for metric, values in hits.items():
        result["pooled"][metric] = float(values.mean())
        result["chance"]["pooled"][metric] = float(chance[metric].mean())
        per_subject = [float(values[items].mean()) for _, items in groups]
        result["subject_mean"][metric] = float(np.mean(per_subject))
        result["subject_sd"][metric] = float(np.std(per_subject, ddof=1)) if len(per_subject) > 1 else 0.0
        for (name, items), value in zip(groups, per_subject):
            result["per_subject"][name][metric] = value
            result["chance"]["per_subject"][name][metric] = float(chance[metric][items].mean())
            if n_bootstrap > 0:
                interval = bootstrap_interval(values[items], n_resamples=n_bootstrap, confidence=confidence, seed=seed)
                result["per_subject_interval"][name][metric] = [interval.low, interval.high]
        if n_bootstrap > 0:
            interval = bootstrap_interval(values, n_resamples=n_bootstrap, confidence=confidence, seed=seed,
                                          strata=strata)
            result["interval"][metric] = [interval.low, interval.high]
    return result


def summarize_over_seeds(results: Mapping[str, dict]) -> dict:
    """Mean and sd (ddof=1; 0 for one run) over runs of each pooled metric of :func:`segment_retrieval`.

    ``results`` maps a run's name (e.g. ``"seed-0"``) to its :func:`segment_retrieval` output.
    Chance is the runs' mean (the same for every run evaluated on the same candidates).

    >>> summary = summarize_over_seeds({"seed-0": {"pooled": {"segment top-10": 0.6},
    ...                                            "chance": {"pooled": {"segment top-10": 0.01}}},
    ...                                 "seed-1": {"pooled": {"segment top-10": 0.7},
    ...                                            "chance": {"pooled": {"segment top-10": 0.01}}}})
    >>> round(summary["mean"]["segment top-10"], 6), round(summary["sd"]["segment top-10"], 6)
    (0.65, 0.070711)
    """
    if not results:
        raise MetricInputError("results: expected the metrics of at least one run, found none")
    names = list(dict.fromkeys(metric for result in results.values() for metric in result["pooled"]))
    values = {metric: [float(result["pooled"][metric]) for result in results.values() if metric in result["pooled"]]
              for metric in names}
    chance = {metric: float(np.mean([result["chance"]["pooled"][metric] for result in results.values()
                                     if metric in result["chance"]["pooled"]])) for metric in names}
    return {
        "n_seeds": len(results),
        "runs": list(results),
        "mean": {metric: float(np.mean(v)) for metric, v in values.items()},
        "sd": {metric: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for metric, v in values.items()},
        "values": values,
        "chance": chance,
    }


__all__ = [
    "DEFAULT_MAX_NEGATIVES",
    "SegmentRanks",
    "candidate_pool",
    "normalize_words",
    "segment_metric_name",
    "segment_ranks",
    "segment_retrieval",
    "summarize_over_seeds",
    "summarize_segment_ranks",
    "word_metric_name",
]
