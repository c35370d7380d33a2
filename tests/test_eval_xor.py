"""XOR-TyDi evaluation: a hand-made gold/prediction pair scored by hand, both modes, and bad prediction files."""

from __future__ import annotations

import json
import math

import pytest

from cora.evaluation.xor import evaluate_xor_full, nltk_sentence_bleu, official_normalize, xor_retrieve_recall

GOLD = [
    {"id": "j1", "lang": "ja", "answers": ["東京"]},        # pred '東京。': 。 is not ASCII punctuation
    {"id": "j2", "lang": "ja", "answers": ["1867年"]},      # pred '1867': 年 stripped
    {"id": "j3", "lang": "ja", "answers": ["日本人"]},      # pred '日本': official strips 人 even inside words
    {"id": "k1", "lang": "ko", "answers": ["2010년"]},      # pred '2010': 년 stripped
    {"id": "r1", "lang": "ru", "answers": ["Москва"]},      # pred 'москва!': lowercase + punctuation
    {"id": "r2", "lang": "ru", "answers": ["Пётр Первый"]},  # no prediction: scores 0, still counted
    {"id": "n1", "lang": "ru", "answers": ["No Answer"]},   # skipped entirely
]
PRED = {"j1": "東京。", "j2": "1867", "j3": "日本", "k1": "2010", "r1": "москва!", "extra": "ignored"}


def test_official_mode_numbers_computed_by_hand():
    result = evaluate_xor_full(GOLD, PRED, "official")
    d = result.to_dict()
    # ja: j1 F1 = 2*(1/2*1)/(1/2+1) = 2/3, EM 0 (tokens 東京 / 。); j2 and j3 exact after stripping -> 1, 1.
    assert d["per_language"]["ja"]["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 3)
    assert d["per_language"]["ja"]["em"] == pytest.approx(100 * 2 / 3)
    assert d["per_language"]["ko"]["f1"] == 100.0 and d["per_language"]["ko"]["em"] == 100.0
    # ru: r1 exact, r2 missing -> (1 + 0) / 2; n1 does not count.
    # BLEU is over characters of the raw prediction, case-sensitive: 'москва!' vs 'Москва' has clipped n-gram
    # precisions 5/7, 4/6, 3/5, 2/4 and no brevity penalty (7 > 6 characters).
    ru_bleu = (5 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert d["per_language"]["ru"] == {"count": 2, "f1": 50.0, "em": 50.0,
                                       "bleu": pytest.approx(100 * ru_bleu / 2), "missing": 1}
    assert d["macro"]["f1"] == pytest.approx(100 * ((2 / 3 + 2) / 3 + 1 + 0.5) / 3)
    assert d["macro"]["em"] == pytest.approx(100 * (2 / 3 + 1 + 0.5) / 3)
    # ko: '2010' vs '2010년': all precisions 1, brevity penalty exp(1 - 5/4).
    assert d["per_language"]["ko"]["bleu"] == pytest.approx(100 * math.exp(1 - 5 / 4))
    # ja references are MeCab output ('1867 年 \n', 8 characters): j2 = exp(1 - 8/4); j1 ('東京。') and the exact
    # j3 ('日本', 2 characters, no 3-grams) get ~0 — the "~0 for short exact answers" of the official BLEU.
    assert d["per_language"]["ja"]["bleu"] == pytest.approx(100 * math.exp(-1) / 3)
    assert (result.skipped_no_answer, result.missing, result.extra) == (1, 1, 1)


def test_fixed_mode_uses_real_tokens_and_keeps_words_whole():
    d = evaluate_xor_full(GOLD, PRED, "fixed").to_dict()
    # j1 exact once 。 is removed; j2 exact (年 after a digit); j3 日本 vs 日本|人 -> F1 2/3, EM 0.
    assert d["per_language"]["ja"]["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert d["per_language"]["ja"]["em"] == pytest.approx(100 * 2 / 3)
    assert d["per_language"]["ko"]["em"] == 100.0
    assert d["per_language"]["ko"]["bleu"] > 10  # smoothed BLEU credits an exact one-token answer


def test_official_normalisation_rules():
    assert official_normalize("The  Answer, 30歳!") == "the answer 30"
    assert official_normalize("日本人") == "日本"


def test_nltk_bleu_reimplementation_on_known_values():
    # Identical 4+ character strings: BLEU 1; a 3-character exact match: ~0 (no 4-grams, no smoothing).
    assert nltk_sentence_bleu(["abcdef"], "abcdef") == pytest.approx(1.0)
    assert nltk_sentence_bleu(["abc"], "abc") < 1e-60
    assert nltk_sentence_bleu(["xyz"], "abc") == 0.0
    # 'abcd' vs reference 'abcde': p1..p4 = 1, brevity penalty exp(1 - 5/4).
    import math

    assert nltk_sentence_bleu(["abcde"], "abcd") == pytest.approx(math.exp(1 - 5 / 4))


def test_xor_retrieve_token_windows():
    gold = [{"id": "1", "lang": "ja", "answers": ["needle"]}, {"id": "2", "lang": "ja", "answers": ["yes"]},
            {"id": "3", "lang": "fi", "answers": ["far"]}]
    retrieved = {"1": ["a " * 1500, "b " * 400 + "needle"], "3": ["x " * 2500 + "far"]}
    r2 = xor_retrieve_recall(gold, retrieved, 2000)
    r5 = xor_retrieve_recall(gold, retrieved, 5000)
    assert r2["ja"] == {"count": 1, "recall": 100.0}  # token 1901 < 2000; the yes/no question is skipped
    assert r2["fi"]["recall"] == 0.0 and r5["fi"]["recall"] == 100.0
    assert r2["macro"]["recall"] == 50.0


def _files(tmp_path, pred_obj):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in GOLD), encoding="utf-8")
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(pred_obj, ensure_ascii=False), encoding="utf-8")
    return str(gold), str(pred)


