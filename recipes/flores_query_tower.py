"""Does the shipped query tower carry over to languages it never trained on? A FLORES-200 check.

The shipped ``mdpr-me5-small`` is a LoRA adapter on me5-small's query tower, trained on questions in about twenty
languages (stage 1: XQuAD, TyDi GoldP, JaQuAD, ARCD, DRCD, SQuAD-it/-es; stage 2: AfriQA). Scoped
``cross-lingual``, it encodes every question whose language the datastore lacks, including languages no training
set had. This recipe measures what it does to those, on FLORES-200 (the SIB-200 subset: 1,004 sentences in 50
languages, one ``{code}.tsv`` per language, ``index_id<TAB>text``, the same id being the same sentence): each
sentence in language X is a query, the 1,004 English sentences are the datastore (encoded as passages by the frozen
backbone, as the shipped index is), and a query is right when its own English sentence ranks first (R@1) or in the
top 10. Both ways of encoding the queries are scored: the frozen backbone (zero-shot me5-small, what a
same-language question gets) and the adapter (what a cross-lingual question gets).

Sentences are not questions: this measures how well the adapter keeps a language aligned with English, not QA
recall. Nothing is chosen on it. A tower trained with ``recipes/cora_loop_afriqa.py --distill-flores N`` has seen the
first N sentences (index order) of the ten AfriQA languages and their pivots; ``--skip N`` scores only the rest.

    python recipes/flores_query_tower.py --out runs/flores-query-tower [--encoder mdpr-me5-small] [--langs hau_Latn amh_Ethi]
        [--skip 300]     # only the sentences a --distill-flores 300 tower did not train on
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cora.datasets import SQUAD_SOURCES
from cora.encoder import Encoder
from cora.fileio import atomic_write_json
from cora.languages import base_code

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import afriqa  # noqa: E402
from flores import read_flores, sorted_ids  # noqa: E402

PIVOT = "eng_Latn"
# Query languages of the shipped tower's training data (stage 1: cora.datasets.SQUAD_SOURCES, as in
# recipes/train_mdpr.py; stage 2: the AfriQA loop), compared through base_code as every tag in cora is
# ('twi' and 'twi_Latn' are both Akan, 'ak', to langcodes).
TRAINED = frozenset(base_code(src.lang) for src in SQUAD_SOURCES) | frozenset(map(base_code, afriqa.LANGS))


def recall_at(queries: np.ndarray, store: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Query i's own row is store row i: percentage of queries whose row is in the top k, for each k."""
    scores = queries @ store.T  # [N, N]
    own = scores[np.arange(len(scores)), np.arange(len(scores))][:, None]
    rank = (scores > own).sum(axis=1)  # how many rows beat the right one (ties count for the query)
    return {f"R@{k}": round(100 * float((rank < k).mean()), 2) for k in ks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "parallel-flores"))
    ap.add_argument("--encoder", default="mdpr-me5-small", help="an encoder with a query adapter")
    ap.add_argument("--langs", nargs="+", help="FLORES codes (default: every file but English)")
    ap.add_argument("--skip", type=int, default=0, metavar="N",
                    help="score only the sentences after the first N in index order: those a tower trained with "
                         "recipes/cora_loop_afriqa.py --distill-flores N never saw (store and queries alike)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", required=True, help="folder for results.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    files = {p.stem: p for p in sorted(data.glob("*.tsv"))}
    if PIVOT not in files:
        raise SystemExit(f"{data}: no {PIVOT}.tsv")
    langs = args.langs or [code for code in files if code != PIVOT]
    unknown = [code for code in langs if code not in files]
    if unknown:
        raise SystemExit(f"{data}: no file for {unknown}")
    encoder = Encoder.from_pretrained(args.encoder)
    if encoder.query_model is None:
        raise SystemExit(f"{args.encoder} has no query adapter: nothing to compare with the frozen backbone")
    if args.skip < 0:
        raise SystemExit("--skip must be >= 0")
    english = read_flores(files[PIVOT])
    ids = sorted_ids(english)[args.skip:]
    if not ids:
        raise SystemExit(f"{files[PIVOT]}: --skip {args.skip} leaves no sentence ({len(english)} in all)")
    t0 = time.time()
    store = encoder.encode([english[i] for i in ids], "passage", args.batch_size)
    rows = {}
    for code in langs:
        sentences = read_flores(files[code])
        if set(sentences) != set(english):
            raise SystemExit(f"{files[code]}: its index_ids are not those of {PIVOT}.tsv")
        texts = [sentences[i] for i in ids]
        frozen = encoder.encode(texts, "query", args.batch_size, tower="passage")
        adapter = encoder.encode(texts, "query", args.batch_size)
        rows[code] = {"trained": base_code(code) in TRAINED, "frozen": recall_at(frozen, store),
                      "adapter": recall_at(adapter, store)}
        logging.info("%s: frozen %s, adapter %s (%.0f s)", code, rows[code]["frozen"], rows[code]["adapter"],
                     time.time() - t0)
    groups = {"trained languages": [c for c in rows if rows[c]["trained"]],
              "unseen languages": [c for c in rows if not rows[c]["trained"]]}
    summary = {name: {"languages": len(codes), **{f"{tower} {k}": round(statistics.fmean(rows[c][tower][k] for c in codes), 2)
                                                   for tower in ("frozen", "adapter") for k in ("R@1", "R@10")}}
               for name, codes in groups.items() if codes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"encoder": args.encoder, "skip": args.skip, "sentences": len(ids), "summary": summary,
                                             "languages": rows, "seconds": round(time.time() - t0)})
    print("| language | trained on | frozen R@1 | adapter R@1 | frozen R@10 | adapter R@10 |\n|---|---|---:|---:|---:|---:|")
    for code, r in sorted(rows.items(), key=lambda kv: (not kv[1]["trained"], kv[0])):
        print(f"| {code} | {'yes' if r['trained'] else 'no'} | {r['frozen']['R@1']:.1f} | {r['adapter']['R@1']:.1f} | "
              f"{r['frozen']['R@10']:.1f} | {r['adapter']['R@10']:.1f} |")
    for name, s in summary.items():
        print(f"| **{name}** ({s['languages']}) | | {s['frozen R@1']:.1f} | {s['adapter R@1']:.1f} | "
              f"{s['frozen R@10']:.1f} | {s['adapter R@10']:.1f} |")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
