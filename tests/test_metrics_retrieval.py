"""Retrieval metrics and statistics against hand-worked examples and plain-numpy re-implementations."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from neurodec.errors import MetricInputError
from neurodec.metrics import (
    BRAIN_TO_STIMULUS,
    STIMULUS_TO_BRAIN,
    bootstrap_interval,
    evaluate_retrieval,
    expected_n_way_hits,
    full_set_topk,
    n_way_topk,
    permutation_test,
    permutation_tests,
    rank_of_true,
    topk_chunked,
)

TIE = 1e-6

# Similarities worked by hand: row = brain (query), column = stimulus; the diagonal is correct.
HAND_SCORES = np.array(
    [
        [0.9, 0.1, 0.3, 0.2],  # true 0.9 beats all: rank 1
        [0.8, 0.5, 0.5, 0.1],  # true 0.5: 0.8 beats it, the other 0.5 ties (pessimistic): rank 3
        [0.1, 0.2, 0.3, 0.4],  # true 0.3: 0.4 beats it: rank 2
        [0.7, 0.6, 0.5, 0.4],  # true 0.4 is the lowest: rank 4
    ],
    dtype=np.float32,
)
# Columns read as queries (stimulus -> brain): column 0 -> rank 1; column 1 (0.5): 0.6 beats it -> 2;
# column 2 (0.3): 0.5, 0.5 beat it and 0.3 ties -> 4; column 3 (0.4): 0.4 ties -> 2.
HAND_RANKS_BRAIN_TO_STIMULUS = [1, 3, 2, 4]
HAND_RANKS_STIMULUS_TO_BRAIN = [1, 2, 4, 2]


def hand_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """brain = identity, targets = scores transposed: brain[i] . targets[j] = HAND_SCORES[i, j]."""
    return np.eye(4, dtype=np.float32), np.ascontiguousarray(HAND_SCORES.T)


def cosine64(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Full float64 cosine matrix, computed independently of the library."""
    queries = np.asarray(queries, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    candidates = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    return queries @ candidates.T


def brute_rank(scores_row: np.ndarray, true_column: int, rivals) -> int:
    """1 + number of rivals scoring at least the true score (same tie rule as the library)."""
    true = scores_row[true_column]
    threshold = true - TIE * max(1.0, abs(true))
    return 1 + sum(1 for column in rivals if scores_row[column] >= threshold)


def random_pair(n: int, dim: int, seed: int, signal: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((n, dim)).astype(np.float32)
    brain = (signal * targets + rng.standard_normal((n, dim))).astype(np.float32)
    return brain, targets


# ---------------------------------------------------------------- chunked similarity search


def test_hand_worked_ranks_and_topk():
    brain, targets = hand_embeddings()
    ranks = rank_of_true(brain, targets, np.arange(4), similarity="dot")
    assert ranks.tolist() == HAND_RANKS_BRAIN_TO_STIMULUS
    assert rank_of_true(targets, brain, np.arange(4), similarity="dot").tolist() == HAND_RANKS_STIMULUS_TO_BRAIN

    best = topk_chunked(brain, targets, k=2, chunk_size=3, candidate_chunk_size=3, similarity="dot")
    np.testing.assert_allclose(best.scores, [[0.9, 0.3], [0.8, 0.5], [0.4, 0.3], [0.7, 0.6]], rtol=1e-6)
    assert best.indices[0].tolist() == [0, 2]
    assert best.indices[2].tolist() == [3, 2]
    assert best.indices[3].tolist() == [0, 1]
    assert best.indices[1, 0] == 0 and best.indices[1, 1] in (1, 2)  # 1 and 2 tie at 0.5

    # Candidates 2 and 3 show the same stimulus: query 2 now finds a correct one first (0.4), and
    # query 3's best correct candidate is 0.5, beaten by 0.7 and 0.6.
    labelled = rank_of_true(brain, targets, np.arange(4), similarity="dot", candidate_labels=["x", "y", "a", "a"])
    assert labelled.tolist() == [1, 3, 1, 3]
    two_pass = rank_of_true(
        brain, targets, np.arange(4), similarity="dot", candidate_labels=["x", "y", "a", "a"], candidate_chunk_size=1
    )
    assert two_pass.tolist() == [1, 3, 1, 3]


def test_hand_worked_full_set_accuracy_both_directions():
    brain, targets = hand_embeddings()
    scores = full_set_topk(brain, targets, k=(1, 2), similarity="dot")
    assert scores["full-set top-1"][BRAIN_TO_STIMULUS].value == 0.25
    assert scores["full-set top-2"][BRAIN_TO_STIMULUS].value == 0.5
    assert scores["full-set top-1"][STIMULUS_TO_BRAIN].value == 0.25
    assert scores["full-set top-2"][STIMULUS_TO_BRAIN].value == 0.75
    assert scores["full-set top-2"][STIMULUS_TO_BRAIN].chance == 0.5


@pytest.mark.parametrize("chunk_size, candidate_chunk_size", [(1, None), (7, 13), (64, 300), (300, 1), (None, None)])
def test_chunked_equals_full_matrix(chunk_size, candidate_chunk_size):
    brain, targets = random_pair(300, 16, seed=0, signal=0.5)
    full = cosine64(brain, targets)
    expected_ranks = [brute_rank(full[i], i, (j for j in range(300) if j != i)) for i in range(300)]
    chunks = {"chunk_size": chunk_size, "candidate_chunk_size": candidate_chunk_size}
    ranks = rank_of_true(brain, targets, np.arange(300), **chunks)
    assert ranks.tolist() == expected_ranks

    best = topk_chunked(brain, targets, k=10, **chunks)
    np.testing.assert_allclose(best.scores, -np.sort(-full, axis=1)[:, :10], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, best.indices, axis=1), best.scores, atol=1e-5)
    assert all(len(set(row)) == 10 for row in best.indices.tolist())


def test_dot_and_cosine_differ_as_defined():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[1.0, 0.0], [3.0, 3.0]], dtype=np.float32)  # the long one wins on dot only
    assert topk_chunked(queries, candidates, 1).indices.tolist() == [[0]]
    assert topk_chunked(queries, candidates, 1, similarity="dot").indices.tolist() == [[1]]
    # Cosine ignores each candidate's length.
    brain, targets = random_pair(50, 8, seed=1, signal=0.3)
    scaled = targets * np.random.default_rng(2).uniform(0.1, 10, size=(50, 1)).astype(np.float32)
    index = np.arange(50)
    np.testing.assert_array_equal(rank_of_true(brain, targets, index), rank_of_true(brain, scaled, index))


