"""Reading a boot that went wrong: from console findings, events and QEMU's exit to a failure.

A wait asks three questions, in this order, each time something changes:

1. `while_running`: does what the VM showed so far end the wait? A protocol mismatch, a
   kernel panic (PID 1's own panic is `InitCrashed`), a ``stage0:`` line, a failed stage
   (unless the wait is for that failure), vinitd's own failure, or the awaited program
   failing to start (or, when the wait is for its success, ending any other way than 0).
2. `after_exit`: QEMU has ended and the awaited thing never came. Beyond the signs above:
   an error status from QEMU is `QemuFailed`, a VM that printed nothing and sent no event is
   `NoKernelOutput`, and anything else is `PoweredOffEarly`.
3. `at_deadline`: time is up. A silent VM is `NoKernelOutput`, otherwise `StageTimedOut`
   naming the awaited stage (or the stage the boot was in).

`post_mortem` asks the same of a boot after the fact, for reports.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from vmtest.console import ConsoleFindings
from vmtest.events import Event, EventType, ProgramState, StageState
from vmtest.failures import (
    EventProtocolError,
    FailureContext,
    InitCrashed,
    KernelPanic,
    MachineFailure,
    NoKernelOutput,
    PoweredOffEarly,
    ProgramFailed,
    QemuFailed,
    Stage0Failed,
    StageFailed,
    StageTimedOut,
    VinitdFailed,
)

KVM_HINT = "KVM may be broken on this host (e.g. nested); try accel='tcg'"


@dataclass(frozen=True)
class Expectation:
    """What a wait is for, as far as judging failures goes.

    ``awaited`` is said in failures ("stage launch finished"); ``stage`` names the stage the
    wait is about. A failed stage (or vinitd's own failure) ends the wait when
    ``stage_failures`` is set, except the failure of ``stage`` itself when ``stage_may_fail``
    (the wait is for that failure). Program ``program`` failing to start ends the wait too,
    and so does any other end of it than status 0 when ``program_must_succeed``.
    """

    awaited: str
    stage: str | None = None
    stage_failures: bool = True
    stage_may_fail: bool = False
    program: int | None = None
    program_must_succeed: bool = False


@dataclass(frozen=True)
class Evidence:
    """What the VM showed: console findings, events, and how QEMU ended (if it did)."""

    findings: ConsoleFindings
    events: Sequence[Event]
    mismatch: str | None = None
    exited: bool = False
    returncode: int | None = None
    killed_by_host: bool = False

    @property
    def silent(self) -> bool:
        return not self.findings.has_output and not self.events


def current_stage(events: Sequence[Event]) -> str | None:
    """The stage the boot is in: the last stage an event named."""
    for event in reversed(events):
        if event.type == EventType.STAGE and event.stage:
            return event.stage
    return None


def while_running(
    expect: Expectation, evidence: Evidence, context: FailureContext
) -> MachineFailure | None:
    """A failure that ends the wait now, whether or not QEMU still runs."""
    if evidence.mismatch is not None:
        return EventProtocolError(evidence.mismatch, context=context)
    findings = evidence.findings
    if findings.panic is not None:
        if findings.init_exitcode is not None:
            return InitCrashed(findings.panic, findings.init_exitcode, context=context)
        return KernelPanic(findings.panic, context=context)
    if findings.stage0 is not None:
        return Stage0Failed(findings.stage0, context=context)
    for event in evidence.events:
        if expect.stage_failures and _stage_failed(event, expect):
            return StageFailed(
                event.stage or "?",
                event.message,
                error=_text(event.get("error")),
                context=context,
            )
        if expect.stage_failures and event.type == EventType.FAILURE:
            return VinitdFailed(event.message, error=_text(event.get("error")), context=context)
        if expect.program is not None and _program_failed(event, expect):
            return ProgramFailed(
                expect.program,
                exit_status=event.exit_status,
                signal=event.signal,
                message=event.message,
                context=context,
            )
    return None


def after_exit(
    expect: Expectation,
    evidence: Evidence,
    context: FailureContext,
    *,
    argv: Sequence[str],
    stderr: str,
) -> MachineFailure:
    """Why the awaited thing never came, QEMU having ended."""
    failure = while_running(expect, evidence, context)
    if failure is not None:
        return failure
    code = evidence.returncode
    if not evidence.killed_by_host and code is not None and code != 0:
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        hint = KVM_HINT if context.accel == "kvm" and "kvm" in stderr.lower() else None
        return QemuFailed(
            f"QEMU {how} before {expect.awaited}",
            argv=argv,
            returncode=code,
            stderr=stderr,
            context=context,
            hint=hint,
        )
    if evidence.silent and not evidence.killed_by_host:
        seconds = context.elapsed or 0.0
        return NoKernelOutput(seconds, context=context, hint=_silence_hint(context))
    awaited = expect.awaited + (" (QEMU was killed by vmtest)" if evidence.killed_by_host else "")
    return PoweredOffEarly(awaited, returncode=code, context=context)


def post_mortem(
    evidence: Evidence, context: FailureContext, *, argv: Sequence[str], stderr: str
) -> MachineFailure | None:
    """What went wrong in a boot nobody was waiting on, or None: the signs `while_running`
    reads (with every program's success expected); once QEMU ended, also an error status or
    a VM that stayed silent."""
    programs = sorted(
        {e.index for e in evidence.events if e.type == EventType.PROGRAM and e.index is not None}
    )
    awaited = "the end of the boot"
    expectations = [Expectation(awaited)]
    expectations += [
        Expectation(awaited, program=index, program_must_succeed=True) for index in programs
    ]
    for expect in expectations:
        failure = while_running(expect, evidence, context)
        if failure is not None:
            return failure
    if not evidence.exited:
        return None
    ended = after_exit(expectations[0], evidence, context, argv=argv, stderr=stderr)
    return None if isinstance(ended, PoweredOffEarly) else ended


def at_deadline(
    expect: Expectation, evidence: Evidence, context: FailureContext, *, timeout: float
) -> MachineFailure:
    """Why the deadline passed."""
    if evidence.silent:
        return NoKernelOutput(timeout, context=context, hint=_silence_hint(context))
    stage = expect.stage or current_stage(evidence.events)
    return StageTimedOut(expect.awaited, stage=stage, timeout=timeout, context=context)


def _stage_failed(event: Event, expect: Expectation) -> bool:
    if event.type != EventType.STAGE or event.state != StageState.FAILED:
        return False
    return not (expect.stage_may_fail and event.stage == expect.stage)


def _program_failed(event: Event, expect: Expectation) -> bool:
    if expect.program is None or not event.is_program(expect.program):
        return False
    if event.state == ProgramState.FAILED:
        return True
    if event.state != ProgramState.EXITED or not expect.program_must_succeed:
        return False
    return event.signal is not None or event.exit_status != 0


def _silence_hint(context: FailureContext) -> str | None:
    return KVM_HINT if context.accel == "kvm" else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
