"""Vector search at 1M vectors: exact Flat, IVF-PQ, IVF-PQ re-ranked against fp16 vectors memory-mapped from disk
(cora's DenseIndex with rerank_factor), and HNSW - recall against Flat, latency, RAM, disk, build time.

Vectors are "synthetic but realistic": real me5-small embeddings (dim 384) of real passages (the 2,400 XQuAD
paragraphs, read from a Flat index built by recipes/xquad_retrieval.py, or encoded here), replicated by mixing:
vector i is normalise(l * v_a + (1 - l) * v_b + N(0, sigma^2 I)) for two random real passages a, b, l ~ U(0.5, 1)
and sigma = 0.5 / sqrt(dim). Mixing spreads the copies over the region the real embeddings occupy; plain noisy
copies of 2,400 vectors (tried first) put ~400 near-duplicates around each passage at 1M, whose order is noise that
no compressed index can reproduce. Queries are real me5 embeddings of the 1,122 XQuAD dev questions (articles
32-39, 6 languages), split at random (seed 0) into two halves: nprobe, the re-rank factor and efSearch are chosen
on the tuning half (the cheapest setting that reaches --target-recall; the sweep is saved too) and every number
in the table is measured on the other half. Ground truth is exact inner-product search over the same vectors.

Latency is per query at batch 1 with --threads threads (FAISS and BLAS). The re-ranked index is saved and loaded
back as cora stores it (index.faiss + vectors.f16); "cold" rows evict vectors.f16 from the page cache before
every query (posix_fadvise DONTNEED on that file only), which is what a 40M index (30 GB of fp16 vectors) sees on
a machine whose page cache cannot hold it. RAM is the FAISS index's serialised size per vector (what search
holds in memory; the memory map is on top of it, paged in on demand); disk adds vectors.f16.

    python benchmarks/search.py --vectors-from runs/xquad-retrieval/index-all-languages --out docs/results/search_1m.json
    python benchmarks/search.py --quick        # 5k random vectors, < 1 minute
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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


def load_real_vectors(index_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Passage vectors from a Flat index folder (or encoded now) and dev-question vectors."""
    import faiss

    from cora.datasets import XQUAD_DEV_ARTICLES, xquad_file
    from cora.encoder import Encoder
    from cora.questions import read_squad_questions

    encoder = Encoder.from_pretrained("me5-small", device="cpu")
    if index_dir:
        index = faiss.read_index(str(Path(index_dir) / "index.faiss"))
        base = index.reconstruct_n(0, index.ntotal)
    else:
        from cora.datastore import read_squad

        paras = [p for lang in ("en", "de", "zh") for _, p in
                 read_squad(xquad_file(SHARED, lang), lang, keep_titles=False)]
        base = encoder.encode_passages([""] * len(paras), [p.text for p in paras])
    qs = [q.question for lang in ("en", "de", "zh", "ar", "ru", "th")
          for q in read_squad_questions(xquad_file(SHARED, lang), lang, XQUAD_DEV_ARTICLES)]
    return base.astype(np.float32), encoder.encode_queries(qs)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top k found in its returned top k."""
    return round(float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)])), 4)


def timed_search(search, queries: np.ndarray, k: int, before=None) -> tuple[np.ndarray, list[float]]:
    """Rows of every query searched one at a time (batch 1), and each query's seconds."""
    rows, seconds = [], []
    for i in range(len(queries)):
        if before is not None:
            before()
        t = time.perf_counter()
        _, r = search(queries[i : i + 1], k)
        seconds.append(time.perf_counter() - t)
        rows.append(r[0])
    return np.array(rows), seconds


def row(name: str, n: int, rows: np.ndarray, truth: np.ndarray, seconds: list[float], **extra) -> dict:
    p = percentiles(seconds)
    return {"index": name, "vectors": n, "recall_at_100": recall(rows, truth, 100),
            "recall_at_10": recall(rows, truth, 10), "p50_ms": p["p50_ms"], "p95_ms": p["p95_ms"],
            "loadavg_1m": round(os.getloadavg()[0], 2), **extra}


