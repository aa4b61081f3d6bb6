"""vinitd's entry point: PID 1 of the VM, as a list of stages and their steps.

Stages run in order: pre-setup (pseudo filesystems, boot disk, VCFG), setup (signals, power
button), post-setup, launch (every program); then the supervisor loop reaps the programs
until none is left or a shutdown is asked for, and the VM powers off. Every stage reports
itself on the event port (docs/events.md). Failure policy: an exception escaping a stage is
fatal: it is reported on the console and the port, and the VM powers off with its disks
synced. PID 1 never dies with a traceback (that would be a kernel panic).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vinitd import bootdisk, console, mounts, power, powerbutton, programs
from vinitd.events import EventChannel, find_port
from vinitd.supervisor import Outcome, Supervisor
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG

DEFAULT_TERMINATE_WAIT_MS = 3000


@dataclass
class Boot:
    """What the stages share."""

    events: EventChannel
    vcfg: VCFG = field(default_factory=VCFG)
    disk: Path | None = None
    supervisor: Supervisor | None = None
    button: int | None = None


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


def setup(boot: Boot) -> None:
    wait_ms = boot.vcfg.system.terminate_wait
    if not wait_ms:
        console.log_level("WARNING", "system.terminate-wait is empty, using 3000 ms")
        wait_ms = DEFAULT_TERMINATE_WAIT_MS
    boot.supervisor = Supervisor(boot.events, terminate_wait=wait_ms / 1000)
    boot.supervisor.install_signals()
    with contextlib.suppress(OSError):
        power.disable_ctrl_alt_del()
    device = powerbutton.find_device()
    if device is None:
        console.log_level("WARNING", "can not listen to power off (devices): no power button")
    else:
        try:
            boot.button = powerbutton.open_device(device)
        except OSError as err:
            console.log_level("WARNING", f"can not listen to power off (dev): {err}")


def post_setup(boot: Boot) -> None:
    """DNS cache, NFS, NTP and log shipping will live here; nothing to do yet."""


def launch(boot: Boot) -> None:
    assert boot.supervisor is not None
    specs = [programs.prepare(i, p, {}) for i, p in enumerate(boot.vcfg.program)]
    for spec in specs:
        process = programs.start(spec)
        boot.supervisor.add(spec.index, process, spec.terminate)
        boot.events.emit(
            "program", index=spec.index, state="started", pid=process.pid, argv=list(spec.argv)
        )


STAGES: tuple[tuple[str, Callable[[Boot], None]], ...] = (
    ("pre-setup", pre_setup),
    ("setup", setup),
    ("post-setup", post_setup),
    ("launch", launch),
)


def run(boot: Boot) -> Outcome:
    """Run every stage, then supervise the programs; a failing stage ends the boot."""
    for name, stage in STAGES:
        boot.events.stage(name, "started")
        try:
            stage(boot)
        except Exception as err:  # PID 1 reports every failure, then powers off
            console.log_level("ERROR", f"can not run {name}: {err}")
            boot.events.stage(name, "failed", message=str(err), error=type(err).__name__)
            return Outcome(power.Action.POWER_OFF, f"{name} failed")
        boot.events.stage(name, "finished")
    assert boot.supervisor is not None
    return boot.supervisor.run(button=boot.button)


def shutdown(boot: Boot, outcome: Outcome) -> None:
    console.log_always("shutting down system")
    power.sync_disks()
    with contextlib.suppress(OSError):
        mounts.remount_readonly("/")
    boot.events.emit("shutdown", state="synced", action=outcome.action.name.lower())
    boot.events.close()
    power.reboot(outcome.action)


def main() -> int:
    with contextlib.suppress(OSError):
        mount_base()  # early, for /sys and the event port; pre-setup reports a failure
    boot = Boot(events=EventChannel(find_port()))
    try:
        outcome = run(boot)
    except Exception as err:  # a bug in vinitd itself: still report it and power off
        console.log_level("ERROR", f"vinitd failed: {type(err).__name__}: {err}")
        boot.events.emit("failure", message=str(err), error=type(err).__name__)
        outcome = Outcome(power.Action.POWER_OFF, "vinitd failed")
    try:
        shutdown(boot, outcome)
    except OSError as err:
        console.log_level("ERROR", f"can not power off: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
