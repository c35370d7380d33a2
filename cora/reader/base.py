"""The one reader interface: (question, passages, answer language) -> Answer with cited evidence."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from cora.config import load_config
from cora.datastore import Passage
from cora.errors import CoraError

READER_CONFIG_FILE = "reader_config.json"

# Readers shipped inside the package (cora/resources/<folder>): name -> folder. They hold only what differs from
# their backbone (see ExtractiveReader.save_pretrained) and are reproduced by recipes/train_reader.py.
SHIPPED_READERS = {"me5-small-reader": "reader-me5-small"}
DEFAULT_READER = "me5-small-reader"


def resolve_reader(name_or_folder: str | os.PathLike) -> Path:
    """A shipped reader's name -> its folder inside the package; anything else is a folder path."""
    name = str(name_or_folder)
    if name in SHIPPED_READERS:
        folder = Path(__file__).resolve().parents[1] / "resources" / SHIPPED_READERS[name]
        if not (folder / READER_CONFIG_FILE).exists():
            raise CoraError(f"the shipped reader {name!r} is missing from this installation ({folder}); "
                            "reinstall cora or train one with recipes/train_reader.py")
        return folder
    return Path(name_or_folder)


@dataclass
class Evidence:
    """A passage used for the answer, and the character span in it (start/end are None for generated text)."""

    passage_id: str
    lang: str
    title: str
    text: str
    start: int | None = None
    end: int | None = None
    score: float | None = None
    role: str = "source"  # "source": where the answer was read; "projection": the sibling it was projected into


@dataclass
class Answer:
    text: str
    lang: str
    score: float
    evidence: list[Evidence] = field(default_factory=list)
    projected: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReaderConfig:
    """Saved as reader_config.json beside the reader's weights."""

    backend: str = field(default="extractive", metadata={"help": "'extractive' (span reader) or 'seq2seq' (mGEN)"})
    model: str = field(default="me5-small", metadata={"help": "backbone: registered name, HF id or folder"})
    max_length: int = field(default=384, metadata={"help": "extractive: question + passage tokens per input"})
    max_answer_tokens: int = field(default=30, metadata={"help": "extractive: longest span, in tokens"})
    stride: int | None = field(
        default=None, metadata={"help": "extractive: a passage longer than max_length is read as overlapping "
                                        "windows sharing this many tokens (SQuAD's doc stride), all scored jointly; "
                                        "None = cut at max_length"})
    question_prefix: str = field(default="", metadata={"help": "prepended to the question (e.g. 'query: ')"})
    passages_per_forward: int | None = field(
        default=None, metadata={"help": "extractive: passages per forward pass; None = all at once on GPU, one at a "
                                        "time on CPU (measured 5-13% faster on 2 cores at k = 10-15: no padding)"})
    trainable_layers: int | None = field(
        default=None, metadata={"help": "extractive: fine-tune only the top N encoder layers (and the head); the "
                                        "saved reader then holds only those weights on top of 'model'"})
    rank_head: bool = field(
        default=False, metadata={"help": "extractive: a passage-selection head on the first token (DPR's reader), "
                                         "trained to pick the passage that holds the answer"})
    rank_weight: float = field(
        default=1.0, metadata={"help": "extractive: weight of the selection head's logit in the passage choice"})
    rank_prior: float = field(
        default=0.0, metadata={"help": "extractive: the passage choice subtracts rank_prior * ln(1 + r) from the "
                                       "passage at retrieval rank r (0-based): the retriever's order as evidence. "
                                       "0 with no rank head = the plain joint span argmax"})
    length_penalty: float = field(
        default=0.0, metadata={"help": "extractive: subtracted from a span's score per token beyond the first "
                                       "(calibrates answer length)"})
    max_source_length: int = field(default=1000, metadata={"help": "seq2seq: source tokens (CORA: 1000)"})
    max_target_length: int = field(default=25, metadata={"help": "seq2seq: answer tokens (CORA: 25)"})
    num_beams: int = field(default=4, metadata={"help": "seq2seq: beams at inference (CORA: 4)"})


class Reader(Protocol):
    config: ReaderConfig

    def read(self, question: str, passages: list[Passage], answer_lang: str) -> Answer: ...

    def save_pretrained(self, folder: str | os.PathLike) -> None: ...


def check_read_inputs(question: str, passages: list[Passage]) -> list[Passage]:
    """Validate what every reader receives; drop passages with no text rather than reading nothing."""
    if not isinstance(question, str) or not question.strip():
        raise CoraError("empty question: ask something")
    kept = [p for p in passages if p.text and p.text.strip()]
    if not kept:
        raise CoraError("no passage with text to read the answer from")
    return kept


def load_reader(folder: str | os.PathLike, device: str | None = None, precision: str | None = None) -> Reader:
    """Load a reader folder or a shipped reader by name (``me5-small-reader``), dispatching on the backend
    recorded in its config (a registry, no guessing). ``precision`` ('auto', 'bf16', 'fp32') applies to the
    extractive reader (see :mod:`cora.precision`)."""
    from cora.reader.extractive import ExtractiveReader
    from cora.reader.seq2seq import Seq2SeqGenerator

    folder = resolve_reader(folder)
    backends = {"extractive": ExtractiveReader, "seq2seq": Seq2SeqGenerator}
    cfg_path = Path(folder) / READER_CONFIG_FILE
    if not cfg_path.exists():
        raise CoraError(f"{folder} is not a cora reader (no {READER_CONFIG_FILE}); give a reader folder or a "
                        f"shipped reader name ({', '.join(SHIPPED_READERS)})")
    config = load_config(ReaderConfig, cfg_path)
    if config.backend not in backends:
        raise CoraError(f"{cfg_path}: unknown backend {config.backend!r}; choose one of {sorted(backends)}")
    if config.backend == "extractive":
        return ExtractiveReader.from_pretrained(folder, device=device, precision=precision)
    return backends[config.backend].from_pretrained(folder, device=device)
