"""MKQA: the cases and end-to-end numbers stated by apple/ml-mkqa's own test suite (tests/test_mkqa_eval.py)."""

from __future__ import annotations

import json
import math

import pytest

from cora.evaluation import mkqa
from cora.evaluation.mkqa import Prediction, best_threshold_metrics, score_examples

from .conftest import make_tiny_reader

# ml-mkqa tests/test_mkqa_eval.py::test_compute_mkqa_scores — (prediction, binary, no_answer_prob, golds, f1, em)
EN_CASES = [
    ("first dummy answer", None, 0, ["first dummy answer", "second dummy answer"], 1.0, 1.0),
    ("alternative answer", None, 0, ["dummy answer one", "alternative answer two"], 0.8, 0.0),
    ("an answer ?? without stopwords", None, 0, ["answer -- without, stopwords!!"], 1.0, 1.0),
    ("", None, 0, [""], 1.0, 1.0),
    ("", None, 0, ["first dummy answer", "second dummy answer"], 0.0, 0.0),
    ("", None, 1, ["yes"], 0.0, 0.0),
    ("wrong answer", "yes", 0, ["yes"], 1.0, 1.0),
    ("distractor answer", "no", 0, ["yes"], 0.0, 0.0),
    ("", "no", 0, [""], 0.0, 0.0),
    ("final prediction", None, 1.0, ["penultimate", "final prediction"], 1.0, 1.0),
]


def test_official_english_cases():
    preds = {str(i): Prediction(str(i), p, b, na) for i, (p, b, na, _, _, _) in enumerate(EN_CASES)}
    gold = {str(i): g for i, (_, _, _, g, _, _) in enumerate(EN_CASES)}
    em, f1 = score_examples(preds, gold, "en")
    assert [f1[str(i)] for i in range(len(EN_CASES))] == [c[4] for c in EN_CASES]
    assert [em[str(i)] for i in range(len(EN_CASES))] == [c[5] for c in EN_CASES]


# ml-mkqa tests/test_mkqa_eval.py::test_compute_mkqa_scores_in_different_languages
LANG_CASES = [
    ("es", "esto es manzana", ["esto es una manzana", "esta es otra manzana"], 1.0, 1.0),
    ("ar", "تفاحة", ["التفاحة", "هذه تفاحة"], 1.0, 1.0),
    ("fr", "c'est de la pomme", ["c'est la pomme", "c'est une autre pomme"], 1.0, 1.0),
    ("hu", "ez egy alma", ["ez alma", "ez egy újabb alma"], 1.0, 1.0),
    ("zh_cn", "这个一个苹果", ["这是还是苹果", "这是另一个苹果"], 0.7692307692307692, 0.0),
    ("km", "នេះគឺជាផ្លែប៉ោម", ["នេះគឺជាផ្លែប៉ោមមួយទៀត"], 0.8333333333333333, 0.0),
]


@pytest.mark.parametrize("locale, pred, golds, f1, em", LANG_CASES)
def test_official_language_normalisation_cases(locale, pred, golds, f1, em):
    got_em, got_f1 = score_examples({"1": Prediction("1", pred)}, {"1": golds}, locale)
    assert got_f1["1"] == f1 and got_em["1"] == em


def test_official_end_to_end_fixture_metrics():
    # ml-mkqa tests/test_mkqa_eval.py::test_compute_metrics_end_2_end, on its fixture (copied to shared data).
    from .conftest import shared_data

    records = mkqa.read_original(shared_data("mkqa", "mkqa_sample_original_format.jsonl.gz"))
    preds = mkqa.read_mkqa_predictions(shared_data("mkqa", "mkqa_sample_en_prediction.jsonl"))
    gold = {str(r["example_id"]): mkqa.gold_answers(r, "en") for r in records}
    assert best_threshold_metrics(preds, gold, "en") == {
        "best_em": 66.67, "best_f1": 80.95, "best_answerable_em": 33.33, "best_answerable_f1": 61.9,
        "best_unanswerable_em": 100.0, "best_f1_threshold": -6.91,
    }


