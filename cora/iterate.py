"""The CORA loop: iterative cross-lingual data expansion that retrains mDPR and the reader.

Round 0 evaluates the starting retriever and reader. Every later round k mines new training data with the
models of round k-1 and trains new ones from them:

1. **retrieve** the top ``retrieve_k`` passages for every training question (all languages);
2. **label** the top ``label_depth`` of them with the reader, one passage at a time (CORA's rule): a correct
   answer makes a positive; a wrong answer without the answer string in the passage, a hard negative; a wrong
   answer with the string present, a *fallback* positive, used only when the question has no reader positive;
3. **mine**: positives (with the gold passage, when known) are expanded across languages through their groups
   (language links): a version in another language is kept when it contains the gold answer in that language
   (``answers_by_lang``, known for parallel sets such as XQuAD) or when the reader answers correctly from it.
   Positives accumulate over rounds; the new cross-lingual ones are counted per language pair;
4. **retriever**: mDPR is trained from the previous weights on the mined data, then the datastore is re-encoded
   (**index**);
5. **reader_data / reader**: the training questions are retrieved again with the new index, and the reader is
   trained from the previous one on CORA's context (top ``reader_k`` with up to ``reader_positives``
   answer-containing passages, shuffled);
6. **metrics**: dev recall@k of the gold group per language, and dev F1/EM per language of the answer read from
   the top ``eval_k`` passages (with language-link projection), on the main datastore and each eval datastore.

Each step writes one output (a file or a folder) atomically; rerunning the same command skips every step whose
output exists, and the two training steps resume from their own checkpoints. A round folder written under a
different configuration is refused. Layout::

    output_dir/config.json, summary.{md,json,png}
    output_dir/round_k/config.json, retrieved.json, labels.jsonl, mined.json, retriever_run/, retriever/,
                       index/, eval_index_<name>/, reader_data.jsonl, reader_run/, reader/, metrics.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cora.config import config_from_dict
from cora.datastore import Datastore, Passage
from cora.errors import CoraError
from cora.evaluation.text import answer_occurrences, contains_answer
from cora.fileio import atomic_dir, atomic_write_json, atomic_write_text
from cora.mining import (
    Mined,
    Retrieved,
    answers_for,
    is_correct,
    label_questions,
    load_labels,
    mine,
    reader_answers,
    save_labels,
)
from cora.questions import Question, read_questions

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Fields that may change between invocations without invalidating finished rounds.
_FREE_FIELDS = ("output_dir", "rounds", "device")


def _default_reader() -> str:
    # Imported when a config is made, not with this module: importing cora.reader imports torch, and
    # `cora iterate --help` lists IterateConfig's fields (the CLI's help must start without torch).
    from cora.reader.base import DEFAULT_READER

    return DEFAULT_READER


@dataclass
class IterateConfig:
    """``cora iterate --config``: every option of the loop, saved in the run folder and in each round."""

    output_dir: str = field(metadata={"help": "run folder (round_0/, round_1/, ..., summary)"})
    datastore: str = field(metadata={"help": "datastore mined and searched (all languages, with groups)"})
    train_questions: str = field(metadata={"help": "JSONL: id, question, lang, answers [, gold_passage, "
                                                   "answers_by_lang]"})
    dev_questions: str = field(metadata={"help": "JSONL: id, question, lang, answers, gold_group"})
    encoder: str = field(default="me5-small", metadata={"help": "round-0 retriever encoder"})
    reader: str = field(default_factory=_default_reader, metadata={"help": "round-0 reader (folder or shipped name)"})
    rounds: int = field(default=2, metadata={"help": "rounds after round 0"})
    eval_datastores: dict[str, str] = field(default_factory=dict,
                                            metadata={"help": "name -> datastore, evaluated only"})
    retrieve_k: int = field(default=100, metadata={"help": "passages retrieved per training question"})
    label_depth: int = field(default=20, metadata={"help": "of those, how many the reader labels"})
    read_answerless: bool = field(default=True, metadata={
        "help": "false: the reader labels only passages holding a gold answer; the others are labelled wrong "
                "unread (what an extractive reader would score on them), so label_depth can be 100 at the cost "
                "of ~4 reads a question"})
    fallback_depth: int | None = field(default=None, metadata={
        "help": "fallback positives (answer present, reader wrong) only from the top N labels; reader-confirmed "
                "positives from any depth. Default: label_depth"})
    hard_negatives: int = field(default=3, metadata={"help": "reader-labelled hard negatives kept per question"})
    reader_k: int = field(default=10, metadata={"help": "passages in a reader training context (CORA: 10)"})
    reader_positives: int = field(default=3, metadata={"help": "answer-containing passages sampled (CORA: 3)"})
    eval_k: int = field(default=5, metadata={"help": "passages read per dev question"})
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 20], metadata={"help": "dev recall cut-offs"})
    retriever_train: dict = field(default_factory=dict, metadata={"help": "TrainConfig fields for mDPR"})
    reader_train: dict = field(default_factory=dict, metadata={"help": "TrainConfig fields for the reader"})
    temperature: float = field(default=0.05, metadata={"help": "mDPR softmax temperature"})
    retriever_tower: str = field(default="shared", metadata={
        "help": "'shared': mDPR as in CORA, one encoder trained for questions and passages, the datastore "
                "re-encoded every round. 'query': only a LoRA query tower is trained, over the frozen passage "
                "vectors of round 0, so no round re-encodes the datastore (see 'cora train retriever --tower')"})
    lora_rank: int = field(default=16, metadata={"help": "rank of the query tower's adapter (retriever_tower "
                                                          "'query')"})
    query_all_weight: float = field(default=0.5, metadata={
        "help": "retriever_tower 'query': weight of ranking against all passages vs against the pivot "
                "language's only (0 for an adapter scoped 'cross-lingual')"})
    distill_weight: float = field(default=0.0, metadata={
        "help": "retriever_tower 'query': weight of distilling each training question that has a 'translation' "
                "(a human translation, e.g. AfriQA's English versions) towards the frozen backbone's vector of it, "
                "mined positives or not (0 = off; uses data CORA's training questions did not have)"})
    distill_mode: str = field(default="vector", metadata={
        "help": "how distill_weight distils: 'vector' (squared distance to the translation's vector) or 'ranking' "
                "(KL divergence between the question's and the translation's rankings of the datastore)"})
    distill_temperature: float | None = field(default=None, metadata={
        "help": "distill_mode 'ranking': softmax temperature of both rankings (default: temperature)"})
    distill_questions: str | None = field(default=None, metadata={
        "help": "with distill_weight > 0: JSONL of more questions, each with a 'translation', used only to distil "
                "the query tower (never retrieved for, labelled or mined), e.g. training questions without an "
                "answer, which cannot be mined but can still learn to rank as their translation does"})
    distill_vector_questions: str | None = field(default=None, metadata={
        "help": "with distill_weight > 0: JSONL like distill_questions, but always distilled vector to vector "
                "(whatever distill_mode), e.g. parallel sentences, whose ranking of this datastore says little"})
    evaluate_main: bool = field(default=True, metadata={
        "help": "also evaluate on the mined datastore (off when eval_datastores already hold the benchmark ones)"})
    query_adapter_scope: str | None = field(default=None, metadata={
        "help": "retriever_tower 'query', when the round-0 encoder has no query tower yet: which questions the new "
                "adapter encodes, 'all' or 'cross-lingual' (only those whose language the searched datastore lacks; "
                "the others use the backbone). Default 'all'; an encoder that has an adapter keeps its own scope"})
    dev_recall: str = field(default="group", metadata={
        "help": "what a dev hit is: 'group' (the gold passage or a language version of it; every dev question needs "
                "a gold_group) or 'answer' (a passage holding one of the question's gold answers in any language, "
                "contains_answer: for dev sets without gold passages, e.g. AfriQA)"})
    eval_qa_per_lang: int | None = field(default=None, metadata={
        "help": "dev questions per language that are also read for F1/EM (the first ones in the file); recall is "
                "measured on all. Default: all"})
    reader_trainable_layers: int | None = field(default=None, metadata={
        "help": "extractive reader: train only its top N encoder layers (and heads) in each round; the saved reader "
                "keeps every layer it had. Default: those the reader trains already"})
    index_factory: str = field(default="Flat", metadata={"help": "FAISS factory of every round's index"})
    seed: int = field(default=0, metadata={"help": "seed of sampling and data order"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available)"})

    def __post_init__(self):
        if self.rounds < 0:
            raise CoraError(f"rounds must be >= 0, got {self.rounds}")
        for name in ("retrieve_k", "label_depth", "reader_k", "eval_k"):
            if getattr(self, name) < 1:
                raise CoraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.label_depth > self.retrieve_k:
            raise CoraError(f"label_depth ({self.label_depth}) cannot exceed retrieve_k ({self.retrieve_k})")
        if self.retriever_tower not in ("shared", "query"):
            raise CoraError(f"retriever_tower must be 'shared' or 'query', got {self.retriever_tower!r}")
        if self.query_adapter_scope not in (None, "all", "cross-lingual"):
            raise CoraError(f"query_adapter_scope must be 'all' or 'cross-lingual', got {self.query_adapter_scope!r}")
        if self.dev_recall not in ("group", "answer"):
            raise CoraError(f"dev_recall must be 'group' or 'answer', got {self.dev_recall!r}")
        if self.fallback_depth is not None and self.fallback_depth < 1:
            raise CoraError(f"fallback_depth must be >= 1, got {self.fallback_depth}")
        if self.distill_weight < 0 or (self.distill_weight > 0 and self.retriever_tower != "query"):
            raise CoraError(f"distill_weight must be >= 0 and needs retriever_tower 'query', got "
                            f"{self.distill_weight} with {self.retriever_tower!r}")
        if self.distill_mode not in ("vector", "ranking"):
            raise CoraError(f"distill_mode must be 'vector' or 'ranking', got {self.distill_mode!r}")
        if self.distill_temperature is not None and (self.distill_temperature <= 0 or self.distill_mode != "ranking"):
            raise CoraError(f"distill_temperature must be > 0 and needs distill_mode 'ranking', got "
                            f"{self.distill_temperature} with {self.distill_mode!r}")
        for name in ("distill_questions", "distill_vector_questions"):
            if getattr(self, name) and self.distill_weight <= 0:
                raise CoraError(f"{name} needs distill_weight > 0 (they train only through distillation)")
        if not 0 <= self.reader_positives <= self.reader_k:
            raise CoraError(f"reader_positives must be between 0 and reader_k, got {self.reader_positives}")


def _config_defaults() -> dict:
    out = {}
    for f in dataclasses.fields(IterateConfig):
        if f.name in _FREE_FIELDS:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# ---------------------------------------------------------------------------------------- the loop
class Loop:
    def __init__(self, cfg: IterateConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.datastore = Datastore(cfg.datastore)
        self.train_q = read_questions(cfg.train_questions)
        self.dev_q = read_questions(cfg.dev_questions)
        for path, qs in ((cfg.train_questions, self.train_q), (cfg.dev_questions, self.dev_q)):
            missing = [q.id for q in qs if not q.lang]
            if missing:
                raise CoraError(f"{path}: question {missing[0]!r} has no 'lang' (needed to score it)")
        if not self.train_q:
            raise CoraError(f"{cfg.train_questions}: no training questions")
        self.distill_q = read_questions(cfg.distill_questions) if cfg.distill_questions else []
        self.distill_vector_q = read_questions(cfg.distill_vector_questions) if cfg.distill_vector_questions else []
        for path, qs in ((cfg.distill_questions, self.distill_q), (cfg.distill_vector_questions, self.distill_vector_q)):
            untranslated = [q.id for q in qs if not q.translation]
            if untranslated:
                raise CoraError(f"{path}: question {untranslated[0]!r} has no 'translation' (distillation questions "
                                "teach the tower only through it)")
        if cfg.dev_recall == "group" and any(q.gold_group is None for q in self.dev_q):
            raise CoraError(f"{cfg.dev_questions}: every dev question needs a 'gold_group' (recall is measured "
                            "on it; or set dev_recall 'answer')")
        self.eval_stores = ({"main": self.datastore} if cfg.evaluate_main else {}) | {
            n: Datastore(p) for n, p in cfg.eval_datastores.items()}
        if not self.eval_stores:
            raise CoraError("nothing to evaluate on: set evaluate_main or give eval_datastores")

    # --- bookkeeping
    def _check_config(self, folder: Path) -> None:
        mine = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in _FREE_FIELDS}
        path = folder / CONFIG_FILE
        if path.exists():
            # A field added after the folder was written counts as its default there.
            theirs = _config_defaults() | {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                                           if k not in _FREE_FIELDS and k != "type"}
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                raise CoraError(f"{folder} was written with a different configuration ({', '.join(differ)} "
                                "differ); use another --output-dir, or restore the original options")
        else:
            atomic_write_json(path, {"type": "IterateConfig", **dataclasses.asdict(self.cfg)})

    def _step(self, folder: Path, name: str, fn: Callable[[Path], None]) -> Path:
        """Run ``fn(output path)`` unless the step's output already exists."""
        target = folder / name
        if target.exists():
            logger.info("%s/%s: done before, skipped", folder.name, name)
            return target
        logger.info("%s/%s ...", folder.name, name)
        fn(target)
        return target

    def retriever_dir(self, k: int) -> str:
        return self.cfg.encoder if k == 0 else str(self.out / f"round_{k}" / "retriever")

    def reader_dir(self, k: int) -> str:
        return self.cfg.reader if k == 0 else str(self.out / f"round_{k}" / "reader")

    def _encoder(self, k: int):
        from cora.encoder import Encoder

        return Encoder.from_pretrained(self.retriever_dir(k), device=self.cfg.device)

    def _reader(self, k: int):
        from cora.reader.base import load_reader

        return load_reader(self.reader_dir(k), device=self.cfg.device)

    def _index(self, encoder, datastore: Datastore, target: Path, name: str) -> None:
        import shutil

        from cora.index import build_index

        round0 = self.out / "round_0" / target.name
        with atomic_dir(target) as tmp:
            if self.cfg.retriever_tower == "query" and target.parent.name != "round_0":
                # The passage tower never trains: round 0's vectors are this round's, bit for bit.
                shutil.copytree(round0, tmp, dirs_exist_ok=True)
            else:
                build_index(datastore, encoder, tmp, name, factory=self.cfg.index_factory)

    def _index_dir(self, k: int, store: str = "main") -> Path:
        return self.out / f"round_{k}" / ("index" if store == "main" else f"eval_index_{store}")

    def _retriever(self, k: int, store: str = "main"):
        from cora.index import DenseIndex
        from cora.retriever import Retriever

        datastore = self.datastore if store == "main" else self.eval_stores[store]
        return Retriever(self._encoder(k), DenseIndex.load(self._index_dir(k, store)), datastore)

    def _search(self, k: int, questions: Sequence[Question], depth: int, store: str = "main") -> list[list[int]]:
        hits = self._retriever(k, store).search_batch([q.question for q in questions], k=depth,
                                                      langs=[q.lang for q in questions])
        return [[h.row for h in hs] for hs in hits]

    # --- the run
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config(self.out)
        for k in range(self.cfg.rounds + 1):
            folder = self.out / f"round_{k}"
            folder.mkdir(exist_ok=True)
            self._check_config(folder)
            if k > 0:
                self._mine_and_train(k, folder)
            else:
                self._step(folder, "index", lambda t: self._index(self._encoder(0), self.datastore, t,
                                                                    self.cfg.encoder))
            for name, store in self.eval_stores.items():
                if name != "main":
                    self._step(folder, f"eval_index_{name}",
                               lambda t, s=store, k=k: self._index(self._encoder(k), s, t, self.retriever_dir(k)))
            self._step(folder, "metrics.json", lambda t, k=k: atomic_write_json(t, self.evaluate(k)))
        return self.summarise()

    def _mine_and_train(self, k: int, folder: Path) -> None:
        self._step(folder, "retrieved.json", lambda t: Retrieved(dict(zip(
            [q.id for q in self.train_q], self._search(k - 1, self.train_q, self.cfg.retrieve_k), strict=True))
        ).save(t))
        self._step(folder, "labels.jsonl", lambda t: self.label(k, folder, t))
        self._step(folder, "mined.json", lambda t: self.mine(k, folder).save(t))
        self._step(folder, "retriever", lambda t: self.train_retriever(k, folder, t))
        self._step(folder, "index", lambda t: self._index(self._encoder(k), self.datastore, t, self.retriever_dir(k)))
        self._step(folder, "reader_data.jsonl", lambda t: self.reader_data(k, t))
        self._step(folder, "reader", lambda t: self.train_reader(k, folder, t))

    # --- steps
    def label(self, k: int, folder: Path, target: Path) -> None:
        """Round k's reader labels (cora.mining.label_questions) of the passages round k-1 retrieved."""
        retrieved = Retrieved.load(folder / "retrieved.json")
        reader = self._reader(k - 1)
        if not self.cfg.read_answerless and reader.config.backend != "extractive":
            logger.warning("read_answerless is false with a %s reader: passages without the answer string are "
                           "labelled wrong unread, although a generator could answer from them", reader.config.backend)
        save_labels(target, label_questions(reader, self.train_q, retrieved, self.datastore,
                                            self.cfg.label_depth, read_answerless=self.cfg.read_answerless))

    def mine(self, k: int, folder: Path) -> Mined:
        """Round k's positives and hard negatives (cora.mining.mine), on top of round k-1's."""
        reader = self._reader(k - 1)

        def confirm(q: Question, p: Passage) -> bool:
            return is_correct(reader.read(q.question, [p], q.lang).text, answers_for(q, p.lang), p.lang)

        previous = Mined.load(self.out / f"round_{k - 1}" / "mined.json") if k > 1 else None
        return mine(k, self.train_q, load_labels(folder / "labels.jsonl"), self.datastore, confirm,
                    self.cfg.hard_negatives, previous, self.cfg.fallback_depth)

    def _dpr_examples(self, mined: Mined) -> list:
        from cora.retriever_training import Ctx, DPRExample

        def ctx(row: int) -> Ctx:
            p = self.datastore[row]
            return Ctx(p.id, p.title, p.text)

        distill = self.cfg.distill_weight > 0
        out = []
        for q in self.train_q:
            rec = mined.questions[q.id]
            if not rec.positives and not (distill and q.translation):
                continue
            # The question's own-language positive first: the trainer uses it as the "native" positive.
            out.append(DPRExample(q.question, list(q.answers), q.lang,
                                  [ctx(r) for r in rec.positive_rows(self.datastore, q.lang)], [],
                                  [ctx(r) for r in rec.hard_negatives], q.translation if distill else None))
        # Distillation-only questions: no positives, only their translation's ranking to learn from.
        out += [DPRExample(q.question, list(q.answers), q.lang, [], [], [], q.translation) for q in self.distill_q]
        out += [DPRExample(q.question, list(q.answers), q.lang, [], [], [], q.translation, distill_mode="vector")
                for q in self.distill_vector_q]
        return out

    def train_retriever(self, k: int, folder: Path, target: Path) -> None:
        from cora.retriever_training import RetrieverTask
        from cora.training import TrainConfig, train

        examples = self._dpr_examples(Mined.load(folder / "mined.json"))
        tcfg = config_from_dict(TrainConfig, {"seed": self.cfg.seed, **self.cfg.retriever_train,
                                              "output_dir": str(folder / "retriever_run")}, "retriever_train")
        if len(examples) < tcfg.batch_size:
            raise CoraError(f"round {k}: {len(examples)} mined examples, fewer than one batch of {tcfg.batch_size}")
        encoder = self._encoder(k - 1)
        if self.cfg.retriever_tower == "query":
            from cora.index import DenseIndex
            from cora.retriever_training import QueryTowerTask

            if encoder.query_model is None:
                encoder.add_query_adapter(rank=self.cfg.lora_rank)
                encoder.config = dataclasses.replace(encoder.config,
                                                     query_adapter_scope=self.cfg.query_adapter_scope or "all")
            index = DenseIndex.load(self.out / "round_0" / "index")
            vectors = index.passage_vectors()
            task = QueryTowerTask(encoder, examples, tcfg.batch_size, self.datastore, vectors, None,
                                  self.cfg.temperature, all_weight=self.cfg.query_all_weight,
                                  distill_weight=self.cfg.distill_weight, distill_mode=self.cfg.distill_mode,
                                  distill_temperature=self.cfg.distill_temperature)
        else:
            task = RetrieverTask(encoder, examples, tcfg.batch_size, None, self.cfg.temperature, dropout=False)
        train(task, tcfg)
        with atomic_dir(target) as tmp:
            encoder.save_pretrained(tmp)

    def reader_data(self, k: int, target: Path) -> None:
        from cora.reader.seq2seq import training_passages

        rng = random.Random(self.cfg.seed * 7919 + k)
        ranked = self._search(k, self.train_q, max(self.cfg.reader_k * 2, self.cfg.reader_k))
        lines, dropped = [], 0
        for q, rows in zip(self.train_q, ranked, strict=True):
            passages = self.datastore.rows(rows)
            answers = reader_answers(q)
            context = training_passages(passages, answers, rng, self.cfg.reader_k, self.cfg.reader_positives)
            if not any(contains_answer(p.text, answers) for p in context):
                dropped += 1  # nothing to point at (extractive) or to ground the answer (seq2seq)
                continue
            # The span reader is trained on answers as the passages write them ('Africa' for the gold 'africa').
            answers += [a for p in context for a in answer_occurrences(p.text, answers) if a not in answers]
            lines.append(json.dumps({"id": q.id, "question": q.question, "lang": q.lang, "answers": answers,
                                     "answer": q.answers[0], "passages": [p.id for p in context]},
                                    ensure_ascii=False) + "\n")
        logger.info("round %d: reader data for %d questions (%d without an answer-containing passage dropped)",
                    k, len(lines), dropped)
        if not lines:
            raise CoraError(f"round {k}: no training question has an answer-containing passage in its top "
                            f"{self.cfg.reader_k}; the reader cannot be trained")
        atomic_write_text(target, "".join(lines))

    def train_reader(self, k: int, folder: Path, target: Path) -> None:
        from cora.reader.data import ReaderExample
        from cora.reader.training import ReaderTask, Seq2SeqTask
        from cora.training import TrainConfig, train

        reader = self._reader(k - 1)
        rows = [json.loads(line) for line in (folder / "reader_data.jsonl").read_text(encoding="utf-8").splitlines()]
        examples = [ReaderExample(r["id"], r["question"], r["lang"], [self.datastore.get(i) for i in r["passages"]],
                                  r["answers"] if reader.config.backend == "extractive" else [r["answer"]],
                                  r["lang"]) for r in rows]
        tcfg = config_from_dict(TrainConfig, {"seed": self.cfg.seed, **self.cfg.reader_train,
                                              "output_dir": str(folder / "reader_run")}, "reader_train")
        if len(examples) < tcfg.batch_size:
            raise CoraError(f"round {k}: {len(examples)} reader examples, fewer than one batch of {tcfg.batch_size}")
        saved_layers = None
        if reader.config.backend == "extractive":
            if self.cfg.reader_trainable_layers is not None:
                from cora.reader.extractive import _layers, freeze_below

                saved_layers = reader.config.trainable_layers
                if saved_layers is None:
                    saved_layers = len(_layers(reader.model))
                freeze_below(reader.model, self.cfg.reader_trainable_layers)
            task = ReaderTask(reader, examples, tcfg.batch_size, negative_rate=0.0)
        else:
            task = Seq2SeqTask(reader, examples, tcfg.batch_size)
        train(task, tcfg)
        if saved_layers is not None:
            # Saving writes the weights that require grad: every layer the reader held, not only those trained now.
            from cora.reader.extractive import freeze_below

            freeze_below(reader.model, saved_layers)
        with atomic_dir(target) as tmp:
            reader.save_pretrained(tmp)

    def evaluate(self, k: int) -> dict:
        """Dev metrics of round k on every evaluated datastore, through the pipeline (retrieve -> read the top
        eval_k -> project through language links): recall at recall_ks, F1/EM of the (projected) answer against
        the question-language answers, and, for questions with answers in other languages, F1/EM of the answer
        before projection against the answers in its source passage's language ("qa_source")."""
        from tqdm import tqdm

        from cora.evaluation.report import f1_em_table
        from cora.evaluation.retrieval import RankedResult, answer_recall_at_k, recall_at_k
        from cora.evaluation.xor import score_one
        from cora.pipeline import Pipeline, PipelineConfig

        reader = self._reader(k)
        depth = max([*self.cfg.recall_ks, self.cfg.eval_k])
        read_ids = self._read_ids()
        out: dict = {"round": k, "retriever": self.retriever_dir(k), "reader": self.reader_dir(k), "datastores": {}}
        for name in self.eval_stores:
            pipe = Pipeline(self._retriever(k, name), reader,
                            PipelineConfig(str(self._index_dir(k, name)), self.reader_dir(k), k=self.cfg.eval_k,
                                           max_k=depth))
            ranked, per_lang, per_source = [], {}, {}
            hits = pipe.retriever.search_batch([q.question for q in self.dev_q], k=depth,
                                               langs=[q.lang for q in self.dev_q])
            for q, hs in zip(self.dev_q, hits, strict=True):
                ranked.append(RankedResult(q.lang, [h.group for h in hs], frozenset({q.gold_group}),
                                           [h.text for h in hs], reader_answers(q)))
            to_read = [q for q in self.dev_q if q.id in read_ids]
            chunk = 32
            for i in tqdm(range(0, len(to_read), chunk), desc=f"round {k}: dev ({name})", unit="batch"):
                part = to_read[i : i + chunk]
                results = pipe.answer_batch([q.question for q in part], [q.lang for q in part], details=True)
                for q, res in zip(part, results, strict=True):
                    f1, em, _ = score_one(res.answer.text, q.answers, q.lang, "fixed")
                    per_lang.setdefault(q.lang, []).append((f1, em))
                    src = res.read.evidence[0].lang if res.read.evidence else q.lang
                    gold = q.answers_in(src)
                    if q.answers_by_lang and gold:
                        f1, em, _ = score_one(res.read.text, gold, src, "fixed")
                        per_source.setdefault(q.lang, []).append((f1, em))
            if self.cfg.dev_recall == "answer":
                recall = answer_recall_at_k(ranked, self.cfg.recall_ks, match=contains_answer)
                recall = {lang: {key.removeprefix("A"): v for key, v in r.items()} for lang, r in recall.items()}
            else:
                recall = recall_at_k(ranked, self.cfg.recall_ks)
            out["datastores"][name] = {"recall": recall, "qa": f1_em_table(per_lang)}
            if per_source:
                out["datastores"][name]["qa_source"] = f1_em_table(per_source)
        if k > 0:
            out["mining"] = Mined.load(self.out / f"round_{k}" / "mined.json").summary()
        return out

    def _read_ids(self) -> set[str]:
        """The dev questions read for F1/EM: all, or the first eval_qa_per_lang of each language."""
        if self.cfg.eval_qa_per_lang is None:
            return {q.id for q in self.dev_q}
        seen: dict[str, int] = {}
        out = set()
        for q in self.dev_q:
            if seen.get(q.lang, 0) < self.cfg.eval_qa_per_lang:
                seen[q.lang] = seen.get(q.lang, 0) + 1
                out.add(q.id)
        return out

    # --- summary
    def summarise(self) -> dict:
        metrics = [json.loads((self.out / f"round_{k}" / "metrics.json").read_text(encoding="utf-8"))
                   for k in range(self.cfg.rounds + 1)]
        md = summary_markdown(metrics, self.cfg.recall_ks)
        atomic_write_text(self.out / "summary.md", md)
        atomic_write_json(self.out / "summary.json", metrics)
        plot_rounds(metrics, self.out / "summary.png")
        logger.info("\n%s", md)
        return {"rounds": len(metrics), "summary": str(self.out / "summary.md")}


