"""Retrieval metrics on hand-made rankings."""

import pytest

from cora.evaluation.retrieval import RankedResult, answer_recall_at_k, mrr, recall_at_k

RESULTS = [
    RankedResult("de", ["g2", "g1", "g3"], frozenset({"g1"}), ["x", "has ANS", "y"], ["ANS"]),
    RankedResult("de", ["g1", "g2"], frozenset({"g1"}), ["ANS here", "z"], ["ANS"]),
    RankedResult("ja", ["g5", "g6"], frozenset({"g9"}), ["a", "b"], ["none"]),
]


def test_recall_mrr_and_answer_recall():
    r = recall_at_k(RESULTS, [1, 2])
    assert r["de"] == {"R@1": 0.5, "R@2": 1.0} and r["ja"] == {"R@1": 0.0, "R@2": 0.0}
    assert r["macro"] == {"R@1": 0.25, "R@2": 0.5}
    m = mrr(RESULTS)
    assert m["de"]["MRR"] == pytest.approx(0.75) and m["ja"]["MRR"] == 0.0 and m["macro"]["MRR"] == 0.375
    a = answer_recall_at_k(RESULTS, [1, 3])
    assert a["de"] == {"AR@1": 0.5, "AR@3": 1.0} and a["ja"] == {"AR@1": 0.0, "AR@3": 0.0}
