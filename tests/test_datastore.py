"""Datastore readers, validation errors (file:line:field), grouping, and atomic builds."""

from __future__ import annotations

import json
import logging

import pytest

from cora.datastore import (
    Datastore,
    Passage,
    chunk_text,
    read_jsonl,
    read_source,
    read_squad,
    read_w100_tsv,
    read_wikiextractor,
)
from cora.errors import CoraError, DataFormatError

from .conftest import CORPUS


def test_build_and_read_back(datastore):
    assert len(datastore) == len(CORPUS)
    assert datastore.languages == {"de": 3, "en": 4, "es": 3}
    assert datastore.meta["groups"] == 4
    assert datastore.meta["multi_passage_groups"] == 3
    assert datastore[1] == Passage("nile-de", "de", "Nil", "Der Nil ist ein Fluss in Afrika", "nile")
    assert datastore.get("solo-en").group == "solo-en"  # no group -> its own
    assert [datastore[r].id for r in datastore.group_rows("moon")] == ["moon-en", "moon-de", "moon-es"]
    assert [p.id for p in datastore.rows([8, 0])] == ["tea-es", "nile-en"]
    assert [p.id for p in datastore] == [p["id"] for p in CORPUS]


def test_fingerprint_depends_on_content(corpus_file, tmp_path):
    a = Datastore.build(read_jsonl(corpus_file), tmp_path / "a")
    changed = [Passage(**{**p, "group": p.get("group", p["id"]), "text": p["text"] + "!"}) for p in CORPUS]
    b = Datastore.build(changed, tmp_path / "b")
    same = Datastore.build(read_jsonl(corpus_file), tmp_path / "c")
    assert a.fingerprint == same.fingerprint != b.fingerprint


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "lang": "en", "text": "x"}\n{"id": "b", "lang": "en", "text": \n', r"bad\.jsonl:2: invalid JSON"),
        ('{"id": "a", "lang": "en"}\n', r"bad\.jsonl:1: field 'text' is missing"),
        ('{"id": "a", "lang": "en", "text": "  "}\n', r"bad\.jsonl:1: field 'text' passage 'a' has empty text"),
        ('{"id": "a", "lang": "en", "text": "x"}\n{"id": "a", "lang": "de", "text": "y"}\n',
         r"bad\.jsonl:2: field 'id' duplicate passage id 'a'"),
        ('{"id": "a", "lang": "en", "text": 5}\n', r"bad\.jsonl:1: field 'text' must be a string"),
        ('[1, 2]\n', r"bad\.jsonl:1: each line must be a JSON object"),
    ],
)
def test_bad_jsonl_names_file_line_field_and_leaves_nothing(tmp_path, content, message):
    bad = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataFormatError, match=message):
        Datastore.build(read_jsonl(bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]  # no temporary folder left behind


def test_unknown_language_is_kept_and_warned_once(tmp_path, caplog):
    src = _write(tmp_path / "p.jsonl", "".join(
        json.dumps({"id": f"p{i}", "lang": "xx-klingon", "text": f"t{i}"}) + "\n" for i in range(3)))
    with caplog.at_level(logging.WARNING):
        ds = Datastore.build(read_jsonl(src), tmp_path / "ds")
    assert ds.languages == {"xx-klingon": 3}
    assert sum("unknown language code 'xx-klingon'" in r.message for r in caplog.records) == 1


def test_existing_output_is_refused_without_overwrite(corpus_file, tmp_path):
    Datastore.build(read_jsonl(corpus_file), tmp_path / "ds")
    with pytest.raises(FileExistsError):
        Datastore.build(read_jsonl(corpus_file), tmp_path / "ds")
    Datastore.build(read_jsonl(corpus_file), tmp_path / "ds", overwrite=True)


def test_w100_tsv_with_and_without_header(tmp_path):
    with_header = _write(tmp_path / "a.tsv", 'id\ttext\ttitle\n1\t"Some text"\tT1\n2\tOther text\tT2\n')
    rows = [p for _, p in read_w100_tsv(with_header, lang="en")]
    assert rows == [Passage("1", "en", "T1", "Some text", "1"), Passage("2", "en", "T2", "Other text", "2")]
    bare = _write(tmp_path / "b.tsv", "7\tTexte\tTitre\tfr\n")
    assert [p for _, p in read_w100_tsv(bare)] == [Passage("7", "fr", "Titre", "Texte", "7")]
    with pytest.raises(DataFormatError, match="no language column"):
        list(read_w100_tsv(_write(tmp_path / "c.tsv", "7\tTexte\tTitre\n")))


SQUAD = {"data": [{"title": "Some_Topic", "paragraphs": [
    {"context": "Para one.", "qas": [{"id": "q2", "question": "?", "answers": []}, {"id": "q1", "question": "?"}]},
    {"context": "Para two.", "qas": []},
]}]}


def test_squad_paragraphs_share_groups_across_parallel_files(tmp_path):
    en = _write(tmp_path / "set.en.json", json.dumps(SQUAD))
    de_data = json.loads(json.dumps(SQUAD))
    de_data["data"][0]["paragraphs"][0]["context"] = "Absatz eins."
    de = _write(tmp_path / "set.de.json", json.dumps(de_data))
    en_p = [p for _, p in read_squad(en, "en")]
    de_p = [p for _, p in read_squad(de, "de", keep_titles=False)]
    assert en_p[0] == Passage("set.en:0:0", "en", "Some Topic", "Para one.", "q:q1")
    assert de_p[0] == Passage("set.de:0:0", "de", "", "Absatz eins.", "q:q1")
    assert en_p[1].group == "set.en:0:1"  # no questions -> its own group
    with pytest.raises(CoraError, match="carry no language"):
        read_source(en)


def test_chunking_words_and_characters(tmp_path):
    assert chunk_text(" ".join(f"w{i}" for i in range(250)), "en", words=100) == [
        " ".join(f"w{i}" for i in range(0, 100)), " ".join(f"w{i}" for i in range(100, 200)),
        " ".join(f"w{i}" for i in range(200, 250))]
    ja = "あ" * 450
    assert [len(c) for c in chunk_text(ja, "ja", words=100)] == [200, 200, 50]
    assert [len(c) for c in chunk_text("ก" * 900, "th", words=100)] == [400, 400, 100]
    wiki = _write(tmp_path / "wiki_00", json.dumps(
        {"id": "12", "url": "u", "title": "T", "text": "T\n" + " ".join(["x"] * 150), "wikidata": "Q1"}) + "\n")
    parts = [p for _, p in read_wikiextractor(wiki, "en")]
    assert [(p.id, p.group, len(p.text.split())) for p in parts] == [("enwiki:12:0", "Q1", 100),
                                                                      ("enwiki:12:1", "Q1", 50)]


def test_opening_a_non_datastore_is_a_clear_error(tmp_path):
    with pytest.raises(CoraError, match="not a cora datastore"):
        Datastore(tmp_path)


def test_sample_datastore_in_repo_is_valid(tmp_path):
    from .conftest import REPO

    sample = REPO / "cora" / "resources" / "sample" / "passages.jsonl"
    ds = Datastore.build(read_jsonl(sample), tmp_path / "sample")
    assert len(ds.languages) >= 6
    assert ds.meta["multi_passage_groups"] >= 5
