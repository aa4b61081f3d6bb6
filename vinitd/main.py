"""vinitd's entry point: PID 1 of the VM, as a list of stages and their steps.

Each step has a failure policy: *fatal* steps stop the boot (the error is reported on the
console and the event port, programs are stopped, disks synced, and the VM powers off);
*degraded* steps warn and go on. The policy follows vorteil's (vinitd spec §12):

    pre-setup   mounts (fatal), console and log level, boot disk and VCFG (fatal),
                root remount options (degraded), disk growth (fatal)
    setup       stdout mode, signals, power button, /sbin links (degraded), kernel version,
                host name (degraded); then in parallel: network (fatal), system config
                (degraded), /etc files (fatal unless read-only); then DHCP's search domains
                and host name
    post-setup  DNS cache, NFS, NTP, log shipping: not yet (the stage and its events stay)
    launch      every program prepared (fatal), bootstraps run, programs started
    then        the supervisor reaps programs until none is left or a shutdown is asked for

PID 1 never dies with a traceback: that would be a kernel panic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vinitd import (
    bootdisk,
    console,
    etcfiles,
    mounts,
    power,
    powerbutton,
    programs,
    remount,
    sysconfig,
)
from vinitd.events import STAGE_NAMES, EventChannel, find_port
from vinitd.supervisor import Outcome, Supervisor
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG
from vinitd.vtty import Vtty

VERSION = "0.1.0"
DEFAULT_TERMINATE_WAIT_MS = 3000
INIT_PATH = "/vorteil/vinitd"
HELPERS = {"poweroff": signal.SIGPWR, "reboot": signal.SIGINT}
FLUSH_SECONDS = 1.0


@dataclass
class Boot:
    """What the stages share."""

    events: EventChannel
    cmdline: str = ""
    vtty: Vtty | None = None
    vcfg: VCFG = field(default_factory=VCFG)
    disk: Path | None = None
    read_only: bool = False
    hostname: str = ""
    dhcp_dns: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    supervisor: Supervisor | None = None
    button: int | None = None
    values: programs.HypervisorValues = field(default_factory=programs.HypervisorValues)

    @property
    def console_fd(self) -> int:
        return self.vtty.open_writer() if self.vtty is not None else 1


def mount_base() -> None:
    for entry in mounts.BASE_MOUNTS:
        if not mounts.is_mounted(entry.target):
            mounts.mount(entry)


def pre_setup(boot: Boot) -> None:
    mount_base()
    _dev_links()
    with contextlib.suppress(OSError):  # a read-only root keeps the image's /tmp (vorteil too)
        Path("/tmp").mkdir(mode=0o1777, exist_ok=True)
        Path("/tmp").chmod(0o1777)
    found = bootdisk.find_boot_disk()
    boot.disk = found.disk
    data = bootdisk.read_vcfg_from_disk(found.disk)
    boot.vcfg = codec.loads(data, source=f"{found.disk} (VCFG)")
    words = boot.cmdline.split()
    boot.read_only = "ro" in words
    problem = remount.remount_root(cmdline=boot.cmdline)
    if problem:
        console.log_level("ERROR", problem)
    from vinitd import growdisk  # only here: the ioctls and GPT code are needed once

    growdisk.grow_disk(found.disk)
    console.log_level("DEBUG", "pre-setup finished successfully")


def _dev_links() -> None:
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        with contextlib.suppress(OSError):
            Path("/dev", name).symlink_to(target)


def setup(boot: Boot) -> None:
    system = boot.vcfg.system
    console.log_level("DEBUG", f"output mode: {system.stdout_mode or ''}")
    if boot.vtty is not None:
        boot.vtty.set_mode(system.stdout_mode)
    wait_ms = system.terminate_wait
    if not wait_ms:
        console.log_level(
            "WARNING",
            "system.terminate-wait is empty. This suggests vorteil binary is out of date",
        )
        wait_ms = DEFAULT_TERMINATE_WAIT_MS
    boot.supervisor = Supervisor(
        boot.events, terminate_wait=wait_ms / 1000, console_fd=boot.console_fd
    )
    boot.supervisor.install_signals()
    _power_button(boot)
    if not boot.read_only:
        _helper_links()
    with contextlib.suppress(OSError):
        power.disable_ctrl_alt_del()
    line = sysconfig.kernel_version_line()
    if line:
        console.log_always(line)
    boot.hostname = sysconfig.choose_hostname(boot.vcfg)
    _parallel_setup(boot)
    console.log_level("DEBUG", "system setup successful")


def _power_button(boot: Boot) -> None:
    device = powerbutton.find_device()
    if device is None:
        console.log_level("WARNING", "can not listen to power off (devices): no power button")
        return
    try:
        boot.button = powerbutton.open_device(device)
    except OSError as err:
        console.log_level("WARNING", f"can not listen to power off (dev): {err}")


def _helper_links() -> None:
    """/sbin/poweroff and /sbin/reboot run vinitd, which signals PID 1 (see `main`)."""
    for name in HELPERS:
        link = Path("/sbin", name)
        try:
            link.parent.mkdir(mode=0o755, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(INIT_PATH)
        except OSError as err:
            console.log_level("WARNING", f"can not create {link}: {err}")


class _Task(threading.Thread):
    """One function in a thread of its own; `outcome` joins it, then returns or raises.

    (concurrent.futures would do, but it and the logging it imports cost 50 to 75 ms of boot
    under emulation.)
    """

    def __init__(self, name: str, function: Callable[[], object]) -> None:
        super().__init__(name=f"setup-{name}", daemon=True)
        self._function = function
        self._value: object = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._function()
        except BaseException as err:  # handed to the joining thread by outcome()
            self._error = err

    def outcome(self) -> object:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


def _parallel_setup(boot: Boot) -> None:
    """Network (fatal), system config (degraded) and /etc (fatal) at once, then DHCP's extras.
    Every task ends before a failure is raised: nothing writes during the shutdown."""

    def system() -> None:
        sysconfig.configure_system(boot.vcfg, boot.hostname, cmdline=boot.cmdline)

    def etc() -> None:
        etcfiles.write_etc(
            user=boot.vcfg.system.user,
            hostname=boot.hostname,
            dns_local=False,  # resolv.conf is written by post-setup's DNS step
        )

    tasks = [_Task("network", lambda: _network(boot)), _Task("system", system)]
    if not boot.read_only:
        tasks.append(_Task("etc", etc))
    for task in tasks:
        task.start()
    for task in tasks:
        task.join()
    result = tasks[0].outcome()  # the network's; then the others' failures, if any
    for task in tasks[1:]:
        task.outcome()
    boot.search = tuple(getattr(result, "search", ()))
    boot.dhcp_dns = tuple(getattr(result, "dns", ()))
    offered = getattr(result, "host_name", "")
    if offered:
        boot.hostname = sysconfig.apply_dhcp_hostname(
            offered, boot.hostname, read_only=boot.read_only
        )
    interfaces = getattr(result, "interfaces", ())
    boot.values = programs.HypervisorValues(
        hostname=boot.hostname, ips=tuple(i.address for i in interfaces)
    )


def _network(boot: Boot) -> object:
    if not boot.vcfg.network:
        return None
    from vinitd import network  # imported only when there is a network to set up

    result = network.configure_network(boot.vcfg, events=boot.events, dhcp_host_name=boot.hostname)
    console.log_level("DEBUG", "network configured")
    return result


def post_setup(boot: Boot) -> None:
    """DNS; the DNS cache, NFS mounts, NTP and log shipping will live here too."""
    _dns(boot)
    console.log_level("DEBUG", "post setup finished successfully")


def _dns(boot: Boot) -> None:
    """The name servers: DHCP's if it gave any, else ``system.dns`` (vinitd spec §8.2).

    Until the local DNS cache exists, resolv.conf names the servers themselves (vorteil
    pointed it at its cache on 127.0.0.1). An image's own resolv.conf is left alone, apart
    from DHCP's search domains.
    """
    servers = list(boot.dhcp_dns) or _configured_dns(boot)
    console.log_always(f"dns\t\t: {', '.join(servers) if servers else 'none'}")
    if boot.read_only:
        return
    path = Path("/etc/resolv.conf")
    if path.exists():
        etcfiles.append_search_domains(boot.search)
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dangling link (Debian's points into /run)
    path.write_text(etcfiles.resolv_conf(servers, boot.search))
    path.chmod(0o644)


def _configured_dns(boot: Boot) -> list[str]:
    """``system.dns`` with ``$KEY`` substituted; entries that are not IP addresses dropped."""
    import ipaddress  # only on this path

    from vinitd import shellwords

    values = programs.base_environment(boot.values)
    servers: list[str] = []
    for entry in boot.vcfg.system.dns:
        text = shellwords.substitute(entry, values)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            continue
        if text not in servers:
            servers.append(text)
    return servers


def launch(boot: Boot) -> None:
    supervisor = boot.supervisor
    if supervisor is None:
        raise RuntimeError("launch before setup")
    base = programs.base_environment(boot.values)
    specs = [programs.prepare(i, p, base) for i, p in enumerate(boot.vcfg.program)]
    console.log_level("DEBUG", f"starting {len(specs)} programs")
    from vinitd.bootstrap_run import bootstrap_in_background  # threads only when needed

    for spec in specs:
        supervisor.expect(spec.index)
        if spec.bootstrap:
            bootstrap_in_background(spec, supervisor.submit, events=boot.events)
        else:
            supervisor.submit(spec)


# Each of the protocol's stage names (`vinitd.events.STAGE_NAMES`, in order) and its step.
STAGES: tuple[tuple[str, Callable[[Boot], None]], ...] = tuple(
    zip(STAGE_NAMES, (pre_setup, setup, post_setup, launch), strict=True)
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
            outcome = Outcome(power.Action.POWER_OFF, f"{name} failed")
            _begin_shutdown(boot, outcome)
            return outcome
        boot.events.stage(name, "finished")
    if boot.supervisor is None:
        raise RuntimeError("no supervisor after setup")
    return boot.supervisor.run(button=boot.button)


def _begin_shutdown(boot: Boot, outcome: Outcome) -> None:
    """The first shutdown lines when no supervisor loop ran (a stage or vinitd failed)."""
    console.log_always("shutting down applications")
    action = outcome.action.name.lower()
    boot.events.emit("shutdown", state="begun", action=action, reason=outcome.reason)


def shutdown(boot: Boot, outcome: Outcome) -> None:
    console.log_always("shutting down system")
    if boot.vtty is not None:
        boot.vtty.flush(FLUSH_SECONDS)
    power.sync_disks()
    with contextlib.suppress(OSError):
        mounts.remount_readonly("/")
    boot.events.emit("shutdown", state="synced", action=outcome.action.name.lower())
    boot.events.close()
    power.reboot(outcome.action)


def signal_init(name: str) -> int:
    """``/sbin/poweroff`` and ``/sbin/reboot``: ask PID 1 to shut down (matched on basename)."""
    try:
        os.kill(1, HELPERS[name])
    except OSError as err:
        print(f"can not send signal to process 1: {err}", file=sys.stderr)
        return 1
    return 0


def main(started: float | None = None) -> int:
    """vinitd as PID 1 (or as /sbin/poweroff, /sbin/reboot); ``started`` is the monotonic time
    the launcher script began, before vinitd's imports (reported in the init event)."""
    invoked = Path(sys.argv[0]).name if sys.argv else ""
    if os.getpid() != 1 and invoked in HELPERS:
        return signal_init(invoked)
    with contextlib.suppress(OSError):
        mount_base()  # early, for /sys and the event port; pre-setup reports a failure
    boot = Boot(events=EventChannel(find_port()))
    launched = {"started": round(started, 6)} if started is not None else {}
    boot.events.emit("init", state="started", pid=os.getpid(), version=VERSION, **launched)
    with contextlib.suppress(OSError):
        boot.cmdline = Path("/proc/cmdline").read_text().strip()
    _start_console(boot)
    try:
        outcome = run(boot)
    except Exception as err:  # a bug in vinitd itself: still report it and power off
        console.log_level("ERROR", f"vinitd failed: {type(err).__name__}: {err}")
        boot.events.emit("failure", message=str(err), error=type(err).__name__)
        outcome = Outcome(power.Action.POWER_OFF, "vinitd failed")
        _begin_shutdown(boot, outcome)
    try:
        shutdown(boot, outcome)
    except OSError as err:
        console.log_level("ERROR", f"can not power off: {err}")
        time.sleep(1)
        return 1
    return 0


def _start_console(boot: Boot) -> None:
    console.configure_level()
    try:
        vtty = Vtty()
        vtty.start()
    except OSError as err:
        console.log_always(f"can not setup logging: {err}")
        return
    boot.vtty = vtty
    console.set_output(vtty.open_writer())


if __name__ == "__main__":
    sys.exit(main())
