"""Reproduce CORA (Asai et al., NeurIPS 2021) on XOR-TyDi QA and MKQA, from CORA's released files to the XOR-Full dev
table, with cora's commands. Every stage is one command (``--dry-run`` prints them all); a stage whose output exists
is skipped, and an interrupted one resumes when the recipe is rerun (training from its last checkpoint, index
encoding from its last chunk). Layout under --out:

    reproduce_config.json  this run's options         stages/<stage>.json  the command of each finished stage
    datastore/             the passages               questions/           train.jsonl [, mkqa.jsonl]
    mdpr/                  mDPR run (best/: encoder)  index/               datastore/ encoded by mdpr/best
    retrieval/             train.jsonl, xor_dev.jsonl mgen-data/           train.source, train.target
    mgen/                  mGEN run (best/: reader)   pipeline/            index + mGEN, top --read-k, no projection
    answers/               xor_dev.json, mkqa.json    reports/             xor_dev.json, mkqa.json, xor_dev_retrieval.json
    results.md             CORA's published XOR-Full dev numbers beside this run's

Stages: datastore -> [mkqa-convert] -> questions -> mdpr -> index -> retrieve-train, retrieve-xor-dev ->
evaluate-retrieval -> mgen-data -> mgen -> pipeline -> answer-xor-dev -> evaluate-xor -> [answer-mkqa ->
evaluate-mkqa] -> summary [-> iterate]. See docs/reproducing_cora.md for where each input comes from and what each
stage costs.

    python recipes/reproduce_cora.py --out runs/cora --passages all_w100.tsv --mdpr-train mdpr_train.json \\
        --train-questions xor_train_full.jsonl --english-answer-questions xor_train_retrieve_eng_span.jsonl \\
        --xor-dev xor_dev_full_v1_1.jsonl --mkqa mkqa.jsonl.gz --launcher torchrun --nproc-per-node 8 --dry-run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = HERE / "reproduce_cora" / "steps.py"
logger = logging.getLogger("reproduce_cora")


@dataclass
class ReproduceConfig:
    """Every option of the recipe; saved as reproduce_config.json in --out."""

    out: str = field(metadata={"help": "run folder (every stage writes under it)"})
    passages: list[str] = field(metadata={
        "help": "CORA's passage file(s): all_w100.tsv (id, text, title, lang), or per-language w100 TSVs without a "
                "lang column as FILE=LANG"})
    mdpr_train: str = field(metadata={
        "help": "mDPR training data, DPR JSON (question, answers, positive_ctxs, negative_ctxs, hard_negative_ctxs)"})
    train_questions: list[str] = field(metadata={
        "help": "mGEN training questions, XOR format, answers in the question's language (xor_train_full.jsonl; "
                "NQ in XOR format with lang 'en' or 'NONE')"})
    xor_dev: str = field(metadata={"help": "XOR-Full dev questions and answers (xor_dev_full_v1_1.jsonl)"})
    english_answer_questions: list[str] = field(default_factory=list, metadata={
        "help": "mGEN training questions whose answers are English (xor_train_retrieve_eng_span.jsonl): trained to "
                "answer in English, as in CORA; ids already in --train-questions are left out"})
    mkqa: list[str] = field(default_factory=list, metadata={
        "help": "MKQA: the original mkqa.jsonl.gz (converted per --mkqa-langs, unanswerable questions dropped as in "
                "CORA) or XOR-format mkqa-xx.jsonl files; none: no MKQA stages"})
    mkqa_langs: list[str] = field(default_factory=list, metadata={
        "help": "locales converted from the original MKQA file (default: all 26)"})
    encoder: str = field(default="bert-base-multilingual-uncased", metadata={
        "help": "mDPR's starting encoder, one tower for questions and passages (CORA: mBERT uncased); any HF id or "
                "folder"})
    mdpr_config: str = field(default=str(HERE / "reproduce_cora" / "mdpr_mbert.json"), metadata={
        "help": "'cora train retriever --config' file (CORA's mDPR hyperparameters)"})
    mgen_model: str = field(default="google/mt5-base", metadata={"help": "mGEN's backbone (CORA: mT5-base)"})
    mgen_config: str = field(default=str(HERE / "reproduce_cora" / "mgen_mt5_base.json"), metadata={
        "help": "TrainConfig fields (+ max_source_length, max_target_length, num_beams) of mGEN training"})
    index_factory: str = field(default="auto", metadata={
        "help": "FAISS factory of the index ('auto': Flat <= 200k passages, HNSW32 <= 5M, IVF-PQ beyond)"})
    index_shards: int = field(default=1, metadata={
        "help": "encode the passages as this many shards in parallel processes, shard i on GPU i "
                "(CUDA_VISIBLE_DEVICES=i), then merge"})
    index_batch_size: int = field(default=128, metadata={"help": "passages per forward pass when indexing"})
    retrieve_k: int = field(default=20, metadata={
        "help": "passages retrieved per training question (the mGEN context takes the top --mgen-k, reaching "
                "further only for filler when answer-containing passages were left out)"})
    mgen_k: int = field(default=10, metadata={"help": "passages per mGEN training source (CORA: 10)"})
    mgen_positives: int = field(default=3, metadata={"help": "answer-containing passages kept at most (CORA: 3)"})
    read_k: int = field(default=15, metadata={
        "help": "passages mGEN reads per dev question, in rank order (CORA's quick start: 15)"})
    launcher: str | None = field(default=None, metadata={
        "help": "'torchrun' to run both training stages on --nproc-per-node GPUs (torchrun --nproc-per-node N -m "
                "cora train retriever ...)"})
    nproc_per_node: int = field(default=1, metadata={"help": "processes (GPUs) per training stage with --launcher"})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)"})
    seed: int = field(default=0, metadata={"help": "seed of mGEN's context sampling"})
    iterate_config: str | None = field(default=None, metadata={
        "help": "optionally end with 'cora iterate --config FILE' (CORA's iterative rounds; needs dev questions "
                "with gold_group and a datastore whose groups are language links)"})


@dataclass
class Stage:
    """One command of the recipe. ``outputs``: the paths it writes; when ``atomic`` they appear only on success, so
    their existence means the stage is done, else only the stage's marker (stages/<name>.json) does. Stages that
    share a ``parallel`` group run at the same time."""

    name: str
    argv: list[str]
    outputs: list[str]
    atomic: bool = True
    env: dict[str, str] = field(default_factory=dict)
    parallel: str | None = None

    def shell(self) -> str:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items())
        return env + shlex.join(self.argv) + (" &" if self.parallel else "")


def is_original_mkqa(paths: list[str]) -> bool:
    """One file in MKQA's own schema (gzipped, or a first line with 'queries'), not XOR-format mkqa-xx.jsonl."""
    if len(paths) != 1:
        return False
    if paths[0].endswith(".gz"):
        return True
    with open(paths[0], encoding="utf-8") as fh:
        return '"queries"' in fh.readline()


