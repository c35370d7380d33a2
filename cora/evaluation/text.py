"""Answer normalisation and language-aware tokenisation shared by the evaluators."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter

_ASCII_PUNCT = set(string.punctuation)


# ------------------------------------------------------------------------------------------ tokenisers
@functools.lru_cache(maxsize=1)
def _mecab():
    import fugashi  # MeCab with the unidic-lite dictionary, pip-installable

    return fugashi.Tagger()


def mecab_wakati(text: str) -> str:
    """MeCab ``-Owakati`` output: tokens separated by spaces, ending in ' \\n' as MeCab's parse() returns it."""
    tokens = [w.surface for w in _mecab()(text)]
    return " ".join(tokens) + " \n"


def segment(text: str, lang: str) -> list[str]:
    """Words of ``text`` with a real segmenter for scripts without spaces (fixed mode).

    ja: MeCab (fugashi + unidic-lite); zh: jieba; th: pythainlp (newmm); km/lo/my: characters (no maintained,
    offline Khmer word segmenter is a dependency we want); everything else: whitespace.
    """
    base = lang.split("_")[0].split("-")[0].lower()
    if base == "ja":
        return [w.surface for w in _mecab()(text) if w.surface.strip()]
    if base == "zh":
        import jieba

        jieba.setLogLevel(60)
        return [t for t in jieba.lcut(text) if t.strip()]
    if base == "th":
        from pythainlp.tokenize import word_tokenize

        return [t for t in word_tokenize(text, engine="newmm") if t.strip()]
    if base in ("km", "lo", "my"):
        return [c for c in text if c.strip()]
    return text.split()


# --------------------------------------------------------------------------------------------- metrics
def token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """SQuAD token-overlap F1 of two token lists (0 when either is empty)."""
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def remove_ascii_punctuation(text: str) -> str:
    return "".join(ch for ch in text if ch not in _ASCII_PUNCT)


def remove_unicode_punctuation(text: str) -> str:
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


_COUNTER_AFTER_DIGIT = re.compile(r"(?<=\d)\s*[年歳人년]")


def strip_counters_after_digits(text: str) -> str:
    """'1867年' -> '1867', '30歳' -> '30', '2010년' -> '2010', but '日本人' stays (fixed mode)."""
    return _COUNTER_AFTER_DIGIT.sub("", text)
