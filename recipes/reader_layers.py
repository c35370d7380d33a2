"""How many reader layers pay: top 4 vs top 8 vs all 12 me5-small layers, on one fixed compute budget.

Each run starts from me5-small with new span and selection heads, reads the shipped mixture (recipes/
reader_me5_small_all.json: the same data, 256-token windows, answerless passages, bf16, AdamW at 5e-5 with warmup
and linear decay to zero at the end of its budget) and trains for ``--budget-minutes`` of *idle-machine* time:
its step count is ``budget × throughput / batch size``, where the throughput of each layer count is measured on
an idle machine beforehand with

    python benchmarks/train_step.py --layers N --options "bf16 + fused AdamW" --steps 6

(``--throughput`` takes the measured examples/s). Counting steps rather than wall-clock time keeps the comparison
fair when the machine is shared: a run slowed by other work still gets the same compute. Then every run's last
checkpoint is scored on all XQuAD dev questions (articles 32-39, 12 languages) with the gold paragraph, as the
shipped reader is (256-token windows, stride 128).

Outputs go under ``--out`` (outside git); each training run resumes when the command is rerun, and a finished
score is not recomputed:

    OMP_WAIT_POLICY=PASSIVE nice python recipes/reader_layers.py --out $CORA_HOME/runs/reader-layers
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from cora.cli import main as cora
from cora.encoder import cora_home
from cora.evaluation.report import format_table
from cora.fileio import atomic_write_json
from cora.reader import load_reader
from cora.reader.training import score_gold_paragraph, xquad_dev_examples

HERE = Path(__file__).resolve().parent

# examples/s, bf16 autocast + fused AdamW, batch 16 x 256 tokens, idle 2-core CPU (AVX-512 BF16), 2026-12-02
MEASURED = {4: 25.1, 8: 17.9, 12: 13.0}


def budget_steps(minutes: float, examples_per_s: float, batch_size: int) -> int:
    """Optimizer steps that ``minutes`` of idle-machine time buys at ``examples_per_s``."""
    return max(1, math.floor(60 * minutes * examples_per_s / batch_size))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--out", default=str(cora_home() / "runs" / "reader-layers"))
    ap.add_argument("--base-config", default=str(HERE / "reader_me5_small_all.json"))
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12])
    ap.add_argument("--budget-minutes", type=float, default=12.0, help="idle-machine training minutes per run")
    ap.add_argument("--throughput", nargs="+", metavar="LAYERS=EX_PER_S",
                    help="measured examples/s per layer count (default: the measurements in this file)")
    ap.add_argument("--evals", type=int, default=4, help="dev-sample evaluations per run (the curve)")
    args = ap.parse_args(argv)

    speed = dict(MEASURED)
    for item in args.throughput or []:
        n, _, v = item.partition("=")
        speed[int(n)] = float(v)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads(Path(args.base_config).read_text(encoding="utf-8"))
    dev = None
    rows = {}
    for n in args.layers:
        if n not in speed:
            ap.error(f"no throughput for {n} layers: pass --throughput {n}=EX_PER_S")
        steps = budget_steps(args.budget_minutes, speed[n], base["batch_size"])
        run = out / f"layers-{n}"
        cfg = {**base, "output_dir": str(run), "data_root": args.data, "init_from": None, "trainable_layers": n,
               "max_steps": steps, "eval_every": math.ceil(steps / args.evals), "save_every": 50}
        cfg_path = out / f"layers-{n}.json"
        atomic_write_json(cfg_path, cfg)
        rc = cora(["train", "reader", "--config", str(cfg_path)])
        if rc:
            return rc
        score_path = run / "gold_paragraph.json"
        if not score_path.exists():
            dev = dev if dev is not None else xquad_dev_examples(args.data)
            reader = load_reader(run / "last")
            reader.config.max_length, reader.config.stride = 256, 128
            scores = score_gold_paragraph(reader, dev)
            atomic_write_json(score_path, {"layers": n, "steps": steps, "examples": steps * base["batch_size"],
                                           "throughput": speed[n], "budget_minutes": args.budget_minutes,
                                           "scores": scores})
        rows[n] = json.loads(score_path.read_text(encoding="utf-8"))
    table = {f"top {n} layers ({r['steps']} steps, {r['examples']} examples)": r["scores"]["macro"]
             for n, r in rows.items()}
    print(format_table(table, ["F1", "EM"]))
    atomic_write_json(out / "summary.json", {str(n): r for n, r in rows.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
