"""Choosing the accelerator: KVM when it really works, TCG (emulation) otherwise.

Three choices, as `Accel`:

- ``tcg``: emulate; always available, about three times slower to boot.
- ``kvm``: require KVM. /dev/kvm must open read-write and answer ``KVM_GET_API_VERSION``
  with 12, else `AcceleratorUnavailable`. No boot probe: the caller asked for KVM.
- ``auto``: use KVM only if a guest is seen to run under it. A /dev/kvm that opens is not
  enough: a software nested KVM (``kvm_pvm``) accepts a VM whose kernel then never gets past
  decompression. So the probe boots the image's kernel under KVM with no initramfs; a
  working KVM reaches the kernel's root mount and its panic (which ends QEMU, thanks to
  ``panic=-1`` and ``-no-reboot``) in about a second. No panic within `PROBE_SECONDS`: TCG,
  with one warning. The decision is made once per process and reused.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmtest.console import PANIC
from vmtest.errors import AcceleratorUnavailable
from vmtest.process import QEMU, spawn

log = logging.getLogger(__name__)

KVM_DEVICE = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
# Under TCG the probe's kernel reaches its panic in ~2 s; a working KVM takes well under 1 s.
PROBE_SECONDS = 6.0


class Accel(enum.StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Decision:
    """The accelerator to use and why (shown by `Machine.explain`)."""

    accel: Accel
    reason: str


@dataclass(frozen=True)
class ProbeResult:
    works: bool
    detail: str
    seconds: float


def kvm_problem(device: Path | None = None) -> str | None:
    """Why ``device`` (default `KVM_DEVICE`) cannot serve as KVM, or None if it answers."""
    device = device or KVM_DEVICE
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist"
    except PermissionError:
        return f"no permission to open {device} read-write"
    except OSError as err:
        return f"cannot open {device}: {err.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as err:
        return f"{device} does not answer KVM_GET_API_VERSION: {err.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{device} speaks KVM API {version}, expected {KVM_API_VERSION}"
    return None


def probe(kernel: Path, accel: Accel = Accel.KVM, *, timeout: float = PROBE_SECONDS) -> ProbeResult:
    """Boot ``kernel`` without an initramfs under ``accel``; it works if the kernel panics
    (at its root mount) within ``timeout`` seconds."""
    argv = [
        QEMU,
        "-machine", "q35",
        "-accel", str(accel),
        "-m", "128",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 quiet",
    ]  # fmt: skip
    started = time.monotonic()
    process = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    seconds = time.monotonic() - started
    text = output.decode(errors="replace")
    if PANIC.search(text):
        return ProbeResult(True, f"a kernel reached its root mount in {seconds:.1f} s", seconds)
    if process.returncode not in (0, -9):
        last = text.strip().splitlines()[-1:] or ["no output"]
        return ProbeResult(False, f"QEMU failed: {last[0]}", seconds)
    return ProbeResult(False, f"a kernel made no progress in {timeout:.0f} s", seconds)


_decision_lock = threading.Lock()
_auto_decision: Decision | None = None


def decide(requested: Accel, kernel: Path) -> Decision:
    """The accelerator for ``requested``; ``kernel`` boots the probe (auto only, once)."""
    global _auto_decision
    if requested == Accel.TCG:
        return Decision(Accel.TCG, "requested: emulation")
    if requested == Accel.KVM:
        problem = kvm_problem()
        if problem:
            raise AcceleratorUnavailable(f"accel=kvm: {problem}")
        return Decision(Accel.KVM, "requested: hardware virtualisation")
    with _decision_lock:
        if _auto_decision is None:
            _auto_decision = _probe_once(kernel)
        return _auto_decision


def forget_decision() -> None:
    """Drop the cached auto decision (the next auto start probes again)."""
    global _auto_decision
    with _decision_lock:
        _auto_decision = None


def _probe_once(kernel: Path) -> Decision:
    problem = kvm_problem()
    if problem:
        log.warning("KVM unavailable (%s): emulating with TCG", problem)
        return Decision(Accel.TCG, f"auto: KVM unavailable ({problem})")
    result = probe(kernel, Accel.KVM)
    if not result.works:
        log.warning("KVM does not run guests here (%s): emulating with TCG", result.detail)
        return Decision(Accel.TCG, f"auto: KVM probe failed ({result.detail})")
    log.info("KVM works: %s", result.detail)
    return Decision(Accel.KVM, f"auto: KVM probe passed ({result.detail})")
