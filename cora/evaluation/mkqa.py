"""MKQA evaluation, re-implementing the rules of apple/ml-mkqa's ``mkqa_eval.py`` / ``mkqa_eval_util.py``.

Normalisation per locale: lowercase, remove ASCII punctuation, remove articles with the locale's regex (en, es,
vi, de, ar, nl, sv, da, no, fr, pt, it, fi, hu), then split on whitespace, or for zh_cn/zh_hk/zh_tw/ja/th/km split
"mixed": every character becomes a token. An empty string is "No Answer": F1 and EM are 1 when both prediction and
gold are empty, 0 when only one is. A yes/no ``binary_answer`` takes precedence over the text prediction.

The official scores are reported at the best no-answer threshold: predictions are sorted by ``no_answer_prob``
(ties in prediction-file order) and the threshold that maximises overall F1 is chosen; EM, answerable and
unanswerable splits are then reported at that threshold, followed by the ``-v`` figures (EM and F1 as predicted).
Where the official script stops (a gold id without a prediction, a prediction without a gold id) or prints NaN
(an empty split), :func:`evaluate` scores the ids both files share and says so in counted warnings.

Files: the original schema (``queries`` and ``answers`` keyed by 26 locales; each answer ``{type, text,
aliases}``; ``text`` is null for unanswerable questions), and the XOR format (``{"id","question","lang",
"answers"}``) written by :func:`convert_to_xor`, whose unanswerable placeholder is :data:`NO_ANSWER`, the very
string the evaluators here treat as "no answer" (the original converter wrote "NoAns", which its evaluator did not
recognise, and inverted its ``--langs`` option).
"""

from __future__ import annotations

import logging
import math
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


def _official_mean(values) -> float:
    """round(100 * np.mean(values), 2), as ml-mkqa computes every averaged figure; NaN for an empty list (where
    numpy warns and the official script prints NaN)."""
    import numpy as np

    values = list(values)
    return round(100.0 * float(np.mean(values)), 2) if values else math.nan


def best_threshold_metrics(
    predictions: dict[str, Prediction], gold: dict[str, list[str]], locale: str
) -> dict[str, float]:
    """The official MKQA metrics (in %, rounded to 2) at the no-answer threshold that maximises F1.

    Questions are taken in increasing ``no_answer_prob`` with ties in *prediction-file* order (a stable sort of
    the predictions, as ml-mkqa's ``compute_best_score_and_threshold``), so a file with tied probabilities scores
    as it does officially. Only ids present in both ``predictions`` and ``gold`` are scored (the official script
    stops on any other; :func:`evaluate` counts and reports them). A split with no question (no unanswerable
    gold, say) is NaN, as officially."""
    gold = {qid: answers for qid, answers in gold.items() if qid in predictions}
    predictions = {qid: p for qid, p in predictions.items() if qid in gold}
    if not gold:
        raise CoraError("no prediction has the id of a gold example: nothing to score")
    em, f = score_examples(predictions, gold, locale)
    answerable = {qid: answers != [""] for qid, answers in gold.items()}
    na_prob = {qid: p.no_answer_prob for qid, p in predictions.items()}

    # Threshold 0 starts from "everything is No Answer": unanswerable questions are all right.
    best_threshold = 0.0
    current = best = sum(1 for qid in gold if not answerable[qid])
    for qid in sorted(na_prob, key=lambda q: na_prob[q]):
        if answerable[qid]:
            current += f[qid]
        elif predictions[qid].text:
            current -= 1
        if current > best:
            best, best_threshold = current, na_prob[qid]

    def at_threshold(scores: dict[str, float]) -> dict[str, float]:
        return {qid: (float(not answerable[qid]) if na_prob[qid] > best_threshold else s) for qid, s in scores.items()}

    em_t = at_threshold(em)
    f_t = at_threshold(f)
    return {
        "best_em": _official_mean(em_t.values()),
        "best_f1": round(100.0 * best / len(gold), 2),
        "best_answerable_em": _official_mean(v for q, v in em_t.items() if answerable[q]),
        "best_answerable_f1": _official_mean(v for q, v in f_t.items() if answerable[q]),
        "best_unanswerable_em": _official_mean(v for q, v in em_t.items() if not answerable[q]),
        "best_f1_threshold": round(best_threshold, 2),
    }


def default_metrics(predictions: dict[str, Prediction], gold: dict[str, list[str]], locale: str) -> dict[str, float]:
    """The figures ml-mkqa adds with ``-v``: EM and F1 of the predictions as given (no threshold), overall and on
    the answerable and unanswerable splits (in %, rounded to 2; NaN for an empty split). Scored on the ids both
    files have, like :func:`best_threshold_metrics`."""
    gold = {qid: answers for qid, answers in gold.items() if qid in predictions}
    em, f = score_examples(predictions, gold, locale)
    answerable = {qid: answers != [""] for qid, answers in gold.items()}
    return {
        "exact_match": _official_mean(em.values()),
        "f1": _official_mean(f.values()),
        "answerable_exact_match": _official_mean(v for q, v in em.items() if answerable[q]),
        "answerable_f1": _official_mean(v for q, v in f.items() if answerable[q]),
        "unanswerable_exact_match": _official_mean(v for q, v in em.items() if not answerable[q]),
    }


