"""``cora train retriever`` / ``cora train reader``: both run the one training loop (cora.training.train).

Each command's options are one dataclass (:class:`RetrieverTrainConfig`, :class:`ReaderTrainConfig`), the loop's
:class:`~cora.training.TrainConfig` plus the model's own fields: the flags are generated from it, a ``--config``
JSON file holds any of its fields (an unknown key is an error), and the resolved dataclass is saved in the run
folder with a provenance block, so that ``--config RUN/..._config.json`` reruns (and resumes) the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from cora.config import add_config_arguments, resolve_config, save_config
from cora.distributed import is_main
from cora.errors import CoraError
from cora.training import TrainConfig

RETRIEVER_CONFIG_FILE = "retriever_config.json"
READER_CONFIG_FILE = "reader_train_config.json"


@dataclass
class RetrieverTrainConfig(TrainConfig):
    """``cora train retriever``: the loop's options and the retriever's."""

    train_data: str = field(default="", metadata={"help": "DPR-format JSON training file (required)"})
    encoder: str = field(default="me5-small", metadata={"help": "starting encoder"})
    tower: str = field(default="shared", metadata={
        "choices": ("shared", "query"),
        "help": "'shared': one encoder for questions and passages, all of it trained, as in DPR/CORA. 'query': "
                "only a LoRA adapter on a separate query tower is trained; passages keep the backbone's vectors "
                "(computed once from --datastore, every one of them a negative), so existing indexes of the "
                "backbone stay valid and nothing is re-encoded"})
    lora_rank: int = field(default=16, metadata={"help": "rank of the query tower's LoRA adapter (--tower query)"})
    distill_weight: float = field(default=0.0, metadata={
        "help": "--tower query: weight of distilling each question towards the backbone's vector of its "
                "'pivot_question' (its translation, e.g. the English original; 0 = off)"})
    all_weight: float = field(default=0.5, metadata={
        "help": "--tower query: weight of ranking against all passages vs against the pivot language's only "
                "(0 = cross-lingual only)"})
    dev_select: str = field(default="mean", metadata={
        "choices": ("mean", "pivot", "all"),
        "help": "--tower query: checkpoint selection on the mean of both dev recall@1, the pivot one, or the "
                "all-passages one"})
    dev_pivot: str = field(default="en", metadata={
        "help": "--tower query: also report dev recall against this language's passages only, and select on the "
                "mean of both recall@1 ('none' off)"})
    datastore: str | None = field(default=None, metadata={
        "help": "drop positives whose ids are not in this datastore (counted); with --tower query, the passages "
                "every question is ranked against"})
    dev_questions: str | None = field(default=None, metadata={"help": "dev questions JSONL with gold_group"})
    dev_datastore: str | None = field(default=None, metadata={"help": "datastore the dev questions are searched in"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature"})
    native_positive_rate: float = field(default=0.5, metadata={
        "help": "share of batches using the gold passage itself rather than a language-linked version"})
    freeze_embeddings: bool = field(default=True, metadata={
        "help": "keep the (large) token embedding matrix frozen"})
    dropout: bool = field(default=True, metadata={
        "help": "dropout while training (--no-dropout: 2.4x faster training steps on CPU, measured)"})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)"})

    def check(self) -> None:
        if not self.train_data:
            raise CoraError("--train-data is required (a flag, or 'train_data' in --config)")
        if self.dev_questions and not self.dev_datastore:
            raise CoraError("--dev-questions needs --dev-datastore")


@dataclass
class ReaderTrainConfig(TrainConfig):
    """``cora train reader``: the loop's options and the extractive reader's."""

    RECORDED: ClassVar[tuple[str, ...]] = ("mixture",)  # written into the saved copy: examples per source

    data_root: str = field(default="", metadata={
        "help": "data folder: holds xquad/ (the dev set, and the dev articles dropped from every source), and "
                "relative --source paths are read from it (required; the shared data folder, $CORA_SHARED_DATA)"})
    sources: list[str] | None = field(default=None, metadata={
        "flag": "--source", "metavar": "PATH:LANG[:FORMAT[:CAP]]",
        "help": "a training file (a glob, relative to --data-root unless absolute), its language, its format "
                "('squad' or 'afriqa') and a cap on its examples; repeat for several. Default: cora's mixture "
                "(cora.datasets.READER_SOURCES: XQuAD training articles 0-31 in 12 languages, TyDi GoldP en/ko/sw, "
                "JaQuAD, ARCD, DRCD, SQuAD-it, SQuAD-es, AfriQA gold passages)"})
    backbone: str = field(default="me5-small", metadata={"help": "encoder to put the span head on"})
    init_from: str | None = field(default=None, metadata={
        "help": "continue from a trained reader (a folder or a shipped name) instead of a new head on --backbone; "
                "its backbone and trained layers are kept"})
    trainable_layers: int | None = field(default=None, metadata={
        "help": "train only the top N encoder layers (default: all)"})
    max_length: int = field(default=384, metadata={"help": "question + passage tokens per input"})
    cross_lingual: int = field(default=6000, metadata={"help": "XQuAD cross-lingual pairs to add"})
    negative_rate: float = field(default=0.3, metadata={"help": "share of examples read with answerless passages"})
    negatives_per_example: int = field(default=1, metadata={
        "help": "answerless passages such an example is read with, at most: one from the same article when there "
                "is one, the rest drawn at random from its language (a draw that holds the answer is dropped)"})
    rank_head: bool = field(default=False, metadata={
        "help": "add and train a passage-selection head (DPR's reader)"})
    dev_per_lang: int = field(default=25, metadata={
        "help": "XQuAD dev questions per language for the dev metric (0: no dev set)"})
    dropout: bool = field(default=False, metadata={
        "help": "dropout while training (a short fine-tune from a pretrained encoder does without it, and runs much "
                "faster on CPU)"})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)"})

    def check(self) -> None:
        if not self.data_root:
            raise CoraError("--data-root is required (a flag, or 'data_root' in --config)")
        for spec in self.sources or ():
            _parse_source(spec)


def _parse_source(spec: str):
    from cora.datasets import ReaderSource

    return ReaderSource.parse(spec)


def train_config(cfg: TrainConfig) -> TrainConfig:
    """The loop's own options out of a command's config."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})


