"""Dense index: encode a datastore in memory-bounded shards, then build a FAISS index from a factory string.

Layout of an index folder::

    index.json            IndexConfig: factory, encoder config, datastore fingerprint, counts
    index.faiss           the FAISS index; vector id = datastore row
    vectors.f16           (re-ranked indexes only) every vector in fp16, row = datastore row, no header: searched
                          through a read-only memory map, so it costs disk and page cache, not process memory
    shards/emb-00000-of-00002.npy   per-shard embeddings (removed after the merge
                                    unless --keep-shards)

Sharding: shard ``i`` of ``n`` covers rows ``[i*N//n, (i+1)*N//n)``. These ranges tile ``[0, N)`` exactly, so the
tail passages that a fixed-size split drops are always covered, and the merge step checks it. Each shard streams
its rows in chunks from the memory-mapped datastore into a memory-mapped ``.npy`` and records its progress, so an
interrupted shard resumes at its last finished chunk.

Re-ranking (``IndexConfig.rerank_factor`` > 0): the FAISS index (typically IVF-PQ, ~60 bytes per vector) only
proposes ``rerank_factor * k`` candidates; their exact inner products are computed from ``vectors.f16`` and the top
k returned. PQ codes alone keep ~44% of the true top 100 at 1M vectors; re-ranked, 96% (docs/search.md).
``vectors.f16`` is headerless so that ``cora index update`` can append to it: rows beyond ``IndexConfig.ntotal``
belong to an unfinished update and are ignored (and cut off by the next one).
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cora.config import EncoderConfig, load_config, save_config
from cora.datastore import Datastore
from cora.errors import CoraError, FingerprintMismatch
from cora.fileio import atomic_write_json

logger = logging.getLogger(__name__)

INDEX_FILE, CONFIG_FILE, SHARD_DIR, VECTORS_FILE = "index.faiss", "index.json", "shards", "vectors.f16"


@dataclass
class IndexConfig:
    """Saved as index.json; restores everything needed to search without re-typing options."""

    factory: str = field(metadata={"help": "FAISS index factory string (Flat, HNSW32, IVF1024,PQ48, ...)"})
    encoder: str = field(metadata={"help": "encoder to load: registered name, HF id, or folder"})
    encoder_config: dict = field(default_factory=dict)
    datastore: str = ""
    datastore_fingerprint: str = ""
    datastore_size: int = 0
    dim: int = 0
    ntotal: int = 0
    nprobe: int = 32
    hnsw_ef_search: int = 128
    int8: bool = field(default=False, metadata={"help": "passages were encoded with int8 dynamic quantisation"})
    faiss_bytes: int = field(default=0, metadata={"help": "size of index.faiss, checked on load"})
    faiss_sha256: str = field(default="", metadata={
        "help": "SHA-256 of index.faiss, checked on load: a damaged file is refused instead of searched"})
    rerank_factor: int = field(default=0, metadata={
        "help": "0: return the FAISS index's own ranking. N > 0: take N*k candidates from it and re-rank them by "
                "exact inner product against the fp16 vectors in vectors.f16 (memory-mapped, never loaded)"})
    rerank_io_threads: int = field(default=0, metadata={
        "help": "threads that read the candidates' rows of vectors.f16 in parallel. 0: read them in the calling "
                "thread, best while the file fits the page cache (warm: ~1 ms for 4,000 rows). For a file larger "
                "than memory (40M passages: 30 GB) 64 threads read 4,000 uncached rows in ~40 ms instead of ~560 "
                "(docs/search.md)"})


AUTO_FLAT_MAX = 200_000  # above this 'auto' stops searching exactly (Flat: ~32 ms a query at 100k, 248 at 1M)
AUTO_NPROBE, AUTO_RERANK_FACTOR = 128, 40  # recall@100 0.96 at 1M on the tuning questions: docs/search.md


def auto_factory(n: int, dim: int) -> str:
    """The index type chosen for 'auto', from benchmarks/search.py on 2 CPU cores (docs/search.md).

    * up to 200k vectors: Flat - exact; 13-32 ms per query at 100k, 1.5 KB per vector at 384 dims.
    * beyond: IVF with 4-bit fast-scan PQ codes of the residuals, dim/4 sub-quantizers (48 bytes at 384 dims;
      ~60 bytes per vector in RAM with ids and lists), whose candidates are re-ranked against the fp16 vectors
      memory-mapped from disk (:func:`auto_rerank_factor`). The codes alone find ~44% of the exact top 100 at
      1M vectors; re-ranked, >= 0.95 at a few ms per query (docs/search.md). HNSW32 is faster (sub-ms) but holds
      1.8 KB per vector in RAM, so it is left to an explicit ``--factory HNSW32``.
    * lists: 4 sqrt(n) rounded to a power of two, at least 1024 (4096 at 1M, 32768 at 40M).
    """
    if n <= AUTO_FLAT_MAX:
        return "Flat"
    nlist = 1 << max(10, round(math.log2(4 * math.sqrt(n))))
    m = dim // 4 if dim % 4 == 0 else dim
    return f"IVF{nlist},PQ{m}x4fsr"


def auto_rerank_factor(n: int) -> int:
    """Candidates per hit that 'auto' re-ranks: 0 where :func:`auto_factory` picks exact search."""
    return 0 if n <= AUTO_FLAT_MAX else AUTO_RERANK_FACTOR


def parse_shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise CoraError(f"--shard must look like i/n with 0 <= i < n (e.g. 0/4), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_range(i: int, n: int, size: int) -> tuple[int, int]:
    """Rows [start, stop) of shard i of n; the n ranges tile [0, size) with no gap and no overlap."""
    return i * size // n, (i + 1) * size // n


def is_int8(encoder) -> bool:
    """Whether ``encoder`` runs int8-quantised linear layers (``Encoder.quantize_int8``): its vectors differ
    from fp32 ones, so a shard records it and a resume never mixes the two."""
    model = getattr(encoder, "model", None)
    return model is not None and any(type(m).__module__.startswith("torch.ao.nn.quantized")
                                     for m in model.modules())


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """SHA-256 of a file, streamed in 4 MiB blocks (a 3 GB index never sits in memory twice)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def is_index(folder: str | os.PathLike) -> bool:
    """A folder that holds a cora index, finished or with shards still being encoded, and nothing else: the only
    kind of folder 'cora index build --out' writes into."""
    from cora.fileio import only_holds

    names = (CONFIG_FILE, INDEX_FILE, SHARD_DIR, VECTORS_FILE, "encoder")
    return only_holds(Path(folder), CONFIG_FILE, names) or only_holds(Path(folder), SHARD_DIR, names)


