"""Passage choice (selection head, retrieval-rank prior, length penalty) against plain loops, batched reading
against one-question reading, precision settings, sharded deltas, AfriQA examples, and the training loop's
accumulation, logging and best-checkpoint rules."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cora.datastore import Passage
from cora.errors import CoraError
from cora.precision import autocast, cpu_supports_bf16, resolve_precision
from cora.reader import ExtractiveReader, load_reader
from cora.reader.base import ReaderConfig
from cora.reader.extractive import choose_span, delta_files, selection_loss, shard_state
from cora.reader.spans import best_spans_naive

MOON = Passage("moon-de", "de", "Mond", "Der Mond umkreist die Erde", "moon")
TEA = Passage("tea-de", "de", "Tee", "Tee ist ein Getränk aus Blättern", "tea")
NILE = Passage("nile-de", "de", "Nil", "Der Nil ist ein Fluss in Afrika und fließt nach Norden", "nile")


def naive_choice(start, end, context, passage_of, cfg: ReaderConfig, rank=None):
    """Plain loops: every valid span of every row, score - penalty, best per row, fused per row, argmax."""
    best = None
    R, L = start.shape
    for r in range(R):
        row_best = None
        for s in range(L):
            for e in range(s, min(L, s + cfg.max_answer_tokens)):
                if context[r, s] and context[r, e]:
                    score = float(start[r, s] + end[r, e]) - cfg.length_penalty * (e - s)
                    if row_best is None or score > row_best[0]:
                        row_best = (score, s, e)
        if row_best is None:
            continue
        fused = row_best[0] - cfg.rank_prior * math.log1p(int(passage_of[r]))
        if rank is not None:
            fused += cfg.rank_weight * float(rank[r])
        if best is None or fused > best[0]:
            best = (fused, r, row_best[1], row_best[2])
    return best[1:]


@pytest.mark.parametrize("seed", range(6))
def test_fused_choice_equals_naive_loops(seed):
    g = torch.Generator().manual_seed(seed)
    R, L = 4, 10
    start, end = torch.randn(R, L, generator=g) * 3, torch.randn(R, L, generator=g) * 3
    context = torch.rand(R, L, generator=g) > 0.3
    context[:, 0] = False
    passage_of = torch.tensor([0, 1, 1, 2])  # passage 1 read as two windows
    rank = torch.randn(R, generator=g)
    cfg = ReaderConfig(max_answer_tokens=4, rank_prior=[0.0, 1.0, 3.0][seed % 3], length_penalty=[0.0, 0.5][seed % 2],
                       rank_weight=[0.0, 1.0, 2.0][seed % 3])
    row, s, e, prob = choose_span(start, end, context, passage_of, 3, cfg, rank)
    assert (row, s, e) == naive_choice(start, end, context, passage_of, cfg, rank)
    assert 0 < prob <= 1


def test_plain_choice_is_the_joint_argmax_and_its_probability():
    g = torch.Generator().manual_seed(7)
    start, end = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    context = torch.rand(3, 8, generator=g) > 0.2
    context[:, 0] = False
    row, s, e, prob = choose_span(start, end, context, torch.arange(3), 3, ReaderConfig(max_answer_tokens=3))
    naive = best_spans_naive(start, end, context, 3)
    assert (row, s, e) == (naive.passage, naive.start, naive.end)
    assert prob == pytest.approx(naive.prob, abs=1e-6)


def test_rank_prior_moves_the_choice_to_the_retrievers_first_passage():
    # Passage 1 has the sharper span (score 6 vs 5); a prior of 2 * ln 2 = 1.39 outweighs the 1-point gap.
    start = torch.tensor([[0.0, 3.0, 0.0], [0.0, 4.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    context = torch.tensor([[False, True, True], [False, True, True]])
    plain = choose_span(start, end, context, torch.arange(2), 2, ReaderConfig())
    prior = choose_span(start, end, context, torch.arange(2), 2, ReaderConfig(rank_prior=2.0))
    assert plain[:3] == (1, 1, 2) and prior[:3] == (0, 1, 2)
    # The reported probability stays the span's joint probability: e^5 / (sum of every span's e^score).
    z = sum(math.exp(x) for x in (3, 5, 2, 4, 6, 2))
    assert prior[3] == pytest.approx(math.exp(5) / z, rel=1e-5)


def test_length_penalty_prefers_the_shorter_span():
    start = torch.tensor([[0.0, 2.0, 1.9, 0.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    context = torch.tensor([[False, True, True, True]])
    assert choose_span(start, end, context, torch.zeros(1), 1, ReaderConfig())[1:3] == (1, 3)
    assert choose_span(start, end, context, torch.zeros(1), 1, ReaderConfig(length_penalty=0.5))[1:3] == (2, 3)


def test_selection_loss_matches_hand_computation():
    rank = torch.tensor([1.0, 2.0, 0.5])
    positive = torch.tensor([True, False, True])
    expected = -math.log((math.exp(1.0) + math.exp(0.5)) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    assert selection_loss(rank, positive).item() == pytest.approx(expected, abs=1e-6)
    assert selection_loss(rank, torch.tensor([True, True, True])).item() == 0.0
    assert selection_loss(rank, torch.tensor([False, False, False])).item() == 0.0


@pytest.fixture()
def ranked_reader(tiny_encoder_dir):
    torch.manual_seed(0)
    reader = ExtractiveReader.from_backbone(str(tiny_encoder_dir), device="cpu", max_length=16, stride=4,
                                            max_answer_tokens=4, rank_head=True, rank_prior=0.7,
                                            length_penalty=0.1)
    torch.nn.init.normal_(reader.model.rank.weight)  # a random selection head, so it takes part in the choice
    reader.precision = "fp32"
    return reader


def test_read_batch_equals_reading_one_question_at_a_time(ranked_reader):
    questions = ["was umkreist die erde", "wohin fließt der nil", "was ist tee", "der mond"]
    passages = [[MOON, TEA], [NILE, MOON, TEA], [TEA], [NILE, TEA, MOON]]  # NILE is read as several windows
    langs = ["de", "de", "en", "de"]
    one = [ranked_reader.read(q, ps, lang) for q, ps, lang in zip(questions, passages, langs, strict=True)]
    for rows in (1, 3, 16):
        many = ranked_reader.read_batch(questions, passages, langs, rows_per_forward=rows)
        for a, b in zip(one, many, strict=True):
            assert (a.text, a.lang, a.evidence[0].passage_id, a.evidence[0].start) == \
                   (b.text, b.lang, b.evidence[0].passage_id, b.evidence[0].start)
            assert a.score == pytest.approx(b.score, abs=1e-5)
    with pytest.raises(CoraError, match="2 questions"):
        ranked_reader.read_batch(questions[:2], passages, langs)


def test_selection_head_is_saved_and_loaded(ranked_reader, tmp_path):
    ranked_reader.save_pretrained(tmp_path / "full")
    again = load_reader(tmp_path / "full", device="cpu", precision="fp32")
    assert torch.equal(again.model.rank.weight, ranked_reader.model.rank.weight)
    a = ranked_reader.read("der mond", [NILE, TEA, MOON], "de")
    b = again.read("der mond", [NILE, TEA, MOON], "de")
    assert (a.text, a.evidence[0].passage_id) == (b.text, b.evidence[0].passage_id)


def test_a_large_delta_is_sharded_and_loads_back(tiny_encoder_dir, tmp_path, monkeypatch):
    import cora.reader.extractive as extractive

    torch.manual_seed(0)
    reader = ExtractiveReader.from_backbone(str(tiny_encoder_dir), device="cpu", trainable_layers=2,
                                            max_length=32, rank_head=True)
    with torch.no_grad():
        for p in reader.model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    monkeypatch.setattr(extractive, "MAX_SHARD_BYTES", 8_000)
    reader.save_pretrained(tmp_path / "r")
    files = delta_files(tmp_path / "r")
    assert len(files) > 2 and all(f.stat().st_size < 8_000 + 4_000 for f in files)
    again = load_reader(tmp_path / "r", device="cpu")
    for k, v in reader.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    reader.config.trainable_layers = 1  # a smaller delta written over the shards replaces them
    extractive.freeze_below(reader.model, 1)
    monkeypatch.setattr(extractive, "MAX_SHARD_BYTES", 10**9)
    reader.save_pretrained(tmp_path / "r")
    assert [f.name for f in delta_files(tmp_path / "r")] == ["reader_delta.safetensors"]


def test_shard_state_keeps_order_and_bounds():
    state = {f"w{i}": torch.zeros(n) for i, n in enumerate([10, 10, 30, 5, 5])}
    shards = shard_state(state, 80)  # float32: 40, 40, 120, 20, 20 bytes
    assert [list(s) for s in shards] == [["w0", "w1"], ["w2"], ["w3", "w4"]]


def test_precision_settings(monkeypatch):
    monkeypatch.delenv("CORA_PRECISION", raising=False)
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setenv("CORA_PRECISION", "fp32")
    assert resolve_precision(None, "cpu") == "fp32"
    with pytest.raises(CoraError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    x = torch.randn(4, 8)
    with autocast("bf16", "cpu"):
        assert (x @ x.T).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ x.T).dtype == torch.float32


def test_bf16_reading_stays_close_to_fp32(ranked_reader):
    enc = ranked_reader.encode_inputs("was umkreist die erde", [MOON, TEA, NILE])
    with torch.no_grad():
        s32, e32, r32 = ranked_reader.model.scores(**enc["inputs"])
        with autocast("bf16", "cpu"):
            s16, e16, r16 = ranked_reader.model.scores(**enc["inputs"])
    for a, b in ((s32, s16), (e32, e16), (r32, r16)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.float().flatten(), dim=0)
        assert cos > 0.99


def test_afriqa_examples_read_the_pivot_passage(tmp_path):
    from cora.reader.training import afriqa_examples

    path = tmp_path / "gold_span_passages.afriqa.hau.en.train.json"
    rows = [{"answer_pivot": {"answer_start": [4], "text": ["ENIAC"]}, "context": "The ENIAC was a computer.",
             "id": "1", "question_lang": "Menene sunan komfuta ta farko?", "question_translated": "What?",
             "title": "ENIAC", "answer_lang": "ENIAC"},
            {"answer_pivot": {"answer_start": [0], "text": ["absent"]}, "context": "No answer here.", "id": "2",
             "question_lang": "q?", "question_translated": "q?", "title": "", "answer_lang": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, passages = afriqa_examples(path, "hau")
    assert len(examples) == 1 and len(passages) == 1
    ex = examples[0]
    assert (ex.question_lang, ex.answer_lang, ex.answers, ex.passages[0].lang) == ("hau", "en", ["ENIAC"], "en")
    path.write_text('{"id": "3"}\n', encoding="utf-8")
    with pytest.raises(CoraError, match=r"train.json:1"):
        afriqa_examples(path, "hau")


def test_negatives_include_a_same_article_paragraph_without_the_answer(tiny_encoder_dir):
    from cora.reader.data import ReaderExample
    from cora.reader.training import ReaderTask

    reader = ExtractiveReader.from_backbone(str(tiny_encoder_dir), device="cpu", max_length=32)
    gold = Passage("f:3:0", "de", "", "Der Mond umkreist die Erde", "g0")
    same = Passage("f:3:1", "de", "", "Tee ist ein Getränk aus Blättern", "g1")
    other = [Passage(f"f:{a}:0", "de", "", f"Der Nil ist ein Fluss {a}", f"n{a}") for a in range(5, 9)]
    pool = {"de": [gold, same, *other]}
    ex = ReaderExample("q", "was umkreist die erde", "de", [gold], ["Der Mond"], "de")
    task = ReaderTask(reader, [ex], 1, pool, negative_rate=1.0, negatives_per_example=2)
    for seed in range(5):
        _, passages, _ = task._item(ex, random.Random(seed))
        # up to two negatives: the same-article paragraph always, a random draw unless it hit gold or `same`
        assert len(passages) in (2, 3) and gold in passages and same in passages
        assert all("Der Mond" not in p.text for p in passages if p is not gold)


class _ToyTask:
    """A linear model on fixed data: what the loop does with gradients can be checked exactly."""

    def __init__(self, n_batches: int, dev: bool = True):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1, bias=False)
        self.data = [torch.randn(2, 3) for _ in range(n_batches)]
        self.dev, self.evals = dev, 0

    def num_batches(self, epoch):
        return len(self.data)

    def batches(self, epoch, rng):
        yield from self.data

    def loss(self, batch):
        return (self.model(batch) ** 2).mean()

    def evaluate(self):
        self.evals += 1
        return {"metric": float(self.evals) if self.dev else None}

    def parameters(self):
        return self.model.parameters()

    def module(self):
        return self.model

    def save(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "w.json").write_text(json.dumps(self.model.weight.tolist()))

    def load_weights(self, folder: Path):
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor(json.loads((folder / "w.json").read_text())))


def test_leftover_micro_batches_make_their_own_step_and_never_leak(tmp_path):
    from cora.training import TrainConfig, train

    task = _ToyTask(n_batches=3)  # grad_accum 2: steps of batches (0, 1), then (2) alone
    w0 = task.model.weight.detach().clone()
    train(task, TrainConfig(str(tmp_path / "run"), epochs=1, grad_accum=2, lr=0.1, warmup_ratio=0.0,
                            weight_decay=0.0, max_grad_norm=1e9, precision="fp32", log_every=1, eval_every=100))
    # By hand: plain AdamW (no decay, constant-then-linear lr over 2 steps: 0.1 then 0.05).
    ref = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        ref.weight.copy_(w0)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.0)
    for group, lr in (([0, 1], 0.1), ([2], 0.05)):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        sum((ref(task.data[i]) ** 2).mean() for i in group).div(len(group)).backward()
        opt.step()
    assert torch.allclose(task.model.weight, ref.weight, atol=1e-6)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2  # each logged loss is the mean over the step's micro-batches, not the last one
    w = w0.clone()
    assert losses[0] == pytest.approx(sum(float((task.data[i] @ w.T).pow(2).mean()) for i in (0, 1)) / 2, rel=1e-5)


def test_without_a_dev_set_best_is_the_latest_evaluation(tmp_path):
    from cora.training import TrainConfig, train

    task = _ToyTask(n_batches=4, dev=False)
    train(task, TrainConfig(str(tmp_path / "run"), epochs=1, lr=0.1, eval_every=1, precision="fp32"))
    best = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert best["step"] == 4 and best["metric"] is None
    last = json.loads((tmp_path / "run" / "last" / "w.json").read_text())
    assert json.loads((tmp_path / "run" / "best" / "w.json").read_text()) == last


def test_max_minutes_stops_a_slice_that_resumes(tmp_path):
    from cora.training import TrainConfig, train

    cfg = TrainConfig(str(tmp_path / "run"), epochs=1, lr=0.1, precision="fp32", max_minutes=1e-9, save_every=100)
    first = train(_ToyTask(n_batches=4), cfg)
    assert first["steps"] == 1 and not first["finished"]
    full = train(_ToyTask(n_batches=4), replace(cfg, max_minutes=None))
    assert full["steps"] == 4 and full["finished"]
    straight = _ToyTask(n_batches=4)
    train(straight, TrainConfig(str(tmp_path / "straight"), epochs=1, lr=0.1, precision="fp32"))
    resumed = json.loads((tmp_path / "run" / "last" / "w.json").read_text())
    assert torch.allclose(torch.tensor(resumed), straight.model.weight, atol=1e-6)


def test_held_out_questions_come_from_outside_the_selection_sample():
    import argparse
    import sys

    from .conftest import shared_data

    data = shared_data("xquad")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import reader_selection

    chosen_on = reader_selection.xquad_questions(argparse.Namespace(data=str(data.parent), per_lang=12, offset=0))
    held_out = reader_selection.xquad_questions(argparse.Namespace(data=str(data.parent), per_lang=20, offset=12))
    assert len(chosen_on) == 12 * 12 and len(held_out) == 12 * 20
    assert not {ex.id for ex in chosen_on} & {ex.id for ex in held_out}
    assert len({ex.id for ex in held_out}) == len(held_out)
    assert {lang: sum(ex.question_lang == lang for ex in held_out) for lang in {ex.question_lang for ex in held_out}} \
        == dict.fromkeys({ex.question_lang for ex in chosen_on}, 20)
