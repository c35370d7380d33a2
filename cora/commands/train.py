"""``cora train retriever``: fine-tune a (m)DPR encoder on DPR-format data."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from cora.errors import CoraError
from cora.training import TrainConfig

RETRIEVER_DEFAULTS = {"encoder": "me5-small", "temperature": 0.05, "native_positive_rate": 0.5,
                      "freeze_embeddings": True, "dropout": True, "dev_questions": None, "dev_datastore": None, "datastore": None}


def register(sub) -> None:
    p = sub.add_parser("train", help="train models (retriever)",
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
    r.add_argument("--datastore", help="drop positives whose ids are not in this datastore (counted)")
    r.add_argument("--dev-questions", help="dev questions JSONL with gold_group")
    r.add_argument("--dev-datastore", help="datastore the dev questions are searched in")
    r.add_argument("--temperature", type=float, help="softmax temperature (default 0.05)")
    r.add_argument("--native-positive-rate", type=float,
                   help="share of batches using the gold passage itself rather than a language-linked version (0.5)")
    r.add_argument("--no-freeze-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                   help="also train the (large) token embedding matrix")
    r.add_argument("--no-dropout", dest="dropout", action="store_false", default=None,
                   help="switch dropout off (2.4x faster training steps on CPU, measured)")
    for f in fields(TrainConfig):
        if f.name == "output_dir":
            continue
        kind = {"int": int, "float": float, "bool": None, "int | None": int}.get(str(f.type), str)
        if kind is None:
            r.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v.lower() in ("1", "true", "yes"),
                           help=f.metadata.get("help"))
        else:
            r.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=f.metadata.get("help"))
    r.add_argument("--device", help="cpu or cuda")
    r.set_defaults(func=_train_retriever)


def resolve_options(args) -> dict:
    opts = dict(RETRIEVER_DEFAULTS)
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CoraError(f"{args.config}: cannot read config ({err})") from None
        opts.update(loaded)
    opts.update({k: v for k, v in vars(args).items() if v is not None and k not in ("func", "config", "command",
                                                                                   "train_command", "verbose")})
    for key in ("train_data", "output_dir"):
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
    task = RetrieverTask(encoder, examples, train_cfg.batch_size, dev, opts["temperature"],
                         opts["native_positive_rate"], opts["freeze_embeddings"], opts["dropout"])
    result = train(task, train_cfg)
    print(json.dumps(result, indent=2))
    return 0
