"""``cora datastore build|info``."""

from __future__ import annotations

import argparse
import itertools
import json

from cora.datastore import FORMATS, Datastore, is_datastore, read_source
from cora.fileio import check_output


def register(sub) -> None:
    p = sub.add_parser("datastore", help="build or inspect a passage datastore",
                       description="Build a memory-mapped multilingual passage datastore, or print its statistics.")
    dsub = p.add_subparsers(dest="datastore_command", metavar="<action>", required=True)

    b = dsub.add_parser(
        "build", help="build a datastore from passage files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build a datastore from one or more sources. Formats (guessed from the file name, or --format):\n"
            "  jsonl  one passage per line: id, lang, title, text, group (group optional)\n"
            "  w100   DPR/CORA TSV: id, text, title [, lang]; header row optional\n"
            "  squad  SQuAD-format JSON (XQuAD, TyDi GoldP, JaQuAD, ...): each paragraph a passage; paragraphs\n"
            "         sharing question ids across parallel files (XQuAD) form one group\n"
            "  wiki   WikiExtractor --json output, chunked into ~100-word passages (characters for ja/zh/th/km)\n"
            "Give a source's language as FILE=LANG when the format has none (squad, wiki, w100 without a lang\n"
            "column), or for all sources with --lang."
        ),
        epilog="example: cora datastore build xquad.de.json=de xquad.en.json=en --out xquad-ds --no-titles",
    )
    b.add_argument("sources", nargs="+", metavar="FILE[=LANG]", help="passage files (.jsonl, .tsv, .json, .gz)")
    b.add_argument("--out", required=True, help="datastore folder to create")
    b.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="input format (default: by name)")
    b.add_argument("--lang", help="language of every source that has none of its own")
    b.add_argument("--no-titles", action="store_true",
                   help="drop SQuAD article titles (XQuAD's are English in every language)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing datastore (only a folder that holds a cora datastore and nothing else)")
    b.set_defaults(func=_build)

    i = dsub.add_parser("info", help="passage counts per language and group statistics",
                        description="Print a datastore's size, passages per language and groups.")
    i.add_argument("path", help="datastore folder")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=_info)


def _split_source(spec: str, default_lang: str | None) -> tuple[str, str | None]:
    path, sep, lang = spec.rpartition("=")
    if sep and lang and "/" not in lang:
        return path, lang
    return spec, default_lang


def _build(args) -> int:
    readers, paths = [], []
    for spec in args.sources:
        path, lang = _split_source(spec, args.lang)
        paths.append(path)
        readers.append(read_source(path, args.format, lang, keep_titles=not args.no_titles))
    check_output(args.out, overwrite=args.overwrite, inputs=paths, kind="datastore", is_kind=is_datastore)
    ds = Datastore.build(itertools.chain.from_iterable(readers), args.out, overwrite=args.overwrite,
                         sources=list(args.sources))
    _print_info(ds.info())
    return 0


def _info(args) -> int:
    info = Datastore(args.path).info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    print(f"datastore   {info['path']}")
    print(f"passages    {info['size']}")
    print(f"groups      {info['groups']} ({info['multi_passage_groups']} with more than one passage)")
    print(f"fingerprint {info['fingerprint'][:16]}…")
    print("lang  passages")
    for lang, n in info["languages"].items():
        print(f"{lang:<5} {n:>8}")
