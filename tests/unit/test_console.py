"""Console lines: the level read from /proc/sys/kernel/printk, the exact line formats, and
which lines are printed at each level (captured on a pipe)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vinitd import console
from vinitd.console import Level

LEVEL_LINE = re.compile(r"\[(DEBUG|WARNING|ERROR)\]: \d\d-\d\d \d\d:\d\d:\d\d - (.*)\n")


@pytest.fixture(autouse=True)
def restore_console() -> Iterator[None]:
    level = console.current_level()
    yield
    console.set_level(level)
    console.set_output(1)


@pytest.fixture
def captured() -> Iterator[tuple[int, int]]:
    """A pipe whose write end is the console output: (read end, write end)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    console.set_output(write_end)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def output(read_end: int) -> str:
    try:
        return os.read(read_end, 65536).decode()
    except BlockingIOError:
        return ""


@pytest.mark.parametrize(
    ("printk", "level"),
    [
        ("0\t4\t1\t7\n", Level.ERROR),
        ("3\t4\t1\t7\n", Level.ERROR),
        ("4\t4\t1\t7\n", Level.WARNING),
        ("6\t4\t1\t7\n", Level.WARNING),
        ("7\t4\t1\t7\n", Level.DEBUG),
        ("8\t4\t1\t7\n", Level.DEBUG),
        ("10\t4\t1\t7\n", Level.DEBUG),
        ("15\t4\t1\t7\n", Level.DEBUG),
    ],
)
def test_parse_printk(printk: str, level: Level) -> None:
    """>6 is DEBUG, 4..6 WARNING, <=3 ERROR; two-digit levels (debug sets 10) are read whole."""
    assert console.parse_printk(printk) == level


def test_quiet_is_warning() -> None:
    """``quiet`` makes the console loglevel 4, which is vorteil's default WARNING level."""
    assert console.level_for_loglevel(4) is Level.WARNING


def test_initial_level_is_error() -> None:
    """Before the printk file is read only ERROR lines are printed."""
    script = "from vinitd import console; print(console.current_level())"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout == "ERROR\n"


def test_configure_level(tmp_path: Path, captured: tuple[int, int]) -> None:
    """configure_level sets the level from the file and prints nothing."""
    printk = tmp_path / "printk"
    printk.write_text("7\t4\t1\t7\n")
    assert console.configure_level(printk) is Level.DEBUG
    assert console.current_level() is Level.DEBUG
    assert output(captured[0]) == ""


def test_configure_level_unparseable(tmp_path: Path, captured: tuple[int, int]) -> None:
    """An unparseable file means ERROR and prints vorteil's ``can not get log level``."""
    console.set_level(Level.DEBUG)
    printk = tmp_path / "printk"
    printk.write_text("x\t4\n")
    assert console.configure_level(printk) is Level.ERROR
    assert output(captured[0]).startswith("can not get log level: invalid literal")


def test_configure_level_unreadable(tmp_path: Path, captured: tuple[int, int]) -> None:
    """An unreadable file keeps the level and prints ``can not configure logging``."""
    console.set_level(Level.WARNING)
    assert console.configure_level(tmp_path / "absent") is Level.WARNING
    text = output(captured[0])
    assert text.startswith("can not configure logging: [Errno 2] No such file or directory")
    assert text.endswith("\n")


def test_format_level_exact() -> None:
    """The leveled line is byte-identical to vorteil's: ``[LEVEL]: MM-DD HH:MM:SS - msg``."""
    now = 1733254801.5  # 2024-12-03 19:40:01 UTC
    assert console.format_level("WARNING", "disk full", now=now) == (
        "[WARNING]: 12-03 19:40:01 - disk full\n"
    )
    assert console.format_level(Level.DEBUG, "x", now=0) == "[DEBUG]: 01-01 00:00:00 - x\n"
    assert console.format_level("ERROR", "100% done", now=0) == (
        "[ERROR]: 01-01 00:00:00 - 100% done\n"
    )


def test_format_always_exact() -> None:
    """The unconditional line carries the uptime with six decimals."""
    assert console.format_always("shutting down system", seconds=3.14) == (
        "[3.140000] shutting down system\n"
    )
    assert console.format_always("x", seconds=0) == "[0.000000] x\n"


def test_uptime(tmp_path: Path) -> None:
    """The uptime is the first field of /proc/uptime; 0 when it cannot be read."""
    proc = tmp_path / "uptime"
    proc.write_text("12.34 40.00\n")
    assert console.uptime(proc) == 12.34
    assert console.uptime(tmp_path / "absent") == 0.0


@pytest.mark.parametrize(
    ("level", "printed"),
    [
        (Level.DEBUG, ["DEBUG", "WARNING", "ERROR"]),
        (Level.WARNING, ["WARNING", "ERROR"]),
        (Level.ERROR, ["ERROR"]),
    ],
)
def test_log_level_filters(level: Level, printed: list[str], captured: tuple[int, int]) -> None:
    """Only lines at or above the current level reach the console."""
    console.set_level(level)
    console.debug("one")
    console.log_level("WARNING", "two")
    console.error("three")

    lines = LEVEL_LINE.findall(output(captured[0]))
    assert [name for name, _ in lines] == printed


def test_log_always_ignores_level(captured: tuple[int, int]) -> None:
    """log_always prints even at ERROR level."""
    console.set_level(Level.ERROR)
    console.log_always("no programs still running")
    assert re.fullmatch(r"\[\d+\.\d{6}\] no programs still running\n", output(captured[0]))


def test_explicit_fd(captured: tuple[int, int]) -> None:
    """An explicit fd overrides the output fd."""
    read_end, write_end = os.pipe()
    try:
        console.set_level(Level.WARNING)
        console.log_level("WARNING", "here", fd=write_end)
        assert LEVEL_LINE.fullmatch(os.read(read_end, 4096).decode())
        assert output(captured[0]) == ""
    finally:
        os.close(read_end)
        os.close(write_end)


def test_closed_console_is_ignored() -> None:
    """Writing to a console that is gone does not raise."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    console.log_level("ERROR", "lost", fd=write_end)


def test_bad_level_name() -> None:
    """A level name that is not one of the three is a ValueError."""
    with pytest.raises(ValueError, match="INFO"):
        console.log_level("INFO", "x")
