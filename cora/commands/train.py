"""``cora train retriever`` / ``cora train reader``: both run the one training loop (cora.training.train)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from cora.errors import CoraError
from cora.training import TrainConfig

RETRIEVER_DEFAULTS = {"encoder": "me5-small", "tower": "shared", "lora_rank": 16, "dev_pivot": "en",
                      "distill_weight": 0.0, "all_weight": 0.5,
                      "dev_select": "mean",
                      "temperature": 0.05, "native_positive_rate": 0.5,
                      "freeze_embeddings": True, "dropout": True, "dev_questions": None, "dev_datastore": None, "datastore": None}


def register(sub) -> None:
    p = sub.add_parser("train", help="train models (retriever, reader)",
                       description="Train cora's models with the one training loop (AdamW, warmup/decay, "
                                   "accumulation, clipping, bf16 on GPU, dev evaluation, best checkpoint, resume).")
    tsub = p.add_subparsers(dest="train_command", metavar="<model>", required=True)
    r = tsub.add_parser(
        "retriever", help="fine-tune the dense retriever (DPR loss: in-batch + hard negatives)",
        description=(
            "Fine-tune an encoder on DPR-format JSON (question, answers, lang, positive_ctxs, negative_ctxs, "
            "hard_negative_ctxs). Options come from --config (a JSON object whose keys are the long option names "
            "with _ for -) and are overridden by flags; the resolved configuration is saved in the run folder. "
            "Rerunning the same command resumes from the last checkpoint. The best checkpoint (run/best) is a "
            "regular encoder folder: 'cora index build --encoder run/best'. Dev questions are JSONL with a "
            "'gold_group' per question, searched against --dev-datastore."
        ),
    )
    r.add_argument("--config", help="JSON file with any of the options below")
    r.add_argument("--train-data", help="DPR-format JSON training file")
    r.add_argument("--output-dir", help="run folder")
    r.add_argument("--encoder", help="starting encoder (default me5-small)")
    r.add_argument("--tower", choices=["shared", "query"],
                   help="'shared' (default): one encoder for questions and passages, all of it trained, as in "
                        "DPR/CORA. 'query': only a LoRA adapter on a separate query tower is trained; passages "
                        "keep the backbone's vectors (computed once from --datastore, every one of them a "
                        "negative), so existing indexes of the backbone stay valid and nothing is re-encoded")
    r.add_argument("--lora-rank", type=int, help="rank of the query tower's LoRA adapter (--tower query; 16)")
    r.add_argument("--distill-weight", type=float,
                   help="--tower query: weight of distilling each question towards the backbone's vector of its "
                        "'pivot_question' (its translation, e.g. the English original; 0 = off, the default)")
    r.add_argument("--all-weight", type=float,
                   help="--tower query: weight of ranking against all passages vs against the pivot language's "
                        "only (0.5; 0 = cross-lingual only)")
    r.add_argument("--dev-select", choices=["mean", "pivot", "all"],
                   help="--tower query: checkpoint selection on the mean of both dev recall@1 (default), the pivot "
                        "one, or the all-passages one")
    r.add_argument("--dev-pivot", help="--tower query: also report dev recall against this language's passages "
                                       "only, and select on the mean of both recall@1 (default en; 'none' off)")
    r.add_argument("--datastore", help="drop positives whose ids are not in this datastore (counted); with "
                                       "--tower query, the passages every question is ranked against")
    r.add_argument("--dev-questions", help="dev questions JSONL with gold_group")
    r.add_argument("--dev-datastore", help="datastore the dev questions are searched in")
    r.add_argument("--temperature", type=float, help="softmax temperature (default 0.05)")
    r.add_argument("--native-positive-rate", type=float,
                   help="share of batches using the gold passage itself rather than a language-linked version (0.5)")
    r.add_argument("--no-freeze-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                   help="also train the (large) token embedding matrix")
    r.add_argument("--no-dropout", dest="dropout", action="store_false", default=None,
                   help="switch dropout off (2.4x faster training steps on CPU, measured)")
    _add_train_config_args(r)
    r.set_defaults(func=_train_retriever)

    d = tsub.add_parser(
        "reader", help="train the extractive reader (joint span loss over a question's passages)",
        description=(
            "Fine-tune the extractive span reader on every SQuAD-format set under --data-root (the shared data "
            "folder: XQuAD training articles 0-31 in 12 languages, TyDi GoldP en/ko/sw, JaQuAD, ARCD, DRCD, "
            "SQuAD-it, SQuAD-es) plus XQuAD cross-lingual pairs. Any article holding an XQuAD dev question "
            "(articles 32-39) is dropped from every file. Dev metric: macro F1 on XQuAD dev with the gold "
            "paragraph. With --trainable-layers N only the top N layers and the head are trained and saved, "
            "as a small delta over the backbone. Options come from --config and are overridden by flags; "
            "rerunning resumes."
        ),
    )
    d.add_argument("--config", help="JSON file with any of the options below")
    d.add_argument("--data-root", help="shared data folder (holds xquad/, tydiqa-goldp/, ...)")
    d.add_argument("--output-dir", help="run folder")
    d.add_argument("--backbone", help="encoder to put the span head on (default me5-small)")
    d.add_argument("--init-from", help="continue from a trained reader (a folder or a shipped name) instead of a new "
                                       "head on --backbone; its backbone and trained layers are kept")
    d.add_argument("--trainable-layers", type=int, help="train only the top N encoder layers (default: all)")
    d.add_argument("--max-length", type=int, help="question + passage tokens per input (default 384)")
    d.add_argument("--cross-lingual", type=int, help="XQuAD cross-lingual pairs to add (default 6000)")
    d.add_argument("--negative-rate", type=float, help="share of examples read with answerless passages (0.3)")
    d.add_argument("--negatives-per-example", type=int,
                   help="answerless passages such an example is read with, at most: one from the same article when "
                        "there is one, the rest drawn at random from its language (a draw that holds the answer is "
                        "dropped) (1)")
    d.add_argument("--rank-head", type=lambda v: v.lower() in ("1", "true", "yes"),
                   help="add and train a passage-selection head (DPR's reader; default false)")
    d.add_argument("--dev-per-lang", type=int, help="XQuAD dev questions per language for the dev metric (25)")
    d.add_argument("--dropout", type=lambda v: v.lower() in ("1", "true", "yes"),
                   help="keep dropout on (default off: a short fine-tune, and much faster on CPU)")
    _add_train_config_args(d)
    d.set_defaults(func=_train_reader)


def _add_train_config_args(parser) -> None:
    for f in fields(TrainConfig):
        if f.name == "output_dir":
            continue
        kind = {"int": int, "float": float, "bool": None, "int | None": int, "float | None": float}.get(str(f.type), str)
        if kind is None:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v.lower() in ("1", "true", "yes"),
                                help=f.metadata.get("help"))
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=f.metadata.get("help"))
    parser.add_argument("--device", help="cpu or cuda")


# Parser entries that are not training options: never read from a --config file.
_NOT_OPTIONS = ("func", "config", "command", "train_command", "verbose")


def resolve_options(args, defaults: dict = RETRIEVER_DEFAULTS, required=("train_data", "output_dir")) -> dict:
    # The known keys are this subcommand's options (every dest argparse put in args) and TrainConfig's fields;
    # any other key in --config is a typo or a stale option, refused rather than silently dropped.
    known = {k for k in vars(args) if k not in _NOT_OPTIONS} | {f.name for f in fields(TrainConfig)}
    opts = dict(defaults)
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CoraError(f"{args.config}: cannot read config ({err})") from None
        if not isinstance(loaded, dict):
            raise CoraError(f"{args.config}: expected a JSON object of options, not {type(loaded).__name__}")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise CoraError(f"{args.config}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
        opts.update(loaded)
    opts.update({k: v for k, v in vars(args).items() if v is not None and k not in _NOT_OPTIONS})
    for key in required:
        if not opts.get(key):
            raise CoraError(f"--{key.replace('_', '-')} is required (flag or config)")
    return opts


def _train_retriever(args) -> int:
    from cora.datastore import Datastore
    from cora.fileio import atomic_write_json
    from cora.models import Encoder
    from cora.questions import Question
    from cora.retriever_training import RetrieverTask, read_examples
    from cora.training import train

    opts = resolve_options(args)
    train_cfg = TrainConfig(**{f.name: opts[f.name] for f in fields(TrainConfig) if f.name in opts})
    Path(train_cfg.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(train_cfg.output_dir) / "retriever_config.json", opts)
    ds = Datastore(opts["datastore"]) if opts.get("datastore") else None
    examples = read_examples(opts["train_data"], ds)
    if len(examples) < train_cfg.batch_size:
        raise CoraError(f"{opts['train_data']}: {len(examples)} usable examples, fewer than one batch")
    dev = None
    if opts.get("dev_questions"):
        if not opts.get("dev_datastore"):
            raise CoraError("--dev-questions needs --dev-datastore")
        rows = [json.loads(line) for line in Path(opts["dev_questions"]).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        dev = ([Question(str(r["id"]), r["question"], r.get("lang"), r.get("answers", []), None, r["gold_group"])
                for r in rows], Datastore(opts["dev_datastore"]))
    encoder = Encoder.from_pretrained(opts["encoder"], device=opts.get("device"))
    if opts["tower"] == "query":
        task = _query_tower_task(opts, encoder, examples, ds, dev, train_cfg)
    elif opts["tower"] == "shared":
        task = RetrieverTask(encoder, examples, train_cfg.batch_size, dev, opts["temperature"],
                             opts["native_positive_rate"], opts["freeze_embeddings"], opts["dropout"])
    else:
        raise CoraError(f"--tower must be 'shared' or 'query', not {opts['tower']!r}")
    result = train(task, train_cfg)
    print(json.dumps(result, indent=2))
    return 0


def _query_tower_task(opts: dict, encoder, examples, datastore, dev, train_cfg):
    import torch

    from cora.retriever_training import QueryTowerTask, passage_vectors

    if datastore is None:
        raise CoraError("--tower query needs --datastore: the passages (holding every positive) that questions are "
                        "ranked against")
    if encoder.query_model is None:
        encoder.add_query_adapter(rank=opts["lora_rank"])
    if not opts["dropout"]:
        for m in encoder.query_model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    run = Path(train_cfg.output_dir)
    vectors = passage_vectors(encoder, datastore, run / "passage_index")
    dev_vectors = passage_vectors(encoder, dev[1], run / "dev_passage_index") if dev else None
    pivot = None if str(opts["dev_pivot"]).lower() in ("none", "") else opts["dev_pivot"]
    try:
        return QueryTowerTask(encoder, examples, train_cfg.batch_size, datastore, vectors, dev, opts["temperature"],
                              pivot, dev_vectors, opts["distill_weight"], opts["all_weight"], opts["dev_select"])
    except ValueError as err:
        raise CoraError(str(err)) from None


READER_DEFAULTS = {"backbone": "me5-small", "init_from": None, "trainable_layers": None, "max_length": 384,
                   "cross_lingual": 6000, "negative_rate": 0.3, "negatives_per_example": 1, "rank_head": False,
                   "dev_per_lang": 25, "dropout": False, "data_root": None}


def _train_reader(args) -> int:
    from cora.fileio import atomic_write_json
    from cora.reader.extractive import ExtractiveReader
    from cora.reader.training import ReaderTask, reader_mixture, xquad_dev_examples
    from cora.training import train

    opts = resolve_options(args, READER_DEFAULTS, required=("data_root", "output_dir"))
    train_cfg = TrainConfig(**{f.name: opts[f.name] for f in fields(TrainConfig) if f.name in opts})
    Path(train_cfg.output_dir).mkdir(parents=True, exist_ok=True)
    mixture = reader_mixture(opts["data_root"], cross_lingual=opts["cross_lingual"], seed=train_cfg.seed)
    opts["mixture"] = mixture.counts
    print(f"training examples: {len(mixture.train)} " + json.dumps(mixture.counts))
    dev = xquad_dev_examples(opts["data_root"], opts["dev_per_lang"]) if opts["dev_per_lang"] else None
    if opts["init_from"]:
        reader = _reader_to_continue(opts)
    else:
        reader = ExtractiveReader.from_backbone(opts["backbone"], device=opts.get("device"),
                                                trainable_layers=opts["trainable_layers"],
                                                max_length=opts["max_length"], rank_head=opts["rank_head"])
    atomic_write_json(Path(train_cfg.output_dir) / "reader_train_config.json", opts)
    task = ReaderTask(reader, mixture.train, train_cfg.batch_size, mixture.negatives, opts["negative_rate"], dev,
                      dropout=opts["dropout"], negatives_per_example=opts["negatives_per_example"])
    result = train(task, train_cfg)
    print(json.dumps(result, indent=2))
    return 0


def _reader_to_continue(opts: dict):
    """The reader named by --init-from, set up to train at this run's input length (a staged recipe)."""
    from cora.reader import load_reader
    from cora.reader.extractive import ExtractiveReader

    reader = load_reader(opts["init_from"], device=opts.get("device"))
    if not isinstance(reader, ExtractiveReader):
        raise CoraError(f"--init-from {opts['init_from']}: not an extractive reader")
    trained = reader.config.trainable_layers
    wanted = opts["trainable_layers"]
    if wanted is not None and (trained is None or wanted < trained):
        raise CoraError(f"--init-from {opts['init_from']} trained {trained or 'all'} layers; --trainable-layers "
                        f"{wanted} would drop trained weights from what is saved")
    if wanted is not None and wanted != trained:
        reader.train_layers(wanted)  # more layers than the reader trained so far: still a delta on its backbone
    if opts["rank_head"] and reader.model.rank is None:
        reader.add_rank_head()
    opts["backbone"], opts["trainable_layers"] = reader.config.model, reader.config.trainable_layers
    reader.config.max_length = opts["max_length"]
    return reader
