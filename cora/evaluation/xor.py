"""XOR-TyDi QA evaluation: XOR-Full (F1 / EM / BLEU per language) and XOR-Retrieve (R@2kt, R@5kt).

XOR-Retrieve has an ``official`` mode (XOR-TyDi's ``eval_xor_retrieve.py`` exactly: nltk tokens) and a ``fixed``
one (whitespace tokens, answers found as written); see :func:`xor_retrieve_recall`. Two modes for XOR-Full:

* ``official`` reproduces CORA's ``eval_scripts/eval_xor_full.py`` (the XOR-TyDi evaluator with the
  ``"No Answer"`` skip) rule for rule, so numbers are comparable with papers: lowercase, remove ASCII
  punctuation, delete every 年/歳/人/년, split on whitespace; Japanese gold and predictions are first split into
  words by MeCab (here fugashi + unidic-lite; the original used MeCab with whatever dictionary was installed), with
  ・ -> space and 、 -> , in predictions; BLEU is nltk's sentence BLEU-4 over *characters* with no smoothing
  (the script passes strings), which is ~0 for any answer shorter than 4 characters even when exact. Gold
  answers starting with "No Answer" are skipped; a missing prediction counts as 0.
* ``fixed`` keeps the same data handling but measures properly: Unicode punctuation removed, counters removed only
  after digits (1867年 -> 1867, not 日本人 -> 日本), words segmented for ja (MeCab), zh (jieba), th (pythainlp),
  km (characters), and BLEU from sacrebleu on those words with exponential smoothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cora.errors import CoraError, DataFormatError
from cora.evaluation.text import (
    mecab_wakati,
    remove_ascii_punctuation,
    remove_unicode_punctuation,
    segment,
    strip_counters_after_digits,
    token_f1,
)
from cora.fileio import iter_jsonl

logger = logging.getLogger(__name__)

NO_ANSWER = "No Answer"
MODES = ("official", "fixed")


# -------------------------------------------------------------------------------------- official rules
def official_normalize(s: str) -> str:
    s = remove_ascii_punctuation(s.lower())
    for counter in ("年", "歳", "人", "년"):
        s = s.replace(counter, "")
    return " ".join(s.split())


def official_f1(pred: str, gold: str) -> float:
    return token_f1(official_normalize(pred).split(), official_normalize(gold).split())


def official_em(pred: str, gold: str) -> float:
    return float(official_normalize(pred) == official_normalize(gold))


def nltk_sentence_bleu(references: list, hypothesis, max_n: int = 4) -> float:
    """nltk.translate.bleu(references, hypothesis) with its defaults (uniform 4-gram weights, no smoothing).

    Sequences may be strings (then n-grams are of characters, as in the official XOR script). A zero count at
    order n > 1 becomes the smallest float (nltk's method0), so the score underflows to ~0 instead of failing.
    """
    hyp_len = len(hypothesis)
    numerators, denominators = [], []
    for n in range(1, max_n + 1):
        counts = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        max_ref: Counter = Counter()
        for ref in references:
            ref_counts = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            for gram in counts:
                max_ref[gram] = max(max_ref[gram], ref_counts[gram])
        numerators.append(sum(min(c, max_ref[g]) for g, c in counts.items()))
        denominators.append(max(1, sum(counts.values())))
    if numerators[0] == 0:
        return 0.0
    ref_len = min((len(r) for r in references), key=lambda r_len: (abs(r_len - hyp_len), r_len))
    bp = 1.0 if hyp_len > ref_len else (0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len))
    logs = [math.log(num / den) if num else math.log(2.2250738585072014e-308)
            for num, den in zip(numerators, denominators, strict=True)]
    return bp * math.exp(math.fsum(0.25 * x for x in logs))


# ----------------------------------------------------------------------------------------- fixed rules
def fixed_tokens(s: str, lang: str) -> list[str]:
    s = strip_counters_after_digits(remove_unicode_punctuation(s.lower()))
    return segment(s, lang)


def fixed_bleu(pred_tokens: list[str], gold_token_lists: list[list[str]]) -> float:
    import sacrebleu

    refs = [" ".join(t) for t in gold_token_lists]
    return sacrebleu.sentence_bleu(" ".join(pred_tokens), refs, smooth_method="exp", tokenize="none").score / 100


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class LanguageScores:
    count: int = 0
    f1: float = 0.0
    em: float = 0.0
    bleu: float = 0.0
    missing: int = 0


@dataclass
class XorResult:
    mode: str
    languages: dict[str, LanguageScores] = field(default_factory=dict)
    skipped_no_answer: int = 0
    missing: int = 0
    extra: int = 0

    def macro(self) -> dict[str, float]:
        langs = [s for s in self.languages.values() if s.count]
        n = len(langs) or 1
        return {m: sum(getattr(s, m) for s in langs) / n for m in ("f1", "em", "bleu")}

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "per_language": {k: {"count": v.count, "f1": 100 * v.f1, "em": 100 * v.em, "bleu": 100 * v.bleu,
                                 "missing": v.missing} for k, v in sorted(self.languages.items())},
            "macro": {k: 100 * v for k, v in self.macro().items()},
            "skipped_no_answer": self.skipped_no_answer,
            "missing_predictions": self.missing,
            "extra_predictions": self.extra,
        }


def score_one(pred: str, golds: list[str], lang: str, mode: str) -> tuple[float, float, float]:
    """(f1, em, bleu) of one prediction against its gold answers."""
    if mode == "official":
        if lang == "ja":
            final_golds = [mecab_wakati(g) for g in golds]
            final_pred = mecab_wakati(pred.replace("・", " ").replace("、", ","))
        else:
            final_golds, final_pred = golds, pred
        f1 = max(official_f1(final_pred, g) for g in final_golds)
        em = max(official_em(final_pred, g) for g in final_golds)
        # The official script scores BLEU on the raw prediction against the (wakati) golds.
        return f1, em, nltk_sentence_bleu(final_golds, pred)
    if mode == "fixed":
        pred_toks = fixed_tokens(pred, lang)
        gold_toks = [fixed_tokens(g, lang) for g in golds]
        f1 = max(token_f1(pred_toks, g) for g in gold_toks)
        em = max(float(pred_toks == g) for g in gold_toks)
        return f1, em, fixed_bleu(pred_toks, gold_toks)
    raise CoraError(f"unknown mode {mode!r}; choose one of {MODES}")


def evaluate_xor_full(gold: list[dict], predictions: dict[str, str], mode: str = "official") -> XorResult:
    result = XorResult(mode)
    gold_ids = set()
    for qa in gold:
        answers = qa["answers"] if isinstance(qa["answers"], list) else [qa["answers"]]
        gold_ids.add(qa["id"])
        if answers and answers[0] == NO_ANSWER:
            result.skipped_no_answer += 1
            continue
        scores = result.languages.setdefault(qa["lang"], LanguageScores())
        scores.count += 1
        if qa["id"] not in predictions:
            scores.missing += 1
            result.missing += 1
            continue
        f1, em, bleu = score_one(predictions[qa["id"]], answers, qa["lang"], mode)
        scores.f1, scores.em, scores.bleu = scores.f1 + f1, scores.em + em, scores.bleu + bleu
    for s in result.languages.values():
        if s.count:
            s.f1, s.em, s.bleu = s.f1 / s.count, s.em / s.count, s.bleu / s.count
    result.extra = len(set(predictions) - gold_ids)
    if result.missing:
        logger.warning("%d gold questions have no prediction; they score 0 (as in the official script)",
                       result.missing)
    if result.extra:
        logger.warning("%d predictions have ids that are not in the gold file; ignored", result.extra)
    return result


# --------------------------------------------------------------------------------------- XOR-Retrieve
RETRIEVE_MODES = ("official", "fixed")
RETRIEVE_TOKENS = (2000, 5000)


@dataclass(frozen=True)
class RankedContexts:
    """One question's retrieved passage texts, best first, and the language its prediction line names."""

    id: str
    lang: str | None
    texts: list[str]


@dataclass
class RetrieveResult:
    mode: str
    per_language: dict[str, dict[str, float]]  # lang -> {"count", "R@2kt", "R@5kt"} (recall in %)
    macro: dict[str, float]
    missing: int = 0  # gold questions without a ranked list
    extra: int = 0  # ranked lists whose id is not in the gold file
    duplicates: int = 0  # ranked lists whose id came earlier in the file
    yes_no: int = 0  # gold questions with only yes/no answers (never scored)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "per_language": self.per_language, "macro": self.macro,
                "missing_predictions": self.missing, "extra_predictions": self.extra,
                "duplicate_predictions": self.duplicates, "yes_no_skipped": self.yes_no}