def test_trailing_axes_are_flattened_and_bad_inputs_refused():
    brain, targets = random_pair(20, 12, seed=3)
    flat = rank_of_true(brain, targets, np.arange(20))
    assert rank_of_true(brain.reshape(20, 3, 4), targets.reshape(20, 3, 4), np.arange(20)).tolist() == flat.tolist()
    broken = brain.copy()
    broken[4, 2] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        rank_of_true(broken, targets, np.arange(20))
    with pytest.raises(MetricInputError, match="features"):
        rank_of_true(brain, targets[:, :5], np.arange(20))
    with pytest.raises(MetricInputError, match="true_index"):
        rank_of_true(brain, targets, np.arange(20) + 1)
    with pytest.raises(MetricInputError, match="k"):
        topk_chunked(brain, targets, k=21)


# ---------------------------------------------------------------- N-way


def brute_n_way_subset(brain, targets, n_way, ks, n_repeats, seed):
    """MindEye's loop in plain numpy: per repeat, a random subset and N-way retrieval inside it."""
    rng = np.random.default_rng(seed)
    accuracy = {(direction, k): [] for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN) for k in ks}
    for _ in range(n_repeats):
        subset = rng.choice(len(brain), size=n_way, replace=False)
        scores = cosine64(brain[subset], targets[subset])
        for direction, matrix in ((BRAIN_TO_STIMULUS, scores), (STIMULUS_TO_BRAIN, scores.T)):
            ranks = [brute_rank(matrix[a], a, (b for b in range(n_way) if b != a)) for a in range(n_way)]
            for k in ks:
                accuracy[direction, k].append(np.mean([rank <= k for rank in ranks]))
    return accuracy


