"""mGEN for users with the model hub: fine-tune mT5 (CORA: google/mt5-base) to write the answer in the question's
language from retrieved multilingual passages, then score it on XQuAD dev with open retrieval.

1. Training questions: XQuAD articles 0-31 in all 12 languages. Each is retrieved against the all-languages XQuAD
   datastore of recipes/xquad_retrieval.py (with the pipeline's retrieval: me5-small, and the mdpr-me5-small
   query tower for questions in languages the datastore lacks), and gets CORA's training context: from the top ``--k`` passages,
   up to 3 that contain an answer (in any language: XQuAD's parallel answers), filled with the best-ranked others,
   shuffled (cora.reader.training_passages). The target is the gold answer in the question's language.
2. Training: the one loop (cora.training.train) with Seq2SeqTask and --config (recipes/mgen_mt5_base.json);
   rerunning resumes. Source <= 1000 tokens, target <= 25, beam 4 at inference (ReaderConfig).
3. Dev: XQuAD articles 32-39, top ``--k`` passages in rank order, F1/EM per language ('fixed' XOR scorer), on
   the all-languages and the English-only datastores.

No mT5 weights are obtainable offline: the shipped offline reader is extractive (see the README). The recipe runs
with any seq2seq folder, e.g. a tiny random mT5 to check the plumbing:

    python recipes/train_mgen.py --model google/mt5-base --out runs/mgen [--config recipes/mgen_mt5_base.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import fields
from pathlib import Path

from cora.config import config_from_dict, read_config_file
from cora.datasets import XQUAD_LANGS
from cora.datastore import Datastore
from cora.evaluation.report import f1_em_table, format_table
from cora.evaluation.xor import score_one
from cora.pipeline import Pipeline, PipelineConfig
from cora.reader import Seq2SeqGenerator, load_reader, training_passages
from cora.reader.data import XQUAD_DEV_ARTICLES, XQUAD_TRAIN_ARTICLES, ReaderExample
from cora.reader.training import Seq2SeqTask
from cora.retriever import Retriever
from cora.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import xquad_retrieval  # noqa: E402  (builds the datastores and indexes when missing)


def xquad_questions(xquad: Path, articles, per_lang: int | None, rng: random.Random):
    """(question, lang, answers in its language, answers in every language) per XQuAD question."""
    from cora.questions import read_squad_questions

    by_lang = {lang: list(read_squad_questions(xquad / f"xquad.{lang}.json", lang, articles)) for lang in XQUAD_LANGS}
    every: dict[str, list[str]] = {}
    for qs in by_lang.values():
        for q in qs:
            every.setdefault(q.id.rsplit("/", 1)[0], []).extend(q.answers)
    out = []
    for lang, qs in by_lang.items():
        picked = rng.sample(qs, min(per_lang, len(qs))) if per_lang else qs
        out += [(q.question, lang, q.answers, every[q.id.rsplit("/", 1)[0]]) for q in picked if q.answers]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--model", default="google/mt5-base", help="seq2seq backbone: hub id or folder")
    ap.add_argument("--config", default=str(HERE / "mgen_mt5_base.json"), help="TrainConfig fields (JSON)")
    ap.add_argument("--retrieval", default="runs/xquad-retrieval", help="recipes/xquad_retrieval.py output")
    ap.add_argument("--query-encoder", default="mdpr-me5-small")
    ap.add_argument("--k", type=int, default=10, help="passages per question (CORA: 10)")
    ap.add_argument("--train-per-lang", type=int, help="training questions per language (default: all)")
    ap.add_argument("--dev-per-lang", type=int, default=50, help="dev questions per language (default 50)")
    ap.add_argument("--out", default="runs/mgen")
    ap.add_argument("--device", help="cpu or cuda")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="TrainConfig overrides as --name value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    xquad, out, rng = Path(args.data) / "xquad", Path(args.out), random.Random(0)
    retrieval = Path(args.retrieval)
    if not (retrieval / "index-english-only" / "index.faiss").exists():
        xquad_retrieval.main(["--data", args.data, "--out", str(retrieval)])
    stores = {s: Datastore(retrieval / f"datastore-{s}") for s in ("all-languages", "english-only")}
    retrievers = {}
    for name, ds in stores.items():
        retrievers[name] = Retriever.from_pretrained(retrieval / f"index-{name}", ds, device=args.device,
                                                     query_encoder=args.query_encoder)

    cfg = read_config_file(args.config)
    extra = [a for a in args.extra if a != "--"]
    known = {f.name: f for f in fields(TrainConfig)}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        name = flag.lstrip("-").replace("-", "_")
        if name not in known:
            raise SystemExit(f"unknown TrainConfig option {flag}")
        cfg[name] = json.loads(value) if value[:1].isdigit() or value in ("true", "false", "null") else value
    tcfg = config_from_dict(TrainConfig, {**cfg, "output_dir": str(out / "run")}, source=args.config)

    train_q = xquad_questions(xquad, XQUAD_TRAIN_ARTICLES, args.train_per_lang, rng)
    ds = stores["all-languages"]
    hits = retrievers["all-languages"].search_batch([q for q, *_ in train_q], k=2 * args.k,
                                                    langs=[lang for _, lang, *_ in train_q])
    examples = []
    for (question, lang, answers, every), hs in zip(train_q, hits, strict=True):
        context = training_passages(ds.rows([h.row for h in hs]), every, rng, args.k)
        examples.append(ReaderExample(f"{lang}:{len(examples)}", question, lang, context, [answers[0]], lang))
    print(f"{len(examples)} training examples, {args.k} passages each")

    generator = Seq2SeqGenerator.from_backbone(args.model, device=args.device)
    train(Seq2SeqTask(generator, examples, tcfg.batch_size), tcfg)
    generator.save_pretrained(out / "reader")

    reader = load_reader(out / "reader", device=args.device)
    dev = xquad_questions(xquad, XQUAD_DEV_ARTICLES, args.dev_per_lang, random.Random(1))
    results = {"model": args.model, "k": args.k, "train_examples": len(examples)}
    for name, retriever in retrievers.items():
        # mGEN writes the answer in the question's language itself: no projection.
        pipe = Pipeline(retriever, reader, PipelineConfig(str(retrieval / f"index-{name}"), str(out / "reader"),
                                                          k=args.k, projection=False))
        answers_read = pipe.answer_batch([q for q, *_ in dev], [lang for _, lang, *_ in dev])
        per: dict[str, list[tuple[float, float]]] = {}
        for (_, lang, answers, _), pred in zip(dev, answers_read, strict=True):
            f1, em, _ = score_one(pred.text, answers, lang, "fixed")
            per.setdefault(lang, []).append((f1, em))
        table = f1_em_table(per, counts=False)
        results[name] = table
        print(f"\n{name} datastore, top {args.k}\n" + format_table(table, ["F1", "EM"]))
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