def test_official_verbose_figures_on_the_fixture():
    # mkqa_eval.py -v adds EM/F1 as predicted. By hand on the fixture: answerable 'Ridley Scott' exact (F1 1),
    # 'Hafþór Júlíus `` Thor '' Björnsson' vs 'Hafþór Júlíus Björnsson' F1 2*(3/4*1)/(3/4+1) = 6/7, the date
    # answer wrong; all three unanswerable questions got a text, so none is right without a threshold.
    from .conftest import shared_data

    records = mkqa.read_original(shared_data("mkqa", "mkqa_sample_original_format.jsonl.gz"))
    preds = mkqa.read_mkqa_predictions(shared_data("mkqa", "mkqa_sample_en_prediction.jsonl"))
    gold = {str(r["example_id"]): mkqa.gold_answers(r, "en") for r in records}
    result = mkqa.evaluate(preds, gold, "en")
    assert result.metrics == {
        "best_em": 66.67, "best_f1": 80.95, "best_answerable_em": 33.33, "best_answerable_f1": 61.9,
        "best_unanswerable_em": 100.0, "best_f1_threshold": -6.91,
        "exact_match": round(100 / 6, 2), "f1": round(100 * (1 + 6 / 7) / 6, 2),
        "answerable_exact_match": round(100 / 3, 2), "answerable_f1": round(100 * (1 + 6 / 7) / 3, 2),
        "unanswerable_exact_match": 0.0,
    }
    assert (result.scored, result.missing, result.extra, result.warnings()) == (6, 0, 0, [])


def test_tied_no_answer_probs_are_taken_in_prediction_file_order():
    # 'a' is answerable and predicted right, 'b' unanswerable but predicted with text; both at no_answer_prob 0.5.
    # The search starts at 1 (b right as "no answer"). Taking a then b: 1 -> 2 (best, threshold 0.5) -> 1, so
    # best_f1 = 2/2. Taking b then a: 1 -> 0 -> 1, never above 1: best_f1 = 1/2 at threshold 0.
    gold = {"a": ["x"], "b": [""]}
    a, b = Prediction("a", "x", None, 0.5), Prediction("b", "y", None, 0.5)
    a_first = best_threshold_metrics({"a": a, "b": b}, gold, "en")
    b_first = best_threshold_metrics({"b": b, "a": a}, gold, "en")
    assert (a_first["best_f1"], a_first["best_f1_threshold"]) == (100.0, 0.5)
    assert (b_first["best_f1"], b_first["best_f1_threshold"]) == (50.0, 0.0)


def test_missing_and_extra_ids_are_counted_and_the_rest_scored_as_officially(caplog):
    # The official script stops on both; cora scores the ids the two files share, and says so.
    gold = {"a": ["x"], "b": ["y"], "c": [""]}
    preds = {"a": Prediction("a", "x", None, 0.1), "c": Prediction("c", "", None, 0.9),
             "z": Prediction("z", "q", None, 0.0)}
    result = mkqa.evaluate(preds, gold, "en")
    assert (result.scored, result.missing, result.extra) == (2, 1, 1)
    shared = mkqa.evaluate({k: preds[k] for k in ("a", "c")}, {k: gold[k] for k in ("a", "c")}, "en")
    assert result.metrics == shared.metrics
    assert result.metrics["exact_match"] == 100.0 and result.metrics["best_f1"] == 100.0
    assert "1 gold examples have no prediction and 1 predictions have no gold example" in result.warnings()[0]
    assert "the official script stops on these" in caplog.text


def test_an_empty_split_is_nan_with_a_warning():
    result = mkqa.evaluate({"a": Prediction("a", "x")}, {"a": ["x"]}, "en")
    assert math.isnan(result.metrics["best_unanswerable_em"]) and math.isnan(result.metrics["unanswerable_exact_match"])
    assert result.metrics["best_answerable_em"] == 100.0 and result.empty_splits == ["unanswerable"]
    assert "no unanswerable question among the 1 scored" in result.warnings()[0]


