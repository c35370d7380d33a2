"""Typed configurations: one dataclass per component or command, saved as JSON next to every artifact (with a
provenance block) and restored from it; the same dataclass generates a command's flags and reads its --config file.

A config file is a JSON object of field values. Reading one (:func:`load_config`, :func:`config_from_dict`) refuses
unknown keys and values of the wrong type, naming the file and the key; the ``type`` and ``provenance`` entries
that :func:`save_config` adds are skipped, so a saved config reads back as it was written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import shlex
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cora.errors import CoraError
from cora.fileio import atomic_write_json, json_error

T = TypeVar("T")

# Entries a saved config holds besides its fields: what it is and where it came from, never options.
RECORD_KEYS = ("type", "provenance")


@functools.lru_cache(maxsize=1)
def _git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout cora is imported from; None for an installed wheel or without git."""
    package = Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        # site-packages inside some other repository is not a checkout of cora: its commit would mislead.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent:
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, dirty


def provenance() -> dict:
    """What produced an artifact (ColBERT's ``meta`` block): cora's version, the git commit when cora runs from a
    checkout (and whether it had uncommitted changes), the command line and the time."""
    from cora import __version__

    out: dict[str, Any] = {"cora_version": __version__}
    git = _git_commit()
    if git is not None:
        out["git_commit"], out["git_dirty"] = git
    if sys.argv and sys.argv[0]:
        out["command"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    out["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return out


def save_config(cfg: Any, path: str | os.PathLike, **recorded: Any) -> None:
    """Write ``cfg`` as JSON with its type and provenance; ``recorded`` adds entries that describe the run
    (counts, ...) and that reading the file back skips when the dataclass lists them in ``RECORDED``."""
    atomic_write_json(path, {"type": type(cfg).__name__, **dataclasses.asdict(cfg), **recorded,
                             "provenance": provenance()})


def read_config_file(path: str | os.PathLike) -> dict:
    """The one reader of JSON config files: an object, or a one-line error naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CoraError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise CoraError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise CoraError(f"{path}: not UTF-8 text; the file is damaged") from None
    import json

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise CoraError(f"{path}:{err.lineno}: {json_error(err)}") from None
    if not isinstance(raw, dict):
        raise CoraError(f"{path}: expected a JSON object of options, not {type(raw).__name__}")
    return raw


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    return config_from_dict(cls, read_config_file(path), source=str(path))


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_value(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value as the field holds it) for a JSON value and a field's type; unknown types are not checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, converted = _check_value(value, arm)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            return False, value
        args = typing.get_args(hint)
        if origin is list and args:
            checked = [_check_value(v, args[0]) for v in value]
            return all(ok for ok, _ in checked), [v for _, v in checked]
        return True, value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value


def _hints(cls: type) -> dict[str, Any]:
    """The fields' types; a class whose annotations name something not importable at run time is not checked."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def config_from_dict(cls: type[T], raw: dict, source: str = "config") -> T:
    """``cls`` from a dict of field values read from ``source`` (a file name, for the messages): unknown keys,
    values of the wrong type and missing required fields are errors naming the source and the key."""
    raw = {k: v for k, v in raw.items() if k not in RECORD_KEYS and k not in getattr(cls, "RECORDED", ())}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise CoraError(f"{source}: unknown key{plural} {', '.join(unknown)} for "
                        f"{cls.__name__} (known: {', '.join(sorted(known))})")
    hints = _hints(cls)
    values = {}
    for key, value in raw.items():
        ok, values[key] = _check_value(value, hints.get(key, Any))
        if not ok:
            raise CoraError(f"{source}: {key!r} must be {_type_name(hints.get(key))}, not {value!r}")
        choices = known[key].metadata.get("choices")
        if choices and value not in choices:
            raise CoraError(f"{source}: {key!r} must be one of {', '.join(map(str, choices))}, not {value!r}")
    missing = [f.name for f in known.values() if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CoraError(f"{source}: missing field(s) {missing} for {cls.__name__}")
    return cls(**values)


# ------------------------------------------------------------------------------------- flags from a dataclass
def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                         title: str | None = None) -> None:
    """One flag per field of ``cls`` (help and choices from the field's metadata): ``--name VALUE``, booleans as
    ``--name/--no-name``, list fields repeatable. A flag not given is absent from the parsed namespace
    (``argparse.SUPPRESS``), so :func:`resolve_config` can tell it from a value equal to the default."""
    group = parser.add_argument_group(title) if title else parser
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints.get(f.name, str)
        arms = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
            typing.Union, types.UnionType) else [hint]
        base = arms[0] if len(arms) == 1 else str
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if default not in (None, "") and not isinstance(default, (list, tuple)):
            help_text += f" (default {'on' if default is True else 'off' if default is False else default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if base is bool:
            group.add_argument(flag_name(f), action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base) or (str,)
            group.add_argument(flag_name(f), action="append", type=item, metavar=f.metadata.get("metavar"), **kw)
        else:
            group.add_argument(flag_name(f), type=base if base in (int, float) else str,
                               metavar=f.metadata.get("metavar"), **kw)


def resolve_config(cls: type[T], args: argparse.Namespace, config: str | os.PathLike | None = None) -> T:
    """``cls`` from its defaults, overridden by the --config file, overridden by the flags given: the one path
    by which a command's options are resolved. A required field given neither way is a one-line error."""
    raw = read_config_file(config) if config else {}
    source = str(config) if config else "command line"
    names = {f.name for f in dataclasses.fields(cls)}
    merged = {**raw, **{k: v for k, v in vars(args).items() if k in names}}
    missing = [f for f in dataclasses.fields(cls) if f.name not in merged and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CoraError(f"{flag_name(missing[0])} is required (a flag, or '{missing[0].name}' in --config)")
    cfg = config_from_dict(cls, merged, source=source)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


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
