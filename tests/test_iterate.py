"""The CORA loop: mining rules on hand-made labels, and two tiny rounds end to end with resume."""

from __future__ import annotations

import json

import pytest
import torch

from cora.datastore import Datastore, read_jsonl
from cora.errors import CoraError
from cora.iterate import IterateConfig, Loop
from cora.mining import Label, cora_rule, expand_by_groups, is_correct
from cora.questions import Question
from tests.conftest import CORPUS

from .conftest import make_tiny_mt5, make_tiny_reader

TRAIN = [
    Question("nile/en", "where is the nile river", "en", ["Africa"], "nile-en", "nile",
             answers_by_lang={"de": ["Afrika"], "es": ["África"]}),
    Question("nile/de", "wo ist der nil", "de", ["Afrika"], "nile-de", "nile",
             answers_by_lang={"en": ["Africa"], "es": ["África"]}),
    Question("moon/es", "que orbita la luna", "es", ["la Tierra"], "moon-es", "moon",
             answers_by_lang={"en": ["the Earth"], "de": ["die Erde"]}),
    Question("tea/en", "what is tea made from", "en", ["leaves"], "tea-en", "tea",
             answers_by_lang={"de": ["Blättern"], "es": ["hojas"]}),
]
DEV = [Question("moon/en", "what does the moon orbit", "en", ["the Earth"], None, "moon"),
       Question("tea/de", "woraus ist tee", "de", ["Blättern"], None, "tea")]


# ------------------------------------------------------------------------------------------ the rules
def test_cora_rule_positives_negatives_and_fallback():
    labels = [Label(5, "en", "Africa", True, True), Label(6, "en", "Asia", False, True),
              Label(7, "de", "Mond", False, False)]
    assert cora_rule(labels) == ([5], [7], False)
    # No reader positive: the answer-containing wrong ones become fallback positives.
    assert cora_rule(labels[1:]) == ([6], [7], True)
    assert cora_rule([Label(7, "de", "x", False, False)]) == ([], [7], False)
    # fallback_depth: fallbacks only from the top N; a reader-confirmed positive counts from any depth.
    assert cora_rule([labels[2], labels[1]], fallback_depth=1) == ([], [7], False)
    assert cora_rule([labels[2], labels[1]], fallback_depth=2) == ([6], [7], True)
    assert cora_rule([labels[2], labels[1], labels[0]], fallback_depth=1) == ([5], [7], False)


def test_is_correct_uses_language_aware_normalisation():
    assert is_correct("Earth.", ["earth"], "en")  # case and punctuation are normalised away
    assert not is_correct("the Earth", ["Earth"], "en")  # XOR keeps articles (multilingual normalisation)
    assert not is_correct("", ["Earth"], "en")
    assert not is_correct("Earth", [""], "en")


def test_expand_by_groups_accepts_by_answer_or_by_reader(datastore):
    q = TRAIN[0]
    en, de, es = (datastore.row_of(i) for i in ("nile-en", "nile-de", "nile-es"))
    asked = []

    def confirm(p):
        asked.append(p.id)
        return False

    # Both versions hold the answer in their own language: accepted without asking the reader.
    assert expand_by_groups(q, [en], datastore, confirm) == {de: "answer", es: "answer"}
    assert asked == []
    # Without the Spanish answer the reader decides.
    q2 = Question("q", "where is the nile river", "en", ["Africa"], answers_by_lang={"de": ["Afrika"]})
    assert expand_by_groups(q2, [en], datastore, lambda p: True) == {de: "answer", es: "reader"}
    assert expand_by_groups(q2, [en], datastore, confirm) == {de: "answer"} and asked == ["nile-es"]
    # A passage without a group of its own kind has no siblings.
    assert expand_by_groups(q, [datastore.row_of("solo-en")], datastore, confirm) == {}


# ---------------------------------------------------------------------------------------- end to end
def _write(path, questions):
    from cora.questions import write_questions

    write_questions(questions, path)
    return path


def _tiny_extractive_reader(encoder_dir, folder):
    make_tiny_reader(encoder_dir, max_answer_tokens=3).save_pretrained(folder)
    return folder


