"""MKQA evaluation, re-implementing the rules of apple/ml-mkqa's ``mkqa_eval.py`` / ``mkqa_eval_util.py``.

Normalisation per locale: lowercase, remove ASCII punctuation, remove articles with the locale's regex (en, es,
vi, de, ar, nl, sv, da, no, fr, pt, it, fi, hu), then split on whitespace, or for zh_cn/zh_hk/zh_tw/ja/th/km split
"mixed": every character becomes a token. An empty string is "No Answer": F1 and EM are 1 when both prediction and
gold are empty, 0 when only one is. A yes/no ``binary_answer`` takes precedence over the text prediction.

The official scores are reported at the best no-answer threshold: predictions are sorted by ``no_answer_prob``
and the threshold that maximises overall F1 is chosen; EM, answerable and unanswerable splits are then reported
at that threshold.

Files: the original schema (``queries`` and ``answers`` keyed by 26 locales; each answer ``{type, text,
aliases}``; ``text`` is null for unanswerable questions), and the XOR format (``{"id","question","lang",
"answers"}``) written by :func:`convert_to_xor`, whose unanswerable placeholder is :data:`NO_ANSWER`, the very
string the evaluators here treat as "no answer" (the original converter wrote "NoAns", which its evaluator did not
recognise, and inverted its ``--langs`` option).
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections import Counter
from dataclasses import dataclass

from cora.errors import CoraError, DataFormatError
from cora.fileio import iter_jsonl

logger = logging.getLogger(__name__)

MKQA_LOCALES = ("ar", "da", "de", "en", "es", "fi", "fr", "he", "hu", "it", "ja", "km", "ko", "ms", "nl", "no",
                "pl", "pt", "ru", "sv", "th", "tr", "vi", "zh_cn", "zh_hk", "zh_tw")
MIXED_SEGMENTATION = frozenset({"zh_cn", "zh_hk", "zh_tw", "ja", "th", "km"})
ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "nl": r"\b(de|het|een|des|der|den)\b",
    "sv": r"\b(en|ett)\b",
    "da": r"\b(en|et)\b",
    "no": r"\b(en|et|ei)\b",
    "fr": r"\b(le|la|l'|les|du|de|d'|des|un|une|des)",
    "pt": r"\b(o|a|os|as|um|uma|uns|umas)\b",
    "it": r"\b(il|lo|la|l'|i|gli|le|del|dello|della|dell'|dei|degli|degl'|delle|un'|uno|una|un)",
    "fi": r"\b(se|yks|yksi)\b",
    "hu": r"\b(a|az|egy)\b",
}
NO_ANSWER = "No Answer"
_PUNCT = set(string.punctuation)


def normalize(text: str, locale: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    if locale in ARTICLES:
        text = re.sub(ARTICLES[locale], " ", text)
    tokens = list(text) if locale in MIXED_SEGMENTATION else text.split()
    return " ".join(t for t in tokens if t.strip())


def exact_match(pred: str, gold: str, locale: str) -> float:
    return float(normalize(pred, locale) == normalize(gold, locale))


def f1(pred: str, gold: str, locale: str) -> float:
    gold_toks = normalize(gold, locale).split() if gold else []
    pred_toks = normalize(pred, locale).split() if pred else []
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)  # No Answer agreement
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Prediction:
    example_id: str
    prediction: str
    binary_answer: str | None = None
    no_answer_prob: float = 0.0

    @property
    def text(self) -> str:
        return self.binary_answer or self.prediction


def score_examples(
    predictions: dict[str, Prediction], gold: dict[str, list[str]], locale: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-example EM and F1 (max over gold answers). Missing predictions score 0."""
    em, f = {}, {}
    for qid, answers in gold.items():
        if not answers:
            raise CoraError(f"gold example {qid} has no answers (unanswerable must be [''])")
        if qid not in predictions:
            em[qid] = f[qid] = 0.0
            continue
        pred = predictions[qid].text
        em[qid] = max(exact_match(pred, a, locale) for a in answers)
        f[qid] = max(f1(pred, a, locale) for a in answers)
    return em, f


def best_threshold_metrics(
    predictions: dict[str, Prediction], gold: dict[str, list[str]], locale: str
) -> dict[str, float]:
    """The official MKQA metrics at the no-answer threshold that maximises F1 (all in %, rounded to 2)."""
    em, f = score_examples(predictions, gold, locale)
    answerable = {qid: answers != [""] for qid, answers in gold.items()}
    # Missing predictions: never "no answer", never right.
    na_prob = {qid: predictions[qid].no_answer_prob if qid in predictions else float("-inf") for qid in gold}
    has_text = {qid: bool(predictions[qid].text) if qid in predictions else True for qid in gold}

    # Threshold 0 starts from "everything is No Answer": unanswerable questions are all right.
    best_threshold = 0.0
    current = best = sum(1 for qid in gold if not answerable[qid])
    for qid in sorted(na_prob, key=lambda q: na_prob[q]):
        if answerable[qid]:
            current += f[qid]
        elif has_text[qid]:
            current -= 1
        if current > best:
            best, best_threshold = current, na_prob[qid]

    def at_threshold(scores: dict[str, float]) -> dict[str, float]:
        return {qid: (float(not answerable[qid]) if na_prob[qid] > best_threshold else s) for qid, s in scores.items()}

    def mean(values) -> float:
        values = list(values)
        return round(100.0 * sum(values) / len(values), 2) if values else 0.0

    em_t = at_threshold(em)
    f_t = at_threshold(f)
    return {
        "best_em": mean(em_t.values()),
        "best_f1": round(100.0 * best / len(gold), 2),
        "best_answerable_em": mean(v for q, v in em_t.items() if answerable[q]),
        "best_answerable_f1": mean(v for q, v in f_t.items() if answerable[q]),
        "best_unanswerable_em": mean(v for q, v in em_t.items() if not answerable[q]),
        "best_f1_threshold": round(best_threshold, 2),
    }