_LOOP = {f.name for f in fields(TrainConfig)}


def _add_options(parser, cls: type) -> None:
    parser.add_argument("--config", help="JSON file with any of the options below (keys are the long option "
                                         "names with _ for -); flags override it. A run folder's saved "
                                         f"{RETRIEVER_CONFIG_FILE if cls is RetrieverTrainConfig else READER_CONFIG_FILE} "
                                         "is such a file")
    own = tuple(f.name for f in fields(cls) if f.name not in _LOOP)
    add_config_arguments(parser, cls, skip=tuple(_LOOP), title="model and data")
    add_config_arguments(parser, cls, skip=own, title="training loop")


def register(sub) -> None:
    p = sub.add_parser("train", help="train models (retriever, reader)",
                       description="Train cora's models with the one training loop (AdamW, warmup/decay, "
                                   "accumulation, clipping, bf16 on GPU, dev evaluation, best checkpoint, resume).")
    tsub = p.add_subparsers(dest="train_command", metavar="<model>", required=True)
    r = tsub.add_parser(
        "retriever", help="fine-tune the dense retriever (DPR loss: in-batch + hard negatives)",
        description=(
            "Fine-tune an encoder on DPR-format JSON (question, answers, lang, positive_ctxs, negative_ctxs, "
            "hard_negative_ctxs). Options come from --config and are overridden by flags; the resolved "
            f"configuration is saved in the run folder ({RETRIEVER_CONFIG_FILE}, with cora's version and git "
            "commit). Rerunning the same command resumes from the last checkpoint. The best checkpoint (run/best) "
            "is a regular encoder folder: 'cora index build --encoder run/best'. Dev questions are JSONL with a "
            "'gold_group' per question, searched against --dev-datastore."
        ),
    )
    _add_options(r, RetrieverTrainConfig)
    r.set_defaults(func=_train_retriever)

    d = tsub.add_parser(
        "reader", help="train the extractive reader (joint span loss over a question's passages)",
        description=(
            "Fine-tune the extractive span reader on SQuAD-format sets (--source, repeatable; by default cora's "
            "mixture from the shared data folder) plus XQuAD cross-lingual pairs. Any article holding an XQuAD "
            "dev question (articles 32-39) is dropped from every file. Dev metric: macro F1 on XQuAD dev with the "
            "gold paragraph. With --trainable-layers N only the top N layers and the head are trained and saved, "
            "as a small delta over the backbone. Options come from --config and are overridden by flags; the "
            f"resolved configuration is saved in the run folder ({READER_CONFIG_FILE}); rerunning resumes."
        ),
    )
    _add_options(d, ReaderTrainConfig)
    d.set_defaults(func=_train_reader)


