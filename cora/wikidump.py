"""Wikipedia's language links from its SQL dumps: a streaming reader for MediaWiki ``INSERT INTO`` dumps, and the
page -> group tables a ``--format wiki`` datastore takes its groups from.

Beside its articles, every Wikipedia publishes MySQL dumps of its tables. Two of them link pages across languages:

* ``{lang}wiki-{date}-page_props.sql.gz``: rows ``(pp_page, pp_propname, pp_value, pp_sortkey)``; the
  ``wikibase_item`` row of a page holds its Wikidata id (``Q42``), the same id in every language;
* ``{lang}wiki-{date}-langlinks.sql.gz``: rows ``(ll_from, ll_lang, ll_title)``: page ``ll_from`` of this wiki is
  the page titled ``ll_title`` in wiki ``ll_lang``.

A dump is gigabytes of multi-row INSERT statements. It is decoded in 1 MiB pieces and parsed a row at a time, so
memory stays bounded by the longest row, whatever the file's size. What is kept is one compact table per language:
page id -> Wikidata number in two sorted numpy arrays, 16 bytes a page (English Wikipedia links over 6M articles
to Wikidata; as a Python dict of int -> str that would take most of a gigabyte).
"""

from __future__ import annotations

import codecs
import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cora.errors import CoraError, DataFormatError
from cora.fileio import check_input_file

logger = logging.getLogger(__name__)

SqlValue = int | float | str | None

PIECE = 1 << 20  # characters decoded per read
MAX_ROW = 16 << 20  # a row longer than this is a malformed dump, not a long value (MySQL's packets are <= 16 MiB)

# Column order of the tables as MediaWiki creates them; used when a dump has no CREATE TABLE statement.
TABLE_COLUMNS = {
    "page_props": ("pp_page", "pp_propname", "pp_value", "pp_sortkey"),
    "langlinks": ("ll_from", "ll_lang", "ll_title"),
}

# A row: '(' then quoted strings (which may hold ')', '(' and ',') or anything but quotes and parentheses, then ')'
# and the ',' before the next row or the ';' that ends the statement. Strings take \-escapes and doubled quotes.
_STRING = r"'(?:[^'\\]++|\\.|'')*+'"  # possessive: a row that is cut off fails at once instead of backtracking
_ROW = re.compile(rf"\s*\(((?:{_STRING}|[^'()]++)*+)\)\s*([,;])", re.S)
_ONE = rf"\s*+(?:(?:_binary\s*+)?{_STRING}|NULL|[-+]?[0-9][0-9.eE+-]*+)\s*+"
_VALUES = re.compile(rf"(?:{_ONE},)*+{_ONE}", re.S)  # a whole row: values separated by commas
# The same value with its parts captured. Python 3.11's re gets capture spans wrong inside possessive repeats
# ("The span of capturing group is wrong"), so no capture sits inside one: rows are checked with _VALUES first.
_VALUE = re.compile(rf"\s*(?:(?:_binary\s*)?({_STRING})|(NULL)|([-+]?[0-9][0-9.eE+-]*))\s*", re.S)
_ESCAPE = re.compile(r"\\(.)|''", re.S)
# MySQL's escapes; for any other character "\x" is "x" (MySQL manual, "String Literals").
_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}
_COLUMN_LINE = re.compile(r"^\s*`([^`]+)`", re.M)
_QID = re.compile(r"Q([1-9][0-9]*)")


def unescape(body: str) -> str:
    """The text of a MySQL string literal's body (between its quotes): ``\\'`` -> ``'``, ``\\\\`` -> ``\\``,
    ``\\n`` -> newline, ``''`` -> ``'``, ..."""
    if "\\" not in body and "''" not in body:
        return body
    return _ESCAPE.sub(lambda m: "'" if m.group(1) is None else _ESCAPES.get(m.group(1), m.group(1)), body)


def parse_values(row: str, path: str | os.PathLike = "<row>", line: int | None = None) -> tuple[SqlValue, ...]:
    """The values between a row's parentheses: ``1,'a\\'b',NULL,2.5`` -> ``(1, "a'b", None, 2.5)``."""
    if _VALUES.fullmatch(row) is None:
        raise DataFormatError(path, line, f"cannot read a SQL value at {_first_bad(row)!r} (expected a quoted "
                              "string, a number or NULL, separated by commas)")
    values: list[SqlValue] = []
    for string, null, number in _VALUE.findall(row):
        if string:  # with its quotes, so never empty
            values.append(unescape(string[1:-1]))
        elif null:
            values.append(None)
        else:
            try:
                values.append(float(number) if any(c in number for c in ".eE") else int(number))
            except ValueError:
                raise DataFormatError(path, line, f"{number!r} is not a number") from None
    return tuple(values)


