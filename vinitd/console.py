"""vinitd's own console lines, in vorteil's formats.

``[<uptime>] message`` for lines printed whatever the log level (uptime with six decimals,
as vorteil prints it), and ``[WARNING]: MM-DD HH:MM:SS - message`` leveled lines, printed only
at or above the current level. The level starts at ERROR and follows the kernel's console
loglevel once `configure_level` has read it (``quiet`` means 4, so WARNING).

Lines go to fd 1 unless `set_output` names another fd (the vtty once it runs). A write that
fails is dropped: a console that cannot be written must not stop the init.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from pathlib import Path

PRINTK = Path("/proc/sys/kernel/printk")
PROC_UPTIME = Path("/proc/uptime")


class Level(enum.StrEnum):
    """The three levels vorteil prints, by the name shown in the line."""

    DEBUG = "DEBUG"
    WARNING = "WARNING"
    ERROR = "ERROR"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Level.DEBUG: 0, Level.WARNING: 1, Level.ERROR: 2}

_level = Level.ERROR
_output_fd = 1
_write_lock = threading.Lock()


def level_for_loglevel(loglevel: int) -> Level:
    """Above 6 DEBUG, 4 to 6 WARNING, 3 and below ERROR (vorteil's mapping)."""
    if loglevel > 6:
        return Level.DEBUG
    if loglevel >= 4:
        return Level.WARNING
    return Level.ERROR


def parse_printk(text: str) -> Level:
    """The level for the console loglevel, the first field of /proc/sys/kernel/printk.

    vorteil read only the first character, so ``loglevel=10`` (what ``debug`` sets) gave
    ERROR; the whole field is read here, which agrees with vorteil for 0 to 9. A ValueError
    names what could not be parsed.
    """
    fields = text.split()
    if not fields:
        raise ValueError("/proc/sys/kernel/printk is empty")
    return level_for_loglevel(int(fields[0]))


def configure_level(printk: Path = PRINTK) -> Level:
    """Set the level from ``printk``; unparseable means ERROR, unreadable keeps the level."""
    global _level
    try:
        text = printk.read_text()
    except OSError as err:
        _write(None, f"can not configure logging: {err}\n")
        return _level
    try:
        _level = parse_printk(text)
    except ValueError as err:
        _write(None, f"can not get log level: {err}\n")
        _level = Level.ERROR
    return _level


def set_level(level: Level | str) -> None:
    global _level
    _level = Level(level)


def current_level() -> Level:
    return _level


def enabled(level: Level | str) -> bool:
    """Whether a line at ``level`` is printed at the current level."""
    return Level(level).rank >= _level.rank


def set_output(fd: int) -> None:
    """Send lines to ``fd`` from now on (the caller keeps it open)."""
    global _output_fd
    _output_fd = fd


def uptime(proc_uptime: Path = PROC_UPTIME) -> float:
    try:
        return float(proc_uptime.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def format_always(message: str, *, seconds: float | None = None) -> str:
    """``[3.140000] message`` with its newline; ``seconds`` defaults to the uptime."""
    return f"[{uptime() if seconds is None else seconds:.6f}] {message}\n"


def format_level(level: Level | str, message: str, *, now: float | None = None) -> str:
    """``[ERROR]: 12-03 19:40:01 - message`` with its newline; ``now`` is a Unix time."""
    stamp = time.strftime("%m-%d %H:%M:%S", time.gmtime(now))
    return f"[{Level(level)}]: {stamp} - {message}\n"


def log_always(message: str, *, fd: int | None = None) -> None:
    """Print ``[3.140000] message`` whatever the level."""
    _write(fd, format_always(message))


def log_level(level: Level | str, message: str, *, fd: int | None = None) -> None:
    """Print ``[ERROR]: 12-03 19:40:01 - message`` if ``level`` is at or above the level."""
    if enabled(level):
        _write(fd, format_level(level, message))


def debug(message: str) -> None:
    log_level(Level.DEBUG, message)


def warning(message: str) -> None:
    log_level(Level.WARNING, message)


def error(message: str) -> None:
    log_level(Level.ERROR, message)


def _write(fd: int | None, text: str) -> None:
    data = text.encode(errors="replace")
    target = _output_fd if fd is None else fd
    with _write_lock:
        try:
            while data:
                data = data[os.write(target, data) :]
        except OSError:
            pass  # a console that cannot be written must not stop the init
