"""Questions: the XOR-TyDi JSONL format (``{"id","question","lang","answers"}``) and SQuAD-format question sets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cora.errors import DataFormatError
from cora.fileio import iter_jsonl
from cora.languages import check_language, same_language


def check_question(text: object) -> str:
    """A question must hold at least one letter or digit. One of only punctuation, symbols, emoji or invisible
    characters (zero-width spaces, joiners, variation selectors) would still be encoded, retrieved for and read,
    and get an answer scored like a real one: it is refused instead. Returns the reason, or '' when it is fine."""
    import unicodedata

    if not isinstance(text, str) or not text.strip():
        return "empty question: ask something"
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return ("question without letters or digits (only punctuation, symbols, emoji or invisible characters): "
                "ask something")
    return ""


@dataclass
class Question:
    id: str
    question: str
    lang: str | None = None
    answers: list[str] = field(default_factory=list)
    # For questions built from SQuAD-format data: where the gold paragraph lives.
    gold_passage: str | None = None
    gold_group: str | None = None
    article: int | None = None
    # Gold answers in other languages, when known (parallel sets such as XQuAD): used by the CORA loop to accept
    # a language-linked passage as a positive when it contains the answer in its own language.
    answers_by_lang: dict[str, list[str]] = field(default_factory=dict)
    # A human translation of the question into a pivot language (AfriQA's and XOR-TyDi's English versions), when
    # a training set has one: the CORA loop can distil its query tower towards it (IterateConfig.distill_weight).
    translation: str | None = None

    def answers_in(self, lang: str | None) -> list[str]:
        """The gold answers in ``lang``: the question's own when ``lang`` is its language ('de' and 'deu', 'zh' and
        'zh-TW' are one language), else those of ``answers_by_lang`` under a tag of that language."""
        if same_language(lang, self.lang):
            return self.answers
        return [a for key, v in self.answers_by_lang.items() if same_language(key, lang) for a in v]


def read_questions(path: str | os.PathLike) -> list[Question]:
    """XOR-TyDi style JSONL. ``lang`` and ``answers`` are optional (language is detected when absent)."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, None, "no such file")
    out, seen = [], set()
    for line_no, obj in iter_jsonl(path):
        for key in ("id", "question"):
            if key not in obj:
                raise DataFormatError(path, line_no, "is missing", field=key)
        qid, text = str(obj["id"]), obj["question"]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(path, line_no, "must be a non-empty string", field="question")
        if problem := check_question(text):
            raise DataFormatError(path, line_no, problem, field="question")
        if qid in seen:
            raise DataFormatError(path, line_no, f"duplicate question id {qid!r}", field="id")
        seen.add(qid)
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, line_no, "must be a list of strings", field="answers")
        lang = obj.get("lang")
        if lang is not None and not isinstance(lang, str):
            raise DataFormatError(path, line_no, "must be a string", field="lang")
        if lang:
            check_language(lang, f"{path}:{line_no}")
        optional = {}
        for key in ("gold_passage", "gold_group"):
            if obj.get(key) is not None:
                if not isinstance(obj[key], str | int):
                    raise DataFormatError(path, line_no, "must be a string", field=key)
                optional[key] = str(obj[key])
        if obj.get("translation") is not None:
            if not isinstance(obj["translation"], str) or not obj["translation"].strip():
                raise DataFormatError(path, line_no, "must be a non-empty string", field="translation")
            optional["translation"] = obj["translation"]
        by_lang = obj.get("answers_by_lang") or {}
        if not isinstance(by_lang, dict) or not all(
                isinstance(v, list) and all(isinstance(a, str) for a in v) for v in by_lang.values()):
            raise DataFormatError(path, line_no, "must map language codes to lists of strings",
                                  field="answers_by_lang")
        out.append(Question(qid, text, lang or None, answers, answers_by_lang=by_lang, **optional))
    return out


def read_squad_questions(
    path: str | os.PathLike, lang: str, articles: Iterable[int] | None = None
) -> Iterator[Question]:
    """Questions of a SQuAD-format file, with their gold paragraph's passage id and group.

    Ids and groups follow :func:`cora.datastore.read_squad`, so they line up with a datastore built from the same
    file. Question ids get a ``/{lang}`` suffix because parallel files (XQuAD) share them across languages.
    """
    from cora.datastore import iter_squad_paragraphs

    for para in iter_squad_paragraphs(path, articles):
        for q in para.qas:
            answers = list(dict.fromkeys(x["text"] for x in q.get("answers", [])))
            yield Question(f"{q['id']}/{lang}", q["question"], lang, answers, para.passage_id, para.group,
                           para.article)


def write_questions(questions: Iterable[Question], path: str | os.PathLike) -> None:
    from cora.fileio import atomic_write_text

    def row(q: Question) -> dict:
        out = {"id": q.id, "question": q.question, "lang": q.lang, "answers": q.answers}
        for key in ("gold_passage", "gold_group", "translation"):
            if getattr(q, key) is not None:
                out[key] = getattr(q, key)
        if q.answers_by_lang:
            out["answers_by_lang"] = q.answers_by_lang
        return out

    atomic_write_text(path, "".join(json.dumps(row(q), ensure_ascii=False) + "\n" for q in questions))
