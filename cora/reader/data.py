"""Reader training and evaluation examples from SQuAD-format sets, including cross-lingual pairs.

A reader example is a question, the passages it is read with, and the gold answers *as they appear in those
passages* (an extractive reader can only point at text that is there). Cross-lingual pairs come from parallel
files: XQuAD shares question ids across languages, so the question in language X is paired with paragraph i in
language Y and the answer of the Y version. XQuAD articles 32-39 are the dev set and never enter training.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cora.datasets import XQUAD_DEV_ARTICLES, XQUAD_TRAIN_ARTICLES  # noqa: F401 (re-exported)
from cora.datastore import Passage, iter_squad_paragraphs


@dataclass
class ReaderExample:
    id: str
    question: str
    question_lang: str
    passages: list[Passage]
    answers: list[str]  # in the passages' language, as spans of them
    answer_lang: str  # the language the gold answer is scored in


def squad_examples(path: str | Path, lang: str, articles: Iterable[int] | None = None) -> Iterator[ReaderExample]:
    """One example per question, read with its gold paragraph (ids/groups as in :func:`cora.datastore.read_squad`)."""
    for para in iter_squad_paragraphs(path, articles):
        passage = Passage(para.passage_id, lang, "", para.context, para.group)
        for q in para.qas:
            answers = list(dict.fromkeys(x["text"] for x in q.get("answers", []) if x.get("text")))
            if answers:
                yield ReaderExample(f"{q['id']}/{lang}", q["question"], lang, [passage], answers, lang)


def cross_lingual_examples(
    by_lang: dict[str, Sequence[ReaderExample]], rng: random.Random, per_question: int = 1
) -> list[ReaderExample]:
    """Question in X, parallel paragraph in Y != X (answer of the Y version), from shared question ids."""
    index: dict[str, dict[str, ReaderExample]] = {}
    for lang, examples in by_lang.items():
        for ex in examples:
            index.setdefault(ex.id.rsplit("/", 1)[0], {})[lang] = ex
    out = []
    for qid, versions in sorted(index.items()):
        langs = sorted(versions)
        for x in langs:
            others = [y for y in langs if y != x]
            for y in rng.sample(others, min(per_question, len(others))):
                q, ctx = versions[x], versions[y]
                out.append(ReaderExample(f"{qid}/{x}->{y}", q.question, x, ctx.passages, ctx.answers, y))
    return out
