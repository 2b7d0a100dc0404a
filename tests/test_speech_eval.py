"""Speech segment retrieval metrics (brainmagick's protocol) against a hand-worked example and a
brute-force numpy ranking, capped negatives and ties included; the speech section of the report.

The training side (a continuous MEG speech store, `neurodec evaluate` on a run of two seeds,
two processes against one) is in test_speech_train.py.
"""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from neurodec.errors import MetricInputError, ReportInputError
from neurodec.metrics import bootstrap_interval, segment_ranks, segment_retrieval, summarize_over_seeds

# ------------------------------------------------------------------ hand-worked example
# Four segments whose targets are the unit vectors of (2 features x 2 times); words the, cat, the, dog.
HAND_TARGETS = np.eye(4, dtype=np.float32).reshape(4, 2, 2)
HAND_WORDS = ["the", "cat", "the", "dog"]
HAND_BRAIN = np.array([
    [0.9, 0.5, 0.2, 0.0],   # 01 heard 0: true best -> segment rank 1, word rank 1
    [0.3, 0.8, 0.5, 0.1],   # 01 heard 2: segment 1 beats it -> rank 2; "the" best 0.5 < 0.8 ("cat") -> word rank 2
    [0.6, 0.6, 0.6, 0.6],   # 01 heard 3: four-way tie -> pessimistic rank 4 for both
    [0.7, 0.2, 0.1, 0.0],   # 02 heard 1: segment 0 beats it -> rank 2; "cat" only itself -> word rank 2
    [0.1, 0.2, 0.9, 0.3],   # 02 heard 0: last -> rank 4; but segment 2 also starts with "the" -> word rank 1
], dtype=np.float32).reshape(5, 2, 2)
HAND_SEGMENTS = np.array([0, 2, 3, 1, 0])
HAND_SUBJECTS = ["01", "01", "01", "02", "02"]


