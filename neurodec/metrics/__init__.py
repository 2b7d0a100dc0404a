"""Metrics: retrieval with the published protocols, and their statistics.

Read ``docs/metrics.md`` for each metric, its recipe and the paper it matches. In short::

    from neurodec.metrics import evaluate_retrieval

    report = evaluate_retrieval(brain, targets, subjects=subjects, n_permutations=1000)
    report["brain->stimulus"]["pooled"]["200-way top-1"]      # NICE / ATM
    report["stimulus->brain"]["pooled"]["full-set top-10"]    # brainmagick

Speech segments (brainmagick's protocol, docs/speech-evaluation.md)::

    from neurodec.metrics import segment_retrieval

    result = segment_retrieval(brain, targets, segments, words=words, subjects=subjects)
    result["pooled"]["segment top-10"], result["pooled"]["word top-10"]

Lower-level pieces: :func:`topk_chunked` and :func:`rank_of_true` (chunked similarity search
that never builds the full matrix), :func:`n_way_topk` (MindEye / ATM N-way),
:func:`full_set_topk` (brainmagick), :func:`bootstrap_interval` and :func:`permutation_test`.
"""

from neurodec.metrics.retrieval import (
    BRAIN_TO_STIMULUS,
    DIRECTIONS,
    STIMULUS_TO_BRAIN,
    RetrievalScore,
    evaluate_retrieval,
    expected_n_way_hits,
    full_set_name,
    full_set_topk,
    n_way_name,
    n_way_topk,
)
from neurodec.metrics.similarity import TopK, rank_of_true, similarity_matrix, topk_chunked
from neurodec.metrics.statistics import (
    BootstrapInterval,
    PermutationResult,
    bootstrap_interval,
    permutation_test,
    permutation_tests,
)

__all__ = [
    "BRAIN_TO_STIMULUS",
    "DIRECTIONS",
    "STIMULUS_TO_BRAIN",
    "BootstrapInterval",
    "PermutationResult",
    "RetrievalScore",
    "TopK",
    "bootstrap_interval",
    "evaluate_retrieval",
    "expected_n_way_hits",
    "full_set_name",
    "full_set_topk",
    "n_way_name",
    "n_way_topk",
    "permutation_test",
    "permutation_tests",
    "rank_of_true",
    "similarity_matrix",
    "topk_chunked",
]

# Speech segment retrieval (Défossez et al. 2023); see docs/speech-evaluation.md.
from neurodec.metrics.speech import (  # noqa: E402
    SegmentRanks,
    candidate_pool,
    segment_metric_name,
    segment_ranks,
    segment_retrieval,
    summarize_over_seeds,
    word_metric_name,
)

__all__ += [
    "SegmentRanks",
    "candidate_pool",
    "segment_metric_name",
    "segment_ranks",
    "segment_retrieval",
    "summarize_over_seeds",
    "word_metric_name",
]

# Image-reconstruction metrics (MindEye / MinD-Video recipes); see docs/image-metrics.md.
from neurodec.metrics.image import (  # noqa: E402
    IMAGE_FEATURE_NETWORKS,
    FeatureNetwork,
    MetricUnavailable,
    correlation_distance,
    evaluate_reconstructions,
    format_image_metrics_table,
    load_feature_network,
    locate_feature_weights,
    pixcorr,
    random_derangement,
    ssim_mindeye,
    ssim_mindvideo,
    structural_similarity_batch,
    two_way_identification,
)

__all__ += [
    "IMAGE_FEATURE_NETWORKS",
    "FeatureNetwork",
    "MetricUnavailable",
    "correlation_distance",
    "evaluate_reconstructions",
    "format_image_metrics_table",
    "load_feature_network",
    "locate_feature_weights",
    "pixcorr",
    "random_derangement",
    "ssim_mindeye",
    "ssim_mindvideo",
    "structural_similarity_batch",
    "two_way_identification",
]