def xor_format_metrics(predictions: dict[str, str], gold: list[dict]) -> dict[str, dict[str, float]]:
    """EM/F1 per locale for XOR-format MKQA files and {id: answer} predictions (no threshold: answers as given).

    A gold answer list ``["No Answer"]`` is the unanswerable placeholder: right iff the prediction is empty.
    """
    per: dict[str, dict[str, list[float]]] = {}
    for qa in gold:
        locale = qa["lang"]
        answers = [""] if qa["answers"][:1] == [NO_ANSWER] else qa["answers"]
        pred = predictions.get(qa["id"])
        slot = per.setdefault(locale, {"em": [], "f1": [], "missing": []})
        if pred is None:
            slot["em"].append(0.0)
            slot["f1"].append(0.0)
            slot["missing"].append(1)
            continue
        slot["em"].append(max(exact_match(pred, a, locale) for a in answers))
        slot["f1"].append(max(f1(pred, a, locale) for a in answers))
    out = {loc: {"count": len(v["em"]), "em": 100 * sum(v["em"]) / len(v["em"]),
                 "f1": 100 * sum(v["f1"]) / len(v["f1"]), "missing": len(v["missing"])} for loc, v in sorted(per.items())}
    if out:
        out["macro"] = {"count": sum(v["count"] for v in out.values()),
                        "em": sum(v["em"] for v in out.values()) / len(out),
                        "f1": sum(v["f1"] for v in out.values()) / len(out),
                        "missing": sum(v["missing"] for v in out.values())}
    return out


# ------------------------------------------------------------------------------------------ file I/O
def read_original(path: str | os.PathLike) -> list[dict]:
    rows = []
    for line_no, obj in iter_jsonl(path):
        for key in ("example_id", "queries", "answers"):
            if key not in obj:
                raise DataFormatError(path, line_no, "is missing (not the original MKQA schema?)", field=key)
        rows.append(obj)
    return rows


def gold_answers(record: dict, locale: str) -> list[str]:
    """All valid answer strings of one original record for a locale ('' for an unanswerable answer)."""
    answers = []
    for ans in record["answers"].get(locale, []):
        answers.append(ans.get("text") or "")
        answers.extend(ans.get("aliases", []) or [])
    return list(dict.fromkeys(answers))


def read_mkqa_predictions(path: str | os.PathLike) -> dict[str, Prediction]:
    """MKQA's prediction JSONL: {example_id, prediction, binary_answer, no_answer_prob} per line."""
    out = {}
    for line_no, obj in iter_jsonl(path):
        if "example_id" not in obj:
            raise DataFormatError(path, line_no, "is missing", field="example_id")
        pred = obj.get("prediction") or ""
        if not isinstance(pred, str):
            raise DataFormatError(path, line_no, f"must be a string, got {type(pred).__name__}", field="prediction")
        binary = obj.get("binary_answer") or None
        binary = binary.lower() if isinstance(binary, str) else binary
        if binary not in (None, "yes", "no"):
            raise DataFormatError(path, line_no, "must be 'yes', 'no' or null", field="binary_answer")
        prob = obj.get("no_answer_prob", 0.0)
        if not isinstance(prob, int | float):
            raise DataFormatError(path, line_no, "must be a number", field="no_answer_prob")
        out[str(obj["example_id"])] = Prediction(str(obj["example_id"]), pred, binary, float(prob))
    return out


def convert_to_xor(records: list[dict], locales: list[str] | None = None,
                   keep_unanswerable: bool = True) -> dict[str, list[dict]]:
    """Original MKQA records -> XOR-format rows per locale, for exactly the ``locales`` asked (all if None)."""
    locales = list(locales) if locales else list(MKQA_LOCALES)
    unknown = sorted(set(locales) - set(MKQA_LOCALES))
    if unknown:
        raise CoraError(f"unknown MKQA locale(s) {unknown}; MKQA has {', '.join(MKQA_LOCALES)}")
    out: dict[str, list[dict]] = {loc: [] for loc in locales}
    for rec in records:
        for loc in locales:
            if loc not in rec["queries"]:
                continue
            answers = [a for a in gold_answers(rec, loc) if a]
            if not answers:
                if not keep_unanswerable:
                    continue
                answers = [NO_ANSWER]
            out[loc].append({"id": f"{rec['example_id']}_{loc}", "question": rec["queries"][loc], "lang": loc,
                             "answers": answers})
    return out
