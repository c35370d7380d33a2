"""Why bf16 speeds training up less than encoding, and which training options help on this CPU.

Reader training steps (batch 16, 256 tokens, the shipped mixture's real examples, all 12 layers trained by
default) under each option, back to back on the same batches, with the time of each step split into forward,
backward and optimizer:

    fp32                 no autocast, torch.optim.AdamW (foreach)            -- the baseline
    bf16                 torch.autocast("cpu", bfloat16), AdamW (foreach)    -- what `cora train` does
    bf16 + fused AdamW   the same with AdamW(fused=True)
    bf16 weights         the model held in bf16 (no autocast), fp32 master weights and AdamW state; gradients
                         copied to the masters before each step and the updated masters copied back
    bf16 + compile       torch.compile(encoder, dynamic=True) under autocast (compile time not counted:
                         the first two steps are warm-up)
    bf16, 1 thread       torch.set_num_threads(1): how much the second core adds

Load on the machine is recorded (machine.loadavg_1m); run it on an idle machine.

    python benchmarks/train_step.py [--out docs/results/train_step.json] [--steps 6] [--layers 12]
    python benchmarks/train_step.py --quick      # tiny random model, synthetic text, < 1 minute
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, print_table, synthetic_texts, tiny_encoder_dir, write_results  # noqa: E402

from cora.precision import autocast  # noqa: E402
from cora.reader import ExtractiveReader  # noqa: E402

OPTIONS = ("fp32", "bf16", "bf16 + fused AdamW", "bf16 weights", "bf16 + compile", "bf16, 1 thread")
WARMUP = 2  # untimed steps: allocation, oneDNN kernel choice, compilation


class MasterWeights:
    """fp32 master copies of bf16 parameters: AdamW runs on the masters, the model gets them back in bf16."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in params]

    def step(self, optimizer) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
        optimizer.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters, strict=True):
                p.copy_(m)


def run_option(option: str, make_reader, examples, negatives, steps: int) -> dict:
    from cora.reader.training import ReaderTask

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    reader = make_reader()
    if option == "bf16 weights":
        reader.model.to(torch.bfloat16)
    if option == "bf16 + compile":
        reader.model.encoder = torch.compile(reader.model.encoder, dynamic=True)
    if option == "bf16, 1 thread":
        torch.set_num_threads(1)
    task = ReaderTask(reader, examples, 16, negatives, 0.0, None)
    params = [p for p in reader.model.parameters() if p.requires_grad]
    masters = MasterWeights(params) if option == "bf16 weights" else None
    opt = torch.optim.AdamW(masters.masters if masters else params, lr=1e-5, fused=option == "bf16 + fused AdamW")
    precision = "fp32" if option in ("fp32", "bf16 weights") else "bf16"
    batches = list(task.batches(0, random.Random(0)))[: steps + WARMUP]
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    n = 0
    try:
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            with autocast(precision, "cpu"):
                loss = task.loss(batch)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            masters.step(opt) if masters else opt.step()
            opt.zero_grad(set_to_none=True)
            reader.model.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            if i >= WARMUP:
                phases["forward"] += t1 - t0
                phases["backward"] += t2 - t1
                phases["optimizer"] += t3 - t2
                n += len(batch)
    finally:
        torch.set_num_threads(threads)
    total = sum(phases.values())
    return {"option": option, "examples": n, "per_s": n / total, "loss_last": float(loss),
            **{f"{k}_ms_per_step": 1000 * v / steps for k, v in phases.items()},
            "trainable_params": sum(p.numel() for p in params)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model and synthetic text (< 1 minute)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per option (after 2 warm-up steps)")
    ap.add_argument("--layers", type=int, default=12, help="top encoder layers trained")
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS, metavar="OPTION",
                    help=f"which options to run (default all: {', '.join(OPTIONS)})")
    args = ap.parse_args(argv)
    results = {"machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            enc_dir = str(tiny_encoder_dir(Path(tmp) / "enc"))
            from cora.datastore import Passage
            from cora.reader.data import ReaderExample

            texts = synthetic_texts(64, words=60)
            passages = [Passage(f"p{i}", "en", "", t, f"g{i}") for i, t in enumerate(texts)]
            examples = [ReaderExample(f"q{i}", " ".join(p.text.split()[:5]), "en", [p], [p.text.split()[7]], "en")
                        for i, p in enumerate(passages)]
            negatives, backbone, max_length, layers = {}, enc_dir, 128, 1
        else:
            from cora.reader.training import reader_mixture

            mix = reader_mixture(SHARED, cross_lingual=0)
            examples = random.Random(0).sample(mix.train, 16 * (args.steps + WARMUP))
            negatives, backbone, max_length, layers = mix.negatives, "me5-small", 256, args.layers

        def make_reader():
            return ExtractiveReader.from_backbone(backbone, device="cpu", trainable_layers=layers,
                                                  max_length=max_length)

        for option in args.options:
            try:
                results["rows"].append(run_option(option, make_reader, examples, negatives, args.steps))
            except Exception as e:  # e.g. no C++ compiler for torch.compile: say so and go on
                results["rows"].append({"option": option, "error": f"{type(e).__name__}: {e}"[:300]})
    base = next((r["per_s"] for r in results["rows"] if r["option"] == "fp32" and "per_s" in r), None)
    for r in results["rows"]:
        if "per_s" in r and base:
            r["vs_fp32"] = r["per_s"] / base
    print_table([r for r in results["rows"] if "per_s" in r],
                ["option", "per_s", "vs_fp32", "forward_ms_per_step", "backward_ms_per_step", "optimizer_ms_per_step"])
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['option']}: {r['error']}")
    results["machine_after"] = machine()
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
