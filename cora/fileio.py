"""Atomic file and folder writes (an artifact appears complete or not at all), the one rule every command that
writes follows (:func:`check_output`), and line readers that turn undecodable input into one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cora.errors import CoraError, OutputExists


def current_umask() -> int:
    """The process umask. Linux reports it in /proc (no change needed to read it); elsewhere it is set and restored,
    which is how POSIX lets a process read it."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as fh:
            return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mkstemp_like_open(prefix: str, dir: Path) -> tuple[int, str]:
    """``tempfile.mkstemp``, but the file gets the mode ``open()`` would give it (0666 less the umask) rather than
    0600: the temporary becomes the artifact, and an artifact should be as readable as the user's other files."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=dir)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def apply_umask(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` (itself included) the mode ``open``/``mkdir`` would: some
    writers create private files whatever the umask (safetensors writes 0600), and an artifact should be as
    readable as the user's other files."""
    mask = current_umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_like_open(f".{path.name}.", path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------ the rule for outputs
def _same_or_inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside folder ``b`` (both resolved)."""
    return a == b or b in a.parents


def check_output(
    path: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
    kind: str | None = None, is_kind: Callable[[Path], bool] | None = None,
) -> Path:
    """The one rule for every command that writes ``path`` (a file, or a folder when ``kind`` names the artifact):

    * an output that is an input, or a folder that holds an input, is refused even with ``--overwrite``;
    * an existing output is refused unless ``overwrite``;
    * with ``overwrite``, an existing folder is replaced only when ``is_kind`` says it is a cora ``kind``
      (a datastore, an index, ...): a folder of anything else is never deleted; a file output that is a folder is
      refused.

    Returns the path; raises :class:`CoraError` with one line saying what to do.
    """
    path = Path(path)
    target = path.resolve()
    for src in inputs:
        if src is None:
            continue
        src_path = Path(src).resolve()
        if _same_or_inside(src_path, target):
            what = "is" if src_path == target else "holds"
            raise CoraError(f"--out {path} {what} the input {src}; writing there would destroy it, choose "
                            "another --out")
    if not path.exists():
        return path
    if kind is None:
        if path.is_dir():
            raise CoraError(f"--out {path} is a folder; give a file name")
        if not overwrite:
            raise OutputExists(f"{path} already exists; pass --overwrite to replace it")
        return path
    if not path.is_dir():
        raise CoraError(f"--out {path} is a file, not a {kind} folder; choose another --out")
    if is_kind is not None and not is_kind(path):
        if not any(path.iterdir()):
            return path  # an empty folder holds nothing to lose
        raise OutputExists(f"--out {path} holds files that are not a cora {kind}; refusing to replace it (choose "
                        "another --out, or remove it yourself)")
    if not overwrite:
        raise OutputExists(f"{path} already exists; pass --overwrite to replace it")
    return path


def only_holds(folder: Path, marker: str, names: Iterable[str]) -> bool:
    """Whether ``folder`` holds ``marker`` and nothing but ``names`` (hidden temporary files aside): the test
    for "this folder is a cora artifact that may be replaced whole"."""
    allowed = set(names)
    entries = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    return marker in entries and set(entries) <= allowed


# ---------------------------------------------------------------------------------------- atomic folders
_TMP_OWNER = re.compile(r"\.(?:tmp|old)-(\d+)-")
STALE_AFTER_S = 24 * 3600  # a temporary folder of unknown owner this old belongs to no running build


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``path`` left by a build that was killed: those whose
    owner process (recorded in the name) is gone, and unowned ones older than a day. Returns what was removed."""
    path = Path(path)
    if not path.parent.exists():
        return []
    removed = []
    for p in path.parent.glob(f".{glob_escape(path.name)}.*"):
        rest = p.name[len(path.name) + 1:]
        if not (rest.startswith(".tmp-") or rest.startswith(".old-")):
            continue
        m = _TMP_OWNER.match(rest)
        if m:
            stale = int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
        else:
            stale = time.time() - p.stat().st_mtime > STALE_AFTER_S
        if stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               is_kind: Callable[[Path], bool] | None = None, kind: str = "artifact") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` (with the modes the umask gives, see
    :func:`apply_umask`: the temporary folder is private until then), on error it is removed.

    With ``is_kind``, an existing ``path`` is replaced only when it is that kind of artifact (see
    :func:`check_output`). Temporary folders of earlier builds that were killed are removed first."""
    path = Path(path).resolve()  # '--out .' names the current folder, whose Path has no name
    if path.exists():
        check_output(path, overwrite=overwrite, kind=kind, is_kind=is_kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- reading
def check_input_file(path: str | os.PathLike) -> Path:
    """An input that must be a readable file: a missing path or a folder is a one-line error."""
    from cora.errors import DataFormatError

    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, None, "no such file")
    if path.is_dir():
        raise DataFormatError(path, None, "is a folder; give a file")
    return path


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line of a UTF-8 text file (.gz too), without its line ending. Bytes that are
    not UTF-8 (Latin-1, binary) and a truncated or corrupt .gz are errors naming the file and line."""
    import gzip
    import zlib

    from cora.errors import DataFormatError

    path = check_input_file(path)
    line_no = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            for line_no, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(path, line_no, f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                                          f"column {err.start + 1}); convert the file to UTF-8") from None
                yield line_no, text.rstrip("\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(path, line_no + 1, f"truncated or corrupt gzip file ({err})") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def check_no_surrogates(obj: Any, path, line: int | None) -> None:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate that no UTF-8 writer accepts: refuse it here."""
    from cora.errors import DataFormatError

    for s in _strings(obj):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataFormatError(path, line, f"holds an unpaired surrogate escape (\\u{ord(s[err.start]):04x}), "
                                  "which is not a character") from None


def json_error(err: json.JSONDecodeError) -> str:
    """'invalid JSON (...)' with the column; some messages of the json module already end in 'at'."""
    return f"invalid JSON ({err.msg.removesuffix(' at')} at column {err.colno})"


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a JSON Lines file (.gz too); a line that is not valid
    JSON or not an object is an error naming the file and line."""
    from cora.errors import DataFormatError

    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, line_no, json_error(err)) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, line_no, "each line must be a JSON object")
        if _SURROGATE_ESCAPE.search(line):
            check_no_surrogates(obj, path, line_no)
        yield line_no, obj


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON file (.gz too) with undecodable bytes, bad JSON and surrogate escapes as one-line errors."""
    import gzip
    import zlib

    from cora.errors import DataFormatError

    path = check_input_file(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(path, None, f"truncated or corrupt gzip file ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataFormatError(path, line, f"is not UTF-8 text (byte 0x{raw[err.start]:02x}); convert the file "
                              "to UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, json_error(err)) from None
    if _SURROGATE_ESCAPE.search(text):
        check_no_surrogates(obj, path, None)
    return obj
