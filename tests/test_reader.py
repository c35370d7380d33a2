"""Readers: joint span scoring vs a naive reference, span loss, projection, the seq2seq path, the Pipeline."""

from __future__ import annotations

import random

import pytest
import torch

from cora.datastore import Passage
from cora.errors import CoraError
from cora.reader import Answer, Evidence, format_source, project_answer, training_passages
from cora.reader.spans import best_spans, best_spans_naive, joint_span_loss

from .conftest import make_tiny_mt5, make_tiny_reader


@pytest.mark.parametrize("seed", range(5))
def test_joint_best_span_equals_naive_loops(seed):
    g = torch.Generator().manual_seed(seed)
    P, L = 3, 12
    start, end = torch.randn(P, L, generator=g), torch.randn(P, L, generator=g)
    context = torch.rand(P, L, generator=g) > 0.3
    context[:, 0] = False  # the question/special token is never part of an answer
    fast = best_spans(start, end, context, max_len=4)[0]
    slow = best_spans_naive(start, end, context, max_len=4)
    assert (fast.passage, fast.start, fast.end) == (slow.passage, slow.start, slow.end)
    assert fast.score == pytest.approx(slow.score, abs=1e-5)
    assert fast.prob == pytest.approx(slow.prob, abs=1e-5)


def test_joint_scoring_is_not_k_independent_argmaxes():
    # Passage 0 has one sharp span; passage 1 has a higher single logit but its best span scores lower.
    start = torch.tensor([[0.0, 5.0, 0.0], [0.0, 6.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 3.0]])
    context = torch.tensor([[False, True, True], [False, True, True]])
    best = best_spans(start, end, context, max_len=3)[0]
    assert (best.passage, best.start, best.end) == (0, 1, 2) and best.score == 10.0


def test_joint_span_loss_matches_hand_computation():
    start = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 0.5]])
    end = torch.tensor([[0.0, 0.5, 1.0], [0.0, 2.0, 0.0]])
    context = torch.tensor([[False, True, True], [False, True, True]])
    gs = torch.zeros(2, 3, dtype=torch.bool)
    ge = torch.zeros(2, 3, dtype=torch.bool)
    gs[0, 1], ge[0, 2], gs[1, 1], ge[1, 1] = True, True, True, True  # two gold occurrences
    s = torch.tensor([1.0, 2.0, 3.0, 0.5])  # context start logits, all passages
    e = torch.tensor([0.5, 1.0, 2.0, 0.0])
    expected = -(torch.log((torch.exp(s[0]) + torch.exp(s[2])) / torch.exp(s).sum())
                 + torch.log((torch.exp(e[1]) + torch.exp(e[2])) / torch.exp(e).sum()))
    assert joint_span_loss(start, end, context, gs, ge).item() == pytest.approx(expected.item(), abs=1e-6)
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert joint_span_loss(start, end, context, none, none).item() == 0.0


PASSAGES = [
    Passage("moon-de", "de", "Mond", "Der Mond umkreist die Erde", "moon"),
    Passage("tea-de", "de", "Tee", "Tee ist ein Getränk aus Blättern", "tea"),
]


@pytest.fixture()
def tiny_reader(tiny_encoder_dir):
    return make_tiny_reader(tiny_encoder_dir, precision="fp32")


