"""Exceptions raised for user mistakes (bad files, wrong arguments); the CLI prints them as one line."""


class CoraError(Exception):
    """A problem the user can fix; the message says what to do."""


class DataFormatError(CoraError, ValueError):
    """An input file is malformed. The message names the file, line and field."""

    def __init__(self, path, line: int | None, message: str, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f"field '{field}' " if field else ""
        super().__init__(f"{where}: {what}{message}")
        self.path, self.line, self.field = path, line, field


class FingerprintMismatch(CoraError):
    """An index was built from a different datastore than the one it is used with."""


class OutputExists(CoraError, FileExistsError):
    """An output already exists and the user did not ask to replace it (or it is not cora's to replace)."""
