"""Dense index: encode a datastore in memory-bounded shards, then build a FAISS index from a factory string.

Layout of an index folder::

    index.json            IndexConfig: factory, encoder config, datastore fingerprint, counts
    index.faiss           the FAISS index; vector id = datastore row
    encoder/              the encoder (only for encoders that are not a registered name or hub id)
    shards/emb-00000-of-00002.npy   per-shard embeddings (kept until merged; delete with --clean)

Sharding: shard ``i`` of ``n`` covers rows ``[i*N//n, (i+1)*N//n)``. These ranges tile ``[0, N)`` exactly, so the
tail passages that a fixed-size split drops are always covered, and the merge step checks it. Each shard streams
its rows in chunks from the memory-mapped datastore into a memory-mapped ``.npy`` and records its progress, so an
interrupted shard resumes at its last finished chunk.
"""

from __future__ import annotations

import json
import logging
import math
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

INDEX_FILE, CONFIG_FILE, SHARD_DIR = "index.faiss", "index.json", "shards"


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


def auto_factory(n: int, dim: int) -> str:
    """The index type chosen for 'auto', from benchmarks/search.py on 2 CPU cores (docs/performance.md).

    * up to 200k vectors: Flat - exact; 13-32 ms per query at 100k, 1.5 KB per vector at 384 dims.
    * up to 5M: HNSW32 (efSearch 128) - 0.6 ms per query at 100k with recall@100 0.94 against Flat, but
      1.8 KB per vector (9 GB at 5M) and a build of ~20 s per 100k vectors.
    * beyond: IVF-PQ with dim/8-byte codes (~76 bytes per vector with ids), the only one that fits 40M passages
      in RAM, at a measured recall@100 of only 0.53 against Flat at 100k (nprobe 128): re-rank or shard first.
    """
    if n <= 200_000:
        return "Flat"
    if n <= 5_000_000:
        return "HNSW32"
    nlist = 1 << max(10, round(math.log2(4 * math.sqrt(n))))
    return f"IVF{nlist},PQ{dim // 8}x8"


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

    names = (CONFIG_FILE, INDEX_FILE, SHARD_DIR, "encoder")
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
) -> DenseIndex:
    """Build the FAISS index from every shard in ``out/shards``; refuses if rows are missing or mismatched."""
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
    config = IndexConfig(
        factory=factory, encoder=encoder_name, encoder_config=asdict(encoder_config),
        datastore=str(datastore.path.resolve()), datastore_fingerprint=datastore.fingerprint,
        datastore_size=len(datastore), dim=dim, ntotal=int(index.ntotal), int8=int8.pop(),
    )
    dense = DenseIndex(index, config)
    dense.save(out)
    if clean:
        for m in metas:
            for p in _shard_paths(out, m["shard"], n):
                p.unlink(missing_ok=True)
    return dense


class DenseIndex:
    """A FAISS inner-product index whose vector ids are datastore rows, plus its saved config."""

    def __init__(self, index, config: IndexConfig):
        self.index, self.config = index, config
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        import faiss

        for setter in (lambda: faiss.extract_index_ivf(self.index).__setattr__("nprobe", self.config.nprobe),):
            try:
                setter()
            except (RuntimeError, AttributeError):
                pass
        hnsw = getattr(self.index, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.config.hnsw_ef_search

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """[Q, D] float32 -> scores [Q, k'], rows [Q, k'] with k' = min(k, ntotal)."""
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

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
        return cls(index, config)

    def check_datastore(self, datastore: Datastore) -> None:
        if datastore.fingerprint != self.config.datastore_fingerprint:
            raise FingerprintMismatch(
                f"the index was built from another datastore (fingerprint {self.config.datastore_fingerprint[:12]}"
                f"… vs {datastore.fingerprint[:12]}… of {datastore.path}); rebuild it with 'cora index build'"
            )


def build_index(
    datastore: Datastore, encoder, out: str | os.PathLike, encoder_name: str, factory: str = "auto",
    batch_size: int = 32, shard: tuple[int, int] | None = None, show_progress: bool = True, clean: bool = True,
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
    return merge_shards(out, datastore, factory, encoder_name, encoder.config, clean=clean)


def load_encoder_config(cfg: IndexConfig) -> EncoderConfig:
    return EncoderConfig(**cfg.encoder_config)


__all__ = ["DenseIndex", "IndexConfig", "build_index", "merge_shards", "encode_shard", "shard_range",
           "auto_factory", "load_config"]
