"""The verdict on one run: what it recorded, judged against a scenario, as text, JSON or JUnit.

`RunRecord` is what a run leaves (events, console, QMP events, how QEMU ended and the
failure the Machine saw); `judge` turns it into a `Report` of checks, one per stage and one
per expectation. Nothing here needs QEMU, so a recorded run can be judged again.

Which failure a report names: the Machine's own (a panic, a failed stage, a timeout, QEMU
failing to start...), unless it is only a program ending otherwise than with status 0 and
the scenario's program checks accept that ending (an expected exit status, or a program
stopped by the shutdown); else the first check that failed.
"""

from __future__ import annotations

import enum
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtest.events import (
    STAGES,
    Event,
    EventType,
    ProgramState,
    StageSpan,
    StageState,
    format_seconds,
    format_table,
    timeline,
)
from vmtest.failures import (
    ExpectationFailed,
    MachineFailure,
    PoweredOffEarly,
    ProgramFailed,
    QemuFailed,
    StageFailed,
    StageTimedOut,
)
from vmtest.qmp import QmpEvent
from vmtest.scenario import Scenario, ShutdownExpectation


class Result(enum.StrEnum):
    PASSED = "pass"
    FAILED = "fail"


class CheckGroup(enum.StrEnum):
    STAGES = "stages"
    EXPECTATIONS = "expectations"


@dataclass(frozen=True)
class FailureInfo:
    """A failure as reports show it: its class's name, one-line summary and full message."""

    kind: str
    summary: str
    message: str

    @classmethod
    def of(cls, failure: BaseException) -> FailureInfo:
        summary = failure.summary if isinstance(failure, MachineFailure) else str(failure)
        return cls(type(failure).__name__, summary, str(failure))

    def to_dict(self) -> dict[str, str]:
        return {"class": self.kind, "summary": self.summary, "message": self.message}


@dataclass(frozen=True)
class RunRecord:
    """What one run of a VM recorded; host times are seconds since QEMU started."""

    name: str
    image: Path
    accel: str = ""
    accel_reason: str = ""
    events: tuple[Event, ...] = ()
    console: str = ""
    qmp_events: tuple[QmpEvent, ...] = ()
    returncode: int | None = None  # QEMU's exit status (negative: killed by that signal)
    killed: bool = False  # vmtest killed QEMU (the run's deadline passed)
    programs: int = 0  # how many programs the VCFG declares
    failure: FailureInfo | None = None  # what the Machine saw go wrong
    host_seconds: float = 0.0
    actions: tuple[str, ...] = ()  # the actions performed, described


@dataclass(frozen=True)
class Check:
    """One stage or expectation: passed or not, what was seen, and the failure's class."""

    name: str
    group: CheckGroup
    passed: bool
    detail: str
    failure_class: str = ""
    seconds: float | None = None
    program: int | None = None  # the program a program check is about

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": str(self.group),
            "passed": self.passed,
            "detail": self.detail,
            "failure_class": self.failure_class or None,
        }


@dataclass(frozen=True)
class ProgramOutcome:
    """How one program of the VCFG fared, from its events."""

    index: int
    state: str  # "not started", or the state of its last event: started, exited, failed
    pid: int | None = None
    exit_status: int | None = None
    signal: str | None = None
    message: str | None = None
    guest_start: float | None = None
    guest_end: float | None = None
    host_start: float | None = None
    host_end: float | None = None

    def describe(self) -> str:
        if self.state == ProgramState.EXITED:
            if self.signal:
                return f"killed by {self.signal}"
            return f"exited with status {self.exit_status}"
        if self.state == ProgramState.FAILED:
            return f"failed to start: {self.message}"
        return "still running" if self.state == ProgramState.STARTED else "not started"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": self.state,
            "pid": self.pid,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "message": self.message,
            "guest_start": self.guest_start,
            "guest_end": self.guest_end,
            "host_start": _rounded(self.host_start),
            "host_end": _rounded(self.host_end),
        }


@dataclass(frozen=True)
class Artifacts:
    """Where a run's repro bundle is, and its files by role."""

    directory: Path
    files: Mapping[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "files": {role: str(path) for role, path in self.files.items()},
        }


