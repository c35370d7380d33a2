"""Training losses: small pure functions with the shape of every tensor written beside it."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, positive_index: torch.Tensor,
                     temperature: float = 0.05) -> torch.Tensor:
    """DPR loss over in-batch and hard negatives.

    q: [B, D] question vectors; p: [N, D] every passage of the (global) batch - each question's positive, its
    hard negatives and everyone else's, which serve as in-batch negatives; positive_index: [B] the row of p that
    is question i's positive. Returns the mean negative log-likelihood of the positives under a softmax over all
    N passages, with scores = q . p / temperature.
    """
    scores = q @ p.T / temperature  # [B, N]
    return F.cross_entropy(scores, positive_index)  # []


def contrastive_loss_naive(q, p, positive_index, temperature: float = 0.05) -> torch.Tensor:
    """Per-question loop of the same loss (reference for tests)."""
    losses = []
    for i in range(q.shape[0]):
        scores = torch.stack([q[i] @ p[j] / temperature for j in range(p.shape[0])])  # [N]
        losses.append(-(scores[positive_index[i]] - torch.logsumexp(scores, 0)))
    return torch.stack(losses).mean()


def multi_positive_loss(q: torch.Tensor, p: torch.Tensor, positive: torch.Tensor, candidate: torch.Tensor,
                        temperature: float = 0.05) -> torch.Tensor:
    """Contrastive loss with several positives per question and a candidate set per question.

    q: [B, D] question vectors; p: [N, D] passage vectors (e.g. a whole cached training datastore);
    positive: [B, N] bool, the passages that answer question i (e.g. every language version of its gold
    paragraph); candidate: [B, N] bool, the passages question i is ranked against (all of them, or only those in
    one language). Every row needs a positive among its candidates. Returns the mean over questions of
    -log(sum of exp(score) over positive candidates / sum of exp(score) over candidates), score = q . p / t.
    """
    scores = q @ p.T / temperature  # [B, N]
    neg = torch.finfo(scores.dtype).min
    log_z = torch.logsumexp(scores.masked_fill(~candidate, neg), dim=1)  # [B]
    log_pos = torch.logsumexp(scores.masked_fill(~(positive & candidate), neg), dim=1)  # [B]
    return (log_z - log_pos).mean()  # []


def multi_positive_loss_naive(q, p, positive, candidate, temperature: float = 0.05) -> torch.Tensor:
    """Per-question loop of :func:`multi_positive_loss` (reference for tests)."""
    losses = []
    for i in range(q.shape[0]):
        cands = [j for j in range(p.shape[0]) if candidate[i, j]]
        scores = torch.stack([q[i] @ p[j] / temperature for j in cands])  # [C]
        pos = torch.stack([scores[c] for c, j in enumerate(cands) if positive[i, j]])  # [P]
        losses.append(torch.logsumexp(scores, 0) - torch.logsumexp(pos, 0))
    return torch.stack(losses).mean()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean squared distance between student and (fixed) teacher vectors, divided by 2 * temperature.

    student: [B, D] (e.g. a question in Thai through the query tower); teacher: [B, D] (its English version through
    the frozen backbone). For unit vectors this is (1 - cos) / temperature: dividing by the contrastive loss's
    temperature puts its gradients on the same scale (the contrastive gradient carries a 1 / temperature too),
    so a weight of 1 balances the two.
    """
    return ((student - teacher.detach()) ** 2).sum(-1).mean() / (2 * temperature)  # []


def ranking_distill_loss(student: torch.Tensor, teacher: torch.Tensor, p: torch.Tensor,
                         temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher ranking || student ranking) over the passages p: listwise distillation of a ranking.

    student: [B, D] (a question through the trained query tower); teacher: [B, D] (a fixed vector whose ranking
    the student should reproduce, e.g. the question's human translation through the frozen backbone); p: [N, D]
    the passages both rank. Each side's ranking is softmax(x . p / temperature); returns the mean over questions
    of sum_n t_n (log t_n - log s_n). Unlike :func:`distill_loss` it asks only that the student rank the passages
    as the teacher does, not that it land on the teacher's vector.
    """
    log_s = F.log_softmax(student @ p.T / temperature, dim=-1)  # [B, N]
    log_t = F.log_softmax(teacher.detach() @ p.T / temperature, dim=-1)  # [B, N]
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)  # []


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, D] from every process into [world * b, D], rank-major, differentiably.

    The backward pass sums, over processes, each one's gradient with respect to this process's slice (an
    all-reduce) and hands it to ``x``: a passage encoded here is a negative for every process's questions, and
    its gradient must count all of them. With each process's loss the mean over its own questions and the
    gradients then averaged over processes (:func:`cora.distributed.all_reduce_gradients`), the update equals
    the one-process update over the global batch. (Keeping only the local slice's gradient, as DPR's gather does,
    drops the other processes' questions from the passages' gradients.)

    Without torch.distributed (or with one process) it returns ``x`` itself, so single-process training is the
    same code path. Every process must pass the same b (the trainer's batches are equal-sized by construction).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]  # world x [b, D]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)  # [world * b, D]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # [world * b, D]; autograd's buffer is not ours to change in place
        dist.all_reduce(grad)  # every process's loss, differentiated with respect to every slice
        b = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * b : (dist.get_rank() + 1) * b]  # [b, D]