def brute_n_way_per_query(brain, targets, n_way, ks, n_repeats, seed):
    """ATM's loop in plain numpy: each query with its own random distractors."""
    rng = np.random.default_rng(seed)
    n = len(brain)
    scores = cosine64(brain, targets)
    accuracy = {(direction, k): [] for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN) for k in ks}
    for _ in range(n_repeats):
        keys = rng.random((n, n - 1))
        ranks = {BRAIN_TO_STIMULUS: [], STIMULUS_TO_BRAIN: []}
        for i in range(n):
            others = [j for j in range(n) if j != i]
            distractors = [others[t] for t in np.argsort(keys[i])[: n_way - 1]]
            ranks[BRAIN_TO_STIMULUS].append(brute_rank(scores[i], i, distractors))
            ranks[STIMULUS_TO_BRAIN].append(brute_rank(scores[:, i], i, distractors))
        for direction in ranks:
            for k in ks:
                accuracy[direction, k].append(np.mean([rank <= k for rank in ranks[direction]]))
    return accuracy


@pytest.mark.parametrize(
    "protocol, brute", [("subset", brute_n_way_subset), ("per_query", brute_n_way_per_query)]
)
def test_n_way_equals_brute_force(protocol, brute):
    brain, targets = random_pair(40, 8, seed=4, signal=0.7)
    scores = n_way_topk(brain, targets, n_way=10, k=(1, 3), n_repeats=5, seed=3, protocol=protocol)
    expected = brute(brain, targets, 10, (1, 3), 5, 3)
    for (direction, k), per_repeat in expected.items():
        score = scores[f"10-way top-{k}"][direction]
        np.testing.assert_allclose(score.repeats, per_repeat, atol=1e-12)
        assert score.value == pytest.approx(np.mean(per_repeat), abs=1e-12)
        assert score.chance == k / 10
    # The task is not trivial at this signal level, so the comparison above is informative.
    assert 0.2 < scores["10-way top-1"][BRAIN_TO_STIMULUS].value < 0.95


def test_expected_n_way_hits_equals_enumeration():
    """Average over every possible distractor set, enumerated, for each rank of the true item."""
    n_items, n_way, k = 7, 4, 2
    others = list(range(n_items - 1))  # rivals are the first rank-1 of the others
    for rank in range(1, n_items + 1):
        outcomes = [sum(1 for j in draw if j < rank - 1) < k for draw in combinations(others, n_way - 1)]
        assert expected_n_way_hits([rank], n_items, n_way, k)[0] == pytest.approx(np.mean(outcomes))


def test_sampled_n_way_estimates_the_exact_expectation():
    brain, targets = random_pair(120, 16, seed=5, signal=0.4)
    score = n_way_topk(brain, targets, n_way=10, k=1, n_repeats=30, seed=0, protocol="per_query")["10-way top-1"]
    for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN):
        sd_of_mean = np.std(score[direction].repeats, ddof=1) / np.sqrt(30)
        assert abs(score[direction].value - score[direction].expected) < 4 * sd_of_mean + 1e-9


def binomial_bounds(n: int, p: float, level: float = 0.999) -> tuple[float, float]:
    low, high = stats.binom.interval(level, n, p)
    return low / n, high / n


def test_perfect_and_random_embeddings():
    _, targets = random_pair(200, 32, seed=6)
    perfect = evaluate_retrieval(targets, targets, n_ways=(2, 10, 200), n_repeats=4, n_bootstrap=0)
    for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN):
        assert set(perfect[direction]["pooled"].values()) == {1.0}

    brain, targets = random_pair(200, 32, seed=7)
    noise = evaluate_retrieval(brain, targets, n_ways=(2, 10, 50), n_repeats=30, n_bootstrap=0)
    for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN):
        for metric, value in noise[direction]["pooled"].items():
            chance = noise["chance"]["pooled"][metric]
            # MindEye's subsets hold n_way queries each: 30 x N evaluations, but never more
            # independent ones than the 200 items.
            evaluations = 200 if metric.startswith("full") else min(200, 30 * int(metric.split("-")[0]))
            low, high = binomial_bounds(evaluations, chance)
            assert low <= value <= high, (direction, metric, value, chance)
    assert noise["chance"]["pooled"]["10-way top-5"] == 0.5
    assert noise["chance"]["pooled"]["full-set top-10"] == pytest.approx(10 / 200)


