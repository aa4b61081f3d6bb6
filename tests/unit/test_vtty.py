"""The emulated /dev/vtty: real FIFOs in a temporary directory, writer child processes, and
consoles that are files or pipes (one of them stuck, one of them broken)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vinitd import console
from vinitd.console import Level
from vinitd.vcfg.model import StdoutMode
from vinitd.vtty import Console, Vtty, make_fifo

WRITER_TIMEOUT = 20.0
WRITER = (
    "import sys\n"
    "for i in range(int(sys.argv[1])):\n"
    "    sys.stdout.write(f'line {i:06d}\\n')\n"
    "sys.stdout.flush()\n"
    "if sys.argv[2:]:\n"
    "    sys.stderr.write('on stderr\\n')\n"
)


@pytest.fixture(autouse=True)
def restore_console() -> Iterator[None]:
    level = console.current_level()
    yield
    console.set_level(level)
    console.set_output(1)


@pytest.fixture
def consoles(tmp_path: Path) -> dict[Console, Path]:
    found = {Console.SCREEN: tmp_path / "screen", Console.SERIAL: tmp_path / "serial"}
    for path in found.values():
        path.touch()
    return found


@pytest.fixture
def vtty(tmp_path: Path, consoles: dict[Console, Path]) -> Iterator[Vtty]:
    device = Vtty(tmp_path / "vtty", consoles=consoles, stall_seconds=0.2)
    yield device
    device.stop()


def lines(count: int) -> str:
    return "".join(f"line {i:06d}\n" for i in range(count))


def write_lines(vtty: Vtty, count: int, *, stderr_too: bool = False) -> None:
    """A child process prints ``count`` lines on a vtty writer fd, within a deadline."""
    fd = vtty.open_writer()
    try:
        subprocess.run(
            [sys.executable, "-c", WRITER, str(count), *(["stderr"] if stderr_too else [])],
            stdout=fd,
            stderr=fd,
            timeout=WRITER_TIMEOUT,
            check=True,
        )
    finally:
        os.close(fd)


def test_child_output_reaches_both_consoles(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """In standard mode a child's stdout and stderr arrive on the screen and the serial port."""
    vtty.start()
    write_lines(vtty, 5000, stderr_too=True)

    assert vtty.flush(5.0)
    expected = lines(5000) + "on stderr\n"
    assert consoles[Console.SCREEN].read_text() == expected
    assert consoles[Console.SERIAL].read_text() == expected


def test_program_opening_the_path(
    tmp_path: Path, vtty: Vtty, consoles: dict[Console, Path]
) -> None:
    """A program that opens /dev/vtty by its path, even non-blocking, writes to the consoles."""
    vtty.start(StdoutMode.SERIAL)
    script = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)\n"
        "os.write(fd, b'by path\\n')\n"
        "with open(sys.argv[1], 'w') as f: f.write('by open()\\n')\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "vtty")],
        timeout=WRITER_TIMEOUT,
        check=True,
    )

    assert vtty.flush(5.0)
    assert consoles[Console.SERIAL].read_text() == "by path\nby open()\n"
    assert consoles[Console.SCREEN].read_text() == ""


