"""Vector search: Flat vs HNSW vs IVF-PQ at 100k and 1M vectors - build time, bytes/vector, latency, recall@100.

Vectors are "synthetic but realistic": real me5-small embeddings of real passages (the 2,400 XQuAD paragraphs,
read from a Flat index built by recipes/xquad_retrieval.py, or encoded here), replicated by mixing: vector i is
normalise(l * v_a + (1 - l) * v_b + N(0, sigma^2 I)) for two random real passages a, b, l ~ U(0.5, 1) and
sigma = 0.5 / sqrt(dim). Mixing spreads the copies over the region the real embeddings occupy; plain noisy copies
of 2,400 vectors (tried first) put ~400 near-duplicates around each passage at 1M, whose order is noise that no
compressed index can reproduce. Queries are real me5 embeddings of XQuAD dev questions (articles 32-39, 6
languages). Recall@100 is measured against exact (Flat) search on the same vectors.

    python benchmarks/search.py --vectors-from runs/xquad-retrieval/index-all-languages [--sizes 100000 1000000]
    python benchmarks/search.py --quick        # 5k random vectors, < 1 minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, peak_rss_mb, percentiles, print_table, write_results  # noqa: E402


def replicate(base: np.ndarray, n: int, sigma_scale: float = 0.5, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors, each a noisy mix of two random rows of ``base`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lam = rng.uniform(0.5, 1.0, (m, 1)).astype(np.float32)
        v = lam * base[rng.integers(0, len(base), m)] + (1 - lam) * base[rng.integers(0, len(base), m)]
        v += rng.normal(0, sigma_scale / np.sqrt(d), (m, d)).astype(np.float32)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def index_bytes(index) -> int:
    import faiss

    return len(faiss.serialize_index(index))


def bench_index(factory: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, params: dict, k: int = 100,
                reps: int = 200, train_sample: int = 100_000) -> list[dict]:
    import faiss

    t0 = time.perf_counter()
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        index.train(xb[rng.choice(len(xb), min(len(xb), train_sample), replace=False)])
    for s in range(0, len(xb), 100_000):
        index.add(xb[s : s + 100_000])
    build = time.perf_counter() - t0
    size = index_bytes(index) / len(xb)
    rows = []
    for name, values in (params or {"": [None]}).items():
        for v in values:
            if name == "nprobe":
                faiss.extract_index_ivf(index).nprobe = v
            elif name == "efSearch":
                index.hnsw.efSearch = v
            lat1 = []
            for i in range(min(reps, len(xq))):
                t = time.perf_counter()
                index.search(xq[i : i + 1], k)
                lat1.append(time.perf_counter() - t)
            lat64 = []
            for i in range(0, min(len(xq), 64 * 5), 64):
                t = time.perf_counter()
                index.search(xq[i : i + 64], k)
                lat64.append(time.perf_counter() - t)
            _, found = index.search(xq, k)
            recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)])
            rows.append({"index": factory + (f" {name}={v}" if name else ""), "vectors": len(xb),
                         "build_s": round(build, 1), "bytes_per_vector": round(size, 1),
                         "p50_ms_b1": percentiles(lat1)["p50_ms"], "p99_ms_b1": percentiles(lat1)["p99_ms"],
                         "p50_ms_b64": percentiles(lat64)["p50_ms"], "recall_at_100": round(float(recall), 4)})
    return rows


def load_real_vectors(index_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Passage vectors from a Flat index folder (or encoded now) and dev-question vectors."""
    import faiss

    from cora.models import Encoder
    from cora.questions import read_squad_questions

    encoder = Encoder.from_pretrained("me5-small", device="cpu")
    if index_dir:
        index = faiss.read_index(str(Path(index_dir) / "index.faiss"))
        base = index.reconstruct_n(0, index.ntotal)
    else:
        from cora.datastore import read_squad

        paras = [p for lang in ("en", "de", "zh") for _, p in
                 read_squad(SHARED / "xquad" / f"xquad.{lang}.json", lang, keep_titles=False)]
        base = encoder.encode_passages([""] * len(paras), [p.text for p in paras])
    qs = [q.question for lang in ("en", "de", "zh", "ar", "ru", "th")
          for q in read_squad_questions(SHARED / "xquad" / f"xquad.{lang}.json", lang, range(32, 40))]
    return base.astype(np.float32), encoder.encode_queries(qs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors-from", help="a Flat index folder whose vectors seed the replication "
                                           "(default: encode XQuAD paragraphs now)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--hnsw-max", type=int, default=100_000,
                    help="skip HNSW above this size (its build on 2 cores takes many minutes at 1M)")
    ap.add_argument("--nlist", type=int, help="IVF lists (default 1024 up to 200k vectors, 4096 beyond)")
    ap.add_argument("--train-sample", type=int, default=100_000, help="vectors IVF/PQ are trained on")
    ap.add_argument("--large-codes", action="store_true", help="also IVF-PQ with dim/4 bytes (slow to build)")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="5k random vectors, few settings (< 1 minute)")
    args = ap.parse_args(argv)
    import faiss

    if args.quick:
        rng = np.random.default_rng(0)
        base = rng.normal(size=(500, 64)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        queries = replicate(base, 100, seed=1)
        sizes = [5_000]
    else:
        base, queries = load_real_vectors(args.vectors_from)
        sizes = args.sizes
    rows = []
    for n in sizes:
        xb = replicate(base, n)
        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        _, truth = flat.search(queries, 100)
        del flat
        nlist = 64 if args.quick else (args.nlist or (1024 if n <= 200_000 else 4096))
        dim = xb.shape[1]
        configs = [("Flat", {})]
        if n <= args.hnsw_max:
            configs.append(("HNSW32", {"efSearch": [64, 128, 256]}))
        configs.append((f"IVF{nlist},PQ{dim // 8}x8", {"nprobe": [16, 64, 128]}))
        if args.large_codes:  # 2x larger codes: better recall, slow to build on 2 cores
            configs.append((f"IVF{nlist},PQ{dim // 4}x8", {"nprobe": [16, 64, 128]}))
        if args.quick:
            configs = [configs[0], (f"IVF{nlist},PQ{dim // 8}x8", {"nprobe": [16]})]
        for factory, params in configs:
            rows += bench_index(factory, xb, queries, truth, params, reps=50 if args.quick else 200,
                                train_sample=args.train_sample)
            print(rows[-1], flush=True)
    results = {"machine": machine(), "faiss": faiss.__version__, "queries": len(queries), "rows": rows,
               "peak_rss_mb": peak_rss_mb()}
    print_table(rows, ["index", "vectors", "build_s", "bytes_per_vector", "p50_ms_b1", "p99_ms_b1", "p50_ms_b64",
                       "recall_at_100"])
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
