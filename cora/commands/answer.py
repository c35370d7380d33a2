"""``cora pipeline create`` and ``cora answer``."""

from __future__ import annotations

import json

from cora.errors import CoraError


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="bundle an index and a reader into a pipeline folder",
                       description="Create a pipeline folder (pipeline.json) that bundles an index (with its "
                                   "datastore and encoder) and a reader, for 'cora answer' and the Python API.")
    psub = p.add_subparsers(dest="pipeline_command", metavar="<action>", required=True)
    c = psub.add_parser("create", help="write pipeline.json",
                        description="Write DIR/pipeline.json pointing at an index folder and a reader folder.")
    c.add_argument("--index", required=True, help="index folder")
    c.add_argument("--reader", default="me5-small-reader",
                   help="reader folder (extractive or seq2seq), or the shipped offline reader 'me5-small-reader' "
                        "(the default)")
    c.add_argument("--query-encoder",
                   help="encode questions with this encoder instead of the index's own: a query tower that shares "
                        "the index's passage tower, e.g. the shipped 'mdpr-me5-small' over a me5-small index")
    c.add_argument("--out", required=True, help="pipeline folder")
    c.add_argument("--k", type=int, default=3, help="passages read per question (default 3, chosen on dev sets: docs/reader.md)")
    c.add_argument("--overwrite", action="store_true", help="replace the pipeline.json of an existing --out")
    c.add_argument("--no-projection", action="store_true", help="do not project answers through language links")
    c.add_argument("--hybrid", action="store_true",
                   help="fuse BM25 in for questions whose language the datastore holds (off by default: on XQuAD dev "
                        "it raised recall@1 but lowered answer F1, see docs/retrieval.md)")
    c.set_defaults(func=_create)

    a = sub.add_parser(
        "answer", help="answer a file of questions (XOR-TyDi or MKQA prediction format)",
        description="Answer every question of a XOR-TyDi-format JSONL file in the question's language and write "
                    "the official prediction format {id: answer} (or MKQA's, --format mkqa). --details adds "
                    "evidence and scores per question.",
    )
    a.add_argument("--pipeline", required=True, help="pipeline folder")
    a.add_argument("--questions", required=True, help="questions JSONL ({id, question, lang?})")
    a.add_argument("--out", required=True,
                   help="predictions to write: {id: answer} JSON, or MKQA JSONL with --format mkqa")
    a.add_argument("--format", choices=("xor", "mkqa"), default="xor",
                   help="xor (default): the XOR-TyDi prediction JSON {id: answer}. mkqa: MKQA's prediction JSONL "
                        "{example_id, prediction, binary_answer, no_answer_prob}, no_answer_prob = 1 - the reader's "
                        "probability of its span, for 'cora evaluate mkqa'")
    a.add_argument("--details", help="also write one JSON line per question with evidence and scores")
    a.add_argument("--overwrite", action="store_true", help="replace --out and --details if they exist")
    a.add_argument("--k", type=int, help="passages read per question (default: the pipeline's)")
    a.add_argument("--batch-size", type=int, default=32,
                   help="questions retrieved and read together (default 32; 1 = one at a time)")
    a.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="'auto' (default): bf16 on GPUs and on CPUs with native bf16, else fp32")
    a.add_argument("--device", help="cpu or cuda")
    a.set_defaults(func=_answer)


def _create(args) -> int:
    from cora.fileio import check_output
    from cora.pipeline import PIPELINE_FILE, Pipeline

    check_output(f"{args.out}/{PIPELINE_FILE}", overwrite=args.overwrite)
    Pipeline.create(args.out, args.index, args.reader, k=args.k, projection=not args.no_projection,
                    query_encoder=args.query_encoder, hybrid=args.hybrid)
    print(f"pipeline written to {args.out}")
    return 0


def _answer(args) -> int:
    from tqdm.auto import tqdm

    from cora.evaluation.mkqa import prediction_record
    from cora.fileio import atomic_write_json, atomic_write_text, check_output
    from cora.pipeline import Pipeline
    from cora.questions import read_questions

    for out in (args.out, args.details):
        if out:
            check_output(out, overwrite=args.overwrite, inputs=[args.questions, args.pipeline])
    questions = read_questions(args.questions)
    if not questions:
        raise CoraError(f"{args.questions}: no questions")
    if args.batch_size < 1:
        raise CoraError(f"--batch-size must be at least 1, got {args.batch_size}")
    pipeline = Pipeline.from_pretrained(args.pipeline, device=args.device, precision=args.precision)
    preds, details, mkqa_lines = {}, [], []
    bar = tqdm(total=len(questions), desc="answer", unit="q")
    for i in range(0, len(questions), args.batch_size):  # retrieval and reading batched across questions
        chunk = questions[i : i + args.batch_size]
        answers = pipeline.answer_batch([q.question for q in chunk], [q.lang for q in chunk], args.k)
        for q, answer in zip(chunk, answers, strict=True):
            preds[q.id] = answer.text
            mkqa_lines.append(prediction_record(q.id, answer, answer.lang))
            details.append(json.dumps({"id": q.id, "question": q.question, **answer.to_dict()}, ensure_ascii=False))
        bar.update(len(chunk))
    bar.close()
    if args.format == "mkqa":  # one line per question, in question order (ml-mkqa breaks ties by file order)
        atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mkqa_lines))
    else:
        atomic_write_json(args.out, preds)
    if args.details:
        atomic_write_text(args.details, "\n".join(details) + "\n")
    print(f"wrote {len(preds)} answers to {args.out}")
    return 0
