"""torchrun: two processes (gloo, CPU) give what one process gives. One 2-process launch (torch.multiprocessing,
with torchrun's environment variables) runs ``cora index build`` through the CLI, a retriever run that is cut
after its first step and resumed, and a reader run with gradient accumulation; the tests compare each with the
same work done here in one process: the same vectors, the same loss at every step, the same weights."""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from cora.datastore import Passage
from cora.distributed import shard_batch
from cora.errors import CoraError
from cora.reader.data import ReaderExample
from cora.retriever_training import Ctx, DPRExample, RetrieverBatch
from cora.training import TrainConfig, train

WORLD = 2

# Global batch 4 (2 per process). Retriever: 12 examples = 3 batches an epoch, 2 epochs, dev evaluation on rank 0.
RETRIEVER_CFG = dict(epochs=2, batch_size=4, lr=1e-3, warmup_ratio=0.0, eval_every=3, save_every=2, log_every=1,
                     precision="fp32")
# Reader: 3 batches an epoch with grad_accum 2, so every epoch ends with a one-batch optimizer step.
READER_CFG = dict(epochs=2, batch_size=4, grad_accum=2, lr=1e-3, warmup_ratio=0.0, eval_every=100, save_every=100,
                  log_every=1, precision="fp32")

MOON = Passage("moon-de", "de", "Mond", "Der Mond umkreist die Erde", "moon")
TEA = Passage("tea-de", "de", "Tee", "Tee ist ein Getränk aus Blättern", "tea")
NILE = Passage("nile-de", "de", "Nil", "Der Nil ist ein Fluss in Afrika", "nile")


def test_shard_batch_gives_each_process_its_contiguous_slice():
    assert [shard_batch(list(range(6)), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4, 5]]
    assert shard_batch([1, 2, 3], 0, 1) == [1, 2, 3]
    with pytest.raises(CoraError, match="does not split evenly"):
        shard_batch([1, 2, 3], 0, 2)
    ctx = [Ctx(f"p{i}", "", f"t{i}") for i in range(4)] + [Ctx(f"n{i}", "", f"t{i}") for i in range(4)]
    batch = RetrieverBatch(["q0", "q1", "q2", "q3"], ctx)  # 4 positives, then 4 hard negatives
    second = shard_batch(batch, 1, 2)
    assert second.questions == ["q2", "q3"]
    assert [c.passage_id for c in second.passages] == ["p2", "p3", "n2", "n3"]  # its positives, then its negatives


def test_batch_size_must_split_over_the_processes(monkeypatch, tmp_path):
    monkeypatch.setattr("cora.distributed.world_size", lambda: 2)
    with pytest.raises(CoraError, match="split evenly over the 2 processes"):
        train(None, TrainConfig(str(tmp_path), batch_size=3))


# ------------------------------------------------------------------------------------------ the tasks
def _retriever_task(encoder_dir, datastore_dir):
    from cora.datastore import Datastore
    from cora.encoder import Encoder
    from cora.questions import Question
    from cora.retriever_training import RetrieverTask

    ds = Datastore(datastore_dir)
    questions = {"moon": "der mond umkreist die erde", "nile": "der nil ist ein fluss in afrika",
                 "tea": "tee ist ein getränk aus blättern"}
    examples = []
    for group, question in questions.items():
        ctxs = [Ctx(p.id, p.title, p.text) for p in ds.rows(ds.group_rows(group))]
        others = [Ctx(p.id, p.title, p.text) for p in ds if p.group != group]
        examples += [DPRExample(question, [], "de", ctxs, [], others[:2])] * 4
    dev = [Question("dmoon", "der mond umkreist die erde", "de", [], None, "moon")]
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(str(encoder_dir), device="cpu", precision="fp32")
    return RetrieverTask(encoder, examples, batch_size=4, dev=(dev, ds), temperature=0.1, freeze_embeddings=False,
                         dropout=False)


def _reader_task(encoder_dir):
    from cora.reader import ExtractiveReader
    from cora.reader.training import ReaderTask

    questions = [("was umkreist die erde", MOON, "Der Mond"), ("was ist tee", TEA, "ein Getränk"),
                 ("wo ist der nil", NILE, "in Afrika")]
    examples = [ReaderExample(f"q{i}", q, "de", [p], [a], "de") for i, (q, p, a) in enumerate(questions * 4)]
    torch.manual_seed(1 + int(os.environ.get("RANK", 0)))  # a different head on each process: train() syncs them
    reader = ExtractiveReader.from_backbone(str(encoder_dir), device="cpu", trainable_layers=1, max_length=32,
                                            max_answer_tokens=5)
    return ReaderTask(reader, examples, batch_size=4, negatives={"de": [MOON, TEA, NILE]}, negative_rate=0.5)


def _retriever_runs(encoder_dir, datastore_dir, out: Path) -> None:
    """A run cut after its first optimizer step (this slice's time is up), then resumed by running it again."""
    train(_retriever_task(encoder_dir, datastore_dir), TrainConfig(str(out), max_minutes=1e-9, **RETRIEVER_CFG))
    train(_retriever_task(encoder_dir, datastore_dir), TrainConfig(str(out), **RETRIEVER_CFG))


def _first_batch_gradients(task) -> dict[str, torch.Tensor]:
    """The gradient of the first global batch's mean loss, as the trainer computes it on this process."""
    from cora.distributed import all_reduce_gradients, broadcast_module, rank, world_size

    broadcast_module(task.module())  # as train() does: the reader's head is drawn differently on each process
    batch = next(task.batches(0, random.Random(0)))
    task.loss(shard_batch(batch, rank(), world_size())).backward()
    params = dict(task.module().named_parameters())
    all_reduce_gradients([p for p in params.values() if p.requires_grad])
    return {name: p.grad.clone() for name, p in params.items() if p.grad is not None}


