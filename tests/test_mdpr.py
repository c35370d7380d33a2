"""mDPR: the contrastive loss vs a naive loop, the data builders, and the training loop (learning + resume)."""

from __future__ import annotations

import json

import pytest
import torch

from cora.datastore import Datastore, Passage
from cora.losses import contrastive_loss, contrastive_loss_naive, gather_with_grad
from cora.questions import Question
from cora.retriever_training import DPRExample, RetrieverTask, build_examples, read_examples, write_examples
from cora.training import TrainConfig, train


@pytest.mark.parametrize("seed", range(3))
def test_contrastive_loss_and_gradients_match_naive(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, 8, generator=g, requires_grad=True)
    p = torch.randn(8, 8, generator=g, requires_grad=True)  # 4 positives + 4 hard negatives
    target = torch.arange(4)
    fast = contrastive_loss(q, p, target, 0.1)
    slow = contrastive_loss_naive(q, p, target, 0.1)
    assert fast.item() == pytest.approx(slow.item(), abs=1e-5)
    gq_fast, gp_fast = torch.autograd.grad(fast, (q, p))
    gq_slow, gp_slow = torch.autograd.grad(slow, (q, p))
    torch.testing.assert_close(gq_fast, gq_slow)
    torch.testing.assert_close(gp_fast, gp_slow)
    assert gather_with_grad(q) is q  # no process group: the gather is the identity


def test_builders_add_language_linked_positives_and_answerless_hard_negatives(tmp_path):
    from cora.bm25 import BM25Index

    ds = Datastore.build([
        Passage("a-en", "en", "", "The Nile flows north into the Mediterranean", "nile"),
        Passage("a-de", "de", "", "Der Nil fließt nach Norden", "nile"),
        Passage("b-en", "en", "", "The Nile delta is in Egypt, a river mouth", "delta"),
        Passage("c-en", "en", "", "The Nile is the longest river: it flows north", "long"),
    ], tmp_path / "ds")
    q = Question("q1/en", "Where does the Nile river flow?", "en", ["north"], "a-en", "nile")
    missing = Question("q2/en", "?", "en", ["x"], "zz-en", "zz")
    (ex,) = build_examples([q, missing], ds, BM25Index(ds), hard_negatives=3)
    assert [c.passage_id for c in ex.positive_ctxs] == ["a-en", "a-de"]  # gold first, then its language links
    assert [c.passage_id for c in ex.hard_negative_ctxs] == ["b-en"]  # c-en contains the answer 'north'
    write_examples([ex], tmp_path / "train.json")
    assert read_examples(tmp_path / "train.json", ds)[0] == ex


def test_read_examples_skips_and_counts_unusable(tmp_path, caplog, datastore):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([
        {"question": "ok", "positive_ctxs": [{"passage_id": "moon-en", "title": "", "text": "t"}]},
        {"question": "no positives", "positive_ctxs": []},
        {"question": "unknown id", "positive_ctxs": [{"passage_id": "nope", "title": "", "text": "t"}]},
    ]))
    got = read_examples(path, datastore)
    assert [e.question for e in got] == ["ok"]
    assert "skipped 2 examples without a usable positive; dropped 1 positives not in the datastore" in caplog.text


def test_xquad_builder_keeps_dev_articles_out():
    from cora.questions import read_squad_questions

    from .conftest import shared_data

    path = shared_data("xquad", "xquad.de.json")
    train_qs = list(read_squad_questions(path, "de", range(0, 32)))
    assert train_qs and all(q.article < 32 for q in train_qs)


def _examples(datastore):
    qs = {"moon": "der mond umkreist die erde", "nile": "der nil ist ein fluss in afrika",
          "tea": "tee ist ein getränk aus blättern"}
    out = []
    for group, question in qs.items():
        rows = datastore.group_rows(group)
        ps = datastore.rows(rows)
        from cora.retriever_training import Ctx

        ctxs = [Ctx(p.id, p.title, p.text) for p in ps]
        out += [DPRExample(question, [], "de", ctxs)] * 2
    return out


def _task(tiny_encoder_dir, datastore):
    from cora.encoder import Encoder

    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    dev = [Question(f"d{g}", q, "de", [], None, g) for g, q in (("moon", "der mond umkreist die erde"),
                                                               ("tea", "tee ist ein getränk aus blättern"))]
    return RetrieverTask(encoder, _examples(datastore), batch_size=2, dev=(dev, datastore), temperature=0.1,
                         freeze_embeddings=False)


def test_tiny_training_run_lowers_the_loss(tiny_encoder_dir, datastore, tmp_path):
    task = _task(tiny_encoder_dir, datastore)
    batch = next(task.batches(0, __import__("random").Random(0)))
    before = task.loss(batch).item()
    result = train(task, TrainConfig(str(tmp_path / "run"), epochs=8, batch_size=2, lr=1e-3, warmup_ratio=0.0,
                                     eval_every=6, save_every=6, log_every=3))
    after = task.loss(batch).item()
    assert after < 0.8 * before  # measured: 1.382 -> 0.995 (seeded, so reproducible)
    assert (tmp_path / "run" / "best" / "encoder_config.json").exists()
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["lr"] == 1e-3
    assert result["steps"] == 24


def test_resume_after_interruption_gives_the_same_weights(tiny_encoder_dir, datastore, tmp_path, monkeypatch):
    cfg = dict(epochs=2, batch_size=2, lr=1e-3, warmup_ratio=0.0, eval_every=100, save_every=2, log_every=100)
    straight = _task(tiny_encoder_dir, datastore)
    train(straight, TrainConfig(str(tmp_path / "a"), **cfg))

    interrupted = _task(tiny_encoder_dir, datastore)
    calls = {"n": 0}
    real = interrupted.loss

    def dying_loss(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 2... and one more step's work, lost
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(interrupted, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, TrainConfig(str(tmp_path / "b"), **cfg))
    resumed = _task(tiny_encoder_dir, datastore)  # a new process: fresh model, state from the checkpoint
    train(resumed, TrainConfig(str(tmp_path / "b"), **cfg))
    for (name, a), (_, b) in zip(straight.encoder.model.named_parameters(),
                                 resumed.encoder.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_cli_train_retriever_saves_config_and_a_loadable_encoder(tiny_encoder_dir, datastore, tmp_path):
    from cora.cli import main
    from cora.encoder import Encoder

    write_examples(_examples(datastore), tmp_path / "train.json")
    (tmp_path / "cfg.json").write_text(json.dumps({"temperature": 0.1, "lr": 1e-3, "batch_size": 2}))
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"id": "d1", "question": "der mond umkreist die erde", "gold_group": "moon"}\n')
    assert main(["train", "retriever", "--config", str(tmp_path / "cfg.json"), "--train-data",
                 str(tmp_path / "train.json"), "--output-dir", str(tmp_path / "run"), "--encoder",
                 str(tiny_encoder_dir), "--dev-questions", str(dev), "--dev-datastore", str(datastore.path),
                 "--max-steps", "2", "--eval-every", "2", "--no-dropout", "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "run" / "retriever_config.json").read_text())
    assert saved["temperature"] == 0.1 and saved["dropout"] is False and saved["max_steps"] == 2
    again = Encoder.from_pretrained(str(tmp_path / "run" / "best"), device="cpu")
    assert again.encode_queries(["tee"]).shape == (1, 32)
