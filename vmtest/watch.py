"""Watching a running VM: the record of what it shows, and the waits that judge it.

`Watch` is fed on the VM's IO thread (console bytes, event-port bytes, QMP events) and read
under its condition ``changed``. Its waits poll the QEMU process too, and turn what they see
into a `vmtest.failures` class through `vmtest.diagnosis`. A Watch holds no reference to its
`Machine`, so a running IO thread does not keep an abandoned Machine alive.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from vmtest import diagnosis
from vmtest.console import Console
from vmtest.diagnosis import Evidence, Expectation
from vmtest.events import Event, EventStream, EventType, ProgramState
from vmtest.failures import (
    FailureContext,
    MachineFailure,
    ShutdownHung,
    StillRunningAfterPowerOff,
)
from vmtest.qmp import QmpConnection, QmpEvent

T = TypeVar("T")

POLL_SECONDS = 0.05


class Process(Protocol):
    """What a Watch needs of QEMU's process (a `subprocess.Popen`)."""

    def poll(self) -> int | None: ...


@dataclass(frozen=True)
class Identity:
    """How failures name the VM: its name, accelerator, logs, command and stderr file."""

    name: str
    accel: str
    workdir: Path | None
    argv: tuple[str, ...]
    stderr_path: Path


class Watch:
    """What one VM has shown so far; ``settle`` is how long a fatal sign may wait for QEMU
    to end (so that the failure shows the console's last lines)."""

    def __init__(
        self,
        console: Console,
        stream: EventStream,
        identity: Identity,
        *,
        logger: logging.Logger,
        settle: float,
    ) -> None:
        self.console = console
        self.stream = stream
        self.identity = identity
        self.log = logger
        self.settle = settle
        self.changed = threading.Condition()
        self.started = time.monotonic()
        self.process: Process | None = None
        self.qmp: QmpConnection | None = None
        self.killed = False

    # -- fed on the IO thread --------------------------------------------------------------

    def clock(self) -> float:
        """Host seconds since QEMU started."""
        return time.monotonic() - self.started

    def console_data(self, data: bytes) -> None:
        with self.changed:
            before = len(self.console.lines)
            self.console.feed(data, self.clock())
            for line in self.console.lines[before:]:
                self.log.debug("console: %s", line)
            self.changed.notify_all()

    def console_ended(self) -> None:
        with self.changed:
            self.console.close(self.clock())
            self.changed.notify_all()

    def event_data(self, data: bytes) -> None:
        with self.changed:
            for event in self.stream.feed(data, self.clock()):
                level = logging.INFO if event.type == EventType.STAGE else logging.DEBUG
                self.log.log(level, "%s", event.describe())
            self.changed.notify_all()

    def events_ended(self) -> None:
        with self.changed:
            self.stream.close(self.clock())
            self.changed.notify_all()

    def qmp_event(self, event: QmpEvent) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- reading ---------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    @property
    def stderr(self) -> str:
        try:
            return self.identity.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def evidence(self) -> Evidence:
        code = self.returncode
        return Evidence(
            findings=self.console.findings(),
            events=list(self.stream.events),
            mismatch=self.stream.mismatch,
            exited=code is not None,
            returncode=code,
            killed_by_host=self.killed,
        )

    def context(self) -> FailureContext:
        events = self.stream.events
        qmp_events = self.qmp.events if self.qmp is not None else []
        return FailureContext(
            machine=self.identity.name,
            accel=self.identity.accel,
            elapsed=self.clock(),
            console_tail=tuple(self.console.excerpt()),
            last_event=events[-1] if events else None,
            workdir=self.identity.workdir,
            qmp_events=tuple(event.describe() for event in qmp_events),
        )

    def post_mortem(self) -> MachineFailure | None:
        with self.changed:
            return diagnosis.post_mortem(
                self.evidence(), self.context(), argv=self.identity.argv, stderr=self.stderr
            )

    # -- waiting ---------------------------------------------------------------------------

    def wait(
        self, expect: Expectation, found: Callable[[Sequence[Event]], T | None], limit: float
    ) -> T:
        """Until ``found`` (called with the events so far) returns something, or a failure."""
        deadline = time.monotonic() + limit
        with self.changed:
            while True:
                result = found(self.stream.events)
                if result is not None:
                    return result
                if diagnosis.while_running(expect, self.evidence(), self.context()):
                    raise self._settled(expect)
                if self.returncode is not None:
                    self.drain(self.settle)
                    result = found(self.stream.events)
                    if result is not None:
                        return result
                    raise diagnosis.after_exit(
                        expect,
                        self.evidence(),
                        self.context(),
                        argv=self.identity.argv,
                        stderr=self.stderr,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise diagnosis.at_deadline(
                        expect, self.evidence(), self.context(), timeout=limit
                    )
                self.changed.wait(min(POLL_SECONDS, remaining))

    def wait_for_console(self, pattern: re.Pattern[str], start: int, limit: float) -> re.Match[str]:
        expect = Expectation(f"console text /{pattern.pattern}/", stage_failures=False)
        return self.wait(expect, lambda _: self.console.search(pattern, start), limit)

    def wait_for_exit(self, limit: float) -> int:
        """QEMU's exit status; a panic on the way raises, and so does the deadline."""
        expect = Expectation("QEMU to exit", stage_failures=False)
        deadline = time.monotonic() + limit
        with self.changed:
            while True:
                code = self.returncode
                if code is not None:
                    self.drain(self.settle)
                    failure = diagnosis.while_running(expect, self.evidence(), self.context())
                    if failure is not None:
                        raise failure
                    return code
                if diagnosis.while_running(expect, self.evidence(), self.context()):
                    raise self._settled(expect)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._began_power_off():
                        raise StillRunningAfterPowerOff(limit, context=self.context())
                    raise self._not_powered_off(limit)
                self.changed.wait(min(POLL_SECONDS, remaining))

    def drain(self, limit: float) -> None:
        """Once QEMU ended: give the socket readers up to ``limit`` s to reach the end."""
        deadline = time.monotonic() + limit
        with self.changed:
            while not (self.console.closed and self.stream.closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.changed.wait(min(POLL_SECONDS, remaining))

    def _settled(self, expect: Expectation) -> MachineFailure:
        """The failure judged again once QEMU ended (or ``settle`` passed), so that its
        context shows how the boot ended."""
        deadline = time.monotonic() + self.settle
        while self.returncode is None and time.monotonic() < deadline:
            self.changed.wait(POLL_SECONDS)
        if self.returncode is not None:
            self.drain(self.settle)
        failure = diagnosis.while_running(expect, self.evidence(), self.context())
        if failure is None:  # cannot happen: the signs that raised it only accumulate
            raise RuntimeError(f"a failure while waiting for {expect.awaited} vanished")
        return failure

    def _not_powered_off(self, limit: float) -> ShutdownHung:
        """No power-off began: the failure names the programs still running, if any."""
        running: dict[int, str] = {}
        for event in self.stream.events:
            if event.type != EventType.PROGRAM or event.index is None:
                continue
            if event.state == ProgramState.STARTED:
                running[event.index] = f"program[{event.index}] (pid {event.get('pid', '?')})"
            else:
                running.pop(event.index, None)
        names = [running[index] for index in sorted(running)]
        return ShutdownHung(limit, running=names, context=self.context())

    def _began_power_off(self) -> bool:
        if self.console.findings().powered_down:
            return True
        return any(event.type == EventType.SHUTDOWN for event in self.stream.events)
