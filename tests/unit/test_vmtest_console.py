"""vmtest.console: recorded transcripts read for panics, stage 0 failures and silence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmtest.console import Console, ConsoleFindings

FIXTURES = Path(__file__).parent / "fixtures" / "vmtest"


def _fed(name: str, *, chunk: int = 64, log: Path | None = None) -> Console:
    data = (FIXTURES / f"console-{name}.log").read_bytes()
    console = Console(log)
    for position in range(0, len(data), chunk):
        console.feed(data[position : position + chunk], host_time=position / 1000)
    console.close(host_time=len(data) / 1000)
    return console


def test_a_good_boot_shows_the_program_and_the_power_off() -> None:
    """The hello boot: the greeting, vinitd's lines, the kernel's power-off; nothing fatal."""
    console = _fed("good-boot")
    assert console.lines[0] == "hello from a vorteil micro-VM"
    assert console.lines[-1].endswith("reboot: Power down")
    assert "\r" not in console.text
    assert console.findings() == ConsoleFindings(has_output=True, powered_down=True)


def test_a_kernel_panic_is_found_with_its_reason() -> None:
    """VFS cannot mount the root: the reason is the text after 'not syncing:'."""
    found = _fed("kernel-panic").findings()
    assert found.panic == "VFS: Unable to mount root fs on unknown-block(0,0)"
    assert found.panic_line == 1
    assert found.init_exitcode is None
    assert found.stage0 is None


def test_an_init_crash_is_a_panic_with_the_exit_code() -> None:
    """PID 1 exited with status 1: 'Attempted to kill init! exitcode=0x00000100'."""
    found = _fed("init-crash").findings()
    assert found.panic == "Attempted to kill init! exitcode=0x00000100"
    assert found.init_exitcode == 0x100


def test_a_stage0_failure_is_found_with_its_message() -> None:
    """Stage 0 could not find the root partition and said so before powering off."""
    found = _fed("stage0-root-not-found").findings()
    assert found.stage0 == "root partition 4048447D-C09D-D111-B245-5FFDCE74FAD2 not found on vda"
    assert found.panic is None
    assert found.powered_down


def test_a_silent_console_has_no_output() -> None:
    """Nothing printed at all: no output, no first-output time."""
    console = _fed("silent")
    assert console.findings() == ConsoleFindings()
    assert console.text == ""
    assert console.first_output is None
    assert console.excerpt() == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_chunking_does_not_change_what_is_read(chunk: int) -> None:
    """Byte-at-a-time or all at once, the lines and findings are the same."""
    whole = _fed("init-crash", chunk=1 << 20)
    parts = _fed("init-crash", chunk=chunk)
    assert parts.lines == whole.lines
    assert parts.findings() == whole.findings()


def test_the_excerpt_of_a_panic_ends_at_the_panic_line() -> None:
    """The call trace after a panic is cut; what led to it is kept."""
    excerpt = _fed("init-crash").excerpt()
    assert excerpt[:2] == [
        "/lib64/ld-linux-x86-64.so.2: missing program name",
        "Try '/lib64/ld-linux-x86-64.so.2 --help' for more information.",
    ]
    assert excerpt[2].endswith(
        "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
    )
    assert excerpt[3] == "... 30 more lines in the console log"
    assert len(excerpt) == 4


def test_the_log_file_keeps_the_raw_bytes(tmp_path: Path) -> None:
    """console.log is byte for byte what the guest wrote, carriage returns included."""
    log = tmp_path / "console.log"
    _fed("good-boot", chunk=5, log=log)
    assert log.read_bytes() == (FIXTURES / "console-good-boot.log").read_bytes()


def test_utf8_split_across_chunks_and_an_unfinished_line() -> None:
    """A character split between reads decodes whole; the last line counts once closed."""
    console = Console()
    data = "grüße\r\nno newline".encode()
    console.feed(data[:3], 0.1)
    console.feed(data[3:], 0.2)
    assert console.lines == ["grüße"]
    assert console.tail() == ["grüße", "no newline"]
    assert console.line_times == [0.2]
    console.close(0.3)
    assert console.lines == ["grüße", "no newline"]
    assert console.first_output == 0.1
    console.feed(b"\xff\n", 0.4)
    assert console.lines[-1] == "\ufffd"


def test_a_panic_on_an_unfinished_line_is_found() -> None:
    """The findings read the line still being written too."""
    console = Console()
    console.feed(b"[ 1.0] Kernel panic - not syncing: Oops", 1.0)
    assert console.findings().panic == "Oops"


def test_search_starts_at_an_offset() -> None:
    """Chained waits: the second search starts where the first match ended."""
    console = Console()
    console.feed(b"ready 1\nready 2\n", 0.0)
    pattern = re.compile(r"^ready (\d)$", re.MULTILINE)
    first = console.search(pattern)
    assert first is not None and first[1] == "1"
    second = console.search(pattern, first.end())
    assert second is not None and second[1] == "2"
    assert console.search(pattern, second.end()) is None
