"""Training the extractive reader with the one loop (:func:`cora.training.train`).

The training mixture is every SQuAD-format set in the shared data folder, in all their languages, plus
cross-lingual pairs from XQuAD (question in X, the parallel paragraph in Y). Any article that contains a question
of the XQuAD dev articles (32-39) is dropped from every file, which also removes the machine-translated copies of
those articles in SQuAD-es and SQuAD-it (they keep SQuAD's question ids).

AfriQA train joins as cross-lingual examples of another kind: a question in one of eight African languages read
with the English (French for Fon) Wikipedia passage that holds its answer, scored in the pivot language.

Some examples are read with answerless passages too (one from the same article when there is one, a topically
close "hard" negative, the others drawn from the language's pool), so the joint softmax and the selection head
learn to prefer the passage that holds the answer, as they must at answer time over k retrieved passages.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cora.datasets import AFRIQA_TRAIN, XQUAD_LANGS, ReaderSource, xquad_file  # noqa: F401 (re-exported)
from cora.datasets import READER_SOURCES as DEFAULT_SOURCES
from cora.datastore import Passage, iter_squad_paragraphs
from cora.errors import CoraError
from cora.evaluation.text import contains_answer
from cora.reader.data import XQUAD_DEV_ARTICLES, XQUAD_TRAIN_ARTICLES, ReaderExample, cross_lingual_examples
from cora.reader.extractive import ExtractiveReader

logger = logging.getLogger(__name__)

def afriqa_examples(path: Path, lang: str) -> tuple[list[ReaderExample], list[Passage]]:
    """AfriQA gold-passage examples: question in ``lang``, passage and answer in the pivot language (the file
    name's ``.afriqa.{lang}.{pivot}.``). Rows whose answer is not in the passage are skipped (counted in the log)."""
    from cora.errors import DataFormatError

    parts = path.name.split(".")
    pivot = parts[parts.index("afriqa") + 2] if "afriqa" in parts else "en"
    examples, passages, skipped = [], [], 0
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                qid, question, context = str(row["id"]), row["question_lang"], row["context"]
                answers = [a for a in row["answer_pivot"]["text"] if isinstance(a, str) and a.strip()]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataFormatError(path, n, f"not an AfriQA gold-passage row ({err})") from None
            if not isinstance(context, str) or not isinstance(question, str):
                skipped += 1
                continue
            answers = [a for a in answers if a in context]
            if not answers or not question.strip():
                skipped += 1
                continue
            passage = Passage(f"afriqa.{lang}.train:{qid}", pivot, row.get("title", ""), context,
                              f"afriqa.{lang}:{qid}")
            passages.append(passage)
            examples.append(ReaderExample(f"afriqa:{lang}:{qid}", question, lang, [passage], answers, pivot))
    if skipped:
        logger.info("%s: %d rows without the answer in the passage skipped", path, skipped)
    return examples, passages


@dataclass
class Mixture:
    train: list[ReaderExample]
    negatives: dict[str, list[Passage]]  # language -> paragraphs to draw answerless passages from
    counts: dict[str, int] = field(default_factory=dict)  # source -> examples used


def xquad_dev_ids(data_root: str | Path) -> set[str]:
    """Question ids of the XQuAD dev articles (identical in every language)."""
    path = xquad_file(data_root, "en")
    if not path.exists():
        raise CoraError(f"{path} not found: --data-root must be the shared data folder (it holds xquad/)")
    return {str(q["id"]) for p in iter_squad_paragraphs(path, XQUAD_DEV_ARTICLES) for q in p.qas}


def file_examples(path: Path, lang: str, exclude_ids: set[str], articles=None) -> tuple[list[ReaderExample],
                                                                                        list[Passage]]:
    """Examples and paragraphs of one file, without any article that holds an excluded question id."""
    paragraphs = list(iter_squad_paragraphs(path, articles))
    banned = {p.article for p in paragraphs if any(str(q.get("id")) in exclude_ids for q in p.qas)}
    examples, passages = [], []
    for para in paragraphs:
        if para.article in banned or not isinstance(para.context, str) or not para.context.strip():
            continue
        passage = Passage(para.passage_id, lang, "", para.context, para.group)
        passages.append(passage)
        for q in para.qas:
            answers = list(dict.fromkeys(a["text"] for a in q.get("answers", []) if a.get("text")))
            if answers and q.get("question", "").strip():
                examples.append(ReaderExample(f"{q['id']}/{lang}", q["question"], lang, [passage], answers, lang))
    return examples, passages


def reader_mixture(data_root: str | Path, sources: Sequence[ReaderSource] = tuple(DEFAULT_SOURCES),
                   cross_lingual: int = 6000, seed: int = 0) -> Mixture:
    """The training mixture (see the module docstring); sampling under caps is seeded."""
    root = Path(data_root)
    rng = random.Random(seed)
    exclude = xquad_dev_ids(root)
    train: list[ReaderExample] = []
    negatives: dict[str, list[Passage]] = {}
    counts: dict[str, int] = {}
    xquad: dict[str, list[ReaderExample]] = {}
    for src in sources:
        files = sorted(glob.glob(str(root / src.path)))
        if not files:
            raise CoraError(f"{root / src.path}: no such file (reader training source)")
        examples: list[ReaderExample] = []
        for f in files:
            if src.format == "afriqa":
                ex, ps = afriqa_examples(Path(f), src.lang)
            else:
                articles = XQUAD_TRAIN_ARTICLES if src.path.startswith("xquad/") else None
                ex, ps = file_examples(Path(f), src.lang, exclude, articles)
            examples += ex
            for passage in ps:
                negatives.setdefault(passage.lang, []).append(passage)
        if src.cap is not None and len(examples) > src.cap:
            examples = rng.sample(examples, src.cap)
        if src.path.startswith("xquad/"):
            xquad[src.lang] = examples
        counts[src.path] = len(examples)
        train += examples
    if cross_lingual and len(xquad) > 1:
        pairs = cross_lingual_examples(xquad, rng)
        pairs = rng.sample(pairs, min(cross_lingual, len(pairs)))
        counts["xquad cross-lingual pairs"] = len(pairs)
        train += pairs
    return Mixture(train, negatives, counts)


def xquad_dev_examples(data_root: str | Path, per_lang: int | None = None, seed: int = 0) -> list[ReaderExample]:
    """XQuAD dev (articles 32-39), gold paragraph given, monolingual; optionally ``per_lang`` sampled per language."""
    rng = random.Random(seed)
    out = []
    for lang in XQUAD_LANGS:
        ex, _ = file_examples(xquad_file(data_root, lang), lang, set(), XQUAD_DEV_ARTICLES)
        out += rng.sample(ex, per_lang) if per_lang and per_lang < len(ex) else ex
    return out


def score_gold_paragraph(reader: ExtractiveReader, examples: Sequence[ReaderExample]) -> dict[str, dict[str, float]]:
    """F1 / EM per answer language (and macro) with the gold paragraph given; the 'fixed' XOR scorer."""
    from cora.evaluation.report import f1_em_table
    from cora.evaluation.xor import score_one

    per: dict[str, list[tuple[float, float]]] = {}
    for ex in examples:
        pred = reader.read(ex.question, ex.passages, ex.answer_lang).text
        f1, em, _ = score_one(pred, ex.answers, ex.answer_lang, "fixed")
        per.setdefault(ex.answer_lang, []).append((f1, em))
    return f1_em_table(per)


class ReaderTask:
    """The extractive reader as a task of the one training loop."""

    def __init__(self, reader: ExtractiveReader, examples: Sequence[ReaderExample], batch_size: int,
                 negatives: dict[str, list[Passage]] | None = None, negative_rate: float = 0.3,
                 dev: Sequence[ReaderExample] | None = None, dropout: bool = False, bucket: int = 32,
                 negatives_per_example: int = 1):
        self.reader, self.examples, self.batch_size = reader, list(examples), batch_size
        self.negatives, self.negative_rate, self.dev, self.bucket = negatives or {}, negative_rate, dev, bucket
        self.negatives_per_example = negatives_per_example
        self.by_article: dict[str, list[Passage]] = {}  # "file:article" -> its paragraphs (hard negatives)
        for pool in self.negatives.values():
            for passage in pool:
                self.by_article.setdefault(passage.id.rsplit(":", 1)[0], []).append(passage)
        if not dropout:
            # A short fine-tune from a pretrained encoder; without dropout a CPU step is much cheaper.
            for m in reader.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0

    def num_batches(self, epoch: int) -> int:
        return len(self.examples) // self.batch_size

    def batches(self, epoch: int, rng: random.Random) -> Iterator[list[tuple[str, list[Passage], list[str]]]]:
        """Shuffled, then sorted by length inside windows of ``bucket`` batches (less padding), then the batches
        of each window shuffled again; a pure function of the rng, so resume sees the same order."""
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        n = self.num_batches(epoch) * self.batch_size
        window = self.bucket * self.batch_size
        for w in range(0, n, window):
            chunk = sorted(order[w : min(n, w + window)], key=lambda i: len(self.examples[i].passages[0].text))
            groups = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            rng.shuffle(groups)
            for g in groups:
                yield [self._item(self.examples[i], rng) for i in g]

    def _item(self, ex: ReaderExample, rng: random.Random) -> tuple[str, list[Passage], list[str]]:
        passages = [self._crop(p, ex.answers, rng) for p in ex.passages]
        pool = self.negatives.get(passages[0].lang, [])
        if pool and rng.random() < self.negative_rate:
            gold = passages[0]
            same_article = [p for p in self.by_article.get(ex.passages[0].id.rsplit(":", 1)[0], [])
                            if p.id != ex.passages[0].id]
            candidates = [same_article[rng.randrange(len(same_article))]] if same_article else []
            candidates += [pool[rng.randrange(len(pool))] for _ in range(self.negatives_per_example)]
            added = 0
            for neg in candidates:
                if added == self.negatives_per_example:
                    break
                if neg.group != gold.group and not contains_answer(neg.text, ex.answers) and neg not in passages:
                    passages.insert(rng.randrange(len(passages) + 1), neg)
                    added += 1
        return ex.question, passages, ex.answers

    def _crop(self, passage: Passage, answers: list[str], rng: random.Random | None = None) -> Passage:
        """A passage longer than the input keeps a window that holds the first answer (SQuAD's doc stride, one
        window): otherwise the answer is truncated away and the example teaches nothing. With ``rng`` the
        answer's place in the window is drawn at random (so position is no cue), else it sits a third in."""
        at = min((i for i in (passage.text.find(a) for a in answers) if i >= 0), default=-1)
        if at < 0:
            return passage
        budget = self.reader.config.max_length * 3 // 4  # the rest: the question and special tokens
        enc = self.reader.tokenizer(passage.text, add_special_tokens=False, return_offsets_mapping=True,
                                    verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= budget:
            return passage
        first = next((t for t, (a, b) in enumerate(offsets) if b > at), len(offsets) - 1)
        before = rng.randrange(budget * 3 // 4) if rng is not None else budget // 3  # tokens kept before it
        lo = max(0, min(first - before, len(offsets) - budget))
        c0 = offsets[lo][0]
        c1 = offsets[min(len(offsets), lo + budget) - 1][1]
        return Passage(passage.id, passage.lang, passage.title, passage.text[c0:c1], passage.group)

    def loss(self, batch) -> torch.Tensor:
        return self.reader.batch_loss(batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if not self.dev:
            return {"metric": None}
        table = score_gold_paragraph(self.reader, self.dev)
        return {"metric": table["macro"]["F1"], "F1": table["macro"]["F1"], "EM": table["macro"]["EM"]}

    def parameters(self):
        return self.reader.model.parameters()

    def module(self) -> torch.nn.Module:
        return self.reader.model

    def save(self, folder: Path) -> None:
        self.reader.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from cora.reader.extractive import HEAD_FILE, delta_files, load_delta

        folder = Path(folder)
        if delta_files(folder):
            load_delta(self.reader.model, delta_files(folder))
        else:
            from safetensors.torch import load_file

            self.reader.model.encoder.load_state_dict(load_file(str(folder / "encoder" / "model.safetensors")),
                                                      strict=False)
            heads = load_file(str(folder / HEAD_FILE))
            self.reader.model.load_state_dict(heads if "head.weight" in heads else
                                              {f"head.{k}": v for k, v in heads.items()}, strict=False)


class Seq2SeqTask:
    """The seq2seq generator (mGEN) as a task of the one training loop: teacher-forced loss of the first gold
    answer given CORA's input string over the example's passages (already in CORA's training order)."""

    def __init__(self, generator, examples: Sequence[ReaderExample], batch_size: int):
        self.generator, self.examples, self.batch_size = generator, list(examples), batch_size

    def num_batches(self, epoch: int) -> int:
        return len(self.examples) // self.batch_size

    def batches(self, epoch: int, rng: random.Random) -> Iterator[list[ReaderExample]]:
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        for b in range(self.num_batches(epoch)):
            yield [self.examples[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]

    def loss(self, batch: list[ReaderExample]) -> torch.Tensor:
        return torch.stack([self.generator.loss(ex.question, ex.answer_lang, ex.passages, ex.answers[0])
                            for ex in batch]).mean()

    def evaluate(self) -> dict[str, float]:
        return {"metric": None}  # the loop evaluates the generator end to end after training (best = latest)

    def parameters(self):
        return self.generator.model.parameters()

    def module(self) -> torch.nn.Module:
        return self.generator.model

    def save(self, folder: Path) -> None:
        self.generator.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.generator.model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)


__all__ = ["ReaderSource", "DEFAULT_SOURCES", "AFRIQA_TRAIN", "afriqa_examples", "Mixture", "reader_mixture", "xquad_dev_examples",
           "score_gold_paragraph", "ReaderTask", "Seq2SeqTask"]