def retrieve_window(texts: list[str], max_tokens: int, mode: str = "official") -> list[str]:
    """The first ``max_tokens`` tokens of the passages in rank order; the window's text is ``" ".join`` of them.

    official: nltk ``word_tokenize`` tokens of each passage (as the official script), so the window is counted
    in nltk tokens and its text is the *tokenised* text ("St. Peter's" -> "St. Peter 's", "2.8%" -> "2.8 %").
    fixed: whitespace tokens, so the window text keeps every word as written."""
    from cora.evaluation.text import nltk_word_tokenize

    tokenize = nltk_word_tokenize if mode == "official" else str.split
    tokens: list[str] = []
    for text in texts:
        tokens += tokenize(text)
        if len(tokens) >= max_tokens:
            break
    return tokens[:max_tokens]


def xor_retrieve_recall(gold: list[dict], ranked: list[RankedContexts], mode: str = "official",
                        max_tokens: tuple[int, ...] = RETRIEVE_TOKENS) -> RetrieveResult:
    """R@2kt / R@5kt: the share of questions with an answer string inside the first 2,000 / 5,000 tokens of
    their retrieved passages (concatenated in rank order), per language, in %, and their macro mean.

    official reproduces XOR-TyDi's ``evals/eval_xor_retrieve.py`` exactly: it walks the *prediction* list (a
    question's language is the one its prediction names; a gold question with no prediction is not counted; an
    id listed twice counts twice), skips answers "yes"/"no" and questions with nothing else, tokenises with nltk
    ``word_tokenize`` and looks for the raw answer string in the tokenised window, so an answer that
    tokenisation changes ("2.8%", "St. Peter's Basilica") can never be found. fixed walks the gold questions
    (language from gold; no prediction = a miss; a repeated id counts once), counts whitespace tokens and finds
    the answer in the text as written. Both report the missing, extra and repeated ids."""
    if mode not in RETRIEVE_MODES:
        raise CoraError(f"unknown mode {mode!r}; choose one of {RETRIEVE_MODES}")
    gold_by_id = {qa["id"]: qa for qa in gold}
    span_answers = {qid: [a for a in qa["answers"] if a not in ("yes", "no")] for qid, qa in gold_by_id.items()}
    ids = [r.id for r in ranked]
    missing = len(set(gold_by_id) - set(ids))
    extra = sum(1 for i in ids if i not in gold_by_id)
    duplicates = len(ids) - len(set(ids))
    if mode == "official":
        items = [(r.lang if r.lang is not None else gold_by_id.get(r.id, {}).get("lang"), r) for r in ranked]
    else:
        first = {}
        for r in ranked:
            first.setdefault(r.id, r)
        items = [(qa["lang"], first.get(qid, RankedContexts(qid, qa["lang"], []))) for qid, qa in gold_by_id.items()]
    counts: dict[str, int] = {}
    hits: dict[str, dict[int, int]] = {}
    for lang, r in items:
        answers = span_answers.get(r.id)
        if not answers:  # not in gold, or yes/no only
            continue
        counts[lang] = counts.get(lang, 0) + 1
        slot = hits.setdefault(lang, dict.fromkeys(max_tokens, 0))
        # The first k tokens of the longest window are the k-token window: tokenise once.
        window_tokens = retrieve_window(r.texts, max(max_tokens), mode)
        for k in max_tokens:
            window = " ".join(window_tokens[:k])
            slot[k] += any(a in window for a in answers)
    # The official script's arithmetic: (hit / count) * 100 per language, statistics.mean over languages.
    per_language = {lang: {"count": counts[lang], **{f"R@{k // 1000}kt": (hits[lang][k] / counts[lang]) * 100
                                                     for k in max_tokens}} for lang in counts}
    macro = {}
    if per_language:
        macro = {"count": sum(counts.values()),
                 **{f"R@{k // 1000}kt": statistics.mean(v[f"R@{k // 1000}kt"] for v in per_language.values())
                    for k in max_tokens}}
    if missing:
        how = "not counted, as in the official script" if mode == "official" else "scored as misses"
        logger.warning("%d gold questions have no retrieved passages (%s)", missing, how)
    if extra:
        logger.warning("%d ranked lists have ids that are not in the gold file; ignored", extra)
    if duplicates:
        how = "each counted, as in the official script" if mode == "official" else "the first one used"
        logger.warning("%d ranked lists repeat an earlier id (%s)", duplicates, how)
    yes_no = sum(1 for qid in gold_by_id if not span_answers[qid])
    return RetrieveResult(mode, per_language, macro, missing, extra, duplicates, yes_no)


