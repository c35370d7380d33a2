"""Asymmetric mDPR: the multi-positive loss vs a naive loop, the LoRA query tower (a no-op before training, the
passage tower untouched by training), save/load, resume, and sharing an index built with the backbone."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from cora.encoder import QUERY_ADAPTER_DIR, Encoder
from cora.errors import CoraError
from cora.losses import multi_positive_loss, multi_positive_loss_naive
from cora.questions import Question
from cora.retriever_training import Ctx, DPRExample, QueryTowerTask, passage_vectors, write_examples
from cora.training import TrainConfig, train


@pytest.mark.parametrize("seed", range(3))
def test_multi_positive_loss_and_gradients_match_naive(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 8, generator=g, requires_grad=True)
    p = torch.randn(6, 8, generator=g, requires_grad=True)
    positive = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    candidate = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    fast = multi_positive_loss(q, p, positive, candidate, 0.1)
    slow = multi_positive_loss_naive(q, p, positive, candidate, 0.1)
    assert fast.item() == pytest.approx(slow.item(), abs=1e-5)
    for a, b in zip(torch.autograd.grad(fast, (q, p)), torch.autograd.grad(slow, (q, p)), strict=True):
        torch.testing.assert_close(a, b)


def test_one_positive_over_all_candidates_is_the_dpr_loss():
    from cora.losses import contrastive_loss

    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(4, 8, generator=g), torch.randn(8, 8, generator=g)
    target = torch.tensor([0, 3, 5, 7])
    positive = torch.nn.functional.one_hot(target, 8).bool()
    got = multi_positive_loss(q, p, positive, torch.ones(4, 8, dtype=torch.bool), 0.05)
    assert got.item() == pytest.approx(contrastive_loss(q, p, target, 0.05).item(), abs=1e-5)


def _encoder(tiny_encoder_dir, adapter: bool = True) -> Encoder:
    torch.manual_seed(0)
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    if adapter:
        enc.add_query_adapter(rank=4)
    return enc


QUESTIONS = {"moon": "der mond umkreist die erde", "nile": "der nil ist ein fluss in afrika",
             "tea": "tee ist ein getränk aus blättern"}


def _examples(datastore) -> list[DPRExample]:
    out = []
    for group, question in QUESTIONS.items():
        ctxs = [Ctx(p.id, p.title, p.text) for p in datastore.rows(datastore.group_rows(group))]
        out += [DPRExample(question, [], "de", ctxs)] * 2
    return out


def _task(tiny_encoder_dir, datastore, tmp_path, name="cache") -> QueryTowerTask:
    enc = _encoder(tiny_encoder_dir)
    vectors = passage_vectors(enc, datastore, tmp_path / name)
    dev = [Question(f"d{g}", q, "de", [], None, g) for g, q in QUESTIONS.items()]
    return QueryTowerTask(enc, _examples(datastore), 2, datastore, vectors, (dev, datastore), temperature=0.1,
                          dev_pivot="en", dev_vectors=vectors)


def test_a_new_adapter_changes_nothing_and_training_changes_only_questions(tiny_encoder_dir, datastore, tmp_path):
    plain = _encoder(tiny_encoder_dir, adapter=False)
    task = _task(tiny_encoder_dir, datastore, tmp_path)
    texts = [p.text for p in datastore]
    # LoRA's B matrices start at zero: before training both towers are the backbone, bit for bit.
    np.testing.assert_array_equal(task.encoder.encode_queries(list(QUESTIONS.values())),
                                  plain.encode_queries(list(QUESTIONS.values())))
    passages_before = task.encoder.encode(texts, "passage")
    batch = next(task.batches(0, random.Random(0)))
    before = task.loss(batch).item()
    train(task, TrainConfig(str(tmp_path / "run"), epochs=20, batch_size=2, lr=1e-2, warmup_ratio=0.0,
                            eval_every=30, save_every=30, log_every=10))
    after = task.loss(batch).item()
    assert after < 0.7 * before  # measured: 1.041 -> 0.594 (seeded)
    np.testing.assert_array_equal(task.encoder.encode(texts, "passage"), passages_before)
    np.testing.assert_array_equal(passages_before, plain.encode(texts, "passage"))
    assert not np.allclose(task.encoder.encode_queries(["tee"]), plain.encode_queries(["tee"]))
    metrics = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert {"R@1", "R@5", "R@1 en", "R@5 en", "metric"} <= set(metrics)
    assert metrics["metric"] == pytest.approx((metrics["R@1"] + metrics["R@1 en"]) / 2)


def test_saved_query_encoder_is_the_adapter_only_and_reloads_exactly(tiny_encoder_dir, datastore, tmp_path):
    task = _task(tiny_encoder_dir, datastore, tmp_path)
    train(task, TrainConfig(str(tmp_path / "run"), epochs=2, batch_size=2, lr=1e-2, warmup_ratio=0.0,
                            eval_every=100, save_every=100, log_every=100))
    folder = tmp_path / "saved"
    task.encoder.save_pretrained(folder)
    assert not (folder / "model.safetensors").exists()  # the passage tower is the backbone named in the config
    assert (folder / QUERY_ADAPTER_DIR / "adapter_model.safetensors").exists()
    again = Encoder.from_pretrained(str(folder), device="cpu")
    assert again.config.query_adapter == QUERY_ADAPTER_DIR and again.config.backbone == str(tiny_encoder_dir)
    qs = list(QUESTIONS.values())
    np.testing.assert_allclose(again.encode_queries(qs), task.encoder.encode_queries(qs), atol=1e-6)
    # The reloaded passage tower shares the token embeddings with its query tower (one copy in memory).
    assert again.query_model.get_input_embeddings() is again.model.get_input_embeddings()


def test_query_tower_resume_gives_the_same_adapter(tiny_encoder_dir, datastore, tmp_path, monkeypatch):
    cfg = dict(epochs=2, batch_size=2, lr=1e-2, warmup_ratio=0.0, eval_every=100, save_every=2, log_every=100)
    straight = _task(tiny_encoder_dir, datastore, tmp_path)
    train(straight, TrainConfig(str(tmp_path / "a"), **cfg))
    interrupted = _task(tiny_encoder_dir, datastore, tmp_path)
    calls = {"n": 0}
    real = interrupted.loss

    def dying_loss(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(interrupted, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, TrainConfig(str(tmp_path / "b"), **cfg))
    resumed = _task(tiny_encoder_dir, datastore, tmp_path)
    train(resumed, TrainConfig(str(tmp_path / "b"), **cfg))
    qs = list(QUESTIONS.values())
    np.testing.assert_allclose(resumed.encoder.encode_queries(qs), straight.encoder.encode_queries(qs), atol=1e-6)


def test_an_index_of_the_backbone_serves_the_query_encoder(tiny_encoder_dir, datastore, tmp_path):
    from cora.index import build_index
    from cora.retriever import Retriever

    from .conftest import make_tiny_encoder

    build_index(datastore, _encoder(tiny_encoder_dir, adapter=False), tmp_path / "idx", str(tiny_encoder_dir),
                factory="Flat", show_progress=False)
    task = _task(tiny_encoder_dir, datastore, tmp_path)
    train(task, TrainConfig(str(tmp_path / "run"), epochs=3, batch_size=2, lr=1e-2, warmup_ratio=0.0,
                            eval_every=100, save_every=100, log_every=100))
    task.encoder.save_pretrained(tmp_path / "q")
    shared = Retriever.from_pretrained(tmp_path / "idx", datastore=datastore, device="cpu",
                                       query_encoder=str(tmp_path / "q"))
    hits = shared.search("tee ist ein getränk aus blättern", k=3)
    expected = task.encoder.encode_queries(["tee ist ein getränk aus blättern"]) @ \
        task.encoder.encode_passages([p.title for p in datastore], [p.text for p in datastore]).T
    assert [h.row for h in hits] == list(np.argsort(-expected[0])[:3])
    # An index whose passages come from other weights cannot be searched with this query tower.
    other = make_tiny_encoder(tmp_path / "other", seed=1)
    build_index(datastore, Encoder.from_pretrained(str(other), device="cpu"), tmp_path / "idx2", str(other),
                factory="Flat", show_progress=False)
    with pytest.raises(CoraError, match="passage"):
        Retriever.from_pretrained(tmp_path / "idx2", datastore=datastore, device="cpu",
                                  query_encoder=str(tmp_path / "q"))


def test_cli_query_tower_needs_a_datastore_and_trains(tiny_encoder_dir, datastore, tmp_path):
    from cora.cli import main

    write_examples(_examples(datastore), tmp_path / "train.json")
    base = ["train", "retriever", "--train-data", str(tmp_path / "train.json"), "--encoder", str(tiny_encoder_dir),
            "--tower", "query", "--lora-rank", "4", "--batch-size", "2", "--max-steps", "2", "--device", "cpu"]
    assert main([*base, "--output-dir", str(tmp_path / "r0")]) == 2  # no --datastore: a one-line error
    assert main([*base, "--output-dir", str(tmp_path / "r1"), "--datastore", str(datastore.path)]) == 0
    again = Encoder.from_pretrained(str(tmp_path / "r1" / "last"), device="cpu")
    assert again.query_model is not None and again.encode_queries(["tee"]).shape == (1, 32)


def test_distill_loss_is_one_minus_cosine_over_temperature():
    from cora.losses import distill_loss

    s = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), dim=-1)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cos = torch.tensor([2 ** -0.5, 1.0])
    assert distill_loss(s, t, 0.05).item() == pytest.approx(((1 - cos) / 0.05).mean().item(), abs=1e-6)


def test_ranking_distill_loss_is_kl_between_the_two_rankings():
    from cora.losses import ranking_distill_loss

    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    ps, pt = torch.softmax(s @ p.T / 0.5, -1)[0], torch.softmax(t @ p.T / 0.5, -1)[0]
    want = sum(pt[n] * (pt[n].log() - ps[n].log()) for n in range(3))
    assert ranking_distill_loss(s, t, p, 0.5).item() == pytest.approx(want.item(), rel=1e-6)
    assert ranking_distill_loss(t, t, p, 0.5).item() == pytest.approx(0.0, abs=1e-7)
    # Only the ranking counts: a student off the teacher's vector but ranking alike costs (almost) nothing.
    assert ranking_distill_loss(torch.tensor([[-0.01, 1.0]]), t, p, 0.5).item() < 1e-3


def test_distillation_pulls_questions_towards_their_pivot(tiny_encoder_dir, datastore, tmp_path):
    english = {"moon": "the moon orbits the earth", "nile": "the nile is a river in africa flowing north",
               "tea": "tea is a drink made from leaves"}
    examples = _examples(datastore)
    for ex in examples:
        ex.pivot_question = next(english[g] for g, q in QUESTIONS.items() if q == ex.question)
    enc = _encoder(tiny_encoder_dir)
    vectors = passage_vectors(enc, datastore, tmp_path / "cache")
    task = QueryTowerTask(enc, examples, 2, datastore, vectors, None, temperature=0.1, distill_weight=1.0)
    teacher = enc.encode(list(english.values()), "query", tower="passage")
    np.testing.assert_array_equal(teacher, _encoder(tiny_encoder_dir, adapter=False).encode_queries(
        list(english.values())))  # the teacher is the frozen backbone's view of the English question

    def cos() -> float:
        student = enc.encode_queries([QUESTIONS[g] for g in english])
        return float((student * teacher).sum(1).mean())

    before = cos()
    train(task, TrainConfig(str(tmp_path / "run"), epochs=20, batch_size=2, lr=1e-2, warmup_ratio=0.0,
                            eval_every=1000, save_every=1000, log_every=1000))
    assert 1 - cos() < 0.25 * (1 - before)  # measured: cosine 0.933 -> 0.994 (seeded)


def test_cross_lingual_scope_routes_by_the_datastores_languages(tiny_encoder_dir, datastore, tmp_path):
    from dataclasses import replace

    from cora.index import build_index
    from cora.retriever import Retriever

    build_index(datastore, _encoder(tiny_encoder_dir, adapter=False), tmp_path / "idx", str(tiny_encoder_dir),
                factory="Flat", show_progress=False)
    enc = _encoder(tiny_encoder_dir)
    with torch.no_grad():  # a trained adapter, in effect (LoRA's B starts at zero)
        for name, param in enc.query_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    enc.config = replace(enc.config, query_adapter_scope="cross-lingual")
    enc.save_pretrained(tmp_path / "q")
    retriever = Retriever.from_pretrained(tmp_path / "idx", datastore=datastore, device="cpu",
                                          query_encoder=str(tmp_path / "q"))
    q = "tee ist ein getränk aus blättern"
    P = enc.encode_passages([p.title for p in datastore], [p.text for p in datastore])
    base = enc.encode([q], "query", tower="passage")[0]
    adapted = enc.encode_queries([q])[0]
    assert not np.allclose(base, adapted)
    for lang, vector in (("de", base), ("fr", adapted)):  # de passages exist; fr ones do not
        hits = retriever.search(q, k=4, lang=lang)
        np.testing.assert_allclose([h.score for h in hits], np.sort(P @ vector)[::-1][:4], atol=1e-5)
    assert Encoder.from_pretrained(str(tmp_path / "q"), device="cpu").config.query_adapter_scope == "cross-lingual"


def test_questions_without_positives_train_only_through_distillation(tiny_encoder_dir, datastore, tmp_path):
    from cora.losses import distill_loss, ranking_distill_loss

    enc = _encoder(tiny_encoder_dir)
    vectors = passage_vectors(enc, datastore, tmp_path / "cache")
    ranked = _examples(datastore)[:2]  # the moon question, twice, with its positives
    unmined = DPRExample("der nil ist ein fluss in afrika", [], "de", [], pivot_question="the nile is a river in africa")
    # Without distillation an example without positives has nothing to teach: it is dropped.
    plain = QueryTowerTask(enc, [*ranked, unmined], 2, datastore, vectors, None, temperature=0.1)
    assert len(plain.items) == 2
    task = QueryTowerTask(enc, [*ranked, unmined], 3, datastore, vectors, None, temperature=0.1, distill_weight=1.0)
    assert len(task.items) == 3 and task.items[2][2] == []
    def as_batch(t):  # the items in order, as batches() yields them (no pivot language to draw here)
        return [(q, rows, lang, pivot, mode) for q, lang, rows, pivot, mode in t.items]

    batch = as_batch(task)
    with torch.no_grad():
        got = task.loss(batch).item()
        q = enc.embed(enc.tokenize([b[0] for b in batch], "query"), "query")
        positive = torch.zeros(2, len(datastore), dtype=torch.bool)
        for i in range(2):
            positive[i, batch[i][1]] = True
        in_de = torch.tensor([lang == "de" for lang in task.langs]).expand(2, -1)
        contrastive = (0.5 * multi_positive_loss(q[:2], task.P, positive, torch.ones_like(positive), 0.1)
                       + 0.5 * multi_positive_loss(q[:2], task.P, positive, in_de, 0.1)) * 2 / 3
        teacher = task.teacher["the nile is a river in africa"].unsqueeze(0)
        want = contrastive + distill_loss(q[2:], teacher, 0.1) * 1 / 3
    assert got == pytest.approx(want.item(), rel=1e-5)
    ranking = QueryTowerTask(enc, [*ranked, unmined], 3, datastore, vectors, None, temperature=0.1,
                             distill_weight=2.0, distill_mode="ranking")
    with torch.no_grad():
        got = ranking.loss(as_batch(ranking)).item()
        want = contrastive + 2.0 * ranking_distill_loss(q[2:], teacher, task.P, 0.1) * 1 / 3
    assert got == pytest.approx(want.item(), rel=1e-5)
    softer = QueryTowerTask(enc, [*ranked, unmined], 3, datastore, vectors, None, temperature=0.1,
                            distill_weight=2.0, distill_mode="ranking", distill_temperature=0.5)
    with torch.no_grad():
        got = softer.loss(as_batch(softer)).item()
        want = contrastive + 2.0 * ranking_distill_loss(q[2:], teacher, task.P, 0.5) * 1 / 3
    assert got == pytest.approx(want.item(), rel=1e-5)
    assert ranking_distill_loss(q[2:], teacher, task.P, 0.5) != pytest.approx(
        ranking_distill_loss(q[2:], teacher, task.P, 0.1).item(), rel=1e-3)
    # An example's own mode overrides the task's: here the nile sentence is distilled vector to vector, a second
    # distillation-only example by ranking, each term weighted by its share of the batch.
    ranked_only = DPRExample("wo ist der mond", [], "de", [], pivot_question="where is the moon")
    vector_one = DPRExample(unmined.question, [], "de", [], pivot_question=unmined.pivot_question,
                            distill_mode="vector")
    mixed = QueryTowerTask(enc, [*ranked, vector_one, ranked_only], 4, datastore, vectors, None, temperature=0.1,
                           distill_weight=2.0, distill_mode="ranking")
    assert [item[4] for item in mixed.items] == ["ranking", "ranking", "vector", "ranking"]
    with torch.no_grad():
        got = mixed.loss(as_batch(mixed)).item()
        q4 = enc.embed(enc.tokenize([item[0] for item in mixed.items], "query"), "query")
        moon = mixed.teacher["where is the moon"].unsqueeze(0)
        want = (contrastive * 3 / 2 * 2 / 4 + 2.0 * ranking_distill_loss(q4[3:], moon, task.P, 0.1) / 4
                + 2.0 * distill_loss(q4[2:3], teacher, 0.1) / 4)
    assert got == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="distill_mode must be None"):
        QueryTowerTask(enc, [*ranked, DPRExample("x", [], "de", [], pivot_question="y", distill_mode="kl")], 2,
                       datastore, vectors, None, distill_weight=1.0)
    with pytest.raises(ValueError, match="distill_mode"):
        QueryTowerTask(enc, ranked, 2, datastore, vectors, None, distill_mode="cosine")
    with pytest.raises(ValueError, match="distill_temperature"):
        QueryTowerTask(enc, ranked, 2, datastore, vectors, None, distill_mode="ranking", distill_temperature=0.0)
    with pytest.raises(ValueError, match="needs distill_mode 'ranking'"):  # the vector form has no ranking to soften
        QueryTowerTask(enc, ranked, 2, datastore, vectors, None, distill_temperature=0.5)