def test_direction_symmetry():
    brain, targets = random_pair(60, 8, seed=8, signal=0.5)
    forward = n_way_topk(brain, targets, n_way=10, k=1, n_repeats=6, seed=2)["10-way top-1"]
    swapped = n_way_topk(targets, brain, n_way=10, k=1, n_repeats=6, seed=2)["10-way top-1"]
    assert forward[STIMULUS_TO_BRAIN].repeats == swapped[BRAIN_TO_STIMULUS].repeats
    assert forward[BRAIN_TO_STIMULUS].repeats == swapped[STIMULUS_TO_BRAIN].repeats
    full = full_set_topk(brain, targets, k=1)["full-set top-1"]
    full_swapped = full_set_topk(targets, brain, k=1)["full-set top-1"]
    np.testing.assert_array_equal(full[STIMULUS_TO_BRAIN].per_query, full_swapped[BRAIN_TO_STIMULUS].per_query)
    # Stimulus -> brain reads the columns of the brain x stimulus similarity matrix.
    columns = cosine64(brain, targets).T
    ranks = [brute_rank(columns[i], i, (j for j in range(60) if j != i)) for i in range(60)]
    np.testing.assert_array_equal(full[STIMULUS_TO_BRAIN].per_query, np.array(ranks) <= 1)


def test_per_subject_results_equal_a_manual_split():
    sizes = {"sub-01": 30, "sub-02": 45, "sub-03": 60}
    brain, targets = random_pair(sum(sizes.values()), 8, seed=9, signal=0.6)
    subjects = np.repeat(list(sizes), list(sizes.values()))
    order = np.random.default_rng(0).permutation(len(subjects))  # subjects interleaved
    brain, targets, subjects = brain[order], targets[order], subjects[order]

    n_way = n_way_topk(brain, targets, n_way=10, k=1, n_repeats=5, seed=1, subjects=subjects)["10-way top-1"]
    full = full_set_topk(brain, targets, k=3, subjects=subjects)["full-set top-3"]
    for direction in (BRAIN_TO_STIMULUS, STIMULUS_TO_BRAIN):
        for name in sizes:
            mask = subjects == name
            alone = n_way_topk(brain[mask], targets[mask], n_way=10, k=1, n_repeats=5, seed=1)["10-way top-1"]
            assert n_way[direction].per_subject[name] == alone[direction].value
            full_alone = full_set_topk(brain[mask], targets[mask], k=3)["full-set top-3"]
            assert full[direction].per_subject[name] == full_alone[direction].value
            # Per-query values stay in the caller's item order, whatever the subject order.
            np.testing.assert_array_equal(full[direction].per_query[mask], full_alone[direction].per_query)
            assert set(full[direction].query_subjects[mask]) == {name}
            assert full[direction].chance_per_subject[name] == pytest.approx(3 / sizes[name])
        # N-way: every subject gives n_repeats x n_way evaluations, so pooled = mean over subjects.
        assert n_way[direction].value == pytest.approx(np.mean(list(n_way[direction].per_subject.values())))
        # Full set: one evaluation per query, so pooled = mean weighted by subject size.
        weighted = sum(full[direction].per_subject[name] * size for name, size in sizes.items()) / sum(sizes.values())
        assert full[direction].value == pytest.approx(weighted)
        assert full[direction].n_queries == 135


def test_negatives_cap_matches_brute_force():
    n, cap, seed = 50, 9, 11
    brain, targets = random_pair(n, 8, seed=10, signal=0.8)
    scores = full_set_topk(brain, targets, k=(1, 3), max_negatives=cap, seed=seed)
    pool = np.random.default_rng(seed).permutation(n)[: cap + 1]
    full = cosine64(brain, targets)
    expected_ranks = {BRAIN_TO_STIMULUS: [], STIMULUS_TO_BRAIN: []}
    for i in range(n):
        negatives = [j for j in pool if j != i] if i in pool else list(pool[:-1])
        assert len(negatives) == cap
        expected_ranks[BRAIN_TO_STIMULUS].append(brute_rank(full[i], i, negatives))
        expected_ranks[STIMULUS_TO_BRAIN].append(brute_rank(full[:, i], i, negatives))
    for direction, ranks in expected_ranks.items():
        for k in (1, 3):
            score = scores[f"full-set top-{k}"][direction]
            np.testing.assert_array_equal(score.per_query, np.array(ranks) <= k)
            assert score.chance == pytest.approx(k / (cap + 1))
    # Uncapped, the same data is harder: 49 negatives instead of 9.
    uncapped = full_set_topk(brain, targets, k=1, max_negatives=10_000)["full-set top-1"][BRAIN_TO_STIMULUS]
    assert uncapped.value < scores["full-set top-1"][BRAIN_TO_STIMULUS].value