def _worker(rank: int, port: int, encoder_dir: str, datastore_dir: str, out: str) -> None:
    import cora.distributed
    from cora.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    cora.distributed.TIMEOUT = datetime.timedelta(seconds=120)  # a failure ends the test, not an hour later
    out = Path(out)
    assert main(["index", "build", "--datastore", datastore_dir, "--encoder", encoder_dir, "--out",
                 str(out / "index"), "--factory", "Flat", "--device", "cpu"]) == 0  # joins the process group
    _retriever_runs(encoder_dir, datastore_dir, out / "retriever")
    train(_reader_task(encoder_dir), TrainConfig(str(out / "reader"), **READER_CFG))
    grads = {"retriever": _first_batch_gradients(_retriever_task(encoder_dir, datastore_dir)),
             "reader": _first_batch_gradients(_reader_task(encoder_dir))}
    torch.save(grads, out / f"gradients-{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tiny_encoder_dir, datastore, tmp_path_factory) -> Path:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("torchrun")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tiny_encoder_dir), str(datastore.path), str(out)), nprocs=WORLD, join=True)
    return out


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        # atol 1e-5: the two runs sum gradients in a different order; on one machine that left a single weight of
        # 2,048, near zero, 1.6e-6 apart after training (every other within 1e-6).
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------ 2 processes == 1
@pytest.mark.parametrize("task", ["retriever", "reader"])
def test_two_process_gradients_equal_the_one_process_gradient(two_processes, tiny_encoder_dir, datastore, task):
    """Each process's mean over its half of the batch, gradients averaged (and, for the retriever, every
    process's passages gathered as negatives with their gradient sent back): the global batch's gradient."""
    one = _first_batch_gradients(_retriever_task(tiny_encoder_dir, datastore.path) if task == "retriever"
                                 else _reader_task(tiny_encoder_dir))
    for rank in range(WORLD):
        two = torch.load(two_processes / f"gradients-{rank}.pt")[task]
        assert two.keys() == one.keys()
        for name, grad in one.items():
            torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_two_process_index_build_gives_the_same_vectors(two_processes, datastore, tiny_encoder, tiny_encoder_dir,
                                                       tmp_path):
    from cora.index import DenseIndex, build_index

    one = build_index(datastore, tiny_encoder, tmp_path / "one", str(tiny_encoder_dir), factory="Flat",
                      show_progress=False)
    two = DenseIndex.load(two_processes / "index")
    def listing(folder: Path) -> list[Path]:
        return sorted(p.relative_to(folder) for p in folder.rglob("*"))

    assert listing(two_processes / "index") == listing(tmp_path / "one")  # the shard files merged and removed
    assert two.config.datastore_fingerprint == datastore.fingerprint and two.config.encoder == one.config.encoder
    np.testing.assert_allclose(two.index.reconstruct_n(0, len(datastore)),
                               one.index.reconstruct_n(0, len(datastore)), rtol=0, atol=1e-6)


def test_two_process_retriever_training_follows_the_one_process_run(two_processes, tiny_encoder_dir, datastore,
                                                                   tmp_path):
    from cora.encoder import Encoder

    task = _retriever_task(tiny_encoder_dir, datastore.path)
    train(task, TrainConfig(str(tmp_path / "one"), **RETRIEVER_CFG))
    one, two = _losses(tmp_path / "one"), _losses(two_processes / "retriever")
    assert len(one) == 6 and len(two) == 6  # rank 0 alone writes the log; the resumed run appended steps 2-6
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert one[-1] < 0.95 * one[0]  # measured: 1.986 -> 1.807; the two runs agree on a curve that moves
    trained = Encoder.from_pretrained(str(two_processes / "retriever" / "last"), device="cpu")
    _assert_same_weights(trained.model, task.encoder.model)
    metrics = json.loads((two_processes / "retriever" / "best" / "metrics.json").read_text())
    assert metrics["step"] in (3, 6) and metrics["R@1"] == 1.0  # rank 0 evaluated on the dev set and saved best/


def test_two_process_reader_training_follows_the_one_process_run(two_processes, tiny_encoder_dir, tmp_path):
    from cora.reader import load_reader

    task = _reader_task(tiny_encoder_dir)
    train(task, TrainConfig(str(tmp_path / "one"), **READER_CFG))
    one, two = _losses(tmp_path / "one"), _losses(two_processes / "reader")
    assert len(one) == 4  # per epoch: one step of 2 batches, one of the leftover batch
    np.testing.assert_allclose(two, one, rtol=1e-5)
    # Weights are compared through what they compute: the span softmax does not see a shift of every token's
    # score, so the gradient of the last LayerNorm's bias is rounding noise, which AdamW turns into steps of
    # size lr in directions that differ from run to run (and change nothing).
    trained = load_reader(str(two_processes / "reader" / "last"), device="cpu")
    batch = next(task.batches(0, random.Random(0)))
    task.reader.model.eval()
    trained.model.eval()
    assert trained.batch_loss(batch).item() == pytest.approx(task.reader.batch_loss(batch).item(), rel=1e-5)
    for question, passages, _ in batch:
        assert trained.read(question, passages, "de").text == task.reader.read(question, passages, "de").text
