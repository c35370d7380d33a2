"""``cora demo``: the Quickstart's main job on the embedded sample datastore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cora.errors import CoraError

# Package data, so that the demo runs from a wheel install as well as from a checkout.
SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="answer the sample questions, in 12 languages, from the sample datastore, with cited passages",
        description=(
            "Build a datastore and index from the sample passages shipped in the package (cora/resources/sample: "
            "6 topics in 8 languages, language versions linked by group) with the offline me5-small encoder, bundle them with "
            "the shipped offline reader into a pipeline, and answer the sample questions (asked in 12 "
            "languages). Each answer is printed with the passage it cites and whether it was projected through "
            "a language link. Everything runs offline; the first run converts me5-small (about 20 s)."
        ),
    )
    p.add_argument("--data", default=str(SAMPLE),
                   help="folder with passages.jsonl and questions.jsonl (default: the shipped sample)")
    p.add_argument("--out", help="where to put the datastore, index and pipeline (default: $CORA_HOME/demo, "
                                 "replaced on every run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the datastore, index and pipeline already in --out (only cora's own folders)")
    p.add_argument("--encoder", default="me5-small", help="encoder (default me5-small)")
    p.add_argument("--query-encoder", default="mdpr-me5-small",
                   help="query tower over the --encoder index (default: the shipped mdpr-me5-small, used for "
                        "questions in languages the sample datastore lacks; 'none' to search with --encoder alone)")
    p.add_argument("--reader", default="me5-small-reader", help="reader folder or shipped name (me5-small-reader)")
    p.add_argument("--k", type=int, default=5, help="passages read per question (default 5)")
    p.set_defaults(func=run_demo)


@dataclass
class DemoRun:
    """What ``cora demo`` built and answered: the folders, the questions, the answers and each answer's token F1
    against the expected answers (None for a question without one)."""

    out: Path
    datastore: object
    pipeline: object
    questions: list
    answers: list
    f1: list[float | None]

    @property
    def mean_f1(self) -> float:
        scored = [f for f in self.f1 if f is not None]
        return 100 * sum(scored) / len(scored) if scored else float("nan")


def demo(data: Path = SAMPLE, out: Path | None = None, overwrite: bool = False, encoder: str = "me5-small",
         query_encoder: str | None = "mdpr-me5-small", reader: str = "me5-small-reader", k: int = 5) -> DemoRun:
    """Build the datastore, index and pipeline from ``data`` under ``out`` ($CORA_HOME/demo by default, rebuilt
    every time) and answer its questions."""
    from cora.datastore import Datastore, is_datastore, read_jsonl
    from cora.encoder import Encoder, cora_home
    from cora.evaluation.xor import score_one
    from cora.fileio import check_output
    from cora.index import build_index, check_index_output
    from cora.pipeline import PIPELINE_FILE, Pipeline
    from cora.questions import read_questions

    data = Path(data)
    if not (data / "passages.jsonl").exists():
        raise CoraError(f"{data} has no passages.jsonl; pass --data a folder holding passages.jsonl and "
                        "questions.jsonl (the default is the sample shipped with cora)")
    replace = overwrite or out is None  # the default folder is cora's own, rebuilt on every run
    out = Path(out) if out is not None else cora_home() / "demo"
    check_output(out / "datastore", overwrite=replace, inputs=[data], kind="datastore", is_kind=is_datastore)
    check_index_output(out / "index", replace, inputs=[data])
    check_output(out / "pipeline" / PIPELINE_FILE, overwrite=replace, inputs=[data])
    ds = Datastore.build(read_jsonl(data / "passages.jsonl"), out / "datastore", overwrite=replace,
                         sources=[str(data / "passages.jsonl")])
    build_index(ds, Encoder.from_pretrained(encoder), out / "index", encoder, factory="Flat", show_progress=False)
    Pipeline.create(out / "pipeline", out / "index", reader, k=k, query_encoder=query_encoder)
    pipeline = Pipeline.from_pretrained(out / "pipeline")
    questions = read_questions(data / "questions.jsonl")
    answers = pipeline.answer_batch([q.question for q in questions], [q.lang for q in questions])
    f1 = [score_one(a.text, q.answers, q.lang, "fixed")[0] if q.answers else None
          for q, a in zip(questions, answers, strict=True)]
    return DemoRun(out, ds, pipeline, questions, answers, f1)


def run_demo(args) -> int:
    query = None if str(args.query_encoder).lower() == "none" else args.query_encoder
    run = demo(Path(args.data), Path(args.out) if args.out else None, args.overwrite, args.encoder, query,
               args.reader, args.k)
    ds, questions = run.datastore, run.questions
    print(f"\nsample datastore: {len(ds)} passages in {len(ds.languages)} languages "
          f"({', '.join(ds.languages)}); {len(questions)} questions in "
          f"{len({q.lang for q in questions})} languages; retrieval {args.encoder}"
          + (f" + query tower {query}" if query else "") + f"; reader {args.reader}, k={args.k}\n")
    for q, a, f1 in zip(questions, run.answers, run.f1, strict=True):
        print(f"[{q.lang}] {q.question}")
        print(f"   answer: {a.text}" + ("   (projected through a language link)" if a.projected else ""))
        for ev in a.evidence:
            print(f"   {ev.role}: [{ev.lang}] {ev.passage_id} \"{_snippet(ev.text, ev.start, ev.end)}\"")
        if f1 is not None:
            print(f"   expected: {' | '.join(q.answers)}   (token F1 {100 * f1:.0f})")
        print()
    if any(f is not None for f in run.f1):
        print(f"mean token F1 against the expected answers: {run.mean_f1:.1f} over "
              f"{sum(f is not None for f in run.f1)} questions")
    print(f"index saved in {run.out / 'index'} (datastore {run.out / 'datastore'})")
    print(f"pipeline saved in {run.out / 'pipeline'}: cora answer --pipeline {run.out / 'pipeline'} "
          "--questions Q.jsonl --out PRED.json")
    return 0


def _snippet(text: str, start: int | None, end: int | None, width: int = 50) -> str:
    """The cited passage around the answer span, the span marked with [[ ]] (by characters: CJK has no spaces)."""
    if start is None or end is None:
        return text[: 2 * width] + ("…" if len(text) > 2 * width else "")
    lo, hi = max(0, start - width), min(len(text), end + width)
    return (("…" if lo else "") + text[lo:start] + "[[" + text[start:end] + "]]" + text[end:hi]
            + ("…" if hi < len(text) else ""))
