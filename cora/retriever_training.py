"""mDPR training data (the DPR/CORA JSON format), builders from SQuAD-format sets, and the retriever task.

Format (one JSON list of objects)::

    {"question": ..., "answers": [...], "lang": "de",
     "positive_ctxs": [{"passage_id", "title", "text"}, ...],   # [0] is the gold passage itself
     "negative_ctxs": [...], "hard_negative_ctxs": [...]}

Builders: the gold paragraph is the positive; its versions in other languages (same ``group``: CORA's language
links) are positives too; hard negatives are the top BM25 passages that contain no answer and are not in the
gold group. XQuAD articles 32-39 are the dev set and must not be passed in (the recipe reads articles 0-31 only).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cora.datastore import Datastore, Passage
from cora.errors import DataFormatError
from cora.losses import contrastive_loss, gather_with_grad
from cora.models import Encoder, format_passage
from cora.questions import Question

logger = logging.getLogger(__name__)


@dataclass
class Ctx:
    passage_id: str
    title: str
    text: str


@dataclass
class DPRExample:
    question: str
    answers: list[str]
    lang: str
    positive_ctxs: list[Ctx]
    negative_ctxs: list[Ctx] = field(default_factory=list)
    hard_negative_ctxs: list[Ctx] = field(default_factory=list)


def _ctx(p: Passage) -> Ctx:
    return Ctx(p.id, p.title, p.text)


def build_examples(questions: Sequence[Question], datastore: Datastore, bm25=None, hard_negatives: int = 3,
                   cross_lingual: bool = True, depth: int = 30) -> list[DPRExample]:
    """DPR examples for SQuAD-derived questions (with ``gold_passage``/``gold_group``) over ``datastore``."""
    hard_rows: list[list[int]] = [[] for _ in questions]
    if bm25 is not None and hard_negatives:
        _, rows = bm25.search([q.question for q in questions], [q.lang for q in questions], k=depth)
        hard_rows = [list(map(int, r)) for r in rows]
    out, skipped = [], 0
    for q, cand in zip(questions, hard_rows, strict=True):
        try:
            gold = datastore.get(q.gold_passage)
        except KeyError:
            skipped += 1
            continue
        positives = [_ctx(gold)]
        if cross_lingual:
            positives += [_ctx(p) for p in datastore.rows(datastore.group_rows(gold.group)) if p.id != gold.id]
        hard = []
        for p in datastore.rows(cand):
            if p.group != gold.group and not any(a and a in p.text for a in q.answers):
                hard.append(_ctx(p))
            if len(hard) >= hard_negatives:
                break
        out.append(DPRExample(q.question, list(q.answers), q.lang, positives, [], hard))
    if skipped:
        logger.warning("skipped %d questions whose gold passage is not in the datastore", skipped)
    return out


def write_examples(examples: Sequence[DPRExample], path: str | os.PathLike) -> None:
    from cora.fileio import atomic_write_text

    atomic_write_text(path, json.dumps([asdict(e) for e in examples], ensure_ascii=False))


def read_examples(path: str | os.PathLike, datastore: Datastore | None = None) -> list[DPRExample]:
    """Read DPR JSON; examples without positives (or whose positive ids are not in ``datastore``) are skipped and
    counted, never fatal. Malformed files are errors naming the file and the item."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, f"invalid JSON ({err.msg})") from None
    if not isinstance(raw, list):
        raise DataFormatError(path, None, "expected a JSON list of DPR examples")
    out, no_pos, unknown = [], 0, 0
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise DataFormatError(path, None, f"item {i} has no string 'question'", field="question")

        def ctxs(key: str, item: dict = item) -> list[Ctx]:
            got = []
            for c in item.get(key) or []:
                pid = str(c.get("passage_id", c.get("id", "")))
                got.append(Ctx(pid, c.get("title", ""), c.get("text", "")))
            return got

        positives = [c for c in ctxs("positive_ctxs") if c.text]
        if datastore is not None:
            known = []
            for c in positives:
                try:
                    datastore.row_of(c.passage_id)
                    known.append(c)
                except KeyError:
                    unknown += 1
            positives = known
        if not positives:
            no_pos += 1
            continue
        out.append(DPRExample(item["question"], list(item.get("answers") or []), item.get("lang", ""), positives,
                              ctxs("negative_ctxs"), ctxs("hard_negative_ctxs")))
    if no_pos or unknown:
        logger.warning("%s: skipped %d examples without a usable positive; dropped %d positives not in the "
                       "datastore", path, no_pos, unknown)
    return out


