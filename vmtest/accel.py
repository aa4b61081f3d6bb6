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
  with one warning. The decision is made once per process and reused; the probe's outcome
  is also kept in ``$XDG_CACHE_HOME/vmtest/kvm-probe.json`` (`probe_cache_path`) for the
  host's current boot, the same QEMU binary and the same /dev/kvm, so that a CI job running
  ``vmtest run`` many times probes once. Delete the file (or call `forget_decision`) to
  probe again.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
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
PROBE_CACHE_VERSION = 1
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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
    """Drop the auto decision, in this process and on disk: the next auto start probes."""
    global _auto_decision
    with _decision_lock:
        _auto_decision = None
        probe_cache_path().unlink(missing_ok=True)


def probe_cache_path() -> Path:
    """``$XDG_CACHE_HOME/vmtest/kvm-probe.json``, or ``~/.cache/vmtest/kvm-probe.json``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmtest" / "kvm-probe.json"


def host_key() -> dict[str, object] | None:
    """What a probe's outcome depends on: the host's boot, the QEMU binary, /dev/kvm; None
    when one of them cannot be read (then nothing is cached)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        return None
    try:
        boot_id = BOOT_ID.read_text().strip()
        binary = Path(qemu).stat()
        device = KVM_DEVICE.stat()
    except OSError:
        return None
    return {
        "version": PROBE_CACHE_VERSION,
        "boot_id": boot_id,
        "qemu": [qemu, binary.st_size, binary.st_mtime_ns],
        "kvm": [str(KVM_DEVICE), device.st_rdev],
    }


def _cached_probe(key: dict[str, object]) -> ProbeResult | None:
    path = probe_cache_path()
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key"] != key:
            return None
        return ProbeResult(bool(entry["works"]), str(entry["detail"]), float(entry["seconds"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.debug("%s: unusable, probing again: %s", path, err)
        return None


def _remember_probe(key: dict[str, object], result: ProbeResult) -> None:
    path = probe_cache_path()
    entry = {"key": key, "works": result.works, "detail": result.detail, "seconds": result.seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".kvm-probe-", delete=False, encoding="utf-8"
        ) as handle:
            written = Path(handle.name)
            try:
                json.dump(entry, handle)
            except BaseException:
                written.unlink(missing_ok=True)
                raise
        written.replace(path)
    except OSError as err:  # a read-only home: the next process probes again
        log.debug("%s: not kept: %s", path, err)


def _probe_once(kernel: Path) -> Decision:
    problem = kvm_problem()
    if problem:
        log.warning("KVM unavailable (%s): emulating with TCG", problem)
        return Decision(Accel.TCG, f"auto: KVM unavailable ({problem})")
    key = host_key()
    result = _cached_probe(key) if key is not None else None
    if result is not None:
        result = replace(result, detail=f"{result.detail}; probed earlier this host boot")
    else:
        result = probe(kernel, Accel.KVM)
        if key is not None:
            _remember_probe(key, result)
    if not result.works:
        log.warning("KVM does not run guests here (%s): emulating with TCG", result.detail)
        return Decision(Accel.TCG, f"auto: KVM probe failed ({result.detail})")
    log.info("KVM works: %s", result.detail)
    return Decision(Accel.KVM, f"auto: KVM probe passed ({result.detail})")
