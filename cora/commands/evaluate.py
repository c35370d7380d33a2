"""``cora evaluate xor|xor-retrieve|mkqa|mkqa-convert``."""

from __future__ import annotations

import argparse
import json

from cora.errors import CoraError

MODES_HELP = (
    "official: reproduces the published XOR-TyDi/CORA eval_xor_full.py exactly (ASCII punctuation, 年/歳/人/년 "
    "deleted everywhere, MeCab words for Japanese only, nltk character BLEU-4 without smoothing, which is ~0 for "
    "short exact answers) so numbers compare with papers. fixed: Unicode punctuation, counters removed only after "
    "digits, real word segmentation for ja (MeCab), zh (jieba), th (pythainlp), km (characters), and smoothed "
    "sacrebleu on those words."
)

RETRIEVE_MODES_HELP = (
    "official: reproduces XOR-TyDi's eval_xor_retrieve.py exactly: tokens are nltk word_tokenize tokens (run "
    "offline), the raw answer is searched in the tokenised window (so answers with punctuation such as "
    "\"2.8%\" never match), questions without a ranked list are not counted, a question's language is the one "
    "its ranked list names. fixed: whitespace tokens, the answer searched as written, every gold question "
    "counted (no ranked list = a miss)."
)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions (XOR-TyDi, MKQA) and print per-language tables",
                       description="Evaluate predictions against XOR-TyDi or MKQA gold files; print a per-language "
                                   "table, optionally write JSON (--json-out) and a bar chart (--plot).")
    esub = p.add_subparsers(dest="evaluate_command", metavar="<benchmark>", required=True)

    x = esub.add_parser("xor", help="XOR-Full: F1, EM, BLEU per language",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="XOR-TyDi XOR-Full evaluation (answers in the question's language).\n\nModes:\n  "
                                    + MODES_HELP)
    x.add_argument("--gold", required=True, help="gold JSONL ({id, question, answers, lang})")
    x.add_argument("--pred", required=True, help="predictions JSON {id: answer}")
    x.add_argument("--mode", choices=("official", "fixed"), default="official", help="scoring rules (see above)")
    _outputs(x)
    x.set_defaults(func=_xor)

    r = esub.add_parser("xor-retrieve", help="XOR-Retrieve: R@2kt and R@5kt per language",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Answer recall within the first 2,000 / 5,000 tokens of the retrieved passages, "
                                    "concatenated in rank order.\n\nModes:\n  " + RETRIEVE_MODES_HELP)
    r.add_argument("--gold", required=True, help="gold JSONL ({id, answers, lang})")
    r.add_argument("--pred", "--hits", dest="pred", required=True,
                   help="retrieved passages: the official prediction file (a JSON list of {id, lang, ctxs: [text, "
                        "...]}) or 'cora retrieve' output (JSONL with hits and their text)")
    r.add_argument("--mode", choices=("official", "fixed"), default="official", help="scoring rules (see above)")
    _outputs(r)
    r.set_defaults(func=_xor_retrieve)

    m = esub.add_parser("mkqa", help="MKQA: EM/F1 per locale with the official normalisation",
                        description="MKQA evaluation. With MKQA prediction JSONL (example_id, prediction, "
                                    "binary_answer, no_answer_prob; what 'cora answer --format mkqa' writes): "
                                    "ml-mkqa's official metrics (mkqa_eval.py -v: best-threshold EM/F1, the "
                                    "threshold, then EM/F1 as given), against an original-schema gold file "
                                    "(.jsonl.gz, locale --lang) or one XOR-format file (mkqa-xx.jsonl, its ids "
                                    "without the _xx suffix). Ids the official script would stop on (missing or "
                                    "extra) and empty splits (NaN) are counted and reported. With XOR-format gold "
                                    "files and a {id: answer} JSON: EM/F1 per locale, no threshold.")
    m.add_argument("--gold", required=True, nargs="+", help="original .jsonl(.gz) or XOR-format JSONL file(s)")
    m.add_argument("--pred", required=True, help="predictions: MKQA JSONL, or {id: answer} JSON (XOR format only)")
    m.add_argument("--lang", default="en", help="locale for the original schema (default en)")
    _outputs(m)
    m.set_defaults(func=_mkqa)

    c = esub.add_parser("mkqa-convert", help="convert original MKQA to XOR-format files per locale",
                        description="Write mkqa-{locale}.jsonl in the XOR format for exactly the locales given "
                                    "(all 26 when --langs is omitted). Unanswerable questions get the answer "
                                    "'No Answer', the placeholder the evaluators recognise; a question with real "
                                    "answers and an empty one keeps 'No Answer' as its last alternative.")
    c.add_argument("--gold", required=True, help="original MKQA .jsonl(.gz)")
    c.add_argument("--langs", nargs="+", help="locales to write (default: all)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--drop-unanswerable", action="store_true", help="leave unanswerable questions out")
    c.set_defaults(func=_mkqa_convert)


