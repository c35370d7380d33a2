"""``cora index build|merge|info``."""

from __future__ import annotations

import json

from cora.datastore import Datastore
from cora.index import DenseIndex, build_index, check_index_output, merge_shards, parse_shard


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
                   help="FAISS factory string: Flat, HNSW32, IVF4096,PQ48x8 ... 'auto' = Flat up to 200k passages, "
                        "HNSW32 up to 5M, IVF-PQ beyond (measured trade-offs in the README; default: auto)")
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
    m.add_argument("--factory", default="auto", help="FAISS factory string (default: auto)")
    m.add_argument("--keep-shards", action="store_true", help="keep shard embeddings after merging")
    m.set_defaults(func=_merge)

    i = isub.add_parser("info", help="print an index's saved configuration",
                        description="Print the configuration saved with an index (FAISS factory, encoder and its "
                                    "pooling/prefixes, datastore path and fingerprint, vector count) as JSON.")
    i.add_argument("path", help="index folder")
    i.set_defaults(func=_info)


def _build(args) -> int:
    from cora.models import Encoder

    shard = parse_shard(args.shard) if args.shard else None
    check_index_output(args.out, args.overwrite, inputs=[args.datastore])
    ds = Datastore(args.datastore)
    encoder = Encoder.from_pretrained(args.encoder, device=args.device)
    if args.int8:
        encoder.quantize_int8()
    index = build_index(ds, encoder, args.out, args.encoder, factory=args.factory, batch_size=args.batch_size,
                        shard=shard)
    if index is None:
        print(f"encoded shard {args.shard} into {args.out}/shards; run 'cora index merge' when all are done")
    else:
        print(f"index {args.out}: {len(index)} vectors, {index.config.factory}, dim {index.config.dim}")
    return 0


def _merge(args) -> int:
    from cora.models import encoder_config_for

    ds = Datastore(args.datastore)
    index = merge_shards(args.out, ds, args.factory, args.encoder, encoder_config_for(args.encoder),
                         clean=not args.keep_shards)
    print(f"index {args.out}: {len(index)} vectors, {index.config.factory}, dim {index.config.dim}")
    return 0


def _info(args) -> int:
    index = DenseIndex.load(args.path)
    print(json.dumps({"ntotal": len(index), **index.config.__dict__}, indent=2))
    return 0

