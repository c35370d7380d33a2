"""Does `no_answer_prob` (MKQA output of `cora answer --format mkqa`) tell answerable from unanswerable?

60 XQuAD dev questions (10 each in en, de, ar, ru, zh, hi, articles 32-39) are read twice from five dev paragraphs
of their language, once with the gold paragraph among them and once without it; the MKQA record's
no_answer_prob should be higher without. Reports the means, the AUC (a question without its evidence scored above
one with it) and how often the same question scores higher without its evidence.

    python recipes/no_answer_signal.py [--reader me5-small-reader]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from cora.datasets import XQUAD_DEV_ARTICLES as DEV
from cora.datasets import xquad_file
from cora.datastore import Passage
from cora.evaluation.mkqa import prediction_record
from cora.reader import load_reader


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--reader", default="me5-small-reader")
    args = ap.parse_args(argv)
    rng = random.Random(0)
    reader = load_reader(args.reader)
    present, absent = [], []
    for lang in ["en", "de", "ar", "ru", "zh", "hi"]:
        data = json.loads(xquad_file(args.data, lang).read_text(encoding="utf-8"))["data"][DEV.start : DEV.stop]
        paras = [p for a in data for p in a["paragraphs"]]
        qs = [(q, i) for i, p in enumerate(paras) for q in p["qas"]]
        for q, i in rng.sample(qs, 10):
            others = [Passage(f"p{j}", lang, "", paras[j]["context"], str(j))
                      for j in rng.sample([j for j in range(len(paras)) if j != i], 5)]
            with_gold = [Passage(f"p{i}", lang, "", paras[i]["context"], str(i))] + others[:4]
            rng.shuffle(with_gold)
            present.append(prediction_record(q["id"], reader.read(q["question"], with_gold, lang), lang)["no_answer_prob"])
            absent.append(prediction_record(q["id"], reader.read(q["question"], others, lang), lang)["no_answer_prob"])
    n = len(present)
    auc = sum((a > p) + 0.5 * (a == p) for a in absent for p in present) / (n * n)
    print(json.dumps({"reader": args.reader, "questions": n,
                      "mean_no_answer_prob_gold_present": round(sum(present) / n, 3),
                      "mean_no_answer_prob_gold_absent": round(sum(absent) / n, 3), "auc": round(auc, 3),
                      "same_question_higher_without_gold": round(sum(a > p for a, p in zip(absent, present, strict=True)) / n, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