def test_converter_keeps_the_empty_alternative_that_official_scoring_keeps():
    # A record with a real answer and a null-text one: officially, answers are {"A", ""}, so the question is
    # answerable and an empty prediction is right (F1 = EM = 1).
    record = {"example_id": 3, "queries": {"en": "q3?"},
              "answers": {"en": [{"type": "entity", "text": "A", "aliases": []},
                                 {"type": "unanswerable", "text": None}]}}
    assert mkqa.gold_answers(record, "en") == ["A", ""]
    rows = mkqa.convert_to_xor([record], ["en"])["en"]
    assert rows[0]["answers"] == ["A", mkqa.NO_ANSWER]
    table = mkqa.xor_format_metrics({"3_en": ""}, rows)
    assert (table["en"]["em"], table["en"]["f1"]) == (100.0, 100.0)
    official = mkqa.evaluate({"3": Prediction("3", "")}, {"3": mkqa.gold_answers(record, "en")}, "en").metrics
    assert (official["exact_match"], official["f1"], official["answerable_f1"]) == (100.0, 100.0, 100.0)


def test_converter_keeps_exactly_the_asked_locales_and_marks_unanswerable():
    records = [
        {"example_id": 1, "queries": {"en": "q?", "ja": "質問？", "de": "Frage?"},
         "answers": {"en": [{"type": "entity", "text": "A", "aliases": ["Alias A"]}],
                     "ja": [{"type": "entity", "text": "エー", "aliases": []}],
                     "de": [{"type": "entity", "text": "A", "aliases": []}]}},
        {"example_id": 2, "queries": {"en": "q2?", "ja": "質問2？", "de": "Frage 2?"},
         "answers": {"en": [{"type": "unanswerable", "text": None}], "ja": [{"type": "unanswerable", "text": None}],
                     "de": [{"type": "unanswerable", "text": None}]}},
    ]
    out = mkqa.convert_to_xor(records, ["ja", "en"])
    assert set(out) == {"ja", "en"}
    assert out["en"][0] == {"id": "1_en", "question": "q?", "lang": "en", "answers": ["A", "Alias A"]}
    assert out["ja"][1]["answers"] == [mkqa.NO_ANSWER]
    # The placeholder is what the evaluator treats as no answer: an empty prediction is right.
    table = mkqa.xor_format_metrics({"2_ja": "", "1_ja": "エー"}, out["ja"])
    assert table["ja"]["em"] == 100.0
    assert len(mkqa.convert_to_xor(records, ["de"], keep_unanswerable=False)["de"]) == 1
    with pytest.raises(Exception, match="unknown MKQA locale"):
        mkqa.convert_to_xor(records, ["xx"])


