"""Ending the VM: flush everything to the disk, then power off or reboot through the kernel."""

from __future__ import annotations

import ctypes
import enum
import os

LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000


class Action(enum.Enum):
    POWER_OFF = LINUX_REBOOT_CMD_POWER_OFF
    RESTART = LINUX_REBOOT_CMD_RESTART


def _libc() -> ctypes.CDLL:
    # In the guest's bare root ctypes.util.find_library finds nothing: load libc by name.
    return ctypes.CDLL("libc.so.6", use_errno=True)


def sync_disks() -> None:
    os.sync()


def reboot(action: Action) -> None:
    """The reboot syscall; returns only if the kernel refused (not PID 1, no privilege)."""
    sync_disks()
    if _libc().reboot(ctypes.c_int(action.value)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def disable_ctrl_alt_del() -> None:
    """Ctrl-Alt-Del then reaches PID 1 as SIGINT instead of rebooting at once."""
    _libc().reboot(ctypes.c_int(LINUX_REBOOT_CMD_CAD_OFF))