def _first_bad(row: str) -> str:
    """The text from where a row stops parsing (for the error message)."""
    pos = 0
    while (m := _VALUE.match(row, pos)) and m.end() < len(row) and row[m.end()] == ",":
        pos = m.end() + 1
    return row[pos:pos + 40] if m is None or m.end() != len(row) else row[-40:]


class _Text:
    """The decoded text of a (gzipped) file, read a piece at a time: ``text[pos:]`` is what is not yet consumed.
    Only the line number of ``pos`` is remembered of the text already consumed."""

    def __init__(self, path: Path, show_progress: bool = False):
        from tqdm.auto import tqdm

        self.path = path
        self._bar = tqdm(total=path.stat().st_size, desc=f"read {path.name}", unit="B", unit_scale=True,
                         disable=not show_progress)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._fh = gzip.GzipFile(fileobj=self._raw) if path.name.endswith(".gz") else self._raw
        # Only wikibase_item and langlinks values are kept, and Wikidata ids are ASCII: a stray invalid byte in some
        # other property's value (they are blobs) is no reason to fail a multi-gigabyte parse.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.pos, self.eof = "", 0, False
        self._mark, self._mark_line = 0, 1  # a position in text and its line number; moves forward only

    def more(self) -> bool:
        """Drop the consumed text and append the next piece; False at the end of the file."""
        if self.eof:
            return False
        self._mark_line, self._mark = self.line(self.pos), 0
        try:
            raw = self._fh.read(PIECE)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
            raise DataFormatError(self.path, self.line(len(self.text)),
                                  f"truncated or corrupt gzip file ({err})") from None
        self.text = self.text[self.pos:] + self._decoder.decode(raw, final=not raw)
        self.pos, self.eof = 0, not raw
        self._bar.update(self._raw.tell() - self._bar.n)
        return True

    def line(self, pos: int | None = None) -> int:
        """Line number of ``text[pos]`` (default: of ``pos``). Counting from the last position asked for keeps
        this linear over a piece; asking for an earlier position is allowed, and slower."""
        pos = self.pos if pos is None else pos
        if pos < self._mark:
            return self._mark_line - self.text.count("\n", pos, self._mark)
        self._mark_line += self.text.count("\n", self._mark, pos)
        self._mark = pos
        return self._mark_line

    def close(self) -> None:
        self._bar.close()
        self._fh.close()
        self._raw.close()


def _columns_of(create: str) -> list[str]:
    """Column names of a ``CREATE TABLE `t` ( ... )`` statement: its lines that start with a backquoted name."""
    body = create[create.index("(") + 1:]
    return _COLUMN_LINE.findall(body.split("\n)", 1)[0])


def iter_sql_rows(
    path: str | os.PathLike, table: str, columns: Sequence[str] | None = None, contains: str | None = None,
    show_progress: bool = False,
) -> Iterator[tuple[int, tuple[SqlValue, ...]]]:
    """``(line, values)`` for every row of every ``INSERT INTO `table` VALUES (...),(...);`` in a SQL dump (.gz
    too), streamed. With ``columns``, only those columns, in that order: their positions come from the dump's
    ``CREATE TABLE`` statement, or from MediaWiki's column order (:data:`TABLE_COLUMNS`) when it has none.

    Strings are unescaped (``\\'``, ``\\\\``, ``\\"``, ``\\n``, ``''``), numbers become int or float, NULL None.
    With ``contains``, rows whose SQL text does not hold that string are skipped without being parsed (a cheap
    filter: ``"'wikibase_item'"`` keeps a quarter of a page_props dump)."""
    path = check_input_file(path)
    header = f"INSERT INTO `{table}` VALUES"
    create = f"CREATE TABLE `{table}` ("
    names: list[str] | None = None
    picks: list[int] | None = None
    src = _Text(path, show_progress)
    inserts = False
    try:
        inside = False
        while True:
            if not inside:
                text, pos = src.text, src.pos
                start = text.find(header, pos)
                c = text.find(create, pos, start if start >= 0 else len(text))
                if c >= 0:
                    end = text.find("\n)", c)
                    if end < 0 and not src.eof:
                        src.pos = c  # the statement runs past this piece: read on, keeping it whole
                        src.more()
                        continue
                    names = _columns_of(text[c:] if end < 0 else text[c:end + 2])
                    src.pos = c + len(create)
                    continue
                if start < 0:
                    # a header, or a CREATE TABLE, may straddle the end of the piece
                    src.pos = max(pos, len(text) - max(len(header), len(create)))
                    if not src.more():
                        break
                    continue
                src.pos = start + len(header)
                inside = inserts = True
                if columns is not None and picks is None:
                    picks = _positions(columns, names, table, path, src.line(start))
            m = _ROW.match(src.text, src.pos)
            if m is None:
                if not src.eof and len(src.text) - src.pos < MAX_ROW:
                    src.more()
                    continue
                rest = src.text[src.pos:].lstrip()
                line = src.line(len(src.text) - len(rest))
                what = ("ends inside a row: is the dump truncated?" if src.eof and rest.startswith("(") else
                        f"expected a row '(...)' at {rest[:40]!r}: is this a MySQL dump?")
                raise DataFormatError(path, line, f"INSERT INTO `{table}` {what}")
            src.pos = m.end()
            inside = m.group(2) == ","
            if contains is not None and contains not in m.group(1):
                continue
            line = src.line(m.start(1))
            values = parse_values(m.group(1), path, line)
            if names is not None and len(values) != len(names):
                raise DataFormatError(path, line, f"a row of {len(values)} values where `{table}` has {len(names)} "
                                      f"columns ({', '.join(names)})")
            if picks is not None:
                if len(values) <= max(picks):
                    raise DataFormatError(path, line, f"a row of {len(values)} values; expected at least "
                                          f"{max(picks) + 1}")
                values = tuple(values[i] for i in picks)
            yield line, values
    finally:
        src.close()
    if not inserts:
        raise DataFormatError(path, None, f"holds no 'INSERT INTO `{table}`' statement; is this the {table} dump "
                              f"(a name ending in {table}.sql.gz)?")


