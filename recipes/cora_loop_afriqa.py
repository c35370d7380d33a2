"""The CORA loop on AfriQA: questions in ten African languages, evidence only in English/French (docs/afriqa_loop.md).

* **Datastore**: every AfriQA train and dev gold passage (English; French for Fon and Wolof; one copy of each
  text, recipes/afriqa.py) plus **distractors**: the English TyDi QA GoldP training passages (real English
  Wikipedia paragraphs written for other questions). No French distractors are in the shared data.
* **Training questions**: AfriQA *train*, with their answers in the question's language and in the pivot language
  (``answers_by_lang``), **without** their gold passages: positives are mined (CORA's rule: the reader reads each of
  the top ``label_depth`` passages alone and is right against the pivot answer; a passage holding the answer but
  read wrong is a fallback positive). A second file with the same ids carries the gold group, used only by
  recipes/loop_label_quality.py to score the mined labels.
* **Dev**: AfriQA dev, all ten languages; recall is *answer-in-top-k* (``dev_recall: answer``: a passage holding a
  gold answer, normalised; Swahili, Wolof and Yorùbá dev have no gold passages in the shared data). F1 is measured
  on the first ``--eval-per-lang`` dev questions of each language, against the question-language answers (the
  pipeline's answer) and the pivot answers (the answer as read, ``qa_source``).
* **Round 0** = the shipped pair: the ``mdpr-me5-small`` query tower over me5-small passage vectors and the
  ``me5-small-reader``. Each round retrains the query tower's LoRA adapter (``retriever_tower: query``: passages
  are never re-encoded) and the top ``--reader-layers`` layers of the reader (a CPU budget) on the mined data.
* The human translations of the questions (``translated_question``) are **not used** by default: CORA had none
  for its training questions, and none exist at test time. Two ablations use them, at training time only:
  ``--with-translations`` adds each training question's English/French translation as an extra training question
  (translate-train, same answers); ``--distill-translations W`` pulls the query tower's vector of each training
  question towards the frozen backbone's vector of its translation (weight W; ``--distill-mode ranking``: towards
  its ranking of the datastore); ``--distill-answerless`` also distils the 1,666 training questions that have no
  answer (they cannot be mined).
* ``--skip-answerless`` labels only the passages that hold a gold answer (an extractive reader cannot be right on
  the others), so ``--label-depth 100`` mines from the top 100 at the cost of ~4 reads a question.

Every step writes one output atomically under ``--out`` (outside git: ``$CORA_HOME/runs/afriqa-loop`` by default),
so rerunning the same command resumes after the last finished step; no step takes more than about an hour on two
shared CPU cores, so a slice of at most 2.5 hours is one rerun, e.g. ``timeout 2.5h``:

    python recipes/cora_loop_afriqa.py --rounds 2             # round 0, 1, 2; rerun to resume
    python recipes/cora_loop_afriqa.py --report               # per-language tables of the rounds finished so far
    python recipes/loop_label_quality.py $CORA_HOME/runs/afriqa-loop/loop \\
        --gold-questions $CORA_HOME/runs/afriqa-loop/train-gold.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from cora import cli
from cora.datastore import Datastore, iter_squad_paragraphs
from cora.encoder import cora_home
from cora.fileio import atomic_write_json
from cora.iterate import IterateConfig
from cora.questions import Question, write_questions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import afriqa  # noqa: E402
import flores  # noqa: E402

# The languages whose dev gold passages the shared data holds (so the store can hold their answers): Swahili and
# Wolof have no gold passages at all, Yorùbá none for dev.
WITH_DEV_GOLD = ("bem", "fon", "hau", "ibo", "kin", "twi", "zul")
# AfriQA language -> its FLORES-200 file (Swahili is 'swh', the individual language, in FLORES); the pivot's file.
FLORES_CODES = {"bem": "bem_Latn", "fon": "fon_Latn", "hau": "hau_Latn", "ibo": "ibo_Latn", "kin": "kin_Latn",
                "swa": "swh_Latn", "twi": "twi_Latn", "wol": "wol_Latn", "yor": "yor_Latn", "zul": "zul_Latn"}
FLORES_PIVOTS = {"en": "eng_Latn", "fr": "fra_Latn"}


def flores_distill_questions(folder: Path, per_lang: int) -> list[Question]:
    """The first ``per_lang`` FLORES sentences of each AfriQA language as distillation-only questions, each with the
    same sentence in the language's AfriQA pivot (English; French for Fon and Wolof) as its translation."""
    out = []
    for lang, code in FLORES_CODES.items():
        for idx, text, pivot_text in flores.sentence_pairs(folder, code, FLORES_PIVOTS[afriqa.LANGS[lang]], per_lang):
            out.append(Question(f"flores/{code}/{idx}", text, lang, [], translation=pivot_text))
    return out