def test_labels_make_repeated_stimuli_count_as_correct():
    _, stimuli = random_pair(40, 16, seed=12)
    targets = np.concatenate([stimuli, stimuli])  # every stimulus shown twice
    labels = np.tile(np.arange(40), 2)
    # Without labels the twin ties with the true item and pessimistic ranking puts the true one second.
    plain = full_set_topk(targets, targets, k=1)["full-set top-1"][BRAIN_TO_STIMULUS]
    assert plain.value == 0.0
    labelled = full_set_topk(targets, targets, k=1, labels=labels)["full-set top-1"][BRAIN_TO_STIMULUS]
    assert labelled.value == 1.0
    assert labelled.chance == pytest.approx(2 / 80)  # two correct candidates among 80
    capped = full_set_topk(targets, targets, k=5, labels=labels, max_negatives=19, seed=1)["full-set top-5"]
    # Chance with m correct among 20 candidates: 1 - C(20 - m, 5) / C(20, 5), averaged over queries.
    pool = np.random.default_rng(1).permutation(80)[:20]
    chances = []
    for i in range(80):
        candidates = [j for j in pool if j != i] + [i] if i in pool else list(pool[:-1]) + [i]
        m = sum(labels[j] == labels[i] for j in candidates)
        chances.append(1 - stats.hypergeom.pmf(0, 20, m, 5))
    assert capped[BRAIN_TO_STIMULUS].chance == pytest.approx(np.mean(chances))
    assert capped[BRAIN_TO_STIMULUS].value == 1.0


def test_n_way_larger_than_the_items_is_refused():
    brain, targets = random_pair(300, 8, seed=13)
    with pytest.raises(MetricInputError, match="301-way retrieval needs at least 301 items, found 300"):
        n_way_topk(brain, targets, n_way=301, k=1)
    subjects = np.r_[np.full(250, "01"), np.full(50, "02")]
    with pytest.raises(MetricInputError, match="subject 02, found 50"):
        n_way_topk(brain, targets, n_way=100, k=1, subjects=subjects)
    with pytest.raises(MetricInputError, match="k < n_way"):
        n_way_topk(brain, targets, n_way=4, k=5)
    report = evaluate_retrieval(brain, targets, subjects=subjects, n_ways=(2, 100), n_repeats=2, n_bootstrap=0)
    assert "100-way" in report["skipped"] and "2-way top-1" in report[BRAIN_TO_STIMULUS]["pooled"]


def test_report_is_json_with_named_metrics():
    brain, targets = random_pair(120, 16, seed=14, signal=1.0)
    subjects = np.repeat(["01", "02"], 60)
    report = evaluate_retrieval(
        brain, targets, subjects=subjects, n_ways=(2, 4, 10, 50), n_repeats=5, n_bootstrap=200, n_permutations=99
    )
    decoded = json.loads(json.dumps(report))
    section = decoded[BRAIN_TO_STIMULUS]
    assert set(section["pooled"]) == {
        "2-way top-1", "4-way top-1", "10-way top-1", "10-way top-5", "50-way top-1", "50-way top-5",
        "full-set top-1", "full-set top-10",
    }
    assert set(section["per_subject"]) == {"01", "02"}
    assert decoded["chance"]["pooled"]["50-way top-5"] == pytest.approx(0.1)
    for metric, (low, high) in section["interval"].items():
        assert low <= section["pooled"][metric] + 0.02 and section["pooled"][metric] - 0.02 <= high
    assert section["p_value"]["10-way top-1"] == pytest.approx(0.01)  # strong signal: no shuffle does as well
    assert all(isinstance(value, float) for value in section["pooled"].values())


# ---------------------------------------------------------------- statistics


