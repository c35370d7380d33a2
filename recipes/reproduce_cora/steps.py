"""The steps of recipes/reproduce_cora.py that no ``cora`` command does: preparing question files, writing mGEN's
training data in CORA's source/target format, training mGEN from it, and the final results table.

    python recipes/reproduce_cora/steps.py questions --questions xor_train_full.jsonl \
        --english-answers xor_train_retrieve_eng_span.jsonl --out runs/cora/questions/train.jsonl
    python recipes/reproduce_cora/steps.py questions --questions mkqa-ja.jsonl mkqa-ko.jsonl --out mkqa.jsonl
    python recipes/reproduce_cora/steps.py mgen-data --retrieved runs/cora/retrieval/train.jsonl \
        --questions runs/cora/questions/train.jsonl --out runs/cora/mgen-data
    python recipes/reproduce_cora/steps.py mgen-train --data runs/cora/mgen-data --model google/mt5-base \
        --config recipes/reproduce_cora/mgen_mt5_base.json --output-dir runs/cora/mgen
    python recipes/reproduce_cora/steps.py summary --xor runs/cora/reports/xor_dev.json --out runs/cora/results.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# CORA's published XOR-Full dev results (Asai et al., NeurIPS 2021, Table 2): macro F1 / EM / BLEU and F1 per language.
PUBLISHED_XOR_DEV = {"macro": {"f1": 34.7, "em": 25.8, "bleu": 23.3},
                     "per_language_f1": {"ar": 42.9, "bn": 26.9, "fi": 41.4, "ja": 36.8, "ko": 30.4, "ru": 33.9,
                                         "te": 30.9}}

SOURCE_FILE, TARGET_FILE, DATA_CONFIG_FILE = "train.source", "train.target", "mgen_data.json"
logger = logging.getLogger("reproduce_cora")


# ---------------------------------------------------------------------------------------------------- questions
def _read_jsonl(path: str) -> list[dict]:
    from cora.fileio import iter_jsonl

    return [obj for _, obj in iter_jsonl(Path(path))]


def merge_questions(own_language: list[str], english: list[str] | None = None) -> list[dict]:
    """XOR-format questions from several files, each with ``answer_lang``: the question's language for
    ``own_language`` files (XOR-Full train, MKQA), English for ``english`` files (XOR-TyDi's English-span train
    file: its answers are English, so CORA trains mGEN to answer those questions in English). A question id that
    an earlier file already holds is left out, so a question with answers in its own language keeps them. CORA's
    ``lang: NONE`` (Natural Questions) is English."""
    out, seen = [], set()
    for path, answer_lang in [(p, None) for p in own_language] + [(p, "en") for p in english or []]:
        for row in _read_jsonl(path):
            qid = str(row["id"])
            if qid in seen:
                continue
            seen.add(qid)
            lang = "en" if row.get("lang") in (None, "", "NONE") else row["lang"]
            out.append({"id": qid, "question": row["question"], "lang": lang, "answers": list(row.get("answers", [])),
                        "answer_lang": answer_lang or lang})
    return out


def _questions(args) -> int:
    from cora.fileio import atomic_write_text

    rows = merge_questions(args.questions, args.english_answers)
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} questions to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------- mGEN data
@dataclass
class MgenDataConfig:
    """How mGEN's training data was made (saved as mgen_data.json beside train.source / train.target)."""

    retrieved: str = field(metadata={"help": "'cora retrieve' output for the training questions"})
    questions: str = field(metadata={"help": "the training questions (steps.py questions output, with answer_lang)"})
    k: int = field(default=10, metadata={"help": "passages per training source (CORA: top 10)"})
    max_positives: int = field(default=3, metadata={"help": "answer-containing passages sampled (CORA: 3)"})
    seed: int = field(default=0, metadata={"help": "seed of the positive sampling and the shuffle"})


