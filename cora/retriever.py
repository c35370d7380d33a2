"""Dense retrieval over a datastore: question -> typed hits with the passage text."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cora.config import EncoderConfig
from cora.datastore import Datastore
from cora.errors import CoraError
from cora.index import DenseIndex
from cora.languages import detect_language
from cora.models import Encoder, check_shares_passages

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


class Retriever:
    """Encoder + index + datastore. ``Retriever.from_pretrained(index_dir).search("question", k=5)``."""

    def __init__(self, encoder: Encoder, index: DenseIndex, datastore: Datastore):
        index.check_datastore(datastore)
        if index.config.dim != encoder.dim:
            raise CoraError(f"encoder dimension {encoder.dim} != index dimension {index.config.dim}")
        self.encoder, self.index, self.datastore = encoder, index, datastore

    @classmethod
    def from_pretrained(
        cls, index_dir: str | os.PathLike, datastore: str | os.PathLike | Datastore | None = None,
        device: str | None = None, query_encoder: str | None = None,
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
            encoder = Encoder.from_pretrained(query_encoder, device=device)
            check_shares_passages(cfg.encoder, saved, query_encoder, encoder.config)
            return cls(encoder, index, ds)
        encoder = Encoder.from_pretrained(cfg.encoder, device=device)
        if encoder.config != saved:
            # The index was built with explicit overrides: search must use the same prefixes/pooling.
            encoder = Encoder(encoder.model, encoder.tokenizer, saved, device)
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
            if not isinstance(q, str) or not q.strip():
                raise CoraError("empty question: ask something")
        if k > len(self.index):
            logger.warning("k=%d is larger than the datastore (%d passages); returning all of them", k,
                           len(self.index))
        vectors = self._encode(list(questions), langs, batch_size)
        scores, rows = self.index.search(vectors, k)
        return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]

    def _encode(self, questions: list[str], langs, batch_size: int):
        enc = self.encoder
        if enc.query_model is None or enc.config.query_adapter_scope == "all":
            return enc.encode_queries(questions, batch_size=batch_size)
        if enc.config.query_adapter_scope != "cross-lingual":
            raise CoraError(f"unknown query_adapter_scope {enc.config.query_adapter_scope!r} in the encoder config; "
                            "use 'all' or 'cross-lingual'")
        langs = list(langs) if langs is not None else [None] * len(questions)
        held = {lang.split("-")[0].lower() for lang in self.datastore.languages}
        native = [i for i, (q, lang) in enumerate(zip(questions, langs, strict=True))
                  if (lang or detect_language(q)).split("-")[0].lower() in held]
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

    @staticmethod
    def detect_language(question: str) -> str:
        return detect_language(question)
