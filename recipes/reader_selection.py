"""Choose the extractive reader's passage choice and answer length on dev sets, and measure F1 against k.

Two dev sets (no test data): XQuAD dev (articles 32-39, 12 languages) on the all-languages store of
recipes/xquad_retrieval.py, scored in the question's language with reread projection through language links; and
AfriQA dev (questions in the languages whose dev gold passages are in the shared data) on the English/French store
of recipes/afriqa.py, scored against the pivot-language answer (what a reader of English/French passages can
extract) and against the answer in the question's language. Retrieval is the shipped default (me5-small passages,
the mdpr-me5-small query tower).

Each question's top ``--max-k`` passages, and the question-language siblings that projection would reread, are
read once; every window's top spans and selection logit are kept; every setting of

    k              passages read (1, 3, 5, 10, 20)
    rank_prior     lambda: a passage at retrieval rank r loses lambda * ln(1 + r)
    rank_weight    weight of the selection head's logit (readers that have one)
    length_penalty per token beyond the first of a span
    max_answer_tokens

is then scored from that cache, exactly as ExtractiveReader.read chooses (cora.reader.extractive.choose_span).
The questions are split in two halves by id: settings are chosen on half A (mean of XQuAD macro F1 and AfriQA
pivot macro F1) and reported on half B and on all, so the gain is not only a fit to the questions it was chosen on.

    python recipes/reader_selection.py --reader me5-small-reader --out runs/selection-shipped
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from cora.config import load_config
from cora.datastore import Datastore
from cora.evaluation.xor import score_one
from cora.reader import load_reader
from cora.reader.base import READER_CONFIG_FILE, ReaderConfig, resolve_reader
from cora.reader.spans import span_scores
from cora.reader.training import xquad_dev_examples
from cora.retriever import Retriever

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import afriqa  # noqa: E402

AFRIQA_DEV_LANGS = ["bem", "fon", "hau", "ibo", "kin", "twi", "zul"]  # dev gold passages in the shared data
KS = (1, 3, 5, 10, 20)
PRIORS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
RANK_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
PENALTIES = (0.0, 0.05, 0.1, 0.2, 0.3)
MAX_TOKENS = (30, 20, 10)
TOP_SPANS = 24  # spans kept per window (by raw score)


def half(qid: str) -> str:
    return "A" if int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 2 == 0 else "B"


@torch.inference_mode()
def read_rows(reader, question: str, passages) -> list[list[dict]]:
    """Per passage, per window: the selection logit and the top spans (raw score, tokens - 1, text)."""
    out = []
    for p in passages:
        part = reader._logits(question, [p])
        scores = span_scores(part["start"], part["end"], part["context"], max(MAX_TOKENS))  # [R, L, L]
        L = scores.shape[1]
        rows = []
        for r in range(scores.shape[0]):
            flat = scores[r].reshape(-1)
            n = min(TOP_SPANS, int(torch.isfinite(flat).sum()))
            if n == 0:
                continue
            vals, pos = flat.topk(n)
            cands = []
            for v, q in zip(vals.tolist(), pos.tolist(), strict=True):
                s, e = divmod(q, L)
                c0, c1 = int(part["offsets"][r, s, 0]), int(part["offsets"][r, e, 1])
                cands.append((v, e - s, p.text[c0:c1].strip()))
            rank = float(part["rank"][r]) if part["rank"] is not None else 0.0
            rows.append({"rank": rank, "cands": cands})
        out.append(rows)
    return out


def best_in_row(row: dict, penalty: float, max_tokens: int) -> tuple[float, str] | None:
    best = None
    for v, n, text in row["cands"]:
        if n < max_tokens:
            score = v - penalty * n
            if best is None or score > best[0]:
                best = (score, text)
    return best


def choose(passage_rows: list[list[dict]], s: dict) -> tuple[int, str] | None:
    """(passage index, answer text) as choose_span picks them, from the cache."""
    best = None
    for i, rows in enumerate(passage_rows):
        for row in rows:
            b = best_in_row(row, s["length_penalty"], s["max_answer_tokens"])
            if b is None:
                continue
            fused = b[0] + s["rank_weight"] * row["rank"] - s["rank_prior"] * math.log1p(i)
            if best is None or fused > best[0]:
                best = (fused, i, b[1])
    return None if best is None else best[1:]


def xquad_questions(args) -> list:
    """XQuAD dev questions: the seeded sample of ``--per-lang`` per language, or with ``--offset N`` a sample of
    ``--per-lang`` from the questions *outside* the ``N``-per-language sample (held out from a choice made on it)."""
    if not args.offset:
        return xquad_dev_examples(args.data, args.per_lang)
    used = {ex.id for ex in xquad_dev_examples(args.data, args.offset)}
    rest: dict[str, list] = {}
    for ex in xquad_dev_examples(args.data):
        if ex.id not in used:
            rest.setdefault(ex.question_lang, []).append(ex)
    rng = random.Random(1)
    return [ex for lang in rest for ex in rng.sample(rest[lang], min(args.per_lang, len(rest[lang])))]


def collect_xquad(args, reader, setting: str = "all-languages") -> list[dict]:
    """XQuAD dev on the ``all-languages`` or the ``english-only`` store; projection rereads the question-language
    versions (language links) from the all-languages store, as the pipeline does with its links."""
    retrieval = Path(args.retrieval)
    store = Datastore(retrieval / f"datastore-{setting}")
    links = store if setting == "all-languages" else Datastore(retrieval / "datastore-all-languages")
    retriever = Retriever.from_pretrained(retrieval / f"index-{setting}", store, query_encoder=args.query_encoder)
    dev = xquad_questions(args)
    hits = retriever.search_batch([ex.question for ex in dev], k=args.max_k, langs=[ex.question_lang for ex in dev])
    out = []
    for ex, hs in zip(dev, hits, strict=True):
        passages = store.rows([h.row for h in hs])
        gold = ex.passages[0].group
        siblings = {}  # passage index -> its question-language siblings (what reread projection reads)
        for i, p in enumerate(passages):
            if p.lang != ex.question_lang:
                sib = [s for s in links.rows(links.group_rows(p.group)) if s.lang == ex.question_lang]
                if sib:
                    siblings[i] = sib
        rows = read_rows(reader, ex.question, passages)
        read = {p.id: r for p, r in zip(passages, rows, strict=True)}  # a sibling already retrieved is not reread
        missing = sorted({s.id for sib in siblings.values() for s in sib} - set(read))
        read.update(zip(missing, read_rows(reader, ex.question, [links.get(i) for i in missing]), strict=True))
        out.append({"id": ex.id, "set": "xquad" if setting == "all-languages" else f"xquad-{setting}",
                    "lang": ex.question_lang, "answers": ex.answers,
                    "gold": [p.group == gold for p in passages], "langs": [p.lang for p in passages],
                    "rows": rows, "siblings": {str(i): [read[s.id] for s in sib] for i, sib in siblings.items()}})
    return out


def collect_afriqa(args, reader) -> list[dict]:
    store = afriqa.build_store(args.data, Path(args.afriqa) / "datastore")
    index = Path(args.afriqa) / "index"
    if not (index / "index.faiss").exists():
        afriqa.main(["--data", args.data, "--out", args.afriqa])
    retriever = Retriever.from_pretrained(index, store, query_encoder=args.query_encoder)
    dev = [q for q in afriqa.questions(args.data, "dev", AFRIQA_DEV_LANGS) if q.gold_group]
    by_lang: dict[str, list] = {}
    for q in dev:
        by_lang.setdefault(q.lang, []).append(q)
    dev = [q for lang in AFRIQA_DEV_LANGS for q in by_lang.get(lang, [])[args.offset : args.offset + args.per_lang]]
    hits = retriever.search_batch([q.question for q in dev], k=args.max_k, langs=[q.lang for q in dev])
    out = []
    for q, hs in zip(dev, hits, strict=True):
        passages = store.rows([h.row for h in hs])
        out.append({"id": f"afriqa:{q.lang}:{q.id}", "set": "afriqa", "lang": q.lang, "pivot": q.pivot,
                    "answers": q.answers, "pivot_answers": q.pivot_answers,
                    "gold": [p.group == q.gold_group for p in passages], "langs": [p.lang for p in passages],
                    "rows": read_rows(reader, q.question, passages), "siblings": {}})
    return out


def answer_of(item: dict, s: dict, k: int) -> tuple[str, bool]:
    """The answer text under setting ``s`` reading the top ``k`` (with reread projection), and whether it was
    read from the gold passage."""
    chosen = choose(item["rows"][:k], s)
    if chosen is None:
        return "", False
    i, text = chosen
    sib = item["siblings"].get(str(i))
    if sib:
        projected = choose(sib, s)
        if projected is not None:
            text = projected[1]
    return text, item["gold"][i]


def score(items: list[dict], s: dict, k: int) -> dict:
    """Macro F1 (and per language) for each dev set; for AfriQA against the pivot and the question-language
    answers; plus the share of answers read from the gold passage."""
    per: dict[str, dict[str, list[float]]] = {}
    gold_read = {}
    for it in items:
        text, from_gold = answer_of(it, s, k)
        if it["set"].startswith("xquad"):
            per.setdefault(it["set"], {}).setdefault(it["lang"], []).append(score_one(text, it["answers"], it["lang"], "fixed")[0])
        else:
            # A question with answers on one side only is scored on that side (AfriQA has a few).
            if it["pivot_answers"]:
                per.setdefault("afriqa-pivot", {}).setdefault(it["lang"], []).append(
                    score_one(text, it["pivot_answers"], it["pivot"], "fixed")[0])
            if it["answers"]:
                per.setdefault("afriqa-lang", {}).setdefault(it["lang"], []).append(
                    score_one(text, it["answers"], it["lang"], "fixed")[0])
        gold_read.setdefault(it["set"], []).append(from_gold)
    out = {}
    for name, langs in per.items():
        table = {lang: 100 * statistics.fmean(v) for lang, v in langs.items()}
        out[name] = {"macro": statistics.fmean(table.values()), **table}
    for name, v in gold_read.items():
        out[f"{name} read from gold %"] = 100 * statistics.fmean(v)
    return out


def objective(result: dict) -> float:
    return (result["xquad"]["macro"] + result["afriqa-pivot"]["macro"]) / 2


def report_shipped(args, items: list[dict], ks: list[int], out: Path) -> int:
    """F1 against k for the reader's own passage-choice settings and for the plain joint argmax, all questions."""
    config = load_config(ReaderConfig, resolve_reader(args.reader) / READER_CONFIG_FILE)  # settings only, no weights
    shipped = {key: getattr(config, key) for key in ("rank_prior", "rank_weight", "length_penalty",
                                                       "max_answer_tokens")}
    plain = {"rank_prior": 0.0, "rank_weight": 0.0, "length_penalty": 0.0, "max_answer_tokens": 30}
    report = {"command": "python recipes/reader_selection.py " + " ".join(sys.argv[1:]), "reader": args.reader,
              "questions": len(items), "shipped": shipped, "by_k": {}}
    for name, s in (("plain (joint span argmax)", plain), ("shipped settings", shipped)):
        for k in ks:
            report["by_k"][f"{name}, k={k}"] = score(items, s, k)
    (out / "shipped.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    sets = [name for name in next(iter(report["by_k"].values())) if not name.endswith("%")]
    print(f"{len(items)} questions; shipped settings {shipped}")
    print(f"{'setting':34} " + " ".join(f"{name:>24}" for name in sets))
    for name, r in report["by_k"].items():
        print(f"{name:34} " + " ".join(f"{r[x]['macro']:24.1f}" for x in sets))
    print(f"wrote {out / 'shipped.json'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--reader", default="me5-small-reader")
    ap.add_argument("--retrieval", default="runs/xquad-retrieval", help="recipes/xquad_retrieval.py output")
    ap.add_argument("--afriqa", default="runs/afriqa", help="recipes/afriqa.py output (built when missing)")
    ap.add_argument("--query-encoder", default="mdpr-me5-small")
    ap.add_argument("--per-lang", type=int, default=30, help="dev questions per language and set")
    ap.add_argument("--max-k", type=int, default=20, help="passages read per question (k above it is not scored)")
    ap.add_argument("--offset", type=int, default=0,
                    help="held-out check: draw the questions from outside the first OFFSET per language (the "
                         "sample a --per-lang OFFSET run chose its settings on)")
    ap.add_argument("--sets", nargs="+", choices=["xquad", "afriqa"], default=["xquad", "afriqa"],
                    help="dev sets read (the grid search needs both)")
    ap.add_argument("--english-only", action="store_true",
                    help="also read XQuAD dev on the English-only store (projection through language links)")
    ap.add_argument("--shipped", action="store_true",
                    help="no grid: score the reader's own settings (reader_config.json) and the plain joint argmax "
                         "at each k, on all the questions")
    ap.add_argument("--out", default="runs/reader-selection")
    args = ap.parse_args(argv)
    if not args.shipped and set(args.sets) != {"xquad", "afriqa"}:
        ap.error("the grid search chooses on XQuAD and AfriQA together: --sets needs both (or use --shipped)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache.json"
    if cache.exists():
        items = json.loads(cache.read_text(encoding="utf-8"))
        print(f"cached reads: {len(items)} questions ({cache})")
    else:
        reader = load_reader(args.reader)
        t0 = time.time()
        items = (collect_xquad(args, reader) if "xquad" in args.sets else []) + \
            (collect_afriqa(args, reader) if "afriqa" in args.sets else [])
        if args.english_only:
            items += collect_xquad(args, reader, "english-only")
        print(f"read {len(items)} questions x top {args.max_k} in {time.time() - t0:.0f} s")
        cache.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    read_k = max(len(it["rows"]) for it in items)  # a cache made with a smaller --max-k read fewer passages
    if read_k < args.max_k:
        print(f"the cached reads hold the top {read_k} passages: scoring k <= {read_k} only")
    ks = [k for k in KS if k <= min(args.max_k, read_k)]
    if args.shipped:
        return report_shipped(args, items, ks, out)
    has_rank = any(row["rank"] != 0.0 for it in items[:20] for rows in it["rows"] for row in rows)
    plain = {"rank_prior": 0.0, "rank_weight": 0.0, "length_penalty": 0.0, "max_answer_tokens": 30}
    grid = [dict(rank_prior=lam, rank_weight=w, length_penalty=b, max_answer_tokens=m)
            for lam, w, b, m in itertools.product(PRIORS, RANK_WEIGHTS if has_rank else (0.0,), PENALTIES, MAX_TOKENS)]
    halves = {h: [it for it in items if half(it["id"]) == h] for h in "AB"}
    t0 = time.time()
    best_k, best_s, best_obj = None, None, -1.0
    for k in ks:
        for s in grid:
            obj = objective(score(halves["A"], s, k))
            if obj > best_obj:
                best_k, best_s, best_obj = k, s, obj
    print(f"grid of {len(grid) * len(KS)} settings scored in {time.time() - t0:.0f} s; chosen on half A: k={best_k} "
          f"{best_s}")
    report = {"command": "python recipes/reader_selection.py " + " ".join(argv or sys.argv[1:]),
              "reader": args.reader, "questions": {h: len(v) for h, v in halves.items()},
              "chosen": {"k": best_k, **best_s}, "plain": plain, "by_k": {}}
    for name, s in (("plain (joint span argmax)", plain), ("chosen", best_s)):
        for k in ks:
            report["by_k"][f"{name}, k={k}"] = {h: score(v, s, k) for h, v in (("A", halves["A"]), ("B", halves["B"]),
                                                                              ("all", items))}
    (out / "selection.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"{'setting':34} {'half':4} {'XQuAD':>6} {'Afri-pivot':>10} {'Afri-lang':>9} {'gold-read X/A':>14}")
    for name, r in report["by_k"].items():
        for h in ("B", "all"):
            x = r[h]
            print(f"{name:34} {h:4} {x['xquad']['macro']:6.1f} {x['afriqa-pivot']['macro']:10.1f} "
                  f"{x['afriqa-lang']['macro']:9.1f} {x['xquad read from gold %']:6.1f}/{x['afriqa read from gold %']:.1f}")
    print(f"wrote {out / 'selection.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