def check_index_output(out: str | os.PathLike, overwrite: bool, inputs=()) -> Path:
    """The rule for outputs (:func:`cora.fileio.check_output`) for an index folder: a finished index is replaced
    only with ``overwrite``; a folder of shards still being encoded is resumed (shards run as parallel
    processes into one folder)."""
    from cora.fileio import check_output

    out = Path(out)
    return check_output(out, overwrite=overwrite or not (out / CONFIG_FILE).exists(), inputs=inputs,
                        kind="index", is_kind=is_index)


def _shard_paths(out: Path, i: int, n: int) -> tuple[Path, Path]:
    stem = out / SHARD_DIR / f"emb-{i:05d}-of-{n:05d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def encode_shard(
    datastore: Datastore, encoder, out: str | os.PathLike, shard: tuple[int, int] = (0, 1),
    batch_size: int = 32, chunk: int = 2048, show_progress: bool = True,
) -> Path:
    """Encode one shard of the datastore into ``out/shards``; resumable at chunk granularity."""
    from tqdm.auto import tqdm

    out = Path(out)
    i, n = shard
    start, stop = shard_range(i, n, len(datastore))
    emb_path, state_path = _shard_paths(out, i, n)
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"shard": i, "num_shards": n, "start": start, "stop": stop, "done": start,
             "fingerprint": datastore.fingerprint, "encoder": asdict(encoder.config), "int8": is_int8(encoder)}
    keys = ("start", "stop", "fingerprint", "encoder", "int8")
    if state_path.exists() and emb_path.exists():
        old = _read_state(state_path)
        # A state written before int8 was recorded is fp32 (int8 then only existed as this flag's absence).
        same = {k: old.get(k, False if k == "int8" else None) for k in keys} == {k: state[k] for k in keys}
        if same:
            state["done"] = old["done"]
            mm = np.load(emb_path, mmap_mode="r+")
        else:
            logger.warning("shard %d/%d in %s was made for another datastore or encoder (or with%s --int8); "
                           "re-encoding it from the start", i, n, out, "" if old.get("int8") else "out")
            mm = None
    else:
        mm = None
    if mm is None:
        mm = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(stop - start, encoder.dim))
        atomic_write_json(state_path, state)
    bar = tqdm(total=stop - start, initial=state["done"] - start, desc=f"encode shard {i}/{n}", unit="psg",
               disable=not show_progress)
    for batch in datastore.iter_batches(chunk, start=state["done"], stop=stop):
        m = len(batch["id"])
        vecs = encoder.encode_passages(batch["title"], batch["text"], batch_size=batch_size)
        lo = state["done"] - start
        mm[lo : lo + m] = vecs
        mm.flush()
        state["done"] += m
        atomic_write_json(state_path, state)  # progress is recorded only after the vectors are on disk
        bar.update(m)
    bar.close()
    del mm
    return emb_path


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CoraError(f"{path} is corrupt; delete it and rerun 'cora index build' for that shard") from None
    if not isinstance(state, dict) or not {"shard", "num_shards", "start", "stop", "done", "fingerprint"} <= set(state):
        raise CoraError(f"{path} is not a shard state written by cora; delete it and rerun that shard")
    return state