def test_cli_on_shared_files(tmp_path, capsys):
    from cora.cli import main

    from .conftest import shared_data

    orig = shared_data("mkqa", "mkqa_sample_original_format.jsonl.gz")
    assert main(["evaluate", "mkqa", "--gold", str(orig), "--pred",
                 str(shared_data("mkqa", "mkqa_sample_en_prediction.jsonl")), "--lang", "en",
                 "--json-out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["best_f1"] == 80.95
    xor_gold = shared_data("mkqa", "mkqa-ja.jsonl")
    rows = [json.loads(line) for line in xor_gold.read_text(encoding="utf-8").splitlines()]
    preds = {r["id"]: r["answers"][0] for r in rows[:100]}
    (tmp_path / "p.json").write_text(json.dumps(preds, ensure_ascii=False), encoding="utf-8")
    assert main(["evaluate", "mkqa", "--gold", str(xor_gold), "--pred", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert f"missing predictions (scored 0): {len(rows) - 100}" in out
    assert main(["evaluate", "mkqa-convert", "--gold", str(orig), "--langs", "ja", "ko", "--out",
                 str(tmp_path / "conv")]) == 0
    assert sorted(p.name for p in (tmp_path / "conv").iterdir()) == ["mkqa-ja.jsonl", "mkqa-ko.jsonl"]


def test_prediction_record_from_a_cora_answer():
    from cora.reader.base import Answer, Evidence

    source = Evidence("p-en", "en", "", "The capital is Paris.", 15, 20, 0.8)
    target = Evidence("p-de", "de", "", "Die Hauptstadt ist Paris.", 19, 24, 0.99, role="projection")
    projected = Answer("Paris", "de", 0.99, [source, target], projected=True)
    # The reader's probability over the retrieved passages (the source), not the sibling re-read's.
    assert mkqa.prediction_record("123_de", projected, "de") == {
        "example_id": "123", "prediction": "Paris", "binary_answer": None, "no_answer_prob": pytest.approx(0.2)}
    generated = Answer("Yes", "zh_cn", 0.25, [Evidence("p", "zh", "", "text", None, None, None)])
    assert mkqa.prediction_record("-7_zh_cn", generated, "zh_cn") == {
        "example_id": "-7", "prediction": "Yes", "binary_answer": "yes", "no_answer_prob": 0.75}
    assert mkqa.prediction_record("plain-id", Answer("x", "en", 1.5), "en")["no_answer_prob"] == 0.0
    assert mkqa.mkqa_example_id("_en", "en") == "_en"


def test_cora_answer_mkqa_format_scored_by_cora_evaluate_mkqa(tiny_encoder_dir, tiny_encoder, datastore, tmp_path,
                                                              capsys):
    from cora.cli import main
    from cora.index import build_index
    from cora.pipeline import Pipeline

    make_tiny_reader(tiny_encoder_dir, precision="fp32").save_pretrained(tmp_path / "reader")
    build_index(datastore, tiny_encoder, tmp_path / "index", str(tiny_encoder_dir), factory="Flat",
                show_progress=False)
    Pipeline.create(tmp_path / "pipe", tmp_path / "index", tmp_path / "reader", k=2)
    questions = [{"id": f"{i}_de", "question": q, "lang": "de", "answers": ["?"]}
                 for i, q in enumerate(["der mond umkreist die erde", "der nil ist ein fluss", "tee aus blättern"])]
    qfile = tmp_path / "mkqa-de.jsonl"
    qfile.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    assert main(["answer", "--pipeline", str(tmp_path / "pipe"), "--questions", str(qfile), "--out", str(out),
                 "--format", "mkqa", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["example_id"] for r in lines] == ["0", "1", "2"]
    assert all(r["prediction"] and 0.0 <= r["no_answer_prob"] <= 1.0 and r["binary_answer"] is None for r in lines)

    # Gold written after the fact: question 0's answer is what was predicted (right), question 1's shares no
    # word with it (wrong), question 2 is unanswerable (a text prediction is wrong without a threshold).
    gold = [dict(questions[0], answers=[lines[0]["prediction"]]), dict(questions[1], answers=["zzz"]),
            dict(questions[2], answers=[mkqa.NO_ANSWER])]
    gfile = tmp_path / "gold-de.jsonl"
    gfile.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gold), encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", "mkqa", "--gold", str(gfile), "--pred", str(out), "--json-out",
                 str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert {k: report[k] for k in ("exact_match", "f1", "answerable_exact_match", "answerable_f1",
                                   "unanswerable_exact_match", "scored", "missing", "extra")} == {
        "exact_match": 33.33, "f1": 33.33, "answerable_exact_match": 50.0, "answerable_f1": 50.0,
        "unanswerable_exact_match": 0.0, "scored": 3, "missing": 0, "extra": 0}
    # The threshold search starts at 1 of 3 (the unanswerable one counted right) and adds +1 for question 0, 0 for
    # question 1 and -1 for question 2 in increasing no_answer_prob (ties in file order): it reaches 2 of 3 only
    # if question 0 comes before question 2.
    expected = 66.67 if lines[0]["no_answer_prob"] <= lines[2]["no_answer_prob"] else 33.33
    assert report["best_f1"] == expected and report["lang"] == "de"
    assert "| de |" in capsys.readouterr().out
