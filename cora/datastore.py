"""The passage datastore: readers for common formats, validation, and memory-mapped Arrow storage.

A passage is ``id, lang, title, text, group``. ``group`` links passages that are versions of the same content in
different languages (a Wikipedia language-link cluster, a Wikidata id, a parallel XQuAD paragraph); a passage
without one forms a group of its own (its id).

Storage is an Arrow stream file (``passages.arrow``) written batch by batch and opened with
``datasets.Dataset.from_file``, which memory-maps it: a 40M-passage store is never loaded into RAM. Beside it,
``datastore.json`` holds the counts per language, the sources and a content fingerprint that indexes record, so an
index is never searched against a different datastore.

A datastore grows with :meth:`Datastore.add` (``cora datastore add``): the new passages go to a new file
(``passages-1.arrow``, ...), listed with the size and fingerprint after it in ``datastore.json``'s ``segments``;
rewriting that one file is the commit, so an interrupted add leaves the datastore as it was. The fingerprint is a
SHA-256 chain over the rows (``h = sha256(h + row)``), so it continues across an add: build(A) + add(B) has the
fingerprint of build(A + B), and :meth:`Datastore.prefix_fingerprint` tells an index built on A that the grown
datastore starts with A.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cora.errors import CoraError, DataFormatError
from cora.fileio import (
    atomic_dir,
    atomic_write_json,
    check_input_file,
    iter_jsonl,
    iter_lines,
    read_json,
)
from cora.languages import NO_SPACE_LANGS, base_code, check_language

if TYPE_CHECKING:
    from cora.wikidump import WikiLinks

logger = logging.getLogger(__name__)

PASSAGES_FILE = "passages.arrow"
META_FILE = "datastore.json"
FIELDS = ("id", "lang", "title", "text", "group")
SEGMENT_FILE = re.compile(r"passages(-[1-9][0-9]*)?\.arrow")  # passages.arrow, then passages-1.arrow, ... per add
FINGERPRINT_SCHEME = "sha256-row-chain"  # without it (written before 'add' existed): one SHA-256 over all rows


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


def read_wikiextractor(
    path: str | os.PathLike, lang: str, words: int = 100, links: WikiLinks | None = None
) -> Iterator[tuple[str, Passage]]:
    """WikiExtractor ``--json`` output (``{"id","url","title","text"}`` per line), chunked with :func:`chunk_text`.

    The group is the article's ``wikidata``/``group`` field when present (a language-link cluster); else, with
    ``links`` (Wikipedia's page_props or langlinks dumps, :mod:`cora.wikidump`), the Wikidata id of page ``id`` (or
    its English title); else the article itself (``{lang}wiki:{id}``). ``links`` counts the passages it grouped.
    """
    path = Path(path)
    for line_no, obj in iter_jsonl(path):
        art_id = _require_str(obj, "id", path, line_no)
        title = _require_str(obj, "title", path, line_no, required=False)
        text = _require_str(obj, "text", path, line_no)
        if text.startswith(title):  # WikiExtractor repeats the title as the first line
            text = text[len(title) :]
        linked = links.group(lang, art_id, title) if links is not None else None
        group = obj.get("wikidata") or obj.get("group") or linked or f"{lang}wiki:{art_id}"
        chunks = chunk_text(text, lang, words)
        if links is not None:
            links.count(lang, len(chunks), linked is not None)
        for i, chunk in enumerate(chunks):
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
    path: str | os.PathLike, fmt: str = "auto", lang: str | None = None, keep_titles: bool = True,
    links: WikiLinks | None = None,
) -> Iterator[tuple[str, Passage]]:
    """Read one source file in any supported format as ``(location, passage)`` pairs. ``links`` (language links
    from Wikipedia's dumps) applies to ``wiki`` sources only."""
    check_input_file(path)
    fmt = guess_format(path) if fmt == "auto" else fmt
    if links is not None and fmt != "wiki":
        raise CoraError(f"{path}: language links from Wikipedia's dumps apply to WikiExtractor (wiki) sources, "
                        f"not {fmt}")
    if fmt == "jsonl":
        return read_jsonl(path, lang)
    if fmt == "w100":
        return read_w100_tsv(path, lang)
    if fmt in ("squad", "wiki") and not lang:
        raise CoraError(f"{path}: {fmt} files carry no language; give it as {path}=LANG or with --lang")
    if fmt == "squad":
        return read_squad(path, lang, keep_titles=keep_titles)
    if fmt == "wiki":
        return read_wikiextractor(path, lang, links=links)
    raise CoraError(f"unknown format '{fmt}'; choose one of {FORMATS}")


# ------------------------------------------------------------------------------------------- datastore
def is_datastore(folder: str | os.PathLike) -> bool:
    """A folder that holds a datastore and nothing else: the only kind ``--overwrite`` may replace."""
    folder = Path(folder)
    entries = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    return META_FILE in entries and all(n == META_FILE or SEGMENT_FILE.fullmatch(n) for n in entries)


def _schema():
    import pyarrow as pa

    return pa.schema([(f, pa.string()) for f in FIELDS])


def _row_bytes(values: Sequence[str]) -> bytes:
    return ("\x1f".join(values) + "\x1f\x1e").encode("utf-8")


def chain_fingerprint(state: bytes, rows: Iterable[Sequence[str]]) -> bytes:
    """Continue the fingerprint chain ``h = sha256(h + row)`` over ``rows`` (each the values of :data:`FIELDS`).
    Starting from ``b""`` it gives a datastore's fingerprint; from a datastore's fingerprint, that of the datastore
    with ``rows`` appended."""
    sha256 = hashlib.sha256
    for values in rows:
        state = sha256(state + _row_bytes(values)).digest()
    return state


def _split_where(where: str) -> tuple[str, int | None]:
    """``'path:12'`` -> ``('path', 12)``; a location without a line number is all path."""
    path, _, line = where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (where, None)


class _SegmentWriter:
    """What build and add share: validate passages, write them to one Arrow file, and keep the languages, the group
    sizes and the fingerprint chain. With ``locations``, each id's location is kept too (add reports where a new id
    that is already in the datastore was read)."""

    def __init__(self, state: bytes = b"", locations: bool = False):
        self.ids: set[str] | dict[str, str] = {} if locations else set()
        self.langs: Counter = Counter()
        self.groups: Counter = Counter()
        self.state = state

    def write(self, passages: Iterable[Passage | tuple[str, Passage]], path: Path, batch_size: int) -> None:
        import pyarrow as pa

        schema = _schema()
        cols: dict[str, list[str]] = {f: [] for f in FIELDS}
        sha256 = hashlib.sha256
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

            def flush():
                if cols["id"]:
                    writer.write_batch(pa.record_batch([pa.array(cols[f], pa.string()) for f in FIELDS],
                                                       schema=schema))
                    for f in FIELDS:
                        cols[f].clear()

            for item in passages:
                where, p = item if isinstance(item, tuple) else ("<input>", item)
                _validate(p, where, self.ids)
                check_language(p.lang, where)
                if isinstance(self.ids, dict):
                    self.ids[p.id] = where
                else:
                    self.ids.add(p.id)
                self.langs[p.lang] += 1
                self.groups[p.group] += 1
                values = (p.id, p.lang, p.title, p.text, p.group)
                for f, value in zip(FIELDS, values, strict=True):
                    cols[f].append(value)
                self.state = sha256(self.state + _row_bytes(values)).digest()
                if len(cols["id"]) >= batch_size:
                    flush()
            flush()
        with open(path, "rb") as fh:  # on disk before datastore.json names it
            os.fsync(fh.fileno())


def _check_segments(meta: dict, meta_path: Path) -> list[dict]:
    """The segments datastore.json lists (one made up for a datastore written before adds existed)."""
    segments = meta.get("segments")
    if segments is None:
        return [{"size": meta["size"], "fingerprint": meta["fingerprint"], "file": PASSAGES_FILE}]
    well_formed = isinstance(segments, list) and len(segments) > 0 and all(
        isinstance(s, dict) and isinstance(s.get("size"), int) and isinstance(s.get("fingerprint"), str)
        and isinstance(s.get("file"), str) and SEGMENT_FILE.fullmatch(s["file"]) for s in segments)
    sizes = [0] + [s["size"] for s in segments] if well_formed else []
    consistent = well_formed and (
        segments[0]["file"] == PASSAGES_FILE and len({s["file"] for s in segments}) == len(segments)
        and all(a < b for a, b in zip(sizes, sizes[1:], strict=False)) and sizes[-1] == meta["size"]
        and segments[-1]["fingerprint"] == meta["fingerprint"])
    if not consistent:
        raise CoraError(f"{meta_path} is corrupt (its segments do not add up to its size and fingerprint); rebuild "
                        "the datastore with 'cora datastore build'")
    return segments


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One add at a time per datastore (two would both append a segment to the same old state)."""
    import fcntl

    try:
        fh = open(folder / ".add.lock", "a")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as err:
        raise CoraError(f"cannot write to datastore {folder} ({err.strerror})") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CoraError(f"another 'cora datastore add' is writing to {folder}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _merge_links(old: dict | None, new: dict | None) -> dict | None:
    """The language-link counts of a datastore after an add (see :meth:`cora.wikidump.WikiLinks.report`)."""
    if not old or not new:
        return old or new
    if old.get("source") != new.get("source"):
        raise CoraError(f"the datastore's groups come from {old.get('source')} dumps and these passages' from "
                        f"{new.get('source')} dumps: a page grouped by its Wikidata id never meets one grouped by its "
                        "title; give the same kind of dump")
    langs = {lang: dict(c) for lang, c in old.get("languages", {}).items()}
    for lang, c in new.get("languages", {}).items():
        mine = langs.setdefault(lang, {"passages": 0, "linked": 0})
        for key in ("passages", "linked"):
            mine[key] = mine.get(key, 0) + c.get(key, 0)
    return {**old, "dumps": {**old.get("dumps", {}), **new.get("dumps", {})},
            "languages": dict(sorted(langs.items()))}


class Datastore:
    """A read-only, memory-mapped passage collection. Row numbers are the index's vector ids."""

    def __init__(self, path: str | os.PathLike):
        from datasets import Dataset, concatenate_datasets

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
        self.segments = _check_segments(self.meta, meta_path)
        parts, start = [], 0
        for seg in self.segments:
            seg_path = self.path / seg["file"]
            if not seg_path.exists():
                raise CoraError(f"{seg_path} is missing ({META_FILE} lists it); the datastore is incomplete, rebuild "
                                "it with 'cora datastore build'")
            try:
                part = Dataset.from_file(str(seg_path), in_memory=False)
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise CoraError(f"{seg_path} is corrupt or truncated ({type(err).__name__}); rebuild the datastore "
                                "with 'cora datastore build'") from None
            if len(self.segments) > 1 and len(part) != seg["size"] - start:
                raise CoraError(f"{seg_path}: {len(part)} rows but {META_FILE} says {seg['size'] - start}; the "
                                "datastore is corrupt, rebuild it")
            parts.append(part)
            start = seg["size"]
        self.dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
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
        extra_info: Callable[[], dict] | None = None,
    ) -> Datastore:
        """Validate and write passages to ``out`` (atomically: the folder appears only when complete).

        ``extra_info`` is called once every passage has been read; its keys are stored in datastore.json (a wiki
        build stores there how many passages of each language got a group from the dumps)."""
        w = _SegmentWriter()
        with atomic_dir(out, overwrite=overwrite, is_kind=is_datastore, kind="datastore") as tmp:
            w.write(passages, tmp / PASSAGES_FILE, batch_size)
            if not w.ids:
                raise CoraError("no passages read: the sources are empty")
            fingerprint = w.state.hex()
            meta = {
                "size": len(w.ids),
                "languages": dict(sorted(w.langs.items())),
                "groups": len(w.groups),
                "multi_passage_groups": sum(1 for c in w.groups.values() if c > 1),
                "fingerprint": fingerprint,
                "fingerprint_scheme": FINGERPRINT_SCHEME,
                "segments": [{"size": len(w.ids), "fingerprint": fingerprint, "file": PASSAGES_FILE}],
                "sources": sources or [],
                **(extra_info() if extra_info is not None else {}),
            }
            atomic_write_json(tmp / META_FILE, meta)
        logger.info("datastore %s: %d passages, %d languages, %d groups", out, len(w.ids), len(w.langs),
                    len(w.groups))
        return cls(out)

    @classmethod
    def add(
        cls,
        path: str | os.PathLike,
        passages: Iterable[Passage | tuple[str, Passage]],
        sources: list[str] | None = None,
        batch_size: int = 10_000,
        extra_info: Callable[[], dict] | None = None,
    ) -> Datastore:
        """Append passages to the datastore at ``path``, validated as :meth:`build` does, with ids unique across old
        and new. They go to a new segment file; the datastore changes when datastore.json is replaced, after every
        passage was read and checked, so an error or an interruption leaves it as it was. Afterwards its rows,
        counts and fingerprint are those of a datastore built from the old sources and then these."""
        path = Path(path)
        cls(path)  # a folder that is not a datastore is refused before anything is written into it
        with _locked(path):
            old = cls(path)  # read under the lock: the state this add extends
            for stale in path.glob(".passages-*.arrow.tmp-*"):  # left by an add that was killed
                stale.unlink()
            k = len(old.segments)
            name = f"passages-{k}.arrow"
            tmp = path / f".{name}.tmp-{os.getpid()}"
            try:
                state = old._chain_state()
                w = _SegmentWriter(state, locations=True)
                w.write(passages, tmp, batch_size)
                if not w.ids:
                    raise CoraError("no passages read: the sources are empty")
                old._check_new_ids(w.ids)
                in_old = old._count_in_column("group", list(w.groups))
                size = len(old) + len(w.ids)
                fingerprint = w.state.hex()
                links = _merge_links(old.meta.get("links"), (extra_info() if extra_info else {}).get("links"))
                meta = {
                    **old.meta,
                    "size": size,
                    "languages": dict(sorted((Counter(old.meta["languages"]) + w.langs).items())),
                    "groups": old.meta["groups"] + sum(1 for g in w.groups if not in_old[g]),
                    "multi_passage_groups": old.meta["multi_passage_groups"] + sum(
                        (in_old[g] + n > 1) - (in_old[g] > 1) for g, n in w.groups.items()),
                    "fingerprint": fingerprint,
                    "fingerprint_scheme": FINGERPRINT_SCHEME,
                    "segments": [*old.segments, {"size": size, "fingerprint": fingerprint, "file": name}],
                    "sources": [*old.meta.get("sources", []), *(sources or [])],
                    **({"links": links} if links else {}),
                }
                os.replace(tmp, path / name)  # not yet part of the datastore: only datastore.json lists it
                atomic_write_json(path / META_FILE, meta)  # the commit
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        logger.info("datastore %s: added %d passages (%s) -> %d", path, len(w.ids),
                    ", ".join(f"{lang} {n}" for lang, n in sorted(w.langs.items())), size)
        return cls(path)

    def _chain_state(self) -> bytes:
        """The fingerprint chain's state after the last row. A datastore written before adds existed has a plain
        SHA-256 as fingerprint, from which no chain continues: its rows are hashed once more."""
        if self.meta.get("fingerprint_scheme") == FINGERPRINT_SCHEME:
            return bytes.fromhex(self.fingerprint)
        logger.info("%s was built by an older cora: hashing its %d passages once to continue its fingerprint",
                    self.path, len(self))
        state = b""
        for batch in self.iter_batches(10_000):
            state = chain_fingerprint(state, zip(*(batch[f] for f in FIELDS), strict=True))
        return state

    def _arrow_column(self, name: str):
        return self.dataset.data.table.column(name)

    def _check_new_ids(self, new: dict[str, str]) -> None:
        """Refuse a new id that is already a row, naming where the new one was read."""
        import pyarrow as pa
        import pyarrow.compute as pc

        value_set = pa.array(list(new), pa.string())
        offset = 0
        for chunk in self._arrow_column("id").chunks:
            hits = pc.is_in(chunk, value_set=value_set)
            if pc.any(hits).as_py():
                i = pc.index(hits, True).as_py()
                pid = chunk[i].as_py()
                file, line = _split_where(new[pid])
                raise DataFormatError(file, line, f"duplicate passage id {pid!r}: row {offset + i} of datastore "
                                      f"{self.path} already has it; ids must be unique", field="id")
            offset += len(chunk)

    def _count_in_column(self, name: str, values: list[str]) -> Counter:
        """How often each of ``values`` occurs in column ``name``, streamed over the memory map (memory: the
        values, not the column)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        counts: Counter = Counter()
        value_set = pa.array(values, pa.string())
        for chunk in self._arrow_column(name).chunks:
            found = chunk.filter(pc.is_in(chunk, value_set=value_set))
            if len(found):
                for item in pc.value_counts(found).to_pylist():
                    counts[item["values"]] += item["counts"]
        return counts

    def prefix_fingerprint(self, n: int) -> str | None:
        """The fingerprint this datastore had when it held exactly its first ``n`` rows (after a build or an add),
        or None when it never had ``n`` rows."""
        return next((s["fingerprint"] for s in self.segments if s["size"] == n), None)

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


def _validate(p: Passage, where: str, seen: set[str] | dict[str, str]) -> None:
    path, line_no = _split_where(where)
    if not p.id:
        raise DataFormatError(path, line_no, "is empty", field="id")
    if not p.lang:
        raise DataFormatError(path, line_no, "is empty", field="lang")
    if not p.text or not p.text.strip():
        raise DataFormatError(path, line_no, f"passage {p.id!r} has empty text; remove it or fill it", field="text")
    if p.id in seen:
        raise DataFormatError(path, line_no, f"duplicate passage id {p.id!r} (seen earlier in the input); "
                              "ids must be unique", field="id")