def summary_markdown(metrics: Sequence[dict], recall_ks: Sequence[int]) -> str:
    """Per datastore: one row per round with macro recall and F1/EM, then per-language F1 and recall@max-k, then
    the new cross-lingual positives mined per language pair."""
    lines = []
    kmax = max(recall_ks)
    for store in metrics[0]["datastores"]:
        langs = [lang for lang in metrics[0]["datastores"][store]["qa"] if lang != "macro"]
        source = all("qa_source" in m["datastores"][store] for m in metrics)  # F1 in the evidence's language
        lines += [f"### {store} datastore", "",
                  "| round | " + " | ".join(f"R@{k}" for k in recall_ks) + " | F1 | EM | "
                  + ("F1 (source language) | " if source else "")
                  + " | ".join(f"{lang} F1 / R@{kmax}" for lang in langs) + " |",
                  "|---" * (len(recall_ks) + 3 + source + len(langs)) + "|"]
        for m in metrics:
            d = m["datastores"][store]
            rec, qa = d["recall"], d["qa"]
            cells = [f"{100 * rec['macro'][f'R@{k}']:.1f}" for k in recall_ks]
            cells += [f"{qa['macro']['F1']:.1f}", f"{qa['macro']['EM']:.1f}"]
            cells += [f"{d['qa_source']['macro']['F1']:.1f}"] if source else []
            cells += [f"{qa[lang]['F1']:.1f} / {100 * rec[lang][f'R@{kmax}']:.0f}" for lang in langs]
            lines.append(f"| {m['round']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### mining", "", "| round | new cross-lingual positives | by pair (top 8) | reader-positive "
              "questions | fallback questions | none | hard negatives |", "|---|---|---|---|---|---|---|"]
    for m in metrics[1:]:
        mi = m["mining"]
        top = sorted(mi["new_cross_lingual_positives"].items(), key=lambda kv: -kv[1])[:8]
        c = mi["counts"]
        lines.append(f"| {m['round']} | {mi['new_cross_lingual_total']} | "
                     + ", ".join(f"{p} {n}" for p, n in top) + f" | {c.get('reader_positive_questions', 0)} | "
                     f"{c.get('fallback_questions', 0)} | {c.get('no_positive_questions', 0)} | "
                     f"{c.get('hard_negatives', 0)} |")
    return "\n".join(lines) + "\n"