def _outputs(p) -> None:
    p.add_argument("--json-out", help="write the full report as JSON here")
    p.add_argument("--plot", help="write a per-language bar chart (PNG) here")


def _emit(args, table: dict, metrics: list[str], report: dict, title: str, digits: int = 1) -> None:
    from cora.evaluation.report import format_table, plot_per_language
    from cora.fileio import atomic_write_json

    print(format_table(table, metrics, digits))
    if args.json_out:
        atomic_write_json(args.json_out, report)
    if args.plot:
        plot_per_language(table, metrics, args.plot, title)


def _xor(args) -> int:
    from cora.evaluation.xor import evaluate_xor_full, read_gold_jsonl, read_predictions

    result = evaluate_xor_full(read_gold_jsonl(args.gold), read_predictions(args.pred), args.mode)
    report = result.to_dict()
    table = {**report["per_language"], "macro": report["macro"]}
    _emit(args, table, ["f1", "em", "bleu"], report, f"XOR-Full ({args.mode})")
    print(f"mode={args.mode}; skipped 'No Answer' gold: {result.skipped_no_answer}; missing predictions (scored 0):"
          f" {result.missing}; extra predictions (ignored): {result.extra}")
    return 0


def _xor_retrieve(args) -> int:
    from cora.evaluation.xor import read_gold_jsonl, read_ranked_contexts, xor_retrieve_recall

    result = xor_retrieve_recall(read_gold_jsonl(args.gold), read_ranked_contexts(args.pred), args.mode)
    table = {**result.per_language, "macro": result.macro} if result.per_language else {}
    _emit(args, table, ["count", "R@2kt", "R@5kt"], result.to_dict(), f"XOR-Retrieve ({args.mode})")
    print(f"mode={args.mode}; gold questions without a ranked list: {result.missing} ("
          + ("not counted, as officially" if args.mode == "official" else "scored as misses")
          + f"); ranked lists not in gold (ignored): {result.extra}; repeated ids: {result.duplicates}; "
          f"yes/no-only questions skipped: {result.yes_no}")
    return 0


def _mkqa(args) -> int:
    from cora.evaluation import mkqa
    from cora.evaluation.xor import read_gold_jsonl, read_predictions

    first = args.gold[0]
    if first.endswith(".gz") or _is_original(first):
        if len(args.gold) != 1:
            raise CoraError("give one original-schema MKQA file")
        records = mkqa.read_original(first)
        gold = {str(r["example_id"]): mkqa.gold_answers(r, args.lang) for r in records}
        return _mkqa_official(args, mkqa.read_mkqa_predictions(args.pred), gold, args.lang)
    gold_rows = [row for path in args.gold for row in read_gold_jsonl(path)]
    if _is_mkqa_jsonl(args.pred):
        locales = sorted({row["lang"] for row in gold_rows})
        if len(locales) != 1:
            raise CoraError(f"MKQA prediction lines name no locale: give the XOR-format gold file of one locale "
                            f"(these hold {', '.join(locales)})")
        gold = {mkqa.mkqa_example_id(row["id"], locales[0]): mkqa.xor_gold_answers(row["answers"])
                for row in gold_rows}
        return _mkqa_official(args, mkqa.read_mkqa_predictions(args.pred), gold, locales[0])
    preds = read_predictions(args.pred)
    table = mkqa.xor_format_metrics(preds, gold_rows)
    extra = len(set(preds) - {r["id"] for r in gold_rows})
    _emit(args, table, ["count", "em", "f1", "missing"], {"per_locale": table, "extra_predictions": extra},
          "MKQA")
    print(f"missing predictions (scored 0): {int(table.get('macro', {}).get('missing', 0))}; extra predictions "
          f"(ignored): {extra}")
    return 0


def _mkqa_official(args, preds, gold, locale: str) -> int:
    from cora.evaluation import mkqa

    result = mkqa.evaluate(preds, gold, locale)
    _emit(args, {locale: result.metrics}, list(result.metrics), result.to_dict(), f"MKQA {locale}", digits=2)
    print(f"scored {result.scored}; gold examples without a prediction: {result.missing}; predictions without a "
          f"gold example: {result.extra}")
    for message in result.warnings():
        print(f"warning: {message}")
    return 0


def _is_mkqa_jsonl(path: str) -> bool:
    """Whether a prediction file is MKQA's JSONL (a first line with example_id), not a {id: answer} object."""
    with open(path, encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "example_id" in obj


def _is_original(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        return "queries" in json.loads(first)
    except json.JSONDecodeError:
        return False


def _mkqa_convert(args) -> int:
    from pathlib import Path

    from cora.evaluation import mkqa
    from cora.fileio import atomic_write_text

    converted = mkqa.convert_to_xor(mkqa.read_original(args.gold), args.langs,
                                    keep_unanswerable=not args.drop_unanswerable)
    for loc, rows in converted.items():
        atomic_write_text(Path(args.out) / f"mkqa-{loc}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{loc}: {len(rows)} questions -> {Path(args.out) / f'mkqa-{loc}.jsonl'}")
    return 0