def test_writers_come_and_go(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """After every writer has closed, new writers still get through (no end of file)."""
    vtty.start(StdoutMode.SCREEN)
    for word in ("one", "two", "three"):
        fd = vtty.open_writer()
        os.write(fd, f"{word}\n".encode())
        os.close(fd)
        assert vtty.flush(5.0)

    assert consoles[Console.SCREEN].read_text() == "one\ntwo\nthree\n"


def test_mode_changes_at_runtime(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """set_mode takes effect for the next bytes: standard, serial, disabled, then screen."""
    vtty.start()
    fd = vtty.open_writer()
    try:
        for mode, text in [
            (None, "standard\n"),
            (StdoutMode.SERIAL, "serial\n"),
            (StdoutMode.DISABLED, "disabled\n"),
            (StdoutMode.SCREEN, "screen\n"),
        ]:
            vtty.set_mode(mode)
            os.write(fd, text.encode())
            assert vtty.flush(5.0)
    finally:
        os.close(fd)

    assert consoles[Console.SCREEN].read_text() == "standard\nscreen\n"
    assert consoles[Console.SERIAL].read_text() == "standard\nserial\n"


def test_disabled_mode_drains(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """With output disabled a writer of far more than the FIFO holds still finishes."""
    vtty.start(StdoutMode.DISABLED)
    write_lines(vtty, 150_000)  # 1.8 MB, more than the 1 MiB pipe holds

    assert vtty.flush(5.0)
    assert vtty.sink_names() == []
    assert consoles[Console.SCREEN].read_text() == ""


def test_sink_order(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """Consoles come first in vorteil's order (screen, serial), then the added sinks."""
    vtty.start()
    read_end, write_end = os.pipe()
    os.close(read_end)
    vtty.add_sink("redirect", write_end)
    screen, serial = str(consoles[Console.SCREEN]), str(consoles[Console.SERIAL])
    assert vtty.sink_names() == [screen, serial, "redirect"]

    vtty.set_mode(StdoutMode.SERIAL)
    assert vtty.sink_names() == [serial, "redirect"]
    vtty.remove_sink("redirect")
    assert vtty.sink_names() == [serial]


def without_notice(text: str, notice: str) -> str:
    """The console text with the notice line taken out, newlines ignored."""
    pattern = r"\[WARNING\]: \d\d-\d\d \d\d:\d\d:\d\d - " + re.escape(notice) + "\n"
    assert len(re.findall(pattern, text)) == 1, text[-2000:]
    return re.sub(pattern, "", text).replace("\n", "")


def test_stuck_sink_does_not_stall_others(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """A sink nobody reads drops its output and is reported once; the others get everything."""
    console.set_level(Level.WARNING)
    vtty.start(StdoutMode.SERIAL)
    stuck_read, stuck_write = os.pipe()
    try:
        vtty.add_sink("stuck", stuck_write)
        started = time.monotonic()
        write_lines(vtty, 200_000)  # 2.4 MB: the stuck pipe takes 64 KiB of it
        assert vtty.flush(5.0)
        assert time.monotonic() - started < WRITER_TIMEOUT
    finally:
        vtty.remove_sink("stuck")
        os.close(stuck_read)

    notice = "vtty: stuck is not keeping up; output to it is dropped"
    serial = consoles[Console.SERIAL].read_text()
    assert without_notice(serial, notice) == lines(200_000).replace("\n", "")


def test_broken_sink_reported_once(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """A sink whose writes fail is given up and named once on the other consoles."""
    console.set_level(Level.WARNING)
    vtty.start(StdoutMode.SCREEN)
    read_end, write_end = os.pipe()
    os.close(read_end)
    vtty.add_sink("broken", write_end)
    for _ in range(3):
        write_lines(vtty, 10)
        assert vtty.flush(5.0)

    notice = "vtty: can not write to broken: Broken pipe; its output is lost"
    screen = consoles[Console.SCREEN].read_text()
    assert without_notice(screen, notice) == (lines(10) * 3).replace("\n", "")


def test_notices_follow_the_level(vtty: Vtty, consoles: dict[Console, Path]) -> None:
    """At ERROR level the pump's WARNING notices are not printed."""
    console.set_level(Level.ERROR)
    vtty.start(StdoutMode.SCREEN)
    read_end, write_end = os.pipe()
    os.close(read_end)
    vtty.add_sink("broken", write_end)
    write_lines(vtty, 10)

    assert vtty.flush(5.0)
    assert consoles[Console.SCREEN].read_text() == lines(10)


def test_flush_waits_for_a_slow_sink(tmp_path: Path, consoles: dict[Console, Path]) -> None:
    """flush gives up at its deadline while a sink lags, and succeeds once it has caught up."""
    vtty = Vtty(tmp_path / "vtty", consoles=consoles, stall_seconds=60.0)
    slow_read, slow_write = os.pipe()
    try:
        vtty.start(StdoutMode.DISABLED)
        vtty.add_sink("slow", slow_write)
        write_lines(vtty, 20_000)  # 240 kB: more than the pipe, less than the backlog

        started = time.monotonic()
        assert not vtty.flush(0.3)
        assert 0.3 <= time.monotonic() - started < 2.0

        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(read_all(slow_read)))
        reader.start()
        assert vtty.flush(10.0)
        vtty.remove_sink("slow")
        reader.join(timeout=10.0)
        assert received.decode() == lines(20_000)
    finally:
        vtty.stop()
        os.close(slow_read)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_missing_console(
    tmp_path: Path, consoles: dict[Console, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """A console that cannot be opened is reported; the other one still gets the output."""
    consoles[Console.SERIAL] = tmp_path / "absent"
    vtty = Vtty(tmp_path / "vtty", consoles=consoles)
    try:
        vtty.start()
        write_lines(vtty, 3)
        assert vtty.flush(5.0)
    finally:
        vtty.stop()

    assert re.fullmatch(
        r"\[\d+\.\d{6}\] can not setup ttys: \[Errno 2\] No such file or directory: '.*absent'\n",
        capfd.readouterr().out,
    )
    assert vtty.sink_names() == []
    assert consoles[Console.SCREEN].read_text() == lines(3)


def test_make_fifo(tmp_path: Path) -> None:
    """A FIFO anyone may write is made in place of a file; an existing FIFO is kept."""
    path = tmp_path / "vtty"
    path.write_text("left over")
    old_umask = os.umask(0o022)
    try:
        make_fifo(path)
        inode = path.stat().st_ino
        make_fifo(path)
    finally:
        os.umask(old_umask)

    mode = path.lstat().st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) == 0o666
    assert path.stat().st_ino == inode
