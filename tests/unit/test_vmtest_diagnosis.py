"""vmtest.diagnosis and vmtest.failures: every way a boot fails becomes the right class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vmtest import diagnosis
from vmtest.console import Console, ConsoleFindings
from vmtest.diagnosis import Evidence, Expectation
from vmtest.errors import VmtestError
from vmtest.events import Event
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
    QemuStartFailed,
    ShutdownHung,
    Stage0Failed,
    StageFailed,
    StageTimedOut,
    StillRunningAfterPowerOff,
    VinitdFailed,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vmtest"
ARGV = ("qemu-system-x86_64", "-machine", "q35")
CONTEXT = FailureContext(machine="hello", accel="tcg", elapsed=4.5, console_tail=("last line",))


def _findings(name: str) -> ConsoleFindings:
    console = Console()
    console.feed((FIXTURES / f"console-{name}.log").read_bytes(), 1.0)
    console.close(2.0)
    return console.findings()


def _event(**fields: Any) -> Event:
    return Event({"v": 1, "time": 3.0, **fields}, 4.0)


STAGE_STARTED = _event(type="stage", stage="launch", state="started")
STAGE_FAILED = _event(type="stage", stage="launch", state="failed", message="no app", error="X")
PROGRAM_FAILED = _event(type="program", index=0, state="exited", exit_status=3)
PROGRAM_KILLED = _event(type="program", index=0, state="exited", signal="SIGKILL")
PROGRAM_OK = _event(type="program", index=0, state="exited", exit_status=0)
PROGRAM_NOT_STARTED = _event(type="program", index=0, state="failed", message="no such file")
VINITD_FAILED = _event(type="failure", message="boom", error="RuntimeError")


def _evidence(console: str = "good-boot", events: Sequence[Event] = (), **fields: Any) -> Evidence:
    return Evidence(findings=_findings(console), events=list(events), **fields)


def test_the_failure_tree() -> None:
    """Every failure is a MachineFailure, hence a VmtestError; the subclasses nest as documented."""
    kinds: tuple[type[MachineFailure], ...] = (
        QemuFailed,
        NoKernelOutput,
        KernelPanic,
        Stage0Failed,
        StageFailed,
        ProgramFailed,
        StageTimedOut,
        PoweredOffEarly,
        ShutdownHung,
        EventProtocolError,
        VinitdFailed,
    )
    for kind in kinds:
        assert issubclass(kind, MachineFailure)
    assert issubclass(MachineFailure, VmtestError)
    assert issubclass(QemuStartFailed, QemuFailed)
    assert issubclass(InitCrashed, KernelPanic)
    assert issubclass(StillRunningAfterPowerOff, ShutdownHung)


@pytest.mark.parametrize(
    ("console", "events", "expect", "kind"),
    [
        ("kernel-panic", [], Expectation("stage launch finished"), KernelPanic),
        ("init-crash", [], Expectation("stage launch finished"), InitCrashed),
        ("stage0-root-not-found", [], Expectation("stage launch finished"), Stage0Failed),
        ("good-boot", [STAGE_FAILED], Expectation("stage launch finished"), StageFailed),
        (
            "good-boot",
            [PROGRAM_FAILED],
            Expectation("x", program=0, program_must_succeed=True),
            ProgramFailed,
        ),
        (
            "good-boot",
            [PROGRAM_KILLED],
            Expectation("x", program=0, program_must_succeed=True),
            ProgramFailed,
        ),
        (
            "good-boot",
            [PROGRAM_NOT_STARTED],
            Expectation("program[0] started", program=0),
            ProgramFailed,
        ),
        ("good-boot", [VINITD_FAILED], Expectation("stage launch finished"), VinitdFailed),
    ],
)
def test_signs_that_end_a_wait_while_the_vm_runs(
    console: str, events: list[Event], expect: Expectation, kind: type[MachineFailure]
) -> None:
    """Panics, stage 0 lines, failed stages and failed programs are recognised at once."""
    failure = diagnosis.while_running(expect, _evidence(console, events), CONTEXT)
    assert type(failure) is kind


def test_what_does_not_end_a_wait() -> None:
    """A failed stage when its failure is awaited or stage failures are not watched; another
    program's failure; a program that succeeded."""
    awaiting_failure = Expectation("stage launch failed", stage="launch", stage_may_fail=True)
    console_wait = Expectation("console text /x/", stage_failures=False)
    other_program = Expectation("program[1] succeeded", program=1, program_must_succeed=True)
    for expect, events in [
        (awaiting_failure, [STAGE_FAILED]),
        (console_wait, [STAGE_FAILED]),
        (other_program, [PROGRAM_FAILED]),
        (Expectation("x", program=0, program_must_succeed=True), [PROGRAM_OK]),
        (Expectation("x"), [PROGRAM_FAILED]),
        (Expectation("program[0] exited", program=0), [PROGRAM_FAILED]),
        (console_wait, [VINITD_FAILED]),
    ]:
        assert diagnosis.while_running(expect, _evidence("good-boot", events), CONTEXT) is None


