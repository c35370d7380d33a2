"""Experiment knowledge in one place: the XQuAD languages and dev articles, and the shared training sources.

The library takes sources as arguments (``cora train reader --source PATH:LANG``, ``reader_mixture(root,
sources)``); what cora's own runs train and evaluate on is recorded here, and every recipe, benchmark and default
reads it from here rather than keeping a copy.

Paths are relative to the shared data folder (``$CORA_SHARED_DATA``, see the README), whose layout is that of the
public releases: ``xquad/xquad.{lang}.json``, ``tydiqa-goldp/...``, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cora.errors import CoraError

# XQuAD: the same 40 SQuAD articles (1,190 questions) in 12 languages. cora trains on articles 0-31 and keeps
# 32-39 as its dev set; test sets (XOR-TyDi, MKQA, AfriQA test) are never used to choose anything.
XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
XQUAD_TRAIN_ARTICLES = range(0, 32)
XQUAD_DEV_ARTICLES = range(32, 40)


def xquad_file(data_root: str | Path, lang: str) -> Path:
    """The XQuAD file of ``lang`` under the shared data folder."""
    return Path(data_root) / "xquad" / f"xquad.{lang}.json"


SOURCE_FORMATS = ("squad", "afriqa")


@dataclass(frozen=True)
class ReaderSource:
    """One training file (a glob, relative to the data root unless absolute), its language and an example cap.
    ``format`` is 'squad' (SQuAD JSON) or 'afriqa' (AfriQA gold-passage JSON lines: ``lang`` is the question's
    language, the passage and the answer are in the pivot language named in the file name)."""

    path: str
    lang: str
    cap: int | None = None
    format: str = "squad"

    @classmethod
    def parse(cls, spec: str) -> ReaderSource:
        """``PATH:LANG[:FORMAT[:CAP]]``, as ``cora train reader --source`` takes it."""
        parts = spec.split(":")
        if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
            raise CoraError(f"source {spec!r}: expected PATH:LANG[:FORMAT[:CAP]] (e.g. xquad/xquad.de.json:de or "
                            "my/train.json:sw:squad:5000)")
        fmt = parts[2] if len(parts) > 2 and parts[2] else "squad"
        if fmt not in SOURCE_FORMATS:
            raise CoraError(f"source {spec!r}: unknown format {fmt!r} (known: {', '.join(SOURCE_FORMATS)})")
        cap = None
        if len(parts) > 3:
            try:
                cap = int(parts[3])
            except ValueError:
                raise CoraError(f"source {spec!r}: the cap {parts[3]!r} is not a whole number") from None
        return cls(parts[0], parts[1], cap, fmt)

    def spec(self) -> str:
        """The ``PATH:LANG[:FORMAT[:CAP]]`` string that :meth:`parse` reads back."""
        tail = [self.format, str(self.cap)] if self.cap is not None else [self.format] if self.format != "squad" else []
        return ":".join([self.path, self.lang, *tail])


# The AfriQA languages with train gold passages in the shared data, each with its pivot language.
AFRIQA_TRAIN = (("bem", "en"), ("fon", "fr"), ("hau", "en"), ("ibo", "en"), ("kin", "en"), ("twi", "en"),
                ("yor", "en"), ("zul", "en"))

# The SQuAD-format training sets of the shared data folder, the one list every trainer reads. Caps keep the large
# ones from swamping the reader's mixture (retriever recipes use the files uncapped). DRCD (Traditional Chinese) is
# 'zh', as XQuAD's Simplified Chinese is: cora speaks ISO 639-1 codes (detection returns 'zh' for both), and the
# shipped reader was trained with it so. XQuAD (and SQuAD-es, a translation of the same 40 articles) are
# restricted to the training articles by whoever reads them; the reader also drops every article holding an XQuAD
# dev question id from every file.
SQUAD_SOURCES = tuple(ReaderSource(f"xquad/xquad.{lang}.json", lang) for lang in XQUAD_LANGS) + (
    ReaderSource("tydiqa-goldp/english_tydiqa_train.json", "en"),
    ReaderSource("tydiqa-goldp/korean_tydiqa_train.json", "ko"),
    ReaderSource("tydiqa-goldp/swahili_tydiqa_train.json", "sw"),
    ReaderSource("jaquad/jaquad_train_*.json", "ja", cap=3000),
    ReaderSource("arcd/arcd-train.json", "ar"),
    ReaderSource("drcd/DRCD_dev.json", "zh", cap=2500),
    ReaderSource("squad-it/SQuAD_it-test.json", "it", cap=2500),
    ReaderSource("squad-es/dev-v1.1-es_small.json", "es", cap=2500),
)
AFRIQA_SOURCES = tuple(
    ReaderSource(f"afriqa/gold_passages/{lang}/gold_span_passages.afriqa.{lang}.{pivot}.train.json", lang,
                 format="afriqa") for lang, pivot in AFRIQA_TRAIN)
# ``cora train reader``'s default mixture.
READER_SOURCES = SQUAD_SOURCES + AFRIQA_SOURCES


def xquad_aligned(source: ReaderSource) -> bool:
    """Whether the file holds XQuAD's 40 articles in XQuAD's order (XQuAD itself and SQuAD-es): read only
    :data:`XQUAD_TRAIN_ARTICLES` of it for training."""
    return source.path.startswith(("xquad/", "squad-es/"))