def plot_rounds(metrics: Sequence[dict], path: Path) -> None:
    """Per-round curves: macro F1 and recall@max-k per datastore, and per-language F1 on the main one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for store in metrics[0]["datastores"]:
        kmax = max(int(k[2:]) for k in metrics[0]["datastores"][store]["recall"]["macro"])
        ax1.plot(rounds, [m["datastores"][store]["qa"]["macro"]["F1"] for m in metrics], "o-",
                 label=f"{store}: F1")
        ax1.plot(rounds, [100 * m["datastores"][store]["recall"]["macro"][f"R@{kmax}"] for m in metrics], "s--",
                 label=f"{store}: R@{kmax}")
    ax1.set(xlabel="round", ylabel="macro (%)", title="dev, macro over languages", xticks=rounds)
    ax1.legend(fontsize=8)
    first = next(iter(metrics[0]["datastores"]))
    for lang in (x for x in metrics[0]["datastores"][first]["qa"] if x != "macro"):
        ax2.plot(rounds, [m["datastores"][first]["qa"][lang]["F1"] for m in metrics], "o-", label=lang)
    ax2.set(xlabel="round", ylabel="F1", title=f"dev F1 per language ({first} datastore)", xticks=rounds)
    ax2.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


__all__ = ["IterateConfig", "Loop", "summary_markdown", "plot_rounds"]