def test_the_failures_carry_what_they_found() -> None:
    """Reason, exit code, message and status are attributes, for reports."""
    expect = Expectation("x", program=0, program_must_succeed=True)
    panic = diagnosis.while_running(expect, _evidence("kernel-panic"), CONTEXT)
    assert isinstance(panic, KernelPanic)
    assert panic.reason == "VFS: Unable to mount root fs on unknown-block(0,0)"
    crash = diagnosis.while_running(expect, _evidence("init-crash"), CONTEXT)
    assert isinstance(crash, InitCrashed) and crash.exitcode == 0x100
    assert (
        crash.summary == "init crashed (exit status 1): Attempted to kill init! exitcode=0x00000100"
    )
    stage0 = diagnosis.while_running(expect, _evidence("stage0-root-not-found"), CONTEXT)
    assert isinstance(stage0, Stage0Failed)
    assert stage0.message.endswith("not found on vda")
    stage = diagnosis.while_running(expect, _evidence(events=[STAGE_FAILED]), CONTEXT)
    assert isinstance(stage, StageFailed)
    assert (stage.stage, stage.message, stage.error) == ("launch", "no app", "X")
    program = diagnosis.while_running(expect, _evidence(events=[PROGRAM_FAILED]), CONTEXT)
    assert isinstance(program, ProgramFailed)
    assert (program.index, program.exit_status, program.signal) == (0, 3, None)
    expect_start = Expectation("program[0] started", program=0)
    unstarted = diagnosis.while_running(
        expect_start, _evidence(events=[PROGRAM_NOT_STARTED]), CONTEXT
    )
    assert isinstance(unstarted, ProgramFailed)
    assert unstarted.summary == "program[0] failed to start: no such file"
    vinitd = diagnosis.while_running(expect, _evidence(events=[VINITD_FAILED]), CONTEXT)
    assert isinstance(vinitd, VinitdFailed)
    assert vinitd.summary == "vinitd failed: RuntimeError: boom"


def test_a_protocol_mismatch_comes_first() -> None:
    """Nothing the port says can be trusted once the version is wrong."""
    evidence = _evidence("kernel-panic", mismatch="line 1 speaks protocol version 2")
    failure = diagnosis.while_running(Expectation("x"), evidence, CONTEXT)
    assert isinstance(failure, EventProtocolError)
    assert failure.problem == "line 1 speaks protocol version 2"


@pytest.mark.parametrize(
    ("console", "events", "fields", "kind"),
    [
        ("good-boot", [STAGE_STARTED], {"returncode": 0}, PoweredOffEarly),
        ("silent", [], {"returncode": 0}, NoKernelOutput),
        ("silent", [], {"returncode": 1}, QemuFailed),
        ("good-boot", [], {"returncode": -9}, QemuFailed),
        ("silent", [], {"returncode": -9, "killed_by_host": True}, PoweredOffEarly),
        ("kernel-panic", [], {"returncode": 0}, KernelPanic),
        ("good-boot", [STAGE_FAILED], {"returncode": 0}, StageFailed),
    ],
)
def test_the_vm_ended_before_the_awaited_thing(
    console: str, events: list[Event], fields: dict[str, Any], kind: type[MachineFailure]
) -> None:
    """QEMU's end is classified: its own error, silence, a sign, or just an early end."""
    evidence = _evidence(console, events, exited=True, **fields)
    failure = diagnosis.after_exit(
        Expectation("stage network finished"), evidence, CONTEXT, argv=ARGV, stderr="oops\n"
    )
    assert type(failure) is kind


def test_qemu_failing_names_argv_status_and_stderr() -> None:
    """QEMU exited 1: the message shows the command and its error output."""
    evidence = _evidence("silent", exited=True, returncode=1)
    stderr = "qemu-system-x86_64: -drive file=x: Could not open 'x'\n"
    failure = diagnosis.after_exit(
        Expectation("stage launch finished"), evidence, CONTEXT, argv=ARGV, stderr=stderr
    )
    assert isinstance(failure, QemuFailed)
    assert failure.summary == "QEMU exited with status 1 before stage launch finished"
    assert failure.argv == ARGV and failure.returncode == 1
    text = str(failure)
    assert "argv: qemu-system-x86_64 -machine q35" in text
    assert "stderr: qemu-system-x86_64: -drive file=x: Could not open 'x'" in text