def test_cli_counts_missing_and_extra_and_writes_json_and_plot(tmp_path, capsys):
    from cora.cli import main

    gold, pred = _files(tmp_path, PRED)
    assert main(["evaluate", "xor", "--gold", gold, "--pred", pred, "--json-out", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "missing predictions (scored 0): 1; extra predictions (ignored): 1" in out
    assert json.loads((tmp_path / "r.json").read_text())["per_language"]["ru"]["missing"] == 1
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("pred_obj, message", [
    (["not", "a", "dict"], "expected a JSON object {id: answer}, got list"),
    ({"j1": 5}, "answers must be strings; 1 are not (first: id 'j1' -> int)"),
])
def test_cli_bad_prediction_files_are_one_line_errors(tmp_path, capsys, pred_obj, message):
    from cora.cli import main

    gold, pred = _files(tmp_path, pred_obj)
    assert main(["evaluate", "xor", "--gold", gold, "--pred", pred]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_official_mode_on_shared_xor_dev_with_gold_as_predictions(capsys):
    from .conftest import shared_data

    path = shared_data("xor-tydi", "xor_dev_full_v1_1.jsonl")
    from cora.evaluation.xor import read_gold_jsonl

    gold = read_gold_jsonl(path)
    preds = {g["id"]: g["answers"][0] for g in gold}
    d = evaluate_xor_full(gold, preds, "official").to_dict()
    assert set(d["per_language"]) == {"ar", "bn", "fi", "ja", "ko", "ru", "te"}
    assert all(v["em"] == 100.0 for lang, v in d["per_language"].items() if lang != "ja")
    # The official script rewrites ・ and 、 in Japanese *predictions* only, so even the gold answer itself misses
    # whenever it contains one of them: exactly those questions lose EM.
    lost = [g for g in gold if g["lang"] == "ja" and any(c in g["answers"][0] for c in "・、")]
    ja = d["per_language"]["ja"]
    assert ja["em"] == pytest.approx(100 * (ja["count"] - len(lost)) / ja["count"])
    fixed = evaluate_xor_full(gold, preds, "fixed").to_dict()
    assert fixed["macro"]["em"] == 100.0