def merge_shards(
    out: str | os.PathLike, datastore: Datastore, factory: str, encoder_name: str, encoder_config: EncoderConfig,
    train_sample: int = 200_000, add_chunk: int = 100_000, seed: int = 0, clean: bool = True,
    rerank_factor: int | None = None,
) -> DenseIndex:
    """Build the FAISS index from every shard in ``out/shards``; refuses if rows are missing or mismatched.

    ``rerank_factor`` (None: :func:`auto_rerank_factor` of the factory when it is 'auto', else 0) > 0 also writes
    the fp16 vectors that search re-ranks candidates against."""
    import faiss

    out = Path(out)
    states = sorted((out / SHARD_DIR).glob("emb-*.json")) if (out / SHARD_DIR).exists() else []
    if not states:
        raise CoraError(f"{out}: no encoded shards; run 'cora index build ... --shard i/n' first")
    metas = [_read_state(p) for p in states]
    counts = {m["num_shards"] for m in metas}
    if len(counts) != 1:
        raise CoraError(f"{out}/{SHARD_DIR} mixes shard counts {sorted(counts)}; remove the stale ones")
    n = counts.pop()
    have = {m["shard"] for m in metas}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise CoraError(f"{out}: shards {missing} of {n} are missing; encode them with --shard i/{n}")
    metas.sort(key=lambda m: m["shard"])
    int8 = {bool(m.get("int8", False)) for m in metas}
    if len(int8) != 1:
        raise CoraError(f"{out}: some shards were encoded with --int8 and some without; re-encode the odd ones "
                        "with the same setting")
    for m in metas:
        if m["fingerprint"] != datastore.fingerprint:
            raise FingerprintMismatch(f"{out}: shard {m['shard']} was encoded from another datastore")
        if m["done"] != m["stop"]:
            raise CoraError(f"{out}: shard {m['shard']}/{n} is incomplete ({m['done'] - m['start']} of "
                            f"{m['stop'] - m['start']} rows); rerun its 'cora index build --shard' to resume")
    if metas[0]["start"] != 0 or metas[-1]["stop"] != len(datastore) or any(
        a["stop"] != b["start"] for a, b in zip(metas, metas[1:], strict=False)
    ):
        raise CoraError(f"{out}: shard row ranges do not tile the datastore's {len(datastore)} rows")
    arrays = [np.load(_shard_paths(out, m["shard"], n)[0], mmap_mode="r") for m in metas]
    dim = arrays[0].shape[1]
    total = sum(len(a) for a in arrays)
    auto = factory == "auto"
    if rerank_factor is None:
        rerank_factor = auto_rerank_factor(total) if auto else 0
    if rerank_factor < 0:
        raise CoraError(f"rerank factor must be 0 (off) or a positive number of candidates per hit, got {rerank_factor}")
    factory = auto_factory(total, dim) if factory == "auto" else factory
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise CoraError(f"invalid FAISS factory string {factory!r}: {str(err).strip().splitlines()[-1]}") from None
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = min(train_sample, total)
        rows = np.sort(rng.choice(total, size=take, replace=False))
        offsets = np.cumsum([0] + [len(a) for a in arrays])
        sample = np.concatenate([arrays[s][rows[(rows >= offsets[s]) & (rows < offsets[s + 1])] - offsets[s]]
                                 for s in range(len(arrays))])
        logger.info("training %s on %d sampled vectors", factory, len(sample))
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for a in arrays:
        for s in range(0, len(a), add_chunk):
            index.add(np.ascontiguousarray(a[s : s + add_chunk], dtype=np.float32))
    if index.ntotal != len(datastore):
        raise CoraError(f"merged index has {index.ntotal} vectors for {len(datastore)} passages")
    vectors = None
    if rerank_factor > 0:
        append_vectors(out / VECTORS_FILE, 0, (a[s : s + add_chunk] for a in arrays
                                               for s in range(0, len(a), add_chunk)), dim)
        vectors = open_vectors(out / VECTORS_FILE, total, dim)
    config = IndexConfig(
        factory=factory, encoder=encoder_name, encoder_config=asdict(encoder_config),
        datastore=str(datastore.path.resolve()), datastore_fingerprint=datastore.fingerprint,
        datastore_size=len(datastore), dim=dim, ntotal=int(index.ntotal), int8=int8.pop(),
        rerank_factor=rerank_factor,
    )
    if auto and rerank_factor > 0:
        config.nprobe = AUTO_NPROBE
    dense = DenseIndex(index, config, vectors)
    dense.save(out)
    if clean:
        for m in metas:
            for p in _shard_paths(out, m["shard"], n):
                p.unlink(missing_ok=True)
    return dense


