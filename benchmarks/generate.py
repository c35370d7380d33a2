"""Reader stage: questions/s and p50 latency for k = 5 / 10 / 15 passages.

* extractive (the offline default): me5-small + span head, joint span scoring over the k passages;
* seq2seq (mGEN): an mT5-small-shaped model (d_model 512, 8+8 layers, 250k vocabulary), greedy vs 4 beams,
  with the answer length fixed to 10 tokens so every setting decodes the same number of steps.

Both models carry random weights (the span head, all of mT5): no mT5 weights ship with cora, and the extractive
side is timed the same way rather than with the shipped me5-small-reader. The timings depend on the architecture
and the token counts, not on the weights, and the answers are meaningless. The baseline is the naive extractive reader: k separate forward passes (one per passage) instead of
one batched pass, as a per-passage loop would do.

    python benchmarks/generate.py [--questions 20] [--out results/generate.json]
    python benchmarks/generate.py --quick     # tiny models, < 1 minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

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

from cora.datasets import XQUAD_DEV_ARTICLES, xquad_file  # noqa: E402
from cora.datastore import Passage  # noqa: E402
from cora.reader.base import ReaderConfig  # noqa: E402
from cora.reader.extractive import ExtractiveReader, SpanModel  # noqa: E402
from cora.reader.seq2seq import Seq2SeqGenerator  # noqa: E402


def load_data(quick: bool, n_questions: int):
    if quick:
        texts = synthetic_texts(20, words=60)
        return [Passage(f"p{i}", "en", "", t, f"g{i}") for i, t in enumerate(texts)], ["w1 w2 w3 w4"] * n_questions
    from cora.datastore import read_squad
    from cora.questions import read_squad_questions

    paras = [p for _, p in read_squad(xquad_file(SHARED, "de"), "de", keep_titles=False)][:40]
    # w100 length, like the passages of a Wikipedia datastore
    paras = [Passage(p.id, p.lang, p.title, " ".join(p.text.split()[:100]), p.group) for p in paras]
    qs = [q.question for q in read_squad_questions(xquad_file(SHARED, "de"), "de", XQUAD_DEV_ARTICLES)]
    return paras, qs[:n_questions]


def time_reads(read, questions, passages, k) -> list[float]:
    read(questions[0], passages[:k])  # warm-up
    out = []
    for i, q in enumerate(questions):
        ctx = passages[i % 10 : i % 10 + k]
        t = time.perf_counter()
        read(q, ctx)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20, help="questions per setting (default 20)")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny random models (< 1 minute)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    passages, questions = load_data(args.quick, 5 if args.quick else args.questions)

    if args.quick:
        from cora.encoder import load_hf_encoder

        encoder, tokenizer = load_hf_encoder(str(tiny_encoder_dir(Path(tempfile.mkdtemp()) / "tiny")))
        reader = ExtractiveReader(SpanModel(encoder), tokenizer, ReaderConfig(max_length=128), device="cpu")
    else:
        reader = ExtractiveReader.from_backbone("me5-small", device="cpu", max_length=256)

    def naive_read(q, ctx):  # one forward pass per passage, then the best span among them
        return [reader.read(q, [p], "de") for p in ctx]

    rows = []
    for k in (5, 10, 15):
        for name, fn in (("extractive, naive per-passage loop", naive_read),
                         ("extractive, batched joint (ours)", lambda q, c: reader.read(q, c, "de"))):
            lat = time_reads(fn, questions, passages, k)
            rows.append({"reader": name, "k": k, "questions_per_s": len(lat) / sum(lat), **percentiles(lat)})
            print(rows[-1], flush=True)

    from transformers import MT5Config, MT5ForConditionalGeneration

    tok = reader.tokenizer
    cfg = (MT5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=2)
           if args.quick else MT5Config(vocab_size=len(tok), d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                                        num_decoder_layers=8, num_heads=6))
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.pad_token_id, tok.eos_token_id
    gen_model = MT5ForConditionalGeneration(cfg)
    for beams in (1, 4):
        gen = Seq2SeqGenerator(gen_model, tok, ReaderConfig(backend="seq2seq", num_beams=beams, max_target_length=10),
                               device="cpu")
        gen.model.generation_config.min_new_tokens = 10  # fixed-length answers: same work in every setting
        for k in (5, 10, 15):
            lat = time_reads(lambda q, c, g=gen: g.read(q, c, "de"), questions[: max(3, len(questions) // 2)], passages, k)
            rows.append({"reader": f"seq2seq mT5-small shape, {'greedy' if beams == 1 else f'{beams} beams'}", "k": k,
                         "questions_per_s": len(lat) / sum(lat), **percentiles(lat)})
            print(rows[-1], flush=True)
    results = {"machine": machine(), "rows": rows,
               "note": "random weights; timings reflect architecture and token counts only"}
    print_table(rows, ["reader", "k", "questions_per_s", "p50_ms", "p95_ms"])
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
