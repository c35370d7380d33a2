"""cora: cross-lingual open-retrieval question answering (CORA: mDPR + multilingual reader + iterative mining).

The public API::

    from cora import Datastore, Encoder, Retriever, build_index
    retriever = Retriever.from_pretrained("my-index")
    for hit in retriever.search("Wie hoch ist der Mount Everest?", k=5):
        print(hit.rank, hit.lang, hit.title, hit.score)

Names are imported lazily so that ``cora --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Passage": "cora.datastore",
    "Datastore": "cora.datastore",
    "EncoderConfig": "cora.config",
    "Encoder": "cora.encoder",
    "IndexConfig": "cora.index",
    "DenseIndex": "cora.index",
    "build_index": "cora.index",
    "Retriever": "cora.retriever",
    "SearchHit": "cora.retriever",
    "Answer": "cora.reader.base",
    "Evidence": "cora.reader.base",
    "ReaderConfig": "cora.reader.base",
    "ExtractiveReader": "cora.reader.extractive",
    "Seq2SeqGenerator": "cora.reader.seq2seq",
    "Pipeline": "cora.pipeline",
    "PipelineConfig": "cora.pipeline",
    "Question": "cora.questions",
    "read_questions": "cora.questions",
    "detect_language": "cora.languages",
    "CoraError": "cora.errors",
    "IterateConfig": "cora.iterate",
    "Loop": "cora.iterate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cora' has no attribute {name!r}")


def __dir__():
    return __all__