@dataclass
class MkqaResult:
    """Official metrics (the best-threshold ones, then the ``-v`` ones) and what could not be scored."""

    locale: str
    metrics: dict[str, float]
    scored: int
    missing: int  # gold examples without a prediction (the official script stops with an AssertionError)
    extra: int  # predictions for ids not in the gold (the official script stops with a KeyError)
    empty_splits: list[str]  # 'answerable' / 'unanswerable' when a split has no question (officially NaN)

    def warnings(self) -> list[str]:
        out = []
        if self.missing or self.extra:
            out.append(f"{self.missing} gold examples have no prediction and {self.extra} predictions have no gold "
                       f"example; the official script stops on these, so the metrics are the official ones on the "
                       f"{self.scored} ids both files share")
        for split in self.empty_splits:
            out.append(f"no {split} question among the {self.scored} scored: its figures are NaN, as the official "
                       "script prints them")
        return out

    def to_dict(self) -> dict:
        return {"lang": self.locale, **self.metrics, "scored": self.scored, "missing": self.missing,
                "extra": self.extra, "warnings": self.warnings()}


def evaluate(predictions: dict[str, Prediction], gold: dict[str, list[str]], locale: str) -> MkqaResult:
    """Official MKQA evaluation of one locale (ml-mkqa's ``mkqa_eval.py -v``), with counted warnings where the
    official script would stop (missing or extra ids) or print NaN (an empty split)."""
    missing = sum(1 for qid in gold if qid not in predictions)
    extra = sum(1 for qid in predictions if qid not in gold)
    metrics = {**best_threshold_metrics(predictions, gold, locale), **default_metrics(predictions, gold, locale)}
    scored = [qid for qid in gold if qid in predictions]
    empty = [name for name, want in (("answerable", True), ("unanswerable", False))
             if not any((gold[qid] != [""]) == want for qid in scored)]
    result = MkqaResult(locale, metrics, len(scored), missing, extra, empty)
    for message in result.warnings():
        logger.warning("MKQA %s: %s", locale, message)
    return result


def xor_format_metrics(predictions: dict[str, str], gold: list[dict]) -> dict[str, dict[str, float]]:
    """EM/F1 per locale for XOR-format MKQA files and {id: answer} predictions (no threshold: answers as given).

    The placeholder :data:`NO_ANSWER` stands for the empty answer wherever it appears in a gold list: alone, an
    empty prediction is the only right one; next to real answers, an empty prediction is right too, as in the
    official scoring of such records.
    """
    per: dict[str, dict[str, list[float]]] = {}
    for qa in gold:
        locale = qa["lang"]
        answers = xor_gold_answers(qa["answers"])
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


def xor_gold_answers(answers: list[str]) -> list[str]:
    """The answer strings the official scoring uses for an XOR-format gold list: :data:`NO_ANSWER` -> ''."""
    return ["" if a == NO_ANSWER else a for a in answers]


def mkqa_example_id(question_id: str, locale: str) -> str:
    """The MKQA example id of an XOR-format question id: without the ``_{locale}`` suffix that
    :func:`convert_to_xor` (and the shared mkqa-xx.jsonl files) add, so a prediction file can be scored by
    ml-mkqa's own script against the original MKQA file; any other id is kept as it is."""
    suffix = f"_{locale}"
    return question_id[: -len(suffix)] if question_id.endswith(suffix) and len(question_id) > len(suffix) \
        else question_id


def prediction_record(example_id: str, answer, locale: str) -> dict:
    """One line of MKQA's prediction schema for a cora :class:`~cora.reader.base.Answer`.

    ``no_answer_prob`` is 1 minus the reader's probability of the span it read from the *retrieved* passages (the
    ``source`` evidence: the joint softmax over every span of every passage read). When the retrieved passages
    hold the answer, that probability concentrates on one span; when they do not, it spreads, so the probability
    of "no answer" rises and ml-mkqa's threshold search can turn such answers into "No Answer". An answer
    projected into a language-linked sibling keeps the source's probability: the sibling's re-read is scored
    over one passage only and would look confident whatever the evidence. ``binary_answer`` is set only when the
    answer text itself is "yes" or "no" (MKQA's yes/no gold is the English word in every locale).
    """
    source = next((ev for ev in answer.evidence if ev.role == "source" and ev.score is not None), None)
    prob = source.score if source is not None else answer.score
    prob = min(max(float(prob), 0.0), 1.0)
    text = (answer.text or "").strip()
    binary = text.lower() if text.lower() in ("yes", "no") else None
    return {"example_id": mkqa_example_id(str(example_id), locale), "prediction": text, "binary_answer": binary,
            "no_answer_prob": 1.0 - prob}


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
    """MKQA's prediction JSONL: {example_id, prediction, binary_answer, no_answer_prob} per line, in file order
    (which breaks ties between equal ``no_answer_prob`` values). A repeated id keeps its first position and its
    last values, as the official reader's dict does."""
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
    """Original MKQA records -> XOR-format rows per locale, for exactly the ``locales`` asked (all if None).

    An unanswerable record gets ``[NO_ANSWER]``; a record with real answers *and* an empty one (an answer whose
    text is null next to a real one) keeps the empty one as a trailing :data:`NO_ANSWER`, because the official
    scoring keeps it too: there, an empty prediction is right."""
    locales = list(locales) if locales else list(MKQA_LOCALES)
    unknown = sorted(set(locales) - set(MKQA_LOCALES))
    if unknown:
        raise CoraError(f"unknown MKQA locale(s) {unknown}; MKQA has {', '.join(MKQA_LOCALES)}")
    out: dict[str, list[dict]] = {loc: [] for loc in locales}
    for rec in records:
        for loc in locales:
            if loc not in rec["queries"]:
                continue
            every = gold_answers(rec, loc)
            answers = [a for a in every if a]
            if not answers:
                if not keep_unanswerable:
                    continue
                answers = [NO_ANSWER]
            elif "" in every:
                answers.append(NO_ANSWER)
            out[loc].append({"id": f"{rec['example_id']}_{loc}", "question": rec["queries"][loc], "lang": loc,
                             "answers": answers})
    return out
