"""The one training loop (retriever now, reader later), readable top to bottom.

AdamW with linear warmup and decay, gradient accumulation, clipping, bf16 autocast wherever the device runs it
natively (CUDA, and CPUs with AVX-512 BF16 / AMX; weights, gradients and optimizer state stay fp32), periodic dev
evaluation with best-checkpoint saving, and resume after an interruption with the same data order: the data
order of epoch e is a pure function of (seed, e), and the loop skips the batches a resumed run has already seen.
An epoch whose batch count is not a multiple of ``grad_accum`` ends with a smaller optimizer step over its
leftover batches (its gradient rescaled to a mean), never carried into the next epoch. A task without a dev set
(``evaluate`` returns ``metric`` None) keeps its latest evaluation as ``best/``.
What is specific to a model lives in a small task object (its batches, its loss, its dev metric, how it saves).

Under torchrun (a process group, :mod:`cora.distributed`) the loop is data-parallel: every process draws the
same global batch of ``batch_size`` examples and computes the loss of its contiguous slice, gradients are
averaged over processes before clipping, and so the run follows the one-process run with the same ``batch_size``
for any number of processes. Only rank 0 evaluates and writes the run folder; the checkpoint holds every
process's random state, so a resumed run continues each one's dropout masks.

Checkpoint layout under ``output_dir``::

    train_config.json    the TrainConfig of the run
    last/                model (task.save) + trainer_state.pt (optimizer, scheduler, step, position)
    best/                model with the best dev metric so far + metrics.json
    log.jsonl            one line per logging step and per evaluation
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cora import distributed
from cora.config import save_config
from cora.errors import CoraError
from cora.fileio import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    output_dir: str = field(metadata={"help": "run folder (config, checkpoints, log)"})
    epochs: int = field(default=1, metadata={"help": "passes over the training data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    batch_size: int = field(default=16, metadata={
        "help": "examples per forward pass, over all processes: under torchrun each of N processes reads "
                "batch_size / N of them (so the run is the same for any N)"})
    grad_accum: int = field(default=1, metadata={"help": "forward passes per optimizer step"})
    lr: float = field(default=3e-5, metadata={"help": "peak learning rate"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warmup"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    eval_every: int = field(default=100, metadata={"help": "optimizer steps between dev evaluations"})
    save_every: int = field(default=100, metadata={"help": "optimizer steps between resumable checkpoints"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between log lines"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and sampling"})
    precision: str = field(default="auto", metadata={
        "help": "'auto' (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), 'bf16' or 'fp32'; "
                "weights and optimizer state are fp32 either way"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop (after a checkpoint) once this many minutes have passed in this process: a slice of a long "
                "run, resumed by rerunning the same command"})


class Task(Protocol):
    """What the loop needs from a model: batches in a seeded order, a loss, a dev metric, saving.

    A batch is a sequence of examples, or any object with ``shard(rank, world)`` returning a process's part of
    it (:func:`cora.distributed.shard_batch`)."""

    def num_batches(self, epoch: int) -> int: ...

    def batches(self, epoch: int, rng: random.Random) -> Iterator: ...

    def loss(self, batch) -> torch.Tensor: ...  # the mean over the batch (or this process's slice of it)

    def evaluate(self) -> dict[str, float]: ...  # "metric": higher is better; None when there is no dev set

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def module(self) -> torch.nn.Module: ...

    def save(self, folder: Path) -> None: ...

    def load_weights(self, folder: Path) -> None: ...


def train(task: Task, cfg: TrainConfig) -> dict:
    from cora.precision import autocast, resolve_precision

    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    if cfg.batch_size % world:
        raise CoraError(f"--batch-size {cfg.batch_size} is the global batch: it must split evenly over the "
                        f"{world} processes")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        save_config(cfg, out / "train_config.json")
    device = next(task.module().parameters()).device
    precision = resolve_precision(cfg.precision, device)
    logger.info("training in %s on %s", precision, device)

    params = [p for p in task.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and LayerNorm weights
    # fused: one kernel for the whole update instead of foreach's several passes; measured on the CPU 104 -> 30 ms a
    # step for all 12 me5-small layers, 1.59x -> 1.70x of fp32 overall (benchmarks/train_step.py, docs/reader.md)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                                  fused=device.type in ("cpu", "cuda"))
    steps_per_epoch = math.ceil(task.num_batches(0) / cfg.grad_accum)
    total = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))

    state = {"step": 0, "epoch": 0, "batch": 0, "best": -math.inf, "examples": 0}
    if (out / "last" / "trainer_state.pt").exists():
        task.load_weights(out / "last")
        saved = torch.load(out / "last" / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        rngs = saved.get("rank_rngs", [])
        mine = rngs[rank] if len(rngs) == world else saved  # another process count: rank 0's stream for all
        torch.set_rng_state(mine["torch_rng"])  # dropout masks continue exactly where they stopped
        if torch.cuda.is_available() and "cuda_rng" in mine:
            torch.cuda.set_rng_state_all(mine["cuda_rng"])
        logger.info("resumed from step %d (epoch %d, batch %d)", state["step"], state["epoch"], state["batch"])
    elif rank:
        torch.manual_seed(torch.initial_seed() + rank)  # its own dropout masks; rank 0 keeps a lone process's
    distributed.broadcast_module(task.module())  # e.g. a randomly initialised head starts the same everywhere

    log = open(out / "log.jsonl", "a", encoding="utf-8") if main else None
    t_start, examples_start = time.time(), state["examples"]
    deadline = t_start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    window = {"loss": 0.0, "n": 0}  # micro-batch losses since the last log line
    stopped = False

    def optimizer_step(micro_batches: int) -> bool:
        """One update from ``micro_batches`` accumulated micro-batches; logging, evaluation, checkpoints.
        Returns True when the run is over (total steps reached or this slice's time is up)."""
        nonlocal stopped
        distributed.all_reduce_gradients(params)  # mean over processes: the global batch's gradient
        if micro_batches != cfg.grad_accum:  # an epoch's leftover: its gradient is a mean over what it has
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(cfg.grad_accum / micro_batches)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step = state["step"]
        if step % cfg.log_every == 0:
            rate = (state["examples"] - examples_start) / max(1e-9, time.time() - t_start)
            loss = distributed.mean(window["loss"] / max(1, window["n"]))  # the global batches', not a slice's
            if main:
                _log(log, {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                           "examples": state["examples"], "examples_per_s": round(rate, 2)})
            window.update(loss=0.0, n=0)
        if main and (step % cfg.eval_every == 0 or step == total):
            metrics = task.evaluate()
            task.module().train()
            _log(log, {"step": step, "examples": state["examples"], "eval": metrics})
            metric = metrics.get("metric")
            if metric is None or metric > state["best"]:  # no dev set: the latest evaluation is the best known
                state["best"] = -math.inf if metric is None else metric
                with atomic_dir(out / "best", overwrite=True) as tmp:
                    task.save(tmp)
                    atomic_write_json(tmp / "metrics.json", {"step": step, "examples": state["examples"], **metrics})
        if deadline < math.inf and distributed.rank0_decides(time.time() >= deadline):
            stopped = True
        if step % cfg.save_every == 0 or step == total or stopped:
            _checkpoint(out, task, optimizer, scheduler, state)
        return step >= total or stopped

    done = state["step"] >= total
    while not done and state["epoch"] < cfg.epochs:
        task.module().train()
        rng = random.Random(cfg.seed * 1_000_003 + state["epoch"])  # data order: a function of (seed, epoch)
        pending = 0  # micro-batches accumulated since the last optimizer step
        for i, batch in enumerate(task.batches(state["epoch"], rng)):
            if i < state["batch"]:
                continue  # seen before the interruption: the same batch, skipped
            with autocast(precision, device):
                loss = task.loss(distributed.shard_batch(batch, rank, world))  # all draw the same batches
            (loss / cfg.grad_accum).backward()
            window["loss"] += float(loss.detach())
            window["n"] += 1
            pending += 1
            state["batch"] = i + 1
            state["examples"] += len(batch) if hasattr(batch, "__len__") else 1
            if state["batch"] % cfg.grad_accum:
                continue
            pending = 0
            if optimizer_step(cfg.grad_accum):
                done = True
                break
        else:
            if pending and optimizer_step(pending):
                done = True
            state["epoch"] += 1
            state["batch"] = 0
            _checkpoint(out, task, optimizer, scheduler, state)
    if log is not None:
        log.close()
    distributed.barrier()  # rank 0's last checkpoint is on disk before any process returns
    return {"steps": state["step"], "best_metric": state["best"], "output_dir": str(out), "finished": not stopped,
            "examples_per_s": (state["examples"] - examples_start) / max(1e-9, time.time() - t_start)}


def _checkpoint(out: Path, task: Task, optimizer, scheduler, state: dict) -> None:
    """Rank 0 writes ``last/``; every process sends it its random state (a collective: all of them call this)."""
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    rngs = distributed.gather_to_main(rng)
    if not distributed.is_main():
        return
    extra = {"rank_rngs": rngs} if len(rngs) > 1 else {}
    with atomic_dir(out / "last", overwrite=True) as tmp:
        task.save(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": dict(state),
                    **rngs[0], **extra}, tmp / "trainer_state.pt")


def _log(fh, record: dict) -> None:
    logger.info("%s", record)
    fh.write(json.dumps(record) + "\n")
    fh.flush()


__all__ = ["TrainConfig", "Task", "train"]
