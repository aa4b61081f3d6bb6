"""/dev/vtty on a stock kernel: a FIFO that PID 1 drains to the consoles of the stdout mode.

vorteil's kernel has a /dev/vtty device, a ring buffer that never blocks its writers; programs'
stdout and stderr default to it and vinitd copies what arrives to the screen and the serial
port. A stock kernel has no such device, so vinitd makes a FIFO at the same path.

A FIFO rather than a pty: a pty slave is a terminal, so programs would see ``isatty()`` true
(line buffering, colours, prompts), could acquire it as their controlling terminal and get
SIGHUP or SIGTTOU from it, and the line discipline would turn ``\\n`` into ``\\r\\n``. vorteil's
vtty is no terminal either; a FIFO passes bytes through unchanged.

Writers must never block for long. The pump holds the FIFO open for reading and writing, so
opening it for writing never fails with ENXIO, writing never gets EPIPE and reading never sees
end of file. It reads everything as soon as it arrives and writes to the consoles without
blocking: a console that does not take its bytes keeps a bounded backlog, and when it makes no
progress for `STALL_SECONDS` (or the backlog is full) its output is dropped until it takes
bytes again. A console whose writes fail is given up. Either is reported once, as a WARNING
line on the other consoles.
"""

from __future__ import annotations

import array
import contextlib
import enum
import fcntl
import os
import select
import stat
import termios
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from vinitd import console
from vinitd.vcfg.model import StdoutMode

VTTY_PATH = Path("/dev/vtty")
READ_CHUNK = 65536
PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size: room for bursts
BACKLOG_BYTES = 256 * 1024
STALL_SECONDS = 1.0
FLUSH_POLL_SECONDS = 0.005
PUMP_RETRY_SECONDS = 0.05
# Never the controlling terminal of PID 1; O_APPEND for consoles that are files.
CONSOLE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


class Console(enum.StrEnum):
    SCREEN = "screen"
    SERIAL = "serial"


DEFAULT_CONSOLES: Mapping[Console, Path] = MappingProxyType(
    {Console.SCREEN: Path("/dev/tty1"), Console.SERIAL: Path("/dev/ttyS0")}
)

# The consoles of each stdout mode, in the order vorteil writes them; unset means standard.
MODE_CONSOLES: Mapping[StdoutMode, tuple[Console, ...]] = MappingProxyType(
    {
        StdoutMode.STANDARD: (Console.SCREEN, Console.SERIAL),
        StdoutMode.SCREEN: (Console.SCREEN,),
        StdoutMode.SERIAL: (Console.SERIAL,),
        StdoutMode.DISABLED: (),
    }
)