def _tiny_mt5_reader(folder):
    words = {w for p in CORPUS for w in (p["title"] + " " + p["text"]).split()}
    words |= {w for q in TRAIN + DEV for w in (q.question + " " + " ".join(q.answers)).split()}
    make_tiny_mt5(["<Q>:", "<P>:", *sorted(words)]).save_pretrained(folder)
    return folder


@pytest.fixture()
def loop_config(tmp_path, datastore, corpus_file, tiny_encoder_dir):
    english = Datastore.build((x for x in read_jsonl(corpus_file) if x[1].lang == "en"), tmp_path / "ds-en")
    return dict(
        output_dir=str(tmp_path / "run"), datastore=str(datastore.path),
        train_questions=str(_write(tmp_path / "train.jsonl", TRAIN)),
        dev_questions=str(_write(tmp_path / "dev.jsonl", DEV)),
        encoder=str(tiny_encoder_dir), reader=str(_tiny_extractive_reader(tiny_encoder_dir, tmp_path / "reader")),
        rounds=2, eval_datastores={"en": str(english.path)}, retrieve_k=6, label_depth=4, hard_negatives=2,
        reader_k=3, reader_positives=1, eval_k=2, recall_ks=[1, 3],
        retriever_train={"batch_size": 2, "max_steps": 2, "lr": 1e-3, "save_every": 1, "eval_every": 100},
        reader_train={"batch_size": 2, "max_steps": 2, "lr": 1e-3, "save_every": 1, "eval_every": 100},
        device="cpu")


def test_two_rounds_end_to_end_with_resume_and_config_check(loop_config, datastore, monkeypatch):
    cfg = IterateConfig(**loop_config)
    run = Loop(cfg).out

    # Interrupt round 1 while the reader trains: everything before it is complete, the reader is absent.
    def boom(*a, **k):
        raise KeyboardInterrupt

    real_train_reader = Loop.train_reader
    monkeypatch.setattr(Loop, "train_reader", boom)
    with pytest.raises(KeyboardInterrupt):
        Loop(cfg).run()
    r1 = run / "round_1"
    assert (run / "round_0" / "metrics.json").exists()
    for done in ("retrieved.json", "labels.jsonl", "mined.json", "retriever", "index", "reader_data.jsonl"):
        assert (r1 / done).exists(), done
    assert not (r1 / "reader").exists() and not (r1 / "metrics.json").exists()
    assert not [p for p in r1.iterdir() if p.name.startswith(".")]  # no half-written temp folders left

    # Rerun: finished steps are not redone (labelling and mDPR training are not called again for round 1).
    monkeypatch.setattr(Loop, "train_reader", real_train_reader)
    calls = []
    for name in ("label", "train_retriever"):
        real = getattr(Loop, name)
        monkeypatch.setattr(Loop, name, lambda self, k, *a, _n=name, _r=real: (calls.append((_n, k)),
                                                                               _r(self, k, *a))[1])
    result = Loop(cfg).run()
    assert calls == [("label", 2), ("train_retriever", 2)]
    assert result["rounds"] == 3

    for k in (0, 1, 2):
        m = json.loads((run / f"round_{k}" / "metrics.json").read_text())
        assert set(m["datastores"]) == {"main", "en"}
        assert set(m["datastores"]["main"]["qa"]) == {"en", "de", "macro"}
        assert set(m["datastores"]["main"]["recall"]["en"]) == {"R@1", "R@3"}
        assert m["datastores"]["main"]["qa"]["en"]["n"] == 1
    for k in (1, 2):
        for name in ("retriever", "reader", "index", "eval_index_en", "config.json"):
            assert (run / f"round_{k}" / name).exists()

    # Mining: every question keeps its whole gold group as positives (the gold passage, plus its versions that
    # hold the answer in their language), hard negatives never overlap them, positives accumulate over rounds
    # and the "new" cross-lingual count is exactly what round 2 added.
    mined = [json.loads((run / f"round_{k}" / "mined.json").read_text()) for k in (1, 2)]
    for q in TRAIN:
        gold_group = {str(r) for r in datastore.group_rows(q.gold_group)}
        for m in mined:
            rec = m["questions"][q.id]
            assert gold_group <= set(rec["positives"])
            assert rec["positives"][str(datastore.row_of(q.gold_passage))] == "gold"
            assert not set(map(str, rec["hard_negatives"])) & set(rec["positives"])
            assert len(rec["hard_negatives"]) <= 2
        assert set(mined[0]["questions"][q.id]["positives"]) <= set(mined[1]["questions"][q.id]["positives"])
    assert mined[0]["counts"]["positives_gold"] == len(TRAIN) == mined[1]["counts"]["positives_gold"]
    assert mined[0]["new_cross_lingual_total"] == sum(mined[0]["new_cross_lingual_positives"].values()) >= 8
    added = 0
    for q in TRAIN:
        before, after = (set(m["questions"][q.id]["positives"]) for m in mined)
        added += sum(datastore[int(r)].lang != q.lang for r in after - before)
    assert mined[1]["new_cross_lingual_total"] == added
    labels = [json.loads(line) for line in (r1 / "labels.jsonl").read_text().splitlines()]
    assert [len(rec["labels"]) for rec in labels] == [4] * len(TRAIN)

    summary = (run / "summary.md").read_text()
    assert "### main datastore" in summary and "### en datastore" in summary and "### mining" in summary
    assert summary.count("\n| 2 |") == 3  # round 2 in both datastore tables and in the mining table
    assert (run / "summary.png").stat().st_size > 1000

    # A finished run reruns as a no-op; a different configuration is refused, naming what differs.
    assert Loop(cfg).run()["rounds"] == 3
    with pytest.raises(CoraError, match="label_depth"):
        Loop(IterateConfig(**{**loop_config, "label_depth": 3})).run()