def test_long_passages_are_read_in_windows_scored_jointly(tiny_encoder_dir):
    """With a stride, a passage longer than the input is read as overlapping windows: every token is reachable,
    and the answer equals a naive search over all windows' spans, mapped back to the passage text."""
    from dataclasses import replace

    reader = make_tiny_reader(tiny_encoder_dir, seed=1, precision="fp32", max_length=12, max_answer_tokens=3,
                              stride=3)
    words = "der nil ist ein fluss in afrika der mond umkreist die erde tee ist ein getränk aus blättern".split()
    long = Passage("long-de", "de", "", " ".join(words), "g")
    passages = [PASSAGES[0], long]
    enc = reader.encode_inputs("was", passages, windows=True)
    rows = enc["passage_of"].tolist()
    assert rows[0] == 0 and rows.count(1) >= 2  # the long passage became several windows
    covered = {int(enc["offsets"][r, t, 0]) for r in range(len(rows)) if rows[r] == 1
               for t in range(enc["context"].shape[1]) if enc["context"][r, t]}
    starts = {i for i in range(len(long.text)) if (i == 0 or long.text[i - 1] == " ")}
    assert covered == starts  # every word of the long passage is in some window
    with torch.no_grad():
        start, end = reader.model(**enc["inputs"])
    naive = best_spans_naive(start, end, enc["context"], 3)
    p = passages[rows[naive.passage]]
    expected = p.text[int(enc["offsets"][naive.passage, naive.start, 0]):
                      int(enc["offsets"][naive.passage, naive.end, 1])].strip()
    got = reader.read("was", passages, "de")
    assert (got.text, got.evidence[0].passage_id) == (expected, p.id)
    assert got.score == pytest.approx(naive.prob, abs=1e-5)
    # Without a stride the same passage is cut at max_length: its last words are never candidates.
    cut = replace(reader.config, stride=None)
    reader.config = cut
    enc = reader.encode_inputs("was", passages, windows=True)
    assert enc["passage_of"].tolist() == [0, 1]


