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


# XOR-Retrieve fixtures where whitespace and nltk tokens disagree.
RETRIEVE_GOLD = [
    {"id": "pct", "lang": "ja", "answers": ["2.8%"]},                  # nltk: '2.8 %' -> never found officially
    {"id": "stp", "lang": "ja", "answers": ["St. Peter's Basilica"]},  # nltk: "St. Peter 's Basilica ."
    {"id": "usa", "lang": "ja", "answers": ["U.S."]},                  # nltk keeps 'U.S.' whole: found
    {"id": "win", "lang": "fi", "answers": ["needle"]},                # window boundary, see below
    {"id": "yn", "lang": "fi", "answers": ["yes"]},                    # yes/no only: never scored
    {"id": "gone", "lang": "fi", "answers": ["absent"]},               # no ranked list
]
# 1,000 'x,' = 1,000 whitespace tokens but 2,000 nltk tokens ('x', ','): 'needle' is whitespace token 1,001 (inside
# 2kt) and nltk token 2,001 (outside 2kt, inside 5kt).
COMMAS = " ".join(["x,"] * 1000)
RANKED = [
    {"id": "pct", "lang": "ja", "ctxs": ["Growth was 2.8% in 2019."]},
    {"id": "stp", "lang": "ja", "ctxs": ["He visited St. Peter's Basilica. It is big."]},
    {"id": "usa", "lang": "ja", "ctxs": ["The U.S. economy grew."]},
    {"id": "win", "lang": "fi", "ctxs": [COMMAS, "needle"]},
    {"id": "yn", "lang": "fi", "ctxs": ["yes"]},
    {"id": "not-in-gold", "lang": "fi", "ctxs": ["needle"]},
    {"id": "usa", "lang": "ja", "ctxs": ["The U.S. economy grew."]},   # listed twice: the official script counts it twice
]


def test_nltk_tokens_offline_on_the_fixture():
    from cora.evaluation.text import nltk_word_tokenize

    assert nltk_word_tokenize("x, x,") == ["x", ",", "x", ","]
    assert nltk_word_tokenize("Growth was 2.8% in 2019.") == ["Growth", "was", "2.8", "%", "in", "2019", "."]
    assert nltk_word_tokenize(RANKED[1]["ctxs"][0]) == ["He", "visited", "St.", "Peter", "'s", "Basilica", ".", "It",
                                                        "is", "big", "."]


def test_xor_retrieve_official_numbers_by_hand():
    from cora.evaluation.xor import RankedContexts

    ranked = [RankedContexts(r["id"], r["lang"], r["ctxs"]) for r in RANKED]
    result = xor_retrieve_recall(RETRIEVE_GOLD, ranked, "official")
    # ja: pct miss, stp miss, usa hit, usa (again) hit -> 2 of 4 at both windows.
    # fi: win is nltk token 2,001 -> miss at 2kt, hit at 5kt; yn skipped; gone has no list and is not counted.
    assert result.per_language == {"ja": {"count": 4, "R@2kt": 50.0, "R@5kt": 50.0},
                                   "fi": {"count": 1, "R@2kt": 0.0, "R@5kt": 100.0}}
    assert result.macro == {"count": 5, "R@2kt": 25.0, "R@5kt": 75.0}
    assert (result.missing, result.extra, result.duplicates, result.yes_no) == (1, 1, 1, 1)


def test_xor_retrieve_fixed_numbers_by_hand():
    from cora.evaluation.xor import RankedContexts

    ranked = [RankedContexts(r["id"], r["lang"], r["ctxs"]) for r in RANKED]
    result = xor_retrieve_recall(RETRIEVE_GOLD, ranked, "fixed")
    # ja: every answer is found as written, usa counted once -> 3 of 3. fi: win is whitespace token 1,001 -> hit
    # at 2kt; gone (no list) is a miss -> 1 of 2.
    assert result.per_language == {"ja": {"count": 3, "R@2kt": 100.0, "R@5kt": 100.0},
                                   "fi": {"count": 2, "R@2kt": 50.0, "R@5kt": 50.0}}
    assert result.macro == {"count": 5, "R@2kt": 75.0, "R@5kt": 75.0}


