"""The CORA loop on XQuAD plus the other shared training sets: rounds 0..R of mining and retraining, evaluated on
the XQuAD dev articles in 12 languages.

Training questions are XQuAD articles 0-31 (sampled per language), each with its gold paragraph and the gold
answers of its parallel versions (XQuAD shares question ids across languages: ``answers_by_lang``), plus a sample
of every other SQuAD-format training set in the shared folder (TyDi GoldP en/ko/sw, JaQuAD, ARCD, DRCD, SQuAD-it,
SQuAD-es articles 0-31), whose paragraphs join the mined datastore. The mined datastore therefore holds every XQuAD
paragraph in 12 languages (titles dropped: they are English in every file) plus those paragraphs; evaluation is on
the XQuAD datastores of the README tables: all languages (2,400 passages) and English only (200, the XOR-like
setting), with dev questions from articles 32-39. Round 0 is the starting point: me5-small with the shipped query
tower (mdpr-me5-small, used for questions whose language the datastore lacks) and the shipped reader. mDPR is
retrained as that query tower (``retriever_tower='query'``), so no round re-encodes a datastore.

    python recipes/cora_loop_xquad.py --out runs/cora-loop [--train-per-lang 40 --other-per-source 30 \
        --dev-per-lang 20 --rounds 2]

Rerunning the same command resumes (see ``cora iterate --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import random
from pathlib import Path

from cora import cli
from cora.datasets import SQUAD_SOURCES, XQUAD_DEV_ARTICLES, XQUAD_LANGS, XQUAD_TRAIN_ARTICLES, xquad_aligned
from cora.datastore import Datastore, read_squad
from cora.fileio import atomic_write_json
from cora.iterate import IterateConfig
from cora.questions import read_squad_questions, write_questions

LANGS = list(XQUAD_LANGS)
TRAIN_ARTICLES, DEV_ARTICLES = XQUAD_TRAIN_ARTICLES, XQUAD_DEV_ARTICLES


def OTHER_SOURCES(data: Path):  # noqa: N802 - a table, read like a constant
    """(path, language, articles) of the non-XQuAD training sets of cora.datasets (SQuAD-es: only the articles
    XQuAD trains on; JaQuAD: its first shard)."""
    return [(p, s.lang, XQUAD_TRAIN_ARTICLES if xquad_aligned(s) else None)
            for s in SQUAD_SOURCES if not s.path.startswith("xquad/") for p in sorted(data.glob(s.path))[:1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/cora-loop")
    ap.add_argument("--encoder", default="mdpr-me5-small", help="round-0 retriever")
    ap.add_argument("--reader", default="me5-small-reader", help="round-0 reader")
    ap.add_argument("--train-per-lang", type=int, default=40, help="XQuAD training questions per language")
    ap.add_argument("--other-per-source", type=int, default=30,
                    help="questions (with their paragraphs) from each other training set")
    ap.add_argument("--dev-per-lang", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--retriever-steps", type=int, default=60)
    ap.add_argument("--reader-steps", type=int, default=60)
    ap.add_argument("--adapter-scope", choices=["all", "cross-lingual"],
                    help="when --encoder has no query tower (e.g. me5-small): the scope of the one round 1 creates")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    xquad = Path(args.data) / "xquad"
    if not xquad.exists():
        raise SystemExit(f"{xquad} not found: pass --data pointing at the shared data folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    stores = {}
    for name, langs in (("all-languages", LANGS), ("english-only", ["en"])):
        folder = out / f"datastore-{name}"
        stores[name] = folder
        if not folder.exists():
            Datastore.build(itertools.chain(*(read_squad(xquad / f"xquad.{lang}.json", lang, keep_titles=False)
                                              for lang in langs)), folder)
    # The other training sets: a seeded sample of questions per source, and their paragraphs.
    others = []
    for path, lang, articles in OTHER_SOURCES(Path(args.data)):
        qs = [q for q in read_squad_questions(path, lang, articles) if q.answers]
        others += rng.sample(qs, min(args.other_per_source, len(qs)))
    mined_store = out / "datastore-mined"
    if not mined_store.exists():
        wanted = {q.gold_passage for q in others}
        extra = (item for path, lang, articles in OTHER_SOURCES(Path(args.data))
                 for item in read_squad(path, lang, articles=articles) if item[1].id in wanted)
        Datastore.build(itertools.chain(*(read_squad(xquad / f"xquad.{lang}.json", lang, keep_titles=False)
                                          for lang in LANGS), extra), mined_store)

    def questions(articles, per_lang):
        by_lang = {lang: list(read_squad_questions(xquad / f"xquad.{lang}.json", lang, articles)) for lang in LANGS}
        answers: dict[str, dict[str, list[str]]] = {}
        for lang, qs in by_lang.items():
            for q in qs:
                answers.setdefault(q.id.rsplit("/", 1)[0], {})[lang] = q.answers
        picked = []
        for lang, qs in by_lang.items():
            for q in rng.sample(qs, min(per_lang, len(qs))):
                q.answers_by_lang = {x: a for x, a in answers[q.id.rsplit("/", 1)[0]].items() if x != lang}
                picked.append(q)
        return picked

    train_q = out / "train_questions.jsonl"
    dev_q = out / "dev_questions.jsonl"
    if not train_q.exists():
        write_questions(questions(TRAIN_ARTICLES, args.train_per_lang) + others, train_q)
    if not dev_q.exists():
        dev = questions(DEV_ARTICLES, args.dev_per_lang)
        for q in dev:
            q.gold_passage, q.answers_by_lang = None, {}  # dev: only the gold group and the answer in its language
        write_questions(dev, dev_q)

    cfg = IterateConfig(
        output_dir=str(out / "loop"), datastore=str(mined_store), train_questions=str(train_q),
        dev_questions=str(dev_q), encoder=args.encoder, reader=args.reader, rounds=args.rounds,
        eval_datastores={name: str(folder) for name, folder in stores.items()}, evaluate_main=False,
        retrieve_k=20, label_depth=5, hard_negatives=3, reader_k=4, reader_positives=2, eval_k=5,
        recall_ks=[1, 5, 20], retriever_tower="query", query_all_weight=0.0, temperature=0.02,
        query_adapter_scope=args.adapter_scope,
        retriever_train={"batch_size": 32, "max_steps": args.retriever_steps, "lr": 1e-4, "warmup_ratio": 0.1,
                         "eval_every": 10**6, "save_every": 20},
        reader_train={"batch_size": 8, "max_steps": args.reader_steps, "lr": 3e-5, "warmup_ratio": 0.1,
                      "eval_every": 10**6, "save_every": 10},
        seed=args.seed)
    config = out / "iterate_config.json"
    atomic_write_json(config, {"type": "IterateConfig", **dataclasses.asdict(cfg)})
    print(f"running the equivalent of: cora iterate --config {config}", flush=True)
    return cli.main(["iterate", "--config", str(config)])


if __name__ == "__main__":
    raise SystemExit(main())
