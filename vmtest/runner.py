"""One run of a scenario: prepare the VM, boot it, act on it, and record how it ended.

`prepare` checks everything that can be checked before QEMU starts (the image's layout, the
scenario's VCFG override, applied to a copy, the boot files and the accelerator), so that
bad input fails fast. `execute` boots the VM and follows it until QEMU exits or the run's
deadline passes, performing the scenario's actions when their trigger shows up; it returns a
`RunRecord` for `vmtest.report.judge`.

A run does not stop at the first sign of failure: vinitd powers the VM off after a failed
stage, and the kernel after a panic (``panic=-1``, ``-no-reboot``), so QEMU's exit is the
natural end. Only the deadline ends a run early; the failure then says what was awaited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from vmtest import bootfiles, scenario
from vmtest.accel import Accel
from vmtest.errors import QmpError
from vmtest.events import Event
from vmtest.failures import (
    MachineFailure,
    NoKernelOutput,
    ProgramFailed,
    QemuStartFailed,
    ShutdownHung,
    StageTimedOut,
    StillRunningAfterPowerOff,
)
from vmtest.machine import BootMode, Machine
from vmtest.report import FailureInfo, RunRecord
from vmtest.scenario import Action, ActionKind, Scenario

log = logging.getLogger(__name__)

# A whole run's deadline in seconds under KVM (scaled like every deadline: x3 under TCG).
DEFAULT_TIMEOUT = 60.0
POLL_SECONDS = 0.05
OVERRIDE_IMAGE = "scenario-image.raw"


def prepare(
    image: Path,
    plan: Scenario,
    *,
    workdir: Path,
    accel: Accel | str = Accel.AUTO,
    boot: BootMode | str = BootMode.DIRECT,
) -> Machine:
    """The Machine for a run, checked before it boots; with a ``[vcfg]`` override, on a
    copy of ``image`` in ``workdir`` (`vmtest.scenario.apply_vcfg`)."""
    bootfiles.read_vcfg_json(image)  # ImageUnsupported before anything else is done
    booted = image
    if plan.vcfg is not None:
        booted = scenario.apply_vcfg(plan, image, workdir / OVERRIDE_IMAGE)
    vm = Machine(booted, accel=accel, boot=boot, workdir=workdir)
    # Planning extracts the boot files and decides the accelerator (auto: probes KVM).
    log.debug("QEMU command of %s:\n%s", vm.name, vm.explain())
    return vm


@dataclass
class _Armed:
    """An action waiting for its trigger, then for its delay."""

    action: Action
    due: float | None = None  # the monotonic time it fires, once triggered
    done: bool = False


def execute(
    vm: Machine, plan: Scenario, *, timeout: float | None = None, console: TextIO | None = None
) -> RunRecord:
    """Boot ``vm`` and follow it to its end; ``timeout`` (seconds, as is) defaults to
    `DEFAULT_TIMEOUT` scaled for the accelerator; ``console`` receives the console live."""
    limit = timeout if timeout is not None else vm.scaled(DEFAULT_TIMEOUT)
    performed: list[str] = []
    try:
        vm.start()
    except QemuStartFailed as err:
        return _record(vm, FailureInfo.of(err), performed, killed=False, seconds=vm.elapsed)
    armed = [_Armed(action) for action in plan.actions]
    shown = 0
    overdue: MachineFailure | None = None
    deadline = time.monotonic() + limit
    while vm.running:
        shown = _show(vm.console, shown, console)
        _act(vm, armed, performed)
        if time.monotonic() >= deadline:
            overdue = _overdue(vm, plan, limit)
            if overdue is not None:
                vm.kill()
                break
        time.sleep(POLL_SECONDS)
    seconds = vm.elapsed
    vm.close()  # lets the console and the event port drain to their end
    _show(vm.console, shown, console)
    if overdue is not None:
        failure: FailureInfo | None = FailureInfo.of(overdue)
    else:
        seen = vm.failure()
        failure = FailureInfo.of(seen) if seen is not None else None
    return _record(vm, failure, performed, killed=overdue is not None, seconds=seconds)


def _record(
    vm: Machine, failure: FailureInfo | None, performed: list[str], *, killed: bool, seconds: float
) -> RunRecord:
    return RunRecord(
        name=vm.name,
        image=vm.image,
        accel=str(vm.accel),
        accel_reason=vm.accel_reason,
        events=tuple(vm.events),
        console=vm.console,
        qmp_events=tuple(vm.qmp_events),
        returncode=vm.returncode,
        killed=killed,
        programs=len(vm.vcfg.program),
        failure=failure,
        host_seconds=seconds,
        actions=tuple(performed),
    )


def _show(text: str, shown: int, stream: TextIO | None) -> int:
    if stream is not None and len(text) > shown:
        stream.write(text[shown:])
        stream.flush()
    return len(text)


def _act(vm: Machine, armed: list[_Armed], performed: list[str]) -> None:
    now = time.monotonic()
    for item in armed:
        if item.done:
            continue
        if item.due is None and _triggered(item.action, vm.events, vm.console):
            item.due = now + item.action.delay
        if item.due is None or now < item.due:
            continue
        item.done = True
        what = item.action.describe()
        try:
            if item.action.do == ActionKind.POWERDOWN:
                vm.powerdown()
            else:
                vm.reset()
        except QmpError as err:  # QEMU may have ended in the meantime
            log.warning("%s: %s: %s", vm.name, what, err)
            performed.append(f"{what}: not done ({err.problem})")
            continue
        performed.append(f"{what}: done {vm.elapsed:.2f} s after QEMU started")


def _triggered(action: Action, events: list[Event], console: str) -> bool:
    if action.after_stage is not None:
        return any(event.is_stage(action.after_stage, "finished") for event in events)
    if action.after_console is not None:
        return scenario.ConsoleExpectation(action.after_console).regex.search(console) is not None
    return False


def _overdue(vm: Machine, plan: Scenario, limit: float) -> MachineFailure | None:
    """Why the run is still going at its deadline: the Machine's own diagnosis of the first
    thing still awaited, or None if QEMU ended at the last moment.

    Each wait is asked with no time left, so that the Machine judges what it shows; a
    timeout it reports is restated with the run's deadline."""
    seen = vm.failure()
    if seen is not None and not isinstance(seen, ProgramFailed):
        return seen  # a failed stage or a panic, and QEMU has not ended yet
    try:
        for stage in plan.expected_stages:
            vm.wait_for_stage(stage, timeout=0)
        for expected in plan.programs:
            vm.wait_for_program(expected.index, "exited", timeout=0)
        for console in plan.console:
            vm.wait_for_console(console.regex, timeout=0)
        vm.wait_for_shutdown(timeout=0)
    except StageTimedOut as err:
        return StageTimedOut(
            err.awaited, stage=err.stage, timeout=limit, context=err.context, hint=err.hint
        )
    except NoKernelOutput as err:
        return NoKernelOutput(limit, context=err.context, hint=err.hint)
    except StillRunningAfterPowerOff as err:
        return StillRunningAfterPowerOff(limit, context=err.context)
    except ShutdownHung as err:
        return ShutdownHung(limit, running=err.running, context=err.context)
    except MachineFailure as err:
        return err
    return None
