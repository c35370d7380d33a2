"""Language tags: one base code for comparing languages, whatever form of tag a data set uses."""

import logging

import pytest

from cora.datastore import Datastore, Passage
from cora.evaluation.text import segment
from cora.languages import base_code, check_language, is_known, same_language
from cora.questions import Question
from cora.reader import Answer, Evidence
from cora.reader.projection import siblings_in


@pytest.mark.parametrize("tag, code", [
    ("de", "de"), ("DE", "de"), ("zh-TW", "zh"), ("zh_cn", "zh"), ("zho_Hans", "zh"), ("cmn", "zh"),
    ("hau", "ha"), ("yor", "yo"), ("swa", "sw"), ("jpn_Jpan", "ja"), ("eng", "en"), ("iw", "he"), ("pt-BR", "pt"),
    ("bem", "bem"), ("fon", "fon"),  # no two-letter code: kept
    ("xx-klingon", "xx"), ("", ""),  # not language tags: only the first part, lower-cased
])
def test_base_code(tag, code):
    assert base_code(tag) == code


def test_known_tags_and_comparison():
    assert [is_known(t) for t in ("de", "zh-TW", "hau", "bem", "jpn_Jpan", "xx-klingon", "klingon", "und", "")] == \
        [True, True, True, True, True, False, False, False, False]
    assert same_language("de", "deu") and same_language("en", "eng_Latn") and same_language("zh", "zh-TW")
    assert not same_language("zh", "ja") and not same_language(None, "en") and not same_language("", "")


def test_only_non_tags_are_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="cora.languages"):
        assert check_language("hau") == "hau" and check_language("jpn_Jpan") == "jpn_Jpan"
        assert check_language("tlh-galaxy") == "tlh-galaxy"  # tlh (Klingon) is ISO 639-3; 'galaxy' is no subtag
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["unknown language code 'tlh-galaxy'"]


def test_segmentation_follows_the_language_not_the_form_of_its_tag():
    text = "東京は日本の首都です"
    assert segment(text, "jpn") == segment(text, "ja") == segment(text, "ja-JP")
    assert len(segment(text, "ja")) > 1 and segment(text, "xx") == [text]


def test_answers_in_a_language_under_any_of_its_tags():
    q = Question("q1", "Wie hoch ist der Everest?", "de", ["8848 m"], answers_by_lang={"eng": ["8,848 m"]})
    assert q.answers_in("deu") == ["8848 m"]
    assert q.answers_in("en") == ["8,848 m"]
    assert q.answers_in("fr") == []


def test_projection_finds_the_sibling_when_question_and_passages_tag_a_language_differently(tmp_path):
    ds = Datastore.build([Passage("e1", "de", "Everest", "Der Everest ist 8848 m hoch.", "g1"),
                          Passage("e2", "en", "Everest", "Everest is 8,848 m high.", "g1")], tmp_path / "ds")
    read = Answer("8848 m", "eng", 1.0, [Evidence("e1", "de", "Everest", "Der Everest ist 8848 m hoch.", 16, 22)])
    assert [p.id for p in siblings_in(read, ds)] == ["e2"]
    same = Answer("8848 m", "deu", 1.0, read.evidence)
    assert siblings_in(same, ds) == []  # already in the question's language: nothing to project