def test_a_signal_from_elsewhere_is_named() -> None:
    """QEMU killed by someone else (the OOM killer, a user)."""
    evidence = _evidence("good-boot", exited=True, returncode=-9)
    failure = diagnosis.after_exit(Expectation("x"), evidence, CONTEXT, argv=ARGV, stderr="")
    assert failure.summary == "QEMU was killed by SIGKILL before x"


def test_at_the_deadline_silence_is_no_kernel_output() -> None:
    """No console output and no event: NoKernelOutput, with a hint under KVM."""
    kvm = FailureContext(machine="hello", accel="kvm")
    failure = diagnosis.at_deadline(Expectation("x"), _evidence("silent"), kvm, timeout=30)
    assert isinstance(failure, NoKernelOutput)
    assert failure.seconds == 30
    assert failure.hint is not None and "accel='tcg'" in failure.hint


def test_at_the_deadline_the_stage_is_named() -> None:
    """The awaited stage, or else the stage the boot was last in."""
    stage_wait = Expectation("stage launch finished", stage="launch")
    failure = diagnosis.at_deadline(
        stage_wait, _evidence(events=[STAGE_STARTED]), CONTEXT, timeout=9
    )
    assert isinstance(failure, StageTimedOut)
    assert (failure.stage, failure.awaited, failure.timeout) == (
        "launch",
        "stage launch finished",
        9,
    )
    assert (
        failure.summary == "timed out after 9.0 s waiting for stage launch finished (stage launch)"
    )
    console_wait = Expectation("console text /ready/")
    other = diagnosis.at_deadline(
        console_wait, _evidence(events=[STAGE_STARTED]), CONTEXT, timeout=9
    )
    assert isinstance(other, StageTimedOut) and other.stage == "launch"
    nothing = diagnosis.at_deadline(console_wait, _evidence(), CONTEXT, timeout=9)
    assert isinstance(nothing, StageTimedOut) and nothing.stage is None
    assert nothing.summary.endswith("(no stage reported yet)")


def test_post_mortem() -> None:
    """After the fact: any failed program counts; a clean end or a running VM is no failure."""
    assert diagnosis.post_mortem(_evidence(), CONTEXT, argv=ARGV, stderr="") is None
    ended = _evidence(events=[PROGRAM_OK], exited=True, returncode=0)
    assert diagnosis.post_mortem(ended, CONTEXT, argv=ARGV, stderr="") is None
    failed = _evidence(events=[PROGRAM_FAILED], exited=True, returncode=0)
    assert isinstance(diagnosis.post_mortem(failed, CONTEXT, argv=ARGV, stderr=""), ProgramFailed)
    silent = _evidence("silent", exited=True, returncode=0)
    assert isinstance(diagnosis.post_mortem(silent, CONTEXT, argv=ARGV, stderr=""), NoKernelOutput)


def test_a_failure_message_shows_the_vm_last_event_and_console() -> None:
    """Summary first, then where, the last event, QMP events and the console's last lines."""
    context = FailureContext(
        machine="hello",
        accel="tcg",
        elapsed=5.25,
        console_tail=("[ 1.0] one", "[ 2.0] two"),
        last_event=STAGE_FAILED,
        workdir=Path("/tmp/work"),
        qmp_events=("SHUTDOWN(guest-shutdown)",),
    )
    failure = StageFailed("launch", "no app", context=context)
    assert str(failure).splitlines() == [
        "stage launch failed: no app",
        "  vm hello (tcg), 5.25 s after QEMU started",
        "  logs: /tmp/work",
        "  last event: stage launch failed: no app (guest 3.00 s, host 4.00 s)",
        "  QMP events: SHUTDOWN(guest-shutdown)",
        "  last console lines (2):",
        "    | [ 1.0] one",
        "    | [ 2.0] two",
    ]


def test_shutdown_failures_and_their_messages() -> None:
    """ShutdownHung and StillRunningAfterPowerOff say how long was waited."""
    hung = ShutdownHung(20, context=CONTEXT)
    assert hung.summary == "shutdown hung: QEMU still running after 20.0 s"
    still = StillRunningAfterPowerOff(20, context=CONTEXT)
    assert still.summary == "the guest began to power off, but QEMU was still running after 20.0 s"
    assert still.timeout == 20
    empty = NoKernelOutput(3, context=FailureContext())
    assert "console: (nothing printed)" in str(empty)
    assert "last event: none" in str(empty)
