"""`Machine`: one vorteil image booted in QEMU, followed stage by stage.

    from vmtest import Machine, format_timeline

    with Machine("hello.raw", accel="tcg") as vm:  # entering starts QEMU
        vm.wait_for_stage("pre-setup")
        vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0
        print(format_timeline(vm.timeline))

A Machine reads the image's VCFG (memory, CPUs, ports to forward), extracts its boot files,
chooses the accelerator (`vmtest.accel`) and builds a QEMU command whose every option says
why it is there (`Machine.explain`). Once started it captures the serial console (to
``console.log`` and memory), the event port (`vmtest.events`) and QMP's events.

Waits. Every wait has a deadline. The defaults (`DEADLINES`) are seconds under KVM,
multiplied by the timeout scale: 1 under KVM, 3 under TCG, or ``timeout_scale``. A
``timeout=`` given to a wait is taken as is (`Machine.scaled` converts KVM seconds). While
waiting, what the VM shows is judged by `vmtest.diagnosis`: a kernel panic, a stage 0
failure or a failed stage ends the wait at once with the matching `vmtest.failures` class,
and so do QEMU ending before the awaited thing and the deadline.

Lifetime. QEMU dies with its owner: the child asks for SIGKILL when the thread that started
it ends (``PR_SET_PDEATHSIG``), `close` (and leaving the ``with`` block) kills it, and so does
a finalizer when the Machine is collected or the interpreter exits. A Machine boots once and
is used from one thread at a time.
"""

from __future__ import annotations

import enum
import logging
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from vinitd.errors import VinitdError
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG
from vmtest import bootfiles, command
from vmtest.accel import Accel, Decision, decide
from vmtest.command import Argument, CommandSpec, PortForward, Sockets
from vmtest.console import Console
from vmtest.diagnosis import Expectation
from vmtest.errors import (
    BootModeUnavailable,
    ImageUnsupported,
    MachineOptionError,
    QmpError,
    VmtestError,
)
from vmtest.events import Event, EventStream, StageSpan, StageState, timeline
from vmtest.failures import MachineFailure, QemuStartFailed
from vmtest.iothread import IoThread, SocketTap
from vmtest.process import signal_name, spawn
from vmtest.qmp import QmpConnection, QmpEvent
from vmtest.watch import Identity, Watch

log = logging.getLogger(__name__)

CONSOLE_LOG = "console.log"
QEMU_STDERR = "qemu.stderr"
# sun_path holds 108 bytes; longer socket paths go to a short directory under /tmp.
MAX_SOCKET_PATH = 100


class BootMode(enum.StrEnum):
    DIRECT = "direct"  # -kernel/-initrd/-append from the image's OS partition
    UEFI = "uefi"
    BIOS = "bios"


class ProgramTarget(enum.StrEnum):
    """What `Machine.wait_for_program` waits for."""

    STARTED = "started"
    EXITED = "exited"  # whatever the status
    SUCCEEDED = "succeeded"  # exited with status 0; anything else raises ProgramFailed


@dataclass(frozen=True)
class Deadlines:
    """Default deadlines in seconds under KVM; `Machine` multiplies them by its scale."""

    start: float = 10.0  # QEMU up and answering QMP
    stage: float = 30.0
    program: float = 30.0
    console: float = 30.0
    shutdown: float = 20.0
    settle: float = 1.0  # after a fatal sign, for QEMU to end and the console to finish
    command: float = 5.0  # one QMP command


DEADLINES = Deadlines()
TIMEOUT_SCALES = {Accel.KVM: 1.0, Accel.TCG: 3.0}


