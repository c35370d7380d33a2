"""Reading answers on XQuAD dev (articles 32-39, 12 languages): F1 / EM per language, with the command line that
produced them. Uses the datastores and indexes of recipes/xquad_retrieval.py (built there if missing).

  (i)   gold paragraph given (the reader's ceiling);
  (ii)  open retrieval on the all-languages datastore (2,400 passages), top k read jointly, scored against the
        gold answer in the question's language; with and without language-link projection;
  (iii) open retrieval on the English-only datastore (200 passages), scored against the gold answer in the
        question's language (the XOR-like case). An English span is only right when the answer is written the
        same in both languages (numbers, many names); projection needs a passage in the question's language,
        which this datastore does not hold, so it is shown with the language links of the all-languages
        datastore (Wikipedia's language links exist even when retrieval is English-only).

Projection is measured both ways (re-read the linked passage with the question, or align the span into it);
how often it fires and the F1 of the fired answers before and after are reported. Also the p50 latency of
Pipeline.answer() on the all-languages datastore.

    python recipes/xquad_reader.py --reader me5-small-reader --out runs/xquad-reader
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from cora.datasets import XQUAD_LANGS
from cora.datastore import Datastore
from cora.evaluation.report import f1_em_table, format_table
from cora.evaluation.xor import score_one
from cora.pipeline import Pipeline, PipelineConfig
from cora.reader import load_reader
from cora.reader.training import score_gold_paragraph, xquad_dev_examples
from cora.retriever import Retriever

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xquad_retrieval  # noqa: E402  (builds the datastores and indexes when missing)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--reader", default="me5-small-reader", help="reader folder or shipped name")
    ap.add_argument("--max-length", type=int, help="override the reader's input length")
    ap.add_argument("--stride", type=int, help="override the reader's window stride (0: cut at max length)")
    ap.add_argument("--retrieval", default="runs/xquad-retrieval", help="recipes/xquad_retrieval.py output")
    ap.add_argument("--encoder", default="me5-small")
    ap.add_argument("--query-encoder", help="search the --encoder index with this query tower (e.g. mdpr-me5-small)")
    ap.add_argument("--k", type=int, default=5, help="passages read per question (default 5)")
    ap.add_argument("--limit", type=int, help="questions per language (default: all 187)")
    ap.add_argument("--out", default="runs/xquad-reader")
    ap.add_argument("--only", choices=["gold", "open"], help="run one part")
    ap.add_argument("--settings", nargs="+", choices=["all-languages", "all-languages, hybrid", "english-only"],
                    help="open-retrieval settings to run (default: all three)")
    ap.add_argument("--methods", nargs="+", choices=["reread", "align"], help="projection methods (default: both)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reader = load_reader(args.reader)
    if args.max_length:
        reader.config.max_length = args.max_length
    if args.stride is not None:
        reader.config.stride = args.stride or None
    results = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "reader": args.reader,
               "k": args.k, "max_length": reader.config.max_length,
               "stride": reader.config.stride}

    dev = xquad_dev_examples(args.data, args.limit)
    if args.only in (None, "gold"):
        t0 = time.time()
        results["gold_paragraph"] = score_gold_paragraph(reader, dev)
        print(f"\n(i) gold paragraph ({len(dev)} questions, {time.time() - t0:.0f} s)")
        print(format_table(results["gold_paragraph"], ["F1", "EM"]))
    if args.only in (None, "open"):
        run_open(args, reader, dev, results)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"\nwrote {out / 'results.json'}")
    return 0


def run_open(args, reader, dev, results) -> None:
    retrieval = Path(args.retrieval)
    if not (retrieval / "index-english-only" / "index.faiss").exists():
        xquad_retrieval.main(["--data", args.data, "--encoder", args.encoder, "--out", str(retrieval)])
    stores = {s: Datastore(retrieval / f"datastore-{s}") for s in ("all-languages", "english-only")}
    linked = stores["all-languages"]
    retrievers = {s: Retriever.from_pretrained(retrieval / f"index-{s}", ds, query_encoder=args.query_encoder)
                  for s, ds in stores.items()}
    results["retrieval"] = args.query_encoder or args.encoder
    hybrid = Retriever.from_pretrained(retrieval / "index-all-languages", linked, query_encoder=args.query_encoder)
    hybrid.enable_hybrid()  # PipelineConfig.hybrid: BM25 fused in where the datastore holds the question's language
    runs = [("all-languages", stores["all-languages"], retrievers["all-languages"], ("reread", "align")),
            ("all-languages, hybrid", linked, hybrid, ("reread",)),
            ("english-only", stores["english-only"], retrievers["english-only"], ("reread", "align"))]
    runs = [r for r in runs if not args.settings or r[0] in args.settings]
    runs = [(s, d, r, tuple(m for m in ms if not args.methods or m in args.methods)) for s, d, r, ms in runs]
    for setting, ds, retriever, methods in runs:
        t0 = time.time()
        # The pipeline without projection gives the answer as read; each method then projects that same answer
        # through the all-languages datastore's links.
        pipe = Pipeline(retriever, reader, PipelineConfig(str(retrieval / f"index-{setting.split(',')[0]}"),
                                                          args.reader, k=args.k, projection=False), links=linked)
        answered = pipe.answer_batch([ex.question for ex in dev], [ex.question_lang for ex in dev], details=True)
        variants = {"no projection": {}} | {f"projection: {m}": {} for m in methods}
        fired = {m: [] for m in methods}  # (f1 before, f1 after) where projection fired
        for ex, res in zip(dev, answered, strict=True):
            base = res.read
            f1, em, _ = score_one(base.text, ex.answers, ex.answer_lang, "fixed")
            variants["no projection"].setdefault(ex.answer_lang, []).append((f1, em))
            for method in methods:
                proj = pipe.project(ex.question, base, method)
                pf1, pem, _ = score_one(proj.text, ex.answers, ex.answer_lang, "fixed")
                variants[f"projection: {method}"].setdefault(ex.answer_lang, []).append((pf1, pem))
                if proj.projected:
                    fired[method].append((f1, pf1))
        elapsed = time.time() - t0
        rows = {name: f1_em_table(v, XQUAD_LANGS, counts=False) for name, v in variants.items()}
        fire = {m: {"fired": len(v), "rate": len(v) / len(dev),
                    "F1 before": 100 * statistics.fmean(b for b, _ in v) if v else None,
                    "F1 after": 100 * statistics.fmean(a for _, a in v) if v else None} for m, v in fired.items()}
        results[setting] = {"tables": rows, "projection": fire, "seconds": elapsed}
        print(f"\n({'iii' if setting == 'english-only' else 'ii'}) open retrieval, {setting} datastore "
              f"({len(ds)} passages), k={args.k}, {len(dev)} questions, {elapsed:.0f} s")
        for name, t in rows.items():
            print(f"-- {name}")
            print(format_table(t, ["F1", "EM"]))
        print("projection fired:", json.dumps(fire, indent=1))

    # Latency of the public API on the all-languages datastore, one question at a time.
    pipe = Pipeline(retrievers["all-languages"], reader,
                    PipelineConfig(str(retrieval / "index-all-languages"), args.reader, k=args.k))
    sample = dev[:: max(1, len(dev) // 60)]
    pipe.answer(sample[0].question, sample[0].question_lang)  # warm-up
    times = []
    for ex in sample:
        t0 = time.perf_counter()
        pipe.answer(ex.question, ex.question_lang)
        times.append(1000 * (time.perf_counter() - t0))
    results["latency_ms"] = {"p50": statistics.median(times), "n": len(times),
                             "p90": sorted(times)[int(0.9 * (len(times) - 1))]}
    print(f"\nPipeline.answer() latency over {len(times)} questions (k={args.k}): p50 "
          f"{results['latency_ms']['p50']:.0f} ms, p90 {results['latency_ms']['p90']:.0f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