def test_bootstrap_interval_contains_the_observed_value_and_narrows():
    rng = np.random.default_rng(15)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(1600) < 0.3).astype(float)
    small_interval = bootstrap_interval(small, n_resamples=2000, seed=0)
    large_interval = bootstrap_interval(large, n_resamples=2000, seed=0)
    for values, interval in ((small, small_interval), (large, large_interval)):
        assert interval.low <= values.mean() <= interval.high
        assert interval.observed == values.mean()
        # The percentile interval of a mean of 0/1 values is close to the normal approximation.
        normal_width = 2 * 1.96 * np.sqrt(values.mean() * (1 - values.mean()) / len(values))
        assert interval.high - interval.low == pytest.approx(normal_width, rel=0.2)
    assert (large_interval.high - large_interval.low) < (small_interval.high - small_interval.low) / 2.5
    assert bootstrap_interval(small, n_resamples=500, seed=3) == bootstrap_interval(small, n_resamples=500, seed=3)


def test_bootstrap_strata_keep_each_subject_size():
    # Each subject constant: resampling within subjects cannot move the mean; across subjects it can.
    values = np.r_[np.ones(30), np.zeros(70)]
    strata = np.r_[np.full(30, "a"), np.full(70, "b")]
    stratified = bootstrap_interval(values, strata=strata, n_resamples=500)
    assert stratified.low == stratified.high == 0.3
    plain = bootstrap_interval(values, n_resamples=500)
    assert plain.low < 0.3 < plain.high


def test_permutation_p_values():
    brain, targets = random_pair(60, 16, seed=16, signal=3.0)
    strong = permutation_test(brain, targets, k=1, n_permutations=199, seed=0)
    assert strong.p_value == pytest.approx(1 / 200)
    assert strong.observed == full_set_topk(brain, targets, k=1)["full-set top-1"][BRAIN_TO_STIMULUS].value

    noise_brain, noise_targets = random_pair(60, 16, seed=17)
    noise = permutation_tests(
        noise_brain, noise_targets, {"10-way top-1": (10, 1), "full-set top-5": (None, 5)}, n_permutations=499, seed=0
    )
    assert noise["10-way top-1"].p_value > 0.05 and noise["full-set top-5"].p_value > 0.05
    # The N-way statistic is the exact expectation that the sampled protocol estimates.
    sampled = n_way_topk(noise_brain, noise_targets, n_way=10, k=1, n_repeats=2)["10-way top-1"][BRAIN_TO_STIMULUS]
    assert noise["10-way top-1"].observed == pytest.approx(sampled.expected)
    assert noise["10-way top-1"].null.shape == (499,)


def test_permutation_p_values_are_uniform_without_signal():
    p_values = []
    for seed in range(60):
        brain, targets = random_pair(20, 6, seed=100 + seed)
        subjects = np.repeat(["a", "b"], 10)
        result = permutation_test(brain, targets, k=2, n_way=5, subjects=subjects, n_permutations=99, seed=seed,
                                  direction=STIMULUS_TO_BRAIN)
        p_values.append(result.p_value)
    p_values = np.array(p_values)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.0 <= np.mean(p_values <= 0.1) <= 0.25


def test_capped_labelled_ranking_never_uses_the_hidden_slot():
    # Each query matches its label twin exactly, not its own target: when the twin is the pool
    # slot the query must not see, the query's best correct candidate is its own target.
    rng = np.random.default_rng(5)
    targets = rng.standard_normal((60, 12))
    labels = np.tile(np.arange(30), 2)
    twin = (np.arange(60) + 30) % 60
    brain = targets[twin]
    cap = 9
    scores = full_set_topk(brain, targets, k=(1, 3), labels=labels, max_negatives=cap, seed=2)
    pool = np.random.default_rng(2).permutation(60)[: cap + 1]
    full = cosine64(brain, targets)
    hidden_twins = 0
    for k in (1, 3):
        expected = []
        for i in range(60):
            candidates = [j for j in pool if j != i] + [i] if i in pool else list(pool[:-1]) + [i]
            hidden_twins += int(i not in pool and pool[-1] == twin[i]) if k == 1 else 0
            correct = [j for j in candidates if labels[j] == labels[i]]
            reference = max(full[i, j] for j in correct)
            rank = 1 + sum(full[i, j] >= reference - 1e-6 for j in candidates if labels[j] != labels[i])
            expected.append(rank <= k)
        np.testing.assert_array_equal(scores[f"full-set top-{k}"][BRAIN_TO_STIMULUS].per_query, expected)
    assert hidden_twins >= 1  # the case the test is about occurs