def test_loop_runs_with_a_seq2seq_reader(loop_config, tmp_path):
    cfg = IterateConfig(**{**loop_config, "reader": str(_tiny_mt5_reader(tmp_path / "mt5")), "rounds": 1,
                           "eval_datastores": {}})
    Loop(cfg).run()
    from cora.reader.base import load_reader

    assert load_reader(tmp_path / "run" / "round_1" / "reader").config.backend == "seq2seq"
    m = json.loads((tmp_path / "run" / "round_1" / "metrics.json").read_text())
    assert m["mining"]["counts"]["positives_gold"] == len(TRAIN)


def test_bad_configs_are_refused(loop_config, tmp_path):
    with pytest.raises(CoraError, match="label_depth"):
        IterateConfig(**{**loop_config, "label_depth": 10})
    with pytest.raises(CoraError, match="nothing to evaluate"):
        Loop(IterateConfig(**{**loop_config, "evaluate_main": False, "eval_datastores": {}}))
    (tmp_path / "nolang.jsonl").write_text('{"id": "a", "question": "where", "answers": ["x"]}\n')
    with pytest.raises(CoraError, match="lang"):
        Loop(IterateConfig(**{**loop_config, "train_questions": str(tmp_path / "nolang.jsonl")}))
    (tmp_path / "nogroup.jsonl").write_text('{"id": "a", "question": "where", "lang": "en", "answers": ["x"]}\n')
    with pytest.raises(CoraError, match="gold_group"):
        Loop(IterateConfig(**{**loop_config, "dev_questions": str(tmp_path / "nogroup.jsonl")}))


