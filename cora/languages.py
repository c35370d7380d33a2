"""Language codes: validation (keep unknown codes, warn once) and detection (langdetect, seeded)."""

from __future__ import annotations

import logging
import re
import threading

logger = logging.getLogger(__name__)

# ISO 639-1 codes. Region/script variants such as zh-TW, zh_cn, pt-BR are accepted when the base code is known.
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz
    ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is
    it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt
    my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm
    sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh
    zu""".split()
)
_VARIANT = re.compile(r"^([a-z]{2,3})(?:[-_][A-Za-z0-9]{2,8})*$")
_warned: set[str] = set()
_lock = threading.Lock()

# Scripts written without spaces between words: passages are measured in characters, BM25 uses n-grams.
NO_SPACE_LANGS = frozenset({"ja", "zh", "th", "km", "lo", "my", "bo"})


def base_code(lang: str) -> str:
    """'zh-TW' -> 'zh', 'zh_cn' -> 'zh', 'de' -> 'de'."""
    m = _VARIANT.match(lang or "")
    return m.group(1).lower() if m else (lang or "").lower()


def is_known(lang: str) -> bool:
    return base_code(lang) in ISO_639_1


def check_language(lang: str, where: str = "") -> str:
    """Return ``lang`` unchanged; warn once per process for a code that is not ISO 639-1 (it is kept)."""
    if not is_known(lang):
        with _lock:
            if lang not in _warned:
                _warned.add(lang)
                logger.warning("unknown language code %r%s: kept as is (expected ISO 639-1, e.g. 'de', 'zh-TW')",
                               lang, f" ({where})" if where else "")
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
