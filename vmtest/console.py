"""The serial console of a VM: captured to a file and to memory, searched, and read for signs.

The file (``console.log``) keeps the bytes exactly as the guest wrote them. In memory the text
is decoded as UTF-8 (bad bytes become U+FFFD) with carriage returns dropped, so that patterns
and line tails read the same whatever the guest's line endings.

`Console.findings` reads what a failed boot usually leaves on the console:

- ``Kernel panic - not syncing: <reason>``, the kernel's last word;
- ``Attempted to kill init! exitcode=0x...``, the panic of a PID 1 that exited;
- ``stage0: <message>``, stage 0 (the initramfs) explaining why it powered off;
- ``reboot: Power down``, the kernel acknowledging a power-off;
- whether anything was printed at all (with ``quiet`` the kernel itself prints nothing
  unless something goes wrong, so a silent console is normal early in a boot).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PANIC = re.compile(r"Kernel panic - not syncing: (?P<reason>.*)")
INIT_KILLED = re.compile(r"Attempted to kill init! exitcode=(?P<code>0x[0-9a-fA-F]+)")
STAGE0 = re.compile(r"^stage0: (?P<message>.*)")
POWER_DOWN = re.compile(r"reboot: Power down")

TAIL_LINES = 20


@dataclass(frozen=True)
class ConsoleFindings:
    """What the console shows about the state of the boot."""

    has_output: bool = False
    panic: str | None = None  # the reason after "not syncing: "
    panic_line: int | None = None  # index of the panic's line in `Console.lines`
    init_exitcode: int | None = None  # set when the panic is PID 1 exiting
    stage0: str | None = None  # stage 0's message, without the "stage0: " prefix
    powered_down: bool = False


class Console:
    """A console transcript that grows as the guest writes.

    `feed` takes raw bytes with the host time they arrived; `close` ends the stream (a last
    line without a newline then counts as a line). Not thread-safe: the owner serialises
    access (`vmtest.Machine` holds its lock while feeding and reading).
    """

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self._file: BinaryIO | None = log_path.open("wb") if log_path else None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text: list[str] = []
        self._partial = ""
        self._lines: list[str] = []
        self._line_times: list[float] = []
        self._first_output: float | None = None
        self._findings = ConsoleFindings()
        self.closed = False

    def feed(self, data: bytes, host_time: float) -> None:
        """Add bytes that arrived at ``host_time`` (seconds since QEMU started)."""
        if not data:
            return
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        self._add(self._decoder.decode(data), host_time)

    def close(self, host_time: float) -> None:
        """The stream ended: flush the decoder and complete the last line."""
        if self.closed:
            return
        self._add(self._decoder.decode(b"", final=True), host_time)
        if self._partial:
            self._complete(self._partial, host_time)
            self._partial = ""
        self.closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def _add(self, text: str, host_time: float) -> None:
        text = text.replace("\r", "")
        if not text:
            return
        if self._first_output is None and text.strip():
            self._first_output = host_time
        self._text.append(text)
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._complete(line, host_time)

    def _complete(self, line: str, host_time: float) -> None:
        self._lines.append(line)
        self._line_times.append(host_time)
        self._findings = _read_line(self._findings, line, len(self._lines) - 1)

    @property
    def text(self) -> str:
        """Everything so far, including a last line without its newline yet."""
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    @property
    def lines(self) -> list[str]:
        """The complete lines so far."""
        return list(self._lines)

    @property
    def line_times(self) -> list[float]:
        """Host time (seconds since QEMU started) at which each complete line arrived."""
        return list(self._line_times)

    @property
    def first_output(self) -> float | None:
        """Host time of the first printed character, None while the console is silent."""
        return self._first_output

    def tail(self, count: int = TAIL_LINES) -> list[str]:
        """The last ``count`` lines, the unfinished one included."""
        lines = self._lines + ([self._partial] if self._partial else [])
        return lines[-count:] if count > 0 else []

    def search(self, pattern: re.Pattern[str], start: int = 0) -> re.Match[str] | None:
        """The first match of ``pattern`` in the text from offset ``start``."""
        return pattern.search(self.text, start)

    def findings(self) -> ConsoleFindings:
        """What the console shows, the unfinished last line included."""
        if self._partial:
            return _read_line(self._findings, self._partial, len(self._lines))
        return self._findings

    def excerpt(self, count: int = TAIL_LINES) -> list[str]:
        """The lines that explain the boot's end: up to a kernel panic's line (the call trace
        after it says little), else the last ``count`` lines."""
        found = self.findings()
        if found.panic_line is None:
            return self.tail(count)
        lines = self.tail(len(self._lines) + 1)
        shown = lines[max(found.panic_line + 1 - count, 0) : found.panic_line + 1]
        hidden = len(lines) - found.panic_line - 1
        return [*shown, f"... {hidden} more lines in the console log"] if hidden else shown


def _read_line(found: ConsoleFindings, line: str, number: int) -> ConsoleFindings:
    """``found`` updated with line ``number``; the first panic and stage 0 message win."""
    panic, panic_line, exitcode = found.panic, found.panic_line, found.init_exitcode
    if panic is None and (panicked := PANIC.search(line)):
        panic, panic_line = panicked["reason"].strip(), number
        if killed := INIT_KILLED.search(line):
            exitcode = int(killed["code"], 16)
    stage0 = found.stage0
    if stage0 is None and (failed := STAGE0.match(line)):
        stage0 = failed["message"].strip()
    return ConsoleFindings(
        has_output=found.has_output or bool(line.strip()),
        panic=panic,
        panic_line=panic_line,
        init_exitcode=exitcode,
        stage0=stage0,
        powered_down=found.powered_down or bool(POWER_DOWN.search(line)),
    )
