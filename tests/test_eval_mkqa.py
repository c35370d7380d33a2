"""MKQA: the cases and end-to-end numbers stated by apple/ml-mkqa's own test suite (tests/test_mkqa_eval.py)."""

from __future__ import annotations

import json

import pytest

from cora.evaluation import mkqa
from cora.evaluation.mkqa import Prediction, best_threshold_metrics, score_examples

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


def test_missing_prediction_scores_zero_at_every_threshold():
    gold = {"a": ["x"], "b": [""]}
    metrics = best_threshold_metrics({"a": Prediction("a", "x")}, gold, "en")
    assert metrics["best_answerable_em"] == 100.0 and metrics["best_unanswerable_em"] == 0.0


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
