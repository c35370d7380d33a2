"""``cora demo``: the Quickstart's main job on the embedded sample datastore."""

from __future__ import annotations

from pathlib import Path

from cora.errors import CoraError

REPO_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="build the sample index and show cross-lingual retrieval for sample questions",
        description=(
            "Build a datastore and index from the sample passages shipped in data/sample (6 topics in 8 "
            "languages, language versions linked by group) with the offline me5-small encoder, then retrieve "
            "passages for the sample questions, asked in many languages, and print the top hits with their "
            "language. Everything runs offline; the first run converts me5-small (about 20 s)."
        ),
    )
    p.add_argument("--data", default=str(REPO_SAMPLE), help="folder with passages.jsonl and questions.jsonl")
    p.add_argument("--out", help="where to put the datastore and index (default: $CORA_HOME/demo)")
    p.add_argument("--encoder", default="me5-small", help="encoder (default me5-small)")
    p.add_argument("--k", type=int, default=3, help="hits to show per question (default 3)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from cora.datastore import Datastore, read_jsonl
    from cora.index import DenseIndex, build_index
    from cora.models import Encoder, cora_home
    from cora.questions import read_questions
    from cora.retriever import Retriever

    data = Path(args.data)
    if not (data / "passages.jsonl").exists():
        raise CoraError(f"{data} has no passages.jsonl; pass --data pointing at data/sample of a cora checkout")
    out = Path(args.out) if args.out else cora_home() / "demo"
    ds = Datastore.build(read_jsonl(data / "passages.jsonl"), out / "datastore", overwrite=True,
                         sources=[str(data / "passages.jsonl")])
    encoder = Encoder.from_pretrained(args.encoder)
    build_index(ds, encoder, out / "index", args.encoder, factory="Flat", show_progress=False)
    retriever = Retriever(encoder, DenseIndex.load(out / "index"), ds)
    questions = read_questions(data / "questions.jsonl")
    hits = retriever.search_batch([q.question for q in questions], k=args.k)
    print(f"\nsample datastore: {len(ds)} passages in {len(ds.languages)} languages "
          f"({', '.join(ds.languages)}); index in {out}\n")
    for q, hs in zip(questions, hits, strict=True):
        other = sum(h.lang != q.lang for h in hs)
        print(f"[{q.lang}] {q.question}   ({other} of {len(hs)} hits in another language)")
        for h in hs:
            snippet = h.text if len(h.text) <= 90 else h.text[:89] + "…"  # by characters: CJK has no spaces
            print(f"   {h.rank}. [{h.lang}] {h.title} ({h.score:.3f}) {snippet}")
        print()
    return 0

