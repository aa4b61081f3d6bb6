"""Why a VM did not do what a test waited for: one exception class per kind of failure.

MachineFailure                      (a VmtestError)
 +-- QemuFailed                     QEMU ended with an error status; carries argv, stderr
 |    +-- QemuStartFailed           ... before the VM was up (bad argv, missing file, no KVM)
 +-- NoKernelOutput                 nothing on the console and no event at all
 +-- KernelPanic                    ``Kernel panic - not syncing: <reason>`` on the console
 |    +-- InitCrashed               the panic of PID 1 exiting (``Attempted to kill init``)
 +-- Stage0Failed                   the initramfs printed ``stage0: <message>`` and powered off
 +-- StageFailed                    vinitd reported a stage as failed, with its message
 +-- VinitdFailed                   vinitd itself failed (a bug), and said so before powering off
 +-- ProgramFailed                  a program could not start, or exited non-zero (or by a
 |                                  signal) where success was awaited
 +-- StageTimedOut                  the deadline passed before the awaited stage, program or
 |                                  console text
 +-- PoweredOffEarly                the VM ended cleanly before the awaited thing happened
 +-- ShutdownHung                   QEMU still ran when the shutdown deadline passed
 |    +-- StillRunningAfterPowerOff ... although the guest had begun to power off
 +-- EventProtocolError             the guest speaks another version of the event protocol
 +-- ExpectationFailed              a scenario's expectation was not met (console text missing,
                                    a stage reached that should not be, another exit status)

Every failure's message starts with a one-line summary, then shows the VM, its accelerator,
how long after QEMU's start it gave up, the last event and the console's last lines. The
pieces are also attributes, for reports: ``summary``, ``context`` and the class's own fields.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmtest.errors import VmtestError
from vmtest.events import Event

CONSOLE_LINES_SHOWN = 15
STDERR_LINES_SHOWN = 10


@dataclass(frozen=True)
class FailureContext:
    """What the VM showed when the failure was recognised."""

    machine: str = "vm"
    accel: str = ""
    elapsed: float | None = None  # host seconds since QEMU started
    console_tail: tuple[str, ...] = ()
    last_event: Event | None = None
    workdir: Path | None = None
    qmp_events: tuple[str, ...] = field(default=())  # the QMP events, described, in order

    def render(self) -> list[str]:
        where = f"vm {self.machine}"
        if self.accel:
            where += f" ({self.accel})"
        if self.elapsed is not None:
            where += f", {self.elapsed:.2f} s after QEMU started"
        lines = [where]
        if self.workdir is not None:
            lines.append(f"logs: {self.workdir}")
        last = self.last_event.describe() if self.last_event is not None else "none"
        lines.append(f"last event: {last}")
        if self.qmp_events:
            lines.append("QMP events: " + ", ".join(self.qmp_events))
        shown = self.console_tail[-CONSOLE_LINES_SHOWN:]
        if shown:
            lines.append(f"last console lines ({len(shown)}):")
            lines += [f"  | {line}" for line in shown]
        else:
            lines.append("console: (nothing printed)")
        return lines


class MachineFailure(VmtestError):
    """The VM failed; ``summary`` says how in one line, ``context`` what it showed."""

    def __init__(
        self, summary: str, *, context: FailureContext | None = None, hint: str | None = None
    ) -> None:
        self.summary = summary
        self.context = context or FailureContext()
        self.hint = hint
        super().__init__(self.render())

    def details(self) -> list[str]:
        """Lines particular to the failure class, shown before the context."""
        return []

    def render(self) -> str:
        lines = [self.summary, *self.details(), *self.context.render()]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n  ".join(lines)


class QemuFailed(MachineFailure):
    """QEMU itself ended with an error status (or was killed by someone else)."""

    def __init__(
        self,
        summary: str,
        *,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str,
        context: FailureContext | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(summary, context=context, hint=hint)

    def details(self) -> list[str]:
        lines = [f"argv: {shlex.join(self.argv)}"]
        errors = self.stderr.strip().splitlines()[-STDERR_LINES_SHOWN:]
        lines += [f"stderr: {line}" for line in errors] or ["stderr: (empty)"]
        return lines


class QemuStartFailed(QemuFailed):
    """QEMU did not come up: it exited at once, or its QMP socket never answered."""


class NoKernelOutput(MachineFailure):
    """Neither the console nor the event port showed anything."""

    def __init__(
        self, seconds: float, *, context: FailureContext | None = None, hint: str | None = None
    ) -> None:
        self.seconds = seconds
        super().__init__(
            f"no kernel output: nothing on the console and no event in {seconds:.1f} s",
            context=context,
            hint=hint,
        )


class KernelPanic(MachineFailure):
    """The kernel panicked; ``reason`` is the text after ``not syncing:``."""

    def __init__(
        self, reason: str, *, context: FailureContext | None = None, summary: str | None = None
    ) -> None:
        self.reason = reason
        super().__init__(summary or f"kernel panic: {reason}", context=context)


class InitCrashed(KernelPanic):
    """PID 1 exited or died, which the kernel answers with a panic."""

    def __init__(
        self, reason: str, exitcode: int | None, *, context: FailureContext | None = None
    ) -> None:
        self.exitcode = exitcode
        how = f" ({wait_status(exitcode)})" if exitcode is not None else ""
        super().__init__(reason, context=context, summary=f"init crashed{how}: {reason}")


def wait_status(status: int) -> str:
    """A wait(2) status as words: ``exit status 1`` for 0x100, ``signal SIGSEGV`` for 11."""
    if status & 0x7F == 0:
        return f"exit status {status >> 8}"
    try:
        return f"signal {signal.Signals(status & 0x7F).name}"
    except ValueError:
        return f"signal {status & 0x7F}"


class Stage0Failed(MachineFailure):
    """Stage 0 (the initramfs) could not hand over to vinitd and powered off."""

    def __init__(self, message: str, *, context: FailureContext | None = None) -> None:
        self.message = message
        super().__init__(f"stage 0 failed: {message}", context=context)


class StageFailed(MachineFailure):
    """vinitd reported ``stage`` as failed; ``message`` is its explanation."""

    def __init__(
        self,
        stage: str,
        message: str | None,
        *,
        error: str | None = None,
        context: FailureContext | None = None,
    ) -> None:
        self.stage = stage
        self.message = message
        self.error = error
        told = message or "(no message)"
        super().__init__(f"stage {stage} failed: {told}", context=context)


class VinitdFailed(MachineFailure):
    """vinitd reported its own failure (an error outside any stage)."""

    def __init__(
        self,
        message: str | None,
        *,
        error: str | None = None,
        context: FailureContext | None = None,
    ) -> None:
        self.message = message
        self.error = error
        what = f"{error}: {message}" if error else str(message)
        super().__init__(f"vinitd failed: {what}", context=context)


class ProgramFailed(MachineFailure):
    """Program ``index`` could not start (``message`` says why), or ended without success:
    a non-zero status or a signal."""

    def __init__(
        self,
        index: int,
        *,
        exit_status: int | None,
        signal: str | None,
        message: str | None = None,
        context: FailureContext | None = None,
    ) -> None:
        self.index = index
        self.exit_status = exit_status
        self.signal = signal
        self.message = message
        if signal:
            how = f"was killed by {signal}"
        elif exit_status is not None:
            how = f"exited with status {exit_status}"
        else:
            how = f"failed to start: {message}"
        super().__init__(f"program[{index}] {how}", context=context)


class StageTimedOut(MachineFailure):
    """The deadline passed while waiting for ``awaited`` during ``stage``."""

    def __init__(
        self,
        awaited: str,
        *,
        stage: str | None,
        timeout: float,
        context: FailureContext | None = None,
        hint: str | None = None,
    ) -> None:
        self.awaited = awaited
        self.stage = stage
        self.timeout = timeout
        during = f" (stage {stage})" if stage else " (no stage reported yet)"
        super().__init__(
            f"timed out after {timeout:.1f} s waiting for {awaited}{during}",
            context=context,
            hint=hint,
        )


class PoweredOffEarly(MachineFailure):
    """QEMU ended cleanly, but before ``awaited`` happened."""

    def __init__(
        self, awaited: str, *, returncode: int | None, context: FailureContext | None = None
    ) -> None:
        self.awaited = awaited
        self.returncode = returncode
        super().__init__(
            f"the VM ended (QEMU exit status {returncode}) before {awaited}", context=context
        )


class ShutdownHung(MachineFailure):
    """QEMU was still running when the shutdown deadline passed; ``running`` names the
    programs that had not exited (a program that runs on is the usual reason)."""

    def __init__(
        self,
        timeout: float,
        *,
        running: Sequence[str] = (),
        summary: str | None = None,
        context: FailureContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.running = tuple(running)
        hint = None
        if summary is None and self.running:
            verb = "is" if len(self.running) == 1 else "are"
            summary = (
                f"the VM did not power off in {timeout:.1f} s: "
                f"{', '.join(self.running)} {verb} still running"
            )
            hint = (
                "vinitd powers off when the last program exits; to end a VM whose program "
                "runs on (a server), press the power button: vm.powerdown(), or a scenario "
                '[[action]] with do = "powerdown"'
            )
        super().__init__(
            summary or f"shutdown hung: QEMU still running after {timeout:.1f} s",
            context=context,
            hint=hint,
        )


class StillRunningAfterPowerOff(ShutdownHung):
    """The guest began to power off, yet QEMU did not exit in time."""

    def __init__(self, timeout: float, *, context: FailureContext | None = None) -> None:
        super().__init__(
            timeout,
            summary=(
                f"the guest began to power off, but QEMU was still running after {timeout:.1f} s"
            ),
            context=context,
        )


class EventProtocolError(MachineFailure):
    """The event port spoke a protocol this vmtest cannot read."""

    def __init__(self, problem: str, *, context: FailureContext | None = None) -> None:
        self.problem = problem
        super().__init__(f"event protocol mismatch: {problem}", context=context)


class ExpectationFailed(MachineFailure):
    """The boot went its way, but not the way a scenario (`vmtest.scenario`) expected:
    ``expectation`` says what was expected, ``seen`` what happened instead."""

    def __init__(
        self, expectation: str, seen: str, *, context: FailureContext | None = None
    ) -> None:
        self.expectation = expectation
        self.seen = seen
        super().__init__(f"expected {expectation}; {seen}", context=context)
