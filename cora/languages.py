"""Language codes: validation (keep unknown codes, warn once) and detection (langdetect, seeded)."""

from __future__ import annotations

import functools
import logging
import threading

logger = logging.getLogger(__name__)

_warned: set[str] = set()
_lock = threading.Lock()

# Scripts written without spaces between words: passages are measured in characters, BM25 uses n-grams.
NO_SPACE_LANGS = frozenset({"ja", "zh", "th", "km", "lo", "my", "bo"})


@functools.lru_cache(maxsize=4096)
def base_code(lang: str) -> str:
    """The language of a tag, as its shortest ISO 639 code: 'zh-TW', 'zh_cn', 'zho_Hans' -> 'zh'; 'hau' -> 'ha';
    'jpn_Jpan' (FLORES-200 style) -> 'ja'; 'iw' -> 'he'; 'cmn' -> 'zh' (macrolanguage); 'bem' -> 'bem' (no
    two-letter code). Use it to *compare* languages; files keep the tags they were given. A string that is not a
    language tag is only lower-cased."""
    import langcodes

    tag = (lang or "").strip().replace("_", "-")
    try:
        code = langcodes.Language.get(langcodes.standardize_tag(tag, macro=True)).language
    except (ValueError, LookupError):  # langcodes.LanguageTagError is a ValueError
        code = None
    return code or tag.split("-")[0].lower()


def same_language(a: str | None, b: str | None) -> bool:
    """Whether two tags name one language ('de' and 'deu', 'zh' and 'zh-TW', 'en' and 'eng-Latn')."""
    return bool(a) and bool(b) and base_code(a) == base_code(b)


@functools.lru_cache(maxsize=4096)
def is_known(lang: str) -> bool:
    """A well-formed BCP-47 tag whose language is a registered ISO 639 code ('de', 'zh-TW', 'hau', 'jpn_Jpan')."""
    import langcodes

    try:
        return bool(lang) and langcodes.tag_is_valid(lang.strip().replace("_", "-")) and base_code(lang) != "und"
    except ValueError:
        return False


def check_language(lang: str, where: str = "") -> str:
    """Return ``lang`` unchanged; warn once per process for a string that is not a language tag (it is kept)."""
    if not is_known(lang):
        with _lock:
            if lang not in _warned:
                _warned.add(lang)
                logger.warning("unknown language code %r%s: kept as is (expected an ISO 639 code or BCP-47 tag, "
                               "e.g. 'de', 'zh-TW', 'hau')", lang, f" ({where})" if where else "")
    return lang


_detector_ready = False


def detect_language(text: str) -> str:
    """Detect the language of ``text`` (langdetect with a fixed seed, so results are reproducible)."""
    global _detector_ready
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    with _lock:
        if not _detector_ready:
            DetectorFactory.seed = 0  # langdetect is randomised unless seeded
            _detector_ready = True
    try:
        code = detect(text)
    except LangDetectException:
        return "und"
    # langdetect says zh-cn / zh-tw; the rest of cora speaks plain ISO codes.
    return base_code(code)
