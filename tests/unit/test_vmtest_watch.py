"""vmtest.watch and vmtest.iothread: the wait loop fed like a VM would feed it, no QEMU."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from vmtest.console import Console
from vmtest.diagnosis import Expectation
from vmtest.events import Event, EventStream
from vmtest.failures import (
    EventProtocolError,
    KernelPanic,
    NoKernelOutput,
    PoweredOffEarly,
    QemuFailed,
    ShutdownHung,
    StageFailed,
    StageTimedOut,
    StillRunningAfterPowerOff,
)
from vmtest.iothread import IoThread, SocketTap
from vmtest.watch import Identity, Watch

FIXTURES = Path(__file__).parent / "fixtures" / "vmtest"


class FakeProcess:
    """Stands for QEMU: running until `end` sets its status."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code

    def end(self, code: int) -> None:
        self.code = code


@pytest.fixture
def process() -> FakeProcess:
    return FakeProcess()


@pytest.fixture
def watch(tmp_path: Path, process: FakeProcess) -> Watch:
    identity = Identity("fake", "tcg", None, ("qemu-system-x86_64",), tmp_path / "qemu.stderr")
    logger = logging.getLogger("test.watch")
    watched = Watch(Console(), EventStream(), identity, logger=logger, settle=0.2)
    watched.process = process
    return watched


def _line(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "time": 1.0, **fields}).encode() + b"\n"


def later(seconds: float, *actions: Callable[[], None]) -> None:
    """Run ``actions`` on another thread after ``seconds``, as the VM's IO thread would."""

    def run() -> None:
        time.sleep(seconds)
        for action in actions:
            action()

    threading.Thread(target=run, daemon=True).start()


def _ended(watch: Watch, process: FakeProcess, code: int) -> Callable[[], None]:
    def end() -> None:
        process.end(code)
        watch.console_ended()
        watch.events_ended()

    return end


def _stage(stage: str, state: str) -> Callable[[Sequence[Event]], Event | None]:
    return lambda events: next((e for e in events if e.is_stage(stage, state)), None)


LAUNCH = Expectation("stage launch finished", stage="launch")


def test_a_wait_returns_the_event_when_it_arrives(watch: Watch) -> None:
    """The event comes 50 ms later: the wait returns it, well before its deadline."""
    later(0.05, lambda: watch.event_data(_line(type="stage", stage="launch", state="finished")))
    started = time.monotonic()
    event = watch.wait(LAUNCH, _stage("launch", "finished"), 5)
    assert event["state"] == "finished"
    assert time.monotonic() - started < 1


def test_a_failed_stage_ends_the_wait(watch: Watch, process: FakeProcess) -> None:
    """vinitd reports launch failed, then the VM powers off: StageFailed with the message."""
    failed = _line(type="stage", stage="launch", state="failed", message="no app", error="E")
    later(0.05, lambda: watch.event_data(failed), _ended(watch, process, 0))
    with pytest.raises(StageFailed) as raised:
        watch.wait(LAUNCH, _stage("launch", "finished"), 5)
    assert raised.value.message == "no app"
    assert raised.value.context.last_event is not None


def test_a_panic_on_the_console_ends_the_wait(watch: Watch) -> None:
    """The panic line is enough, even while QEMU still runs (after the settle time)."""
    panic = (FIXTURES / "console-kernel-panic.log").read_bytes()
    later(0.05, lambda: watch.console_data(panic))
    with pytest.raises(KernelPanic) as raised:
        watch.wait(LAUNCH, _stage("launch", "finished"), 5)
    assert raised.value.reason.startswith("VFS: Unable to mount root fs")
    assert raised.value.context.console_tail[-2].endswith(raised.value.reason)


def test_an_early_power_off_is_powered_off_early(watch: Watch, process: FakeProcess) -> None:
    """The VM ends cleanly without the awaited stage."""
    started = _line(type="stage", stage="launch", state="started")
    later(0.05, lambda: watch.event_data(started), _ended(watch, process, 0))
    with pytest.raises(PoweredOffEarly) as raised:
        watch.wait(LAUNCH, _stage("launch", "finished"), 5)
    assert raised.value.summary == (
        "the VM ended (QEMU exit status 0) before stage launch finished"
    )


def test_an_event_read_after_the_exit_still_counts(watch: Watch, process: FakeProcess) -> None:
    """QEMU exits before the reader has seen the last event: the drain gets it."""
    finished = _line(type="stage", stage="launch", state="finished")
    process.end(0)
    later(0.05, lambda: watch.event_data(finished), watch.events_ended, watch.console_ended)
    assert watch.wait(LAUNCH, _stage("launch", "finished"), 5)["state"] == "finished"


def test_qemu_failing_shows_its_stderr(watch: Watch, process: FakeProcess, tmp_path: Path) -> None:
    """QEMU exits 1: QemuFailed, with what it wrote to stderr."""
    (tmp_path / "qemu.stderr").write_text("qemu-system-x86_64: something broke\n")
    later(0.05, _ended(watch, process, 1))
    with pytest.raises(QemuFailed) as raised:
        watch.wait(LAUNCH, _stage("launch", "finished"), 5)
    assert "stderr: qemu-system-x86_64: something broke" in str(raised.value)


