"""vinitd's own console lines, in vorteil's formats.

``[<uptime>] message`` for lines printed whatever the log level (uptime with six decimals,
as vorteil prints it), and ``[WARNING]: MM-DD HH:MM:SS - message`` style leveled lines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def uptime(proc_uptime: str = "/proc/uptime") -> float:
    try:
        return float(Path(proc_uptime).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def log_always(message: str, *, fd: int = 1) -> None:
    """``[3.140000] message`` on the console."""
    _write(fd, f"[{uptime():.6f}] {message}\n")


def log_level(level: str, message: str, *, fd: int = 1) -> None:
    """``[ERROR]: 12-03 19:40:01 - message`` on the console."""
    stamp = time.strftime("%m-%d %H:%M:%S", time.gmtime())
    _write(fd, f"[{level}]: {stamp} - {message}\n")


def _write(fd: int, text: str) -> None:
    data = text.encode(errors="replace")
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # a console that cannot be written must not stop the init
