"""Reproduce the shipped offline reader (cora/resources/reader-me5-small) from ../shared/data.

1. ``cora train reader --config recipes/reader_me5_small_all.json`` (all 12 layers and a passage-selection head,
   from the earlier top-4-layer reader; resumable: rerun the same command after an interruption, and
   ``--max-minutes`` ends a slice after a checkpoint);
2. export the best checkpoint as a delta over me5-small: the trained layers and the heads, each trained matrix as
   its 4-bit residual against me5-small's (``q4_residuals``), split into files under 5 MiB, reading 256-token
   windows with a 128-token stride, with the passage-choice settings chosen by recipes/reader_selection.py
   (``--selection``);
3. score the fp32 checkpoint and the export on XQuAD dev with the gold paragraph, so the cost of the 4-bit
   residuals is measured, not assumed; ``--plot`` draws dev F1 against examples seen from the run's log.

    python recipes/train_reader.py --run $CORA_HOME/runs/reader-me5-small-all [--max-minutes 120]
    python recipes/train_reader.py --run ... --skip-train --selection runs/selection/selection.json \
        --plot docs/reader_training_curve.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cora.cli import main as cora
from cora.evaluation.report import format_table
from cora.reader import load_reader
from cora.reader.extractive import delta_files
from cora.reader.training import score_gold_paragraph, xquad_dev_examples

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "reader_me5_small_all.json"))
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--run", default="runs/reader-me5-small-all")
    ap.add_argument("--max-minutes", type=float, help="train for at most this long, then stop after a checkpoint")
    ap.add_argument("--selection", help="reader_selection.py's selection.json: its chosen passage-choice settings "
                                        "go into the exported config")
    ap.add_argument("--plot", help="write the training curve (dev F1 against examples seen) as this PNG")
    ap.add_argument("--export", default=str(HERE.parent / "cora" / "resources" / "reader-me5-small"))
    ap.add_argument("--inference-length", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128, help="window overlap for longer passages (0: cut)")
    ap.add_argument("--skip-train", action="store_true", help="export an existing run")
    args = ap.parse_args(argv)

    if not args.skip_train:
        extra = ["--max-minutes", str(args.max_minutes)] if args.max_minutes else []
        rc = cora(["train", "reader", "--config", args.config, "--data-root", args.data, "--output-dir", args.run,
                   *extra])
        if rc:
            return rc
    if args.plot:
        plot_curve(Path(args.run) / "log.jsonl", Path(args.plot))
    best = load_reader(Path(args.run) / "best")
    best.config.max_length = args.inference_length
    best.config.stride = args.stride or None
    if args.selection:
        chosen = json.loads(Path(args.selection).read_text())["chosen"]
        for key in ("rank_prior", "rank_weight", "length_penalty", "max_answer_tokens"):
            setattr(best.config, key, chosen[key])
    export = Path(args.export)
    tmp = export.with_name(export.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    best.save_pretrained(tmp, q4_residuals=True)
    shutil.rmtree(export, ignore_errors=True)
    tmp.rename(export)
    size = sum(f.stat().st_size for f in export.iterdir())
    print(f"exported {export}: {size / 1e6:.1f} MB ({len(delta_files(export))} delta file(s): 4-bit residuals) "
          "+ config")

    dev = xquad_dev_examples(args.data)
    fp32 = score_gold_paragraph(best, dev)
    exported = score_gold_paragraph(load_reader(export), dev)
    print("fp32 checkpoint\n" + format_table(fp32, ["F1", "EM"]))
    print("export\n" + format_table(exported, ["F1", "EM"]))
    (Path(args.run) / "export.json").write_text(json.dumps(
        {"export": str(export), "bytes": size, "gold_paragraph_fp32": fp32, "gold_paragraph_export": exported}, indent=2))
    return 0


def plot_curve(log: Path, out: Path) -> None:
    """Dev F1 (and EM) against training examples seen, from a run's log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in map(json.loads, log.read_text().splitlines()) if "eval" in r and r["eval"].get("F1") is not None]
    if not evals:
        print(f"{log}: no evaluations yet, no plot")
        return
    x = [r.get("examples", r["step"]) for r in evals]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(x, [r["eval"]["F1"] for r in evals], marker="o", label="F1")
    ax.plot(x, [r["eval"]["EM"] for r in evals], marker=".", label="EM")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("XQuAD dev, gold paragraph (macro, 240 q)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