def read_ranked_contexts(path: str | os.PathLike) -> list[RankedContexts]:
    """Retrieved passages per question, in file order, from either format:

    * the official XOR-Retrieve prediction file: one JSON list of ``{"id", "lang", "ctxs": [text, ...]}`` (a
      ctx may also be a DPR-style object with a ``text`` field);
    * ``cora retrieve`` output: JSON lines ``{"id", "lang", "hits": [{"text", ...}, ...]}``.
    """
    path = Path(path)
    if not path.exists():
        raise CoraError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, err.lineno, f"invalid JSON ({err.msg})") from None
        return [_ranked_row(path, None, row, "ctxs") for row in rows]
    return [_ranked_row(path, line_no, row, "hits") for line_no, row in iter_jsonl(path)]


def _ranked_row(path, line_no, row, key: str) -> RankedContexts:
    where = f"item {{id: {row.get('id')!r}}}" if isinstance(row, dict) else "item"
    if not isinstance(row, dict) or "id" not in row or not isinstance(row.get(key), list):
        expected = ("an object {id, lang, ctxs: [passage text, ...]}" if key == "ctxs" else
                    "a 'cora retrieve' line with hits and their text")
        raise DataFormatError(path, line_no, f"expected {expected}")
    texts = []
    for ctx in row[key]:
        t = ctx.get("text") if isinstance(ctx, dict) else ctx
        if not isinstance(t, str):
            hint = " (hits written with --no-text have none)" if key == "hits" else ""
            raise DataFormatError(path, line_no, f"{where}: every passage needs its text{hint}")
        texts.append(t)
    lang = row.get("lang")
    return RankedContexts(str(row["id"]), str(lang) if lang is not None else None, texts)


# -------------------------------------------------------------------------------------------- loading
def read_gold_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    for line_no, obj in iter_jsonl(path):
        for key in ("id", "answers", "lang"):
            if key not in obj:
                raise DataFormatError(path, line_no, "is missing", field=key)
        answers = [obj["answers"]] if isinstance(obj["answers"], str) else obj["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, line_no, "must be a non-empty list of strings", field="answers")
        rows.append({"id": str(obj["id"]), "lang": obj["lang"], "answers": answers,
                     "question": obj.get("question", "")})
    return rows


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """The official prediction format: one JSON object {question id: answer string}."""
    path = Path(path)
    if not path.exists():
        raise CoraError(f"{path}: no such file")
    try:
        preds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, f"invalid JSON ({err.msg}); expected {{id: answer}}") from None
    if not isinstance(preds, dict):
        raise DataFormatError(path, None, f"expected a JSON object {{id: answer}}, got {type(preds).__name__}")
    bad = [k for k, v in preds.items() if not isinstance(v, str)]
    if bad:
        raise DataFormatError(path, None, f"answers must be strings; {len(bad)} are not (first: id {bad[0]!r} -> "
                              f"{type(preds[bad[0]]).__name__})")
    return {str(k): v for k, v in preds.items()}
