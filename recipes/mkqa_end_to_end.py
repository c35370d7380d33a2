"""MKQA end to end on the 12 shared languages: answer with a pipeline over your datastore, score as ml-mkqa does.

For each locale (ar en es fi ja km ko ms ru sv tr zh_cn), reads ``mkqa/mkqa-{locale}.jsonl`` from the shared data
folder (1,758 questions each, XOR format), answers every question with the pipeline, writes MKQA's prediction
JSONL (``pred-{locale}.jsonl``: example_id, prediction, binary_answer, no_answer_prob, exactly what
``cora answer --format mkqa`` writes) and scores it with the official MKQA rules (``metrics-{locale}.json``: the
best-threshold figures of ml-mkqa's ``mkqa_eval.py`` and its ``-v`` figures). ``summary.json`` and ``summary.md``
hold one row per locale and the macro mean. A locale whose predictions are already complete is not answered again,
so an interrupted run resumes.

The pipeline is either given (``--pipeline``, from ``cora pipeline create``) or bundled here from an index of your
datastore (``--index``, with ``--reader`` and ``--query-encoder``). MKQA's locale codes are passed to the pipeline as
the codes a datastore uses (``zh_cn`` -> ``zh``; ``--lang-map zh_cn=zh-CN`` to change it), so retrieval and
language-link projection see the language the passages are labelled with.

    python recipes/mkqa_end_to_end.py --index my-index --out runs/mkqa [--query-encoder mdpr-me5-small]
    python recipes/mkqa_end_to_end.py --pipeline my-pipeline --out runs/mkqa --limit 100 --langs ja ko

The same, one locale, with the command line:

    cora answer --pipeline my-pipeline --questions ../shared/data/mkqa/mkqa-ja.jsonl --format mkqa --out pred-ja.jsonl
    cora evaluate mkqa --gold ../shared/data/mkqa/mkqa-ja.jsonl --pred pred-ja.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from cora.evaluation import mkqa
from cora.evaluation.report import format_table
from cora.fileio import atomic_write_json, atomic_write_text
from cora.pipeline import Pipeline
from cora.questions import read_questions

LOCALES = ["ar", "en", "es", "fi", "ja", "km", "ko", "ms", "ru", "sv", "tr", "zh_cn"]
DATASTORE_CODES = {"zh_cn": "zh"}  # MKQA locale -> the language code passages carry
SUMMARY_METRICS = ["best_f1", "best_em", "best_f1_threshold", "f1", "exact_match", "answerable_f1"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="a pipeline folder ('cora pipeline create')")
    source.add_argument("--index", help="an index of your datastore ('cora index build'); a pipeline is created")
    ap.add_argument("--reader", default="me5-small-reader", help="with --index: reader folder or shipped name")
    ap.add_argument("--query-encoder", help="with --index: a query tower over the index (e.g. mdpr-me5-small)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="the shared data folder (holding mkqa/)")
    ap.add_argument("--out", default="runs/mkqa", help="output folder")
    ap.add_argument("--langs", nargs="+", default=LOCALES, choices=LOCALES, metavar="LOCALE",
                    help=f"MKQA locales to run (default: all 12: {' '.join(LOCALES)})")
    ap.add_argument("--lang-map", nargs="*", default=[], metavar="LOCALE=CODE",
                    help="language code the pipeline gets for a locale (default zh_cn=zh; others as they are)")
    ap.add_argument("--limit", type=int, help="answer only the first N questions of each locale (a quick run)")
    ap.add_argument("--k", type=int, help="passages read per question (default: the pipeline's)")
    ap.add_argument("--batch-size", type=int, default=32, help="questions retrieved and read together")
    ap.add_argument("--device", help="cpu or cuda")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data = Path(args.data) / "mkqa"
    if not data.exists():
        raise SystemExit(f"{data} not found: pass --data pointing at the shared data folder")
    codes = {**DATASTORE_CODES, **dict(item.split("=", 1) for item in args.lang_map)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_dir = Path(args.pipeline) if args.pipeline else Pipeline.create(
        out / "pipeline", args.index, args.reader, query_encoder=args.query_encoder)
    pipeline = Pipeline.from_pretrained(pipeline_dir, device=args.device)

    summary = {}
    for locale in args.langs:
        questions = read_questions(data / f"mkqa-{locale}.jsonl")[: args.limit]
        pred_path = out / f"pred-{locale}.jsonl"
        seconds = answer_locale(pipeline, questions, locale, codes.get(locale, locale), pred_path, args)
        gold = {mkqa.mkqa_example_id(q.id, locale): mkqa.xor_gold_answers(q.answers) for q in questions}
        result = mkqa.evaluate(mkqa.read_mkqa_predictions(pred_path), gold, locale)
        report = {**result.to_dict(), "questions": len(questions), "answer_seconds": seconds}
        atomic_write_json(out / f"metrics-{locale}.json", report)
        summary[locale] = report
        logging.info("%s: best F1 %.2f, F1 %.2f (%d questions)", locale, result.metrics["best_f1"],
                     result.metrics["f1"], len(questions))
    table = {loc: {m: r[m] for m in SUMMARY_METRICS} for loc, r in summary.items()}
    table["macro"] = {m: round(statistics.mean(r[m] for r in table.values()), 2) for m in SUMMARY_METRICS}
    atomic_write_json(out / "summary.json", {"pipeline": str(pipeline_dir), "limit": args.limit, "k": args.k,
                                             "per_locale": summary, "macro": table["macro"]})
    text = format_table(table, SUMMARY_METRICS, digits=2)
    atomic_write_text(out / "summary.md", text + "\n")
    print(text)
    return 0


def answer_locale(pipeline: Pipeline, questions, locale: str, code: str, pred_path: Path, args) -> float | None:
    """Write MKQA prediction lines for ``questions`` (skipped when ``pred_path`` already holds them all)."""
    if pred_path.exists():
        done = [json.loads(line)["example_id"] for line in pred_path.read_text(encoding="utf-8").splitlines()]
        if done == [mkqa.mkqa_example_id(q.id, locale) for q in questions]:
            logging.info("%s: predictions already complete in %s", locale, pred_path)
            return None
    start, lines = time.perf_counter(), []
    for i in range(0, len(questions), args.batch_size):
        chunk = questions[i : i + args.batch_size]
        answers = pipeline.answer_batch([q.question for q in chunk], [code] * len(chunk), args.k)
        lines += [json.dumps(mkqa.prediction_record(q.id, a, locale), ensure_ascii=False) + "\n"
                  for q, a in zip(chunk, answers, strict=True)]
    atomic_write_text(pred_path, "".join(lines))
    return round(time.perf_counter() - start, 1)


if __name__ == "__main__":
    raise SystemExit(main())