def test_query_tower_rounds_train_an_adapter_and_never_re_encode(loop_config, tmp_path, monkeypatch):
    import numpy as np

    from cora.encoder import QUERY_ADAPTER_DIR, Encoder
    from cora.index import DenseIndex, build_index

    cfg = IterateConfig(**{**loop_config, "retriever_tower": "query", "lora_rank": 4,
                           "query_adapter_scope": "cross-lingual",
                           "retriever_train": {**loop_config["retriever_train"], "lr": 1e-2}})
    builds = []
    real_build = build_index
    monkeypatch.setattr("cora.index.build_index", lambda *a, **k: (builds.append(a[3]), real_build(*a, **k))[1])
    Loop(cfg).run()
    run = tmp_path / "run"
    assert len(builds) == 2  # round 0's main and English indexes; rounds 1 and 2 reuse their vectors
    for k in (1, 2):
        folder = run / f"round_{k}" / "retriever"
        assert (folder / QUERY_ADAPTER_DIR / "adapter_model.safetensors").exists()
        assert not (folder / "model.safetensors").exists()
        for name in ("index", "eval_index_en"):
            a, b = (DenseIndex.load(run / f"round_{r}" / name) for r in (0, k))
            np.testing.assert_array_equal(a.index.reconstruct_n(0, len(a)), b.index.reconstruct_n(0, len(b)))
    # Round 2 continued round 1's adapter (not a fresh one), and the adapter moved the question vectors.
    r1, r2 = (Encoder.from_pretrained(str(run / f"round_{k}" / "retriever"), device="cpu") for k in (1, 2))
    plain = Encoder.from_pretrained(loop_config["encoder"], device="cpu")
    q = ["where is the nile river"]
    assert r1.config.query_adapter_scope == r2.config.query_adapter_scope == "cross-lingual"
    assert not np.allclose(r1.encode_queries(q), plain.encode_queries(q))
    assert not np.allclose(r2.encode_queries(q), r1.encode_queries(q))
    with pytest.raises(CoraError, match="retriever_tower"):
        IterateConfig(**{**loop_config, "retriever_tower": "both"})
    with pytest.raises(CoraError, match="query_adapter_scope"):
        IterateConfig(**{**loop_config, "query_adapter_scope": "same-language"})


def test_a_folder_from_before_a_new_option_resumes_but_a_changed_option_is_refused(loop_config, tmp_path):
    cfg = IterateConfig(**{**loop_config, "rounds": 0})
    Loop(cfg).run()
    path = tmp_path / "run" / "round_0" / "config.json"
    saved = json.loads(path.read_text())
    del saved["query_adapter_scope"]  # as written before the option existed: it counts as its default
    path.write_text(json.dumps(saved))
    Loop(cfg).run()
    with pytest.raises(CoraError, match="query_adapter_scope"):
        Loop(IterateConfig(**{**loop_config, "rounds": 0, "query_adapter_scope": "all"})).run()


def test_answer_recall_dev_set_without_gold_passages_and_top_layer_reader_rounds(loop_config, tmp_path):
    from cora.evaluation.text import contains_answer
    from cora.mining import reader_answers
    from cora.reader.base import load_reader
    from cora.reader.extractive import _layers

    dev = [Question("moon/en", "what does the moon orbit", "en", ["the Earth"]),
           Question("tea/de", "woraus ist tee", "de", ["Blättern"]),
           Question("nile/de", "wo ist der nil", "de", ["Afrika"])]
    cfg = IterateConfig(**{**loop_config, "rounds": 1, "eval_datastores": {}, "dev_recall": "answer",
                           "dev_questions": str(_write(tmp_path / "dev-nogold.jsonl", dev)),
                           "eval_qa_per_lang": 1, "reader_trainable_layers": 1})
    loop = Loop(cfg)
    loop.run()
    run = tmp_path / "run"
    for k in (0, 1):
        m = json.loads((run / f"round_{k}" / "metrics.json").read_text())["datastores"]["main"]
        ranked = loop._search(k, loop.dev_q, 3)
        for lang in ("en", "de"):
            qs = [(q, rows) for q, rows in zip(loop.dev_q, ranked, strict=True) if q.lang == lang]
            for cut in (1, 3):
                hit = [any(contains_answer(loop.datastore[r].text, reader_answers(q)) for r in rows[:cut])
                       for q, rows in qs]
                assert m["recall"][lang][f"R@{cut}"] == sum(hit) / len(hit)
        assert m["qa"]["de"]["n"] == 1 and m["qa"]["en"]["n"] == 1  # one question per language read
    # Only the top layer (and the head) moved; the saved reader still holds every layer.
    before, after = (load_reader(d, device="cpu").model for d in (cfg.reader, run / "round_1" / "reader"))
    lb, la = _layers(before), _layers(after)
    for i in range(len(lb) - 1):
        for (name, p0), p1 in zip(lb[i].named_parameters(), la[i].parameters(), strict=True):
            assert torch.equal(p0, p1), name
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(lb[-1].parameters(), la[-1].parameters(), strict=True))
    with pytest.raises(CoraError, match="dev_recall"):
        IterateConfig(**{**loop_config, "dev_recall": "passage"})


