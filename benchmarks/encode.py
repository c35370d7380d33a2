"""Passage encoding throughput: cora's path vs a naive loop, fp32 and int8, against the machine's matmul peak.

ours   : Encoder.encode - length-sorted batches, dynamic padding, torch.inference_mode
naive  : the same model, passages in input order, every batch padded to 512 tokens, torch.no_grad
int8   : ours after Encoder.quantize_int8() (dynamic int8 Linear layers, CPU), with the recall cost measured on
         XQuAD retrieval (dev articles 32-39, questions in 6 languages vs the English paragraphs)

Passages are real XQuAD paragraphs cut to w100 length (first 100 words; 200 characters for zh/th). FLOPs per
passage = 2 x (non-embedding parameters) x tokens + 4 x tokens^2 x hidden x layers (attention scores and mix);
utilisation = achieved FLOP/s / the fp32 matmul rate measured in the same run.

    python benchmarks/encode.py [--n 256] [--out results/encode.json]
    python benchmarks/encode.py --quick        # tiny random model, synthetic text, < 1 minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SHARED,
    machine,
    matmul_peak_gflops,
    peak_rss_mb,
    print_table,
    synthetic_texts,
    tiny_encoder_dir,
    write_results,
    xquad_w100,
)

from cora.datasets import XQUAD_DEV_ARTICLES, xquad_file  # noqa: E402
from cora.encoder import Encoder  # noqa: E402


def encoder_flops(encoder: Encoder, token_counts: list[int]) -> float:
    cfg = encoder.model.config
    emb = sum(p.numel() for n, p in encoder.model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in encoder.model.parameters()) - emb
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    return float(sum(2 * dense * t + 4 * t * t * H * L for t in token_counts))


def naive_encode(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = encoder.tokenizer([encoder.config.passage_prefix + t for t in texts[i : i + batch_size]],
                                      padding="max_length", truncation=True, max_length=512, return_tensors="pt")
            out.append(encoder.embed(batch).numpy())
    return np.concatenate(out)


def xquad_recall(encoder: Encoder, langs=("de", "zh", "ar", "ru", "th", "hi")) -> dict:
    """Recall@1/@5 of the gold English paragraph for dev questions in several languages (a fixed, small task)."""
    from cora.datastore import read_squad
    from cora.questions import read_squad_questions

    paras = [p for _, p in read_squad(xquad_file(SHARED, "en"), "en", keep_titles=False,
                                      articles=XQUAD_DEV_ARTICLES)]
    groups = [p.group for p in paras]
    P = encoder.encode_passages([""] * len(paras), [p.text for p in paras])
    qs = [q for lang in langs for q in read_squad_questions(xquad_file(SHARED, lang), lang,
                                                            XQUAD_DEV_ARTICLES)]
    Q = encoder.encode_queries([q.question for q in qs])
    order = np.argsort(-(Q @ P.T), axis=1)
    ranks = [[groups[j] for j in row[:5]] for row in order]
    r1 = np.mean([q.gold_group == r[0] for q, r in zip(qs, ranks, strict=True)])
    r5 = np.mean([q.gold_group in r for q, r in zip(qs, ranks, strict=True)])
    return {"questions": len(qs), "R@1": round(100 * float(r1), 2), "R@5": round(100 * float(r5), 2)}


def run(encoder_name: str, texts: list[str], naive_n: int, batch_size: int, with_recall: bool) -> dict:
    peak = matmul_peak_gflops()
    rows = []
    enc = Encoder.from_pretrained(encoder_name, device="cpu")
    tokens = [len(x) for x in enc.tokenizer([enc.config.passage_prefix + t for t in texts], truncation=True,
                                            max_length=512)["input_ids"]]
    enc.encode(texts[:8], "passage", batch_size)  # warm-up
    for name, fn, n in (
        ("naive fp32 (input order, pad 512, no_grad)", lambda t: naive_encode(enc, t, batch_size), naive_n),
        ("ours fp32 (sorted, dynamic pad, inference_mode)", lambda t: enc.encode(t, "passage", batch_size),
         len(texts)),
    ):
        t0 = time.perf_counter()
        fn(texts[:n])
        dt = time.perf_counter() - t0
        flops = encoder_flops(enc, tokens[:n])
        rows.append({"path": name, "passages": n, "passages_per_s": n / dt, "useful_GFLOP_per_s": flops / dt / 1e9,
                     "utilisation_of_peak": flops / dt / 1e9 / peak})
    recall_fp32 = xquad_recall(enc) if with_recall else None
    enc.quantize_int8()
    enc.encode(texts[:8], "passage", batch_size)
    t0 = time.perf_counter()
    enc.encode(texts, "passage", batch_size)
    dt = time.perf_counter() - t0
    flops = encoder_flops(Encoder.from_pretrained(encoder_name, device="cpu"), tokens)
    rows.append({"path": "ours int8 (dynamic quantisation)", "passages": len(texts), "passages_per_s": len(texts) / dt,
                 "useful_GFLOP_per_s": flops / dt / 1e9, "utilisation_of_peak": flops / dt / 1e9 / peak})
    recall_int8 = xquad_recall(enc) if with_recall else None
    fp32_ours = rows[1]["passages_per_s"]
    for r in rows:
        r["speedup_vs_naive"] = r["passages_per_s"] / rows[0]["passages_per_s"]
    return {
        "machine": machine(), "encoder": encoder_name, "matmul_peak_GFLOP_per_s": peak,
        "mean_tokens": float(np.mean(tokens)), "batch_size": batch_size, "rows": rows,
        "int8_speedup_vs_ours_fp32": rows[2]["passages_per_s"] / fp32_ours,
        "recall_fp32": recall_fp32, "recall_int8": recall_int8, "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="me5-small", help="encoder name or folder (default me5-small)")
    ap.add_argument("--n", type=int, default=256, help="passages for our paths (default 256)")
    ap.add_argument("--naive-n", type=int, default=64, help="passages for the naive loop (default 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny random model and synthetic text (< 1 minute)")
    args = ap.parse_args(argv)
    if args.quick:
        folder = tiny_encoder_dir(Path(tempfile.mkdtemp()) / "tiny")
        results = run(str(folder), synthetic_texts(64), 16, 16, with_recall=False)
    else:
        texts = xquad_w100()
        rng = np.random.default_rng(0)
        texts = [texts[i] for i in rng.permutation(len(texts))[: args.n]]
        results = run(args.encoder, texts, args.naive_n, args.batch_size, with_recall=True)
    print(f"fp32 matmul peak: {results['matmul_peak_GFLOP_per_s']:.1f} GFLOP/s; mean tokens/passage "
          f"{results['mean_tokens']:.0f}; load {results['machine']['loadavg_1m']}")
    print_table(results["rows"], ["path", "passages", "passages_per_s", "useful_GFLOP_per_s",
                                  "utilisation_of_peak", "speedup_vs_naive"])
    if results["recall_fp32"]:
        print(f"XQuAD recall fp32 {results['recall_fp32']} vs int8 {results['recall_int8']}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