def test_xor_retrieve_cli_reads_the_official_file_and_cora_hits(tmp_path, capsys):
    from cora.cli import main

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in RETRIEVE_GOLD), encoding="utf-8")
    official = tmp_path / "official.json"
    official.write_text(json.dumps(RANKED), encoding="utf-8")
    hits = tmp_path / "hits.jsonl"  # the same lists as 'cora retrieve' writes them
    hits.write_text("".join(json.dumps({"id": r["id"], "question": "?", "lang": r["lang"],
                                        "hits": [{"passage_id": str(i), "rank": i + 1, "text": t}
                                                 for i, t in enumerate(r["ctxs"])]}) + "\n" for r in RANKED),
                    encoding="utf-8")
    reports = []
    for pred in (official, hits):
        out = tmp_path / f"{pred.stem}.out.json"
        assert main(["evaluate", "xor-retrieve", "--gold", str(gold), "--pred", str(pred), "--json-out",
                     str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0] == reports[1]
    assert reports[0]["macro"] == {"count": 5, "R@2kt": 25.0, "R@5kt": 75.0}
    printed = capsys.readouterr().out
    assert "gold questions without a ranked list: 1 (not counted, as officially)" in printed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "pct", "hits": [{"passage_id": "1"}]}\n', encoding="utf-8")
    assert main(["evaluate", "xor-retrieve", "--gold", str(gold), "--pred", str(bad)]) == 2
    assert "every passage needs its text" in capsys.readouterr().err


# nltk.word_tokenize(text) with nltk's own punkt_tab data (nltk 3.10.4), recorded once: the offline tokenizer must
# give the same tokens. The sentence split shows in 'lang .' / 'กม .', and nothing is split inside ja/zh.
NLTK_TOKENS = [
    ("Mr. Smith paid $2.8 million (about 2.8%) on Jan. 5. He didn't say why; \"it's fine,\" he said.",
     ["Mr.", "Smith", "paid", "$", "2.8", "million", "(", "about", "2.8", "%", ")", "on", "Jan.", "5", ".", "He",
      "did", "n't", "say", "why", ";", "``", "it", "'s", "fine", ",", "''", "he", "said", "."]),
    ("Der Fluss ist z. B. 6.650 km lang. Er fließt nach Norden.",
     ["Der", "Fluss", "ist", "z", ".", "B", ".", "6.650", "km", "lang", ".", "Er", "fließt", "nach", "Norden", "."]),
    ("Москва — столица России. Население: 13,1 млн человек.",
     ["Москва", "—", "столица", "России", ".", "Население", ":", "13,1", "млн", "человек", "."]),
    ("نهر النيل هو أطول نهر في العالم. يبلغ طوله 6650 كم.",
     ["نهر", "النيل", "هو", "أطول", "نهر", "في", "العالم", ".", "يبلغ", "طوله", "6650", "كم", "."]),
    ("東京は日本の首都です。人口は約1400万人。", ["東京は日本の首都です。人口は約1400万人。"]),
    ("尼罗河是世界上最长的河流。它全长6650公里。", ["尼罗河是世界上最长的河流。它全长6650公里。"]),
    ("गंगा भारत की सबसे लंबी नदी है। यह 2525 किमी लंबी है.",
     ["गंगा", "भारत", "की", "सबसे", "लंबी", "नदी", "है।", "यह", "2525", "किमी", "लंबी", "है", "."]),
    ("แม่น้ำไนล์ยาว 6,650 กม. ไหลไปทางเหนือ", ["แม่น้ำไนล์ยาว", "6,650", "กม", ".", "ไหลไปทางเหนือ"]),
]


@pytest.mark.parametrize("text, tokens", NLTK_TOKENS)
def test_offline_tokens_equal_recorded_nltk_word_tokenize(text, tokens):
    from cora.evaluation.text import nltk_word_tokenize

    assert nltk_word_tokenize(text) == tokens


def test_offline_tokens_equal_nltk_word_tokenize_on_shared_text():
    """Where nltk's punkt_tab data is installed (NLTK_DATA), compare with nltk.word_tokenize itself on real
    paragraphs in 12 languages; elsewhere this is skipped and the recorded cases above stand in."""
    nltk = pytest.importorskip("nltk")
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        pytest.skip("nltk's punkt_tab data is not installed (nltk.download('punkt_tab') or NLTK_DATA)")
    from cora.evaluation.text import nltk_word_tokenize

    from .conftest import shared_data

    checked = 0
    for path in sorted(shared_data("xquad").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        for paragraph in [p for article in data for p in article["paragraphs"]][:50]:
            assert nltk_word_tokenize(paragraph["context"]) == nltk.word_tokenize(paragraph["context"]), path.name
            checked += 1
    assert checked >= 12 * 50


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
