"""BM25 over a datastore with language-aware tokenisation (scoring by the ``bm25s`` library), and rank fusion.

Tokens: lowercased word characters for space-delimited scripts; overlapping character bigrams for scripts
written without spaces (ja, zh, th, km, lo, my, bo), the standard segmenter-free choice for CJK/Thai retrieval.
BM25 is the lexical baseline of every retrieval table and a hard-negative miner; it cannot match a question to a
passage in another script, which is the point of comparing it with the dense retriever.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cora.datastore import Datastore
from cora.languages import NO_SPACE_LANGS, base_code

_WORD = re.compile(r"\w+", re.UNICODE)


def bm25_tokens(text: str, lang: str) -> list[str]:
    text = text.lower()
    if base_code(lang) in NO_SPACE_LANGS:
        chars = [c for c in text if c.isalnum()]
        return [a + b for a, b in zip(chars, chars[1:], strict=False)] or chars
    return _WORD.findall(text)


class BM25Index:
    """Okapi BM25 (k1=1.5, b=0.75, bm25s defaults) over every passage of a datastore; ids are datastore rows."""

    def __init__(self, datastore: Datastore, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.datastore = datastore
        corpus = []
        for batch in datastore.iter_batches(10_000):
            corpus += [bm25_tokens(f"{title} {text}", lang)
                       for title, text, lang in zip(batch["title"], batch["text"], batch["lang"], strict=True)]
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(corpus, show_progress=False)

    def search(self, questions: Sequence[str], langs: Sequence[str], k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows [Q, k'] (k' = min(k, datastore size)), best first."""
        k = min(k, len(self.datastore))
        tokens = [bm25_tokens(q, lang) or ["<empty>"] for q, lang in zip(questions, langs, strict=True)]
        rows, scores = self.model.retrieve(tokens, k=k, show_progress=False)
        return scores, rows


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60, top: int | None = None) -> list[int]:
    """Fuse rankings of the same items: score(d) = sum over rankings of 1 / (k + rank of d), rank from 1.

    Ties keep the order in which items first appear (the first ranking wins), so the result is deterministic.
    """
    return [item for item, _ in reciprocal_rank_fusion_scores(rankings, k, top)]


def reciprocal_rank_fusion_scores(rankings: Sequence[Sequence[int]], k: int = 60,
                                  top: int | None = None) -> list[tuple[int, float]]:
    """:func:`reciprocal_rank_fusion` with the fused scores: ``(item, score)``, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[int(item)] = scores.get(int(item), 0.0) + 1.0 / (k + rank)
    fused = sorted(scores.items(), key=lambda kv: -kv[1])  # sorted is stable: first-seen order breaks ties
    return fused[:top] if top else fused
