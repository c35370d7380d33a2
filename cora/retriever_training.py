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
from cora.distributed import rank
from cora.encoder import Encoder, format_passage
from cora.errors import DataFormatError
from cora.evaluation.text import contains_answer
from cora.languages import same_language
from cora.losses import (
    contrastive_loss,
    distill_loss,
    gather_with_grad,
    multi_positive_loss,
    ranking_distill_loss,
)
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
    # Optional: the same question in a pivot language (e.g. English, from a parallel set such as XQuAD); the
    # query tower is then also distilled towards the frozen backbone's vector of it (QueryTowerTask).
    pivot_question: str | None = None
    # How to distil towards pivot_question: None = the task's distill_mode; 'vector' suits parallel sentences,
    # whose ranking of the training passages says little (they were not written about them).
    distill_mode: str | None = None


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
            if p.group != gold.group and not contains_answer(p.text, q.answers):
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
        pivot = item.get("pivot_question")
        out.append(DPRExample(item["question"], list(item.get("answers") or []), item.get("lang", ""), positives,
                              ctxs("negative_ctxs"), ctxs("hard_negative_ctxs"),
                              pivot if isinstance(pivot, str) and pivot.strip() else None))
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

    def shard(self, rank: int, world: int) -> RetrieverBatch:
        """Process ``rank``'s questions of a global batch, with their positives and hard negatives (the trainer's
        split under torchrun; the other processes' passages come back as negatives through the gather)."""
        B = len(self.questions)
        if B % world:
            raise ValueError(f"a batch of {B} questions does not split evenly over {world} processes")
        lo, hi = rank * B // world, (rank + 1) * B // world
        return RetrieverBatch(self.questions[lo:hi], self.passages[lo:hi] + self.passages[B + lo : B + hi])


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
        q = enc.embed(enc.tokenize(batch.questions, "query"), "query")  # [B, D]
        p = enc.embed(enc.tokenize([format_passage(c.title, c.text) for c in batch.passages], "passage"),
                      "passage")  # [2B, D]
        p_all = gather_with_grad(p)  # [world * 2B, D]: every process's passages, rank-major
        target = torch.arange(len(batch), device=q.device) + rank() * p.shape[0]  # [B]: rows of the positives
        return contrastive_loss(q, p_all, target, self.temperature)  # mean over this process's questions

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Recall@1/5 of the gold group on the dev questions against the dev datastore (exact search)."""
        if self.dev is None:
            return {"metric": None}
        out = dev_recall(self.encoder, *self.dev)
        return {"metric": out["R@1"], **out}

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


def dev_recall(encoder: Encoder, questions: Sequence[Question], datastore: Datastore,
               passage_vectors: np.ndarray | None = None, pivot_lang: str | None = None) -> dict[str, float]:
    """Recall@1/5 of the gold group, exact search over ``datastore`` (and, with ``pivot_lang``, over its passages
    in that language only: the XOR-like setting). ``passage_vectors`` skips re-encoding a frozen passage tower."""
    passages = list(datastore)
    P = passage_vectors if passage_vectors is not None else encoder.encode_passages(
        [p.title for p in passages], [p.text for p in passages])
    Q = encoder.encode_queries([q.question for q in questions])
    groups = np.array([p.group for p in passages], dtype=object)
    out = {}
    pools = {"": np.arange(len(passages))}
    if pivot_lang:
        pools[f" {pivot_lang}"] = np.array([i for i, p in enumerate(passages) if same_language(p.lang, pivot_lang)])
    for name, rows in pools.items():
        if not len(rows):
            continue
        top = rows[np.argsort(-(Q @ P[rows].T), axis=1)[:, :5]]  # [Q, 5] datastore rows
        hit = groups[top] == np.array([q.gold_group for q in questions], dtype=object)[:, None]  # [Q, 5]
        out[f"R@1{name}"] = float(hit[:, 0].mean())
        out[f"R@5{name}"] = float(hit.any(1).mean())
    return out


class QueryTowerTask:
    """Asymmetric mDPR: only a LoRA query tower is trained (see :meth:`Encoder.add_query_adapter`).

    Passages keep the frozen backbone's vectors, computed once for the whole training ``datastore``; so every
    passage of it is a negative for every question (a full softmax over N cached vectors, instead of a batch's
    handful), and nothing is re-encoded during training, at dev evaluation or in the index afterwards. Each
    question gets two terms, averaged: its positives (every ``positive_ctxs`` row: the gold paragraph and its
    language-linked versions) against all N passages, and its positive in one *pivot* language, drawn from the
    languages of its positives other than its own (its own when there is none), against the passages of that
    language only: the cross-lingual case that CORA's language links exist for. ``all_weight`` weighs the
    first term against the second (0.5: equal; 0: cross-lingual only, for a tower used only when the datastore
    lacks the question's language, see :class:`cora.retriever.Retriever`).

    With ``distill_weight`` > 0, a question whose example names a ``pivot_question`` (its translation, e.g. the
    English original of a parallel set) is also pulled towards the frozen backbone's vector of that translation
    (knowledge distillation, Reimers & Gurevych 2020): a question in any language should retrieve as its English
    version does, in every datastore, which the contrastive terms alone do not ask for. ``distill_mode``
    'vector' (the default) is the squared distance to that vector (:func:`cora.losses.distill_loss`); 'ranking'
    asks only that the question rank the training passages as its translation does
    (:func:`cora.losses.ranking_distill_loss`, over all N passages), both rankings softmaxed at
    ``distill_temperature`` (default: ``temperature``; a higher one passes on more of the teacher's ranking below
    its first few passages). An example's own ``distill_mode`` overrides the task's for that example.
    """

    def __init__(self, encoder: Encoder, examples: Sequence[DPRExample], batch_size: int, datastore: Datastore,
                 passage_vectors: np.ndarray, dev: tuple[Sequence[Question], Datastore] | None = None,
                 temperature: float = 0.05, dev_pivot: str | None = "en", dev_vectors: np.ndarray | None = None,
                 distill_weight: float = 0.0, all_weight: float = 0.5, dev_select: str = "mean",
                 distill_mode: str = "vector", distill_temperature: float | None = None):
        if encoder.query_model is None:
            raise ValueError("QueryTowerTask needs an encoder with a query adapter (Encoder.add_query_adapter)")
        if passage_vectors.shape != (len(datastore), encoder.dim):
            raise ValueError(f"passage_vectors {passage_vectors.shape} do not match the datastore "
                             f"({len(datastore)} x {encoder.dim})")
        self.encoder, self.batch_size, self.temperature = encoder, batch_size, temperature
        self.P = torch.from_numpy(np.ascontiguousarray(passage_vectors, dtype=np.float32))  # [N, D]
        self.langs = list(datastore.dataset["lang"])
        lang_ids = {lang: i for i, lang in enumerate(sorted(set(self.langs)))}
        self.lang_of = torch.tensor([lang_ids[x] for x in self.langs])  # [N]
        self.lang_ids = lang_ids
        if distill_mode not in ("vector", "ranking"):
            raise ValueError(f"distill_mode must be 'vector' or 'ranking', not {distill_mode!r}")
        if distill_temperature is not None and (distill_temperature <= 0 or distill_mode != "ranking"):
            raise ValueError(f"distill_temperature must be > 0 and needs distill_mode 'ranking', not "
                             f"{distill_temperature} with {distill_mode!r}")
        self.distill_weight, self.all_weight, self.distill_mode = distill_weight, all_weight, distill_mode
        self.distill_temperature = temperature if distill_temperature is None else distill_temperature
        # (question, lang, positive rows, pivot question, distill mode)
        self.items: list[tuple[str, str, list[int], str | None, str]] = []
        unknown = 0
        for ex in examples:
            if ex.distill_mode not in (None, "vector", "ranking"):
                raise ValueError(f"example {ex.question[:40]!r}: distill_mode must be None, 'vector' or 'ranking', "
                                 f"not {ex.distill_mode!r}")
            rows = []
            for c in ex.positive_ctxs:
                try:
                    rows.append(datastore.row_of(c.passage_id))
                except KeyError:
                    unknown += 1
            # A question without a positive still teaches the tower through its translation, when distilled.
            if rows or (distill_weight > 0 and ex.pivot_question):
                self.items.append((ex.question, ex.lang, sorted(set(rows)), ex.pivot_question,
                                   ex.distill_mode or distill_mode))
        if unknown:
            logger.warning("dropped %d positives whose passage is not in the training datastore", unknown)
        if len(self.items) < batch_size:
            raise ValueError(f"{len(self.items)} usable examples, fewer than one batch of {batch_size}")
        if dev_select not in ("mean", "pivot", "all"):
            raise ValueError(f"dev_select must be 'mean', 'pivot' or 'all', not {dev_select!r}")
        self.dev, self.dev_pivot, self.dev_select = dev, dev_pivot, dev_select
        self.dev_vectors = dev_vectors
        self.teacher: dict[str, torch.Tensor] = {}
        if distill_weight > 0:
            pivots = sorted({item[3] for item in self.items if item[3]})
            if not pivots:
                logger.warning("distill_weight > 0 but no example has a pivot_question: nothing to distil")
            # The passage tower is the frozen backbone: its vector of the query-prefixed translation is the target.
            vecs = encoder.encode(pivots, "query", tower="passage")
            self.teacher = {t: torch.from_numpy(v) for t, v in zip(pivots, vecs, strict=True)}
        if dev is not None and dev_vectors is None:
            ds = dev[1]
            self.dev_vectors = encoder.encode_passages(list(ds.dataset["title"]), list(ds.dataset["text"]))

    def num_batches(self, epoch: int) -> int:
        return len(self.items) // self.batch_size

    def batches(self, epoch: int, rng: random.Random) -> Iterator[list[tuple[str, list[int], str, str | None, str]]]:
        """(question, positive rows, pivot language, pivot question, distill mode) per example; a pure function of
        the rng (exact resume)."""
        order = list(range(len(self.items)))
        rng.shuffle(order)
        for b in range(self.num_batches(epoch)):
            batch = []
            for i in order[b * self.batch_size : (b + 1) * self.batch_size]:
                question, lang, rows, pivot_question, mode = self.items[i]
                others = sorted({self.langs[r] for r in rows} - {lang})
                batch.append((question, rows, rng.choice(others) if others else lang, pivot_question, mode))
            yield batch

    def loss(self, batch) -> torch.Tensor:
        enc = self.encoder
        q = enc.embed(enc.tokenize([item[0] for item in batch], "query"), "query")  # [B, D]
        B, N = len(batch), self.P.shape[0]
        # Only questions with a positive have contrastive terms (the others are there for distillation).
        ranked = [i for i, item in enumerate(batch) if item[1]]
        loss = q.sum() * 0.0  # []
        if ranked:
            positive = torch.zeros(len(ranked), N, dtype=torch.bool)  # [b, N]
            for j, i in enumerate(ranked):
                positive[j, batch[i][1]] = True
            pivot = torch.tensor([self.lang_ids[batch[i][2]] for i in ranked])  # [b]
            in_pivot = self.lang_of.unsqueeze(0) == pivot.unsqueeze(1)  # [b, N]
            everything = torch.ones(len(ranked), N, dtype=torch.bool)  # [b, N]
            P, qr = self.P.to(q.device), q[ranked]
            loss = (self.all_weight * multi_positive_loss(qr, P, positive, everything, self.temperature)
                    + (1 - self.all_weight) * multi_positive_loss(qr, P, positive, in_pivot, self.temperature)
                    ) * len(ranked) / B  # []
        for mode in ("ranking", "vector") if self.distill_weight > 0 else ():
            with_pivot = [i for i, item in enumerate(batch) if item[3] in self.teacher and item[4] == mode]
            if not with_pivot:
                continue
            target = torch.stack([self.teacher[batch[i][3]] for i in with_pivot]).to(q.device)  # [b, D]
            if mode == "ranking":
                term = ranking_distill_loss(q[with_pivot], target, self.P.to(q.device), self.distill_temperature)
            else:
                term = distill_loss(q[with_pivot], target, self.temperature)
            loss = loss + self.distill_weight * term * len(with_pivot) / B
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev recall@1/5 on the dev datastore and on its pivot-language passages. The metric (``dev_select``) is
        the mean of the two recall@1 (a fine-tune that trades one setting for the other does not count as
        progress), or one of them ('pivot': for a tower used only cross-lingually)."""
        if self.dev is None:
            return {"metric": None}
        questions, ds = self.dev
        out = dev_recall(self.encoder, questions, ds, self.dev_vectors, self.dev_pivot)
        pivot = f"R@1 {self.dev_pivot}"
        if pivot not in out or self.dev_select == "all":
            out["metric"] = out["R@1"]
        else:
            out["metric"] = out[pivot] if self.dev_select == "pivot" else (out["R@1"] + out[pivot]) / 2
        return out

    def parameters(self):
        return self.encoder.query_model.parameters()

    def module(self) -> torch.nn.Module:
        return self.encoder.query_model

    def save(self, folder: Path) -> None:
        self.encoder.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from cora.encoder import QUERY_ADAPTER_DIR

        state = load_file(str(Path(folder) / QUERY_ADAPTER_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.encoder.query_model, state)


def passage_vectors(encoder: Encoder, datastore: Datastore, cache: str | os.PathLike) -> np.ndarray:
    """The passage tower's vectors of every datastore row, encoded once into a (resumable) Flat index at
    ``cache`` and read back from it; under torchrun each process encodes one shard of it."""
    from cora.distributed import build_index_on_ranks
    from cora.index import DenseIndex

    cache = Path(cache)
    if (cache / "index.faiss").exists():
        index = DenseIndex.load(cache)
        index.check_datastore(datastore)
    else:
        index = build_index_on_ranks(datastore, encoder, cache, encoder.config.backbone, factory="Flat")
    return index.passage_vectors()