def _positions(columns: Sequence[str], names: list[str] | None, table: str, path: Path, line: int) -> list[int]:
    known = names if names is not None else TABLE_COLUMNS.get(table)
    if known is None:
        raise DataFormatError(path, line, f"no CREATE TABLE `{table}` before its rows, so its columns are unknown")
    missing = [c for c in columns if c not in known]
    if missing:
        raise DataFormatError(path, line, f"table `{table}` has no column {', '.join(missing)} (its columns: "
                              f"{', '.join(known)}); is this the right dump?")
    return [list(known).index(c) for c in columns]


# ------------------------------------------------------------------------------------------ page tables
class PageTable:
    """page id -> value (a Wikidata id, or a title) read from one dump; sorted numpy keys, looked up by bisection."""

    def __init__(self, pages: np.ndarray, values: np.ndarray | list[str], qids: bool):
        order = np.argsort(pages, kind="stable")
        self._pages = pages[order]
        self._values = np.asarray(values)[order] if qids else [values[i] for i in order]
        self._qids = qids

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, page: int) -> str | None:
        i = int(np.searchsorted(self._pages, page))
        if i == len(self._pages) or self._pages[i] != page:
            return None
        return f"Q{int(self._values[i])}" if self._qids else self._values[i]


def _int_field(value: SqlValue, path: Path, line: int, name: str) -> int:
    if not isinstance(value, int):
        raise DataFormatError(path, line, f"must be an integer page id, got {value!r}", field=name)
    return value


def read_wikibase_items(path: str | os.PathLike, show_progress: bool = False) -> PageTable:
    """page id -> Wikidata id from a ``page_props`` dump (its ``wikibase_item`` rows; other properties skipped)."""
    path = Path(path)
    pages, numbers = _Growing(), _Growing()
    t0 = time.time()
    for line, (page, prop, value) in iter_sql_rows(path, "page_props", ("pp_page", "pp_propname", "pp_value"),
                                                 contains="'wikibase_item'", show_progress=show_progress):
        if prop != "wikibase_item":
            continue
        m = _QID.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise DataFormatError(path, line, f"wikibase_item of page {page} is {value!r}, not a Wikidata id "
                                  "(Q followed by digits)", field="pp_value")
        pages.append(_int_field(page, path, line, "pp_page"))
        numbers.append(int(m.group(1)))
    logger.info("%s: %d pages with a Wikidata id (%.0f s)", path, len(pages), time.time() - t0)
    return PageTable(pages.array(), numbers.array(), qids=True)


def read_langlinks(path: str | os.PathLike, target: str, show_progress: bool = False) -> PageTable:
    """page id -> title of the same page in wiki ``target`` (``en``), from a ``langlinks`` dump."""
    path = Path(path)
    pages, titles = _Growing(), []
    t0 = time.time()
    for line, (page, lang, title) in iter_sql_rows(path, "langlinks", ("ll_from", "ll_lang", "ll_title"),
                                                 contains=f"'{target}'", show_progress=show_progress):
        if lang != target:
            continue
        if not isinstance(title, str) or not title.strip():
            raise DataFormatError(path, line, f"page {page} links to {target} with no title", field="ll_title")
        pages.append(_int_field(page, path, line, "ll_from"))
        titles.append(normalize_title(title))
    logger.info("%s: %d pages linked to %swiki (%.0f s)", path, len(pages), target, time.time() - t0)
    return PageTable(pages.array(), titles, qids=False)