def plan(cfg: ReproduceConfig) -> list[Stage]:
    """The recipe's commands in order."""
    from cora.evaluation.mkqa import MKQA_LOCALES

    out = Path(cfg.out)

    def p(*parts: str) -> str:
        return str(out.joinpath(*parts))

    steps = ["python", str(STEPS)]
    device = ["--device", cfg.device] if cfg.device else []
    launch = ["torchrun", "--nproc-per-node", str(cfg.nproc_per_node)] if cfg.launcher == "torchrun" else None
    if cfg.launcher not in (None, "torchrun"):
        raise SystemExit(f"--launcher must be 'torchrun', not {cfg.launcher!r}")
    stages = [Stage("datastore", ["cora", "datastore", "build", *cfg.passages, "--out", p("datastore")],
                    [p("datastore")])]

    mkqa_files = list(cfg.mkqa)
    if mkqa_files and is_original_mkqa(mkqa_files):
        langs = cfg.mkqa_langs or list(MKQA_LOCALES)
        stages.append(Stage("mkqa-convert", ["cora", "evaluate", "mkqa-convert", "--gold", mkqa_files[0], "--langs",
                                             *langs, "--out", p("mkqa"), "--drop-unanswerable"],
                            [p("mkqa")], atomic=False))
        mkqa_files = [p("mkqa", f"mkqa-{lang}.jsonl") for lang in langs]
    train_q = p("questions", "train.jsonl")
    english = ["--english-answers", *cfg.english_answer_questions] if cfg.english_answer_questions else []
    stages.append(Stage("questions", [*steps, "questions", "--questions", *cfg.train_questions, *english,
                                      "--out", train_q], [train_q]))
    if mkqa_files:
        stages.append(Stage("questions-mkqa", [*steps, "questions", "--questions", *mkqa_files,
                                               "--out", p("questions", "mkqa.jsonl")], [p("questions", "mkqa.jsonl")]))

    cora_train = [*launch, "-m", "cora"] if launch else ["cora"]
    stages.append(Stage("mdpr", [*cora_train, "train", "retriever", "--config", cfg.mdpr_config, "--train-data",
                                 cfg.mdpr_train, "--encoder", cfg.encoder, "--output-dir", p("mdpr"), *device],
                        [p("mdpr", "best")], atomic=False))

    index = ["--datastore", p("datastore"), "--encoder", p("mdpr", "best"), "--out", p("index")]
    if cfg.index_shards > 1:
        n = cfg.index_shards
        stages += [Stage(f"index-shard-{i}", ["cora", "index", "build", *index, "--shard", f"{i}/{n}", "--batch-size",
                                              str(cfg.index_batch_size), *device],
                         [p("index", "shards")], atomic=False, env={"CUDA_VISIBLE_DEVICES": str(i)}, parallel="index")
                   for i in range(n)]
        stages.append(Stage("index-merge", ["cora", "index", "merge", *index, "--factory", cfg.index_factory],
                            [p("index", "index.faiss")], atomic=False))
    else:
        stages.append(Stage("index", ["cora", "index", "build", *index, "--factory", cfg.index_factory,
                                      "--batch-size", str(cfg.index_batch_size), *device],
                            [p("index", "index.faiss")], atomic=False))

    def retrieve(name: str, questions: str, k: int, target: str) -> Stage:
        return Stage(name, ["cora", "retrieve", "--index", p("index"), "--questions", questions, "--k", str(k),
                            "--out", target, "--overwrite", *device], [target])

    stages.append(retrieve("retrieve-train", train_q, max(cfg.retrieve_k, cfg.mgen_k), p("retrieval", "train.jsonl")))
    stages.append(retrieve("retrieve-xor-dev", cfg.xor_dev, cfg.read_k, p("retrieval", "xor_dev.jsonl")))
    stages.append(Stage("evaluate-retrieval", ["cora", "evaluate", "xor-retrieve", "--gold", cfg.xor_dev, "--pred",
                                               p("retrieval", "xor_dev.jsonl"), "--mode", "fixed", "--json-out",
                                               p("reports", "xor_dev_retrieval.json")],
                        [p("reports", "xor_dev_retrieval.json")]))
    stages.append(Stage("mgen-data", [*steps, "mgen-data", "--retrieved", p("retrieval", "train.jsonl"), "--questions",
                                      train_q, "--out", p("mgen-data"), "--k", str(cfg.mgen_k), "--max-positives",
                                      str(cfg.mgen_positives), "--seed", str(cfg.seed)], [p("mgen-data")]))
    mgen_launch = [*launch, str(STEPS)] if launch else steps
    stages.append(Stage("mgen", [*mgen_launch, "mgen-train", "--data", p("mgen-data"), "--model", cfg.mgen_model,
                                 "--config", cfg.mgen_config, "--output-dir", p("mgen"), *device],
                        [p("mgen", "best")], atomic=False))
    stages.append(Stage("pipeline", ["cora", "pipeline", "create", "--index", p("index"), "--reader", p("mgen", "best"),
                                     "--k", str(cfg.read_k), "--no-projection", "--out", p("pipeline"), "--overwrite"],
                        [p("pipeline", "pipeline.json")]))

    def answer(name: str, questions: str, stem: str) -> Stage:
        # --details is written after --out: its existence means both are complete.
        return Stage(name, ["cora", "answer", "--pipeline", p("pipeline"), "--questions", questions, "--out",
                            p("answers", f"{stem}.json"), "--details", p("answers", f"{stem}.details.jsonl"),
                            "--overwrite", *device], [p("answers", f"{stem}.details.jsonl")])

    stages.append(answer("answer-xor-dev", cfg.xor_dev, "xor_dev"))
    stages.append(Stage("evaluate-xor", ["cora", "evaluate", "xor", "--gold", cfg.xor_dev, "--pred",
                                         p("answers", "xor_dev.json"), "--mode", "official", "--json-out",
                                         p("reports", "xor_dev.json")], [p("reports", "xor_dev.json")]))
    summary = [*steps, "summary", "--xor", p("reports", "xor_dev.json"), "--out", p("results.md")]
    if mkqa_files:
        stages.append(answer("answer-mkqa", p("questions", "mkqa.jsonl"), "mkqa"))
        stages.append(Stage("evaluate-mkqa", ["cora", "evaluate", "mkqa", "--gold", *mkqa_files, "--pred",
                                              p("answers", "mkqa.json"), "--json-out", p("reports", "mkqa.json")],
                            [p("reports", "mkqa.json")]))
        summary[-2:-2] = ["--mkqa", p("reports", "mkqa.json")]
    stages.append(Stage("summary", summary, [p("results.md")]))
    if cfg.iterate_config:
        stages.append(Stage("iterate", ["cora", "iterate", "--config", cfg.iterate_config, "--output-dir",
                                        p("iterate"), *device], [p("iterate", "summary.json")], atomic=False))
    return stages


