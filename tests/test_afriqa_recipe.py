"""recipes/afriqa.py: AfriQA's answer fields (Python list literals in strings) are parsed as literals, never run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cora.errors import CoraError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import afriqa  # noqa: E402


def test_answer_lists_are_literals_only(tmp_path):
    where = (tmp_path / "q.json", 3, "answers")
    assert afriqa.parse_answer_list("['2021']", *where) == ["2021"]
    assert afriqa.parse_answer_list("['Joe Biden', \"O'Neil\"]", *where) == ["Joe Biden", "O'Neil"]
    assert afriqa.parse_answer_list("plain text", *where) == ["plain text"]
    assert afriqa.parse_answer_list(["a", " "], *where) == ["a"]
    assert afriqa.parse_answer_list("['M'biza']", *where) == ["M'biza"]  # an unescaped quote, as in the data
    for bad in ("[__import__('os').system('true')]", "[1, 2]", "['unclosed'"):
        with pytest.raises(CoraError, match=r"q.json:3"):
            afriqa.parse_answer_list(bad, *where)


def test_questions_join_their_gold_passage(tmp_path):
    root = tmp_path / "data"
    (root / "afriqa" / "queries" / "hau").mkdir(parents=True)
    (root / "afriqa" / "gold_passages" / "hau").mkdir(parents=True)
    (root / "afriqa" / "queries" / "hau" / "queries.afriqa.hau.en.dev.json").write_text(
        json.dumps({"id": 7, "question": "Menene sunan komfuta ta farko?", "translated_question": "First computer?",
                    "answers": "['ENIAC']", "translated_answer": "['ENIAC']", "lang": "hau"}) + "\n"
        + json.dumps({"id": 8, "question": "Ina?", "answers": "['Kano']", "translated_answer": "['Kano']"}) + "\n")
    (root / "afriqa" / "gold_passages" / "hau" / "gold_span_passages.afriqa.hau.en.dev.json").write_text(
        json.dumps({"id": "7", "context": "The ENIAC was the first computer.", "title": "ENIAC",
                    "question_lang": "Menene sunan komfuta ta farko?", "answer_pivot": {"text": ["ENIAC"]}}) + "\n")
    qs = afriqa.questions(root, "dev", ["hau"])
    assert [(q.id, q.lang, q.pivot, q.answers, q.gold_group is not None) for q in qs] == \
           [("7", "hau", "en", ["ENIAC"], True), ("8", "hau", "en", ["Kano"], False)]
    store = afriqa.build_store(root, tmp_path / "store")
    assert len(store) == 1 and store.get("afriqa.hau.dev:7").group == qs[0].gold_group
