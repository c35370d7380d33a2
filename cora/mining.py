"""CORA's mining rules: retrieval results + reader answers + gold answers -> positives and hard negatives.

One round of the loop (:mod:`cora.iterate`) writes three records, each a typed dataclass here with the JSON
layout it is saved in:

* :class:`Retrieved` (``retrieved.json``): the top rows of the datastore per training question;
* :class:`QuestionLabels` (``labels.jsonl``, one line per question): the reader's answer from each of the top
  ``label_depth`` passages read alone, whether it is right, whether the passage holds an answer;
* :class:`Mined` (``mined.json``): per question, the positives (row -> how it was found) and hard negatives,
  with counts.

The rules are pure functions (:func:`cora_rule`, :func:`expand_by_groups`, :func:`mine`); the only model they
call is the reader, through :func:`label_questions` and the ``confirm`` callback of the group expansion.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cora.datastore import Datastore, Passage
from cora.evaluation.text import contains_answer
from cora.fileio import atomic_write_json, atomic_write_text
from cora.languages import same_language
from cora.questions import Question

# How a mined positive was found (the values of Mined.questions[...].positives).
SOURCES = ("gold", "reader", "fallback", "expand-answer", "expand-reader")


# ------------------------------------------------------------------------------------------------ rules
def answers_for(q: Question, lang: str) -> list[str]:
    """The gold answers a passage in ``lang`` can be checked against: the question's own, plus the known
    answers in that language (parallel sets; the pivot-language answers of AfriQA or XOR-TyDi)."""
    return list(dict.fromkeys([*q.answers, *q.answers_in(lang)]))


def is_correct(prediction: str, answers: Sequence[str], lang: str) -> bool:
    """Exact match after the 'fixed' XOR normalisation (language-aware tokenisation)."""
    from cora.evaluation.xor import score_one

    answers = [a for a in answers if a.strip()]
    return bool(prediction.strip() and answers) and score_one(prediction, answers, lang, "fixed")[1] == 1.0


@dataclass(frozen=True)
class Label:
    """The reader's verdict on one retrieved passage, read alone."""

    row: int
    lang: str
    prediction: str
    correct: bool  # the prediction matches a gold answer in the passage's language
    contains: bool  # the passage holds a gold answer in its language (contains_answer)


def cora_rule(labels: Sequence[Label], fallback_depth: int | None = None) -> tuple[list[int], list[int], bool]:
    """CORA's labelling rule -> (positives, hard negatives, whether the positives are fallbacks).

    A correct answer makes a positive; a wrong answer from a passage without the answer, a hard negative; a wrong
    answer from a passage with the answer, a *fallback* positive, used only when no passage gave a correct one,
    and (with ``fallback_depth``) only from the first ``fallback_depth`` labels: deep in a ranking, a passage that
    merely mentions a short answer is rarely the evidence."""
    reader_pos = [lb.row for lb in labels if lb.correct]
    fallback = [lb.row for lb in labels[:fallback_depth] if not lb.correct and lb.contains]
    negatives = [lb.row for lb in labels if not lb.correct and not lb.contains]
    return (reader_pos or fallback), negatives, not reader_pos and bool(fallback)


def expand_by_groups(q: Question, positives: Sequence[int], datastore: Datastore,
                     confirm: Callable[[Passage], bool]) -> dict[int, str]:
    """Language-linked versions of the positives that are positives too: row -> how it was accepted
    ('answer': holds the gold answer of its language; 'reader': the reader answers correctly from it)."""
    known = set(positives)
    out: dict[int, str] = {}
    for row in positives:
        source = datastore[row]
        for sib in datastore.group_rows(source.group):
            if sib in known or sib in out:
                continue
            p = datastore[sib]
            if same_language(p.lang, source.lang):
                continue
            in_lang = q.answers_in(p.lang)
            if in_lang and contains_answer(p.text, in_lang):
                out[sib] = "answer"
            elif confirm(p):
                out[sib] = "reader"
    return out


# ---------------------------------------------------------------------------------------------- records
@dataclass
class Retrieved:
    """``retrieved.json``: question id -> datastore rows, best first."""

    rows: dict[str, list[int]]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.rows)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Retrieved:
        return cls({qid: [int(r) for r in rows] for qid, rows in
                    json.loads(Path(path).read_text(encoding="utf-8")).items()})


@dataclass
class QuestionLabels:
    """One line of ``labels.jsonl``: a training question's labels, in retrieval order."""

    id: str
    labels: list[Label]

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "labels": [dataclasses.asdict(lb) for lb in self.labels]},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> QuestionLabels:
        rec = json.loads(line)
        return cls(rec["id"], [Label(**lb) for lb in rec["labels"]])


def save_labels(path: str | os.PathLike, labels: Sequence[QuestionLabels]) -> None:
    atomic_write_text(path, "".join(ql.to_json() + "\n" for ql in labels))


def load_labels(path: str | os.PathLike) -> dict[str, list[Label]]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            ql = QuestionLabels.from_json(line)
            out[ql.id] = ql.labels
    return out


@dataclass
class MinedQuestion:
    positives: dict[int, str]  # row -> how it was found (SOURCES)
    hard_negatives: list[int]

    def positive_rows(self, datastore: Datastore, lang: str) -> list[int]:
        """The positives, gold first, then those in the question's language (the trainer's "native" positive)."""
        return sorted(self.positives, key=lambda r: (self.positives[r] != "gold",
                                                     not same_language(datastore[r].lang, lang)))


