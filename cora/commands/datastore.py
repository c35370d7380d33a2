"""``cora datastore build|add|info``."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
from pathlib import Path

from cora.datastore import FORMATS, Datastore, is_datastore, read_source
from cora.errors import CoraError
from cora.fileio import check_output

logger = logging.getLogger(__name__)

FORMATS_HELP = (
    "Formats (guessed from the file name, or --format):\n"
    "  jsonl  one passage per line: id, lang, title, text, group (group optional)\n"
    "  w100   DPR/CORA TSV: id, text, title [, lang]; header row optional\n"
    "  squad  SQuAD-format JSON (XQuAD, TyDi GoldP, JaQuAD, ...): each paragraph a passage; paragraphs\n"
    "         sharing question ids across parallel files (XQuAD) form one group\n"
    "  wiki   WikiExtractor --json output, chunked into ~100-word passages (characters for ja/zh/th/km)\n"
    "Give a source's language as FILE=LANG when the format has none (squad, wiki, w100 without a lang\n"
    "column), or for all sources with --lang.\n"
)
LINKS_HELP = (
    "\nLanguage links (wiki sources). WikiExtractor output carries no language links, so without them every\n"
    "article is a group of its own and answer projection and the CORA loop's link expansion find nothing.\n"
    "Wikipedia publishes them as SQL dumps beside the articles (dumps.wikimedia.org/{lang}wiki/{date}/):\n"
    "  --page-props dewiki-20240601-page_props.sql.gz   one per language: the group of each article becomes\n"
    "      its Wikidata id (Q64 for Berlin), the same in every language, so its versions share one group\n"
    "  --langlinks dewiki-20240601-langlinks.sql.gz     instead, where no Wikidata ids exist: the group is the\n"
    "      article's title in --title-lang (default en); that language's own articles need no dump\n"
    "The language is read from the dump's name ({lang}wiki-...), or give it as DUMP=LANG. Dumps are read\n"
    "streaming (bounded memory); datastore.json records, per language, how many passages got a group.\n"
)


def register(sub) -> None:
    p = sub.add_parser("datastore", help="build, grow or inspect a passage datastore",
                       description="Build a memory-mapped multilingual passage datastore, append passages to it, or "
                       "print its statistics.")
    dsub = p.add_subparsers(dest="datastore_command", metavar="<action>", required=True)

    b = dsub.add_parser(
        "build", help="build a datastore from passage files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a datastore from one or more sources. " + FORMATS_HELP + LINKS_HELP,
        epilog="examples:\n"
               "  cora datastore build xquad.de.json=de xquad.en.json=en --out xquad-ds --no-titles\n"
               "  cora datastore build wiki-de/*/wiki_*=de wiki-en/*/wiki_*=en --format wiki --out wiki-ds \\\n"
               "      --page-props dewiki-20240601-page_props.sql.gz --page-props enwiki-20240601-page_props.sql.gz",
    )
    b.add_argument("sources", nargs="+", metavar="FILE[=LANG]", help="passage files (.jsonl, .tsv, .json, .gz)")
    b.add_argument("--out", required=True, help="datastore folder to create")
    _add_source_options(b)
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing datastore (only a folder that holds a cora datastore and nothing else)")
    b.set_defaults(func=_build)

    a = dsub.add_parser(
        "add", help="append passages to an existing datastore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Append the passages of new sources to DATASTORE, validated as 'build' does; an id already in the\n"
            "datastore is an error naming the file and line of the new one. The new passages go to a new file and\n"
            "the datastore changes only once all of them were read and checked: interrupted or refused, it is left\n"
            "as it was. Afterwards it is the datastore 'build' would make from the old sources and then the new\n"
            "(same rows, counts and fingerprint); an index built before can catch up with\n"
            "'cora index update', which encodes only the new rows.\n\n" + FORMATS_HELP + LINKS_HELP
        ),
        epilog="example: cora datastore add wiki-ds wiki-sw/*/wiki_*=sw --format wiki "
               "--page-props swwiki-20240601-page_props.sql.gz",
    )
    a.add_argument("datastore", help="datastore folder to grow (from 'cora datastore build')")
    a.add_argument("sources", nargs="+", metavar="FILE[=LANG]", help="passage files (.jsonl, .tsv, .json, .gz)")
    _add_source_options(a)
    a.set_defaults(func=_add)

    i = dsub.add_parser("info", help="passage counts per language and group statistics",
                        description="Print a datastore's size, passages per language and groups.")
    i.add_argument("path", help="datastore folder")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=_info)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="input format (default: by name)")
    p.add_argument("--lang", help="language of every source that has none of its own")
    p.add_argument("--no-titles", action="store_true",
                   help="drop SQuAD article titles (XQuAD's are English in every language)")
    p.add_argument("--page-props", action="append", default=[], metavar="DUMP[=LANG]",
                   help="a language's page_props SQL dump ({lang}wiki-DATE-page_props.sql.gz); its articles are "
                        "grouped by Wikidata id (repeat once per language; wiki sources only)")
    p.add_argument("--langlinks", action="append", default=[], metavar="DUMP[=LANG]",
                   help="a language's langlinks SQL dump ({lang}wiki-DATE-langlinks.sql.gz), instead of "
                        "--page-props: its articles are grouped by their --title-lang title (repeatable)")
    p.add_argument("--title-lang", default="en",
                   help="with --langlinks, the language whose titles name the groups (default: en)")


def _split_source(spec: str, default_lang: str | None) -> tuple[str, str | None]:
    path, sep, lang = spec.rpartition("=")
    if sep and lang and "/" not in lang:
        return path, lang
    return spec, default_lang


_DUMP_NAME = re.compile(r"([a-z][a-z0-9_]*?)wiki-")


def _dump_lang(spec: str, option: str) -> tuple[str, Path]:
    """``DUMP=LANG``, or a dump named ``{lang}wiki-...`` (Wikimedia writes zh_yue for zh-yue)."""
    path, lang = _split_source(spec, None)
    if lang is None:
        m = _DUMP_NAME.match(Path(path).name)
        if m is None:
            raise CoraError(f"{option} {spec}: cannot tell the language from the file name (expected "
                            "{lang}wiki-DATE-...sql.gz); give it as DUMP=LANG")
        lang = m.group(1).replace("_", "-")
    return lang, Path(path)


def _link_dumps(args):
    """The language-link dumps of the command line, checked against its sources; None without any."""
    from cora.wikidump import LinkDumps, WikiLinks

    kinds = {}
    for option, specs in (("--page-props", args.page_props), ("--langlinks", args.langlinks)):
        kinds[option] = {}
        for spec in specs:
            lang, path = _dump_lang(spec, option)
            if lang in kinds[option]:
                raise CoraError(f"{option}: two dumps for '{lang}' ({kinds[option][lang]} and {path})")
            kinds[option][lang] = path
    dumps = LinkDumps(kinds["--page-props"], kinds["--langlinks"], args.title_lang)
    if not dumps:
        return None
    if args.format != "wiki":
        raise CoraError("--page-props and --langlinks give the groups of WikiExtractor articles: pass --format wiki")
    source_langs = {_split_source(s, args.lang)[1] for s in args.sources}
    unused = sorted((set(dumps.page_props) | set(dumps.langlinks)) - source_langs)
    if unused and None not in source_langs:  # a wiki source without a language is refused by read_source
        raise CoraError(f"dumps given for {', '.join(unused)} but no source in that language (sources are in "
                        f"{', '.join(sorted(source_langs))}); check the language codes")
    return WikiLinks(dumps, show_progress=True)


def _readers(args, links):
    readers, paths = [], []
    for spec in args.sources:
        path, lang = _split_source(spec, args.lang)
        paths.append(path)
        readers.append(read_source(path, args.format, lang, keep_titles=not args.no_titles, links=links))
    return itertools.chain.from_iterable(readers), paths


def _extra_info(links):
    if links is None:
        return None

    def info():
        links.log_report()
        return {"links": links.report()}

    return info


def _build(args) -> int:
    links = _link_dumps(args)
    passages, paths = _readers(args, links)
    check_output(args.out, overwrite=args.overwrite, inputs=paths, kind="datastore", is_kind=is_datastore)
    ds = Datastore.build(passages, args.out, overwrite=args.overwrite, sources=list(args.sources),
                         extra_info=_extra_info(links))
    _print_info(ds.info())
    return 0


def _add(args) -> int:
    old = Datastore(args.datastore)
    links = _link_dumps(args)
    had = (old.meta.get("links") or {}).get("source")
    if links is not None and had:
        new = "page_props" if links.dumps.page_props else "langlinks"
        if new != had:
            raise CoraError(f"{args.datastore}'s groups come from {had} dumps: give --{had.replace('_', '-')} "
                            f"dumps for the new sources too (a page grouped by its Wikidata id never meets one "
                            "grouped by its title)")
    elif links is None and had and args.format == "wiki":
        logger.warning("%s's groups come from %s dumps, but none were given: the new articles get no language "
                       "links (pass --%s)", args.datastore, had, had.replace("_", "-"))
    passages, paths = _readers(args, links)
    ds = Datastore.add(args.datastore, passages, sources=list(args.sources), extra_info=_extra_info(links))
    print(f"added       {len(ds) - len(old)} passages")
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
    print(f"passages    {info['size']}" + (f" in {len(info['segments'])} segments (built, then added to)"
                                           if len(info.get("segments", [])) > 1 else ""))
    print(f"groups      {info['groups']} ({info['multi_passage_groups']} with more than one passage)")
    print(f"fingerprint {info['fingerprint'][:16]}…")
    links = (info.get("links") or {}).get("languages", {})
    if links:
        source = info["links"].get("source")
        print(f"lang  passages  linked ({source} dumps)")
        for lang, n in info["languages"].items():
            c = links.get(lang)
            share = f"{c['linked']:>8} ({100 * c['linked'] / c['passages']:.1f}%)" if c and c["passages"] else ""
            print(f"{lang:<5} {n:>8}  {share}")
    else:
        print("lang  passages")
        for lang, n in info["languages"].items():
            print(f"{lang:<5} {n:>8}")
