"""How well the human translations retrieve: the ceiling of distilling the query tower towards them.

The loop's ranking distillation (``--distill-translations W --distill-mode ranking``) asks the query tower to rank
the store as each training question's human English/French translation does through the frozen backbone. This
recipe scores that teacher (and BM25 and their reciprocal-rank fusion, as candidate teachers) with the loop's dev
measure, *answer in the top 20 / top 5*, on the probe's held-out fifth of train (``tune``) and on AfriQA dev. The
translations are read here for measurement only; no model is trained.

    python recipes/afriqa_teacher_ceiling.py --run $CORA_HOME/runs/afriqa-loop-d100 --encoder $T

Prints one JSON line per split and teacher, and writes them to ``<run>/teacher_ceiling.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from cora.bm25 import BM25Index, reciprocal_rank_fusion
from cora.datastore import Datastore
from cora.encoder import Encoder
from cora.fileio import atomic_write_text
from cora.index import DenseIndex
from cora.questions import read_questions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import afriqa  # noqa: E402
from afriqa_tower_probe import held_out, ranked_answer_recall  # noqa: E402

PIVOT = {"fon": "fr", "wol": "fr"}  # every other AfriQA language's evidence is English


def recall(questions, rankings, texts) -> dict[str, list[float]]:
    """Per language and "macro": [% with an answer-holding passage in the top 20, in the top 5]."""
    table = ranked_answer_recall(questions, [[str(r) for r in rows[:20]] for rows in rankings],
                                 [[texts[r] for r in rows[:20]] for rows in rankings])
    return {lang: [round(x, 1) for x in r] for lang, r in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a cora_loop_afriqa.py --out folder (its datastore, round-0 index "
                                                 "and question files)")
    ap.add_argument("--encoder", required=True, help="the encoder whose frozen backbone is the teacher (the run's "
                                                     "round-0 tower)")
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run, data = Path(args.run).expanduser(), Path(args.data)
    store = Datastore(str(run / "datastore"))
    passages = DenseIndex.load(run / "loop" / "round_0" / "index").passage_vectors()  # [N, D]
    texts = list(store.dataset["text"])
    encoder = Encoder.from_pretrained(args.encoder, device="cpu")
    bm25 = BM25Index(store)
    translation = {f"{q.lang}/{split}/{q.id}": q.translated_question.strip()
                   for split in ("train", "dev") for q in afriqa.questions(data, split)}
    gold = {q.id: q.gold_group for q in read_questions(run / "train-gold.jsonl")}
    splits = {"tune": [q for q in read_questions(run / "train.jsonl") if held_out(q.id, gold)],
              "dev": read_questions(run / "dev.jsonl")}
    lines = []
    for split, questions in splits.items():
        questions = [q for q in questions if translation.get(q.id)]
        queries = [translation[q.id] for q in questions]
        vectors = encoder.encode(queries, "query", tower="passage")  # [Q, D], the distillation teacher's vectors
        dense = np.argsort(-(vectors @ passages.T), axis=1)[:, :100]  # [Q, 100]
        _, lexical = bm25.search(queries, [PIVOT.get(q.lang, "en") for q in questions], k=100)  # [Q, 100]
        fused = [reciprocal_rank_fusion([d, b], top=20) for d, b in zip(dense, lexical, strict=True)]
        for teacher, rankings in (("dense (the distillation teacher)", dense), ("bm25", lexical),
                                  ("rrf(dense, bm25)", fused)):
            table = recall(questions, rankings, texts)
            line = {"split": split, "teacher": teacher, "questions": len(questions), "macro": table.pop("macro"),
                    "per_lang": table}
            print(json.dumps(line), flush=True)
            lines.append(json.dumps(line))
    atomic_write_text(run / "teacher_ceiling.jsonl", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
