"""The passage datastore: readers for common formats, validation, and memory-mapped Arrow storage.

A passage is ``id, lang, title, text, group``. ``group`` links passages that are versions of the same content in
different languages (a Wikipedia language-link cluster, a Wikidata id, a parallel XQuAD paragraph); a passage
without one forms a group of its own (its id).

Storage is one Arrow stream file (``passages.arrow``) written batch by batch and opened with
``datasets.Dataset.from_file``, which memory-maps it: a 40M-passage store is never loaded into RAM. Beside it,
``datastore.json`` holds the counts per language, the sources and a content fingerprint (SHA-256 over every
passage in order) that indexes record, so an index is never searched against a different datastore.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cora.errors import CoraError, DataFormatError
from cora.fileio import (
    atomic_dir,
    atomic_write_json,
    check_input_file,
    iter_jsonl,
    iter_lines,
    only_holds,
    read_json,
)
from cora.languages import NO_SPACE_LANGS, base_code, check_language

logger = logging.getLogger(__name__)

PASSAGES_FILE = "passages.arrow"
META_FILE = "datastore.json"
FIELDS = ("id", "lang", "title", "text", "group")


@dataclass(frozen=True)
class Passage:
    id: str
    lang: str
    title: str
    text: str
    group: str


# ----------------------------------------------------------------------------------------------- readers
def _require_str(obj: dict, key: str, path, line, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataFormatError(path, line, "is missing", field=key)
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key in ("id", "group"):
        value = str(value)
    if not isinstance(value, str):
        raise DataFormatError(path, line, f"must be a string, got {type(value).__name__}", field=key)
    return value


def read_jsonl(path: str | os.PathLike, lang: str | None = None) -> Iterator[tuple[str, Passage]]:
    """Passages JSONL: one object per line with id, lang, title, text and optional group."""
    path = Path(path)
    for line_no, obj in iter_jsonl(path):
        pid = _require_str(obj, "id", path, line_no)
        plang = _require_str(obj, "lang", path, line_no, required=lang is None) or lang
        title = _require_str(obj, "title", path, line_no, required=False)
        text = _require_str(obj, "text", path, line_no)
        group = _require_str(obj, "group", path, line_no, required=False) or pid
        yield f"{path}:{line_no}", Passage(pid, plang, title, text, group)


TSV_COLUMNS = ("id", "text", "title", "lang", "group")


def _unquote_tsv(field: str) -> str:
    """DPR writes its TSV with csv quoting: a field wrapped in double quotes with its inner quotes doubled. Only
    such a field is unquoted; any other quote (an unclosed one, a leading '"Quoted" word') is text."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        inner = field[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field


def split_tsv_line(line: str, expected: int | None = None) -> list[str]:
    """One TSV line into fields. A record is one line, so a stray quote can never swallow the rows after it.
    When the plain split gives more fields than ``expected``, a tab may sit inside a quoted field: the line is
    re-read with csv quoting (strictly, and on its own)."""
    fields = line.split("\t")
    if expected is not None and len(fields) > expected and '"' in line:
        try:
            quoted = next(csv.reader([line], delimiter="\t", strict=True))
        except csv.Error:
            quoted = fields
        if len(quoted) == expected:
            return quoted
    return [_unquote_tsv(f) for f in fields]


def read_w100_tsv(path: str | os.PathLike, lang: str | None = None) -> Iterator[tuple[str, Passage]]:
    """DPR/CORA ``w100`` TSV: ``id, text, title`` plus an optional ``lang`` column; a header row is optional.

    One passage per line, every line with the same number of columns (the header's, or 3 or 4 without one): a
    row with more or fewer columns is an error naming the line, never silently cut or shifted."""
    path = Path(path)
    columns: list[str] | None = None
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        if columns is None:
            first = line.split("\t")
            if first[0].strip().lower() == "id":
                columns = [c.strip().lower() for c in first]
                unknown = [c for c in columns if c not in TSV_COLUMNS]
                if unknown or not {"id", "text"} <= set(columns) or len(set(columns)) != len(columns):
                    raise DataFormatError(path, line_no, f"header {columns} must name 'id' and 'text' once each "
                                          f"and only columns among {list(TSV_COLUMNS)}")
                continue
            if len(first) not in (3, 4):
                raise DataFormatError(path, line_no, f"{len(first)} tab-separated columns; without a header row a "
                                      "w100 TSV has 3 (id, text, title) or 4 (id, text, title, lang); add a header "
                                      f"naming the columns (among {', '.join(TSV_COLUMNS)})")
            columns = list(TSV_COLUMNS[: len(first)])
        row = split_tsv_line(line, len(columns))
        if len(row) != len(columns):
            raise DataFormatError(path, line_no, f"{len(row)} tab-separated columns where the file has "
                                  f"{len(columns)} ({', '.join(columns)})")
        rec = dict(zip(columns, row, strict=True))
        plang = rec.get("lang") or lang
        if not plang:
            raise DataFormatError(path, line_no, "no language column and no --lang given", field="lang")
        pid = rec["id"]
        yield f"{path}:{line_no}", Passage(pid, plang, rec.get("title", ""), rec["text"], rec.get("group") or pid)