def build_store(data: Path, out: Path) -> Datastore:
    """AfriQA train+dev gold passages + the English TyDi QA GoldP training paragraphs as distractors."""
    if (out / "datastore.json").exists():
        return Datastore(out)
    seen, passages = set(), []
    for lang in afriqa.LANGS:
        for split in ("train", "dev"):
            for p in afriqa.gold_passages(data, lang, split).values():
                if p.group not in seen:
                    seen.add(p.group)
                    passages.append(p)
    n_gold = len(passages)
    texts = {p.text.strip() for p in passages}
    from cora.datastore import Passage

    for para in iter_squad_paragraphs(data / "tydiqa-goldp" / "english_tydiqa_train.json"):
        text = (para.context or "").strip()
        if text and text not in texts:
            texts.add(text)
            passages.append(Passage(f"tydi.en:{para.passage_id}", "en", para.title, text, f"tydi:{para.passage_id}"))
    logging.info("datastore: %d AfriQA gold passages + %d TyDi QA English distractors", n_gold,
                 len(passages) - n_gold)
    return Datastore.build(passages, out)


def loop_questions(qs: list[afriqa.AfriQAQuestion], split: str, gold: bool, translations: bool = False,
                   distill: bool = False) -> list[Question]:
    out = []
    for q in qs:
        if not q.answers and not q.pivot_answers:
            continue
        group = q.gold_group if gold else None
        out.append(Question(f"{q.lang}/{split}/{q.id}", q.question, q.lang, q.answers, gold_group=group,
                            answers_by_lang={q.pivot: q.pivot_answers},
                            translation=(q.translated_question.strip() or None) if distill else None))
        if translations and q.translated_question.strip():
            out.append(Question(f"{q.lang}/{split}/{q.id}/translated", q.translated_question, q.pivot,
                                q.pivot_answers, gold_group=group))
    return out


def report(out: Path) -> str:
    """Markdown tables, one column per finished round: answer-in-top-20 recall, F1 against the question-language
    answers and against the pivot answers, per language and macro; then label quality per round."""
    import loop_label_quality

    loop = out / "loop"
    metrics = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(loop.glob("round_*/metrics.json"),
                                                                          key=lambda p: int(p.parent.name[6:]))]
    if not metrics:
        return "no round has finished yet\n"
    langs = list(afriqa.LANGS)
    rounds = [m["round"] for m in metrics]
    head = "| lang | " + " | ".join(f"round {r}" for r in rounds) + " |\n|---|" + "---:|" * len(rounds) + "\n"

    def table(title: str, cell) -> str:
        rows = [f"| {lang} | " + " | ".join(cell(m, lang) for m in metrics) + " |" for lang in [*langs, "macro"]]
        rows.append(f"| macro, the {len(WITH_DEV_GOLD)} with dev gold passages | "
                    + " | ".join(cell(m, WITH_DEV_GOLD) for m in metrics) + " |")
        return f"**{title}**\n\n" + head + "\n".join(rows) + "\n\n"

    def pct(d, lang, key, scale=1.0):
        if isinstance(lang, tuple):  # a macro over these languages
            return f"{scale * sum(d[x][key] for x in lang) / len(lang):.1f}" if all(x in d for x in lang) else "-"
        return f"{scale * d[lang][key]:.1f}" if lang in d else "-"

    main = [m["datastores"]["main"] for m in metrics]
    for m, d in zip(metrics, main, strict=True):
        m["_d"] = d
    md = table("Answer in the top 20 (% of dev questions, all answerable dev questions)",
               lambda m, lang: pct(m["_d"]["recall"], lang, "R@20", 100))
    md += table("Answer in the top 5", lambda m, lang: pct(m["_d"]["recall"], lang, "R@5", 100))
    md += table("F1, question-language answers (pipeline answer, top 5 read)",
                lambda m, lang: pct(m["_d"]["qa"], lang, "F1"))
    md += table("F1, pivot answers (the answer as read from the English/French passage)",
                lambda m, lang: pct(m["_d"].get("qa_source", {}), lang, "F1"))
    store = Datastore(out / "datastore")
    from cora.questions import read_questions

    gold = {q.id: q.gold_group for q in read_questions(out / "train-gold.jsonl") if q.gold_group}
    lines = []
    for r in rounds[1:]:
        q = loop_label_quality.round_quality(loop / f"round_{r}", store, gold)
        t, h = q["total"], q["in_gold_group"]
        pos = [k for k in t if k.startswith("mined:") and k != "mined:hard-negative"]
        prec = q["precision"]
        lines.append(f"| {r} | {sum(t[k] for k in pos)} | "
                     + (f"{100 * prec['mined positives']:.1f}" if prec["mined positives"] is not None else "-")
                     + " | " + ", ".join(f"{k[6:]} {t[k]} ({100 * h.get(k, 0) / t[k]:.0f}%)" for k in sorted(pos))
                     + f" | {t.get('mined:hard-negative', 0)} | "
                     + (f"{100 * prec['mined hard negatives']:.1f}" if prec["mined hard negatives"] is not None
                        else "-") + " |")
    if lines:
        md += ("**Label quality** (training questions with a gold passage; positives: share that is the gold "
               "passage's text; hard negatives: share that is not)\n\n| round | mined positives | precision | by "
               "source (precision) | hard negatives | precision |\n|---|---:|---:|---|---:|---:|\n"
               + "\n".join(lines) + "\n")
    return md


