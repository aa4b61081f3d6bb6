"""The boot of examples/hello under TCG: vinitd's stages, against a trivial Python PID 1.

Both boots use the same image, kernel, initramfs and guest Python; the baseline only swaps
the init (``init=/bench/baseline.py`` on the command line): a script that runs the same
program and powers off, with no configuration, network or supervision. Runs alternate
(vinitd, baseline, vinitd, ...) so that load on the shared machine hits both alike.

Reported, as medians:
- per stage: guest seconds from vinitd's events;
- vinitd's own time: from its init script's first line (the ``started`` of its ``init``
  event, so its imports count) to program 0 started, guest clock;
- the baseline's own time: from its first line to starting the same program, guest clock;
- host seconds from QEMU's start to program 0's first line, both ways.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from imagekit.cache import BuildCache
from imagekit.image import BuildRequest, build
from vmtest import Machine

RUNS = 3
GREETING = "hello from a vorteil micro-VM"
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"
BASELINE = """#!/usr/bin/python3.11 -IS
import time
start = time.monotonic()
import ctypes, os, subprocess
for fs, target in (("proc", "/proc"), ("sysfs", "/sys")):
    ctypes.CDLL("libc.so.6").mount(fs.encode(), target.encode(), fs.encode(), 0, None)
print(f"baseline start {start:.6f}", flush=True)
process = subprocess.Popen(["/usr/bin/python3", "/hello.py"], env={"GREETING": "@GREETING@"})
print(f"baseline exec {time.monotonic():.6f}", flush=True)
process.wait()
os.sync()
ctypes.CDLL("libc.so.6").reboot(0x4321FEDC)
""".replace("@GREETING@", GREETING)


def _image(work: Path) -> Path:
    project = work / "project"
    project.mkdir()
    for item in HELLO.iterdir():
        (project / item.name).write_bytes(item.read_bytes())
    baseline = project / "bench" / "baseline.py"
    baseline.parent.mkdir()
    baseline.write_text(BASELINE)
    baseline.chmod(0o755)
    image = work / "hello.raw"
    with BuildCache() as cache:
        build(BuildRequest(spec=str(project), output=image), cache=cache)
    return image


def _vinitd_run(image: Path, stages: dict[str, list[float]], own: list[float]) -> float:
    with Machine(image, accel="tcg") as vm:
        vm.wait_for_program(0, "started")
        match = vm.wait_for_console(re.escape(GREETING))
        host = vm.elapsed
        vm.wait_for_shutdown()
        assert match
        for span in vm.timeline:
            if span.guest_seconds is not None:
                stages[span.stage].append(span.guest_seconds)
        init = next(float(e.get("started", e.time)) for e in vm.events if e.type == "init")
        program = next(
            e.time for e in vm.events if e.type == "program" and e.get("state") == "started"
        )
        own.append(program - init)
    return host


def _baseline_run(image: Path, own: list[float]) -> float:
    with Machine(image, accel="tcg", extra_kernel_args=("init=/bench/baseline.py",)) as vm:
        started = vm.wait_for_console(r"baseline start ([0-9.]+)")
        executed = vm.wait_for_console(r"baseline exec ([0-9.]+)")
        vm.wait_for_console(re.escape(GREETING))
        host = vm.elapsed
        vm.wait_for_shutdown()
        own.append(float(executed[1]) - float(started[1]))
    return host


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        image = _image(Path(tmp))
        stages: dict[str, list[float]] = defaultdict(list)
        vinitd_own: list[float] = []
        baseline_own: list[float] = []
        vinitd_host: list[float] = []
        baseline_host: list[float] = []
        for _ in range(RUNS):
            vinitd_host.append(_vinitd_run(image, stages, vinitd_own))
            baseline_host.append(_baseline_run(image, baseline_own))
    median = statistics.median
    print(f"TCG, {RUNS} runs each, medians in seconds")
    print(f"{'stage':<12}{'guest s':>10}")
    for stage, values in stages.items():
        print(f"{stage:<12}{median(values):>10.3f}")
    print()
    print(f"{'':<34}{'vinitd':>10}{'baseline':>10}{'ratio':>8}")
    rows = (
        ("init script start -> program exec", median(vinitd_own), median(baseline_own)),
        ("QEMU start -> program's 1st line", median(vinitd_host), median(baseline_host)),
    )
    for label, ours, base in rows:
        print(f"{label:<34}{ours:>10.3f}{base:>10.3f}{ours / base:>8.1f}")