class Sink:
    """One destination of the pump: a non-blocking fd and the bytes it has not taken yet.

    The fd's open file description is made non-blocking. Once installed, a sink is used only
    with the Vtty's lock held.
    """

    def __init__(
        self,
        name: str,
        fd: int,
        *,
        closes: bool = True,
        backlog: int = BACKLOG_BYTES,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.name = name
        self.fd = fd
        self.closes = closes
        self.backlog = backlog
        self.stall_seconds = stall_seconds
        self.pending = bytearray()
        self.dropped = 0
        self.failure: str | None = None
        self.stalled = False
        self.line_start = True  # whether the last byte offered ended a line
        self._waiting_since = 0.0
        self._reported = False
        os.set_blocking(fd, False)
        self.is_tty = os.isatty(fd)

    def offer(self, data: bytes, now: float) -> None:
        """Queue ``data`` and write what the fd takes; what does not fit is dropped.

        A stalled sink queues nothing: it gets new bytes only if it takes them at once.
        """
        if data:
            self.line_start = data.endswith(b"\n")
        if self.failure is not None:
            return
        if self.stalled:
            taken = self._write_some(data)
            if not taken:
                self.dropped += len(data)
                return
            self.stalled = False
            data = data[taken:]
        if not self.pending:
            self._waiting_since = now
        room = max(self.backlog - len(self.pending), 0)
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        self.pending += data
        self.push(now)

    def push(self, now: float) -> None:
        """Write pending bytes until the fd would block; drop them once it has stalled."""
        while self.pending and self.failure is None:
            taken = self._write_some(self.pending)
            if not taken:
                break
            del self.pending[:taken]
            self._waiting_since = now
        if self.pending and now - self._waiting_since >= self.stall_seconds:
            self.dropped += len(self.pending)
            self.pending.clear()
            self.stalled = True

    def deadline(self) -> float | None:
        """When the pending bytes will count as stalled; None when nothing is pending."""
        return self._waiting_since + self.stall_seconds if self.pending else None

    def unsent(self) -> int:
        """Bytes not yet out: pending here, plus a terminal's output queue."""
        queued = 0
        if self.is_tty and self.failure is None:
            count = array.array("i", [0])
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, termios.TIOCOUTQ, count)
                queued = count[0]
        return len(self.pending) + queued

    def notice(self) -> str | None:
        """The one report a sink makes: its failure, or that it dropped output."""
        if self._reported:
            return None
        if self.failure is not None:
            self._reported = True
            return f"vtty: can not write to {self.name}: {self.failure}; its output is lost"
        if self.dropped:
            self._reported = True
            return f"vtty: {self.name} is not keeping up; output to it is dropped"
        return None

    def close(self) -> None:
        if self.closes:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def _write_some(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as err:
            self.failure = err.strerror or str(err)
            self.dropped += len(self.pending)
            self.pending.clear()
            return 0


class Vtty:
    """The emulated /dev/vtty and the pump thread that copies it to the consoles.

    ``consoles`` maps each console to its device (tests point them at pipes or files).
    `start` makes the FIFO, selects the consoles of a stdout mode and starts the pump;
    `set_mode` changes them at any time: pre-setup starts with the default mode, setup
    applies the VCFG's ``system.stdout-mode``. `add_sink` adds other destinations, such as
    vorteil's redirect sink for log shipping.
    """

    def __init__(
        self,
        path: Path = VTTY_PATH,
        *,
        consoles: Mapping[Console, Path] = DEFAULT_CONSOLES,
        backlog: int = BACKLOG_BYTES,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.path = path
        self.consoles = dict(consoles)
        self.backlog = backlog
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()  # the sinks and the FIFO's read side
        self._config_lock = threading.Lock()  # one change of sinks at a time
        self._consoles: dict[str, Sink] = {}
        self._extra: dict[str, Sink] = {}
        self._generation = 0
        self._fd = -1
        self._wake_read = -1
        self._wake_write = -1
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pump_failed = False

    def start(self, mode: StdoutMode | None = None) -> None:
        """Make the FIFO, open it, select the consoles of ``mode`` and start the pump.

        An OSError means there is no vtty (vorteil printed ``can not setup logging: <err>``).
        """
        make_fifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.set_mode(mode)
        self._thread = threading.Thread(target=self._run, name="vtty-pump", daemon=True)
        self._thread.start()

    def open_writer(self) -> int:
        """A new blocking write-only fd on the vtty, for a child's stdout or stderr.

        The fd is close-on-exec; ``subprocess`` clears that on the copies it makes for the
        child. The caller closes it. Without a running vtty this fails with ENXIO instead of
        waiting for a reader.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        return fd

    def set_mode(self, mode: StdoutMode | None) -> None:
        """Copy to the consoles of ``mode`` from now on; unset means standard.

        A console that stays selected keeps its fd and backlog. One that cannot be opened is
        reported with vorteil's ``can not setup tty: <err>`` (``ttys`` in standard mode).
        """
        wanted = [str(self.consoles[name]) for name in MODE_CONSOLES[mode or StdoutMode.STANDARD]]
        with self._config_lock:
            with self._lock:
                current = set(self._consoles)
            opened: dict[str, Sink] = {}
            problems: list[OSError] = []
            for path in wanted:
                if path in current:
                    continue
                try:
                    fd = os.open(path, CONSOLE_FLAGS)
                except OSError as err:
                    problems.append(err)
                    continue
                opened[path] = self._sink(path, fd)
            with self._lock:
                old = self._consoles
                self._consoles = {
                    path: old.get(path) or opened[path]
                    for path in wanted
                    if path in old or path in opened
                }
                closing = [sink for path, sink in old.items() if path not in self._consoles]
                self._generation += 1
        self._wake()
        for sink in closing:
            sink.close()
        noun = "ttys" if len(wanted) > 1 else "tty"
        for problem in problems:
            console.log_always(f"can not setup {noun}: {problem}")

    def add_sink(self, name: str, fd: int, *, closes: bool = True) -> None:
        """Also copy to ``fd``, after the consoles, whatever the mode (until removed)."""
        sink = self._sink(name, fd, closes=closes)
        with self._config_lock, self._lock:
            previous = self._extra.pop(name, None)
            self._extra[name] = sink
            self._generation += 1
        self._wake()
        if previous is not None:
            previous.close()

    def remove_sink(self, name: str) -> None:
        with self._config_lock, self._lock:
            sink = self._extra.pop(name, None)
            self._generation += 1
        self._wake()
        if sink is not None:
            sink.close()

    def sink_names(self) -> list[str]:
        """The destinations in the order they are written."""
        with self._lock:
            return [sink.name for sink in self._sinks()]

    def flush(self, timeout: float) -> bool:
        """Wait until everything written so far has gone out, or ``timeout`` seconds.

        Returns whether it all went: the FIFO is empty and every sink took its bytes (for a
        terminal, its output queue is empty as well). A stalled or failed sink does not hold
        this up. Called before power-off so that the last lines reach the consoles.
        """
        deadline = time.monotonic() + timeout
        self._wake()
        while True:
            pump_alive = self._thread is not None and self._thread.is_alive()
            with self._lock:
                if not pump_alive and self._fd >= 0:
                    self._drain_fifo(time.monotonic())
                if self._drained():
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(FLUSH_POLL_SECONDS)

    def stop(self) -> None:
        """Stop the pump and close every fd; the FIFO stays at its path."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for sink in self._sinks():
                sink.close()
            self._consoles.clear()
            self._extra.clear()
            for fd in (self._fd, self._wake_read, self._wake_write):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._wake_read = self._wake_write = -1

    def _sink(self, name: str, fd: int, *, closes: bool = True) -> Sink:
        return Sink(name, fd, closes=closes, backlog=self.backlog, stall_seconds=self.stall_seconds)

    def _sinks(self) -> list[Sink]:
        return [*self._consoles.values(), *self._extra.values()]

    def _wake(self) -> None:
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"\0")

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception as err:  # the pump must outlive any one failure
                with self._lock:
                    if not self._pump_failed:
                        self._pump_failed = True
                        self._announce(console.Level.ERROR, f"epoll error: {err}")
                time.sleep(PUMP_RETRY_SECONDS)

    def _step(self) -> None:
        """Wait for input, a sink ready for its backlog, a stall deadline or a wake-up."""
        with self._lock:
            generation = self._generation
            waiting = {sink.fd: sink for sink in self._sinks() if sink.pending}
            deadlines = [d for sink in waiting.values() if (d := sink.deadline()) is not None]
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        for fd in waiting:
            poller.register(fd, select.POLLOUT)
        timeout_ms = None
        if deadlines:
            timeout_ms = max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)
        ready = dict(poller.poll(timeout_ms))

        with self._lock:
            if ready.get(self._wake_read):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
            now = time.monotonic()
            if ready.get(self._fd):
                self._drain_fifo(now)
            if generation == self._generation:
                # Otherwise the fds polled may have been closed and reused: wait again.
                for sink in waiting.values():
                    sink.push(now)
            self._report()

    def _drain_fifo(self, now: float) -> None:
        sinks = self._sinks()
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                return
            for sink in sinks:
                sink.offer(chunk, now)

    def _drained(self) -> bool:
        if self._fd >= 0:
            count = array.array("i", [0])
            fcntl.ioctl(self._fd, termios.FIONREAD, count)
            if count[0]:
                return False
        return all(not sink.unsent() for sink in self._sinks())

    def _report(self) -> None:
        for sink in self._sinks():
            message = sink.notice()
            if message is not None:
                self._announce(console.Level.WARNING, message, exclude=sink)

    def _announce(self, level: console.Level, message: str, *, exclude: Sink | None = None) -> None:
        """Put one of the pump's own lines straight onto the sinks, not through the FIFO.

        A sink in the middle of a program's line gets a newline first.
        """
        if not console.enabled(level):
            return
        line = console.format_level(level, message).encode()
        now = time.monotonic()
        for sink in self._sinks():
            if sink is not exclude:
                sink.offer(line if sink.line_start else b"\n" + line, now)


def make_fifo(path: Path) -> None:
    """Make ``path`` a FIFO anyone may write to; a FIFO there is kept, anything else replaced."""
    try:
        is_fifo = stat.S_ISFIFO(path.lstat().st_mode)
    except FileNotFoundError:
        is_fifo = None
    if is_fifo is False:
        path.unlink()
    if not is_fifo:
        os.mkfifo(path, 0o666)
    path.chmod(0o666)  # mkfifo's mode went through the umask