def mgen_lines(cfg: MgenDataConfig) -> tuple[list[str], list[str], dict]:
    """CORA's mGEN training pairs: source ``<Q>: {question} [{answer lang}] <P>:<0: {title}> {text} ...`` over up to
    ``max_positives`` answer-containing passages of the top ``k`` filled with the best-ranked others, shuffled
    (cora.reader.training_passages); target the first gold answer. Newlines become spaces: one pair per line."""
    from cora.datastore import Passage
    from cora.evaluation.text import contains_answer
    from cora.reader import training_passages
    from cora.reader.seq2seq import format_source

    questions = {str(q["id"]): q for q in _read_jsonl(cfg.questions)}
    rng = random.Random(cfg.seed)
    sources, targets, counts = [], [], {"examples": 0, "with_answer": 0, "no_answers": 0, "no_hits": 0}
    for row in _read_jsonl(cfg.retrieved):
        q = questions.get(str(row["id"]))
        if q is None:
            raise SystemExit(f"{cfg.retrieved}: question {row['id']!r} is not in {cfg.questions}")
        answers = [a for a in q["answers"] if a.strip()]
        if not answers:
            counts["no_answers"] += 1
            continue
        hits = row.get("hits") or []
        if not hits or "text" not in hits[0]:
            counts["no_hits"] += 1
            continue
        ranked = [Passage(str(h["passage_id"]), h["lang"], h.get("title", ""), h["text"], h.get("group"))
                  for h in hits]
        context = training_passages(ranked, answers, rng, cfg.k, cfg.max_positives)
        counts["with_answer"] += any(contains_answer(p.text, answers) for p in context)
        sources.append(" ".join(format_source(q["question"], q["answer_lang"], context).splitlines()))
        targets.append(" ".join(answers[0].splitlines()))
        counts["examples"] += 1
    return sources, targets, counts


def _mgen_data(args) -> int:
    from cora.fileio import atomic_dir, atomic_write_json

    cfg = MgenDataConfig(args.retrieved, args.questions, args.k, args.max_positives, args.seed)
    sources, targets, counts = mgen_lines(cfg)
    if not sources:
        raise SystemExit(f"{args.retrieved}: no training example (no question with answers and hits)")
    with atomic_dir(Path(args.out)) as tmp:
        (tmp / SOURCE_FILE).write_text("".join(s + "\n" for s in sources), encoding="utf-8")
        (tmp / TARGET_FILE).write_text("".join(t + "\n" for t in targets), encoding="utf-8")
        atomic_write_json(tmp / DATA_CONFIG_FILE, {"config": asdict(cfg), "counts": counts})
    print(f"wrote {counts['examples']} mGEN training pairs to {args.out} ({counts['with_answer']} with an "
          f"answer-containing passage; skipped {counts['no_answers']} without answers, {counts['no_hits']} without hits)")
    return 0


# ---------------------------------------------------------------------------------------------------- mGEN training
class SourceTargetTask:
    """mGEN as a task of the one training loop (cora.training.train), over CORA's source/target lines: shuffled
    batches, teacher-forced loss, no dev metric (the final weights are kept as ``best/``)."""

    def __init__(self, generator, sources: list[str], targets: list[str], batch_size: int):
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source lines but {len(targets)} target lines")
        self.generator, self.pairs, self.batch_size = generator, list(zip(sources, targets, strict=True)), batch_size

    def num_batches(self, epoch: int) -> int:
        return len(self.pairs) // self.batch_size

    def batches(self, epoch: int, rng: random.Random):
        order = list(range(len(self.pairs)))
        rng.shuffle(order)
        for b in range(self.num_batches(epoch)):
            yield [self.pairs[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]

    def loss(self, batch):
        return self.generator.source_loss([s for s, _ in batch], [t for _, t in batch])

    def evaluate(self) -> dict:
        return {"metric": None}

    def parameters(self):
        return self.generator.model.parameters()

    def module(self):
        return self.generator.model

    def save(self, folder: Path) -> None:
        self.generator.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.generator.model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)