def gather_rows(vectors: np.ndarray, ids: np.ndarray, pool=None, parts: int = 1) -> np.ndarray:
    """``vectors[ids]``; with a thread pool, ``parts`` slices are read in parallel (numpy releases the GIL while it
    copies, so the page faults of an uncached memory map overlap instead of queueing one by one)."""
    if pool is None or parts <= 1 or len(ids) < 2 * parts:
        return vectors[ids]
    out = np.empty((len(ids), vectors.shape[1]), dtype=vectors.dtype)
    bounds = np.linspace(0, len(ids), parts + 1).astype(np.int64)

    def fill(a: int, b: int) -> None:
        out[a:b] = vectors[ids[a:b]]

    list(pool.map(fill, bounds[:-1], bounds[1:]))
    return out


def rerank(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, pool=None, parts: int = 1,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k of each query among its candidate rows of ``vectors`` (fp16, usually a memory map).

    Candidate ids are de-duplicated and sorted before the gather, so reads walk the file forward (page-cache and
    read-ahead friendly) and equal scores keep the lower row first, as exact search does. Missing candidates (-1,
    FAISS's filler) are skipped; a query with fewer than k candidates is padded with row -1 and score -inf.
    ``pool``/``parts``: read the rows with :func:`gather_rows` in parallel.
    """
    import torch

    q = np.ascontiguousarray(queries, dtype=np.float32)                   # [Q, D]
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)              # [Q, k]
    rows = np.full((len(q), k), -1, dtype=np.int64)                       # [Q, k]
    for i, cand in enumerate(candidates):
        ids = np.unique(cand[cand >= 0])                                  # [C] sorted
        # Measured on 2 cores (docs/search.md): numpy converts fp16 at ~1 ns a value (2.6 ms for 4,000 x 384),
        # torch ~6x faster (F16C); and einsum, not @, because BLAS runs a gemv of >= ~2,000 rows on all its
        # threads, whose hand-off costs ~15 ms on a loaded machine, 10x the product itself.
        rows_f32 = torch.from_numpy(gather_rows(vectors, ids, pool, parts)).float().numpy()  # [C, D]
        exact = np.einsum("cd,d->c", rows_f32, q[i])                      # [C]
        top = np.argsort(-exact, kind="stable")[:k]                       # [<=k]
        scores[i, : len(top)], rows[i, : len(top)] = exact[top], ids[top]
    return scores, rows


def open_vectors(path: str | os.PathLike, n: int, dim: int) -> np.memmap:
    """The first ``n`` rows of a headerless fp16 vectors file as a read-only memory map [n, dim]."""
    path = Path(path)
    need = n * dim * np.dtype(np.float16).itemsize
    have = path.stat().st_size if path.exists() else -1
    if have < need:
        raise CoraError(f"{path} holds {max(have, 0)} bytes but {n} vectors of dimension {dim} need {need}: it is "
                        "missing or truncated; rebuild the index with 'cora index build'")
    vectors = np.memmap(path, dtype=np.float16, mode="r", shape=(n, dim))
    if n and hasattr(vectors._mmap, "madvise"):
        # Re-ranking reads scattered rows: without this, each page fault on an uncached file reads ahead ~128 KB.
        vectors._mmap.madvise(mmap.MADV_RANDOM)
    return vectors


def append_vectors(path: str | os.PathLike, start: int, chunks, dim: int) -> int:
    """Write float vectors as fp16 rows ``start, start+1, ...`` of ``path`` (cutting off anything from row
    ``start`` on first: the leftovers of an interrupted update); returns the number of rows written."""
    path = Path(path)
    written = 0
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.truncate(start * dim * 2)
        fh.seek(start * dim * 2)
        for chunk in chunks:
            fh.write(np.ascontiguousarray(chunk, dtype=np.float16).tobytes())
            written += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return written


class DenseIndex:
    """A FAISS inner-product index whose vector ids are datastore rows, plus its saved config and, for a
    re-ranked index, the memory-mapped fp16 vectors [ntotal, dim] the candidates are re-scored against."""

    def __init__(self, index, config: IndexConfig, vectors: np.ndarray | None = None):
        if config.rerank_factor > 0 and (vectors is None or vectors.shape != (index.ntotal, index.d)):
            raise CoraError(f"a re-ranked index (rerank_factor {config.rerank_factor}) needs its {index.ntotal} x "
                            f"{index.d} vectors; got {None if vectors is None else vectors.shape}")
        self.index, self.config, self.vectors = index, config, vectors
        self._pool, self._pool_threads = None, 0  # re-rank reader threads, started when rerank_io_threads > 0
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        import faiss

        try:
            ivf = faiss.extract_index_ivf(self.index)
        except (RuntimeError, AttributeError):
            ivf = None
        if ivf is not None:
            # Clamped: faiss 1.15's fast-scan IVF returns wrong neighbours when nprobe exceeds its lists (44% of
            # the exact top 100 instead of 99% in tests/test_index_rerank.py).
            ivf.nprobe = min(self.config.nprobe, ivf.nlist)
        hnsw = getattr(self.index, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.config.hnsw_ef_search

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def passage_vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored passage vectors of rows [start, stop) as float32: the full-precision copy kept for re-ranking
        when there is one (a fast-scan IVF-PQ index cannot reconstruct), otherwise what faiss reconstructs."""
        stop = len(self) if stop is None else stop
        if self.vectors is not None:
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        return self.index.reconstruct_n(start, stop - start)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """[Q, D] float32 -> scores [Q, k'], rows [Q, k'] with k' = min(k, ntotal)."""
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.config.rerank_factor <= 0:
            return self.index.search(queries, k)
        _, candidates = self.index.search(queries, min(k * self.config.rerank_factor, len(self)))
        threads = self.config.rerank_io_threads
        if threads > 0 and self._pool_threads != threads:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="cora-rerank-io")
            self._pool_threads = threads
        return rerank(self.vectors, queries, candidates, k, self._pool if threads > 0 else None, threads)

    def save(self, out: str | os.PathLike) -> None:
        import faiss

        from cora.fileio import remove_stale_temporaries

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / INDEX_FILE)
        tmp = out / f".{INDEX_FILE}.tmp-{os.getpid()}-"
        try:
            faiss.write_index(self.index, str(tmp))
            self.config.faiss_bytes, self.config.faiss_sha256 = tmp.stat().st_size, file_sha256(tmp)
            os.replace(tmp, out / INDEX_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        target = out / VECTORS_FILE
        source = getattr(self.vectors, "filename", None)
        in_place = source is not None and target.exists() and os.path.samefile(source, target)
        if self.vectors is not None and not in_place:
            # Vectors held elsewhere (in memory, or another index's file) are copied in chunks beside the index.
            step = 1 << 16
            append_vectors(target, 0, (self.vectors[s : s + step] for s in range(0, len(self.vectors), step)),
                           self.config.dim)
            self.vectors = open_vectors(target, len(self.vectors), self.config.dim)
        save_config(self.config, out / CONFIG_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DenseIndex:
        import faiss

        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists() or not (folder / INDEX_FILE).exists():
            raise CoraError(f"{folder} is not a cora index (needs {CONFIG_FILE} and {INDEX_FILE}); "
                            "build one with 'cora index build'")
        config = load_config(IndexConfig, folder / CONFIG_FILE)
        path = folder / INDEX_FILE
        if config.faiss_sha256:
            if path.stat().st_size != config.faiss_bytes or file_sha256(path) != config.faiss_sha256:
                raise CoraError(f"{path} is corrupt or truncated: its size or SHA-256 differs from the one "
                                f"{CONFIG_FILE} records; rebuild the index with 'cora index build'")
        else:
            logger.warning("%s records no checksum of %s (built by an older cora): it cannot be checked for "
                           "damage; rebuild it to add one", folder / CONFIG_FILE, INDEX_FILE)
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError:
            raise CoraError(f"{folder / INDEX_FILE} is corrupt or truncated; rebuild it with 'cora index build'") \
                from None
        if index.ntotal != config.ntotal or index.d != config.dim:
            raise CoraError(f"{folder / INDEX_FILE} holds {index.ntotal}x{index.d} vectors but {CONFIG_FILE} says "
                            f"{config.ntotal}x{config.dim}; rebuild the index")
        vectors = open_vectors(folder / VECTORS_FILE, config.ntotal, config.dim) if config.rerank_factor > 0 else None
        return cls(index, config, vectors)

    def check_datastore(self, datastore: Datastore) -> None:
        if datastore.fingerprint != self.config.datastore_fingerprint:
            raise FingerprintMismatch(
                f"the index was built from another datastore (fingerprint {self.config.datastore_fingerprint[:12]}"
                f"… vs {datastore.fingerprint[:12]}… of {datastore.path}); rebuild it with 'cora index build'"
            )


def build_index(
    datastore: Datastore, encoder, out: str | os.PathLike, encoder_name: str, factory: str = "auto",
    batch_size: int = 32, shard: tuple[int, int] | None = None, show_progress: bool = True, clean: bool = True,
    rerank_factor: int | None = None,
) -> DenseIndex | None:
    """Encode (all of, or one shard of) a datastore and, when every shard is done, build the index.

    With ``shard=(i, n)`` only that shard is encoded and ``None`` is returned; run :func:`merge_shards` (CLI:
    ``cora index merge``) once all n are done. Without it, this is shard 0/1 followed by the merge.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if encoder_name not in ("",) and Path(encoder_name).expanduser().is_dir():
        encoder_name = str(Path(encoder_name).expanduser().resolve())
    encode_shard(datastore, encoder, out, shard or (0, 1), batch_size=batch_size, show_progress=show_progress)
    if shard is not None:
        return None
    return merge_shards(out, datastore, factory, encoder_name, encoder.config, clean=clean,
                        rerank_factor=rerank_factor)


def update_index(
    folder: str | os.PathLike, datastore: Datastore, encoder, batch_size: int = 32, chunk: int = 2048,
    show_progress: bool = True,
) -> DenseIndex:
    """Add the rows a datastore gained since the index in ``folder`` was built (``cora datastore add``).

    The index must have been built (or last updated) from this datastore when it had exactly ``ntotal`` rows:
    ``datastore.prefix_fingerprint(ntotal)`` must equal the fingerprint the index records, otherwise the rows it
    holds are not the datastore's first rows and it is refused. Only rows ``[ntotal, len(datastore))`` are encoded;
    they go into the trained index as it is (an IVF index keeps its quantizer, so lists are not rebalanced) and, for
    a re-ranked index, onto the end of ``vectors.f16``. The config is then rewritten with the datastore's
    current fingerprint and size. Interrupted while encoding, it leaves the old index searchable; rerun it.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    index = DenseIndex.load(folder)
    cfg = index.config
    start, stop = cfg.ntotal, len(datastore)
    if datastore.fingerprint == cfg.datastore_fingerprint:
        logger.info("%s already holds all %d rows of %s; nothing to add", folder, stop, datastore.path)
        return index
    prefix = datastore.prefix_fingerprint(start) if stop > start else None
    if prefix != cfg.datastore_fingerprint:
        raise FingerprintMismatch(
            f"{folder} was built from a datastore whose {start} rows are not the first rows of {datastore.path} "
            f"(fingerprint {cfg.datastore_fingerprint[:12]}… is not one this datastore had at {start} rows): "
            "only passages appended with 'cora datastore add' can be added; rebuild with 'cora index build'")
    if asdict(encoder.config) != cfg.encoder_config or is_int8(encoder) != cfg.int8:
        raise CoraError(f"the encoder given differs from the one {folder} was built with (its pooling, prefixes or "
                        "int8 setting); new rows must be encoded the same way as the old ones")
    bar = tqdm(total=stop - start, desc="encode new rows", unit="psg", disable=not show_progress)

    def encoded():
        for batch in datastore.iter_batches(chunk, start=start, stop=stop):
            vecs = encoder.encode_passages(batch["title"], batch["text"], batch_size=batch_size)
            index.index.add(np.ascontiguousarray(vecs, dtype=np.float32))
            bar.update(len(vecs))
            yield vecs

    if cfg.rerank_factor > 0:
        append_vectors(folder / VECTORS_FILE, start, encoded(), cfg.dim)
    else:
        for _ in encoded():
            pass
    bar.close()
    if index.index.ntotal != stop:
        raise CoraError(f"updated index holds {index.index.ntotal} vectors for {stop} passages")
    cfg.ntotal, cfg.datastore_size, cfg.datastore_fingerprint = stop, stop, datastore.fingerprint
    cfg.datastore = str(datastore.path.resolve())
    if cfg.rerank_factor > 0:
        index.vectors = open_vectors(folder / VECTORS_FILE, stop, cfg.dim)
    # index.faiss then index.json, each replaced atomically: a kill before the first rename leaves the old index
    # intact (the appended rows lie beyond its ntotal); one between the two renames, a window of microseconds,
    # leaves a pair that load refuses by checksum.
    index.save(folder)
    logger.info("index %s: added rows %d..%d, now %d vectors", folder, start, stop, stop)
    return index



__all__ = ["DenseIndex", "IndexConfig", "build_index", "merge_shards", "encode_shard", "shard_range",
           "auto_factory", "auto_rerank_factor", "rerank", "update_index", "load_config"]
