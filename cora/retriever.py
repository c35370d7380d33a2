"""Dense retrieval over a datastore: question -> typed hits with the passage text."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cora.bm25 import reciprocal_rank_fusion_scores
from cora.config import EncoderConfig
from cora.datastore import Datastore
from cora.encoder import Encoder, check_shares_passages
from cora.errors import CoraError
from cora.index import DenseIndex
from cora.languages import base_code, detect_language
from cora.questions import check_question

logger = logging.getLogger(__name__)


@dataclass
class SearchHit:
    passage_id: str
    score: float
    rank: int
    lang: str
    group: str
    title: str
    text: str
    row: int

    def to_dict(self, with_text: bool = True) -> dict:
        d = asdict(self)
        if not with_text:
            d.pop("text")
        return d


FUSION_DEPTH = 100  # each ranking's top 100 enter the reciprocal-rank fusion (hybrid retrieval)
HYBRID_MAX_PASSAGES = 1_000_000  # BM25 for hybrid retrieval is held in memory: not built above this


class Retriever:
    """Encoder + index + datastore. ``Retriever.from_pretrained(index_dir).search("question", k=5)``."""

    def __init__(self, encoder: Encoder, index: DenseIndex, datastore: Datastore, hybrid: bool = False):
        index.check_datastore(datastore)
        if index.config.dim != encoder.dim:
            raise CoraError(f"encoder dimension {encoder.dim} != index dimension {index.config.dim}")
        self.encoder, self.index, self.datastore = encoder, index, datastore
        self.bm25 = None
        if hybrid:
            self.enable_hybrid()

    def enable_hybrid(self) -> bool:
        """Fuse BM25 into the ranking of questions whose language the datastore holds (reciprocal-rank fusion of
        the top 100 of each). BM25 cannot match across scripts, so a question in a language the datastore lacks
        stays dense-only. The BM25 index is built in memory, so above HYBRID_MAX_PASSAGES it is not built and
        retrieval stays dense (logged); returns whether hybrid retrieval is on."""
        from cora.bm25 import BM25Index

        if self.bm25 is None:
            if len(self.datastore) > HYBRID_MAX_PASSAGES:
                logger.warning("hybrid retrieval skipped: %d passages is more than BM25 in memory serves (%d); "
                               "searching dense only", len(self.datastore), HYBRID_MAX_PASSAGES)
                return False
            self.bm25 = BM25Index(self.datastore)
        return True

    @classmethod
    def from_pretrained(
        cls, index_dir: str | os.PathLike, datastore: str | os.PathLike | Datastore | None = None,
        device: str | None = None, query_encoder: str | None = None, precision: str | None = None,
    ) -> Retriever:
        """Load an index folder, its encoder (with the saved encoder config) and its datastore.

        ``datastore`` overrides the path recorded in the index (e.g. after moving it); its fingerprint must match.
        ``query_encoder`` (a name or folder) encodes the questions instead of the index's encoder; it must share
        the index's passage tower (e.g. a LoRA query tower trained over the backbone the index was built with).
        """
        index = DenseIndex.load(index_dir)
        cfg = index.config
        if datastore is None:
            if not Path(cfg.datastore).exists():
                raise CoraError(f"the datastore recorded in {index_dir} ({cfg.datastore}) is gone; pass its new "
                                "location with --datastore")
            datastore = cfg.datastore
        ds = datastore if isinstance(datastore, Datastore) else Datastore(datastore)
        saved = EncoderConfig(**cfg.encoder_config)
        if query_encoder is not None:
            encoder = Encoder.from_pretrained(query_encoder, device=device, precision=precision)
            check_shares_passages(cfg.encoder, saved, query_encoder, encoder.config)
            return cls(encoder, index, ds)
        encoder = Encoder.from_pretrained(cfg.encoder, device=device, precision=precision)
        if encoder.config != saved:
            # The index was built with explicit overrides: search must use the same prefixes/pooling.
            encoder = Encoder(encoder.model, encoder.tokenizer, saved, device, precision=precision)
        return cls(encoder, index, ds)

    def search(self, question: str, k: int = 10, lang: str | None = None) -> list[SearchHit]:
        return self.search_batch([question], k, langs=[lang])[0]

    def search_batch(self, questions: Sequence[str], k: int = 10, batch_size: int = 64,
                     langs: Sequence[str | None] | None = None) -> list[list[SearchHit]]:
        """Top-k hits per question. ``langs`` (detected when missing) matter only for an encoder whose query
        adapter is scoped 'cross-lingual': a question in a language the datastore holds is encoded by the plain
        backbone, any other by the adapter."""
        if k < 1:
            raise CoraError(f"k must be at least 1, got {k}")
        for q in questions:
            if problem := check_question(q):
                raise CoraError(problem)
        if k > len(self.index):
            logger.warning("k=%d is larger than the datastore (%d passages); returning all of them", k,
                           len(self.index))
        questions = list(questions)
        langs = list(langs) if langs is not None else [None] * len(questions)
        if len(langs) != len(questions):
            raise CoraError(f"{len(questions)} questions but {len(langs)} languages")
        needs_lang = self.bm25 is not None or (self.encoder.query_model is not None
                                               and self.encoder.config.query_adapter_scope != "all")
        if needs_lang:
            langs = [lang or detect_language(q) for q, lang in zip(questions, langs, strict=True)]
        held = {base_code(lang) for lang in self.datastore.languages}
        native = [i for i, lang in enumerate(langs) if lang and base_code(lang) in held]
        vectors = self._encode(questions, native, batch_size)
        depth = max(k, FUSION_DEPTH) if self.bm25 is not None and native else k
        scores, rows = self.index.search(vectors, depth)
        out = [self._hits(s[:k], r[:k]) for s, r in zip(scores, rows, strict=True)]
        if self.bm25 is not None and native:
            _, lexical = self.bm25.search([questions[i] for i in native], [langs[i] for i in native],
                                          k=FUSION_DEPTH)
            for i, lex in zip(native, lexical, strict=True):
                rankings = [[int(r) for r in rows[i] if r >= 0], [int(r) for r in lex]]
                fused = reciprocal_rank_fusion_scores(rankings, top=k)
                out[i] = self._hits([score for _, score in fused], [row for row, _ in fused])
        return out

    def _encode(self, questions: list[str], native: list[int], batch_size: int):
        """Question vectors: through the query adapter, except, for an adapter scoped 'cross-lingual', the
        questions in ``native`` (their language is in the datastore), which the plain backbone encodes."""
        enc = self.encoder
        if enc.query_model is None or enc.config.query_adapter_scope == "all":
            return enc.encode_queries(questions, batch_size=batch_size)
        if enc.config.query_adapter_scope != "cross-lingual":
            raise CoraError(f"unknown query_adapter_scope {enc.config.query_adapter_scope!r} in the encoder config; "
                            "use 'all' or 'cross-lingual'")
        cross = sorted(set(range(len(questions))) - set(native))
        vectors = np.empty((len(questions), enc.dim), dtype=np.float32)
        if native:
            vectors[native] = enc.encode([questions[i] for i in native], "query", batch_size, tower="passage")
        if cross:
            vectors[cross] = enc.encode_queries([questions[i] for i in cross], batch_size=batch_size)
        return vectors

    def _hits(self, scores, rows) -> list[SearchHit]:
        keep = [(float(s), int(r)) for s, r in zip(scores, rows, strict=True) if r >= 0]
        passages = self.datastore.rows([r for _, r in keep])
        return [SearchHit(p.id, s, rank, p.lang, p.group, p.title, p.text, r)
                for rank, ((s, r), p) in enumerate(zip(keep, passages, strict=True), 1)]

