"""Retriever + reader + datastore -> Answer(text, lang, evidence), in the question's language."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cora.config import load_config, save_config
from cora.datastore import Datastore, Passage
from cora.encoder import SHIPPED_ENCODERS
from cora.errors import CoraError
from cora.languages import check_language, detect_language
from cora.questions import check_question
from cora.reader.base import DEFAULT_READER, SHIPPED_READERS, Answer, Reader, load_reader
from cora.reader.projection import project_answer
from cora.retriever import Retriever, SearchHit

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"


@dataclass
class PipelineConfig:
    """Saved as pipeline.json; paths are relative to the pipeline folder unless absolute."""

    index: str = field(metadata={"help": "index folder (holds the encoder config and the datastore path)"})
    reader: str = field(metadata={"help": "reader folder (extractive or seq2seq) or a shipped reader name"})
    query_encoder: str | None = field(default=None, metadata={
        "help": "encoder for questions instead of the index's own (must share its passage tower): a shipped name "
                "such as mdpr-me5-small, or a folder"})
    hybrid: bool = field(default=False, metadata={
        "help": "fuse BM25 with dense retrieval (reciprocal-rank fusion) for questions whose language the datastore "
                "holds. On XQuAD dev it raised all-languages recall@1 87.2 -> 88.0 but lowered answer F1 with "
                "projection 30.1 -> 27.7 (fewer English passages to read and project from), so it is off by "
                "default. Skipped above 1M passages (BM25 in RAM)"})
    k: int = field(default=3, metadata={"help": "passages read per question (3: chosen on dev, docs/reader.md)"})
    max_k: int = field(default=100, metadata={"help": "largest k a caller may ask for"})
    projection: bool = field(default=True, metadata={"help": "project answers through language links"})
    projection_method: str = field(default="reread", metadata={"help": "'reread' the linked passage with the "
                                                                       "question, or 'align' the span into it"})


def check_pipeline_parts(index: str | os.PathLike, reader: str | os.PathLike) -> None:
    """A pipeline must point at an index and a reader that exist, so that it fails when created, not when used."""
    from cora.index import CONFIG_FILE, INDEX_FILE
    from cora.reader.base import READER_CONFIG_FILE

    if not (Path(index) / CONFIG_FILE).is_file() or not (Path(index) / INDEX_FILE).is_file():
        raise CoraError(f"--index {index} is not a cora index (needs {CONFIG_FILE} and {INDEX_FILE}); build one "
                        "with 'cora index build'")
    if str(reader) not in SHIPPED_READERS and not (Path(reader) / READER_CONFIG_FILE).is_file():
        raise CoraError(f"--reader {reader} is not a cora reader (no {READER_CONFIG_FILE}); give a reader folder "
                        f"or a shipped reader name ({', '.join(SHIPPED_READERS)})")


@dataclass
class PipelineResult:
    """One question through the pipeline, with every stage's output (as FlashRAG records ``retrieval_result`` and
    ``pred`` on each item): a loop or a benchmark that needs the hits or the answer before projection reads them
    here instead of rebuilding retrieve -> read -> project."""

    question: str
    lang: str
    hits: list[SearchHit]  # best first; may reach deeper than the passages read (``search_k``)
    passages: list[Passage]  # the top ``k`` hits' passages, the reader's input
    read: Answer  # the reader's answer, before projection
    answer: Answer  # the pipeline's answer: ``read`` projected through language links when that is on and fires


class Pipeline:
    def __init__(self, retriever: Retriever, reader: Reader, config: PipelineConfig, links: Datastore | None = None):
        """``links``: the datastore whose language links (groups) projection follows; default the retriever's.
        A different one serves a datastore that lacks the question's language but whose passages have versions
        elsewhere (Wikipedia's language links exist even when retrieval is English-only)."""
        self.retriever, self.reader, self.config = retriever, reader, config
        self.links = links

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | None = None,
                        precision: str | None = None) -> Pipeline:
        """Load a pipeline folder. ``precision`` ('auto', 'bf16', 'fp32'; default $CORA_PRECISION or 'auto') is
        that of encoding questions and reading: 'auto' is bf16 on GPUs and CPUs with native bf16."""
        folder = Path(folder)
        if not (folder / PIPELINE_FILE).exists():
            raise CoraError(f"{folder} is not a cora pipeline (no {PIPELINE_FILE}); create one with "
                            "'cora pipeline create'")
        config = load_config(PipelineConfig, folder / PIPELINE_FILE)

        def resolve(p: str) -> Path:
            return Path(p) if Path(p).is_absolute() else folder / p

        query = config.query_encoder
        if query is not None and query not in SHIPPED_ENCODERS:
            query = str(resolve(query))
        retriever = Retriever.from_pretrained(resolve(config.index), device=device, query_encoder=query,
                                              precision=precision)
        if config.hybrid:
            retriever.enable_hybrid()
        reader = config.reader if config.reader in SHIPPED_READERS else resolve(config.reader)
        return cls(retriever, load_reader(reader, device=device, precision=precision), config)

    @staticmethod
    def create(folder: str | os.PathLike, index: str | os.PathLike, reader: str | os.PathLike = DEFAULT_READER,
               **kw) -> Path:
        """Write a pipeline.json that points at an index and a reader: paths relative to the pipeline folder (so
        the folder can move together with what it points at), a shipped reader or query tower by name."""
        folder = Path(folder)
        check_pipeline_parts(index, reader)
        folder.mkdir(parents=True, exist_ok=True)
        reader = str(reader) if str(reader) in SHIPPED_READERS else _relative(reader, folder)
        query = kw.pop("query_encoder", None)
        if query is not None and query not in SHIPPED_ENCODERS:
            query = _relative(query, folder)
        save_config(PipelineConfig(_relative(index, folder), reader, query_encoder=query, **kw),
                    folder / PIPELINE_FILE)
        return folder

    def answer(self, question: str, lang: str | None = None, k: int | None = None) -> Answer:
        return self.answer_batch([question], [lang], k)[0]

    def answer_batch(
        self, questions: Sequence[str], langs: Sequence[str | None] | None = None, k: int | None = None, *,
        search_k: int | None = None, details: bool = False,
    ) -> list[Answer] | list[PipelineResult]:
        """Answers to ``questions`` read from their top ``k`` passages. With ``details`` each item is a
        :class:`PipelineResult` (hits, passages read, answer before and after projection) instead, and
        ``search_k`` (>= k) retrieves deeper than the reader reads, for recall at larger cut-offs."""
        k = self.config.k if k is None else int(k)
        if not 1 <= k <= self.config.max_k:
            raise CoraError(f"k must be between 1 and {self.config.max_k}, got {k}")
        depth = k if search_k is None else int(search_k)
        if depth < k:
            raise CoraError(f"search_k ({depth}) cannot be below k ({k})")
        langs = list(langs) if langs is not None else [None] * len(questions)
        if len(langs) != len(questions):
            raise CoraError(f"{len(questions)} questions but {len(langs)} languages")
        for q in questions:
            if problem := check_question(q):
                raise CoraError(problem)
        langs = [check_language(lang) if lang else detect_language(q) for q, lang in zip(questions, langs,
                                                                                          strict=True)]
        hits = self.retriever.search_batch(list(questions), k=depth, langs=langs)
        datastore = self.retriever.datastore
        passages = [datastore.rows([h.row for h in hs[:k]]) for hs in hits]
        if hasattr(self.reader, "read_batch"):  # all questions' passages read together, sorted by length
            read = self.reader.read_batch(list(questions), passages, langs)
        else:
            read = [self.reader.read(q, ps, lang) for q, ps, lang in zip(questions, passages, langs, strict=True)]
        answers = [self.project(q, a) for q, a in zip(questions, read, strict=True)] if self.config.projection \
            else read
        if not details:
            return answers
        return [PipelineResult(*item) for item in zip(questions, langs, hits, passages, read, answers, strict=True)]

    def project(self, question: str, answer: Answer, method: str | None = None) -> Answer:
        """``answer`` moved into the question-language version of its source passage, when the links hold one
        (``method``: 'reread' or 'align'; default the config's)."""
        links = self.links if self.links is not None else self.retriever.datastore
        return project_answer(self.reader, question, answer, links, method or self.config.projection_method)


def _relative(path: str | os.PathLike, folder: Path) -> str:
    """``path`` as seen from ``folder`` (absolute where no relative path exists, e.g. another drive)."""
    try:
        return os.path.relpath(Path(path).resolve(), folder.resolve())
    except ValueError:
        return str(Path(path).resolve())
