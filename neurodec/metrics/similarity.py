"""Chunked similarity search: top-k candidates and the rank of the correct one.

A similarity matrix between 100,000 brain embeddings and 100,000 candidates would take
40 GB in float32, so nothing here ever builds it. Queries are processed in chunks, and
candidates too when one row of scores alone would be large; each chunk's scores live only
as long as the chunk does. The memory one chunk of scores may use is ``block_bytes``
(256 MiB by default), which fixes the chunk sizes when they are not given.

Similarity is cosine by default (both sides L2-normalised, as NICE-EEG, ATM, MindEye and
brainmagick's CLIP loss do) or the plain dot product. Inputs of more than two dimensions
are flattened after the first (MindEye flattens its 256 x 1664 token embeddings the same
way; brainmagick's einsum over channels and time is the same dot product). All arithmetic
is float32 in torch, on the CPU or on a GPU (``device=``); results come back as numpy.

Ranks are 1-based and **pessimistic about ties**: the rank of the correct candidate is
``1 + (number of other candidates scoring at least as high)``, so a model that gives every
candidate the same score gets the worst rank, never the best. Two scores count as tied
when they differ by at most ``tie_tolerance * max(1, |true score|)`` (1e-6 by default),
because the score of the correct pair is computed by a row-wise dot product while the
others come out of a matrix product, and the two may round differently in the last bit.

>>> import numpy as np
>>> from neurodec.metrics import rank_of_true, topk_chunked
>>> brain = np.array([[1.0, 0.0], [1.0, 0.1]], dtype=np.float32)
>>> targets = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
>>> rank_of_true(brain, targets, true_index=[0, 1]).tolist()   # brain 1 is closer to target 0
[1, 2]
>>> topk_chunked(brain, targets, k=2).indices.tolist()
[[0, 1], [0, 1]]
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

from neurodec._logging import progress
from neurodec.errors import MetricInputError

SIMILARITIES = ("cosine", "dot")
DEFAULT_BLOCK_BYTES = 256 * 2**20
DEFAULT_TIE_TOLERANCE = 1e-6
# A zero vector has no direction; torch.nn.functional.normalize uses the same floor.
_NORM_FLOOR = 1e-12
# Fewest queries per chunk before candidates are split as well.
_MIN_QUERIES_PER_BLOCK = 256


class TopK(NamedTuple):
    """The best ``k`` candidates of each query, best first (numpy arrays of shape (n_queries, k))."""

    indices: np.ndarray
    scores: np.ndarray


def as_embedding_matrix(values, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """``values`` as a finite float32 (n, features) tensor on ``device``, flattening trailing axes.

    A float32 numpy array or CPU tensor is used without a copy.

    >>> as_embedding_matrix(np.zeros((4, 2, 3)), "brain").shape
    torch.Size([4, 6])
    """
    tensor = torch.as_tensor(values)
    if tensor.ndim < 2:
        raise MetricInputError(
            f"{name}: expected an array of shape (n_items, features...), found shape {tuple(tensor.shape)}"
        )
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise MetricInputError(f"{name}: expected real numbers, found dtype {tensor.dtype}")
    tensor = tensor.to(device=device, dtype=torch.float32).reshape(tensor.shape[0], -1)
    # A row's largest magnitude is NaN or Inf exactly when the row holds one (amax keeps NaN).
    # Row blocks, because torch.isfinite over a whole matrix allocates several times its size
    # and is ten times slower on the CPU.
    bad_rows = 0
    rows_per_block = max(1, 2**20 // max(1, tensor.shape[1]))
    for start in range(0, tensor.shape[0], rows_per_block):
        largest = tensor[start:start + rows_per_block].abs().amax(dim=1)
        bad_rows += int((~torch.isfinite(largest)).sum())
    if bad_rows:
        raise MetricInputError(f"{name}: expected finite values, found NaN or Inf in {bad_rows} row(s)")
    return tensor


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise MetricInputError(f"similarity: expected one of {SIMILARITIES}, found {similarity!r}")
    return similarity


def _check_pair(queries: torch.Tensor, candidates: torch.Tensor) -> None:
    if queries.shape[1] != candidates.shape[1]:
        raise MetricInputError(
            f"queries and candidates: expected the same number of features, "
            f"found {queries.shape[1]} and {candidates.shape[1]}"
        )
    if candidates.shape[0] == 0:
        raise MetricInputError("candidates: expected at least one candidate, found none")


def _inverse_norms(matrix: torch.Tensor, similarity: str) -> torch.Tensor | None:
    if similarity == "dot":
        return None
    return 1.0 / matrix.norm(dim=1).clamp_min(_NORM_FLOOR)


def chunk_sizes(
    n_candidates: int,
    chunk_size: int | None,
    candidate_chunk_size: int | None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[int, int]:
    """Queries and candidates per chunk so that one float32 score block fits ``block_bytes``.

    >>> chunk_sizes(100_000, None, None)
    (671, 100000)
    """
    scores_per_block = max(1, block_bytes // 4)
    if candidate_chunk_size is None:
        candidate_chunk_size = min(n_candidates, max(1, scores_per_block // _MIN_QUERIES_PER_BLOCK))
    if chunk_size is None:
        chunk_size = max(1, scores_per_block // candidate_chunk_size)
    # Counts are float32 sums of 0/1 (see rank_against), exact up to 2**24 candidates per chunk.
    candidate_chunk_size = min(candidate_chunk_size, 2**24)
    if chunk_size < 1 or candidate_chunk_size < 1:
        raise MetricInputError(
            f"chunk sizes: expected positive integers, found chunk_size={chunk_size}, "
            f"candidate_chunk_size={candidate_chunk_size}"
        )
    return int(chunk_size), int(candidate_chunk_size)


class _ScoreBlocks:
    """Scores of one chunk of queries against successive chunks of candidates."""

    def __init__(self, candidates: torch.Tensor, similarity: str, candidate_chunk_size: int):
        self.candidates = candidates
        self.similarity = similarity
        self.candidate_chunk_size = candidate_chunk_size
        self.candidate_inverse_norms = _inverse_norms(candidates, similarity)

    def prepare(self, queries: torch.Tensor) -> torch.Tensor:
        """Normalise a chunk of queries once (cosine), so each block needs one scaling only."""
        if self.similarity == "cosine":
            return queries * (1.0 / queries.norm(dim=1, keepdim=True).clamp_min(_NORM_FLOOR))
        return queries

    def ranges(self) -> Iterator[tuple[int, int]]:
        """``(first, stop)`` candidate indices of each chunk."""
        n_candidates = self.candidates.shape[0]
        for first in range(0, n_candidates, self.candidate_chunk_size):
            yield first, min(first + self.candidate_chunk_size, n_candidates)

    def scores(self, prepared_queries: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """Scores of the prepared queries against candidates ``first:stop``.

        Callers drop each block (``del``) before asking for the next: a block still bound to a
        name while the next is computed would double the memory of the search.
        """
        scores = prepared_queries @ self.candidates[first:stop].T
        if self.candidate_inverse_norms is not None:
            scores.mul_(self.candidate_inverse_norms[first:stop])
        return scores

    def pair_scores(self, prepared_queries: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
        """Scores of each query with one given candidate (row-wise dot product)."""
        scores = (prepared_queries * self.candidates[candidate_index]).sum(dim=1)
        if self.candidate_inverse_norms is not None:
            scores.mul_(self.candidate_inverse_norms[candidate_index])
        return scores


def resolve_device(device, *arrays) -> torch.device:
    """``device`` if given, else the device of the first tensor among ``arrays``, else the CPU."""
    if device is not None:
        return torch.device(device)
    for array in arrays:
        if isinstance(array, torch.Tensor):
            return array.device
    return torch.device("cpu")


def _checked_pair(queries, candidates, similarity: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and candidates as float32 matrices on one device, checked as every search needs.

    The similarity name, the feature counts and a non-empty candidate set are checked here,
    so every entry point (top-k, ranks, full matrix) rejects bad input with the same message.
    """
    check_similarity(similarity)
    device = resolve_device(device, queries, candidates)
    queries = as_embedding_matrix(queries, "queries", device)
    candidates = as_embedding_matrix(candidates, "candidates", device)
    _check_pair(queries, candidates)
    return queries, candidates


