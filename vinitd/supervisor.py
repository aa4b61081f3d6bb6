"""Running the programs: one loop that reaps every child, hears signals and the power button,
and carries out the shutdown sequence.

One reaper (``waitpid(-1)``) records every exit status, so no status is lost to a race
(vorteil's reaper and per-program waiters raced, printing ``<nil>``), and orphans re-parented
to PID 1 are reaped too. A program killed by a signal counts as finished (vorteil kept such a
VM running forever). Console lines follow vorteil's (vinitd spec §9.4, §10.6, §11).
"""

from __future__ import annotations

import contextlib
import enum
import os
import queue
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vinitd import console, powerbutton, programs
from vinitd.events import EventChannel
from vinitd.power import Action
from vinitd.programs import LaunchSpec

# Go's descriptions of signals, which vorteil prints (`finished with signal: terminated`).
SIGNAL_TEXT = {
    1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction",
    5: "trace/breakpoint trap", 6: "aborted", 7: "bus error", 8: "floating point exception",
    9: "killed", 10: "user defined signal 1", 11: "segmentation fault",
    12: "user defined signal 2", 13: "broken pipe", 14: "alarm clock", 15: "terminated",
    16: "stack fault", 17: "child exited", 18: "continued", 19: "stopped (signal)",
    20: "stopped", 21: "stopped (tty input)", 22: "stopped (tty output)",
    23: "urgent I/O condition", 24: "CPU time limit exceeded",
    25: "file size limit exceeded", 26: "virtual timer expired",
    27: "profiling timer expired", 28: "window changed", 29: "I/O possible",
    30: "power failure", 31: "bad system call",
}  # fmt: skip

