"""End to end: Pipeline.answer() p50/p95 latency on CPU, for the XQuAD datastore and a 100k-passage store.

The pipeline is the offline default shape: me5-small query encoder -> FAISS -> extractive reader on me5-small
reading the top k = 10 passages -> language-link projection. The reader is a randomly initialised span head on
me5-small, not the shipped me5-small-reader: the weights change the answers, not the time (the architecture and
the token counts set it).

* XQuAD store: the 2,400 XQuAD paragraphs and the Flat index built by recipes/xquad_retrieval.py.
* 100k store: XQuAD paragraphs replicated to 100,000 passages with new ids; the index holds their me5 vectors
  replicated with noise as in benchmarks/search.py (encoding 100k passages takes ~3 hours on 2 cores), with the
  factory cora picks by default for that size.

The naive baseline answers the same questions with a per-passage reader loop (k forward passes).

    python benchmarks/answer.py --xquad-run runs/xquad-retrieval [--questions 30] [--out results/answer.json]
    python benchmarks/answer.py --quick     # tiny model, tiny store (< 1 minute)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SHARED,
    machine,
    percentiles,
    print_table,
    synthetic_texts,
    tiny_encoder_dir,
    write_results,
)
from search import replicate  # noqa: E402

from cora.datasets import XQUAD_DEV_ARTICLES, xquad_file  # noqa: E402
from cora.datastore import Datastore, Passage  # noqa: E402
from cora.encoder import Encoder  # noqa: E402
from cora.index import DenseIndex, IndexConfig, auto_factory  # noqa: E402
from cora.pipeline import Pipeline, PipelineConfig  # noqa: E402
from cora.reader.base import ReaderConfig  # noqa: E402
from cora.reader.extractive import ExtractiveReader, SpanModel  # noqa: E402
from cora.retriever import Retriever  # noqa: E402


def replicated_store(base_ds: Datastore, base_vectors: np.ndarray, n: int, folder: Path, encoder_name: str,
                     encoder: Encoder) -> tuple[Datastore, DenseIndex]:
    import faiss

    def passages():
        for i in range(n):
            p = base_ds[i % len(base_ds)]
            yield Passage(f"copy{i // len(base_ds)}:{p.id}", p.lang, p.title, p.text, f"copy{i // len(base_ds)}:{p.group}")

    ds = Datastore.build(passages(), folder / "datastore", overwrite=True)
    vectors = np.concatenate([base_vectors, replicate(base_vectors, n - len(base_vectors))]) \
        if n > len(base_vectors) else base_vectors[:n]
    factory = auto_factory(n, vectors.shape[1])
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors[np.random.default_rng(0).choice(n, min(n, 100_000), replace=False)])
    index.add(vectors)
    cfg = IndexConfig(factory=factory, encoder=encoder_name, encoder_config=encoder.config.__dict__,
                      datastore=str(ds.path), datastore_fingerprint=ds.fingerprint, datastore_size=n,
                      dim=vectors.shape[1], ntotal=n)
    return ds, DenseIndex(index, cfg)


def measure(pipeline: Pipeline, questions: list[str], langs: list[str]) -> list[float]:
    pipeline.answer(questions[0], langs[0])  # warm-up
    out = []
    for q, lang in zip(questions, langs, strict=True):
        t = time.perf_counter()
        pipeline.answer(q, lang)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xquad-run", default="runs/xquad-retrieval",
                    help="output folder of recipes/xquad_retrieval.py (datastore + Flat index)")
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--big", type=int, default=100_000, help="size of the replicated store (default 100k)")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny model and store (< 1 minute)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())

    if args.quick:
        from cora.index import build_index

        enc_dir = tiny_encoder_dir(tmp / "tiny")
        encoder = Encoder.from_pretrained(str(enc_dir), device="cpu")
        texts = synthetic_texts(200, words=60)
        base_ds = Datastore.build([Passage(f"p{i}", "en", "", t, f"g{i}") for i, t in enumerate(texts)], tmp / "ds")
        base_index = build_index(base_ds, encoder, tmp / "idx", str(enc_dir), factory="Flat", show_progress=False)
        questions, langs = texts[:5], ["en"] * 5
        encoder_name, big = str(enc_dir), 2_000
    else:
        from cora.questions import read_squad_questions

        run = Path(args.xquad_run)
        base_ds = Datastore(run / "datastore-all-languages")
        base_index = DenseIndex.load(run / "index-all-languages")
        encoder = Encoder.from_pretrained("me5-small", device="cpu")
        qs = [q for lang in ("de", "zh", "ar", "en", "ru", "th")
              for q in read_squad_questions(xquad_file(SHARED, lang), lang, XQUAD_DEV_ARTICLES)]
        rng = np.random.default_rng(0)
        qs = [qs[i] for i in rng.permutation(len(qs))[: args.questions]]
        questions, langs = [q.question for q in qs], [q.lang for q in qs]
        encoder_name, big = "me5-small", args.big

    reader = ExtractiveReader(SpanModel(encoder.model), encoder.tokenizer,
                              ReaderConfig(max_length=256, question_prefix=encoder.config.query_prefix), device="cpu")
    rows = []
    base_vectors = base_index.index.reconstruct_n(0, len(base_index))
    stores = [("XQuAD", base_ds, base_index)]
    big_ds, big_index = replicated_store(base_ds, base_vectors, big, tmp / "big", encoder_name, encoder)
    stores.append((f"{big:,} passages", big_ds, big_index))
    for name, ds, index in stores:
        pipeline = Pipeline(Retriever(encoder, index, ds), reader, PipelineConfig("", "", k=10))
        lat = measure(pipeline, questions, langs)
        rows.append({"store": name, "passages": len(ds), "index": index.config.factory, "k": 10,
                     "path": "ours (batched joint reader)", **percentiles(lat)})
        print(rows[-1], flush=True)
    # Naive baseline on the big store: the same pipeline with a per-passage reader loop.
    name, ds, index = stores[-1]

    class PerPassage:
        config = reader.config

        def read(self, q, passages, lang):
            answers = [reader.read(q, [p], lang) for p in passages]
            return max(answers, key=lambda a: a.score)

    naive = Pipeline(Retriever(encoder, index, ds), PerPassage(), PipelineConfig("", "", k=10))
    lat = measure(naive, questions[: max(3, len(questions) // 3)], langs[: max(3, len(questions) // 3)])
    rows.append({"store": name, "passages": len(ds), "index": index.config.factory, "k": 10,
                 "path": "naive (per-passage reader loop)", **percentiles(lat)})
    results = {"machine": machine(), "rows": rows, "questions": len(questions),
               "note": "random span head; 100k store vectors replicated with noise, not encoded"}
    print_table(rows, ["store", "passages", "index", "k", "path", "p50_ms", "p95_ms"])
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