def topk_chunked(
    queries,
    candidates,
    k: int,
    chunk_size: int | None = None,
    *,
    candidate_chunk_size: int | None = None,
    similarity: str = "cosine",
    device: torch.device | str | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> TopK:
    """The ``k`` most similar candidates of every query, computed chunk by chunk.

    Parameters
    ----------
    queries, candidates
        Arrays or tensors of shape (n_queries, features...) and (n_candidates, features...).
    k
        How many candidates to keep per query (at most ``n_candidates``).
    chunk_size, candidate_chunk_size
        Queries and candidates per score block; by default chosen so one float32 block
        takes at most ``block_bytes``.
    similarity
        ``"cosine"`` (default) or ``"dot"``.
    device
        Where to compute (default: the device of ``queries`` if it is a tensor, else CPU).

    Returns
    -------
    TopK
        ``indices`` (int64) and ``scores`` (float32), each (n_queries, k), best first. Among
        exactly equal scores the order is whatever ``torch.topk`` returns.

    >>> import numpy as np
    >>> queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> candidates = np.array([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    >>> topk_chunked(queries, candidates, k=2, chunk_size=1).indices.tolist()
    [[0, 1], [1, 0]]
    """
    queries, candidates = _checked_pair(queries, candidates, similarity, device)
    n_queries, n_candidates = queries.shape[0], candidates.shape[0]
    if not 1 <= k <= n_candidates:
        raise MetricInputError(f"k: expected 1 <= k <= n_candidates = {n_candidates}, found {k}")
    chunk_size, candidate_chunk_size = chunk_sizes(n_candidates, chunk_size, candidate_chunk_size, block_bytes)
    blocks = _ScoreBlocks(candidates, similarity, candidate_chunk_size)

    indices = np.empty((n_queries, k), dtype=np.int64)
    scores = np.empty((n_queries, k), dtype=np.float32)
    for start in progress(range(0, n_queries, chunk_size), "top-k search", total=-(-n_queries // chunk_size)):
        stop = min(start + chunk_size, n_queries)
        prepared = blocks.prepare(queries[start:stop])
        best_scores = best_indices = None
        for first, last in blocks.ranges():
            block = blocks.scores(prepared, first, last)
            block_scores, block_indices = torch.topk(block, min(k, block.shape[1]), dim=1)
            del block
            block_indices += first
            if best_scores is None:
                best_scores, best_indices = block_scores, block_indices
            else:
                # Merge the running best with this chunk's best: the k best of both are the k best so far.
                merged_scores = torch.cat([best_scores, block_scores], dim=1)
                merged_indices = torch.cat([best_indices, block_indices], dim=1)
                best_scores, order = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
                best_indices = torch.gather(merged_indices, 1, order)
        indices[start:stop] = best_indices.cpu().numpy()
        scores[start:stop] = best_scores.cpu().numpy()
    return TopK(indices=indices, scores=scores)


def _as_index_array(values, name: str, length: int, upper: int) -> np.ndarray:
    array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if array.shape != (length,) or not np.issubdtype(array.dtype, np.integer):
        raise MetricInputError(
            f"{name}: expected {length} integer indices (one per query), found shape {array.shape} of {array.dtype}"
        )
    if length and (array.min() < 0 or array.max() >= upper):
        raise MetricInputError(f"{name}: expected indices in [0, {upper}), found {array.min()}..{array.max()}")
    return array.astype(np.int64)


def label_codes(labels, name: str, length: int) -> np.ndarray:
    """Any per-item labels (strings, integers) as int64 codes; equal labels get equal codes."""
    array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if array.shape != (length,):
        raise MetricInputError(f"{name}: expected {length} labels (one per item), found shape {array.shape}")
    return np.unique(array, return_inverse=True)[1].astype(np.int64).reshape(length)


def rank_against(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    *,
    true_index: np.ndarray | None = None,
    true_vectors: torch.Tensor | None = None,
    exclude_index: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    candidate_labels: np.ndarray | None = None,
    similarity: str = "cosine",
    chunk_size: int | None = None,
    candidate_chunk_size: int | None = None,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> np.ndarray:
    """Pessimistic 1-based ranks; the engine behind :func:`rank_of_true` and the capped ranking.

    The correct score of query ``i`` is its similarity with ``candidates[true_index[i]]``
    or, when ``true_vectors`` is given instead, with ``true_vectors[i]`` (then the correct
    item need not be among the candidates). Candidate ``exclude_index[i]`` (-1: none) is
    never counted: the correct candidate itself, or a slot the query must not see. With
    labels, candidates sharing the query's label are correct too: the rank is that of the
    best-scoring correct candidate, and correct candidates are never counted.
    """
    n_queries, n_candidates = queries.shape[0], candidates.shape[0]
    labelled = candidate_labels is not None
    # With labels a block is copied once (the best correct score) and masked: halve its budget.
    block_bytes = block_bytes // 2 if labelled else block_bytes
    chunk_size, candidate_chunk_size = chunk_sizes(n_candidates, chunk_size, candidate_chunk_size, block_bytes)
    blocks = _ScoreBlocks(candidates, similarity, candidate_chunk_size)
    device = queries.device
    candidate_labels_t = torch.as_tensor(candidate_labels, device=device) if labelled else None

    def tie_threshold(reference: torch.Tensor) -> torch.Tensor:
        return reference - tie_tolerance * reference.abs().clamp_min(1.0)

    ranks = np.empty(n_queries, dtype=np.int64)
    for start in progress(range(0, n_queries, chunk_size), "ranking", total=-(-n_queries // chunk_size)):
        stop = min(start + chunk_size, n_queries)
        rows = torch.arange(stop - start, device=device)
        prepared = blocks.prepare(queries[start:stop])
        if true_vectors is None:
            reference = blocks.pair_scores(prepared, torch.as_tensor(true_index[start:stop], device=device))
        else:
            reference = (prepared * blocks.prepare(true_vectors[start:stop])).sum(dim=1)
        excluded = None if exclude_index is None else torch.as_tensor(exclude_index[start:stop], device=device)
        chunk_labels = torch.as_tensor(query_labels[start:stop], device=device) if labelled else None

        def counted_at_or_above(first: int, block: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
            """How many countable candidates of this block score at least ``threshold``."""
            width = block.shape[1]
            if labelled:
                correct = chunk_labels[:, None] == candidate_labels_t[None, first:first + width]
                block.masked_fill_(correct, float("-inf"))
            if excluded is not None:
                local = excluded - first
                inside = (excluded >= 0) & (local >= 0) & (local < width)
                block[rows[inside], local[inside]] = float("-inf")
            # In place: a bool mask summed by torch is first widened to int64, eight times the
            # block's size in memory; 0/1 floats sum exactly up to 2**24 per row (see chunk_sizes).
            return block.ge_(threshold[:, None]).sum(dim=1).to(torch.int64)

        def best_correct(first: int, block: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
            width = block.shape[1]
            correct = chunk_labels[:, None] == candidate_labels_t[None, first:first + width]
            if excluded is not None:  # a slot the query must not see cannot be its best correct one either
                local = excluded - first
                inside = (excluded >= 0) & (local >= 0) & (local < width)
                correct[rows[inside], local[inside]] = False
            return torch.maximum(best, block.masked_fill(~correct, float("-inf")).max(dim=1).values)

        counted = torch.zeros(stop - start, dtype=torch.int64, device=device)
        if labelled and n_candidates > candidate_chunk_size:
            # The best correct score must be known before anything can be counted: two passes.
            for first, last in blocks.ranges():
                block = blocks.scores(prepared, first, last)
                reference = best_correct(first, block, reference)
                del block
            threshold = tie_threshold(reference)
            for first, last in blocks.ranges():
                block = blocks.scores(prepared, first, last)
                counted += counted_at_or_above(first, block, threshold)
                del block
        elif labelled:
            block = blocks.scores(prepared, 0, n_candidates)
            threshold = tie_threshold(best_correct(0, block, reference))
            counted += counted_at_or_above(0, block, threshold)
            del block
        else:
            threshold = tie_threshold(reference)
            for first, last in blocks.ranges():
                block = blocks.scores(prepared, first, last)
                counted += counted_at_or_above(first, block, threshold)
                del block
        ranks[start:stop] = (counted + 1).cpu().numpy()
    return ranks


def rank_of_true(
    queries,
    candidates,
    true_index,
    *,
    candidate_labels=None,
    similarity: str = "cosine",
    chunk_size: int | None = None,
    candidate_chunk_size: int | None = None,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    device: torch.device | str | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> np.ndarray:
    """Rank (1 = best) of the correct candidate of each query among all candidates.

    ``rank = 1 + #{other candidates j : score_j >= score_true}`` (ties pessimistic; see the
    module docstring for the tolerance). Top-k accuracy is ``mean(rank <= k)``.

    Parameters
    ----------
    queries, candidates
        (n_queries, features...) and (n_candidates, features...).
    true_index
        (n_queries,) index of each query's correct candidate.
    candidate_labels
        Optional (n_candidates,) stimulus identity of each candidate. Candidates with the
        same label as the correct one also count as correct (brainmagick counts a segment
        retrieved if any retrieved candidate has the correct segment's hash); the rank is
        then that of the best-scoring correct candidate among the incorrect ones.

    >>> import numpy as np
    >>> similar = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> rank_of_true(similar[:1], similar, true_index=[1]).tolist()
    [2]
    >>> rank_of_true(similar[:1], similar, true_index=[1], candidate_labels=["a", "a", "b"]).tolist()
    [1]
    """
    queries, candidates = _checked_pair(queries, candidates, similarity, device)
    true_index = _as_index_array(true_index, "true_index", queries.shape[0], candidates.shape[0])
    query_labels = codes = None
    if candidate_labels is not None:
        codes = label_codes(candidate_labels, "candidate_labels", candidates.shape[0])
        query_labels = codes[true_index]
    return rank_against(
        queries,
        candidates,
        true_index=true_index,
        exclude_index=true_index,
        query_labels=query_labels,
        candidate_labels=codes,
        similarity=similarity,
        chunk_size=chunk_size,
        candidate_chunk_size=candidate_chunk_size,
        tie_tolerance=tie_tolerance,
        block_bytes=block_bytes,
    )


def similarity_matrix(queries, candidates, *, similarity: str = "cosine", device=None) -> torch.Tensor:
    """The full (n_queries, n_candidates) float32 similarity matrix; for small sets only.

    >>> similarity_matrix(np.eye(2), np.eye(2)).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    queries, candidates = _checked_pair(queries, candidates, similarity, device)
    blocks = _ScoreBlocks(candidates, similarity, candidates.shape[0])
    return blocks.scores(blocks.prepare(queries), 0, candidates.shape[0])
