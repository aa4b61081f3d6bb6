"""What vmtest costs at boot: examples/hello to its greeting through vmtest and through QEMU.

- vmtest: ``Machine.start()`` until ``wait_for_console(GREETING)`` returns: QEMU plus
  vmtest's console and event sockets, QMP, its IO thread and the waits that judge the boot.
- plain QEMU: the same command without vmtest's sockets (`vmtest.repro.console_arguments`,
  the command a repro bundle's repro.sh runs), the console on a pipe read until the same
  line.

Both boot the same image with the same accelerator (auto is decided once, before timing),
and the boot files are extracted before timing. The two alternate (vmtest first in odd runs,
plain first in even ones) so that a machine getting busier hurts both alike; `RUNS` each,
median and ratio.
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imagekit.cache import BuildCache
from imagekit.image import BuildRequest, build
from vmtest import command
from vmtest.accel import Accel
from vmtest.events import format_table
from vmtest.machine import Machine
from vmtest.process import spawn
from vmtest.repro import console_arguments

HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"
GREETING = "hello from a vorteil micro-VM"
RUNS = 3
DEADLINE = 300.0  # seconds for one boot to reach the greeting, under TCG on a busy host


def _vmtest(image: Path, accel: Accel) -> float:
    vm = Machine(image, accel=accel)
    vm.explain()  # plans the command (boot files, accelerator) before the clock starts
    started = time.monotonic()
    try:
        vm.start()
        vm.wait_for_console(GREETING, timeout=DEADLINE)
        return time.monotonic() - started
    finally:
        vm.close()


def _plain(image: Path, accel: Accel) -> float:
    vm = Machine(image, accel=accel)
    argv = command.argv(console_arguments(vm.arguments))
    vm.close()
    started = time.monotonic()
    process = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return _read_until(process, GREETING.encode(), started)
    finally:
        process.kill()
        process.wait()


def _read_until(process: subprocess.Popen[bytes], text: bytes, started: float) -> float:
    """Seconds from ``started`` until ``text`` appears on the process's stdout."""
    assert process.stdout is not None  # spawned with stdout=PIPE
    descriptor = process.stdout.fileno()
    seen = b""
    while text not in seen:
        remaining = started + DEADLINE - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {text!r} from QEMU in {DEADLINE:.0f} s")
        readable, _, _ = select.select([descriptor], [], [], remaining)
        if readable:
            chunk = os.read(descriptor, 65536)
            if not chunk:
                raise RuntimeError(f"QEMU ended before {text!r}: {seen[-400:]!r}")
            seen += chunk
    return time.monotonic() - started


METHODS: dict[str, Callable[[Path, Accel], float]] = {"vmtest": _vmtest, "plain QEMU": _plain}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-vmtest-") as scratch:
        with BuildCache() as cache:
            request = BuildRequest(spec=str(HELLO), output=Path(scratch) / "hello.raw")
            image = build(request, cache=cache).path
        probe = Machine(image, accel=Accel.AUTO)
        accel, reason = probe.accel, probe.accel_reason
        probe.close()
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for run in range(RUNS):
            order = list(METHODS) if run % 2 == 0 else list(reversed(METHODS))
            for name in order:
                times[name].append(METHODS[name](image, accel))
    print(f"examples/hello to {GREETING!r}, accel {accel} ({reason}), {RUNS} runs each")
    header = ["", *(f"run {n + 1}" for n in range(RUNS)), "median"]
    rows = [header]
    for name, values in times.items():
        cells = [f"{value:.2f} s" for value in values]
        rows.append([name, *cells, f"{statistics.median(values):.2f} s"])
    print(format_table(rows))
    vmtest, plain = (statistics.median(times[name]) for name in METHODS)
    print(
        f"vmtest / plain QEMU: {vmtest / plain:.3f} "
        f"({(vmtest - plain) * 1000:+.0f} ms per boot to the greeting)"
    )
