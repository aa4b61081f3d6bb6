"""Linux capabilities for ``superuser`` programs: uid/gid 1000 that keeps ten capabilities.

vorteil starts a ``superuser`` program as uid and gid 1000 with ten ambient capabilities
(vinitd spec §10.5), so the program and anything it executes hold them without being root.
Ambient capabilities survive ``execve`` only if they are in the permitted and inheritable
sets, and a change from uid 0 to another uid clears the ambient set, so the order in the child
is fixed: keep capabilities across the uid change, drop groups, gid and uid, put the ten back
into the effective, permitted and inheritable sets, then raise each one as ambient.

The system calls go through the C library's ``capget``, ``capset`` and ``prctl`` wrappers
(glibc and musl both have them), so no per-architecture syscall numbers are needed.
"""

from __future__ import annotations

import ctypes
import enum
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2

_libc = ctypes.CDLL(None, use_errno=True)


class Capability(enum.IntEnum):
    """The capability numbers of <linux/capability.h> that vinitd hands out."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    DAC_READ_SEARCH = 2
    FOWNER = 3
    NET_BIND_SERVICE = 10
    NET_ADMIN = 12
    NET_RAW = 13
    IPC_OWNER = 15
    SYS_ADMIN = 21
    MKNOD = 27


SUPERUSER_CAPABILITIES: tuple[Capability, ...] = (
    Capability.CHOWN,
    Capability.DAC_OVERRIDE,
    Capability.DAC_READ_SEARCH,
    Capability.FOWNER,
    Capability.IPC_OWNER,
    Capability.NET_ADMIN,
    Capability.MKNOD,
    Capability.NET_BIND_SERVICE,
    Capability.NET_RAW,
    Capability.SYS_ADMIN,
)


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_DataPair = _Data * 2  # version 3 splits 64 bits into two 32-bit halves


@dataclass(frozen=True)
class CapabilitySets:
    """The three capability sets of a thread, as 64-bit masks (bit n is capability n)."""

    effective: int
    permitted: int
    inheritable: int


def mask(capabilities: Iterable[int]) -> int:
    """The bit mask of ``capabilities``, as ``/proc/<pid>/status`` shows it (``CapEff``)."""
    result = 0
    for capability in capabilities:
        result |= 1 << capability
    return result


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def get() -> CapabilitySets:
    """The calling thread's capability sets."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return CapabilitySets(
        effective=data[0].effective | data[1].effective << 32,
        permitted=data[0].permitted | data[1].permitted << 32,
        inheritable=data[0].inheritable | data[1].inheritable << 32,
    )


def _packed(sets: CapabilitySets) -> tuple[_Header, ctypes.Array[_Data]]:
    data = _DataPair()
    for half in (0, 1):
        shift = 32 * half
        data[half].effective = (sets.effective >> shift) & 0xFFFFFFFF
        data[half].permitted = (sets.permitted >> shift) & 0xFFFFFFFF
        data[half].inheritable = (sets.inheritable >> shift) & 0xFFFFFFFF
    return _Header(_LINUX_CAPABILITY_VERSION_3, 0), data


def set_sets(sets: CapabilitySets) -> None:
    """Replace the calling thread's capability sets."""
    header, data = _packed(sets)
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def keep_capabilities(keep: bool) -> None:
    """Keep (or not) the permitted set when all uids change from 0 to non-zero."""
    _check(_libc.prctl(PR_SET_KEEPCAPS, int(keep), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def raise_ambient(capability: int) -> None:
    """Add one capability to the ambient set (it must be permitted and inheritable)."""
    _check(
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capability, 0, 0),
        f"prctl(PR_CAP_AMBIENT_RAISE, {capability})",
    )


def ambient_is_set(capability: int) -> bool:
    result: int = _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, capability, 0, 0)
    _check(0 if result >= 0 else result, f"prctl(PR_CAP_AMBIENT_IS_SET, {capability})")
    return result == 1


def drop_to(uid: int, gid: int, keep: Iterable[Capability]) -> Callable[[], None]:
    """A function that makes the calling process ``uid``/``gid`` with ``keep`` as ambient.

    It is meant to run in a freshly forked child just before ``execve`` (subprocess's
    ``preexec_fn``); see `vinitd.programs.start` for why that is safe in vinitd. Everything
    it needs (structures, masks, bound C functions) is built here, in the parent, so the
    child only makes system calls. The caller must be root with the capabilities in its
    bounding set.
    """
    kept = tuple(keep)
    bits = mask(kept)
    header, data = _packed(CapabilitySets(effective=bits, permitted=bits, inheritable=bits))
    numbers = tuple(int(capability) for capability in kept)
    capset = _libc.capset
    prctl = _libc.prctl

    def become() -> None:
        _check(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _check(capset(ctypes.byref(header), data), "capset")
        for number in numbers:
            _check(
                prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number, 0, 0),
                "prctl(PR_CAP_AMBIENT_RAISE)",
            )
        _check(prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")

    return become
