"""Span scoring for the extractive reader: pure tensor functions, shared by inference and training.

As in DPR's reader, spans from all k passages compete in one softmax: a passage's span is scored
``start[p, s] + end[p, e]`` and normalised against every valid span of every passage, instead of taking k
independent argmaxes whose scores are not comparable across passages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpanScore:
    passage: int  # index into the passages read
    start: int  # token index (inclusive)
    end: int  # token index (inclusive)
    score: float  # start + end logit
    prob: float  # under the joint softmax over all valid spans of all passages


def span_scores(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_len: int) -> torch.Tensor:
    """All span scores, -inf where invalid.

    start, end: [P, L] logits; context: [P, L] bool (True on passage tokens); returns [P, L, L] where
    [p, s, e] = start[p, s] + end[p, e] if s <= e < s + max_len and both are context tokens.
    """
    L = start.shape[1]
    scores = start.unsqueeze(2) + end.unsqueeze(1)  # [P, L, L]
    idx = torch.arange(L, device=start.device)
    band = (idx.unsqueeze(0) >= idx.unsqueeze(1)) & (idx.unsqueeze(0) < idx.unsqueeze(1) + max_len)  # [L, L]
    valid = band.unsqueeze(0) & context.unsqueeze(2) & context.unsqueeze(1)  # [P, L, L]
    return scores.masked_fill(~valid, float("-inf"))


def best_spans(
    start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_len: int, top_n: int = 1
) -> list[SpanScore]:
    """The ``top_n`` best spans over all passages jointly, with their joint-softmax probabilities."""
    scores = span_scores(start.float(), end.float(), context, max_len)  # [P, L, L]
    flat = scores.reshape(-1)  # [P*L*L]
    finite = torch.isfinite(flat)
    if not bool(finite.any()):
        return []
    log_z = torch.logsumexp(flat[finite], dim=0)
    n = min(top_n, int(finite.sum()))
    values, positions = flat.topk(n)
    L = start.shape[1]
    out = []
    for v, pos in zip(values.tolist(), positions.tolist(), strict=True):
        p, rest = divmod(pos, L * L)
        s, e = divmod(rest, L)
        out.append(SpanScore(p, s, e, v, float(torch.exp(torch.tensor(v) - log_z))))
    return out


def best_spans_naive(start, end, context, max_len: int) -> SpanScore | None:
    """Reference implementation with plain loops (for tests): the single best span over all passages."""
    best, total = None, []
    P, L = start.shape
    for p in range(P):
        for s in range(L):
            for e in range(s, min(L, s + max_len)):
                if context[p, s] and context[p, e]:
                    score = float(start[p, s] + end[p, e])
                    total.append(score)
                    if best is None or score > best[3]:
                        best = (p, s, e, score)
    if best is None:
        return None
    log_z = float(torch.logsumexp(torch.tensor(total), dim=0))
    return SpanScore(best[0], best[1], best[2], best[3], float(torch.exp(torch.tensor(best[3] - log_z))))


def joint_span_loss(
    start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, gold_start: torch.Tensor, gold_end: torch.Tensor
) -> torch.Tensor:
    """Marginal negative log-likelihood of the gold spans for one question read with P passages.

    start, end: [P, L] logits; context: [P, L] bool; gold_start, gold_end: [P, L] bool marking the start / end
    tokens of every occurrence of a gold answer. Starts and ends are each normalised over all context tokens of
    all passages (DPR reader), and the loss marginalises over all gold occurrences. A question with no gold
    token in any passage contributes 0 (it carries no span signal).
    """
    neg = torch.finfo(start.dtype).min
    log_p_start = torch.log_softmax(start.masked_fill(~context, neg).reshape(-1), dim=0)  # [P*L]
    log_p_end = torch.log_softmax(end.masked_fill(~context, neg).reshape(-1), dim=0)  # [P*L]
    gs, ge = gold_start.reshape(-1) & context.reshape(-1), gold_end.reshape(-1) & context.reshape(-1)  # [P*L]
    if not bool(gs.any()) or not bool(ge.any()):
        return start.sum() * 0.0
    return -(torch.logsumexp(log_p_start[gs], 0) + torch.logsumexp(log_p_end[ge], 0))
