"""Judging recorded runs: one check per stage and expectation, and which failure is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmtest.events import Event
from vmtest.qmp import QmpEvent
from vmtest.report import CheckGroup, FailureInfo, RunRecord, judge, render_text
from vmtest.scenario import Scenario, parse

STAGE_EVENTS = [
    ("pre-setup", "started", 4.454, 5.214),
    ("pre-setup", "finished", 4.553, 5.309),
    ("setup", "started", 4.554, 5.310),
    ("setup", "finished", 6.759, 7.516),
    ("post-setup", "started", 6.760, 7.516),
    ("post-setup", "finished", 6.760, 7.518),
    ("launch", "started", 6.762, 7.518),
    ("launch", "finished", 6.953, 7.709),
]


def event(host: float, **fields: Any) -> Event:
    return Event({"v": 1, **fields}, host)


def stages(until: int = len(STAGE_EVENTS)) -> list[Event]:
    return [
        event(host, type="stage", stage=stage, state=state, time=guest)
        for stage, state, guest, host in STAGE_EVENTS[:until]
    ]


def program(
    index: int, guest: float, *, status: int | None = 0, signal: str | None = None
) -> list[Event]:
    started = event(guest + 0.8, type="program", index=index, state="started", pid=121, time=guest)
    ending: dict[str, Any] = {"signal": signal} if signal else {"exit_status": status}
    exited = event(
        guest + 1.2,
        type="program",
        index=index,
        state="exited",
        pid=121,
        time=guest + 0.3,
        **ending,
    )
    return [started, exited]


def shutdown(guest: float, reason: str = "no programs still running") -> list[Event]:
    return [
        event(
            guest + 0.8,
            type="shutdown",
            state="begun",
            action="power_off",
            reason=reason,
            time=guest,
        ),
        event(guest + 0.9, type="shutdown", state="synced", action="power_off", time=guest + 0.1),
    ]


def record(events: list[Event], **overrides: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "name": "hello",
        "image": Path("/images/hello.raw"),
        "accel": "tcg",
        "accel_reason": "requested: emulation",
        "events": tuple(events),
        "console": "hello from a vorteil micro-VM\npython 3.11\n",
        "qmp_events": (QmpEvent("SHUTDOWN", {"reason": "guest-shutdown"}, 8.2),),
        "returncode": 0,
        "programs": 1,
        "host_seconds": 8.3,
    }
    return RunRecord(**{**fields, **overrides})


HELLO = [*stages(), *program(0, 6.99), *shutdown(7.32)]


def test_a_good_boot_passes_every_check() -> None:
    """Four stages in order, program 0 exits 0, vinitd syncs, QEMU exits 0: pass."""
    report = judge(record(HELLO), Scenario())
    assert report.passed and report.failure is None
    assert [(c.name, c.passed) for c in report.checks] == [
        ("stage pre-setup finished", True),
        ("stage setup finished", True),
        ("stage post-setup finished", True),
        ("stage launch finished", True),
        ("program[0] runs and does not fail", True),
        ("the VM powers off cleanly", True),
    ]
    assert [c.group for c in report.checks[:4]] == [CheckGroup.STAGES] * 4
    assert report.checks[1].seconds == pytest.approx(2.205)
    assert [p.describe() for p in report.programs] == ["exited with status 0"]


def test_the_time_before_the_stages_is_shown_from_the_init_event() -> None:
    """The init event's ``started``: the kernel's time up to the init script, then vinitd's
    own start up to its first event; rows before the stages, and ``boot`` in the JSON."""
    init = event(4.1, type="init", state="started", pid=1, version="0.1.0", time=3.42, started=2.5)
    report = judge(record([init, *HELLO]), Scenario())
    assert report.to_dict()["boot"] == {"kernel": 2.5, "vinitd_start": 0.92}
    lines = render_text(report).splitlines()
    assert lines[3].split() == ["(kernel)", "-", "0.000", "2.500", "-", "-", "2.500"]
    assert lines[4].split() == ["(vinitd", "start)", "-", "2.500", "3.420", "-", "-", "0.920"]
    assert lines[5].split()[0] == "pre-setup"

    without = judge(record(HELLO), Scenario())  # an older vinitd: no rows, boot is null
    assert without.to_dict()["boot"] is None
    assert "(kernel)" not in render_text(without)


def test_the_text_report_has_the_timeline_programs_and_verdict() -> None:
    """The stage table, the program table, one line per check and PASS."""
    text = render_text(judge(record(HELLO), Scenario()))
    lines = text.splitlines()
    assert lines[0] == "vm hello: /images/hello.raw under tcg (requested: emulation)"
    assert lines[2] == (
        "stage       state     guest start  guest end  host start  host end  duration"
    )
    assert lines[4].split() == ["setup", "finished", "4.554", "6.759", "5.310", "7.516", "2.205"]
    assert "0        121  6.990        7.290      exited with status 0" in lines
    assert "  ok    program[0] runs and does not fail: exited with status 0" in lines
    assert lines[-1] == "PASS: hello in 8.3 s"


def test_a_failed_stage_is_named_by_the_machines_failure() -> None:
    """pre-setup failed: the Machine's StageFailed is the failure; later stages not reached."""
    failed = [
        event(5.2, type="stage", stage="pre-setup", state="started", time=4.4),
        event(5.3, type="stage", stage="pre-setup", state="failed", message="bad VCFG", time=4.5),
        *shutdown(4.6, "pre-setup failed")[1:],
    ]
    machine = FailureInfo("StageFailed", "stage pre-setup failed: bad VCFG", "long")
    report = judge(record(failed, failure=machine), Scenario())
    assert report.failure == machine
    assert [(c.name, c.passed, c.failure_class) for c in report.checks[:2]] == [
        ("stage pre-setup finished", False, "StageFailed"),
        ("stage setup finished", False, "StageFailed"),
    ]
    assert report.checks[0].detail == "failed: bad VCFG"


