"""Scale path: a 1M-passage datastore indexed in n shard processes + a merge, with peak RSS per step.

Encoding 1M passages with me5-small takes about a day on 2 CPU cores, so the shards use a stand-in encoder with
cora's encoder interface that derives a deterministic unit vector from each passage's text hash (no model). What
is measured is everything around the model: streaming rows from the memory-mapped datastore, writing shard
embeddings to memory-mapped files, the merge (IVF-PQ trained on a sample, vectors added in chunks) and that the
merged index holds exactly one vector per passage. The projection for 40M passages combines these numbers with
the encoder rates measured by benchmarks/encode.py.

    python benchmarks/scale.py [--passages 1000000] [--shards 4] [--encode-json results/encode.json]
    python benchmarks/scale.py --quick      # 20k passages (< 1 minute)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402


class HashEncoder:
    """Stand-in for cora.encoder.Encoder: same interface, vectors from text hashes, no model."""

    def __init__(self, dim: int = 384):
        from cora.config import EncoderConfig

        self.dim, self.config = dim, EncoderConfig("hash-stand-in", "mean", "", "", True)

    def encode_passages(self, titles, texts, batch_size: int = 32, **_) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def build_datastore(n: int, folder: Path):
    from cora.datastore import Datastore, Passage

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]

    def gen():
        for i in range(n):
            words = rng.integers(0, len(vocab), 40)
            yield Passage(f"p{i}", ("en", "de", "ja")[i % 3], f"T{i // 10}", " ".join(vocab[w] for w in words),
                          f"g{i // 3}")

    return Datastore.build(gen(), folder, overwrite=True)


def child(args) -> int:
    """One shard, in its own process (as n machines would run it)."""
    from cora.datastore import Datastore
    from cora.index import encode_shard

    i, n = map(int, args.child.split("/"))
    encode_shard(Datastore(args.datastore), HashEncoder(), args.index, (i, n), chunk=10_000, show_progress=False)
    print(json.dumps({"shard": i, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--factory", default="IVF1024,PQ48x8",
                    help="index factory for the merge (default IVF1024,PQ48x8: the path that trains on a sample "
                         "and adds in chunks, the one a 40M-passage index needs)")
    ap.add_argument("--encode-json", help="results of benchmarks/encode.py, for the 40M projection")
    ap.add_argument("--workdir", help="where to build (default: a temporary folder)")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--quick", action="store_true", help="20k passages, 2 shards (< 1 minute)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--datastore", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.passages, args.shards = 20_000, 2
        args.factory = "IVF64,PQ48x8" if args.factory == "IVF1024,PQ48x8" else args.factory
    work = Path(args.workdir or tempfile.mkdtemp())
    rows = []

    t0 = time.perf_counter()
    ds = build_datastore(args.passages, work / "datastore")
    rows.append({"step": "datastore build (streamed)", "seconds": time.perf_counter() - t0,
                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    for i in range(args.shards):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", f"{i}/{args.shards}", "--datastore",
                              str(ds.path), "--index", str(work / "index")], check=True, capture_output=True, text=True)
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"step": f"encode shard {i}/{args.shards} (own process)", "seconds": time.perf_counter() - t0,
                     "peak_rss_mb": stats["peak_rss_mb"]})
        print(rows[-1], flush=True)
    from cora.index import merge_shards

    t0 = time.perf_counter()
    merged = subprocess.run([sys.executable, "-c", (
        "import json,resource,sys;from cora.datastore import Datastore;from cora.index import merge_shards;"
        "from cora.config import EncoderConfig;"
        f"i=merge_shards({str(work / 'index')!r}, Datastore({str(ds.path)!r}), {args.factory!r}, 'hash-stand-in',"
        " EncoderConfig('hash-stand-in','mean','','',True));"
        "print(json.dumps({'ntotal': len(i), 'factory': i.config.factory,"
        " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))")],
        check=True, capture_output=True, text=True)
    m = json.loads(merged.stdout.strip().splitlines()[-1])
    del merge_shards
    rows.append({"step": f"merge -> {m['factory']}", "seconds": time.perf_counter() - t0,
                 "peak_rss_mb": m["peak_rss_mb"]})
    index_bytes = (work / "index" / "index.faiss").stat().st_size
    results = {"machine": machine(), "passages": len(ds), "merged_vectors": m["ntotal"],
               "exact_count": m["ntotal"] == len(ds), "index_bytes_per_vector": index_bytes / len(ds),
               "datastore_bytes_per_passage": (ds.path / "passages.arrow").stat().st_size / len(ds), "rows": rows}
    if args.encode_json and Path(args.encode_json).exists():
        enc = json.loads(Path(args.encode_json).read_text())
        rates = {r["path"]: r["passages_per_s"] for r in enc["rows"]}
        fp32 = next(v for k, v in rates.items() if k.startswith("ours fp32"))
        int8 = next(v for k, v in rates.items() if k.startswith("ours int8"))
        results["projection_40M"] = {
            "cpu_2_cores_fp32_days": 40e6 / fp32 / 86400,
            "cpu_2_cores_int8_days": 40e6 / int8 / 86400,
            "index_GB_at_measured_bytes_per_vector": 40e6 * index_bytes / len(ds) / 1e9,
            "shard_embeddings_GB_fp32_384d": 40e6 * 384 * 4 / 1e9,
        }
    print(f"passages {len(ds):,}; merged index vectors {m['ntotal']:,}; exact: {results['exact_count']}")
    print_table(rows, ["step", "seconds", "peak_rss_mb"])
    if "projection_40M" in results:
        print(json.dumps(results["projection_40M"], indent=2))
    write_results(args.out, results)
    return 0 if results["exact_count"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