@dataclass(frozen=True)
class SquadParagraph:
    article: int
    index: int
    title: str
    context: object  # the 'context' value as found (validated by the reader that uses it)
    qas: list
    passage_id: str
    group: str


def iter_squad_paragraphs(path: str | os.PathLike, articles: Iterable[int] | None = None) -> Iterator[SquadParagraph]:
    """Every paragraph of a SQuAD-format file with its passage id ``{file stem}:{article}:{paragraph}`` and its
    group (smallest question id, so parallel files such as XQuAD group across languages)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataFormatError(path, None, "not SQuAD format: expected an object with a 'data' list", field="data")
    keep = set(articles) if articles is not None else None
    stem = path.name.removesuffix(".gz").removesuffix(".json")
    for a, article in enumerate(data["data"]):
        if keep is not None and a not in keep:
            continue
        for p, para in enumerate(article.get("paragraphs", [])):
            pid = f"{stem}:{a}:{p}"
            qas = para.get("qas", [])
            qids = [str(q["id"]) for q in qas if "id" in q]
            yield SquadParagraph(a, p, str(article.get("title", "")), para.get("context"), qas, pid,
                                 f"q:{min(qids)}" if qids else pid)


def read_squad(
    path: str | os.PathLike, lang: str, keep_titles: bool = True, articles: Iterable[int] | None = None
) -> Iterator[tuple[str, Passage]]:
    """SQuAD-format JSON (XQuAD, TyDi GoldP, JaQuAD, ...): each paragraph becomes a passage.

    The group of a paragraph is its smallest question id, so paragraphs of parallel files that share question
    ids (XQuAD: the same ids in every language) form one group across languages without any extra table.
    Passage ids are ``{file stem}:{article}:{paragraph}``; ``articles`` restricts to those article indices.
    """
    for para in iter_squad_paragraphs(path, articles):
        if not isinstance(para.context, str):
            raise DataFormatError(path, None, f"data[{para.article}].paragraphs[{para.index}] has no string "
                                  "'context'", "context")
        title = para.title.replace("_", " ") if keep_titles else ""
        yield f"{path}: data[{para.article}].paragraphs[{para.index}]", Passage(
            para.passage_id, lang, title, para.context, para.group)


def chunk_text(text: str, lang: str, words: int = 100) -> list[str]:
    """Split an article into ~``words``-word passages.

    Space-delimited scripts: windows of ``words`` whitespace tokens. Scripts without spaces (ja, zh, th, km, lo,
    my, bo): windows of ``2 * words`` characters for ja/zh (one CJK character carries about half a word) and
    ``4 * words`` for the others (Thai/Khmer/Lao/Burmese words average about four characters). The last window is
    kept even when short, so no text is dropped.
    """
    code = base_code(lang)
    if code in NO_SPACE_LANGS:
        size = words * (2 if code in ("ja", "zh") else 4)
        flat = " ".join(text.split())
        return [flat[i : i + size] for i in range(0, len(flat), size)]
    tokens = text.split()
    return [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def read_wikiextractor(path: str | os.PathLike, lang: str, words: int = 100) -> Iterator[tuple[str, Passage]]:
    """WikiExtractor ``--json`` output (``{"id","url","title","text"}`` per line), chunked with :func:`chunk_text`.

    The group is the article's ``wikidata``/``group`` field when present (a language-link cluster), else the
    article itself (``{lang}wiki:{id}``).
    """
    path = Path(path)
    for line_no, obj in iter_jsonl(path):
        art_id = _require_str(obj, "id", path, line_no)
        title = _require_str(obj, "title", path, line_no, required=False)
        text = _require_str(obj, "text", path, line_no)
        if text.startswith(title):  # WikiExtractor repeats the title as the first line
            text = text[len(title) :]
        group = obj.get("wikidata") or obj.get("group") or f"{lang}wiki:{art_id}"
        for i, chunk in enumerate(chunk_text(text, lang, words)):
            yield f"{path}:{line_no}", Passage(f"{lang}wiki:{art_id}:{i}", lang, title, chunk, str(group))


FORMATS = ("jsonl", "w100", "squad", "wiki")


def guess_format(path: str | os.PathLike) -> str:
    name = Path(path).name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return "w100"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "squad"
    raise CoraError(f"cannot tell the format of {path} from its name; pass --format ({'|'.join(FORMATS)})")


def read_source(
    path: str | os.PathLike, fmt: str = "auto", lang: str | None = None, keep_titles: bool = True
) -> Iterator[tuple[str, Passage]]:
    """Read one source file in any supported format as ``(location, passage)`` pairs."""
    check_input_file(path)
    fmt = guess_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return read_jsonl(path, lang)
    if fmt == "w100":
        return read_w100_tsv(path, lang)
    if fmt in ("squad", "wiki") and not lang:
        raise CoraError(f"{path}: {fmt} files carry no language; give it as {path}=LANG or with --lang")
    if fmt == "squad":
        return read_squad(path, lang, keep_titles=keep_titles)
    if fmt == "wiki":
        return read_wikiextractor(path, lang)
    raise CoraError(f"unknown format '{fmt}'; choose one of {FORMATS}")


# ------------------------------------------------------------------------------------------- datastore
def is_datastore(folder: str | os.PathLike) -> bool:
    """A folder that holds a datastore and nothing else: the only kind ``--overwrite`` may replace."""
    return only_holds(Path(folder), META_FILE, (META_FILE, PASSAGES_FILE))


def _schema():
    import pyarrow as pa

    return pa.schema([(f, pa.string()) for f in FIELDS])


class Datastore:
    """A read-only, memory-mapped passage collection. Row numbers are the index's vector ids."""

    def __init__(self, path: str | os.PathLike):
        from datasets import Dataset

        self.path = Path(path)
        meta_path, data_path = self.path / META_FILE, self.path / PASSAGES_FILE
        if not meta_path.exists() or not data_path.exists():
            raise CoraError(f"{self.path} is not a cora datastore (no {META_FILE}); build one with "
                            "'cora datastore build'")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(self.meta, dict) or not isinstance(self.meta.get("size"), int) or \
                    not isinstance(self.meta.get("fingerprint"), str) or \
                    not isinstance(self.meta.get("languages"), dict):
                raise ValueError("size, fingerprint or languages missing")
        except (ValueError, UnicodeDecodeError) as err:
            raise CoraError(f"{meta_path} is corrupt ({str(err).splitlines()[0][:80]}); rebuild the datastore "
                            "with 'cora datastore build'") from None
        try:
            self.dataset = Dataset.from_file(str(data_path), in_memory=False)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise CoraError(f"{data_path} is corrupt or truncated ({type(err).__name__}); rebuild the datastore "
                            "with 'cora datastore build'") from None
        if len(self.dataset) != self.meta["size"]:
            raise CoraError(f"{self.path}: {len(self.dataset)} rows but {META_FILE} says {self.meta['size']}; "
                            "the datastore is corrupt, rebuild it")
        self._row_of: dict[str, int] | None = None
        self._groups: dict[str, list[int]] | None = None

    # --- building
    @classmethod
    def build(
        cls,
        passages: Iterable[Passage | tuple[str, Passage]],
        out: str | os.PathLike,
        overwrite: bool = False,
        sources: list[str] | None = None,
        batch_size: int = 10_000,
    ) -> Datastore:
        """Validate and write passages to ``out`` (atomically: the folder appears only when complete)."""
        import pyarrow as pa

        schema = _schema()
        seen: set[str] = set()  # ids only: locations of 40M passages would not fit comfortably
        langs: Counter = Counter()
        groups: set[str] = set()
        multi: Counter = Counter()
        digest = hashlib.sha256()
        with atomic_dir(out, overwrite=overwrite, is_kind=is_datastore, kind="datastore") as tmp:
            with pa.OSFile(str(tmp / PASSAGES_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                cols: dict[str, list[str]] = {f: [] for f in FIELDS}

                def flush():
                    if cols["id"]:
                        writer.write_batch(pa.record_batch([pa.array(cols[f], pa.string()) for f in FIELDS],
                                                           schema=schema))
                        for f in FIELDS:
                            cols[f].clear()

                for item in passages:
                    where, p = item if isinstance(item, tuple) else ("<input>", item)
                    _validate(p, where, seen)
                    check_language(p.lang, where)
                    seen.add(p.id)
                    langs[p.lang] += 1
                    groups.add(p.group)
                    multi[p.group] += 1
                    for f in FIELDS:
                        value = getattr(p, f)
                        cols[f].append(value)
                        digest.update(value.encode("utf-8"))
                        digest.update(b"\x1f")
                    digest.update(b"\x1e")
                    if len(cols["id"]) >= batch_size:
                        flush()
                flush()
            if not seen:
                raise CoraError("no passages read: the sources are empty")
            meta = {
                "size": len(seen),
                "languages": dict(sorted(langs.items())),
                "groups": len(groups),
                "multi_passage_groups": sum(1 for c in multi.values() if c > 1),
                "fingerprint": digest.hexdigest(),
                "sources": sources or [],
            }
            atomic_write_json(tmp / META_FILE, meta)
        logger.info("datastore %s: %d passages, %d languages, %d groups", out, len(seen), len(langs), len(groups))
        return cls(out)

    # --- reading
    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int) -> Passage:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for a datastore of {len(self)} passages")
        return Passage(**self.dataset[int(row)])

    def rows(self, rows: Iterable[int]) -> list[Passage]:
        rows = [int(r) for r in rows]
        if not rows:
            return []
        batch = self.dataset[rows]
        return [Passage(*(batch[f][i] for f in FIELDS)) for i in range(len(rows))]

    def __iter__(self) -> Iterator[Passage]:
        for batch in self.iter_batches():
            yield from (Passage(*(batch[f][i] for f in FIELDS)) for i in range(len(batch["id"])))

    def iter_batches(self, batch_size: int = 1000, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Column batches (dicts of lists) over rows [start, stop), streamed from the memory map."""
        stop = len(self) if stop is None else min(stop, len(self))
        for s in range(start, stop, batch_size):
            yield self.dataset[s : min(s + batch_size, stop)]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def languages(self) -> dict[str, int]:
        return dict(self.meta["languages"])

    def row_of(self, passage_id: str) -> int:
        if self._row_of is None:
            self._row_of = {pid: i for i, pid in enumerate(self.dataset["id"])}
        try:
            return self._row_of[passage_id]
        except KeyError:
            raise KeyError(f"passage id {passage_id!r} is not in datastore {self.path}") from None

    def get(self, passage_id: str) -> Passage:
        return self[self.row_of(passage_id)]

    def group_rows(self, group: str) -> list[int]:
        """Rows of every passage in ``group`` (all its language versions)."""
        if self._groups is None:
            self._groups = {}
            for i, g in enumerate(self.dataset["group"]):
                self._groups.setdefault(g, []).append(i)
        return list(self._groups.get(group, []))

    def info(self) -> dict:
        return {"path": str(self.path), **self.meta}


def _validate(p: Passage, where: str, seen: set[str]) -> None:
    path, _, line = where.rpartition(":")
    line_no = int(line) if line.isdigit() else None
    path = path if line_no is not None else where
    if not p.id:
        raise DataFormatError(path, line_no, "is empty", field="id")
    if not p.lang:
        raise DataFormatError(path, line_no, "is empty", field="lang")
    if not p.text or not p.text.strip():
        raise DataFormatError(path, line_no, f"passage {p.id!r} has empty text; remove it or fill it", field="text")
    if p.id in seen:
        raise DataFormatError(path, line_no, f"duplicate passage id {p.id!r} (seen earlier in the input); "
                              "ids must be unique", field="id")


def passage_dict(p: Passage) -> dict:
    return asdict(p)