def _mgen_train(args) -> int:
    from cora.errors import CoraError
    from cora.reader import Seq2SeqGenerator
    from cora.training import TrainConfig, train

    data = Path(args.data)
    sources = (data / SOURCE_FILE).read_text(encoding="utf-8").splitlines()
    targets = (data / TARGET_FILE).read_text(encoding="utf-8").splitlines()
    opts = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    reader_keys = {"max_source_length", "max_target_length", "num_beams"}
    known = {f.name for f in fields(TrainConfig)} | reader_keys
    if unknown := sorted(set(opts) - known):
        raise CoraError(f"{args.config}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    cfg = TrainConfig(**{k: v for k, v in opts.items() if k not in reader_keys}, output_dir=args.output_dir)
    if len(sources) < cfg.batch_size:
        raise CoraError(f"{data}: {len(sources)} training pairs, fewer than one batch of {cfg.batch_size}")
    if "WORLD_SIZE" in os.environ:  # started by torchrun: join the process group before the model is placed
        from cora.distributed import init_from_env

        init_from_env()
    generator = Seq2SeqGenerator.from_backbone(args.model, device=args.device,
                                               **{k: v for k, v in opts.items() if k in reader_keys})
    result = train(SourceTargetTask(generator, sources, targets, cfg.batch_size), cfg)
    print(json.dumps(result, indent=2))
    if not result["finished"]:
        raise CoraError(f"mGEN training stopped before its last step; rerun to resume from {args.output_dir}/last")
    return 0


# ---------------------------------------------------------------------------------------------------- summary
def summary_markdown(xor: dict, mkqa: dict | None = None) -> str:
    """The XOR-Full dev table: CORA's published numbers beside this run's, then MKQA per locale."""
    ours, pub = xor["macro"], PUBLISHED_XOR_DEV
    lines = [f"# CORA reproduction: XOR-Full dev ({xor.get('mode', 'official')} scoring)", "",
             "| | CORA (published) | cora (this run) |", "|---|---:|---:|"]
    lines += [f"| {m} | {pub['macro'][m]:.1f} | {ours.get(m, float('nan')):.1f} |" for m in ("f1", "em", "bleu")]
    for lang, f1 in pub["per_language_f1"].items():
        got = xor["per_language"].get(lang, {}).get("f1")
        lines.append(f"| F1 {lang} | {f1:.1f} | {'' if got is None else f'{got:.1f}'} |")
    if mkqa:
        lines += ["", "## MKQA (answers as given, XOR-format gold)", "", "| locale | questions | EM | F1 |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {loc} | {int(v['count'])} | {v['em']:.1f} | {v['f1']:.1f} |"
                  for loc, v in mkqa["per_locale"].items()]
    return "\n".join(lines) + "\n"


def _summary(args) -> int:
    from cora.fileio import atomic_write_text

    xor = json.loads(Path(args.xor).read_text(encoding="utf-8"))
    mkqa = json.loads(Path(args.mkqa).read_text(encoding="utf-8")) if args.mkqa else None
    text = summary_markdown(xor, mkqa)
    atomic_write_text(args.out, text)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    q = sub.add_parser("questions", help="merge XOR-format question files, each question with its answer language")
    q.add_argument("--questions", nargs="+", required=True,
                   help="XOR-format JSONL whose answers are in the question's language (xor_train_full.jsonl, "
                        "mkqa-xx.jsonl; NQ in this format with lang 'en' or 'NONE')")
    q.add_argument("--english-answers", nargs="*", default=[],
                   help="XOR-format JSONL whose answers are English (xor_train_retrieve_eng_span.jsonl); ids already "
                        "read from --questions are left out")
    q.add_argument("--out", required=True, help="questions JSONL to write (id, question, lang, answers, answer_lang)")
    q.set_defaults(func=_questions)

    d = sub.add_parser("mgen-data", help="CORA's mGEN training data (train.source / train.target) from retrieval")
    d.add_argument("--retrieved", required=True, help="'cora retrieve' JSONL (with passage text)")
    d.add_argument("--questions", required=True, help="questions JSONL written by the 'questions' step")
    d.add_argument("--out", required=True, help="folder to write train.source, train.target, mgen_data.json")
    for f in fields(MgenDataConfig)[2:]:
        d.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, help=f.metadata["help"])
    d.set_defaults(func=_mgen_data)

    t = sub.add_parser("mgen-train", help="fine-tune a seq2seq model (mT5) on train.source / train.target")
    t.add_argument("--data", required=True, help="folder written by 'mgen-data'")
    t.add_argument("--model", default="google/mt5-base", help="seq2seq backbone: hub id or folder")
    t.add_argument("--config", help="JSON of TrainConfig fields plus max_source_length, max_target_length, num_beams")
    t.add_argument("--output-dir", required=True, help="run folder; best/ is the trained reader (rerun to resume)")
    t.add_argument("--device", help="cpu or cuda")
    t.set_defaults(func=_mgen_train)

    s = sub.add_parser("summary", help="results.md: CORA's published XOR-Full dev numbers beside this run's")
    s.add_argument("--xor", required=True, help="'cora evaluate xor --json-out' report")
    s.add_argument("--mkqa", help="'cora evaluate mkqa --json-out' report")
    s.add_argument("--out", required=True, help="markdown file to write")
    s.set_defaults(func=_summary)
    return ap


def main(argv: list[str] | None = None) -> int:
    from cora.errors import CoraError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CoraError as err:
        print(f"steps.py {args.step}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