@dataclass
class Mined:
    """``mined.json``: what a round mined. Positives accumulate over rounds; ``new_cross_lingual_positives``
    counts, per language pair, the positives in another language than the question's that this round added."""

    round: int
    counts: dict[str, int]
    new_cross_lingual_positives: dict[str, int]
    questions: dict[str, MinedQuestion] = field(default_factory=dict)

    @property
    def new_cross_lingual_total(self) -> int:
        return sum(self.new_cross_lingual_positives.values())

    def summary(self) -> dict:
        """The counts that metrics.json repeats."""
        return {"counts": self.counts, "new_cross_lingual_positives": self.new_cross_lingual_positives,
                "new_cross_lingual_total": self.new_cross_lingual_total}

    def to_dict(self) -> dict:
        return {"round": self.round, **self.summary(),
                "questions": {qid: {"positives": {str(r): s for r, s in m.positives.items()},
                                    "hard_negatives": m.hard_negatives} for qid, m in self.questions.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Mined:
        return cls(d["round"], dict(d["counts"]), dict(d["new_cross_lingual_positives"]),
                   {qid: MinedQuestion({int(r): s for r, s in m["positives"].items()},
                                       [int(r) for r in m["hard_negatives"]]) for qid, m in d["questions"].items()})

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mined:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------------------------- steps
def label_questions(reader, questions: Sequence[Question], retrieved: Retrieved, datastore: Datastore,
                    depth: int, chunk: int = 32, progress: bool = True,
                    read_answerless: bool = True) -> list[QuestionLabels]:
    """The reader's label of each of the top ``depth`` passages of every question, each passage read alone
    (CORA's rule). An extractive reader reads ``chunk`` questions' passages in one batched call
    (``read_batch``: the same answers as one ``read`` per passage, faster).

    With ``read_answerless=False`` a passage holding none of the question's gold answers (``contains_answer``)
    is not read: it is labelled wrong, with an empty prediction, which is what an extractive reader's answer
    from it would score (its span is text of the passage, so it cannot match an answer the passage lacks), at a
    fraction of the reading cost for deep labelling (``depth`` 100 reads ~4 passages a question, not 100)."""
    from tqdm import tqdm

    out = []
    bar = tqdm(total=len(questions), desc="reader labels", unit="question", disable=not progress)
    for start in range(0, len(questions), chunk):
        part = questions[start : start + chunk]
        jobs = []
        for q in part:
            for row in retrieved.rows[q.id][:depth]:
                p = datastore[row]
                contains = contains_answer(p.text, answers_for(q, p.lang))
                jobs.append((q, row, p, contains, bool(p.text.strip()) and (read_answerless or contains)))
        readable = [(q, p) for q, _, p, _, read in jobs if read]
        if hasattr(reader, "read_batch"):
            preds = iter(a.text for a in reader.read_batch([q.question for q, _ in readable],
                                                           [[p] for _, p in readable], [q.lang for q, _ in readable]))
        else:
            preds = iter(reader.read(q.question, [p], q.lang).text for q, p in readable)
        by_question: dict[str, list[Label]] = {q.id: [] for q in part}
        for q, row, p, contains, read in jobs:
            pred = next(preds) if read else ""
            by_question[q.id].append(Label(row, p.lang, pred, is_correct(pred, answers_for(q, p.lang), p.lang),
                                           contains))
        out += [QuestionLabels(q.id, by_question[q.id]) for q in part]
        bar.update(len(part))
    bar.close()
    return out


def mine(round_: int, questions: Sequence[Question], labels: Mapping[str, Sequence[Label]], datastore: Datastore,
         confirm: Callable[[Question, Passage], bool], hard_negatives: int, previous: Mined | None = None,
         fallback_depth: int | None = None) -> Mined:
    """Round ``round_``'s positives and hard negatives from its labels (:func:`cora_rule`), the gold passage when
    a question names one, and the language-linked versions of the positives (:func:`expand_by_groups`, with
    ``confirm(question, passage)`` asking the reader); merged with the ``previous`` round's positives."""
    out = Mined(round_, {}, {})
    counts, new_pairs = Counter(), Counter()
    for q in questions:
        positives, negatives, fallback = cora_rule(labels[q.id], fallback_depth)
        counts["reader_positive_questions" if positives and not fallback else
               "fallback_questions" if fallback else "no_positive_questions"] += 1
        sources = {r: ("fallback" if fallback else "reader") for r in positives}
        if q.gold_passage is not None:
            try:
                gold = datastore.row_of(q.gold_passage)
                sources = {gold: "gold"} | {r: s for r, s in sources.items() if r != gold}
            except KeyError:
                counts["gold_not_in_datastore"] += 1
        expanded = expand_by_groups(q, list(sources), datastore, lambda p, q=q: confirm(q, p))
        for row, how in expanded.items():
            sources.setdefault(row, f"expand-{how}")
        old = previous.questions[q.id].positives if previous is not None and q.id in previous.questions else {}
        for row, how in sources.items():
            counts[f"positives_{how}"] += 1
            if row not in old and not same_language(datastore[row].lang, q.lang):
                new_pairs[f"{q.lang}->{datastore[row].lang}"] += 1
        merged = old | sources
        kept_negatives = [r for r in negatives if r not in merged][:hard_negatives]
        counts["hard_negatives"] += len(kept_negatives)
        out.questions[q.id] = MinedQuestion(merged, kept_negatives)
    out.counts = dict(sorted(counts.items()))
    out.new_cross_lingual_positives = dict(sorted(new_pairs.items()))
    return out


def reader_answers(q: Question) -> list[str]:
    """Every gold answer of a question, in any language (a reader context may hold any language's)."""
    return list(dict.fromkeys([*q.answers, *(a for v in q.answers_by_lang.values() for a in v)]))


__all__ = ["Label", "QuestionLabels", "Retrieved", "Mined", "MinedQuestion", "SOURCES", "answers_for", "is_correct",
           "cora_rule", "expand_by_groups", "label_questions", "mine", "reader_answers", "save_labels",
           "load_labels"]