# -------------------------------------------------------------------------------------------------- running
def _marker(cfg: ReproduceConfig, stage: Stage) -> Path:
    return Path(cfg.out) / "stages" / f"{stage.name}.json"


def is_done(cfg: ReproduceConfig, stage: Stage) -> bool:
    """Finished before: its marker names the same command (another command is an error, never silently reused),
    or, for an atomic stage, its outputs exist."""
    marker = _marker(cfg, stage)
    if marker.exists():
        before = json.loads(marker.read_text(encoding="utf-8"))["argv"]
        if before != stage.argv:
            raise SystemExit(f"stage {stage.name} finished earlier with another command:\n  {shlex.join(before)}\n"
                             f"now:\n  {shlex.join(stage.argv)}\nremove {marker} and the stage's outputs "
                             f"({', '.join(stage.outputs)}) to run it again, or use another --out")
        return True
    return stage.atomic and all(Path(o).exists() for o in stage.outputs)


def _run_subprocess(stages: list[Stage]) -> None:
    procs = []
    for stage in stages:
        argv = list(stage.argv)
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "cora" and not shutil.which("cora"):
            argv[:1] = [sys.executable, "-m", "cora"]
        procs.append((stage, subprocess.Popen(argv, env={**os.environ, **stage.env})))
    failed = [s.name for s, proc in procs if proc.wait() != 0]
    if failed:
        raise SystemExit(f"stage(s) {', '.join(failed)} failed; fix the cause and rerun the same command to resume")