def test_deep_answer_only_labels_and_translation_distillation(loop_config, tmp_path, monkeypatch):
    import dataclasses

    import cora.retriever_training as rt
    from cora.mining import load_labels

    with pytest.raises(CoraError, match="distill_weight"):
        IterateConfig(**{**loop_config, "distill_weight": 1.0})  # the shared tower has no teacher
    with pytest.raises(CoraError, match="distill_mode"):
        IterateConfig(**{**loop_config, "distill_mode": "cosine"})
    with pytest.raises(CoraError, match="distill_temperature"):
        IterateConfig(**{**loop_config, "distill_mode": "ranking", "distill_temperature": -1.0})
    with pytest.raises(CoraError, match="needs distill_mode 'ranking'"):
        IterateConfig(**{**loop_config, "distill_temperature": 0.5})
    english = {"nile/de": "where is the nile", "moon/es": "what does the moon orbit"}
    # A question no passage answers: it mines nothing, and only its translation can teach the tower.
    unanswerable = Question("mars/de", "wo ist der mars", "de", ["Rot"], answers_by_lang={"en": ["red"]})
    train = [dataclasses.replace(q, translation=english.get(q.id)) for q in [*TRAIN, unanswerable]]
    train.append(dataclasses.replace(unanswerable, id="mars/de/2", translation="where is mars"))
    seen = []
    real_init = rt.QueryTowerTask.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append((kwargs["distill_weight"], self.distill_temperature, list(self.items)))

    monkeypatch.setattr(rt.QueryTowerTask, "__init__", spy)
    # A question with no answer at all, given only for distillation: never retrieved for, labelled or mined.
    sun = Question("sun/de", "wo ist die sonne", "de", [], translation="where is the sun")
    distill_file = str(_write(tmp_path / "distill.jsonl", [sun]))
    vector_file = str(_write(tmp_path / "distill-vector.jsonl",
                             [Question("flores/1", "die sonne scheint", "de", [], translation="the sun shines")]))
    with pytest.raises(CoraError, match="distill_vector_questions needs distill_weight"):
        IterateConfig(**{**loop_config, "distill_vector_questions": vector_file})
    with pytest.raises(CoraError, match="distill_questions needs distill_weight"):
        IterateConfig(**{**loop_config, "distill_questions": distill_file})
    untranslated = str(_write(tmp_path / "distill-bad.jsonl", [dataclasses.replace(sun, translation=None)]))
    with pytest.raises(CoraError, match=r"distill-bad.jsonl: question 'sun/de' has no 'translation'"):
        Loop(IterateConfig(**{**loop_config, "retriever_tower": "query", "distill_weight": 1.0,
                              "distill_questions": untranslated}))
    cfg = IterateConfig(**{**loop_config, "rounds": 1, "retriever_tower": "query", "lora_rank": 4,
                           "read_answerless": False, "distill_weight": 1.0, "distill_questions": distill_file,
                           "distill_vector_questions": vector_file,
                           "distill_mode": "ranking", "distill_temperature": 0.3,
                           "train_questions": str(_write(tmp_path / "train-t.jsonl", train))})
    Loop(cfg).run()
    labels = load_labels(tmp_path / "run" / "round_1" / "labels.jsonl")
    assert "sun/de" not in labels
    assert all(lb.prediction == "" for lbs in labels.values() for lb in lbs if not lb.contains)  # never read
    assert not any(lb.contains for lb in labels["mars/de"])
    ((weight, distill_temperature, items),) = seen
    pivots = {q: t for q, _, _, t, _ in items}
    assert weight == 1.0 and distill_temperature == 0.3
    assert pivots["wo ist der nil"] == "where is the nile" and pivots["where is the nile river"] is None
    # The unanswerable question is trained on only when it has a translation, and then with no positive.
    assert [(rows, t) for q, _, rows, t, _ in items if q == "wo ist der mars"] == [([], "where is mars")]
    assert [(rows, t, m) for q, _, rows, t, m in items if q == "wo ist die sonne"] == [([], "where is the sun", "ranking")]
    # Parallel sentences given as distill_vector_questions: distilled vector to vector whatever distill_mode.
    assert [(rows, t, m) for q, _, rows, t, m in items if q == "die sonne scheint"] == [([], "the sun shines", "vector")]
