"""``cora retrieve``: top-k passages for a file of questions."""

from __future__ import annotations

import json

from cora.errors import CoraError


def register(sub) -> None:
    p = sub.add_parser(
        "retrieve", help="retrieve passages for questions (JSONL in, JSONL out)",
        description=(
            "Retrieve the top-k passages for every question of a XOR-TyDi-format JSONL file "
            '({"id","question","lang","answers"}; lang and answers optional) and write one JSON line per '
            'question: {"id","question","lang","hits":[{passage_id,score,rank,lang,group,title,text}]}.'
        ),
    )
    p.add_argument("--index", required=True, help="index folder (from 'cora index build')")
    p.add_argument("--questions", required=True, help="questions JSONL")
    p.add_argument("--k", type=int, default=10, help="passages per question (default 10)")
    p.add_argument("--out", required=True, help="hits JSONL to write")
    p.add_argument("--datastore", help="datastore folder, if it moved since the index was built")
    p.add_argument("--query-encoder",
                   help="encode questions with this encoder instead of the index's own; it must share the index's "
                        "passage tower (e.g. 'mdpr-me5-small', a LoRA query tower, over a me5-small index)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-text", action="store_true", help="omit passage text from the output")
    p.add_argument("--hybrid", action="store_true",
                   help="fuse BM25 into the ranking of questions whose language the datastore holds (RRF)")
    p.add_argument("--device", help="cpu or cuda")
    p.set_defaults(func=_retrieve)


def _retrieve(args) -> int:
    from cora.fileio import atomic_write_text, check_output
    from cora.languages import detect_language
    from cora.questions import read_questions
    from cora.retriever import Retriever

    if args.k < 1:
        raise CoraError(f"--k must be at least 1, got {args.k}")
    check_output(args.out, overwrite=args.overwrite, inputs=[args.questions, args.index, args.datastore])
    questions = read_questions(args.questions)
    retriever = Retriever.from_pretrained(args.index, datastore=args.datastore, device=args.device,
                                          query_encoder=args.query_encoder)
    if args.hybrid:
        retriever.enable_hybrid()
    hits = retriever.search_batch([q.question for q in questions], k=args.k, langs=[q.lang for q in questions])
    lines = []
    for q, hs in zip(questions, hits, strict=True):
        lines.append(json.dumps({
            "id": q.id, "question": q.question, "lang": q.lang or detect_language(q.question),
            "hits": [h.to_dict(with_text=not args.no_text) for h in hs],
        }, ensure_ascii=False))
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} questions x top-{args.k} to {args.out}")
    return 0
