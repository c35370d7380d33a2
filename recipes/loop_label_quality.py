"""How clean are the CORA loop's mined labels? Scores every round's reader labels and mined positives against the
gold group of the training questions that have one (XQuAD: the gold paragraph and its language versions).

For each round k >= 1 of a ``cora iterate`` run folder it prints, per kind of label, how many there are and the
share that falls inside the question's gold group: reader positives (the reader's answer matched), fallback
candidates (wrong answer, answer string present), hard negatives (wrong, answer absent: a hit in the gold group is
a false negative), and the mined positives by source (gold, reader, fallback, expand-answer, expand-reader).
Questions without a gold group (none in the XQuAD recipe) are skipped and counted. Precision of positives = the share
in the gold group; of hard negatives = the share outside it.

When the loop's training questions carry no gold passage (AfriQA: positives must be mined), ``--gold-questions``
names a questions file with the same ids and their ``gold_group``, used only here, to score the labels.

    python recipes/loop_label_quality.py runs/cora-loop/loop [--gold-questions gold.jsonl] [--json-out q.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from cora.datastore import Datastore
from cora.fileio import atomic_write_json
from cora.mining import Mined, load_labels
from cora.questions import read_questions


def _share(hit: Counter, total: Counter, key: str) -> str:
    return f"{total[key]} ({100 * hit[key] / total[key]:.1f}% gold)" if total[key] else "0"


def round_quality(folder: Path, store: Datastore, gold: dict[str, str]) -> dict:
    total, hit, skipped = Counter(), Counter(), 0
    for qid, labels in load_labels(folder / "labels.jsonl").items():
        group = gold.get(qid)
        if group is None:
            skipped += 1
            continue
        for lb in labels:
            kind = ("reader-positive" if lb.correct else "fallback-candidate" if lb.contains else "hard-negative")
            total[kind] += 1
            hit[kind] += store[lb.row].group == group
    for qid, m in Mined.load(folder / "mined.json").questions.items():
        group = gold.get(qid)
        if group is None:
            continue
        for row, how in m.positives.items():
            total[f"mined:{how}"] += 1
            hit[f"mined:{how}"] += store[row].group == group
        for row in m.hard_negatives:
            total["mined:hard-negative"] += 1
            hit["mined:hard-negative"] += store[row].group == group
    positives = [k for k in total if k.startswith("mined:") and k != "mined:hard-negative"]
    mined_pos = sum(total[k] for k in positives)
    precision = {"mined positives": sum(hit[k] for k in positives) / mined_pos if mined_pos else None,
                 "mined hard negatives": (1 - hit["mined:hard-negative"] / total["mined:hard-negative"]
                                          if total["mined:hard-negative"] else None)}
    return {"total": dict(total), "in_gold_group": dict(hit), "precision": precision,
            "questions_without_gold_group": skipped}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the loop's output_dir (holds config.json and round_k/)")
    ap.add_argument("--gold-questions", help="questions file with each training question's gold_group (default: "
                                            "the loop's train_questions)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    store = Datastore(cfg["datastore"])
    gold_file = args.gold_questions or cfg["train_questions"]
    gold = {q.id: q.gold_group for q in read_questions(gold_file) if q.gold_group}
    report = {}
    for k in range(1, cfg["rounds"] + 1):
        folder = run / f"round_{k}"
        if not (folder / "mined.json").exists():
            break
        q = report[f"round_{k}"] = round_quality(folder, store, gold)
        total, hit = Counter(q["total"]), Counter(q["in_gold_group"])
        print(f"round {k}: " + "; ".join(f"{key} {_share(hit, total, key)}" for key in sorted(total)))
        print(f"round {k}: precision " + ", ".join(f"{key} {100 * v:.1f}%" if v is not None else f"{key} -"
                                                    for key, v in q["precision"].items()))
    if args.json_out:
        atomic_write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