_steps_module = None


def _run_in_process(stage: Stage) -> None:
    """Run a stage's command in this process (no interpreter and torch start-up per stage: the miniature test)."""
    global _steps_module
    argv = stage.argv
    if argv[0] == "cora":
        from cora.cli import main
        code = main(argv[1:])
    elif argv[:2] == ["python", str(STEPS)]:
        if _steps_module is None:
            spec = importlib.util.spec_from_file_location("reproduce_cora_steps", STEPS)
            _steps_module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = _steps_module  # its dataclasses look their module up there
            spec.loader.exec_module(_steps_module)
        code = _steps_module.main(argv[2:])
    else:
        raise SystemExit(f"stage {stage.name}: {argv[0]} cannot run in-process; run without --in-process")
    if code:
        raise SystemExit(f"stage {stage.name} failed (exit {code}); fix the cause and rerun to resume")


def run(cfg: ReproduceConfig, stages: list[Stage], in_process: bool = False) -> list[str]:
    """Run every stage not done yet, in order (a parallel group together); returns the names of those run."""
    from cora.fileio import atomic_write_json

    ran, i = [], 0
    while i < len(stages):
        group = [stages[i]]
        while stages[i].parallel and i + len(group) < len(stages) and \
                stages[i + len(group)].parallel == stages[i].parallel:
            group.append(stages[i + len(group)])
        i += len(group)
        todo = [s for s in group if not is_done(cfg, s)]
        for s in group:
            if s not in todo:
                logger.info("stage %s: done before, skipped", s.name)
        if not todo:
            continue
        start = time.time()
        for s in todo:
            logger.info("stage %s: %s", s.name, s.shell())
        if in_process:
            for s in todo:
                _run_in_process(s)
        else:
            _run_subprocess(todo)
        for s in todo:
            atomic_write_json(_marker(cfg, s), {"argv": s.argv, "env": s.env, "seconds": round(time.time() - start, 1),
                                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            ran.append(s.name)
    return ran


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ReproduceConfig):
        flag = f"--{f.name.replace('_', '-')}"
        required = f.default is MISSING and f.default_factory is MISSING
        if "list" in str(f.type):
            ap.add_argument(flag, nargs="+" if required else "*", required=required, help=f.metadata["help"],
                            default=None if required else [])
        else:
            kind = int if str(f.type) == "int" else str
            ap.add_argument(flag, type=kind, required=required, help=f.metadata["help"] + (
                "" if required or f.default is None else f" (default: {f.default})"), default=None if required
                else f.default)
    ap.add_argument("--dry-run", action="store_true",
                    help="print every stage's command (and whether it is done) and run nothing")
    ap.add_argument("--in-process", action="store_true",
                    help="run the stages' commands inside this process instead of one process each (no torch "
                         "start-up per stage; for small runs and tests; not with --launcher or --index-shards)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from cora.fileio import atomic_write_json

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ReproduceConfig(**{f.name: getattr(args, f.name) for f in fields(ReproduceConfig)})
    stages = plan(cfg)
    if args.dry_run:
        for stage in stages:
            state = "done" if is_done(cfg, stage) else "to run"
            print(f"# {stage.name} ({state})\n{stage.shell()}")
            if stage.parallel and stage is [s for s in stages if s.parallel == stage.parallel][-1]:
                print("wait")
        return 0
    if args.in_process and (cfg.launcher or cfg.index_shards > 1):
        raise SystemExit("--in-process runs one process: drop --launcher and --index-shards")
    atomic_write_json(Path(cfg.out) / "reproduce_config.json", {"type": "ReproduceConfig", **asdict(cfg)})
    ran = run(cfg, stages, in_process=args.in_process)
    print(f"ran {len(ran)} stage(s): {', '.join(ran) or 'none (all done before)'}; results in "
          f"{Path(cfg.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
