"""Retrieval metrics for our own benchmarks: pure functions over ranked lists, per language and macro."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RankedResult:
    """One question's ranking: the groups (and texts, for answer recall) of its hits, best first."""

    lang: str
    ranked_groups: Sequence[str]
    gold_groups: frozenset[str]
    ranked_texts: Sequence[str] = ()
    answers: Sequence[str] = ()


def first_relevant_rank(ranked: Sequence[str], gold: Iterable[str]) -> int | None:
    gold = set(gold)
    return next((i for i, g in enumerate(ranked, 1) if g in gold), None)


def recall_at_k(results: Sequence[RankedResult], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Recall@k of the gold group (any language version of the gold passage counts), per language and macro."""
    return _per_language(results, lambda r: {f"R@{k}": _hit(first_relevant_rank(r.ranked_groups, r.gold_groups), k)
                                             for k in ks})


def answer_recall_at_k(results: Sequence[RankedResult], ks: Sequence[int],
                       match: Callable[[str, Sequence[str]], bool] | None = None) -> dict[str, dict[str, float]]:
    """Recall@k of answer-containing passages (an answer string occurs in one of the top k texts). ``match(text,
    answers)`` decides what "occurs" means: default the answer as written (XOR-Retrieve's rule);
    :func:`cora.evaluation.text.contains_answer` compares them normalised (case, punctuation)."""
    if match is None:
        def match(t: str, answers: Sequence[str]) -> bool:
            return any(a and a in t for a in answers)

    def one(r: RankedResult) -> dict[str, float]:
        first = next((i for i, t in enumerate(r.ranked_texts, 1) if match(t, r.answers)), None)
        return {f"AR@{k}": _hit(first, k) for k in ks}

    return _per_language(results, one)


def mrr(results: Sequence[RankedResult]) -> dict[str, dict[str, float]]:
    """Mean reciprocal rank of the first gold-group hit (0 when none is retrieved)."""
    return _per_language(results, lambda r: {"MRR": 1.0 / rank if (rank := first_relevant_rank(
        r.ranked_groups, r.gold_groups)) else 0.0})


def _hit(rank: int | None, k: int) -> float:
    return float(rank is not None and rank <= k)


def _per_language(results, fn) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for r in results:
        values = fn(r)
        slot = sums.setdefault(r.lang, dict.fromkeys(values, 0.0))
        for key, v in values.items():
            slot[key] += v
        counts[r.lang] = counts.get(r.lang, 0) + 1
    table = {lang: {k: v / counts[lang] for k, v in s.items()} for lang, s in sorted(sums.items())}
    if table:
        keys = next(iter(table.values())).keys()
        table["macro"] = {k: sum(t[k] for t in table.values()) / len(table) for k in keys}
    return table