@dataclass
class _Resources:
    """What must be released even if the Machine is never closed (see `weakref.finalize`)."""

    process: subprocess.Popen[bytes] | None = None
    io: IoThread | None = None
    qmp: QmpConnection | None = None
    temporary: tuple[Path, ...] = ()

    def release(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.qmp is not None:
            self.qmp.close()  # ends the client's tasks before their loop stops
        if self.io is not None:
            self.io.stop()
        for directory in self.temporary:
            shutil.rmtree(directory, ignore_errors=True)


class Machine:
    """A vorteil image in QEMU; see the module docstring for waits, deadlines and lifetime.

    ``image`` is a raw disk image built by imagekit. ``boot`` is "direct" (uefi and bios are
    not available yet); ``accel`` is "auto", "kvm" or "tcg" (`vmtest.accel`).
    ``memory_mib`` and ``cpus`` override the VCFG's ``[vm]``; ``writable`` boots the image
    itself rather than a snapshot; ``forward_ports`` forwards every port the VCFG's
    ``[[network]]`` sections declare (see `forwards`); ``extra_kernel_args`` are added to the
    image's kernel command line (later words win: ``init=/nope`` replaces the image's init);
    ``extra_arguments`` are QEMU options added at the end of the command, each with its reason
    (``Argument("-S", None, "start paused for gdb")``).
    An image whose VCFG does not decode still boots (vinitd's refusal may be the test): the
    Machine warns, keeps the problem in ``vcfg_problem`` and uses vmtest's defaults.
    ``workdir`` keeps ``console.log`` and ``qemu.stderr`` (default: a temporary directory,
    removed by `close`); ``name`` names the VM in logs (default: the VCFG's info.name);
    ``timeout_scale`` replaces the scale of the default deadlines.
    """

    def __init__(
        self,
        image: Path | str,
        *,
        boot: BootMode | str = BootMode.DIRECT,
        accel: Accel | str = Accel.AUTO,
        memory_mib: int | None = None,
        cpus: int | None = None,
        writable: bool = False,
        forward_ports: bool = True,
        workdir: Path | str | None = None,
        name: str | None = None,
        timeout_scale: float | None = None,
        extra_kernel_args: Sequence[str] = (),
        extra_arguments: Sequence[Argument] = (),
    ) -> None:
        self.image = Path(image)
        self.boot = _choice(BootMode, boot, "boot")
        if self.boot != BootMode.DIRECT:
            raise BootModeUnavailable(str(self.boot))
        self.requested_accel = _choice(Accel, accel, "accel")
        for option, value in (("memory_mib", memory_mib), ("cpus", cpus)):
            if value is not None and value < 1:
                raise MachineOptionError(f"{option} must be at least 1, not {value}")
        if timeout_scale is not None and timeout_scale <= 0:
            raise MachineOptionError(f"timeout_scale must be positive, not {timeout_scale}")
        self.vcfg, self.vcfg_problem = _read_vcfg(self.image)
        self.name = _safe_name(name or self.vcfg.info.name or self.image.stem)
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.writable = writable
        self.forward_ports = forward_ports
        self.extra_kernel_args = tuple(extra_kernel_args)
        self.extra_arguments = tuple(extra_arguments)
        self.log = log.getChild(self.name)
        if self.vcfg_problem:
            self.log.warning(
                "%s: the VCFG does not decode (%s); sizes and ports are vmtest's defaults",
                self.image,
                self.vcfg_problem,
            )
        self._workdir_given = Path(workdir) if workdir is not None else None
        self._timeout_scale = timeout_scale
        self._plan: _Plan | None = None
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._watch: Watch | None = None
        self._taps: tuple[SocketTap, ...] = ()
        self._qmp: QmpConnection | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "running" if self.running else ("ended" if self._watch else "not started")
        return f"<Machine {self.name} {self.image} {state}>"

    # -- the command -----------------------------------------------------------------------

    @property
    def arguments(self) -> tuple[Argument, ...]:
        """The QEMU options with their reasons (the first use chooses the accelerator)."""
        return self._planned().arguments

    @property
    def argv(self) -> list[str]:
        """The QEMU command line as a list of words."""
        return command.argv(self.arguments)

    def explain(self) -> str:
        """The command, one option per line, each with the reason it is there."""
        return command.explain(self.arguments)

    @property
    def accel(self) -> Accel:
        """The accelerator in use (for "auto": the probe's decision)."""
        return self._planned().decision.accel

    @property
    def accel_reason(self) -> str:
        """Why that accelerator: requested, or what the probe found."""
        return self._planned().decision.reason

    @property
    def timeout_scale(self) -> float:
        if self._timeout_scale is not None:
            return self._timeout_scale
        return TIMEOUT_SCALES[self.accel]

    def scaled(self, seconds: float) -> float:
        """``seconds`` under KVM, as a deadline for this VM's accelerator."""
        return seconds * self.timeout_scale

    @property
    def forwards(self) -> tuple[PortForward, ...]:
        """The port forwards: host loopback port to guest port, for every network."""
        return self._planned().forwards

    @property
    def kernel_args(self) -> str:
        return self._planned().kernel_args

    @property
    def workdir(self) -> Path:
        """Where console.log and qemu.stderr are written."""
        return self._planned().workdir

    @property
    def console_log(self) -> Path:
        return self.workdir / CONSOLE_LOG

    def _planned(self) -> _Plan:
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> _Plan:
        workdir = self._workdir_given
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"vmtest-{self.name}-"))
            self._resources.temporary += (workdir,)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            files = bootfiles.extract(self.image)
        except VinitdError as err:
            raise ImageUnsupported(str(err), source=str(self.image)) from err
        decision = decide(self.requested_accel, files.kernel)
        if self.forward_ports:
            networks = command.plan_forwards(self.vcfg.network)
        else:
            networks = tuple(() for _ in self.vcfg.network)
        spec = CommandSpec(
            name=self.name,
            image=self.image.resolve(),
            boot_files=files,
            kernel_args=" ".join([files.cmdline, *self.extra_kernel_args]),
            accel=decision,
            memory_mib=command.memory_for(self.vcfg, self.memory_mib),
            cpus=command.cpus_for(self.vcfg, self.cpus),
            writable=self.writable,
            networks=networks,
            sockets=self._socket_paths(workdir),
        )
        return _Plan(spec, command.build(spec) + self.extra_arguments, workdir)

    def _socket_paths(self, workdir: Path) -> Sockets:
        directory = workdir.resolve()
        if len(str(directory / "console.sock")) > MAX_SOCKET_PATH:
            directory = Path(tempfile.mkdtemp(prefix="vmtest-"))
            self._resources.temporary += (directory,)
        return Sockets(
            directory / "console.sock", directory / "events.sock", directory / "qmp.sock"
        )

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> Machine:
        """Start QEMU and connect to it; QemuStartFailed if it does not come up."""
        if self._watch is not None:
            raise VmtestError(f"{self.name}: already started (a Machine boots once)")
        plan = self._planned()
        try:
            self._launch(plan)
        except BaseException:
            self.close()
            raise
        return self

    def _launch(self, plan: _Plan) -> None:
        sockets = plan.spec.sockets
        argv = command.argv(plan.arguments)
        identity = Identity(
            name=self.name,
            accel=str(plan.decision.accel),
            workdir=self._workdir_given,
            argv=tuple(argv),
            stderr_path=plan.workdir / QEMU_STDERR,
        )
        watch = Watch(
            Console(plan.workdir / CONSOLE_LOG),
            EventStream(logger=self.log),
            identity,
            logger=self.log,
            settle=self.scaled(DEADLINES.settle),
        )
        self._watch = watch
        io = IoThread(f"vmtest-{self.name}")
        self._resources.io = io
        for path in (sockets.console, sockets.events, sockets.qmp):
            path.unlink(missing_ok=True)
        self._taps = (
            SocketTap(
                io,
                sockets.console,
                on_data=watch.console_data,
                on_close=watch.console_ended,
                name=f"{self.name} console",
            ),
            SocketTap(
                io,
                sockets.events,
                on_data=watch.event_data,
                on_close=watch.events_ended,
                name=f"{self.name} events",
            ),
        )
        for tap in self._taps:
            tap.listen()
        qmp = QmpConnection(io, name=self.name, clock=watch.clock, on_event=watch.qmp_event)
        self._qmp = self._resources.qmp = watch.qmp = qmp
        self.log.info("starting QEMU (%s, timeout scale %g)", self.accel, self.timeout_scale)
        self.log.debug("argv: %s", argv)
        watch.started = time.monotonic()
        try:
            process = spawn(argv, stdout=subprocess.DEVNULL, stderr=plan.workdir / QEMU_STDERR)
        except OSError as err:
            raise QemuStartFailed(
                f"cannot run {argv[0]}: {err.strerror}",
                argv=argv,
                returncode=None,
                stderr="",
                context=watch.context(),
            ) from err
        self._resources.process = process
        watch.process = process
        self._connect_qmp(qmp, sockets.qmp, self.scaled(DEADLINES.start))
        self.log.info("QEMU %s up, pid %d, logs in %s", qmp.version, process.pid, plan.workdir)

    def _connect_qmp(self, qmp: QmpConnection, path: Path, limit: float) -> None:
        watch = self._watching()
        deadline = time.monotonic() + limit
        problem = "no socket yet"
        while True:
            if path.exists():  # connecting earlier only makes qemu.qmp log errors
                try:
                    qmp.connect(path, timeout=self.scaled(DEADLINES.command))
                    return
                except QmpError as err:
                    problem = err.problem
            code = watch.returncode
            if code is not None:
                raise QemuStartFailed(
                    f"QEMU exited with {signal_name(code)} at start",
                    argv=watch.identity.argv,
                    returncode=code,
                    stderr=watch.stderr,
                    context=watch.context(),
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise QemuStartFailed(
                    f"QEMU's QMP socket did not answer in {limit:.1f} s ({problem})",
                    argv=watch.identity.argv,
                    returncode=watch.returncode,
                    stderr=watch.stderr,
                    context=watch.context(),
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL QEMU now (if it runs) and reap it."""
        process = self._resources.process
        if process is None or process.poll() is not None:
            return
        if self._watch is not None:
            self._watch.killed = True
        process.kill()
        process.wait()
        self.log.info("QEMU killed")

    def close(self) -> None:
        """Kill QEMU if it still runs and release everything; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        if self._watch is not None and all(tap.connected.is_set() for tap in self._taps):
            self._watch.drain(DEADLINES.settle)
        for tap in self._taps:
            tap.close()
        self._finalizer()
        if self._plan is not None:  # a killed QEMU leaves its QMP socket behind
            sockets = self._plan.spec.sockets
            for path in (sockets.console, sockets.events, sockets.qmp):
                path.unlink(missing_ok=True)
        if self._watch is not None:
            with self._watch.changed:
                self._watch.console.close(self._watch.clock())

    def __enter__(self) -> Machine:
        if self._watch is None:
            self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        process = self._resources.process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        return self._watch is not None and self._watch.returncode is None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status once it ended (negative: killed by that signal)."""
        return self._watch.returncode if self._watch is not None else None

    @property
    def elapsed(self) -> float:
        """Host seconds since QEMU started (0 before)."""
        return self._watch.clock() if self._watch is not None else 0.0

    @property
    def console(self) -> str:
        """The console text so far (UTF-8, carriage returns dropped)."""
        if self._watch is None:
            return ""
        with self._watch.changed:
            return self._watch.console.text

    @property
    def events(self) -> list[Event]:
        """The events so far, in the order they arrived."""
        if self._watch is None:
            return []
        with self._watch.changed:
            return list(self._watch.stream.events)

    @property
    def timeline(self) -> tuple[StageSpan, ...]:
        """One span per stage run, with guest times and host times since QEMU started."""
        return timeline(self.events)

    @property
    def qmp_events(self) -> list[QmpEvent]:
        return self._qmp.events if self._qmp is not None else []

    @property
    def stderr(self) -> str:
        """What QEMU wrote to its standard error."""
        return self._watch.stderr if self._watch is not None else ""

    def failure(self) -> MachineFailure | None:
        """What went wrong so far, as the failure a wait would raise; None if nothing did.

        For reports after a test (see `vmtest.diagnosis.post_mortem`).
        """
        return self._watch.post_mortem() if self._watch is not None else None

    # -- commands --------------------------------------------------------------------------

    def qmp(self, command_name: str, **arguments: object) -> object:
        """Run a QMP command and return its result; QmpError if it fails."""
        if self._qmp is None:
            raise QmpError(command_name, f"{self.name} is not started")
        return self._qmp.execute(
            command_name, arguments or None, timeout=self.scaled(DEADLINES.command)
        )

    def powerdown(self) -> None:
        """Press the ACPI power button (QMP ``system_powerdown``)."""
        self.log.info("pressing the power button")
        self.qmp("system_powerdown")

    def reset(self) -> None:
        """Reset the VM (QMP ``system_reset``); with ``-no-reboot`` QEMU then exits."""
        self.log.info("resetting")
        self.qmp("system_reset")

    def write_console(self, data: bytes) -> None:
        """Send ``data`` to the serial console, as if typed on the guest's ttyS0."""
        if not self._taps:
            raise VmtestError(f"{self.name}: not started (call start() or use `with`)")
        try:
            self._taps[0].write(data, timeout=self.scaled(DEADLINES.command))
        except (OSError, TimeoutError) as err:
            raise VmtestError(f"{self.name}: cannot write to the console: {err}") from err

    # -- waits -----------------------------------------------------------------------------

    def wait_for_stage(
        self, name: str, state: StageState | str = StageState.FINISHED, timeout: float | None = None
    ) -> Event:
        """Wait until stage ``name`` reaches ``state`` (started, finished or failed).

        Returns the event. Raises StageFailed if a stage fails instead (unless the wait is
        for that failure), KernelPanic, Stage0Failed, ... if the boot breaks, PoweredOffEarly
        if the VM ends first, or StageTimedOut.
        """
        wanted = _choice(StageState, state, "state")
        expect = Expectation(
            f"stage {name} {wanted}", stage=name, stage_may_fail=wanted == StageState.FAILED
        )
        return self._watching().wait(
            expect,
            lambda events: next((e for e in events if e.is_stage(name, wanted)), None),
            self._limit(timeout, DEADLINES.stage),
        )

    def wait_for_program(
        self, index: int, state: ProgramTarget | str, timeout: float | None = None
    ) -> Event:
        """Wait until program ``index`` started, exited, or exited with status 0 (succeeded).

        Returns the event; while waiting for "succeeded", another exit raises ProgramFailed.
        """
        target = _choice(ProgramTarget, state, "state")
        wanted = "started" if target == ProgramTarget.STARTED else "exited"
        expect = Expectation(
            f"program[{index}] {target}",
            program=index,
            program_must_succeed=target == ProgramTarget.SUCCEEDED,
        )

        def found(events: Sequence[Event]) -> Event | None:
            for event in events:
                if not event.is_program(index, wanted):
                    continue
                if target != ProgramTarget.SUCCEEDED or _succeeded(event):
                    return event
            return None

        return self._watching().wait(expect, found, self._limit(timeout, DEADLINES.program))

    def wait_for_console(
        self, pattern: str | re.Pattern[str], timeout: float | None = None, *, start: int = 0
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a regex; MULTILINE for a str) matches the console text
        from offset ``start``; returns the match (chain waits with ``start=match.end()``).

        A failed stage does not end this wait, the VM's end or a panic does."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        return self._watching().wait_for_console(
            regex, start, self._limit(timeout, DEADLINES.console)
        )

    def wait_for_shutdown(self, timeout: float | None = None) -> int:
        """Wait until QEMU exits and return its status (0 after a guest power-off).

        A kernel panic on the way raises KernelPanic (or InitCrashed). At the deadline:
        StillRunningAfterPowerOff if the guest had begun to power off, else ShutdownHung.
        """
        code = self._watching().wait_for_exit(self._limit(timeout, DEADLINES.shutdown))
        self.log.info("QEMU exited with status %d after %.2f s", code, self.elapsed)
        return code

    def _limit(self, timeout: float | None, default: float) -> float:
        return timeout if timeout is not None else self.scaled(default)

    def _watching(self) -> Watch:
        if self._watch is None:
            raise VmtestError(f"{self.name}: not started (call start() or use `with`)")
        return self._watch


@dataclass(frozen=True)
class _Plan:
    spec: CommandSpec
    arguments: tuple[Argument, ...]
    workdir: Path

    @property
    def decision(self) -> Decision:
        return self.spec.accel

    @property
    def forwards(self) -> tuple[PortForward, ...]:
        return tuple(forward for network in self.spec.networks for forward in network)

    @property
    def kernel_args(self) -> str:
        return self.spec.kernel_args


def _read_vcfg(image: Path) -> tuple[VCFG, str | None]:
    """The image's VCFG, or an empty one and why: a VM may be started on purpose with a VCFG
    that vinitd will refuse, to test that refusal."""
    data = bootfiles.read_vcfg_json(image)
    try:
        return codec.loads(data), None
    except VinitdError as err:
        return VCFG(), str(err)


E = TypeVar("E", bound=enum.StrEnum)


def _choice(kind: type[E], value: E | str, option: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise MachineOptionError(f"{option}={value!r} (allowed: {allowed})") from None


def _succeeded(event: Event) -> bool:
    return event.signal is None and event.exit_status == 0


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "vm"
