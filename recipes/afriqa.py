"""AfriQA (masakhane-io/afriqa, CC BY 4.0) for the recipes: dev questions and an English/French passage store.

AfriQA is built like XOR-TyDi: questions in ten African languages, evidence in English (French for Fon and Wolof),
answers given in the question's language and translated into the pivot language. The shared data holds train and
dev only. The answer fields are strings holding Python list literals (``"['2021']"``); they are parsed with
``ast.literal_eval`` (literals only, never code) and checked to be lists of strings.

The store holds every gold passage of AfriQA train and dev (all languages, duplicates of the same text merged):
a question must find its passage among ~3,900 English/French Wikipedia passages written for other questions.

    python recipes/afriqa.py --out runs/afriqa     # build the store and its index (me5-small), print counts
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cora.datastore import Datastore, Passage
from cora.errors import DataFormatError

LANGS = {"bem": "en", "fon": "fr", "hau": "en", "ibo": "en", "kin": "en", "swa": "en", "twi": "en", "wol": "fr",
         "yor": "en", "zul": "en"}  # question language -> pivot language of its evidence


@dataclass
class AfriQAQuestion:
    id: str
    question: str  # in ``lang``
    lang: str
    pivot: str  # the language of the evidence ('en' or 'fr')
    answers: list[str]  # in ``lang``
    pivot_answers: list[str]  # translated into ``pivot``
    translated_question: str  # the human translation into the pivot language (not used for answering)
    gold_group: str | None  # the store group (distinct text) of its gold passage, when the shared data has it


def parse_answer_list(value, path: Path, line: int, field: str) -> list[str]:
    """``"['a', 'b']"`` -> ['a', 'b'] (a list of strings, or one string); anything else is a DataFormatError."""
    if isinstance(value, list):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = ast.literal_eval(text) if text.startswith("[") else [text]
        except (ValueError, SyntaxError):
            # A few rows hold an unescaped quote inside one answer ("['M'biza']"): one quoted item is taken as is.
            if len(text) >= 4 and text[:2] in ("['", '["') and text[-2:] in ("']", '"]') and "', '" not in text:
                parsed = [text[2:-2]]
            else:
                raise DataFormatError(path, line, f"not a list literal: {value[:60]!r}", field=field) from None
    else:
        raise DataFormatError(path, line, f"expected a string or a list, got {type(value).__name__}", field=field)
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise DataFormatError(path, line, "expected a list of strings", field=field)
    return [a.strip() for a in parsed if a.strip()]


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(path, n, f"invalid JSON ({err.msg})") from None


def passage_id(lang: str, split: str, qid: str) -> str:
    return f"afriqa.{lang}.{split}:{qid}"


def gold_passages(root: str | Path, lang: str, split: str) -> dict[str, Passage]:
    """Question id -> its gold passage (English/French), for one language and split; {} when the file is absent."""
    pivot = LANGS[lang]
    path = Path(root) / "afriqa" / "gold_passages" / lang / f"gold_span_passages.afriqa.{lang}.{pivot}.{split}.json"
    if not path.exists():
        return {}
    out = {}
    for n, row in _jsonl(path):
        for key in ("id", "context"):
            if key not in row:
                raise DataFormatError(path, n, "missing", field=key)
        text = row["context"]
        if not isinstance(text, str) or not text.strip():
            continue
        group = "afriqa:" + hashlib.sha1(text.strip().encode()).hexdigest()[:16]  # one group per distinct text
        qid = str(row["id"])
        out[qid] = Passage(passage_id(lang, split, qid), pivot, str(row.get("title") or ""), text, group)
    return out


def questions(root: str | Path, split: str = "dev", langs=None) -> list[AfriQAQuestion]:
    """AfriQA questions of one split, with both answer lists and the gold passage id when it is known."""
    out = []
    for lang in langs or LANGS:
        pivot = LANGS[lang]
        path = Path(root) / "afriqa" / "queries" / lang / f"queries.afriqa.{lang}.{pivot}.{split}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no AfriQA {split} questions for {lang}")
        gold = gold_passages(root, lang, split)
        for n, row in _jsonl(path):
            for key in ("id", "question", "answers", "translated_answer"):
                if key not in row:
                    raise DataFormatError(path, n, "missing", field=key)
            qid = str(row["id"])
            out.append(AfriQAQuestion(
                qid, row["question"], lang, pivot, parse_answer_list(row["answers"], path, n, "answers"),
                parse_answer_list(row["translated_answer"], path, n, "translated_answer"),
                str(row.get("translated_question") or ""), gold[qid].group if qid in gold else None))
    return out


def answerless_translated(qs: list[AfriQAQuestion]) -> list[AfriQAQuestion]:
    """The questions without any answer that have a human translation: they cannot be mined, but can be distilled."""
    return [q for q in qs if not q.answers and not q.pivot_answers and q.translated_question.strip()]


def build_store(root: str | Path, out: str | Path) -> Datastore:
    """The English/French datastore of every AfriQA train and dev gold passage (one copy of each text)."""
    out = Path(out)
    if (out / "datastore.json").exists():
        return Datastore(out)
    seen, passages = set(), []
    for lang in LANGS:
        for split in ("train", "dev"):
            for p in gold_passages(root, lang, split).values():
                if p.group not in seen:
                    seen.add(p.group)
                    passages.append(p)
    return Datastore.build(passages, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/afriqa")
    ap.add_argument("--encoder", default="me5-small")
    args = ap.parse_args(argv)
    from cora.encoder import Encoder
    from cora.index import build_index

    store = build_store(args.data, Path(args.out) / "datastore")
    if not (Path(args.out) / "index" / "index.faiss").exists():
        build_index(store, Encoder.from_pretrained(args.encoder), Path(args.out) / "index", args.encoder,
                    factory="Flat")
    dev = questions(args.data, "dev")
    with_gold = sum(q.gold_group is not None for q in dev)
    print(f"store: {len(store)} passages; dev: {len(dev)} questions, {with_gold} with a gold passage")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
