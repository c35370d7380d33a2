"""Retrain one round's query tower on fixed mined data, with variants, scored on a held-out fifth of AfriQA train.

A loop round spends most of its time labelling and reading; the query tower alone trains in minutes. This recipe
takes a finished loop run (``recipes/cora_loop_afriqa.py``: its round-0 index and round-1 ``mined.json``), holds
out a fixed fifth of the training questions that have a gold passage (by a hash of the id), retrains the round-0
tower on the mined positives of the rest with the given options, and reports *answer in the top 20 / top 5* (the
loop's dev measure) on the held-out fifth (``tune``: for choosing options) and on AfriQA dev (reported, not for
choosing). ``--oracle`` trains on the gold passages instead of the mined ones: how much better labels could give.

    python recipes/afriqa_tower_probe.py --run $CORA_HOME/runs/afriqa-loop-d100 --name mined-e8 --epochs 8 --lr 5e-4
    python recipes/afriqa_tower_probe.py --run ... --name rank1-e8 --epochs 8 --lr 5e-4 --distill 1 --mode ranking

The tower retrained is the run's round-0 encoder as its config names it; a shipped name (``mdpr-me5-small``) means
the tower that ships *now*, so pass ``--encoder`` with the folder the run started from once that has changed.

Each result is one JSON line appended to ``<run>/probe/results.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from cora.config import config_from_dict
from cora.evaluation.retrieval import RankedResult, answer_recall_at_k
from cora.evaluation.text import contains_answer
from cora.iterate import IterateConfig, Loop
from cora.mining import Mined, reader_answers
from cora.questions import read_questions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import afriqa  # noqa: E402


def held_out(qid: str, gold: dict[str, str | None]) -> bool:
    """A fixed fifth of the training questions that have a gold passage."""
    return gold.get(qid) is not None and int(hashlib.md5(qid.encode()).hexdigest(), 16) % 5 == 0


def answer_recall(retriever, questions) -> dict[str, list[float]]:
    """Per language and "macro": [% with an answer-holding passage in the top 20, in the top 5] (the loop's
    ``dev_recall: answer``)."""
    hits = retriever.search_batch([q.question for q in questions], k=20, langs=[q.lang for q in questions])
    table = ranked_answer_recall(questions, [[h.group for h in hs] for hs in hits], [[h.text for h in hs] for hs in hits])
    return {lang: [round(x, 2) for x in r] for lang, r in table.items()}


def ranked_answer_recall(questions, groups, texts) -> dict[str, list[float]]:
    """Per language and "macro": [% with an answer-holding passage in the top 20, in the top 5], from each
    question's ranked passages (their groups and texts, best first)."""
    ranked = [RankedResult(q.lang, g, frozenset(), t, reader_answers(q))
              for q, g, t in zip(questions, groups, texts, strict=True)]
    table = answer_recall_at_k(ranked, (20, 5), match=contains_answer)
    return {lang: [100 * r["AR@20"], 100 * r["AR@5"]] for lang, r in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a cora_loop_afriqa.py --out folder with round_1/mined.json")
    ap.add_argument("--name", required=True, help="this variant's name (its output folder under <run>/probe)")
    ap.add_argument("--epochs", type=int, default=2, help="0: score the round-0 tower untrained")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--distill", type=float, default=0.0, help="distillation weight towards the translations")
    ap.add_argument("--mode", choices=("vector", "ranking"), default="ranking")
    ap.add_argument("--distill-temperature", type=float,
                    help="--mode ranking: softmax temperature of both rankings (default: the run's temperature)")
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--oracle", action="store_true", help="train on the gold passages instead of mined positives")
    ap.add_argument("--encoder", help="the tower to retrain (default: the run's round-0 encoder as its config names "
                                      "it; a shipped name such as mdpr-me5-small means whatever ships now, so pass "
                                      "the tower the run started from when that has changed)")
    ap.add_argument("--distill-unanswerable", action="store_true",
                    help="with --distill: also distil the training questions that have no answer (they have "
                         "translations; distillation needs no answer)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from cora.encoder import Encoder
    from cora.index import DenseIndex
    from cora.retriever import Retriever
    from cora.retriever_training import Ctx, DPRExample, QueryTowerTask
    from cora.training import TrainConfig, train

    run = Path(args.run).expanduser()
    fields = json.loads((run / "iterate_config.json").read_text(encoding="utf-8"))
    fields.pop("type")
    fields |= {"encoder": args.encoder or fields["encoder"], "distill_weight": args.distill,
               "distill_mode": args.mode, "distill_temperature": args.distill_temperature,
               "retriever_train": {**fields["retriever_train"], "epochs": args.epochs, "lr": args.lr}}
    cfg = config_from_dict(IterateConfig, fields, str(run / "iterate_config.json"))
    loop = Loop(cfg)
    # Every training question's human translation, whether or not the run was started with them.
    afriqa_train = afriqa.questions(Path(args.data), "train")
    translations = {f"{q.lang}/train/{q.id}": q.translated_question.strip() or None for q in afriqa_train}
    loop.train_q = [dataclasses.replace(q, translation=translations.get(q.id)) for q in loop.train_q]
    gold = {q.id: q.gold_group for q in read_questions(run / "train-gold.jsonl")}
    tune = [q for q in loop.train_q if held_out(q.id, gold)]
    loop.train_q = [q for q in loop.train_q if not held_out(q.id, gold)]
    if args.oracle:
        rows_of: dict[str, list[int]] = {}
        for row, group in enumerate(loop.datastore.dataset["group"]):
            rows_of.setdefault(group, []).append(row)

        def ctx(row: int) -> Ctx:
            p = loop.datastore[row]
            return Ctx(p.id, p.title, p.text)

        examples = [DPRExample(q.question, list(q.answers), q.lang, [ctx(r) for r in rows_of[gold[q.id]]], [], [],
                               q.translation if args.distill > 0 else None)
                    for q in loop.train_q if gold.get(q.id) in rows_of]
    else:
        examples = loop._dpr_examples(Mined.load(run / "loop" / "round_1" / "mined.json"))
    if args.distill_unanswerable and args.distill > 0:
        answerless = afriqa.answerless_translated(afriqa_train)
        examples += [DPRExample(q.question, [], q.lang, [], [], [], q.translated_question.strip())
                     for q in answerless]
        logging.info("+ %d answerless training questions, for distillation only", len(answerless))
    out = run / "probe" / args.name
    logging.info("%d training examples, %d held-out questions", len(examples), len(tune))
    start = time.time()
    encoder = Encoder.from_pretrained(cfg.encoder, device=cfg.device)
    index = DenseIndex.load(run / "loop" / "round_0" / "index")
    if args.epochs > 0:
        tcfg = config_from_dict(TrainConfig, {"seed": cfg.seed, **cfg.retriever_train, "output_dir": str(out)},
                                "retriever_train")
        task = QueryTowerTask(encoder, examples, tcfg.batch_size, loop.datastore, index.passage_vectors(), None,
                              cfg.temperature, all_weight=cfg.query_all_weight, distill_weight=args.distill,
                              distill_mode=args.mode, distill_temperature=cfg.distill_temperature)
        train(task, tcfg)
    retriever = Retriever(encoder, index, loop.datastore)
    result = {"name": args.name, "options": {k: v for k, v in vars(args).items() if k not in ("run", "data")}
              | {"encoder": cfg.encoder},
              "train_s": round(time.time() - start)}
    for split, questions in (("tune", tune), ("dev", loop.dev_q)):
        per_lang = answer_recall(retriever, questions)
        result[f"{split}_macro"] = per_lang.pop("macro")
        result[split] = per_lang
    print(json.dumps(result))
    out.mkdir(parents=True, exist_ok=True)
    with open(run / "probe" / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