def normalize_title(title: str) -> str:
    """A page title as MediaWiki displays it: underscores are spaces, and the first letter is upper case."""
    title = " ".join(title.replace("_", " ").split())
    return title[:1].upper() + title[1:]


class _Growing:
    """An int64 array appended to a block at a time (a Python list of ints takes 36 bytes an item; this 8)."""

    def __init__(self, block: int = 1 << 16):
        self._blocks: list[np.ndarray] = []
        self._cur = np.empty(block, dtype=np.int64)
        self._n = 0

    def append(self, value: int) -> None:
        if self._n == len(self._cur):
            self._blocks.append(self._cur)
            self._cur = np.empty(len(self._cur), dtype=np.int64)
            self._n = 0
        self._cur[self._n] = value
        self._n += 1

    def __len__(self) -> int:
        return sum(len(b) for b in self._blocks) + self._n

    def array(self) -> np.ndarray:
        return np.concatenate([*self._blocks, self._cur[: self._n]])


# ------------------------------------------------------------------------------------------ linking
@dataclass(frozen=True)
class LinkDumps:
    """Where a wiki datastore's groups come from: one kind of dump per language, never both kinds in one store."""

    page_props: dict[str, Path] = field(default_factory=dict)  # lang -> page_props dump: group = Wikidata id
    langlinks: dict[str, Path] = field(default_factory=dict)  # lang -> langlinks dump: group = title in title_lang
    title_lang: str = "en"  # with langlinks, the wiki whose titles name the groups

    def __post_init__(self):
        if self.page_props and self.langlinks:
            raise CoraError("give page_props dumps (groups are Wikidata ids) or langlinks dumps (groups are "
                            f"{self.title_lang} titles), not both: a page grouped by its Wikidata id never meets one "
                            "grouped by its title")
        for path in (*self.page_props.values(), *self.langlinks.values()):
            check_input_file(path)

    def __bool__(self) -> bool:
        return bool(self.page_props or self.langlinks)


class WikiLinks:
    """The group of each WikiExtractor article from the dumps, and how many passages of each language got one.

    A language's dump is read the first time one of its articles is looked up, and kept for the rest of the build
    (WikiExtractor splits a language over many files)."""

    def __init__(self, dumps: LinkDumps, show_progress: bool = False):
        self.dumps = dumps
        self.show_progress = show_progress
        self._tables: dict[str, PageTable | None] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def _table(self, lang: str) -> PageTable | None:
        if lang not in self._tables:
            if lang in self.dumps.page_props:
                self._tables[lang] = read_wikibase_items(self.dumps.page_props[lang], self.show_progress)
            elif lang in self.dumps.langlinks:
                self._tables[lang] = read_langlinks(self.dumps.langlinks[lang], self.dumps.title_lang,
                                                    self.show_progress)
            else:
                self._tables[lang] = None
        return self._tables[lang]

    def group(self, lang: str, page_id: str, title: str) -> str | None:
        """The article's group: its Wikidata id, or ``{title_lang}wiki:{title}`` with langlinks (for an article of
        ``title_lang`` itself, its own title); None when the dumps do not link it."""
        if self.dumps.langlinks and lang == self.dumps.title_lang:
            return f"{lang}wiki:{normalize_title(title)}" if title.strip() else None
        table = self._table(lang)
        if table is None or not page_id.isdigit():
            return None
        found = table.get(int(page_id))
        if found is None:
            return None
        return found if self.dumps.page_props else f"{self.dumps.title_lang}wiki:{found}"

    def count(self, lang: str, passages: int, linked: bool) -> None:
        c = self.counts.setdefault(lang, {"passages": 0, "linked": 0})
        c["passages"] += passages
        c["linked"] += passages if linked else 0

    def report(self) -> dict:
        """For datastore.json: the dumps used, and per language the passages read and those that got a group."""
        kind = "page_props" if self.dumps.page_props else "langlinks"
        return {"source": kind, "dumps": {k: str(v) for k, v in getattr(self.dumps, kind).items()},
                **({"title_lang": self.dumps.title_lang} if kind == "langlinks" else {}),
                "languages": {lang: dict(c) for lang, c in sorted(self.counts.items())}}

    def log_report(self) -> None:
        for lang, c in sorted(self.counts.items()):
            share = 100 * c["linked"] / c["passages"] if c["passages"] else 0.0
            logger.info("language links %s: %d of %d passages have a group from the dumps (%.1f%%)",
                        lang, c["linked"], c["passages"], share)
