"""Typed configurations, saved as JSON next to every artifact and restored from it."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cora.errors import CoraError
from cora.fileio import atomic_write_json

T = TypeVar("T")


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_json(path, {"type": type(cfg).__name__, **dataclasses.asdict(cfg)})


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CoraError(f"{path}: config file not found") from None
    except json.JSONDecodeError as err:
        raise CoraError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise CoraError(f"{path}: not UTF-8 text; the file is damaged") from None
    if not isinstance(raw, dict):
        raise CoraError(f"{path}: expected a JSON object; the file is damaged")
    raw.pop("type", None)
    return config_from_dict(cls, raw, source=str(path))


def config_from_dict(cls: type[T], raw: dict, source: str = "config") -> T:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CoraError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise CoraError(f"{source}: missing field(s) {missing} for {cls.__name__}; the file is damaged or was not "
                        "written by cora")
    return cls(**raw)


@dataclass
class EncoderConfig:
    """How text becomes a vector: the backbone plus pooling and prefixes (chosen from a registry)."""

    backbone: str = field(metadata={"help": "registered name (e.g. me5-small), Hugging Face model id or folder"})
    pooling: str = field(default="cls", metadata={"help": "'mean' (attention-masked) or 'cls'"})
    query_prefix: str = field(default="", metadata={"help": "prepended to questions, e.g. 'query: ' for e5"})
    passage_prefix: str = field(default="", metadata={"help": "prepended to passages, e.g. 'passage: ' for e5"})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise embeddings (inner product = cosine)"})
    query_max_length: int = field(default=64, metadata={"help": "max query tokens"})
    passage_max_length: int = field(default=512, metadata={"help": "max passage tokens (title + text)"})
    query_adapter: str | None = field(default=None, metadata={
        "help": "LoRA adapter folder (inside the encoder folder) applied to the query tower only; passages are "
                "encoded by the plain backbone, so an index built with the backbone serves this encoder as is"})

    query_adapter_scope: str = field(default="all", metadata={
        "help": "'all': the query adapter encodes every question; 'cross-lingual': only questions whose language "
                "has no passage in the datastore searched, the others use the plain backbone (an adapter trained "
                "for cross-lingual retrieval only, e.g. the shipped mdpr-me5-small)"})

    def passage_side(self) -> dict:
        """What decides a passage vector besides the weights: two encoders with the same passage tower and the
        same passage side produce the same index."""
        return {"pooling": self.pooling, "passage_prefix": self.passage_prefix, "normalize": self.normalize,
                "passage_max_length": self.passage_max_length}
