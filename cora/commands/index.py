"""``cora index build|merge|update|info``."""

from __future__ import annotations

import json
from pathlib import Path

from cora.datastore import Datastore
from cora.index import (
    AUTO_FLAT_MAX,
    AUTO_NPROBE,
    AUTO_RERANK_FACTOR,
    CONFIG_FILE,
    DenseIndex,
    IndexConfig,
    check_index_output,
    merge_shards,
    parse_shard,
)

FACTORY_HELP = ("FAISS factory string: Flat, HNSW32, IVF4096,PQ96x4fsr ... 'auto' = Flat up to "
                f"{AUTO_FLAT_MAX:,} passages, beyond that IVF-PQ re-ranked against fp16 vectors on disk "
                "(measured trade-offs in docs/search.md; default: auto)")
RERANK_HELP = ("re-rank N*k candidates of the FAISS index by exact inner product against fp16 copies of the "
               "vectors kept on disk (vectors.f16, memory-mapped) and return the top k: restores the recall that "
               "PQ codes lose, for 2 bytes per dimension of disk and no extra process memory. 0 = off. Default: "
               f"{AUTO_RERANK_FACTOR} (with nprobe {AUTO_NPROBE}) when --factory auto picks IVF-PQ, else 0")


def register(sub) -> None:
    p = sub.add_parser("index", help="encode a datastore into a FAISS index",
                       description="Encode a datastore with a text encoder and build a FAISS inner-product index.")
    isub = p.add_subparsers(dest="index_command", metavar="<action>", required=True)

    b = isub.add_parser(
        "build", help="encode passages and build the index (optionally one shard)",
        description=(
            "Encode every passage of DATASTORE with ENCODER and write a FAISS index to --out. With --shard i/n "
            "only rows [i*N/n, (i+1)*N/n) are encoded (run the n shards as separate processes or machines, then "
            "'cora index merge'). An interrupted encoding resumes where it stopped when rerun."
        ),
    )
    b.add_argument("--datastore", required=True, help="datastore folder (from 'cora datastore build')")
    b.add_argument("--encoder", default="me5-small",
                   help="registered name (me5-small), Hugging Face id, or a trained encoder folder (default: me5-small)")
    b.add_argument("--out", required=True, help="index folder")
    b.add_argument("--factory", default="auto",
                   help=FACTORY_HELP)
    b.add_argument("--rerank-factor", type=int, default=None, metavar="N", help=RERANK_HELP)
    b.add_argument("--shard", help="encode only shard i of n, e.g. 0/4")
    b.add_argument("--batch-size", type=int, default=32, help="passages per forward pass (default 32)")
    b.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace a finished index in --out (a folder of unfinished shards is resumed without it)")
    b.add_argument("--int8", action="store_true",
                   help="CPU only: int8 dynamic quantisation of the encoder's linear layers (faster; see the "
                        "docs/performance.md for the measured speed-up and recall cost)")
    b.set_defaults(func=_build)

    m = isub.add_parser("merge", help="build the index from all encoded shards",
                        description="Check that shards 0..n-1 cover every passage exactly once, then build the index "
                                    "(training IVF/PQ on a sample and adding vectors in chunks).")
    m.add_argument("--datastore", required=True, help="datastore folder")
    m.add_argument("--out", required=True, help="index folder holding shards/")
    m.add_argument("--encoder", default="me5-small", help="the encoder the shards were made with")
    m.add_argument("--factory", default="auto", help=FACTORY_HELP)
    m.add_argument("--rerank-factor", type=int, default=None, metavar="N", help=RERANK_HELP)
    m.add_argument("--keep-shards", action="store_true", help="keep shard embeddings after merging")
    m.set_defaults(func=_merge)

    u = isub.add_parser(
        "update", help="add the passages appended to a datastore since the index was built",
        description=(
            "After 'cora datastore add' appended passages to DATASTORE, encode only the new rows and add them to "
            "the index in place (an IVF index keeps its trained quantizer; a re-ranked index's vectors.f16 grows). "
            "The index must have been built from this datastore before the additions: its recorded fingerprint "
            "must be the one the datastore had at the index's size, otherwise it is refused. The encoder, its "
            "pooling/prefixes and int8 setting are the ones saved with the index. Many additions to an IVF index "
            "skew its lists towards the old data; rebuild it when the datastore has grown several-fold."
        ),
    )
    u.add_argument("--index", required=True, help="index folder (from 'cora index build')")
    u.add_argument("--datastore", required=True, help="the datastore the index was built from, grown since")
    u.add_argument("--batch-size", type=int, default=32, help="passages per forward pass (default 32)")
    u.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    u.set_defaults(func=_update)

    i = isub.add_parser("info", help="print an index's saved configuration",
                        description="Print the configuration saved with an index (FAISS factory, encoder and its "
                                    "pooling/prefixes, datastore path and fingerprint, vector count) as JSON.")
    i.add_argument("path", help="index folder")
    i.set_defaults(func=_info)


def _build(args) -> int:
    from cora.distributed import build_index_on_ranks
    from cora.encoder import Encoder

    shard = parse_shard(args.shard) if args.shard else None
    check_index_output(args.out, args.overwrite, inputs=[args.datastore])
    ds = Datastore(args.datastore)
    encoder = Encoder.from_pretrained(args.encoder, device=args.device)
    if args.int8:
        encoder.quantize_int8()
    index = build_index_on_ranks(ds, encoder, args.out, args.encoder, factory=args.factory,
                                 batch_size=args.batch_size, shard=shard,  # under torchrun: one shard per process
                                 rerank_factor=args.rerank_factor)
    if index is None:
        print(f"encoded shard {args.shard} into {args.out}/shards; run 'cora index merge' when all are done")
    else:
        print(f"index {args.out}: {len(index)} vectors, {index.config.factory}, dim {index.config.dim}")
    return 0


def _merge(args) -> int:
    from cora.encoder import encoder_config_for

    ds = Datastore(args.datastore)
    index = merge_shards(args.out, ds, args.factory, args.encoder, encoder_config_for(args.encoder),
                         clean=not args.keep_shards, rerank_factor=args.rerank_factor)
    print(f"index {args.out}: {len(index)} vectors, {index.config.factory}, dim {index.config.dim}")
    return 0


def _update(args) -> int:
    from cora.config import EncoderConfig
    from cora.encoder import Encoder
    from cora.errors import CoraError
    from cora.index import load_config, update_index

    ds = Datastore(args.datastore)
    config_path = Path(args.index) / CONFIG_FILE  # read alone: update_index loads (and checksums) the index once
    if not config_path.exists():
        raise CoraError(f"{args.index} is not a cora index (no {CONFIG_FILE}); build one with 'cora index build'")
    cfg = load_config(IndexConfig, config_path)
    encoder = Encoder.from_pretrained(cfg.encoder, device=args.device)
    saved = EncoderConfig(**cfg.encoder_config)
    if encoder.config != saved:  # built with explicit pooling/prefix overrides: encode the new rows the same way
        encoder = Encoder(encoder.model, encoder.tokenizer, saved, args.device)
    if cfg.int8:
        encoder.quantize_int8()
    before = cfg.ntotal
    index = update_index(args.index, ds, encoder, batch_size=args.batch_size)
    print(f"index {args.index}: {len(index) - before} vectors added, {len(index)} in all, {index.config.factory}")
    return 0


def _info(args) -> int:
    index = DenseIndex.load(args.path)
    print(json.dumps({"ntotal": len(index), **index.config.__dict__}, indent=2))
    return 0

