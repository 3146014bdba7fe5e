"""Retrieval and zero-shot evaluation: numpy metrics, exact chunked top-k, embedding helpers."""

from malign.evaluation.metrics import (
    METRIC_KEYS,
    ground_truth_ranks,
    metric_keys,
    retrieval_metrics,
    retrieval_metrics_from_similarity,
)
from malign.evaluation.retrieval import brute_force_top_k, plan_search, top_k_search

__all__ = [
    "METRIC_KEYS",
    "brute_force_top_k",
    "ground_truth_ranks",
    "metric_keys",
    "plan_search",
    "retrieval_metrics",
    "retrieval_metrics_from_similarity",
    "top_k_search",
]