@dataclass(frozen=True)
class Report:
    record: RunRecord
    scenario: str | None
    stages: tuple[StageSpan, ...]
    programs: tuple[ProgramOutcome, ...]
    checks: tuple[Check, ...]
    failure: FailureInfo | None
    artifacts: Artifacts | None = None

    @property
    def result(self) -> Result:
        return Result.PASSED if self.failure is None else Result.FAILED

    @property
    def passed(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (`vmtest run --json`)."""
        record = self.record
        return {
            "result": str(self.result),
            "vm": record.name,
            "image": str(record.image),
            "scenario": self.scenario,
            "accel": record.accel,
            "accel_reason": record.accel_reason,
            "failure": self.failure.to_dict() if self.failure else None,
            "boot": boot_phases(record.events),
            "stages": [span_to_dict(span) for span in self.stages],
            "programs": [program.to_dict() for program in self.programs],
            "checks": [check.to_dict() for check in self.checks],
            "actions": list(record.actions),
            "qemu_exit_status": record.returncode,
            "host_seconds": _rounded(record.host_seconds),
            "artifacts": self.artifacts.to_dict() if self.artifacts else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def judge(record: RunRecord, scenario: Scenario) -> Report:
    """Check ``record`` against ``scenario`` (see the module docstring for the failure)."""
    stages = timeline(record.events)
    programs = program_outcomes(record.events, _program_count(record, scenario))
    checks = [
        *_stage_checks(record, scenario, stages),
        *_program_checks(record, scenario, programs),
        *_console_checks(record, scenario),
        _shutdown_check(record, scenario),
    ]
    failed = [check for check in checks if not check.passed]
    failure = record.failure
    if failure is not None and _accepted(failure, checks):
        failure = None
    if failure is None and failed:
        first = failed[0]
        text = f"{first.name}: {first.detail}"
        failure = FailureInfo(first.failure_class, text, text)
    return Report(record, scenario.source, stages, programs, tuple(checks), failure)


def _accepted(failure: FailureInfo, checks: Sequence[Check]) -> bool:
    """The Machine's ProgramFailed expects every program to exit 0; the program checks know
    better (an expected status, or a program stopped by the shutdown)."""
    if failure.kind != ProgramFailed.__name__:
        return False
    return all(check.passed for check in checks if check.program is not None)


def _program_count(record: RunRecord, scenario: Scenario) -> int:
    indexes = [e.index for e in record.events if e.type == EventType.PROGRAM]
    indexes += [p.index for p in scenario.programs]
    known = [index for index in indexes if index is not None]
    return max([record.programs, *(index + 1 for index in known)])


def program_outcomes(events: Sequence[Event], count: int) -> tuple[ProgramOutcome, ...]:
    """One outcome per program index below ``count``, from its events."""
    outcomes = []
    for index in range(count):
        outcome = ProgramOutcome(index, "not started")
        for event in events:
            if not event.is_program(index):
                continue
            state = event.state or outcome.state
            if state == ProgramState.STARTED:
                outcome = ProgramOutcome(
                    index,
                    state,
                    pid=_int(event.get("pid")),
                    guest_start=event.time,
                    host_start=event.host_time,
                )
            else:
                outcome = ProgramOutcome(
                    index,
                    state,
                    pid=_int(event.get("pid")) or outcome.pid,
                    exit_status=event.exit_status,
                    signal=event.signal,
                    message=event.message,
                    guest_start=outcome.guest_start,
                    guest_end=event.time,
                    host_start=outcome.host_start,
                    host_end=event.host_time,
                )
        outcomes.append(outcome)
    return tuple(outcomes)


def _missing_class(record: RunRecord) -> str:
    """The class for something that never happened: the Machine's failure if it saw one."""
    if record.failure is not None:
        return record.failure.kind
    return PoweredOffEarly.__name__ if record.returncode is not None else StageTimedOut.__name__


def _stage_checks(record: RunRecord, scenario: Scenario, spans: Sequence[StageSpan]) -> list[Check]:
    checks = []
    previous: StageSpan | None = None
    for stage in STAGES:
        runs = [span for span in spans if span.stage == stage]
        if stage in scenario.not_reached:
            seen = f"it {runs[0].state}" if runs else "not reached"
            kind = ExpectationFailed.__name__ if runs else ""
            checks.append(
                Check(f"stage {stage} not reached", CheckGroup.STAGES, not runs, seen, kind)
            )
            continue
        span = runs[0] if runs else None
        passed, seen, kind = _stage_outcome(record, span, previous)
        seconds = span.guest_seconds if span is not None and passed else None
        checks.append(
            Check(f"stage {stage} finished", CheckGroup.STAGES, passed, seen, kind, seconds)
        )
        previous = span or previous
    return checks


def _stage_outcome(
    record: RunRecord, span: StageSpan | None, previous: StageSpan | None
) -> tuple[bool, str, str]:
    """(passed, what was seen, failure class) for an expected stage."""
    if span is None:
        return False, "not reached", _missing_class(record)
    if span.state == StageState.FAILED:
        return False, f"failed: {span.message}", StageFailed.__name__
    if span.state != StageState.FINISHED:
        return False, f"{span.state}, never finished", _missing_class(record)
    if (
        previous is not None
        and previous.guest_end is not None
        and span.guest_start is not None
        and span.guest_start < previous.guest_end
    ):
        return False, f"started before stage {previous.stage} finished", ExpectationFailed.__name__
    seconds = span.guest_seconds
    return True, f"in {seconds:.3f} s" if seconds is not None else "finished", ""


def _program_checks(
    record: RunRecord, scenario: Scenario, outcomes: Sequence[ProgramOutcome]
) -> list[Check]:
    if "launch" in scenario.not_reached and not scenario.programs:
        return []  # without launch no program runs
    shutdown = next(
        (e.time for e in record.events if e.type == EventType.SHUTDOWN and e.state == "begun"),
        None,
    )
    checks = []
    for outcome in outcomes:
        expected = scenario.program(outcome.index)
        seen = outcome.describe()
        if expected is not None:
            passed = outcome.state == ProgramState.EXITED and expected.met_by(
                outcome.exit_status, outcome.signal
            )
            kind = _program_class(record, outcome, ExpectationFailed.__name__)
            checks.append(
                Check(
                    expected.describe(),
                    CheckGroup.EXPECTATIONS,
                    passed,
                    seen,
                    "" if passed else kind,
                    program=outcome.index,
                )
            )
            continue
        name = f"program[{outcome.index}] runs and does not fail"
        stopped = (
            shutdown is not None and outcome.guest_end is not None and outcome.guest_end >= shutdown
        )
        if outcome.state == ProgramState.STARTED:
            passed = True
        elif outcome.state == ProgramState.EXITED:
            succeeded = outcome.signal is None and outcome.exit_status == 0
            passed = succeeded or stopped
            if stopped and not succeeded:
                seen += " (stopped by the shutdown)"
        else:
            passed = False
        kind = "" if passed else _program_class(record, outcome, ProgramFailed.__name__)
        checks.append(
            Check(name, CheckGroup.EXPECTATIONS, passed, seen, kind, program=outcome.index)
        )
    return checks


def _program_class(record: RunRecord, outcome: ProgramOutcome, otherwise: str) -> str:
    if outcome.state == ProgramState.FAILED:
        return ProgramFailed.__name__
    if outcome.state in ("not started", ProgramState.STARTED):
        return _missing_class(record)
    return otherwise


def _console_checks(record: RunRecord, scenario: Scenario) -> list[Check]:
    checks = []
    for expected in scenario.console:
        match = expected.regex.search(record.console)
        if match is not None:
            line = record.console.count("\n", 0, match.start()) + 1
            detail = f"line {line}: {_line_at(record.console, match.start())}"
        else:
            detail = f"not found in {record.console.count(chr(10))} lines"
        kind = "" if match else ExpectationFailed.__name__
        checks.append(
            Check(expected.describe(), CheckGroup.EXPECTATIONS, match is not None, detail, kind)
        )
    return checks


def _line_at(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return text[start : end if end >= 0 else len(text)].strip()[:200]


def _shutdown_check(record: RunRecord, scenario: Scenario) -> Check:
    synced = any(e.type == EventType.SHUTDOWN and e.state == "synced" for e in record.events)
    code = record.returncode
    power = ", ".join(e.describe() for e in record.qmp_events if e.name != "NIC_RX_FILTER_CHANGED")
    if record.killed:
        seen, kind = "vmtest killed QEMU at the run's deadline", _missing_class(record)
    elif code is None:
        seen, kind = "QEMU did not run", _missing_class(record)
    elif code != 0:
        seen, kind = f"QEMU exit status {code}", QemuFailed.__name__
    elif synced:
        seen, kind = "vinitd synced the disks; QEMU exit status 0", ""
    else:
        seen, kind = f"QEMU exit status 0 without vinitd's shutdown (QMP: {power or 'none'})", ""
    if scenario.shutdown == ShutdownExpectation.ANY:
        passed = code is not None and not record.killed
        return Check(
            "the VM ends by itself", CheckGroup.EXPECTATIONS, passed, seen, "" if passed else kind
        )
    passed = synced and code == 0 and not record.killed
    return Check(
        "the VM powers off cleanly",
        CheckGroup.EXPECTATIONS,
        passed,
        seen,
        "" if passed else kind or ExpectationFailed.__name__,
    )


# -- rendering ---------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """The stage table, the programs, the checks and the verdict, for people."""
    record = report.record
    lines = [f"vm {record.name}: {record.image} under {record.accel} ({record.accel_reason})"]
    lines += ["", format_table(_stage_rows(report.stages, boot_phases(record.events)))]
    if report.programs:
        lines += ["", format_table(_program_rows(report.programs))]
    if record.actions:
        lines += ["", *(f"action: {action}" for action in record.actions)]
    lines.append("")
    lines += [f"  {'ok' if c.passed else 'FAIL':4}  {c.name}: {c.detail}" for c in report.checks]
    lines.append("")
    if report.failure is None:
        lines.append(f"PASS: {record.name} in {record.host_seconds:.1f} s")
    else:
        lines.append(f"FAIL: {report.failure.kind}: {report.failure.message}")
    if report.artifacts is not None:
        lines.append(f"artifacts: {report.artifacts.directory}")
    return "\n".join(lines) + "\n"


def boot_phases(events: Sequence[Event]) -> dict[str, float] | None:
    """What came before vinitd's first stage, in guest seconds, from its ``init`` event:
    ``kernel`` (the kernel and the initramfs, up to the init script's first line) and
    ``vinitd_start`` (vinitd's imports, up to that event); None without a ``started`` field."""
    init = next((event for event in events if event.type == "init"), None)
    started = init.get("started") if init is not None else None
    if init is None or not isinstance(started, int | float) or isinstance(started, bool):
        return None
    return {
        "kernel": round(float(started), 3),
        "vinitd_start": round(init.time - float(started), 3),
    }


def _stage_rows(
    spans: Sequence[StageSpan], phases: Mapping[str, float] | None = None
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("stage", "state", "guest start", "guest end", "host start", "host end", "duration")
    ]
    if phases is not None:
        kernel, start = phases["kernel"], phases["vinitd_start"]
        rows += [_phase_row("(kernel)", 0.0, kernel), _phase_row("(vinitd start)", kernel, start)]
    rows += [
        (
            span.stage,
            span.state,
            format_seconds(span.guest_start),
            format_seconds(span.guest_end),
            format_seconds(span.host_start),
            format_seconds(span.host_end),
            format_seconds(span.guest_seconds),
        )
        for span in spans
    ]
    return rows


def _phase_row(name: str, begins: float, seconds: float) -> tuple[str, ...]:
    """A row for a part of the boot before the stages: guest times only."""
    return (
        name,
        "-",
        format_seconds(begins),
        format_seconds(begins + seconds),
        "-",
        "-",
        format_seconds(seconds),
    )


def _program_rows(programs: Sequence[ProgramOutcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("program", "pid", "guest start", "guest end", "outcome")]
    rows += [
        (
            str(p.index),
            "-" if p.pid is None else str(p.pid),
            format_seconds(p.guest_start),
            format_seconds(p.guest_end),
            p.describe(),
        )
        for p in programs
    ]
    return rows


def junit_xml(report: Report) -> bytes:
    """JUnit XML: one testsuite, one testcase per check, the console as system-out."""
    record = report.record
    failures = sum(not check.passed for check in report.checks)
    suite = ElementTree.Element(
        "testsuite",
        name=f"vmtest {record.name}",
        tests=str(len(report.checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{record.host_seconds:.3f}",
    )
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (
        ("image", str(record.image)),
        ("accel", record.accel),
        ("scenario", report.scenario or ""),
        ("result", str(report.result)),
        ("failure_class", report.failure.kind if report.failure else ""),
        ("artifacts", str(report.artifacts.directory) if report.artifacts else ""),
    ):
        ElementTree.SubElement(properties, "property", name=name, value=_xml_text(value))
    for check in report.checks:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"vmtest.{_dotless(record.name)}.{check.group}",
            name=_xml_text(check.name),
            time=f"{check.seconds or 0.0:.3f}",
        )
        if not check.passed:
            failure = ElementTree.SubElement(
                case, "failure", type=check.failure_class, message=_xml_text(check.detail)
            )
            if report.failure is not None and report.failure.kind == check.failure_class:
                failure.text = _xml_text(report.failure.message)
    ElementTree.SubElement(suite, "system-out").text = _xml_text(record.console)
    ElementTree.indent(suite)
    data: bytes = ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry: a console may hold control characters."""
    return _NOT_XML.sub("\ufffd", text)


def _dotless(name: str) -> str:
    return name.replace(".", "_")


def span_to_dict(span: StageSpan) -> dict[str, Any]:
    """A stage span as JSON, with its guest duration."""
    return {
        "stage": span.stage,
        "state": span.state,
        "guest_start": span.guest_start,
        "guest_end": span.guest_end,
        "guest_seconds": _rounded(span.guest_seconds),
        "host_start": _rounded(span.host_start),
        "host_end": _rounded(span.host_end),
        "message": span.message,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
