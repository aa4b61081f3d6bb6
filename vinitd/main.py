"""vinitd's entry point: PID 1 of the VM, as a list of stages and their steps.

This is the first, small init: pre-setup (pseudo filesystems, boot disk, VCFG), launch
(``program[0]``, waited for), then power-off. Every stage reports itself on the event port
(docs/events.md); any error is reported on the console and the port, and the VM powers off:
PID 1 never dies with a traceback (that would be a kernel panic).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vinitd import bootdisk, console, mounts, power, shellwords
from vinitd.errors import VinitdError
from vinitd.events import EventChannel, find_port
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG, Privilege, Program

VTTY = "/dev/vtty"
APP_UID = 1000


class StageError(VinitdError):
    """A step failed in a way that stops the boot."""


@dataclass
class Boot:
    """What the stages share."""

    events: EventChannel
    vcfg: VCFG = field(default_factory=VCFG)
    disk: Path | None = None


def mount_base() -> None:
    for entry in mounts.BASE_MOUNTS:
        if not mounts.is_mounted(entry.target):
            mounts.mount(entry)


def pre_setup(boot: Boot) -> None:
    mount_base()
    Path("/tmp").mkdir(exist_ok=True)
    Path("/tmp").chmod(0o1777)
    found = bootdisk.find_boot_disk()
    boot.disk = found.disk
    data = bootdisk.read_vcfg_from_disk(found.disk)
    boot.vcfg = codec.loads(data, source=f"{found.disk} (VCFG)")


def launch(boot: Boot) -> None:
    if not boot.vcfg.program:
        console.log_always("no programs configured")
        return
    program = boot.vcfg.program[0]
    argv = program_argv(program)
    as_app = program.privilege in (Privilege.USER, Privilege.SUPERUSER)
    process = subprocess.Popen(
        argv,
        cwd=program.cwd or "/",
        env=dict(shellwords.expand_env(program.env, {})),
        stdin=subprocess.DEVNULL,
        stdout=_output(program.stdout),
        stderr=_output(program.stderr),
        user=APP_UID if as_app else None,
        group=APP_UID if as_app else None,
        extra_groups=[] if as_app else None,
    )
    boot.events.emit("program", index=0, state="started", pid=process.pid, argv=argv)
    status = process.wait()
    fields: dict[str, object]
    if status >= 0:
        outcome, fields = f"exit status {status}", {"exit_status": status}
    else:
        name = signal.Signals(-status).name
        outcome, fields = f"signal: {name}", {"signal": name}
    console.log_always(f"program[0] pid[{process.pid}] finished with {outcome}")
    boot.events.emit("program", index=0, state="exited", pid=process.pid, **fields)
    console.log_always("no programs still running")


def program_argv(program: Program) -> list[str]:
    """The program's argv with word 0 resolved to an existing path."""
    words = ([program.binary] if program.binary else []) + shellwords.split(program.args)
    if not words:
        raise StageError("no program binary or args defined")
    name = words[0]
    cwd = Path(program.cwd or "/")
    candidates = [Path(name)] if name.startswith("/") else [cwd / name]
    if "/" not in name:
        path = dict(shellwords.expand_env(program.env, {})).get("PATH", "")
        candidates += [Path(d) / name for d in path.split(":") if d]
    for candidate in candidates:
        if candidate.is_file():
            return [str(candidate), *words[1:]]
    raise StageError(f"program {name} can not be found")


def _output(path: str) -> int | None:
    if not path or path == VTTY:
        return None  # the console, until the vtty emulation arrives
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


STAGES: tuple[tuple[str, Callable[[Boot], None]], ...] = (
    ("pre-setup", pre_setup),
    ("launch", launch),
)


def run(boot: Boot) -> power.Action:
    """Run every stage; a failing stage is reported and ends the boot."""
    for name, stage in STAGES:
        boot.events.stage(name, "started")
        try:
            stage(boot)
        except Exception as err:  # PID 1 reports every failure, then powers off
            message = f"can not run {name}: {err}"
            console.log_level("ERROR", message)
            boot.events.stage(name, "failed", message=str(err), error=type(err).__name__)
            return power.Action.POWER_OFF
        boot.events.stage(name, "finished")
    return power.Action.POWER_OFF


def shutdown(boot: Boot, action: power.Action, reason: str) -> None:
    console.log_always("shutting down system")
    boot.events.emit("shutdown", state="begun", action=action.name.lower(), reason=reason)
    power.sync_disks()
    boot.events.emit("shutdown", state="synced")
    boot.events.close()
    power.reboot(action)


def main() -> int:
    with contextlib.suppress(OSError):
        mount_base()  # early, for /sys and the event port; pre-setup reports a failure
    boot = Boot(events=EventChannel(find_port()))
    action = run(boot)
    try:
        shutdown(boot, action, "boot ended")
    except OSError as err:
        console.log_level("ERROR", f"can not power off: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
