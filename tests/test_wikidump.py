"""Language links from Wikipedia's SQL dumps: the streaming MySQL INSERT parser on tricky rows, page_props and
langlinks tables, and a 3-language wiki datastore whose groups come from page_props dumps."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from cora import wikidump
from cora.cli import main
from cora.datastore import Datastore, read_source
from cora.errors import CoraError, DataFormatError
from cora.wikidump import (
    LinkDumps,
    WikiLinks,
    iter_sql_rows,
    parse_values,
    read_langlinks,
    read_wikibase_items,
    unescape,
)

# The head of a real page_props dump (mysqldump 10.19), trimmed: comments, a DROP/CREATE TABLE whose column list holds
# quotes and parentheses, then LOCK TABLES and the multi-row INSERTs, one statement per line.
HEAD = """-- MySQL dump 10.19  Distrib 10.3.38-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: 10.64.0.1    Database: {db}
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
DROP TABLE IF EXISTS `page_props`;
CREATE TABLE `page_props` (
  `pp_page` int(10) unsigned NOT NULL,
  `pp_propname` varbinary(60) NOT NULL DEFAULT '',
  `pp_value` blob NOT NULL,
  `pp_sortkey` float DEFAULT NULL,
  PRIMARY KEY (`pp_page`,`pp_propname`),
  UNIQUE KEY `pp_propname_page` (`pp_propname`,`pp_page`)
) ENGINE=InnoDB DEFAULT CHARSET=binary ROW_FORMAT=COMPRESSED;
/*!40101 SET character_set_client = @saved_cs_client */;
LOCK TABLES `page_props` WRITE;
"""
TAIL = "UNLOCK TABLES;\n-- Dump completed on 2024-06-02  2:11:07\n"

# Rows as mysqldump writes them: \' \\ \" escapes, strings holding '),(' and parentheses, NULL, floats.
EN_ROWS = [
    r"INSERT INTO `page_props` VALUES (12,'defaultsort','Berlin, City (of) \'Germany\'),(13,\'x\'',NULL),"
    r"(12,'wikibase_item','Q64',NULL),(30,'page_image_free','Nile_\"delta\"_\\_1.jpg',1.5e3)",
    r"INSERT INTO `page_props` VALUES (30,'wikibase_item','Q3392',NULL),(77,'page_image_free','A_(b)\'s.jpg',"
    r"NULL),(99,'wikibase_item','Q5',-2)",
]
DE_ROWS = [r"INSERT INTO `page_props` VALUES (5,'wikibase_item','Q64',NULL),(5,'wikibase-shortdesc',"
           r"'Hauptstadt \"Deutschlands\" (DE)',NULL),(9,'wikibase_item','Q3392',0.25)"]
SW_ROWS = [r"INSERT INTO `page_props` VALUES (3,'wikibase_item','Q64',NULL),(8,'wikibase_item','Q3392',NULL),"
           r"(21,'notoc','',NULL),(22,'displaytitle','Zürich ‘東京’',NULL)"]


def write_dump(path, statements, db="enwiki", head=HEAD, tail=TAIL):
    """A gzipped dump: ``head``, each INSERT statement on its own line ending in ';', then ``tail``."""
    text = head.format(db=db) + "".join(s + ";\n" for s in statements) + tail
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


def write_wiki(path, articles):
    """WikiExtractor --json output: the text starts with the title, as WikiExtractor writes it."""
    path.write_text("".join(json.dumps({"id": str(i), "url": f"https://x.wikipedia.org/wiki?curid={i}",
                                        "title": t, "text": f"{t}\n\n{body}"}, ensure_ascii=False) + "\n"
                            for i, t, body in articles), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ the parser
@pytest.mark.parametrize("row, values", [
    (r"12,'wikibase_item','Q64',NULL", (12, "wikibase_item", "Q64", None)),
    (r"1,'O\'Brien',-3,2.5", (1, "O'Brien", -3, 2.5)),
    (r"1,'a),(b','(c)'", (1, "a),(b", "(c)")),
    (r"'C:\\dir\\','say \"hi\"'", ("C:\\dir\\", 'say "hi"')),
    (r"'tab\there\nline\0end\Z','100\%'", ("tab\there\nline\0end\x1a", "100%")),
    (r"'it''s','',''''", ("it's", "", "'")),
    (r"'\\\'','\\'", ("\\'", "\\")),
    (r" 7 , _binary 'Q1' ,NULL ", (7, "Q1", None)),
    (r"1.5e3,-0.25,0", (1500.0, -0.25, 0)),
    ("'Zürich ‘東京’'", ("Zürich ‘東京’",)),
])
def test_parse_values_exact(row, values):
    got = parse_values(row)
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]


@pytest.mark.parametrize("row, at", [
    ("1,", ""), ("1,x", "x"), ("'open", "'open"), ("1 2", "1 2"), (r"'a\'", r"'a\'"), ("", ""),
])
def test_parse_values_refuses_malformed_rows(row, at):
    with pytest.raises(DataFormatError, match=re.escape(f"dump.sql:4: cannot read a SQL value at {at!r} (")):
        parse_values(row, "dump.sql", 4)


def test_unescape_leaves_plain_text_alone():
    assert unescape("plain") == "plain"
    assert unescape(r"a\'b\\c''d\qe") == "a'b\\c'dqe"  # an unknown escape drops its backslash, as MySQL does


EN_EXPECTED = [
    (16, (12, "defaultsort", "Berlin, City (of) 'Germany'),(13,'x'", None)),
    (16, (12, "wikibase_item", "Q64", None)),
    (16, (30, "page_image_free", 'Nile_"delta"_\\_1.jpg', 1500.0)),
    (17, (30, "wikibase_item", "Q3392", None)),
    (17, (77, "page_image_free", "A_(b)'s.jpg", None)),
    (17, (99, "wikibase_item", "Q5", -2)),
]


@pytest.mark.parametrize("piece", [3, 17, 1 << 20])
def test_rows_are_the_same_whatever_the_piece_size(tmp_path, monkeypatch, piece):
    """A piece boundary may fall inside a header, a row, an escape or a UTF-8 character: the rows do not change."""
    dump = write_dump(tmp_path / "enwiki-20240601-page_props.sql.gz", EN_ROWS + SW_ROWS[:1])
    monkeypatch.setattr(wikidump, "PIECE", piece)
    rows = list(iter_sql_rows(dump, "page_props"))
    assert rows[:6] == EN_EXPECTED
    assert rows[6:] == [(18, (3, "wikibase_item", "Q64", None)), (18, (8, "wikibase_item", "Q3392", None)),
                        (18, (21, "notoc", "", None)), (18, (22, "displaytitle", "Zürich ‘東京’", None))]


def test_other_tables_are_skipped_and_columns_follow_create_table(tmp_path):
    head = HEAD.replace("  `pp_page` int(10) unsigned NOT NULL,\n  `pp_propname` varbinary(60) NOT NULL DEFAULT '',\n",
                        "  `pp_propname` varbinary(60) NOT NULL DEFAULT '',\n  `pp_page` int(10) unsigned NOT NULL,\n")
    other = "INSERT INTO `page` VALUES (1,0,'Q9','wikibase_item')"
    dump = write_dump(tmp_path / "p.sql.gz", [other, "INSERT INTO `page_props` VALUES ('wikibase_item',4,'Q7',NULL)"],
                      head=head)
    assert list(iter_sql_rows(dump, "page_props", ("pp_page", "pp_value"))) == [(17, (4, "Q7"))]
    assert read_wikibase_items(dump).get(4) == "Q7"


def test_a_dump_without_create_table_uses_mediawikis_column_order(tmp_path):
    dump = tmp_path / "p.sql"
    dump.write_text("INSERT INTO `page_props` VALUES (4,'wikibase_item','Q7',NULL),(5,'x','y',NULL);\n",
                    encoding="utf-8")
    assert list(iter_sql_rows(dump, "page_props", ("pp_page", "pp_value"))) == [(1, (4, "Q7")), (1, (5, "y"))]


def test_wikibase_items_table(tmp_path):
    table = read_wikibase_items(write_dump(tmp_path / "enwiki-page_props.sql.gz", EN_ROWS))
    assert len(table) == 3
    assert [table.get(p) for p in (12, 30, 99, 77, 13, 0, 100)] == ["Q64", "Q3392", "Q5", None, None, None, None]


@pytest.mark.parametrize("statements, message", [
    ([r"INSERT INTO `page_props` VALUES (1,'wikibase_item','Q1',NULL),(2,'wikibase_item','Q2"],
     r"p\.sql\.gz:16: INSERT INTO `page_props` ends inside a row: is the dump truncated\?"),
    (["INSERT INTO `page_props` VALUES (1,'wikibase_item','Q1',NULL),\n(2,'wikibase_item','L7',NULL)"],
     r"p\.sql\.gz:17: field 'pp_value' wikibase_item of page 2 is 'L7', not a Wikidata id"),
    (["INSERT INTO `page_props` VALUES (1,'wikibase_item','Q1')"],
     r"p\.sql\.gz:16: a row of 3 values where `page_props` has 4 columns"),
    (["INSERT INTO `page_props` VALUES ('x','wikibase_item','Q1',NULL)"],
     r"p\.sql\.gz:16: field 'pp_page' must be an integer page id, got 'x'"),
    (["INSERT INTO `page_props` VALUES 1,'wikibase_item','Q1',NULL"],
     r"p\.sql\.gz:16: INSERT INTO `page_props` expected a row '\(\.\.\.\)' at \"1,'wikibase_item'"),
    (["INSERT INTO `langlinks` VALUES (1,'de','Berlin')"],
     r"p\.sql\.gz: holds no 'INSERT INTO `page_props`' statement; is this the page_props dump"),
])
def test_malformed_dumps_name_file_and_line(tmp_path, statements, message):
    text = HEAD.format(db="x") + "".join(s + ";\n" for s in statements)
    if "ends inside" in message:
        text = text.rstrip(";\n")  # the file stops mid-row
    path = tmp_path / "p.sql.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    with pytest.raises(DataFormatError, match=message):
        read_wikibase_items(path)


def test_corrupt_gzip_is_one_line_error(tmp_path):
    path = write_dump(tmp_path / "p.sql.gz", EN_ROWS)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFormatError, match=r"p\.sql\.gz:\d+: truncated or corrupt gzip file"):
        read_wikibase_items(path)


# ------------------------------------------------------------------------------- a 3-language datastore
BERLIN_EN = " ".join(f"w{i}" for i in range(150))  # two passages of 100 and 50 words


@pytest.fixture()
def wiki(tmp_path):
    """WikiExtractor output and page_props dumps for en, de and sw, named as Wikimedia names them."""
    d = tmp_path / "wiki"
    d.mkdir()
    files = {
        "en": write_wiki(d / "en_wiki_00", [(12, "Berlin", BERLIN_EN), (30, "Nile", "The Nile is a river."),
                                           (77, "Obscure Page", "A page with no Wikidata id.")]),
        "de": write_wiki(d / "de_wiki_00", [(5, "Berlin", "Berlin ist die Hauptstadt."), (9, "Nil", "Der Nil.")]),
        "sw": write_wiki(d / "sw_wiki_00", [(3, "Berlin", "Berlin ni mji mkuu."), (8, "Mto Naili", "Mto mrefu."),
                                           (21, "Ukurasa", "Ukurasa bila kiungo.")]),
    }
    dumps = {
        "en": write_dump(d / "enwiki-20240601-page_props.sql.gz", EN_ROWS, "enwiki"),
        "de": write_dump(d / "dewiki-20240601-page_props.sql.gz", DE_ROWS, "dewiki"),
        "sw": write_dump(d / "swwiki-20240601-page_props.sql.gz", SW_ROWS, "swwiki"),
    }
    return files, dumps


EXPECTED_GROUPS = {
    "enwiki:12:0": "Q64", "enwiki:12:1": "Q64", "enwiki:30:0": "Q3392", "enwiki:77:0": "enwiki:77",
    "dewiki:5:0": "Q64", "dewiki:9:0": "Q3392",
    "swwiki:3:0": "Q64", "swwiki:8:0": "Q3392", "swwiki:21:0": "swwiki:21",
}
EXPECTED_LINKS = {"en": {"passages": 4, "linked": 3}, "de": {"passages": 2, "linked": 2},
                  "sw": {"passages": 3, "linked": 2}}


def test_build_a_three_language_wiki_datastore_with_groups_from_page_props(wiki, tmp_path):
    files, dumps = wiki
    links = WikiLinks(LinkDumps(page_props=dumps))
    sources = [read_source(files[lang], "wiki", lang, links=links) for lang in ("en", "de", "sw")]
    ds = Datastore.build((item for s in sources for item in s), tmp_path / "ds",
                         extra_info=lambda: {"links": links.report()})
    assert {p.id: p.group for p in ds} == EXPECTED_GROUPS
    assert ds.languages == {"de": 2, "en": 4, "sw": 3}
    assert ds.meta["groups"] == 4 and ds.meta["multi_passage_groups"] == 2
    assert ds.meta["links"]["languages"] == EXPECTED_LINKS
    assert ds.meta["links"]["source"] == "page_props"
    # the groups serve projection and the loop's link expansion: every language version of Berlin
    assert [ds[r].id for r in ds.group_rows("Q64")] == ["enwiki:12:0", "enwiki:12:1", "dewiki:5:0", "swwiki:3:0"]
    assert [(ds[r].lang, ds[r].title) for r in ds.group_rows("Q3392")] == [
        ("en", "Nile"), ("de", "Nil"), ("sw", "Mto Naili")]


def test_cli_build_with_page_props_reports_links_per_language(wiki, tmp_path, capsys):
    files, dumps = wiki
    out = tmp_path / "ds"
    assert main(["datastore", "build", *(f"{files[lang]}={lang}" for lang in ("en", "de", "sw")), "--format", "wiki",
                 "--out", str(out), *(a for lang in ("en", "de", "sw") for a in ("--page-props", str(dumps[lang])))
                 ]) == 0
    printed = capsys.readouterr().out
    assert "en           4         3 (75.0%)" in printed and "sw           3         2 (66.7%)" in printed
    ds = Datastore(out)
    assert {p.id: p.group for p in ds} == EXPECTED_GROUPS
    assert ds.meta["links"]["languages"] == EXPECTED_LINKS
    assert ds.meta["links"]["dumps"] == {lang: str(dumps[lang]) for lang in ("en", "de", "sw")}


def test_cli_refuses_dumps_it_cannot_use(wiki, tmp_path, capsys):
    files, dumps = wiki
    base = ["datastore", "build", f"{files['de']}=de", "--out", str(tmp_path / "ds")]
    cases = [
        (["--format", "wiki", "--page-props", str(dumps["en"])], "dumps given for en but no source in that language"),
        (["--page-props", str(dumps["de"])], "pass --format wiki"),
        (["--format", "wiki", "--page-props", str(dumps["de"]), "--langlinks", str(dumps["de"])], "not both"),
        (["--format", "wiki", "--page-props", str(tmp_path / "links.sql.gz")], "cannot tell the language"),
        (["--format", "wiki", "--page-props", str(dumps["de"]), "--page-props", f"{dumps['en']}=de"],
         "two dumps for 'de'"),
    ]
    for extra, message in cases:
        assert main(base + extra) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


LL_DE = [r"INSERT INTO `langlinks` VALUES (5,'en','Berlin'),(5,'fr','Berlin'),(9,'en','Nile'),"
         r"(9,'sw','Mto_Naili'),(14,'en','O\'Brien')"]
LL_SW = [r"INSERT INTO `langlinks` VALUES (3,'en','Berlin'),(8,'de','Nil'),(8,'en','nile')"]


def test_langlinks_group_by_english_title(wiki, tmp_path):
    files, _ = wiki
    head = "CREATE TABLE `langlinks` (\n  `ll_from` int(8) unsigned NOT NULL DEFAULT 0,\n  `ll_lang` varbinary(35) " \
           "NOT NULL DEFAULT '',\n  `ll_title` varbinary(255) NOT NULL DEFAULT '',\n  PRIMARY KEY (`ll_from`," \
           "`ll_lang`)\n) ENGINE=InnoDB;\n"
    de = write_dump(tmp_path / "dewiki-20240601-langlinks.sql.gz", LL_DE, head=head, tail="")
    sw = write_dump(tmp_path / "swwiki-20240601-langlinks.sql.gz", LL_SW, head=head, tail="")
    table = read_langlinks(de, "en")
    assert [table.get(p) for p in (5, 9, 14, 8)] == ["Berlin", "Nile", "O'Brien", None]
    links = WikiLinks(LinkDumps(langlinks={"de": de, "sw": sw}))
    ds = Datastore.build((item for lang in ("en", "de", "sw") for item in read_source(files[lang], "wiki", lang,
                                                                                        links=links)),
                         tmp_path / "ds", extra_info=lambda: {"links": links.report()})
    assert {p.id: p.group for p in ds} == {
        "enwiki:12:0": "enwiki:Berlin", "enwiki:12:1": "enwiki:Berlin", "enwiki:30:0": "enwiki:Nile",
        "enwiki:77:0": "enwiki:Obscure Page", "dewiki:5:0": "enwiki:Berlin", "dewiki:9:0": "enwiki:Nile",
        "swwiki:3:0": "enwiki:Berlin", "swwiki:8:0": "enwiki:Nile", "swwiki:21:0": "swwiki:21"}
    assert ds.meta["links"]["source"] == "langlinks" and ds.meta["links"]["title_lang"] == "en"
    assert ds.meta["links"]["languages"]["sw"] == {"passages": 3, "linked": 2}


def test_page_props_and_langlinks_are_not_mixed(wiki):
    _, dumps = wiki
    with pytest.raises(CoraError, match="not both"):
        LinkDumps(page_props={"de": dumps["de"]}, langlinks={"sw": dumps["sw"]})
