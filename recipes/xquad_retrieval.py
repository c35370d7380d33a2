"""Zero-shot cross-lingual retrieval on XQuAD: recall@1/5/20 of the gold group, per language.

Builds two datastores from ../shared/data/xquad (all 12 languages = 2,400 passages; English only = 200
passages), indexes them with an encoder (default: zero-shot me5-small), retrieves for the questions of the dev
articles (32-39) in all 12 languages, and reports recall@k of the gold paragraph's group: a hit counts when any
language version of the gold paragraph is retrieved. The English-only datastore is the cross-lingual, XOR-like
setting (a question in language X must find an English passage). Three rankings per datastore: BM25 (cora.bm25,
language-aware tokens), the dense encoder, and their reciprocal-rank fusion (top 100 of each, k = 60).

XQuAD titles are English in every language file, so they are dropped (a Thai passage titled 'Super Bowl 50'
would leak English into every language).

With ``--query-encoder`` (repeatable) each named query tower (e.g. the LoRA mDPR of recipes/train_mdpr.py, or the
shipped ``mdpr-me5-small``) is searched against the same index, which it shares with --encoder, and gets its own
dense and hybrid rows.

    python recipes/xquad_retrieval.py --out runs/xquad-retrieval [--encoder me5-small] [--data ../shared/data]
        [--query-encoder runs/mdpr/run/best]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

from cora.bm25 import BM25Index, reciprocal_rank_fusion
from cora.datasets import XQUAD_DEV_ARTICLES, XQUAD_LANGS, xquad_file
from cora.datastore import Datastore, read_squad
from cora.encoder import Encoder
from cora.evaluation.retrieval import RankedResult, recall_at_k
from cora.index import build_index
from cora.questions import read_squad_questions
from cora.retriever import Retriever

LANGS = list(XQUAD_LANGS)
KS = (1, 5, 20)
FUSION_DEPTH = 100  # each retriever's top 100 enter the reciprocal-rank fusion


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="the shared data folder (holding xquad/)")
    ap.add_argument("--encoder", default="me5-small", help="encoder name or folder (default me5-small)")
    ap.add_argument("--out", default="runs/xquad-retrieval", help="output folder")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--query-encoder", action="append", default=[],
                    help="also search the index with this query tower (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    xquad = Path(args.data) / "xquad"
    if not xquad.exists():
        raise SystemExit(f"{xquad} not found: pass --data pointing at the shared data folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = Encoder.from_pretrained(args.encoder)
    questions = list(itertools.chain.from_iterable(
        read_squad_questions(xquad_file(args.data, lang), lang, XQUAD_DEV_ARTICLES) for lang in LANGS))

    results = {"encoder": args.encoder, "questions": len(questions), "dev_articles": f"{XQUAD_DEV_ARTICLES.start}-{XQUAD_DEV_ARTICLES.stop - 1}", "settings": {}}
    for setting, langs in (("all-languages", LANGS), ("english-only", ["en"])):
        ds_dir = out / f"datastore-{setting}"
        sources = [read_squad(xquad_file(args.data, lang), lang, keep_titles=False) for lang in langs]
        ds = Datastore(ds_dir) if ds_dir.exists() else Datastore.build(itertools.chain(*sources), ds_dir)
        idx_dir = out / f"index-{setting}"
        t0 = time.time()
        if not (idx_dir / "index.faiss").exists():
            build_index(ds, encoder, idx_dir, args.encoder, factory="Flat", batch_size=args.batch_size)
        encode_s = time.time() - t0
        retriever = Retriever.from_pretrained(idx_dir, datastore=ds)
        t0 = time.time()
        hits = retriever.search_batch([q.question for q in questions], k=FUSION_DEPTH)
        search_s = time.time() - t0
        dense_rows = [[h.row for h in hs] for hs in hits]
        _, bm25_rows = BM25Index(ds).search([q.question for q in questions], [q.lang for q in questions],
                                            k=FUSION_DEPTH)
        rankings = {
            "BM25": [list(r) for r in bm25_rows],
            f"dense ({args.encoder})": dense_rows,
            "hybrid (RRF of both)": hybrid(dense_rows, bm25_rows),
        }
        for name in args.query_encoder:
            tower = Retriever.from_pretrained(idx_dir, datastore=ds, query_encoder=name)
            t0 = time.time()
            rows = [[h.row for h in hs] for hs in tower.search_batch(
                [q.question for q in questions], k=FUSION_DEPTH, langs=[q.lang for q in questions])]
            results.setdefault("query_seconds", {})[f"{setting} {name}"] = round(time.time() - t0, 1)
            rankings[f"dense ({name})"] = rows
            rankings[f"hybrid ({name} + BM25)"] = hybrid(rows, bm25_rows)
        group = ds.dataset["group"]
        tables = {name: recall_at_k([RankedResult(q.lang, [group[r] for r in ranked[: max(KS)]],
                                                  frozenset({q.gold_group}))
                                     for q, ranked in zip(questions, ranks, strict=True)], KS)
                  for name, ranks in rankings.items()}
        results["settings"][setting] = {"passages": len(ds), "index_seconds": round(encode_s, 1),
                                        "query_seconds": round(search_s, 1), "recall": tables}
        print(f"\n{setting}: {len(ds)} passages, {len(questions)} questions")
        for name, table in tables.items():
            print(f"\n{name}\n{format_table(table)}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def hybrid(dense_rows, bm25_rows) -> list[list[int]]:
    return [reciprocal_rank_fusion([d, list(b)]) for d, b in zip(dense_rows, bm25_rows, strict=True)]


def format_table(table: dict) -> str:
    langs = [k for k in table if k != "macro"] + ["macro"]
    head = "| k | " + " | ".join(langs) + " |"
    rows = [head, "|" + "---|" * (len(langs) + 1)]
    for k in KS:
        rows.append(f"| R@{k} | " + " | ".join(f"{100 * table[lang][f'R@{k}']:.1f}" for lang in langs) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
