"""'cora datastore add': build(A) + add(B) is build(A + B) (rows, counts, fingerprint), the segments and their
fingerprints, duplicate ids named by file and line, and an add that fails or is interrupted changes nothing."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from cora import datastore as datastore_module
from cora.cli import main
from cora.datastore import META_FILE, Datastore, Passage, read_jsonl
from cora.errors import CoraError, DataFormatError

from .conftest import CORPUS


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def halves(tmp_path):
    """The corpus split into two source files, A (6 passages) and B (4), and the whole as one file."""
    return (_write_jsonl(tmp_path / "a.jsonl", CORPUS[:6]), _write_jsonl(tmp_path / "b.jsonl", CORPUS[6:]),
            _write_jsonl(tmp_path / "all.jsonl", CORPUS))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_build_then_add_equals_build_of_everything(halves, tmp_path):
    a, b, everything = halves
    built = Datastore.build(read_jsonl(a), tmp_path / "grown", sources=[str(a)])
    first = built.fingerprint
    grown = Datastore.add(tmp_path / "grown", read_jsonl(b), sources=[str(b)])
    scratch = Datastore.build((*read_jsonl(a), *read_jsonl(b)), tmp_path / "scratch", sources=[str(a), str(b)])
    assert list(grown) == list(scratch) == [Passage(**{"title": "", "group": r["id"], **r}) for r in CORPUS]
    for key in ("size", "languages", "groups", "multi_passage_groups", "fingerprint", "sources"):
        assert grown.meta[key] == scratch.meta[key], key
    assert grown.meta["groups"] == 4 and grown.meta["multi_passage_groups"] == 3
    assert [grown[r].id for r in grown.group_rows("moon")] == ["moon-en", "moon-de", "moon-es"]
    assert grown.row_of("tea-es") == 8 and grown.get("solo-en").group == "solo-en"
    # the fingerprint is a chain over the rows: it continues across the add
    state = b""
    for r in CORPUS:
        values = (r["id"], r["lang"], r.get("title", ""), r["text"], r.get("group", r["id"]))
        state = hashlib.sha256(state + ("\x1f".join(values) + "\x1f\x1e").encode()).digest()
        if r is CORPUS[5]:
            assert state.hex() == first
    assert grown.fingerprint == state.hex() != first
    assert grown.meta["segments"] == [{"size": 6, "fingerprint": first, "file": "passages.arrow"},
                                      {"size": 10, "fingerprint": grown.fingerprint, "file": "passages-1.arrow"}]
    assert scratch.meta["segments"] == [{"size": 10, "fingerprint": grown.fingerprint, "file": "passages.arrow"}]
    assert [grown.prefix_fingerprint(n) for n in (6, 10, 0, 5, 7, 11)] == [first, grown.fingerprint] + [None] * 4
    assert [scratch.prefix_fingerprint(n) for n in (6, 10)] == [None, grown.fingerprint]


def test_groups_counted_across_old_and_new_rows(tmp_path):
    old = [Passage("a", "en", "", "x", "g"), Passage("b", "en", "", "y", "h"), Passage("c", "de", "", "z", "k"),
           Passage("d", "de", "", "w", "k")]
    new = [Passage("e", "sw", "", "v", "g"), Passage("f", "sw", "", "u", "new"), Passage("g", "sw", "", "t", "k")]
    Datastore.build(old, tmp_path / "grown")
    grown = Datastore.add(tmp_path / "grown", new)
    scratch = Datastore.build(old + new, tmp_path / "scratch")
    assert (grown.meta["groups"], grown.meta["multi_passage_groups"]) == (4, 2) == (
        scratch.meta["groups"], scratch.meta["multi_passage_groups"])
    assert grown.languages == {"de": 2, "en": 2, "sw": 3}
    assert [grown[r].id for r in grown.group_rows("k")] == ["c", "d", "g"]


def test_three_segments_and_reload(halves, tmp_path):
    a, b, _ = halves
    Datastore.build(list(read_jsonl(a))[:3], tmp_path / "ds")
    Datastore.add(tmp_path / "ds", list(read_jsonl(a))[3:])
    ds = Datastore.add(tmp_path / "ds", read_jsonl(b))
    assert [s["size"] for s in ds.segments] == [3, 6, 10]
    assert sorted(os.listdir(tmp_path / "ds")) == [".add.lock", META_FILE, "passages-1.arrow", "passages-2.arrow",
                                                   "passages.arrow"]
    scratch = Datastore.build(read_jsonl(tmp_path / "all.jsonl"), tmp_path / "scratch")
    assert Datastore(tmp_path / "ds").fingerprint == scratch.fingerprint
    assert [p.id for p in Datastore(tmp_path / "ds").rows([9, 0, 4])] == ["solo-en", "nile-en", "moon-de"]
    assert list(Datastore(tmp_path / "ds").iter_batches(4, start=2, stop=7))[1]["id"] == ["tea-en"]


def test_duplicate_id_is_refused_naming_the_new_file_and_line_and_changes_nothing(halves, tmp_path):
    a, _, _ = halves
    Datastore.build(read_jsonl(a), tmp_path / "ds")
    before = _snapshot(tmp_path / "ds")
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "fresh", "lang": "en", "text": "x"},
                                                {"id": "moon-de", "lang": "de", "text": "again"}])
    with pytest.raises(DataFormatError, match=r"dup\.jsonl:2: field 'id' duplicate passage id 'moon-de': row 4 of "
                                              r"datastore .*ds already has it"):
        Datastore.add(tmp_path / "ds", read_jsonl(dup))
    twice = _write_jsonl(tmp_path / "twice.jsonl", [{"id": "n1", "lang": "en", "text": "x"},
                                                    {"id": "n1", "lang": "en", "text": "y"}])
    with pytest.raises(DataFormatError, match=r"twice\.jsonl:2: field 'id' duplicate passage id 'n1'"):
        Datastore.add(tmp_path / "ds", read_jsonl(twice))
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"id": "e", "lang": "en", "text": "  "}])
    with pytest.raises(DataFormatError, match=r"empty\.jsonl:1: field 'text' passage 'e' has empty text"):
        Datastore.add(tmp_path / "ds", read_jsonl(empty))
    assert _snapshot(tmp_path / "ds") == before
    assert sorted(os.listdir(tmp_path / "ds")) == [".add.lock", META_FILE, "passages.arrow"]


def test_interrupted_add_leaves_the_datastore_as_it_was(halves, tmp_path, monkeypatch):
    a, b, _ = halves
    Datastore.build(read_jsonl(a), tmp_path / "ds")
    before = _snapshot(tmp_path / "ds")

    def stops_midway():
        items = list(read_jsonl(b))
        yield items[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Datastore.add(tmp_path / "ds", stops_midway())
    assert _snapshot(tmp_path / "ds") == before

    # killed after the new file got its name but before datastore.json listed it: that file is not part of it
    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datastore_module, "atomic_write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        Datastore.add(tmp_path / "ds", read_jsonl(b))
    monkeypatch.undo()
    assert len(Datastore(tmp_path / "ds")) == 6 and Datastore(tmp_path / "ds").segments[-1]["size"] == 6
    grown = Datastore.add(tmp_path / "ds", read_jsonl(b))  # and the next add takes its place
    assert len(grown) == 10 and grown.fingerprint == Datastore.build(read_jsonl(tmp_path / "all.jsonl"),
                                                                     tmp_path / "scratch").fingerprint


def test_a_datastore_from_before_segments_loads_and_grows(halves, tmp_path):
    """datastore.json written by an older cora: no segments, the fingerprint one SHA-256 over every row."""
    a, b, everything = halves
    ds = Datastore.build(read_jsonl(a), tmp_path / "old")
    legacy = hashlib.sha256()
    for p in ds:
        for value in (p.id, p.lang, p.title, p.text, p.group):
            legacy.update(value.encode() + b"\x1f")
        legacy.update(b"\x1e")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    for key in ("segments", "fingerprint_scheme"):
        del meta[key]
    meta["fingerprint"] = legacy.hexdigest()
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    old = Datastore(tmp_path / "old")
    assert old.fingerprint == legacy.hexdigest() == old.prefix_fingerprint(6)
    assert old.prefix_fingerprint(5) is None
    grown = Datastore.add(tmp_path / "old", read_jsonl(b))
    assert grown.prefix_fingerprint(6) == legacy.hexdigest()  # an index built on the old datastore can catch up
    assert grown.fingerprint == Datastore.build(read_jsonl(everything), tmp_path / "scratch").fingerprint


@pytest.mark.parametrize("segments", [
    [{"size": 6, "fingerprint": "x", "file": "passages.arrow"}],  # not the datastore's fingerprint
    [{"size": 6, "fingerprint": "FP", "file": "../elsewhere.arrow"}],
    [{"size": 3, "fingerprint": "y", "file": "passages.arrow"}, {"size": 3, "fingerprint": "FP",
                                                                  "file": "passages-1.arrow"}],
    [],
    "passages.arrow",
])
def test_corrupt_segments_are_refused(halves, tmp_path, segments):
    Datastore.build(read_jsonl(halves[0]), tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / META_FILE).read_text())
    meta["segments"] = json.loads(json.dumps(segments).replace("FP", meta["fingerprint"]))
    (tmp_path / "ds" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CoraError, match="datastore.json is corrupt"):
        Datastore(tmp_path / "ds")


def test_a_missing_segment_file_is_one_line_error(halves, tmp_path):
    a, b, _ = halves
    Datastore.build(read_jsonl(a), tmp_path / "ds")
    Datastore.add(tmp_path / "ds", read_jsonl(b))
    (tmp_path / "ds" / "passages-1.arrow").unlink()
    with pytest.raises(CoraError, match=r"passages-1\.arrow is missing \(datastore\.json lists it\)"):
        Datastore(tmp_path / "ds")


def test_cli_add(halves, tmp_path, capsys):
    a, b, _ = halves
    ds = tmp_path / "ds"
    assert main(["datastore", "build", str(a), "--out", str(ds)]) == 0
    capsys.readouterr()
    assert main(["datastore", "add", str(ds), str(b)]) == 0
    out = capsys.readouterr().out
    assert "added       4 passages" in out and "passages    10 in 2 segments" in out
    assert main(["datastore", "add", str(ds), str(b)]) == 2
    assert "b.jsonl:1: field 'id' duplicate passage id 'tea-en': row 6 of datastore" in capsys.readouterr().err
    assert main(["datastore", "add", str(tmp_path / "nowhere"), str(b)]) == 2
    assert "is not a cora datastore" in capsys.readouterr().err
    assert Datastore(ds).meta["sources"] == [str(a), str(b)]


def test_cli_add_wiki_articles_with_their_links(tmp_path, capsys):
    """A language added later gets its groups from its own page_props dump; the counts per language add up."""
    from .test_wikidump import DE_ROWS, EN_ROWS, write_dump, write_wiki

    en = write_wiki(tmp_path / "en_wiki_00", [(12, "Berlin", "Berlin is a city."), (77, "Obscure", "No id.")])
    de = write_wiki(tmp_path / "de_wiki_00", [(5, "Berlin", "Berlin ist eine Stadt."), (9, "Nil", "Ein Fluss.")])
    en_dump = write_dump(tmp_path / "enwiki-20240601-page_props.sql.gz", EN_ROWS)
    de_dump = write_dump(tmp_path / "dewiki-20240601-page_props.sql.gz", DE_ROWS)
    ds = tmp_path / "ds"
    assert main(["datastore", "build", f"{en}=en", "--format", "wiki", "--out", str(ds),
                 "--page-props", str(en_dump)]) == 0
    assert main(["datastore", "add", str(ds), f"{de}=de", "--format", "wiki", "--langlinks", f"{de_dump}"]) == 2
    assert "groups come from page_props dumps: give --page-props" in capsys.readouterr().err
    assert main(["datastore", "add", str(ds), f"{de}=de", "--format", "wiki", "--page-props", str(de_dump)]) == 0
    grown = Datastore(ds)
    assert {p.id: p.group for p in grown} == {"enwiki:12:0": "Q64", "enwiki:77:0": "enwiki:77", "dewiki:5:0": "Q64",
                                              "dewiki:9:0": "Q3392"}
    assert grown.meta["links"]["languages"] == {"de": {"passages": 2, "linked": 2},
                                                "en": {"passages": 2, "linked": 1}}
    assert grown.meta["links"]["dumps"] == {"en": str(en_dump), "de": str(de_dump)}
    assert [grown[r].lang for r in grown.group_rows("Q64")] == ["en", "de"]


def test_one_add_at_a_time_and_only_into_a_datastore(halves, tmp_path):
    a, b, _ = halves
    Datastore.build(read_jsonl(a), tmp_path / "ds")
    with datastore_module._locked(tmp_path / "ds"):  # another add holds the datastore
        with pytest.raises(CoraError, match="another 'cora datastore add' is writing to"):
            Datastore.add(tmp_path / "ds", read_jsonl(b))
    assert len(Datastore.add(tmp_path / "ds", read_jsonl(b))) == 10
    (tmp_path / "plain").mkdir()
    with pytest.raises(CoraError, match="is not a cora datastore"):
        Datastore.add(tmp_path / "plain", read_jsonl(b))
    assert list((tmp_path / "plain").iterdir()) == []
