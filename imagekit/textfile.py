"""Small text input files (VCFG files, vmtest scenarios), read whole, with a bound on their size
and one message per way the read can fail."""

from __future__ import annotations

from pathlib import Path


class TextFileError(Exception):
    """Why a text file could not be read; the caller names the file in its own error."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def read_text(path: Path, *, max_size: int, kind: str) -> str:
    """The UTF-8 text of ``path``; ``kind`` says what it should be ("a VCFG file")."""
    try:
        if path.stat().st_size > max_size:
            raise TextFileError(f"larger than {max_size} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextFileError("no such file") from None
    except IsADirectoryError:
        raise TextFileError(f"is a directory, not {kind}") from None
    except OSError as err:
        raise TextFileError(f"cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextFileError(f"not UTF-8 text (byte {err.start})") from None
