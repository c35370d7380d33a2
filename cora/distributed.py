"""Running under torchrun: the process group, this process's rank, and the few collectives the trainer and the
index build need.

``torchrun --nproc_per_node N -m cora ...`` starts N copies of the command with RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in their environment. :func:`init_from_env` (called by the CLI before any model is
put on a device) turns them into a process group: gloo for CPU tensors, nccl for CUDA tensors, each process on
GPU ``LOCAL_RANK``. Without a process group every helper here answers as for one process (rank 0 of 1, barriers
and reductions are no-ops), so single-process code runs the same lines.

How the work is split (docs/distributed.md):

* training: every process draws the same global batch from the same seeded order and takes its contiguous
  slice (:func:`shard_batch`); each computes the mean loss of its slice, and :func:`all_reduce_gradients`
  averages the gradients, so the update is that of one process over the global batch;
* index build: process r encodes shard r/world of the datastore (:func:`cora.index.encode_shard`) and rank 0
  merges the shards once all are written (:func:`build_index_on_ranks`);
* only rank 0 writes run folders, logs and configs, and only rank 0 runs dev evaluations.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from cora.errors import CoraError

logger = logging.getLogger(__name__)

# Rank 0 evaluates on the dev set and writes checkpoints while the others wait in the next collective; NCCL's
# default 10-minute timeout would kill a run whose dev evaluation is slower than that.
TIMEOUT = datetime.timedelta(minutes=60)

_BUCKET = 1 << 24  # gradient elements per all-reduce: bounds the extra memory of the flattened copy (64 MB fp32)


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK). Returns whether a process group is running; without WORLD_SIZE it does nothing."""
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    if not dist.is_available():
        raise CoraError("WORLD_SIZE is set (torchrun) but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        # 'cuda' then means this process's GPU, for every model the command builds after this call.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "cpu:gloo,cuda:nccl"  # collectives on CPU tensors (e.g. --device cpu) still work
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(_destroy)
    if dist.get_rank() != 0:
        logging.getLogger("cora").setLevel(logging.WARNING)  # one copy of the progress log, not world_size
    logger.info("process group: %d processes (%s)", dist.get_world_size(), backend)
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files); True without a process group."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard_batch(batch, rank: int, world: int):
    """This process's contiguous slice of a global batch: ``batch.shard(rank, world)`` when the batch type
    defines it, else ``batch[rank * b : (rank + 1) * b]``. Slices are equal-sized, so the mean of the processes'
    mean losses is the mean loss of the global batch."""
    if world == 1:
        return batch
    if hasattr(batch, "shard"):
        return batch.shard(rank, world)
    if len(batch) % world:
        raise CoraError(f"a batch of {len(batch)} examples does not split evenly over {world} processes")
    b = len(batch) // world
    return batch[rank * b : (rank + 1) * b]


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over processes, in place.

    A parameter that received no gradient on this process gets zeros when some other process has one (so every
    process sends the same tensors); one that received none anywhere keeps ``None``, exactly as in a
    single-process step (AdamW skips it)."""
    world = world_size()
    if world == 1 or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)  # [P]
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for group in _buckets(live):
        flat = torch.cat([p.grad.reshape(-1) for p in group])  # [n]
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def _buckets(params: Iterable[torch.nn.Parameter]) -> Iterable[list[torch.nn.Parameter]]:
    """Consecutive groups of parameters with one device and dtype, about ``_BUCKET`` elements each."""
    group, size = [], 0
    for p in params:
        if group and (size + p.numel() > _BUCKET or p.grad.dtype != group[0].grad.dtype
                      or p.grad.device != group[0].grad.device):
            yield group
            group, size = [], 0
        group.append(p)
        size += p.numel()
    if group:
        yield group


def mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of a number over processes (e.g. a logged loss)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def rank0_decides(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's value of ``flag`` on every process: a decision (e.g. "this slice's time is up") that must not
    differ between processes, or one of them would wait forever in a collective the others never reach."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process: a randomly initialised head (or LoRA adapter)
    would otherwise start different on each."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def gather_to_main(obj) -> list | None:
    """Every process's ``obj`` (picklable) as a list on rank 0, None elsewhere; ``[obj]`` without a group."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def build_index_on_ranks(datastore, encoder, out: str | os.PathLike, encoder_name: str,
                         shard: tuple[int, int] | None = None, **options):
    """:func:`cora.index.build_index` (``options``: its keyword arguments), one shard per process.

    Without a process group this is ``build_index`` itself. Under torchrun, process r encodes shard r/world,
    rank 0 merges the shards after a barrier (with the options ``build_index`` would pass to
    :func:`cora.index.merge_shards`), and every process returns the finished index: rank 0 the one it built,
    the others read it back after a second barrier. An interrupted run resumes its shards when rerun with the
    same number of processes."""
    import inspect
    from pathlib import Path

    from cora.index import DenseIndex, build_index, merge_shards

    world, r = world_size(), rank()
    if world == 1:
        return build_index(datastore, encoder, out, encoder_name, shard=shard, **options)
    if shard is not None:
        raise CoraError("--shard names one shard of a run of separate processes; under torchrun each process "
                        "encodes its own shard (rank/world): drop --shard")
    barrier()  # every process has checked --out before any of them writes into it
    build_index(datastore, encoder, out, encoder_name, shard=(r, world), **options)
    barrier()
    index = None
    if r == 0:
        name = encoder_name
        if Path(name).expanduser().is_dir():  # recorded as build_index records it: an absolute path
            name = str(Path(name).expanduser().resolve())
        merge_options = {k: v for k, v in options.items() if k in inspect.signature(merge_shards).parameters}
        index = merge_shards(out, datastore, encoder_name=name, encoder_config=encoder.config,
                             **{"factory": "auto", **merge_options})
    barrier()
    return index if r == 0 else DenseIndex.load(out)


__all__ = ["init_from_env", "world_size", "rank", "is_main", "barrier", "shard_batch", "all_reduce_gradients",
           "mean", "rank0_decides", "broadcast_module", "gather_to_main", "build_index_on_ranks"]