def test_an_expected_exit_status_accepts_the_machines_program_failure() -> None:
    """Program 0 exits 3; the Machine calls it ProgramFailed, the scenario expects it: pass."""
    events = [*stages(), *program(0, 6.99, status=3), *shutdown(7.32)]
    machine = FailureInfo("ProgramFailed", "program[0] exited with status 3", "long")
    scenario = parse("[[expect.program]]\nindex = 0\nexit = 3\n", source="s.toml")
    report = judge(record(events, failure=machine), scenario)
    assert report.passed
    assert ("program[0] exits with status 3", True) in [(c.name, c.passed) for c in report.checks]


def test_an_unexpected_exit_status_is_the_failure() -> None:
    """Program 0 exits 3 with no expectation: ProgramFailed, the Machine's message."""
    events = [*stages(), *program(0, 6.99, status=3), *shutdown(7.32)]
    machine = FailureInfo("ProgramFailed", "program[0] exited with status 3", "long message")
    report = judge(record(events, failure=machine), Scenario())
    assert report.failure == machine


def test_another_exit_status_than_expected_is_an_expectation_failure() -> None:
    """Expected 3, got 0: ExpectationFailed naming both."""
    scenario = parse("[[expect.program]]\nindex = 0\nexit = 3\n", source="s.toml")
    report = judge(record(HELLO), scenario)
    assert report.failure == FailureInfo(
        "ExpectationFailed",
        "program[0] exits with status 3: exited with status 0",
        "program[0] exits with status 3: exited with status 0",
    )


def test_a_program_stopped_by_the_shutdown_has_not_failed() -> None:
    """After a powerdown, SIGTERM is the shutdown's doing: the default check passes."""
    events = [*stages(), *program(0, 6.99, signal="SIGTERM"), *shutdown(7.0, "power button")]
    machine = FailureInfo("ProgramFailed", "program[0] was killed by SIGTERM", "long")
    report = judge(record(events, failure=machine), Scenario())
    assert report.passed
    check = next(c for c in report.checks if c.program == 0)
    assert check.detail == "killed by SIGTERM (stopped by the shutdown)"