def train_add(factory: str, xb: np.ndarray, train_sample: int, chunk: int = 100_000):
    """A FAISS inner-product index trained on a random sample and filled in chunks; seconds for each part."""
    import faiss

    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    if not index.is_trained:
        rng = np.random.default_rng(0)
        index.train(xb[np.sort(rng.choice(len(xb), min(len(xb), train_sample), replace=False))])
    t1 = time.perf_counter()
    for s in range(0, len(xb), chunk):
        index.add(xb[s : s + chunk])
    return index, {"train_s": round(t1 - t0, 1), "add_s": round(time.perf_counter() - t1, 1)}


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (this file only; nothing else on the machine is touched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def pick(sweep: list[dict], target: float) -> dict:
    """The fastest (p50) setting reaching ``target`` recall@100 on the tuning half; else the most accurate."""
    ok = [s for s in sweep if s["recall_at_100"] >= target]
    return min(ok, key=lambda s: s["p50_ms"]) if ok else max(sweep, key=lambda s: s["recall_at_100"])


def bench_reranked(factory: str, xb: np.ndarray, tune: tuple, report: tuple, args, folder: Path) -> tuple:
    """IVF-PQ alone and re-ranked through cora's DenseIndex (saved and loaded back), tuned on the tuning half."""
    import faiss

    from cora.index import (
        AUTO_NPROBE,
        AUTO_RERANK_FACTOR,
        VECTORS_FILE,
        DenseIndex,
        IndexConfig,
        append_vectors,
        open_vectors,
    )

    n, dim = xb.shape
    index, times = train_add(factory, xb, args.train_sample)
    t = time.perf_counter()
    append_vectors(folder / VECTORS_FILE, 0, (xb[s : s + 100_000] for s in range(0, n, 100_000)), dim)
    times["write_fp16_s"] = round(time.perf_counter() - t, 1)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    t = time.perf_counter()
    quantizer.search(xb[:100_000], 1)
    times["assign_per_100k_s"] = round(time.perf_counter() - t, 2)  # coarse assignment share of add_s (projection)
    config = IndexConfig(factory=factory, encoder="benchmark", dim=dim, ntotal=n, rerank_factor=1)
    DenseIndex(index, config, open_vectors(folder / VECTORS_FILE, n, dim)).save(folder)
    del index
    dense = DenseIndex.load(folder)
    assert isinstance(dense.vectors, np.memmap)
    ram = (folder / "index.faiss").stat().st_size / n
    disk = ram + (folder / VECTORS_FILE).stat().st_size / n
    build = times["train_s"] + times["add_s"] + times["write_fp16_s"]
    common = {"factory": factory, "build_s": round(build, 1), "ram_bytes_per_vector": round(ram, 1)}
    sweep = []
    for nprobe in args.nprobe:
        for factor in [0] + args.rerank_factor:
            dense.config.nprobe, dense.config.rerank_factor = nprobe, factor
            dense._apply_search_params()
            rows, secs = timed_search(dense.search, tune[0], 100)
            sweep.append(row(f"{factory} nprobe={nprobe} rerank={factor}", n, rows, tune[1], secs,
                             nprobe=nprobe, rerank_factor=factor, split="tune"))
            print(sweep[-1], flush=True)
    out = []
    plain = pick([s for s in sweep if s["rerank_factor"] == 0], args.target_recall)
    tuned = pick([s for s in sweep if s["rerank_factor"] > 0], args.target_recall)
    settings = [(plain, "IVF-PQ alone"), (tuned, "IVF-PQ + fp16 re-rank, fastest reaching the target on the "
                                                 "tuning half (memmap, warm)")]
    default = {"nprobe": AUTO_NPROBE, "rerank_factor": AUTO_RERANK_FACTOR}
    if (tuned["nprobe"], tuned["rerank_factor"]) != (AUTO_NPROBE, AUTO_RERANK_FACTOR):
        settings.append((default, "IVF-PQ + fp16 re-rank, 'auto' default (memmap, warm)"))

    def use(setting: dict, io_threads: int = 0) -> str:
        dense.config.nprobe, dense.config.rerank_factor = setting["nprobe"], setting["rerank_factor"]
        dense.config.rerank_io_threads = io_threads
        dense._apply_search_params()
        return f"{factory} nprobe={setting['nprobe']}" + (f" rerank={setting['rerank_factor']}"
                                                          if setting["rerank_factor"] else "")

    for chosen, label in settings:
        name = use(chosen)
        rows, secs = timed_search(dense.search, report[0], 100)
        extra = {"disk_bytes_per_vector": round(disk if chosen["rerank_factor"] else ram, 1), **common}
        out.append(row(f"{label}: {name}", n, rows, report[1], secs, **extra))
        print(out[-1], flush=True)

    def cold() -> None:
        # Pages mapped into this process are not dropped by the kernel: unmap (drop the memmap), evict, remap.
        dense.vectors = None
        evict(folder / VECTORS_FILE)
        dense.vectors = open_vectors(folder / VECTORS_FILE, n, dim)

    cold_queries = report[0][: args.cold_queries]
    for io_threads in (0, args.io_threads):
        name = use(default, io_threads)
        rows, secs = timed_search(dense.search, cold_queries, 100, before=cold)
        how = f"{io_threads} reader threads" if io_threads else "read in the calling thread"
        out.append(row(f"IVF-PQ + fp16 re-rank, 'auto' default (memmap, cold: evicted before each query, {how}): "
                       f"{name}", n, rows, report[1][: len(rows)], secs, disk_bytes_per_vector=round(disk, 1),
                       queries=len(rows), rerank_io_threads=io_threads, **common))
        print(out[-1], flush=True)
    return out, sweep, times


def bench_hnsw(xb: np.ndarray, tune: tuple, report: tuple, args) -> tuple[list[dict], list[dict]]:
    import faiss

    index, times = train_add(f"HNSW{args.hnsw_m}", xb, 0)
    ram = len(faiss.serialize_index(index)) / len(xb)
    sweep = []
    for ef in args.ef_search:
        index.hnsw.efSearch = ef
        rows, secs = timed_search(index.search, tune[0], 100)
        sweep.append(row(f"HNSW{args.hnsw_m} efSearch={ef}", len(xb), rows, tune[1], secs, ef_search=ef,
                         split="tune"))
        print(sweep[-1], flush=True)
    chosen = pick(sweep, args.target_recall)
    index.hnsw.efSearch = chosen["ef_search"]
    rows, secs = timed_search(index.search, report[0], 100)
    return [row(f"HNSW{args.hnsw_m} efSearch={chosen['ef_search']}", len(xb), rows, report[1], secs,
                build_s=times["add_s"], ram_bytes_per_vector=round(ram, 1),
                disk_bytes_per_vector=round(ram, 1))], sweep


def project(rows: list[dict], times: dict, n: int, dim: int, nlist: int, target_n: int, target_nlist: int) -> dict:
    """RAM, disk and build time of the re-ranked index at ``target_n`` vectors from the measured run.

    Per-vector bytes (codes + ids) and per-vector times scale linearly; the coarse quantizer's bytes and the
    assignment time scale with the number of lists as well (a flat quantizer compares every vector to every
    centroid); IVF training is scaled by the list count at the same sample size."""
    rr = next(r for r in rows if "warm" in r["index"])  # bytes and build time: the same for every setting
    quantizer_measured = nlist * dim * 4
    per_vector_ram = rr["ram_bytes_per_vector"] - quantizer_measured / n
    ram = per_vector_ram * target_n + target_nlist * dim * 4
    disk = ram + target_n * dim * 2
    assign = times["assign_per_100k_s"] * (target_n / 100_000) * (target_nlist / nlist)
    encode = max(times["add_s"] - times["assign_per_100k_s"] * n / 100_000, 0) * target_n / n
    build = times["train_s"] * target_nlist / nlist + assign + encode + times["write_fp16_s"] * target_n / n
    return {"label": "projection from the 1M measurements, not measured", "vectors": target_n,
            "factory": rr["factory"].replace(f"IVF{nlist},", f"IVF{target_nlist},"),
            "ram_gb": round(ram / 1e9, 2), "ram_bytes_per_vector": round(ram / target_n, 1),
            "disk_gb": round(disk / 1e9, 1), "vectors_f16_gb": round(target_n * dim * 2 / 1e9, 1),
            "build_hours_2_cores": round(build / 3600, 1),
            "build_parts_s": {"train": round(times["train_s"] * target_nlist / nlist), "assign": round(assign),
                              "encode": round(encode), "write_fp16": round(times["write_fp16_s"] * target_n / n)},
            "note": f"the fp16 vectors (2 bytes x {dim} per passage) exceed this machine's page cache at 40M: expect "
                    "the 'cold' latency row, not the 'warm' one"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors-from", help="a Flat index folder whose vectors seed the replication "
                                           "(default: encode XQuAD paragraphs now)")
    ap.add_argument("--size", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    ap.add_argument("--factory", default=None,
                    help="the IVF-PQ factory (default: what 'cora index build --factory auto' picks at --size)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64], help="nprobe values swept on the "
                    "tuning half")
    ap.add_argument("--rerank-factor", type=int, nargs="+", default=[10, 20, 40],
                    help="re-rank factors swept on the tuning half (candidates = factor x 100)")
    ap.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512], help="HNSW efSearch values")
    ap.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its 1M build takes many minutes)")
    ap.add_argument("--train-sample", type=int, default=200_000, help="vectors IVF/PQ are trained on")
    ap.add_argument("--target-recall", type=float, default=0.95, help="recall@100 the tuning aims for")
    ap.add_argument("--flat-queries", type=int, default=100, help="queries timed on Flat (slow at 1M)")
    ap.add_argument("--cold-queries", type=int, default=100, help="queries timed with a cold page cache")
    ap.add_argument("--io-threads", type=int, default=64,
                    help="reader threads (IndexConfig.rerank_io_threads) of the second cold row (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="FAISS/BLAS threads (default 2)")
    ap.add_argument("--project", type=int, default=40_000_000, help="project RAM/disk/build time to this size")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="5k random vectors, few settings (< 1 minute)")
    args = ap.parse_args(argv)
    import faiss

    from cora.index import auto_factory

    faiss.omp_set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    if args.quick:
        rng = np.random.default_rng(0)
        base = rng.normal(size=(500, 64)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        queries = replicate(base, 100, seed=1)
        args.size, args.nprobe, args.rerank_factor, args.ef_search = 5_000, [8], [4], [64]
        args.train_sample, args.flat_queries, args.cold_queries = 5_000, 20, 10
        factory = args.factory or "IVF64,PQ16x4fsr"
    else:
        base, queries = load_real_vectors(args.vectors_from)
        factory = args.factory or auto_factory(args.size, base.shape[1])
    n = args.size
    xb = replicate(base, n)
    perm = np.random.default_rng(0).permutation(len(queries))
    half = len(queries) // 2
    tune_q, report_q = queries[perm[:half]], queries[perm[half:]]
    t = time.perf_counter()
    truth = faiss.knn(queries, xb, 100, metric=faiss.METRIC_INNER_PRODUCT)[1]
    truth_s = time.perf_counter() - t
    tune, report = (tune_q, truth[perm[:half]]), (report_q, truth[perm[half:]])

    # Flat search is faiss.knn over xb (what IndexFlatIP.search runs) without IndexFlatIP's 1.5 GB copy of xb.
    rows_, secs = timed_search(lambda x, k: faiss.knn(x, xb, k, metric=faiss.METRIC_INNER_PRODUCT),
                               report_q[: args.flat_queries], 100)
    flat_bytes = xb.shape[1] * 4
    rows = [row("Flat (exact; the ground truth)", n, rows_, report[1][: args.flat_queries], secs, factory="Flat",
                build_s=0.0, ram_bytes_per_vector=flat_bytes, disk_bytes_per_vector=flat_bytes, queries=len(rows_))]
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        ivf_rows, sweep, times = bench_reranked(factory, xb, tune, report, args, Path(tmp))
    rows += ivf_rows
    if not args.no_hnsw:
        hnsw_rows, hnsw_sweep = bench_hnsw(xb, tune, report, args)
        rows += hnsw_rows
        sweep += hnsw_sweep
    nlist = faiss.extract_index_ivf(faiss.index_factory(xb.shape[1], factory)).nlist
    target_factory = auto_factory(args.project, xb.shape[1])
    target_nlist = faiss.extract_index_ivf(faiss.index_factory(xb.shape[1], target_factory)).nlist \
        if "IVF" in target_factory else nlist
    projection = project(rows, times, n, xb.shape[1], nlist, args.project, target_nlist)
    results = {"machine": machine(), "faiss": faiss.__version__, "threads": args.threads, "vectors": n,
               "dim": int(xb.shape[1]), "queries": {"tune": len(tune_q), "report": len(report_q)},
               "ground_truth_s": round(truth_s, 1), "rows": rows, "build": times, "tuning_sweep": sweep,
               "projection": projection, "peak_rss_mb": round(peak_rss_mb()), "command": " ".join(sys.argv)}
    print_table(rows, ["index", "recall_at_100", "recall_at_10", "p50_ms", "p95_ms", "ram_bytes_per_vector",
                       "disk_bytes_per_vector", "build_s", "loadavg_1m"])
    print(projection)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