# ------------------------------------------------------------------------------------------------ task
@dataclass
class RetrieverBatch:
    questions: list[str]
    passages: list[Ctx]  # B positives, then B hard negatives

    def __len__(self) -> int:
        return len(self.questions)


class RetrieverTask:
    """One shared encoder for questions and passages (e5-style, prefixes tell them apart)."""

    def __init__(self, encoder: Encoder, examples: Sequence[DPRExample], batch_size: int,
                 dev: tuple[Sequence[Question], Datastore] | None = None, temperature: float = 0.05,
                 native_positive_rate: float = 0.5, freeze_embeddings: bool = True, dropout: bool = True):
        self.encoder, self.examples, self.batch_size = encoder, list(examples), batch_size
        self.dev, self.temperature, self.native_rate = dev, temperature, native_positive_rate
        if freeze_embeddings:
            # The 250k x 384 embedding matrix is 80% of me5-small's parameters; freezing it keeps AdamW's state
            # small and the multilingual vocabulary intact.
            for p in encoder.model.get_input_embeddings().parameters():
                p.requires_grad_(False)
        if not dropout:
            # Measured on 2 CPU cores: a me5-small training step (8 questions, 16 passages of ~240 tokens) takes
            # 30 s with dropout and 12.4 s without; short fine-tunes from a pretrained encoder rarely need it.
            for m in encoder.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0

    def num_batches(self, epoch: int) -> int:
        return len(self.examples) // self.batch_size  # equal-sized batches (needed for the cross-process gather)

    def batches(self, epoch: int, rng: random.Random) -> Iterator[RetrieverBatch]:
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        for b in range(self.num_batches(epoch)):
            chunk = [self.examples[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            positives, negatives = [], []
            for ex in chunk:
                # Half the time the gold passage itself, else a language-linked version of it.
                native = len(ex.positive_ctxs) == 1 or rng.random() < self.native_rate
                positives.append(ex.positive_ctxs[0] if native else rng.choice(ex.positive_ctxs[1:]))
                pool = ex.hard_negative_ctxs or ex.negative_ctxs
                other = self.examples[rng.randrange(len(self.examples))].positive_ctxs[0]
                negatives.append(rng.choice(pool) if pool else other)
            yield RetrieverBatch([ex.question for ex in chunk], positives + negatives)

    def loss(self, batch: RetrieverBatch) -> torch.Tensor:
        enc = self.encoder
        q = enc.embed(enc.tokenize(batch.questions, "query"))  # [B, D]
        p = enc.embed(enc.tokenize([format_passage(c.title, c.text) for c in batch.passages], "passage"))  # [2B, D]
        p_all = gather_with_grad(p)  # [world * 2B, D]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        target = torch.arange(len(batch), device=q.device) + rank * p.shape[0]  # [B]
        return contrastive_loss(q, p_all, target, self.temperature)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Recall@1/5 of the gold group on the dev questions against the dev datastore (exact search)."""
        if self.dev is None:
            return {"metric": 0.0}
        questions, ds = self.dev
        passages = list(ds)
        P = self.encoder.encode_passages([p.title for p in passages], [p.text for p in passages])
        Q = self.encoder.encode_queries([q.question for q in questions])
        top = np.argsort(-(Q @ P.T), axis=1)[:, :5]
        r1 = float(np.mean([passages[t[0]].group == q.gold_group for q, t in zip(questions, top, strict=True)]))
        r5 = float(np.mean([q.gold_group in {passages[j].group for j in t} for q, t in zip(questions, top,
                                                                                           strict=True)]))
        return {"metric": r1, "R@1": r1, "R@5": r5}

    def parameters(self):
        return self.encoder.model.parameters()

    def module(self) -> torch.nn.Module:
        return self.encoder.model

    def save(self, folder: Path) -> None:
        self.encoder.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / "model.safetensors"))
        self.encoder.model.load_state_dict(state, strict=False)
