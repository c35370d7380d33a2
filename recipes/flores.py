"""FLORES-200 (the SIB-200 subset in the shared data: ``{code}.tsv`` = ``index_id<TAB>text``, the same id being the
same sentence in every language) for the recipes: a strict reader and the sentence pairs of one language and its
pivot.

    from flores import read_flores, sentence_pairs, sorted_ids
"""

from __future__ import annotations

import csv
from pathlib import Path

from cora.errors import DataFormatError


def read_flores(path: Path) -> dict[str, str]:
    """index_id -> sentence; one ``index_id<TAB>text`` per line."""
    out: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) != 2 or not row[1].strip():
                raise DataFormatError(path, line_no, "expected 'index_id<TAB>text'", field="text")
            if row[0] in out:
                raise DataFormatError(path, line_no, f"duplicate index_id {row[0]!r}", field="index_id")
            out[row[0]] = row[1]
    return out


def sentence_pairs(folder: Path, code: str, pivot: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(index_id, sentence in ``code``, the same sentence in ``pivot``), in index_id order (numeric ids by value),
    the first ``limit`` of them. Both files must hold the same ids."""
    src, tgt = folder / f"{code}.tsv", folder / f"{pivot}.tsv"
    for path in (src, tgt):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no FLORES file for {path.stem}")
    a, b = read_flores(src), read_flores(tgt)
    if set(a) != set(b):
        raise DataFormatError(src, None, f"its index_ids are not those of {tgt.name}", field="index_id")
    return [(i, a[i], b[i]) for i in sorted_ids(a)[:limit]]


def sorted_ids(sentences: dict[str, str]) -> list[str]:
    """The index_ids in one fixed order: numeric ids by value, then any others as text."""
    return sorted(sentences, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))
