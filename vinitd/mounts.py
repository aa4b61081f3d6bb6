"""Mounting through libc: the pseudo filesystems PID 1 needs, as a table."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_RDONLY = 0x1


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    flags: int = 0
    data: str = ""


# Mounted in order at the start of pre-setup; /dev comes mounted from stage 0.
BASE_MOUNTS = (
    Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
)


def mount(entry: Mount) -> None:
    """Mount ``entry``, creating its mount point; OSError carries errno and the target."""
    Path(entry.target).mkdir(mode=0o755, parents=True, exist_ok=True)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    result = libc.mount(
        entry.source.encode(),
        entry.target.encode(),
        entry.fstype.encode(),
        ctypes.c_ulong(entry.flags),
        entry.data.encode() if entry.data else None,
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {entry.fstype} on {entry.target}: {os.strerror(errno)}")


def is_mounted(target: str, proc_mounts: str = "/proc/mounts") -> bool:
    try:
        lines = Path(proc_mounts).read_text().splitlines()
        return any(line.split()[1] == target for line in lines if line.strip())
    except (OSError, IndexError):
        return False


def remount_readonly(target: str) -> None:
    """Remount ``target`` read-only (the last step before power-off)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    flags = ctypes.c_ulong(MS_REMOUNT | MS_RDONLY)
    if libc.mount(None, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"remount {target} read-only: {os.strerror(errno)}")