def export_best(out: Path, dest: Path, round_: int | None = None) -> int:
    """Export the query tower of the trained round (>= 1) with the best macro answer-in-top-20 on AfriQA dev, or of
    round ``round_``."""
    from train_mdpr import export_query_encoder

    rounds = {}
    for path in (out / "loop").glob("round_*/metrics.json"):
        k = int(path.parent.name[6:])
        if k >= 1:
            recall = json.loads(path.read_text(encoding="utf-8"))["datastores"]["main"]["recall"]
            rounds[k] = sum(recall[lang]["R@20"] for lang in afriqa.LANGS) / len(afriqa.LANGS)
    if not rounds:
        raise SystemExit(f"{out / 'loop'}: no trained round has finished")
    if round_ is not None and round_ not in rounds:
        raise SystemExit(f"{out / 'loop'}: round {round_} has not finished (finished: {sorted(rounds)})")
    best = round_ if round_ is not None else max(rounds, key=lambda k: (rounds[k], -k))
    export_query_encoder(out / "loop" / f"round_{best}" / "retriever", dest, "cross-lingual")
    print(f"round {best} (answer in the top 20, macro {100 * rounds[best]:.1f}) -> {dest}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--out", default=str(cora_home() / "runs" / "afriqa-loop"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--label-depth", type=int, default=8, help="passages the reader labels per question")
    ap.add_argument("--eval-per-lang", type=int, default=100, help="dev questions per language read for F1")
    ap.add_argument("--reader-layers", type=int, default=2, help="top reader layers retrained per round")
    ap.add_argument("--reader-steps", type=int, default=150)
    ap.add_argument("--retriever-epochs", type=int, default=2)
    ap.add_argument("--with-translations", action="store_true",
                    help="ablation: add the human translations of the training questions as training questions")
    ap.add_argument("--skip-answerless", action="store_true",
                    help="label only the passages holding a gold answer (the rest are hard-negative candidates "
                         "unread), so --label-depth 100 costs ~4 reads a question")
    ap.add_argument("--fallback-depth", type=int, default=None, metavar="N",
                    help="fallback positives (answer present, reader wrong) only from the top N (default: all "
                         "labelled); reader-confirmed positives from any labelled depth")
    ap.add_argument("--distill-translations", type=float, default=0.0, metavar="W",
                    help="ablation: distil the query tower towards the frozen backbone's vector of each training "
                         "question's human translation, with weight W (every training question, mined or not)")
    ap.add_argument("--distill-mode", choices=("vector", "ranking"), default="vector",
                    help="with --distill-translations: 'vector' pulls the question's vector onto the translation's; "
                         "'ranking' asks the question to rank the datastore as its translation does (KL)")
    ap.add_argument("--distill-temperature", type=float, metavar="T",
                    help="with --distill-mode ranking: softmax temperature of both rankings (default 0.02, the "
                         "contrastive one)")
    ap.add_argument("--distill-answerless", action="store_true",
                    help="with --distill-translations: also distil the training questions that have no answer (they "
                         "cannot be mined, but have translations); written to <out>/distill.jsonl")
    ap.add_argument("--distill-flores", type=int, default=0, metavar="N",
                    help="with --distill-translations: also distil the first N FLORES-200 sentences of each of the "
                         "ten languages towards the same sentence in its pivot language (parallel text, not questions; "
                         "FLORES is then training data for these ten languages); written to <out>/distill.jsonl")
    ap.add_argument("--distill-flores-mode", choices=("ranking", "vector"), default=None,
                    help="with --distill-flores: 'vector' distils the FLORES pairs vector to vector (the alignment "
                         "itself; to <out>/distill-vector.jsonl) while the questions keep --distill-mode "
                         "(default: --distill-mode for both)")
    ap.add_argument("--retriever-lr", type=float, default=2e-4, help="learning rate of the query tower's adapter")
    ap.add_argument("--encoder", default="mdpr-me5-small",
                    help="round 0's retriever encoder: a shipped name or a folder (the documented runs started from "
                         "the tower shipped before them, which git keeps at commit 14877b2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report", action="store_true", help="print the tables of the finished rounds and stop")
    ap.add_argument("--export", metavar="DIR",
                    help="write the query tower of the finished round with the best dev answer-in-top-20 (macro) "
                         "as a shipped encoder folder (fp16 adapter, scope 'cross-lingual') and stop, e.g. "
                         "cora/resources/mdpr-me5-small")
    ap.add_argument("--export-round", type=int, metavar="N", help="with --export: this round instead of the best")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, out = Path(args.data), Path(args.out).expanduser()
    if args.report:
        print(report(out))
        return 0
    if args.export:
        return export_best(out, Path(args.export), args.export_round)
    distill = args.distill_translations > 0
    if (args.distill_answerless or args.distill_flores) and not distill:
        ap.error("--distill-answerless and --distill-flores need --distill-translations W (> 0)")
    if args.distill_flores < 0:
        ap.error("--distill-flores must be >= 0")
    if args.distill_flores_mode and not args.distill_flores:
        ap.error("--distill-flores-mode needs --distill-flores N")
    out.mkdir(parents=True, exist_ok=True)
    store = build_store(data, out / "datastore")
    train = afriqa.questions(data, "train")
    dev = afriqa.questions(data, "dev")
    write_questions(loop_questions(train, "train", gold=False, translations=args.with_translations, distill=distill),
                    out / "train.jsonl")
    write_questions(loop_questions(train, "train", gold=True, translations=args.with_translations),
                    out / "train-gold.jsonl")
    write_questions(loop_questions(dev, "dev", gold=True), out / "dev.jsonl")
    distill_only = []
    if args.distill_answerless:
        distill_only += [Question(f"{q.lang}/train/{q.id}", q.question, q.lang, [],
                                  translation=q.translated_question.strip())
                         for q in afriqa.answerless_translated(train)]
    flores_vector = args.distill_flores_mode == "vector"
    flores_qs = flores_distill_questions(data / "parallel-flores", args.distill_flores) if args.distill_flores else []
    if flores_vector:
        write_questions(flores_qs, out / "distill-vector.jsonl")
    else:
        distill_only += flores_qs
    if distill_only:
        write_questions(distill_only, out / "distill.jsonl")
    cfg = IterateConfig(
        output_dir=str(out / "loop"), datastore=str(store.path), train_questions=str(out / "train.jsonl"),
        dev_questions=str(out / "dev.jsonl"), encoder=args.encoder, reader="me5-small-reader",
        rounds=args.rounds, retrieve_k=max(20, args.label_depth), label_depth=args.label_depth,
        read_answerless=not args.skip_answerless, fallback_depth=args.fallback_depth, hard_negatives=3, reader_k=4,
        reader_positives=2, eval_k=5, recall_ks=[1, 5, 20], dev_recall="answer", eval_qa_per_lang=args.eval_per_lang,
        retriever_tower="query", query_all_weight=0.5, temperature=0.02, distill_weight=args.distill_translations,
        distill_mode=args.distill_mode, distill_temperature=args.distill_temperature,
        distill_questions=str(out / "distill.jsonl") if distill_only else None,
        distill_vector_questions=str(out / "distill-vector.jsonl") if flores_vector else None,
        retriever_train={"batch_size": 32, "epochs": args.retriever_epochs, "lr": args.retriever_lr, "warmup_ratio": 0.05,
                         "save_every": 50, "eval_every": 10**6, "log_every": 10},
        reader_train={"batch_size": 4, "max_steps": args.reader_steps, "lr": 3e-5, "warmup_ratio": 0.1,
                      "save_every": 50, "eval_every": 10**6, "log_every": 10},
        reader_trainable_layers=args.reader_layers, device=args.device)
    config = out / "iterate_config.json"
    atomic_write_json(config, {"type": "IterateConfig", **dataclasses.asdict(cfg)})
    print(f"running the equivalent of: cora iterate --config {config}", flush=True)
    return cli.main(["iterate", "--config", str(config)])


if __name__ == "__main__":
    raise SystemExit(main())
