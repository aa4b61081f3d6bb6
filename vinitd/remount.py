"""Remounting the root filesystem with vorteil's options (pre-setup, spec §6 item 7).

Flags: MS_REMOUNT | MS_NOATIME | MS_LAZYTIME, only MS_REMOUNT with the ``recordmode`` kernel
argument, plus MS_RDONLY with ``ro``. Data by filesystem type, as a table. Failure policy:
degraded; the caller logs the returned ``can not setup mount options: <err>`` at ERROR and the
boot goes on with the root as the kernel mounted it.

Differences from vorteil, on purpose:

- the root entry is the *last* ``/`` line of /proc/mounts, the mount on top, so a ``rootfs``
  line left from an initramfs does not hide the real root;
- ext2's ``barrier=0`` is what the ext4 driver accepts for ext2 (the ext2 driver has no
  barrier option, and ``commit=`` is refused for ext2 by the ext4 driver); when a kernel
  mounts ext2 with the ext2 driver, that EINVAL is answered by remounting with the flags
  alone;
- xfs gets ``nodiscard,inode64,noquota``: ``attr2`` is deprecated and is the default anyway.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from vinitd import mounts
from vinitd.errors import VinitdError

PROC_MOUNTS = Path("/proc/mounts")

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_LAZYTIME = 1 << 25

FILESYSTEM_DATA: Mapping[str, str] = MappingProxyType(
    {
        "ext2": "barrier=0",
        "ext4": "nodiscard,commit=30,inode_readahead_blks=64",
        "xfs": "nodiscard,inode64,noquota",
    }
)
# Filesystem types whose options another driver may not know: retry with the flags alone.
RETRY_WITHOUT_DATA = frozenset({"ext2"})


class RemountError(VinitdError):
    """The root cannot be remounted with vorteil's options (degraded, not fatal)."""


@dataclass(frozen=True)
class RootEntry:
    """The root's line in /proc/mounts."""

    source: str
    fstype: str


def cmdline_words(cmdline: str) -> frozenset[str]:
    """The words of a kernel command line; tokens match whole words, never substrings."""
    return frozenset(cmdline.split())


def find_root(proc_mounts: str) -> RootEntry:
    """The last ``/`` entry of /proc/mounts text, the mount on top of any earlier ones."""
    found: RootEntry | None = None
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/":
            found = RootEntry(source=fields[0], fstype=fields[2])
    if found is None:
        raise RemountError("can not find root filesystem")
    return found


def remount_flags(words: frozenset[str]) -> int:
    flags = MS_REMOUNT if "recordmode" in words else MS_REMOUNT | MS_NOATIME | MS_LAZYTIME
    if "ro" in words:
        flags |= MS_RDONLY
    return flags


def plan_remount(*, cmdline: str, proc_mounts: str) -> mounts.Mount:
    """The remount of ``/`` for this command line and /proc/mounts text (pure)."""
    root = find_root(proc_mounts)
    data = FILESYSTEM_DATA.get(root.fstype)
    if data is None:
        raise RemountError(f"unknown filesystem format: {root.fstype}")
    return mounts.Mount(
        source=root.source,
        target="/",
        fstype=root.fstype,
        flags=remount_flags(cmdline_words(cmdline)),
        data=data,
    )


def remount_root(*, cmdline: str, proc_mounts: Path = PROC_MOUNTS) -> str | None:
    """Remount ``/`` with vorteil's options; return the line to log at ERROR, or None."""
    try:
        text = proc_mounts.read_text()
    except OSError as err:
        return f"can not setup mount options: {proc_mounts}: {err.strerror}"
    try:
        apply(plan_remount(cmdline=cmdline, proc_mounts=text))
    except RemountError as err:
        return f"can not setup mount options: {err}"
    except OSError as err:
        return f"can not setup mount options: {err.strerror or err}"
    return None


def apply(plan: mounts.Mount) -> None:
    """mount(2) for ``plan``; EINVAL for an ext2 is retried without the data."""
    try:
        mounts.mount(plan)
    except OSError as err:
        if err.errno != errno.EINVAL or not plan.data or plan.fstype not in RETRY_WITHOUT_DATA:
            raise
        mounts.mount(replace(plan, data=""))
