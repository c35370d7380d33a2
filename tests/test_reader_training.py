"""Reader training: the batched loss against the per-question one, partial fine-tuning and its delta file, the
training mixture's dev exclusion, seeded batches and answer-keeping crops, span alignment, the shipped reader."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from cora.datastore import Datastore, Passage
from cora.errors import CoraError
from cora.reader import ExtractiveReader, load_reader, project_answer
from cora.reader.base import Answer, Evidence
from cora.reader.data import ReaderExample
from cora.reader.extractive import DELTA_FILE
from cora.reader.projection import align_span
from cora.reader.training import ReaderSource, ReaderTask, reader_mixture

MOON = Passage("moon-de", "de", "Mond", "Der Mond umkreist die Erde", "moon")
TEA = Passage("tea-de", "de", "Tee", "Tee ist ein Getränk aus Blättern", "tea")
NILE = Passage("nile-de", "de", "Nil", "Der Nil ist ein Fluss in Afrika und fließt nach Norden", "nile")


@pytest.fixture()
def partial_reader(tiny_encoder_dir):
    torch.manual_seed(0)
    return ExtractiveReader.from_backbone(str(tiny_encoder_dir), device="cpu", trainable_layers=1, max_length=32,
                                          max_answer_tokens=5)


def test_batch_loss_equals_mean_of_per_question_losses(partial_reader):
    partial_reader.model.eval()  # no dropout: both paths must see the same network
    batch = [("was umkreist die erde", [MOON, TEA], ["Der Mond"]),
             ("wohin fließt der nil", [NILE], ["nach Norden"]),
             ("was ist tee", [TEA, NILE, MOON], ["ein Getränk"])]
    fast = partial_reader.batch_loss(batch)
    slow = torch.stack([partial_reader.loss(q, ps, a) for q, ps, a in batch]).mean()
    assert fast.item() == pytest.approx(slow.item(), abs=1e-5)
    assert fast.item() > 0


def test_partial_finetune_trains_top_layers_only_and_saves_a_delta(partial_reader, tmp_path):
    model = partial_reader.model
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".layer.0." in k or "embeddings" in k}
    top = {k: v.clone() for k, v in model.state_dict().items() if ".layer.1." in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = partial_reader.batch_loss([("was umkreist die erde", [MOON, TEA], ["Der Mond"])])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in top.items())

    partial_reader.save_pretrained(tmp_path / "fp32")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "fp32" / DELTA_FILE)))
    assert keys == {k for k in state if ".layer.1." in k or k.startswith("head.")}
    assert not (tmp_path / "fp32" / "encoder").exists()
    again = load_reader(tmp_path / "fp32", device="cpu")
    again_state = again.model.state_dict()
    assert all(torch.equal(again_state[k], v) for k, v in state.items())

    partial_reader.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert (tmp_path / "fp16" / DELTA_FILE).stat().st_size < (tmp_path / "fp32" / DELTA_FILE).stat().st_size
    a = partial_reader.read("was umkreist die erde", [MOON, TEA], "de")
    b = load_reader(tmp_path / "fp16", device="cpu").read("was umkreist die erde", [MOON, TEA], "de")
    assert (a.text, a.evidence[0].passage_id) == (b.text, b.evidence[0].passage_id)
    assert a.score == pytest.approx(b.score, abs=1e-2)


def test_q4_residual_delta_is_small_and_reads_like_the_model(partial_reader, tmp_path):
    from safetensors.torch import load_file

    from cora.reader.extractive import Q4_SUFFIX

    model = partial_reader.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = partial_reader.batch_loss([("was umkreist die erde", [MOON, TEA], ["Der Mond"])])
        opt.zero_grad()
        loss.backward()
        opt.step()
    partial_reader.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    partial_reader.save_pretrained(tmp_path / "q4", q4_residuals=True)
    stored = load_file(str(tmp_path / "q4" / DELTA_FILE))
    matrices = {k for k, v in model.state_dict().items() if ".layer.1." in k and v.ndim == 2}
    assert {k.removesuffix(Q4_SUFFIX) for k in stored if k.endswith(Q4_SUFFIX)} == matrices
    assert (tmp_path / "q4" / DELTA_FILE).stat().st_size < (tmp_path / "fp16" / DELTA_FILE).stat().st_size / 2

    again = load_reader(tmp_path / "q4", device="cpu").model.state_dict()
    state = model.state_dict()
    from cora.encoder import load_hf_encoder, resolve_backbone

    base = {f"encoder.{k}": v for k, v in
            load_hf_encoder(resolve_backbone(partial_reader.config.model))[0].state_dict().items()}
    for k, v in state.items():
        if k in matrices:  # off by at most half a quantisation step of the residual's block
            residual = (v - base[k]).abs().max()
            assert (again[k] - v).abs().max() <= residual / 14 + 1e-3
        elif ".layer.1." in k or k.startswith("head."):
            assert torch.allclose(again[k], v, atol=1e-3)
        else:
            assert torch.equal(again[k], v)
    a = partial_reader.read("was umkreist die erde", [MOON, TEA], "de")
    b = load_reader(tmp_path / "q4", device="cpu").read("was umkreist die erde", [MOON, TEA], "de")
    assert (a.text, a.evidence[0].passage_id) == (b.text, b.evidence[0].passage_id)
    trainable, partial_reader.config.trainable_layers = partial_reader.config.trainable_layers, None
    with pytest.raises(CoraError, match="q4_residuals"):
        partial_reader.save_pretrained(tmp_path / "full", q4_residuals=True)
    partial_reader.config.trainable_layers = trainable


def test_delta_for_another_model_is_refused(partial_reader, tmp_path):
    from safetensors.torch import save_file

    partial_reader.save_pretrained(tmp_path / "r")
    save_file({"encoder.encoder.layer.7.output.dense.weight": torch.zeros(2, 2)}, str(tmp_path / "r" / DELTA_FILE))
    with pytest.raises(CoraError, match="does not fit this backbone"):
        load_reader(tmp_path / "r", device="cpu")
    with pytest.raises(CoraError, match="not a cora reader"):
        load_reader(tmp_path / "nowhere", device="cpu")
    with pytest.raises(CoraError, match="trainable_layers must be between 0 and 2"):
        ExtractiveReader.from_backbone(str(Path(partial_reader.config.model)), device="cpu", trainable_layers=5)


def _squad(articles: list[list[str]], text="{} is here") -> dict:
    return {"data": [{"title": f"t{a}", "paragraphs": [{"context": text.format(qid), "qas": [
        {"id": qid, "question": f"{qid}?", "answers": [{"text": qid, "answer_start": 0}]}]} for qid in ids]}
        for a, ids in enumerate(articles)]}


def test_mixture_drops_every_article_holding_an_xquad_dev_question(tmp_path):
    (tmp_path / "xquad").mkdir()
    for lang in ("en", "de"):
        (tmp_path / "xquad" / f"xquad.{lang}.json").write_text(json.dumps(_squad([[f"x{a}"] for a in range(40)])))
    # A translated copy of SQuAD: article 0 holds a dev question (x35) next to a training one; article 1 is clean.
    (tmp_path / "other.json").write_text(json.dumps(_squad([["o1", "x35"], ["o2"]])))
    sources = [ReaderSource("xquad/xquad.en.json", "en"), ReaderSource("xquad/xquad.de.json", "de"),
               ReaderSource("other.json", "es")]
    mix = reader_mixture(tmp_path, sources, cross_lingual=10, seed=0)
    ids = [ex.id for ex in mix.train]
    assert mix.counts == {"xquad/xquad.en.json": 32, "xquad/xquad.de.json": 32, "other.json": 1,
                          "xquad cross-lingual pairs": 10}
    assert "o2/es" in ids and "o1/es" not in ids and not any(i.startswith(("x3", "x4")) and "/" in i
                                                             and int(i[1:].split("/")[0]) >= 32 for i in ids)
    assert all(ex.question_lang != ex.answer_lang for ex in mix.train if "->" in ex.id)
    with pytest.raises(CoraError, match="no such file"):
        reader_mixture(tmp_path, [ReaderSource("missing/*.json", "fr")])


def test_reader_task_batches_are_seeded_and_crops_keep_the_answer(partial_reader):
    long_text = " ".join(["erde"] * 60 + ["Der", "Mond"] + ["tee"] * 10)
    examples = [ReaderExample(f"q{i}", "was umkreist die erde", "de",
                              [Passage(f"p{i}", "de", "", long_text if i % 2 else MOON.text, f"g{i}")],
                              ["Der Mond"], "de") for i in range(8)]
    task = ReaderTask(partial_reader, examples, batch_size=2, negatives={"de": [TEA, NILE]}, negative_rate=0.5)
    first = list(task.batches(0, random.Random(3)))
    assert first == list(task.batches(0, random.Random(3)))
    assert len(first) == 4 and sorted(len(b) for b in first) == [2, 2, 2, 2]
    for batch in first:
        for _, passages, _answers in batch:
            gold = [p for p in passages if p.group.startswith("g")]
            assert len(gold) == 1 and "Der Mond" in gold[0].text  # cropped around the answer, never away from it
            ids = partial_reader.tokenizer(gold[0].text, add_special_tokens=False)["input_ids"]
            assert len(ids) <= partial_reader.config.max_length * 3 // 4
    assert any(len(ps) == 2 for b in first for _, ps, _ in b)  # some examples carry an answerless passage


def test_align_span_finds_the_same_span_in_an_identical_text(partial_reader):
    text = "Der Nil ist ein Fluss in Afrika und fließt nach Norden"
    start = text.index("nach Norden")
    s, e, sim = align_span(partial_reader.model.encoder, partial_reader.tokenizer, text, start,
                           start + len("nach Norden"), text)
    assert text[s:e] == "nach Norden" and sim == pytest.approx(1.0, abs=1e-5)


def test_projection_by_alignment_cites_both_passages(partial_reader, tmp_path):
    ds = Datastore.build([Passage("nile-en", "en", "Nile", "Der Nil fließt nach Norden", "nile"),
                          Passage("nile-de", "de", "Nil", "Der Nil fließt nach Norden", "nile")], tmp_path / "ds")
    src = ds.get("nile-en")
    at = src.text.index("Norden")
    english = Answer("Norden", "de", 0.9, [Evidence(src.id, "en", src.title, src.text, at, at + 6, 0.9)])
    projected = project_answer(partial_reader, "wohin fließt der nil", english, ds, method="align")
    assert projected.projected and projected.text == "Norden"
    assert [(e.passage_id, e.role) for e in projected.evidence] == [("nile-en", "source"), ("nile-de", "projection")]
    with pytest.raises(CoraError, match="unknown projection method"):
        project_answer(partial_reader, "?", english, ds, method="magic")


def test_shipped_reader_is_small_and_loads():
    from cora.reader.base import SHIPPED_READERS, resolve_reader
    from cora.reader.extractive import delta_files

    resources = Path(__file__).resolve().parents[1] / "cora" / "resources"
    shipped = [f for f in resources.rglob("*") if f.is_file() and f.suffix == ".safetensors"]
    assert shipped, "no shipped weights in cora/resources"
    assert sum(f.stat().st_size for f in shipped) <= 30 * 1024 * 1024
    assert all(f.stat().st_size <= 5 * 1024 * 1024 for f in shipped)  # every file under the 5 MiB limit
    for name in SHIPPED_READERS:
        folder = resolve_reader(name)
        config = json.loads((folder / "reader_config.json").read_text())
        assert config["backend"] == "extractive" and config["model"] == "me5-small"
        assert delta_files(folder)


def test_shipped_reader_answers_from_the_right_passage():
    """The shipped 4-bit reader loads onto me5-small and reads the answer from the passage that holds it."""
    reader = load_reader("me5-small-reader", device="cpu")
    passages = [Passage("tea-en", "en", "Tea", "Tea is an aromatic drink made from the leaves of Camellia sinensis.",
                        "tea"),
                Passage("nile-en", "en", "Nile", "The Nile is a major river in Africa. It flows north into the "
                                                 "Mediterranean Sea and is about 6,650 km long.", "nile")]
    answer = reader.read("How long is the Nile?", passages, "en")
    assert answer.evidence[0].passage_id == "nile-en"
    assert answer.text in ("6,650 km", "about 6,650 km", "6,650 km long")  # the reader's span, with or without
    assert 0 < answer.score <= 1
