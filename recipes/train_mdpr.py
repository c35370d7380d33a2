"""Fine-tune mDPR from me5-small on the shared SQuAD-format sets, then compare on XQuAD dev.

1. Training questions: XQuAD articles 0-31 (12 languages), TyDi GoldP (en, ko, sw), JaQuAD, ARCD, DRCD, SQuAD-it and
   SQuAD-es articles 0-31. SQuAD-es translates the same 40 SQuAD articles as XQuAD, so its articles 32-39 would
   leak the dev paragraphs in Spanish: they are left out, like XQuAD's.
2. A training datastore of their paragraphs; DPR examples with the gold paragraph, its language-linked versions
   (XQuAD) as positives, and BM25 hard negatives (top 30 without an answer, outside the gold group).
3. Dev: questions of XQuAD articles 32-39 (all 12 languages, --dev-per-lang each) against those paragraphs.
4. `cora train retriever` with recipes/mdpr_me5_small.json; the best checkpoint is runs/mdpr/run/best.
5. Compare: python recipes/xquad_retrieval.py --encoder runs/mdpr/run/best --out runs/xquad-mdpr

The default config trains a LoRA query tower over frozen me5-small passages (``--tower query``, see
``cora train retriever --help``): every training paragraph is encoded once, and the zero-shot index of
recipes/xquad_retrieval.py serves the result unchanged (``--query-encoder runs/mdpr/run/best`` there). With it,
no BM25 negatives are mined (every training paragraph is a negative) and each source is capped at
``--max-paragraphs-per-source`` paragraphs (with all their questions) to bound the one-off encoding on a CPU.
``--config recipes/mdpr_me5_small.json`` is the classic shared-tower DPR fine-tune (BM25 hard negatives), which
needs a GPU to run at full size.

    python recipes/train_mdpr.py --out runs/mdpr [--config recipes/mdpr_me5_small_query.json] [--limit-per-source N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
from pathlib import Path

from cora.bm25 import BM25Index
from cora.cli import main as cora_main
from cora.datasets import (
    SQUAD_SOURCES,
    XQUAD_DEV_ARTICLES,
    XQUAD_LANGS,
    XQUAD_TRAIN_ARTICLES,
    xquad_aligned,
    xquad_file,
)
from cora.datastore import Datastore, read_squad
from cora.encoder import Encoder
from cora.questions import Question, read_squad_questions
from cora.retriever_training import build_examples, dev_recall, write_examples


def sources(data: Path):
    """(path, lang, articles) of every training file: cora.datasets.SQUAD_SOURCES, uncapped, with XQuAD and SQuAD-es
    (the same 40 articles) restricted to the training articles."""
    return [(path, src.lang, XQUAD_TRAIN_ARTICLES if xquad_aligned(src) else None)
            for src in SQUAD_SOURCES for path in sorted(data.glob(src.path))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/mdpr")
    ap.add_argument("--config", default=str(Path(__file__).with_name("mdpr_me5_small_query.json")))
    ap.add_argument("--limit-per-source", type=int, help="at most N questions per source file (smoke runs)")
    ap.add_argument("--max-paragraphs-per-source", type=int, default=1000,
                    help="at most N paragraphs (and their questions) per source; XQuAD is never capped (1000)")
    ap.add_argument("--dev-per-lang", type=int, default=40, help="dev questions per XQuAD language (default 40)")
    ap.add_argument("--export", help="after training, write run/best as a shipped query encoder here (fp16 "
                                     "adapter; e.g. cora/resources/mdpr-me5-small) and score fp32 vs fp16 on dev")
    ap.add_argument("--export-scope", choices=["all", "cross-lingual"], default="cross-lingual",
                    help="query_adapter_scope of the export: use the adapter for every question, or only for "
                         "questions whose language the datastore lacks (default)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed on to 'cora train retriever'")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tower = json.loads(Path(args.config).read_text(encoding="utf-8")).get("tower", "shared")
    files = sources(data)
    keep = kept_paragraphs(files, args.max_paragraphs_per_source if tower == "query" else None)
    train_ds_dir = out / "train-datastore"
    if not train_ds_dir.exists():
        Datastore.build((item for p, lang, arts in files
                         for item in read_squad(p, lang, keep_titles=(p.parent.name != "xquad"), articles=arts)
                         if keep is None or item[1].id in keep), train_ds_dir)
    train_ds = Datastore(train_ds_dir)
    if not (out / "train.json").exists():
        questions = []
        for p, lang, arts in files:
            qs = [q for q in read_squad_questions(p, lang, arts)
                  if q.answers and (keep is None or q.gold_passage in keep)]
            questions += qs[: args.limit_per_source] if args.limit_per_source else qs
        assert all(q.article < XQUAD_DEV_ARTICLES.start for q in questions if "xquad" in q.gold_passage), \
            "dev article leaked"
        bm25 = BM25Index(train_ds) if tower == "shared" else None  # query tower: every paragraph is a negative
        examples = build_examples(questions, train_ds, bm25, hard_negatives=3)
        # XQuAD shares question ids across languages: the English original of each question is its pivot
        # (distilled towards when the config sets distill_weight).
        english = {q.id.rsplit("/", 1)[0]: q.question for q in questions
                   if q.lang == "en" and q.gold_passage.startswith("xquad")}
        for q, ex in zip(questions, examples, strict=True):
            if q.lang != "en" and q.gold_passage.startswith("xquad"):
                ex.pivot_question = english.get(q.id.rsplit("/", 1)[0])
        write_examples(examples, out / "train.json")
        logging.info("%d training examples from %d questions", len(examples), len(questions))

    dev_ds_dir = out / "dev-datastore"
    if not dev_ds_dir.exists():
        Datastore.build(itertools.chain.from_iterable(
            read_squad(xquad_file(data, lang), lang, keep_titles=False, articles=XQUAD_DEV_ARTICLES)
            for lang in XQUAD_LANGS), dev_ds_dir)
    rng = random.Random(0)
    dev = []
    for lang in XQUAD_LANGS:
        qs = list(read_squad_questions(xquad_file(data, lang), lang, XQUAD_DEV_ARTICLES))
        dev += rng.sample(qs, min(args.dev_per_lang, len(qs)))
    (out / "dev.jsonl").write_text("".join(json.dumps({"id": q.id, "question": q.question, "lang": q.lang,
                                                       "gold_group": q.gold_group}, ensure_ascii=False) + "\n"
                                           for q in dev), encoding="utf-8")
    extra = [a for a in args.extra if a != "--"]
    rc = cora_main(["train", "retriever", "--config", args.config, "--train-data", str(out / "train.json"),
                    "--output-dir", str(out / "run"), "--dev-questions", str(out / "dev.jsonl"),
                    "--dev-datastore", str(dev_ds_dir), "--datastore", str(train_ds_dir), *extra])
    if rc or not args.export:
        return rc
    export_query_encoder(out / "run" / "best", Path(args.export), args.export_scope)
    questions = [Question(q.id, q.question, q.lang, [], None, q.gold_group) for q in dev]
    scores = {name: dev_recall(Encoder.from_pretrained(str(folder)), questions, Datastore(dev_ds_dir), None, "en")
              for name, folder in (("fp32 run/best", out / "run" / "best"), ("fp16 export", Path(args.export)))}
    print(json.dumps(scores, indent=1))
    (out / "export.json").write_text(json.dumps({"export": args.export, "dev": scores}, indent=1))
    return 0


def export_query_encoder(best: Path, dest: Path, scope: str) -> None:
    """A query-adapter encoder folder -> a shippable copy: the adapter in fp16, its config naming the registered
    backbone instead of this machine's cache path, without peft's generated model card."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cora.encoder import ENCODER_CONFIG_FILE, QUERY_ADAPTER_DIR
    from cora.fileio import apply_umask

    config = json.loads((best / ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))
    if not config.get("query_adapter"):
        raise SystemExit(f"{best} has no query adapter: only a --tower query run can be exported this way")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / QUERY_ADAPTER_DIR).mkdir(parents=True)
    config["query_adapter_scope"] = scope
    (tmp / ENCODER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    adapter = json.loads((best / QUERY_ADAPTER_DIR / "adapter_config.json").read_text(encoding="utf-8"))
    adapter["base_model_name_or_path"] = config["backbone"]
    (tmp / QUERY_ADAPTER_DIR / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    weights = load_file(str(best / QUERY_ADAPTER_DIR / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()},
              str(tmp / QUERY_ADAPTER_DIR / "adapter_model.safetensors"))
    apply_umask(tmp)  # safetensors writes 0600 whatever the umask
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def kept_paragraphs(files, cap: int | None) -> set[str] | None:
    """Passage ids kept under a per-source cap (a seeded sample per source; XQuAD uncapped); None = all."""
    if cap is None:
        return None
    keep: set[str] = set()
    by_source: dict[str, list[str]] = {}
    for p, lang, arts in files:
        source = p.parent.name if p.parent.name in ("jaquad",) else p.name
        by_source.setdefault(source, []).extend(passage.id for _, passage in read_squad(p, lang, articles=arts))
    rng = random.Random(0)
    for source, ids in sorted(by_source.items()):
        keep.update(ids if source.startswith("xquad.") or len(ids) <= cap else rng.sample(ids, cap))
    return keep


if __name__ == "__main__":
    raise SystemExit(main())