# Signals PID 1 listens to; the rest keep the kernel's default for init: ignored.
HANDLED = (signal.SIGCHLD, signal.SIGPWR, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"


@dataclass
class Running:
    """A launched program and what became of it."""

    index: int
    process: subprocess.Popen[bytes]
    terminate: signal.Signals
    state: State = State.RUNNING
    status_text: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class Outcome:
    """Why the loop ended, and what to do with the VM."""

    action: Action
    reason: str


@dataclass
class Supervisor:
    events: EventChannel
    terminate_wait: float = 3.0
    clock: Callable[[], float] = time.monotonic
    console_fd: int = 1
    programs: dict[int, Running] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    _wakeup: tuple[int, int] | None = None
    _launches: queue.SimpleQueue[LaunchSpec] = field(default_factory=queue.SimpleQueue)
    _launch_pipe: tuple[int, int] = field(
        default_factory=lambda: os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    )
    _stopping: bool = False

    def expect(self, index: int) -> None:
        """Program ``index`` will be submitted later (its bootstrap is running)."""
        self.pending.add(index)

    def submit(self, spec: LaunchSpec) -> None:
        """Ask the loop to start ``spec``; safe from any thread (bootstrap threads use it).

        Programs are started on the loop's thread only: a child started elsewhere could be
        reaped by waitpid(-1) before it is registered, and its status would be lost.
        """
        if self._stopping:
            return
        self._launches.put(spec)
        with contextlib.suppress(BlockingIOError):
            os.write(self._launch_pipe[1], b"\0")

    def install_signals(self) -> None:
        """Route the handled signals into the loop through a wakeup pipe."""
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (read_fd, write_fd)
        for signum in HANDLED:
            signal.signal(signum, _note)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def add(self, index: int, process: subprocess.Popen[bytes], terminate: signal.Signals) -> None:
        self.programs[index] = Running(index, process, terminate)

    def running(self) -> list[Running]:
        return [p for p in self.programs.values() if p.state is State.RUNNING]

    def run(self, *, button: int | None = None) -> Outcome:
        """Loop until every program has finished or a shutdown is asked for and carried out."""
        selector = selectors.DefaultSelector()
        if self._wakeup is not None:
            selector.register(self._wakeup[0], selectors.EVENT_READ, "signals")
        if button is not None:
            selector.register(button, selectors.EVENT_READ, "button")
        selector.register(self._launch_pipe[0], selectors.EVENT_READ, "launch")
        requested: Outcome | None = self._start_submitted()
        self.reap()
        while requested is None:
            if not self.running() and not self.pending:
                console.log_always("no programs still running")
                outcome = Outcome(Action.POWER_OFF, "no programs still running")
                self._begin(outcome)
                self._kill_rest()
                return outcome
            for key, _ in selector.select():
                requested = requested or self._handle(key.data, key.fd)
            self.reap()
        self._stopping = True
        self.terminate_all(requested, selector)
        return requested

    def _start_submitted(self) -> Outcome | None:
        """Start every submitted program; a start failure is fatal, as in vorteil."""
        while True:
            try:
                spec = self._launches.get_nowait()
            except queue.Empty:
                return None
            self.pending.discard(spec.index)
            try:
                process = programs.start(spec, console_fd=self.console_fd)
            except programs.LaunchError as err:
                console.log_level("ERROR", f"starting program failed: {err}")
                self.events.emit(
                    "program",
                    index=spec.index,
                    state="failed",
                    message=str(err),
                    error=type(err).__name__,
                )
                return Outcome(Action.POWER_OFF, f"program {spec.index} failed to start")
            self.add(spec.index, process, spec.terminate)
            self.events.emit(
                "program", index=spec.index, state="started", pid=process.pid, argv=list(spec.argv)
            )
            if not self.pending:
                console.log_level("DEBUG", "all apps started")

    def _handle(self, source: str, fd: int) -> Outcome | None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return None
        if source == "launch":
            return self._start_submitted()
        if source == "button":
            return Outcome(Action.POWER_OFF, "power button") if powerbutton.pressed(data) else None
        for signum in data:
            if signum == signal.SIGPWR:
                return Outcome(Action.POWER_OFF, "SIGPWR")
            if signum == signal.SIGINT:
                return Outcome(Action.RESTART, "SIGINT")
        return None

    def reap(self) -> None:
        """Collect every child that has exited, programs and orphans alike."""
        by_pid = {p.pid: p for p in self.running()}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            program = by_pid.get(pid)
            if program is not None:
                self._finished(program, status)

    def _finished(self, program: Running, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        program.process.returncode = code  # so Popen never waits for it again
        program.state = State.EXITED
        fields: dict[str, object]
        if code >= 0:
            program.status_text = f"exit status {code}"
            fields = {"exit_status": code}
        else:
            text = SIGNAL_TEXT.get(-code, f"signal {-code}")
            core = " (core dumped)" if os.WIFSIGNALED(status) and os.WCOREDUMP(status) else ""
            program.status_text = f"signal: {text}{core}"
            fields = {"signal": signal.Signals(-code).name}
        console.log_always(
            f"program[{program.index}] pid[{program.pid}] finished with {program.status_text}"
        )
        self.events.emit("program", index=program.index, state="exited", pid=program.pid, **fields)

    def terminate_all(self, outcome: Outcome, selector: selectors.BaseSelector) -> None:
        """Each running program gets its terminate signal; after the wait, everything dies."""
        self._begin(outcome)
        for program in self.running():
            text = SIGNAL_TEXT.get(program.terminate, program.terminate.name)
            console.log_always(
                f"program[{program.index}] pid[{program.pid}] - sending signal '{text}'"
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(program.pid, program.terminate)
        deadline = self.clock() + self.terminate_wait
        while self.running() and self.clock() < deadline:
            selector.select(max(0.0, deadline - self.clock()))
            if self._wakeup is not None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup[0], 4096)
            self.reap()
        if self.running():
            console.log_level("WARNING", "could not terminate all applications before timeout")
        else:
            console.log_always("applications terminated")
        self._kill_rest()

    def _begin(self, outcome: Outcome) -> None:
        console.log_always("shutting down applications")
        action = outcome.action.name.lower()
        self.events.emit("shutdown", state="begun", action=action, reason=outcome.reason)

    def _kill_rest(self) -> None:
        """SIGKILL to programs past their grace and, as PID 1, to every other process too.

        kill(-1) outside PID 1 would kill every process the caller may signal on the host,
        so a supervisor that is not the init kills only its own programs.
        """
        if os.getpid() == 1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        else:
            for program in self.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(program.pid, signal.SIGKILL)
        time.sleep(0.05)
        self.reap()
        self.events.emit("shutdown", state="terminated", remaining=len(self.running()))


def _note(signum: int, frame: object) -> None:
    """A handler is needed for the wakeup pipe to see the signal; the loop does the work."""