def test_hand_worked_example():
    ranks = segment_ranks(HAND_BRAIN, HAND_TARGETS, HAND_SEGMENTS, words=HAND_WORDS)
    assert ranks.segment.tolist() == [1, 2, 4, 2, 4]
    assert ranks.word.tolist() == [1, 2, 4, 2, 1]
    assert ranks.same_word.tolist() == [2, 2, 1, 1, 2]
    assert ranks.n_candidates == 4 and not ranks.capped

    result = segment_retrieval(HAND_BRAIN, HAND_TARGETS, HAND_SEGMENTS, words=HAND_WORDS, subjects=HAND_SUBJECTS,
                               top_ks=(1, 2), word_top_ks=(1, 2), n_bootstrap=0)
    assert result["metrics"] == ["segment top-1", "segment top-2", "word top-1", "word top-2"]
    assert result["pooled"] == pytest.approx({"segment top-1": 1 / 5, "segment top-2": 3 / 5,
                                              "word top-1": 2 / 5, "word top-2": 4 / 5})
    assert result["per_subject"]["01"] == pytest.approx({"segment top-1": 1 / 3, "segment top-2": 2 / 3,
                                                         "word top-1": 1 / 3, "word top-2": 2 / 3})
    assert result["per_subject"]["02"] == pytest.approx({"segment top-1": 0.0, "segment top-2": 1 / 2,
                                                         "word top-1": 1 / 2, "word top-2": 1.0})
    assert result["subject_mean"]["segment top-2"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result["subject_sd"]["segment top-2"] == pytest.approx((2 / 3 - 1 / 2) / np.sqrt(2))
    # Chance: segment k / 4; word 1 - C(4 - c, k) / C(4, k) with c = 2 for "the", 1 for "cat" and "dog":
    # top-1 0.5 and 0.25, top-2 5/6 and 1/2; queries' words the, the, dog, cat, the.
    chance = result["chance"]
    assert chance["pooled"] == pytest.approx({"segment top-1": 0.25, "segment top-2": 0.5,
                                              "word top-1": (3 * 0.5 + 2 * 0.25) / 5,
                                              "word top-2": (3 * 5 / 6 + 2 * 0.5) / 5})
    assert chance["per_subject"]["02"]["word top-1"] == pytest.approx((0.25 + 0.5) / 2)
    assert result["n_candidates"] == result["n_segments"] == 4 and result["n_queries"] == {"01": 3, "02": 2}
    json.dumps(result)


# ------------------------------------------------------------------- brute force
def brute_force(brain, targets, segments, words, pool):
    """Ranks by the documented rule, in float64 numpy: a query meets the pool if its segment is in
    it, else the pool without its last segment plus its own; score = prediction . normalised target."""
    brain = brain.reshape(len(brain), -1).astype(np.float64)
    targets = targets.reshape(len(targets), -1).astype(np.float64)
    unit = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    words = np.asarray(words)
    segment_rank, word_rank, same_word = [], [], []
    for query, true in zip(brain, segments):
        seen = list(pool) if true in pool else list(pool[:-1]) + [true]
        scores = unit[seen] @ query
        true_score = scores[seen.index(true)]
        tolerance = 1e-6 * max(1.0, abs(true_score))
        others = np.ones(len(seen), bool)
        others[seen.index(true)] = False
        segment_rank.append(1 + int(np.sum(scores[others] >= true_score - tolerance)))
        correct = words[seen] == words[true]
        best = scores[correct].max()
        word_rank.append(1 + int(np.sum(scores[~correct] >= best - 1e-6 * max(1.0, abs(best)))))
        same_word.append(int(correct.sum()))
    return np.array(segment_rank), np.array(word_rank), np.array(same_word)


@pytest.fixture(scope="module")
def speech_like():
    """40 segments of 6 features x 10 times, 5 words, two identical targets (exact ties), three
    subjects of 30 queries each (some segments heard by several subjects, some twice)."""
    rng = np.random.default_rng(4)
    targets = rng.standard_normal((40, 6, 10)).astype(np.float32)
    targets[7] = targets[6]  # two segments with the same target: a query of either ties with the other
    words = rng.choice(["the", "of", "and", "to", "a"], size=40)
    segments = np.concatenate([rng.choice(40, 30, replace=False), rng.choice(40, 30), np.arange(6, 36)])
    brain = (0.6 * targets[segments] + rng.standard_normal((90, 6, 10))).astype(np.float32)
    brain[-1] = 0.0  # a zero prediction ties with every candidate
    subjects = np.repeat(["01", "02", "03"], 30)
    return brain, targets, segments, words, subjects


@pytest.mark.parametrize(("max_negatives", "seed"), [(10_000, 0), (40, 0), (15, 0), (15, 3), (2, 1)])
def test_ranks_equal_a_brute_force_ranking(speech_like, max_negatives, seed):
    brain, targets, segments, words, _ = speech_like
    pool = np.arange(40) if max_negatives >= 40 else np.random.default_rng(seed).permutation(40)[:max_negatives]
    expected_segment, expected_word, expected_same = brute_force(brain, targets, segments, words, pool)
    ranks = segment_ranks(brain, targets, segments, words=words, max_negatives=max_negatives, seed=seed)
    np.testing.assert_array_equal(ranks.pool, pool)
    np.testing.assert_array_equal(ranks.segment, expected_segment)
    np.testing.assert_array_equal(ranks.word, expected_word)
    np.testing.assert_array_equal(ranks.same_word, expected_same)
    assert ranks.n_candidates == len(pool) and ranks.capped == (len(pool) < 40)
    if len(pool) < 40:
        assert (~ranks.in_pool).any() and ranks.in_pool.any()  # both kinds of query are exercised
    # The ties: queries of segments 6 and 7 count the other as a rival; the zero prediction is last.
    assert ranks.segment[-1] == len(pool) and ranks.word[-1] == len(pool) - expected_same[-1] + 1


def test_small_blocks_give_the_same_ranks(speech_like):
    brain, targets, segments, words, _ = speech_like
    default = segment_ranks(brain, targets, segments, words=words, max_negatives=15, seed=3)
    # 3 queries' predictions per chunk and candidate blocks of a few segments: every chunked path.
    tiny = segment_ranks(brain, targets, segments, words=words, max_negatives=15, seed=3, block_bytes=4 * 60 * 3)
    np.testing.assert_array_equal(tiny.segment, default.segment)
    np.testing.assert_array_equal(tiny.word, default.word)


def test_values_chance_and_intervals_against_their_definitions(speech_like):
    brain, targets, segments, words, subjects = speech_like
    pool = np.random.default_rng(3).permutation(40)[:15]
    segment_rank, word_rank, same_word = brute_force(brain, targets, segments, words, pool)
    result = segment_retrieval(brain, targets, segments, words=words, subjects=subjects, max_negatives=15, seed=3,
                               top_ks=(1, 10), word_top_ks=(1, 10), n_bootstrap=200)
    assert result["capped"] and result["n_candidates"] == 15 and result["n_segments"] == 40
    for k in (1, 10):
        hits = segment_rank <= k
        assert result["pooled"][f"segment top-{k}"] == pytest.approx(hits.mean())
        assert result["chance"]["pooled"][f"segment top-{k}"] == pytest.approx(k / 15)
        word_hits = word_rank <= k
        assert result["pooled"][f"word top-{k}"] == pytest.approx(word_hits.mean())
        # Word chance by counting draws: 1 - C(15 - c, k) / C(15, k), averaged over queries.
        word_chance = [1 - comb(15 - c, k) / comb(15, k) for c in same_word]
        assert result["chance"]["pooled"][f"word top-{k}"] == pytest.approx(np.mean(word_chance))
        for subject in ("01", "02", "03"):
            rows = subjects == subject
            assert result["per_subject"][subject][f"word top-{k}"] == pytest.approx(word_hits[rows].mean())
            assert result["chance"]["per_subject"][subject][f"word top-{k}"] == pytest.approx(
                np.mean(np.asarray(word_chance)[rows]))
        low, high = result["interval"][f"segment top-{k}"]
        expected = bootstrap_interval(hits.astype(float), n_resamples=200, seed=3, strata=subjects)
        assert (low, high) == pytest.approx((expected.low, expected.high))
        assert low <= hits.mean() <= high
    assert result["pooled"]["segment top-1"] > 3 * result["chance"]["pooled"]["segment top-1"]  # a real signal


def test_seed_summary_and_bad_input():
    runs = {"seed-0": {"pooled": {"segment top-10": 0.5, "word top-10": 0.6},
                       "chance": {"pooled": {"segment top-10": 0.1, "word top-10": 0.3}}},
            "seed-1": {"pooled": {"segment top-10": 0.7, "word top-10": 0.6},
                       "chance": {"pooled": {"segment top-10": 0.1, "word top-10": 0.3}}},
            "seed-2": {"pooled": {"segment top-10": 0.9, "word top-10": 0.9},
                       "chance": {"pooled": {"segment top-10": 0.1, "word top-10": 0.3}}}}
    summary = summarize_over_seeds(runs)
    assert summary["n_seeds"] == 3 and summary["runs"] == ["seed-0", "seed-1", "seed-2"]
    assert summary["mean"]["segment top-10"] == pytest.approx(0.7)
    assert summary["sd"]["segment top-10"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert summary["sd"]["word top-10"] == pytest.approx(np.std([0.6, 0.6, 0.9], ddof=1))

    with pytest.raises(MetricInputError, match=r"segments: expected 5 integer rows"):
        segment_ranks(HAND_BRAIN, HAND_TARGETS, [0, 1, 2])
    with pytest.raises(MetricInputError, match=r"segments: expected rows in \[0, 4\)"):
        segment_ranks(HAND_BRAIN, HAND_TARGETS, [0, 1, 2, 3, 4])
    with pytest.raises(MetricInputError, match=r"expected the same number of values .* found 4 and 6"):
        segment_ranks(HAND_BRAIN, np.zeros((4, 6)), HAND_SEGMENTS)
    with pytest.raises(MetricInputError, match=r"max_negatives: expected at least 2"):
        segment_ranks(HAND_BRAIN, HAND_TARGETS, HAND_SEGMENTS, max_negatives=1)
    with pytest.raises(MetricInputError, match=r"words: expected 4 labels"):
        segment_ranks(HAND_BRAIN, HAND_TARGETS, HAND_SEGMENTS, words=["a", "b"])


# -------------------------------------------------------------------- report
def speech_results():
    from neurodec.metrics import evaluate_retrieval

    flat_brain, flat_targets = HAND_BRAIN.reshape(5, -1), HAND_TARGETS[HAND_SEGMENTS].reshape(5, -1)
    run = segment_retrieval(HAND_BRAIN, HAND_TARGETS, HAND_SEGMENTS, words=HAND_WORDS, subjects=HAND_SUBJECTS,
                            top_ks=(1, 2), word_top_ks=(2,), n_bootstrap=50)
    other = segment_retrieval(HAND_BRAIN[::-1].copy(), HAND_TARGETS, HAND_SEGMENTS, words=HAND_WORDS,
                              subjects=HAND_SUBJECTS, top_ks=(1, 2), word_top_ks=(2,), n_bootstrap=50)
    retrieval = evaluate_retrieval(flat_brain, flat_targets, subjects=HAND_SUBJECTS, n_ways=(2,), n_repeats=2,
                                   n_bootstrap=0)
    return {
        "meta": {"store": "speech.zarr", "config": {}, "target_space": {"name": "mel", "pretrained": True}},
        "retrieval": {"meg / brainmagick": {"modality": "meg", "model": "brainmagick", "metrics": retrieval}},
        "speech": {
            "meg / brainmagick": {"modality": "meg", "model": "brainmagick",
                                  "over_seeds": summarize_over_seeds({"seed-0": run, "seed-1": other})},
            "meg / brainmagick (seed-0)": {"modality": "meg", "model": "brainmagick", "seed": "seed-0",
                                           "metrics": run},
            "meg / ridge": {"modality": "meg", "kind": "ridge", "metrics": other},
        },
    }


def test_report_speech_section_holds_the_numbers(tmp_path):
    from neurodec.report import format_speech_summary, write_report

    results = speech_results()
    paths = write_report(tmp_path, results, title="speech", figures=False)
    saved = json.loads(paths.json.read_text())
    run = saved["speech"]["meg / brainmagick (seed-0)"]["metrics"]
    assert run["pooled"]["segment top-2"] == pytest.approx(3 / 5)
    markdown = paths.markdown.read_text()
    assert "## Speech segment retrieval" in markdown
    assert "each query ranked against all 4 test segments" in markdown
    # The run's row: 5 queries, 4 of 4 candidates, segment top-1 20.00 with chance 25.00.
    row = next(line for line in markdown.splitlines() if line.startswith("| meg / brainmagick (seed-0) |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:5] == ["meg / brainmagick (seed-0)", "brainmagick", "5", "4 of 4", "20.00"]
    assert cells[6] == "25.00"
    # The mean ± sd over the two seeds (pooled values 0.2 and the reversed predictions').
    seeds = saved["speech"]["meg / brainmagick"]["over_seeds"]
    values = seeds["values"]["segment top-1"]
    expected = f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"
    seeds_row = next(line for line in markdown.splitlines()
                     if line.startswith("| meg / brainmagick | brainmagick | 2 |"))
    assert expected in seeds_row
    assert "| 02 | 2 |" in markdown  # per-subject table: subject 02 with 2 queries
    assert "Speech segment retrieval" in paths.html.read_text()
    summary = format_speech_summary(saved)
    assert expected in summary and "2 seeds" in summary and "seed-0" in summary


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["meg / ridge"].pop("kind"), r"expected 'model' \(an encoder\) or 'kind'"),
    (lambda s: s["meg / ridge"]["metrics"].pop("n_candidates"), r"missing key 'n_candidates'"),
    (lambda s: s["meg / ridge"].update(over_seeds={}), r"exactly one of 'metrics'"),
    (lambda s: s["meg / ridge"]["metrics"]["pooled"].update({"segment top-1": "high"}),
     r"\['pooled'\]\['segment top-1'\]: expected a number, found 'high'"),
])
def test_bad_speech_sections_are_named(tmp_path, change, message):
    from neurodec.report import write_report

    results = speech_results()
    change(results["speech"])
    with pytest.raises(ReportInputError, match=message):
        write_report(tmp_path, results, title="speech", figures=False)
    assert not (tmp_path / "report.json").exists()


def test_word_level_ignores_case_and_full_stops_as_brainmagicks_word_hash():
    from neurodec.metrics.speech import segment_ranks

    targets = np.eye(3, dtype=np.float32)
    # The query heard segment 0 ("The"); segment 1 ("the.") scores best, segment 2 ("cat") second.
    ranks = segment_ranks(np.array([[0.1, 1.0, 0.5]]), targets, [0], words=["The", "the.", "cat"])
    assert ranks.segment.tolist() == [3]
    assert ranks.word.tolist() == [1] and ranks.same_word.tolist() == [2]


def test_ranks_of_chunks_summarise_to_the_numbers_of_one_call(speech_like):
    from neurodec.metrics.speech import SegmentRanks, summarize_segment_ranks

    brain, targets, segments, words, subjects = speech_like
    options = dict(max_negatives=15, seed=3)
    expected = segment_retrieval(brain, targets, segments, words=words, subjects=subjects, n_bootstrap=200, **options)
    # Chunks of 7 queries (uneven, some queries outside the capped pool in each): one pool for all.
    parts = [segment_ranks(brain[start:start + 7], targets, segments[start:start + 7], words=words, **options)
             for start in range(0, len(brain), 7)]
    ranks = SegmentRanks.concatenate(parts)
    whole = segment_ranks(brain, targets, segments, words=words, **options)
    for name in ("segment", "word", "same_word", "in_pool"):
        np.testing.assert_array_equal(getattr(ranks, name), getattr(whole, name))
    assert summarize_segment_ranks(ranks, subjects=subjects, n_bootstrap=200, **options) == expected
    other_pool = segment_ranks(brain[:5], targets, segments[:5], words=words, max_negatives=15, seed=4)
    with pytest.raises(MetricInputError, match="same candidates"):
        SegmentRanks.concatenate([parts[0], other_pool])