def test_a_program_killed_before_any_shutdown_has_failed() -> None:
    """SIGKILL with no shutdown begun: ProgramFailed."""
    events = [*stages(), *program(0, 6.99, signal="SIGKILL"), *shutdown(7.5)]
    report = judge(record(events), Scenario())
    assert report.failure is not None and report.failure.kind == "ProgramFailed"


def test_a_missing_console_pattern_is_an_expectation_failure() -> None:
    """A pattern that does not match fails; one that does says on which line."""
    scenario = parse(
        '[[expect.console]]\npattern = "^python"\n[[expect.console]]\npattern = "goodbye"\n',
        source="s.toml",
    )
    report = judge(record(HELLO), scenario)
    found, missing = [c for c in report.checks if c.name.startswith("console")]
    assert found.passed and found.detail == "line 2: python 3.11"
    assert not missing.passed and missing.detail == "not found in 2 lines"
    assert report.failure is not None
    assert report.failure.kind == "ExpectationFailed"
    assert report.failure.summary == "console matches /goodbye/: not found in 2 lines"


def test_a_stage_that_must_not_be_reached() -> None:
    """not_reached = ["launch"]: launch starting is an ExpectationFailed; programs unchecked."""
    scenario = parse('[expect]\nnot_reached = ["launch"]\n', source="s.toml")
    report = judge(record(HELLO), scenario)
    names = [c.name for c in report.checks]
    assert "stage launch not reached" in names
    assert not any(c.program is not None for c in report.checks)
    assert report.failure is not None
    assert report.failure.summary == "stage launch not reached: it finished"
    calm = judge(record([*stages(6), *shutdown(6.8)], programs=1), scenario)
    assert calm.passed


def test_stages_out_of_order_fail() -> None:
    """setup starting before pre-setup finished is not the boot vinitd promises."""
    events = stages()
    events[2] = event(5.0, type="stage", stage="setup", state="started", time=4.5)
    report = judge(record([*events, *program(0, 6.99), *shutdown(7.32)]), Scenario())
    check = report.checks[1]
    assert (check.passed, check.detail) == (False, "started before stage pre-setup finished")


def test_a_reset_is_not_a_clean_shutdown_but_ends_the_vm() -> None:
    """No `shutdown synced`: shutdown = "clean" fails, shutdown = "any" passes."""
    events = [*stages(), event(7.5, type="program", index=0, state="started", pid=9, time=7.0)]
    reset = (QmpEvent("RESET", {"reason": "host-qmp-system-reset"}, 8.0),)
    clean = judge(record(events, qmp_events=reset), Scenario())
    assert clean.failure is not None and clean.failure.kind == "ExpectationFailed"
    assert clean.checks[-1].detail == (
        "QEMU exit status 0 without vinitd's shutdown (QMP: RESET(host-qmp-system-reset))"
    )
    any_end = judge(
        record(events, qmp_events=reset), parse('[expect]\nshutdown = "any"\n', source="s")
    )
    assert any_end.passed


def test_a_run_killed_at_its_deadline_carries_the_machines_timeout() -> None:
    """The runner's ShutdownHung is the failure; the shutdown check says vmtest killed QEMU."""
    events = [*stages(), event(7.5, type="program", index=0, state="started", pid=9, time=7.0)]
    hung = FailureInfo("ShutdownHung", "shutdown hung: QEMU still running after 12.0 s", "long")
    report = judge(record(events, returncode=-9, killed=True, failure=hung), Scenario())
    assert report.failure == hung
    assert report.checks[-1].detail == "vmtest killed QEMU at the run's deadline"
    assert report.checks[-1].failure_class == "ShutdownHung"
    assert report.programs[0].describe() == "still running"


def test_a_vm_that_never_reached_a_stage_powered_off_early() -> None:
    """QEMU exited 0 with no stage at all and no Machine failure: PoweredOffEarly."""
    report = judge(record([], returncode=0), Scenario())
    assert report.failure is not None
    assert report.failure.kind == "PoweredOffEarly"
    assert report.failure.summary == "stage pre-setup finished: not reached"
    assert report.programs[0].describe() == "not started"