def test_extractive_reader_learns_a_span_and_cites_it(tiny_reader):
    question, gold = "was umkreist die erde", "Der Mond"
    opt = torch.optim.AdamW(tiny_reader.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = tiny_reader.loss(question, PASSAGES, [gold])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    answer = tiny_reader.read(question, PASSAGES, "de")
    assert answer.text == gold and answer.lang == "de"
    ev = answer.evidence[0]
    assert ev.passage_id == "moon-de" and PASSAGES[0].text[ev.start : ev.end] == gold
    assert 0 < answer.score <= 1


def test_extractive_reader_save_load_round_trip(tiny_reader, tmp_path):
    from cora.reader import load_reader

    tiny_reader.save_pretrained(tmp_path / "reader")
    again = load_reader(tmp_path / "reader", device="cpu", precision="fp32")
    a, b = tiny_reader.read("tee", PASSAGES, "de"), again.read("tee", PASSAGES, "de")
    assert (a.text, a.evidence[0].start) == (b.text, b.evidence[0].start)
    assert a.score == pytest.approx(b.score, abs=1e-6)


def test_reader_bad_inputs(tiny_reader):
    with pytest.raises(CoraError, match="empty question"):
        tiny_reader.read("  ", PASSAGES, "de")
    with pytest.raises(CoraError, match="no passage with text"):
        tiny_reader.read("tee", [Passage("x", "de", "", " ", "x")], "de")
    # Passages without text are skipped, not read.
    answer = tiny_reader.read("tee", [Passage("x", "de", "", "", "x"), PASSAGES[1]], "de")
    assert answer.evidence[0].passage_id == "tea-de"


class FirstWordReader:
    """A deterministic reader for the projection test: answers with the first word of the first passage."""

    def read(self, question, passages, answer_lang):
        p = passages[0]
        word = p.text.split()[0]
        return Answer(word, answer_lang, 1.0, [Evidence(p.id, p.lang, p.title, p.text, 0, len(word), 1.0)])


def test_projection_reads_the_sibling_in_the_question_language(tmp_path):
    from cora.datastore import Datastore

    ds = Datastore.build([
        Passage("everest-en", "en", "Everest", "Everest is 8,849 metres high", "everest"),
        Passage("everest-de", "de", "Everest", "8.849 Meter hoch ist der Everest", "everest"),
        Passage("nile-en", "en", "Nile", "Nile flows north", "nile"),
    ], tmp_path / "ds")
    reader = FirstWordReader()
    english = reader.read("Wie hoch ist der Everest?", [ds.get("everest-en")], "de")
    projected = project_answer(reader, "Wie hoch ist der Everest?", english, ds)
    assert projected.projected and projected.text == "8.849"
    assert [(e.passage_id, e.role) for e in projected.evidence] == [("everest-en", "source"),
                                                                    ("everest-de", "projection")]
    # No sibling in the answer language: unchanged.
    nile = reader.read("Wohin fließt der Nil?", [ds.get("nile-en")], "de")
    assert project_answer(reader, "Wohin fließt der Nil?", nile, ds) is nile
    # Evidence already in the answer language: unchanged.
    same = reader.read("?", [ds.get("everest-de")], "de")
    assert project_answer(reader, "?", same, ds) is same


def test_cora_mgen_input_format_is_exact():
    ps = [Passage("a", "en", "Everest", "It is high.", "g"), Passage("b", "de", "Nil", "Ein Fluss.", "h")]
    assert format_source("Wie hoch?", "de", ps) == "<Q>: Wie hoch? [de] <P>:<0: Everest> It is high. <1: Nil> Ein Fluss."


def test_training_passages_follow_cora_recipe():
    ranked = [Passage(f"p{i}", "en", "", f"text {i}" + (" ANSWER" if i in (1, 4, 6, 8, 12) else ""), f"g{i}")
              for i in range(15)]
    ctx = training_passages(ranked, ["ANSWER"], random.Random(0), k=10, max_positive=3)
    assert len(ctx) == 10 and len({p.id for p in ctx}) == 10
    assert sum("ANSWER" in p.text for p in ctx) == 3  # at most 3 positives (4 in the top 10)
    assert all(int(p.id[1:]) < 10 for p in ctx if "ANSWER" in p.text)  # p12 is outside the top 10
    assert [p.id for p in ctx] != sorted((p.id for p in ctx), key=lambda x: int(x[1:]))  # shuffled
    assert ctx == training_passages(ranked, ["ANSWER"], random.Random(0), k=10, max_positive=3)  # seeded


@pytest.fixture(scope="module")
def tiny_mt5():
    words = "<Q>: [de] [en] <P>:<0: <1: Everest> Nil> wie hoch ist der everest? es ist 8.849 meter".split()
    return make_tiny_mt5(words, d_model=32, layers=2, num_beams=2, max_target_length=6)


def test_seq2seq_training_lowers_loss_and_generates(tiny_mt5, tmp_path):
    from cora.reader import load_reader

    ps = [Passage("a", "de", "Everest", "es ist 8.849 meter", "g")]
    opt = torch.optim.AdamW(tiny_mt5.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = tiny_mt5.loss("wie hoch ist der everest?", "de", ps, "8.849 meter")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    answer = tiny_mt5.read("wie hoch ist der everest?", ps, "de")
    assert answer.text == "8.849 meter" and answer.lang == "de"
    assert answer.evidence[0].passage_id == "a" and answer.evidence[0].start == 7
    tiny_mt5.save_pretrained(tmp_path / "gen")
    assert load_reader(tmp_path / "gen", device="cpu").read("wie hoch ist der everest?", ps, "de").text == answer.text


def test_pipeline_save_load_round_trip_and_cli(tiny_reader, datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    import json

    from cora.cli import main
    from cora.index import build_index
    from cora.pipeline import Pipeline

    build_index(datastore, tiny_encoder, tmp_path / "index", str(tiny_encoder_dir), factory="Flat",
                show_progress=False)
    tiny_reader.save_pretrained(tmp_path / "reader")
    Pipeline.create(tmp_path / "pipe", tmp_path / "index", tmp_path / "reader", k=3)
    saved = json.loads((tmp_path / "pipe" / "pipeline.json").read_text(encoding="utf-8"))
    assert (saved["index"], saved["reader"]) == ("../index", "../reader")  # relative: the folders can move together
    pipe = Pipeline.from_pretrained(tmp_path / "pipe", device="cpu")
    assert pipe.retriever.bm25 is None  # dense by default
    answer = pipe.answer("der mond umkreist die erde", lang="de")
    hits = pipe.retriever.search("der mond umkreist die erde", k=3)
    direct = tiny_reader.read("der mond umkreist die erde", datastore.rows([h.row for h in hits]), "de")
    assert answer.lang == "de"
    # The top hit is the German passage itself, so no projection: the pipeline equals the reader on the hits.
    assert hits[0].passage_id == "moon-de" and direct.evidence[0].lang == "de" and not answer.projected
    assert (answer.text, answer.evidence[0].passage_id) == (direct.text, direct.evidence[0].passage_id)
    ev = answer.evidence[0]
    assert ev.text[ev.start : ev.end].strip() == answer.text
    with pytest.raises(CoraError, match="k must be between 1 and 100"):
        pipe.answer("tee", k=0)
    with pytest.raises(CoraError, match="empty question"):
        pipe.answer(" ")

    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "der mond umkreist die erde", "lang": "de"}\n', encoding="utf-8")
    assert main(["answer", "--pipeline", str(tmp_path / "pipe"), "--questions", str(q), "--out",
                 str(tmp_path / "pred.json"), "--details", str(tmp_path / "d.jsonl"), "--device", "cpu"]) == 0
    preds = json.loads((tmp_path / "pred.json").read_text())
    assert preds == {"a": answer.text}
    detail = json.loads((tmp_path / "d.jsonl").read_text())
    assert detail["id"] == "a" and detail["evidence"][0]["passage_id"] == answer.evidence[0].passage_id


def test_pipeline_with_a_query_encoder_over_the_backbone_index(tiny_reader, datastore, tiny_encoder,
                                                              tiny_encoder_dir, tmp_path):
    import numpy as np

    from cora.encoder import Encoder
    from cora.index import build_index
    from cora.pipeline import Pipeline

    build_index(datastore, tiny_encoder, tmp_path / "index", str(tiny_encoder_dir), factory="Flat",
                show_progress=False)
    query = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    query.add_query_adapter(rank=2)
    with torch.no_grad():  # a trained adapter, in effect: LoRA's B starts at zero, so move it
        for name, param in query.query_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    query.save_pretrained(tmp_path / "query")
    tiny_reader.save_pretrained(tmp_path / "reader")
    Pipeline.create(tmp_path / "pipe", tmp_path / "index", tmp_path / "reader", k=3,
                    query_encoder=str(tmp_path / "query"), hybrid=True)
    pipe = Pipeline.from_pretrained(tmp_path / "pipe", device="cpu")
    assert pipe.config.hybrid and pipe.retriever.bm25 is not None  # the saved choice is restored
    got = pipe.retriever.encoder.encode_queries(["tee"])
    np.testing.assert_allclose(got, query.encode_queries(["tee"]), atol=1e-6)
    assert not np.allclose(got, tiny_encoder.encode_queries(["tee"]))
    assert pipe.answer("der mond umkreist die erde", lang="de").text


def test_reader_examples_cross_lingual_pairs_and_dev_split(tmp_path):
    import json

    from cora.reader.data import XQUAD_TRAIN_ARTICLES, cross_lingual_examples, squad_examples

    def squad(ctx, ans, n_articles=34):
        return {"data": [{"title": "t", "paragraphs": [{"context": ctx.format(a), "qas": [
            {"id": f"id{a}", "question": f"q{a}?", "answers": [{"text": ans.format(a), "answer_start": 0}]}]}]}
            for a in range(n_articles)]}

    (tmp_path / "x.en.json").write_text(json.dumps(squad("A{} is here", "A{}")))
    (tmp_path / "x.de.json").write_text(json.dumps(squad("B{} ist hier", "B{}")))
    by_lang = {lang: list(squad_examples(tmp_path / f"x.{lang}.json", lang, XQUAD_TRAIN_ARTICLES))
               for lang in ("en", "de")}
    assert len(by_lang["en"]) == 32 and all(ex.id != "id33/en" for ex in by_lang["en"])  # 32, 33 are dev
    pairs = cross_lingual_examples(by_lang, random.Random(0))
    assert len(pairs) == 64
    de_to_en = next(p for p in pairs if p.id == "id5/de->en")
    assert (de_to_en.question, de_to_en.passages[0].text, de_to_en.answers, de_to_en.answer_lang) == \
        ("q5?", "A5 is here", ["A5"], "en")


def test_one_passage_per_forward_equals_one_batch(tiny_reader):
    from dataclasses import replace

    passages = PASSAGES + [Passage("nile-de", "de", "Nil", "Der Nil ist ein Fluss in Afrika und fließt nach Norden",
                                   "nile")]
    batched = replace(tiny_reader.config, passages_per_forward=len(passages))
    single = replace(tiny_reader.config, passages_per_forward=1)
    tiny_reader.config = batched
    a = tiny_reader.read("wo fließt der nil", passages, "de")
    tiny_reader.config = single
    b = tiny_reader.read("wo fließt der nil", passages, "de")
    assert (a.text, a.evidence[0].passage_id, a.evidence[0].start) == (b.text, b.evidence[0].passage_id,
                                                                        b.evidence[0].start)
    assert a.score == pytest.approx(b.score, abs=1e-5)