def _train_retriever(args) -> int:
    from cora.datastore import Datastore
    from cora.encoder import Encoder
    from cora.questions import Question
    from cora.retriever_training import RetrieverTask, read_examples
    from cora.training import train

    cfg = resolve_config(RetrieverTrainConfig, args, args.config)
    train_cfg = train_config(cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if is_main():  # under torchrun, rank 0 writes the run folder
        save_config(cfg, Path(cfg.output_dir) / RETRIEVER_CONFIG_FILE)
    ds = Datastore(cfg.datastore) if cfg.datastore else None
    examples = read_examples(cfg.train_data, ds)
    if len(examples) < train_cfg.batch_size:
        raise CoraError(f"{cfg.train_data}: {len(examples)} usable examples, fewer than one batch")
    dev = None
    if cfg.dev_questions:
        rows = [json.loads(line) for line in Path(cfg.dev_questions).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        dev = ([Question(str(r["id"]), r["question"], r.get("lang"), r.get("answers", []), None, r["gold_group"])
                for r in rows], Datastore(cfg.dev_datastore))
    encoder = Encoder.from_pretrained(cfg.encoder, device=cfg.device)
    if cfg.tower == "query":
        task = _query_tower_task(cfg, encoder, examples, ds, dev, train_cfg)
    else:
        task = RetrieverTask(encoder, examples, train_cfg.batch_size, dev, cfg.temperature,
                             cfg.native_positive_rate, cfg.freeze_embeddings, cfg.dropout)
    result = train(task, train_cfg)
    print(json.dumps(result, indent=2))
    return 0


def _query_tower_task(cfg: RetrieverTrainConfig, encoder, examples, datastore, dev, train_cfg):
    import torch

    from cora.retriever_training import QueryTowerTask, passage_vectors

    if datastore is None:
        raise CoraError("--tower query needs --datastore: the passages (holding every positive) that questions are "
                        "ranked against")
    if encoder.query_model is None:
        encoder.add_query_adapter(rank=cfg.lora_rank)
    if not cfg.dropout:
        for m in encoder.query_model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    run = Path(train_cfg.output_dir)
    vectors = passage_vectors(encoder, datastore, run / "passage_index")
    dev_vectors = passage_vectors(encoder, dev[1], run / "dev_passage_index") if dev else None
    pivot = None if str(cfg.dev_pivot).lower() in ("none", "") else cfg.dev_pivot
    try:
        return QueryTowerTask(encoder, examples, train_cfg.batch_size, datastore, vectors, dev, cfg.temperature,
                              pivot, dev_vectors, cfg.distill_weight, cfg.all_weight, cfg.dev_select)
    except ValueError as err:
        raise CoraError(str(err)) from None


def _train_reader(args) -> int:
    from cora.datasets import READER_SOURCES
    from cora.reader.extractive import ExtractiveReader
    from cora.reader.training import ReaderTask, reader_mixture, xquad_dev_examples
    from cora.training import train

    cfg = resolve_config(ReaderTrainConfig, args, args.config)
    train_cfg = train_config(cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    sources = [_parse_source(s) for s in cfg.sources] if cfg.sources else list(READER_SOURCES)
    cfg.sources = [s.spec() for s in sources]  # the saved copy lists them: it reruns the same mixture
    mixture = reader_mixture(cfg.data_root, sources, cross_lingual=cfg.cross_lingual, seed=train_cfg.seed)
    print(f"training examples: {len(mixture.train)} " + json.dumps(mixture.counts))
    dev = xquad_dev_examples(cfg.data_root, cfg.dev_per_lang) if cfg.dev_per_lang else None
    if cfg.init_from:
        reader = _reader_to_continue(cfg)
    else:
        reader = ExtractiveReader.from_backbone(cfg.backbone, device=cfg.device,
                                                trainable_layers=cfg.trainable_layers,
                                                max_length=cfg.max_length, rank_head=cfg.rank_head)
    if is_main():
        save_config(cfg, Path(cfg.output_dir) / READER_CONFIG_FILE, mixture=mixture.counts)
    task = ReaderTask(reader, mixture.train, train_cfg.batch_size, mixture.negatives, cfg.negative_rate, dev,
                      dropout=cfg.dropout, negatives_per_example=cfg.negatives_per_example)
    result = train(task, train_cfg)
    print(json.dumps(result, indent=2))
    return 0


def _reader_to_continue(cfg: ReaderTrainConfig):
    """The reader named by --init-from, set up to train at this run's input length (a staged recipe)."""
    from cora.reader import load_reader
    from cora.reader.extractive import ExtractiveReader

    reader = load_reader(cfg.init_from, device=cfg.device)
    if not isinstance(reader, ExtractiveReader):
        raise CoraError(f"--init-from {cfg.init_from}: not an extractive reader")
    trained = reader.config.trainable_layers
    wanted = cfg.trainable_layers
    if wanted is not None and (trained is None or wanted < trained):
        raise CoraError(f"--init-from {cfg.init_from} trained {trained or 'all'} layers; --trainable-layers "
                        f"{wanted} would drop trained weights from what is saved")
    if wanted is not None and wanted != trained:
        reader.train_layers(wanted)  # more layers than the reader trained so far: still a delta on its backbone
    if cfg.rank_head and reader.model.rank is None:
        reader.add_rank_head()
    cfg.backbone, cfg.trainable_layers = reader.config.model, reader.config.trainable_layers
    reader.config.max_length = cfg.max_length
    return reader
