"""Evaluation: retrieval metrics, exact memory-bounded top-k, zero-shot classification.

- :mod:`~malign.evaluation.metrics`: numpy recall at K (both directions, any number of
  captions per image) and mR, with deterministic ties.
- :mod:`~malign.evaluation.retrieval`: exact top-k search in blocks within a memory budget
  (numpy BLAS or TensorFlow).
- :mod:`~malign.evaluation.embedding`: embedding images and captions with a model, in batches.
- :mod:`~malign.evaluation.evaluate`: per-language, pooled and averaged retrieval reports.
- :mod:`~malign.evaluation.zero_shot`: class names x prompt templates per language.
- :mod:`~malign.evaluation.chance`: the chance level of each recall and accuracy, exactly.
- :mod:`~malign.evaluation.report`: ``metrics.json``, Markdown tables, PNG charts.
- :mod:`~malign.evaluation.callback`: :class:`RetrievalEvaluation` for ``fit``.
- ``malign eval`` / ``malign eval zero-shot``: :mod:`~malign.evaluation.commands`.

Example:
    >>> import numpy as np
    >>> from malign.evaluation import retrieval_metrics
    >>> retrieval_metrics(np.eye(3), np.eye(3), [0, 1, 2])["mean_recall"]
    100.0
"""

from malign.evaluation.callback import RetrievalEvaluation
from malign.evaluation.embedding import embed_images, embed_texts
from malign.evaluation.evaluate import evaluate_embeddings, evaluate_retrieval
from malign.evaluation.metrics import (
    METRIC_KEYS,
    TIE_RULE,
    ground_truth_ranks,
    metric_keys,
    retrieval_metrics,
    retrieval_metrics_from_similarity,
)
from malign.evaluation.report import write_retrieval_report, write_zero_shot_report
from malign.evaluation.retrieval import brute_force_top_k, plan_search, top_k_search
from malign.evaluation.zero_shot import (
    DEFAULT_TEMPLATES,
    build_classifier,
    ensemble_prompts,
    evaluate_zero_shot,
    zero_shot_accuracy,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "METRIC_KEYS",
    "TIE_RULE",
    "RetrievalEvaluation",
    "brute_force_top_k",
    "build_classifier",
    "embed_images",
    "embed_texts",
    "ensemble_prompts",
    "evaluate_embeddings",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "ground_truth_ranks",
    "metric_keys",
    "plan_search",
    "retrieval_metrics",
    "retrieval_metrics_from_similarity",
    "top_k_search",
    "write_retrieval_report",
    "write_zero_shot_report",
    "zero_shot_accuracy",
]