def test_the_deadline_with_a_silent_vm_is_no_kernel_output(watch: Watch) -> None:
    """Nothing at all within the deadline."""
    with pytest.raises(NoKernelOutput):
        watch.wait(LAUNCH, _stage("launch", "finished"), 0.2)


def test_the_deadline_names_the_stage(watch: Watch) -> None:
    """Events came, the awaited one did not: StageTimedOut."""
    watch.event_data(_line(type="stage", stage="pre-setup", state="started"))
    with pytest.raises(StageTimedOut) as raised:
        watch.wait(Expectation("console text /x/"), lambda _: None, 0.2)
    assert raised.value.stage == "pre-setup"


def test_another_protocol_version_ends_the_wait(watch: Watch) -> None:
    """v=2 on the port: EventProtocolError."""
    watch.event_data((FIXTURES / "events-wrong-version.jsonl").read_bytes())
    with pytest.raises(EventProtocolError):
        watch.wait(LAUNCH, _stage("launch", "finished"), 5)


def test_console_waits_chain(watch: Watch) -> None:
    """The second wait starts where the first match ended."""
    later(0.05, lambda: watch.console_data(b"ready 1\n"), lambda: watch.console_data(b"ready 2\n"))
    pattern = re.compile(r"^ready (\d)$", re.MULTILINE)
    first = watch.wait_for_console(pattern, 0, 5)
    second = watch.wait_for_console(pattern, first.end(), 5)
    assert (first[1], second[1]) == ("1", "2")


def test_wait_for_exit_returns_the_status(watch: Watch, process: FakeProcess) -> None:
    """A clean end: QEMU's status."""
    later(0.05, _ended(watch, process, 0))
    assert watch.wait_for_exit(5) == 0


def test_wait_for_exit_at_the_deadline_is_shutdown_hung(watch: Watch) -> None:
    """QEMU still runs and the guest never began to power off."""
    with pytest.raises(ShutdownHung) as raised:
        watch.wait_for_exit(0.1)
    assert type(raised.value) is ShutdownHung


def test_a_program_still_running_at_the_deadline_is_named(watch: Watch) -> None:
    """Program 1 exited, program 0 runs on: the failure names it and says how to end a VM
    whose program does not exit."""
    for fields in (
        {"index": 0, "state": "started", "pid": 120},
        {"index": 1, "state": "started", "pid": 121},
        {"index": 1, "state": "exited", "pid": 121, "exit_status": 0},
    ):
        watch.event_data(_line(type="program", **fields))
    with pytest.raises(ShutdownHung) as raised:
        watch.wait_for_exit(0.1)
    assert raised.value.running == ("program[0] (pid 120)",)
    assert raised.value.summary == (
        "the VM did not power off in 0.1 s: program[0] (pid 120) is still running"
    )
    assert raised.value.hint is not None and "powerdown" in raised.value.hint


def test_wait_for_exit_after_a_power_off_began(watch: Watch) -> None:
    """The guest said it was shutting down, yet QEMU runs on."""
    watch.event_data(_line(type="shutdown", state="begun", action="power_off", reason="x"))
    with pytest.raises(StillRunningAfterPowerOff):
        watch.wait_for_exit(0.1)


def test_wait_for_exit_raises_a_panic(watch: Watch, process: FakeProcess) -> None:
    """A shutdown that ends in a panic (panic=-1 makes QEMU exit 0) is still a panic."""
    panic = (FIXTURES / "console-init-crash.log").read_bytes()
    later(0.05, lambda: watch.console_data(panic), _ended(watch, process, 0))
    with pytest.raises(KernelPanic):
        watch.wait_for_exit(5)


@pytest.fixture
def io() -> Iterator[IoThread]:
    thread = IoThread("test-io")
    yield thread
    thread.stop()
    assert not thread.running


def test_a_socket_tap_reads_one_client_to_the_end(io: IoThread, tmp_path: Path) -> None:
    """Everything the client sends arrives in order; its close ends the tap."""
    received: list[bytes] = []
    ended = threading.Event()
    tap = SocketTap(
        io, tmp_path / "tap.sock", on_data=received.append, on_close=ended.set, name="tap"
    )
    tap.listen()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "tap.sock"))
        client.sendall(b"one\n")
        client.sendall(b"two\n")
        assert tap.connected.wait(5)
        with socket.socket(socket.AF_UNIX) as second:
            second.connect(str(tmp_path / "tap.sock"))
            assert second.recv(10) == b""  # refused: only QEMU may connect
    assert ended.wait(5)
    assert b"".join(received) == b"one\ntwo\n"
    tap.close()


def test_the_io_thread_runs_coroutines_with_a_deadline(io: IoThread) -> None:
    """Results come back; a coroutine past its deadline is cancelled."""

    async def answer() -> int:
        return 42

    async def forever() -> None:
        await asyncio.sleep(60)

    assert io.run(answer(), 5) == 42
    with pytest.raises(TimeoutError):
        io.run(forever(), 0.1)
