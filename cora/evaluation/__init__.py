"""Evaluators: XOR-TyDi (official and fixed modes), MKQA (official rules), retrieval metrics, reports."""

from cora.evaluation.mkqa import best_threshold_metrics, convert_to_xor, xor_format_metrics
from cora.evaluation.retrieval import RankedResult, answer_recall_at_k, mrr, recall_at_k
from cora.evaluation.xor import evaluate_xor_full, xor_retrieve_recall

__all__ = ["evaluate_xor_full", "xor_retrieve_recall", "best_threshold_metrics", "xor_format_metrics",
           "convert_to_xor", "RankedResult", "recall_at_k", "answer_recall_at_k", "mrr"]
