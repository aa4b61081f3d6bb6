"""Network devices through the kernel's ioctls: link up, MTU, IPv4 address, routes, ethtool.

vorteil set routes with SIOCADDRT too. Needing only the standard library keeps a VCFG without
DHCP from paying for pyroute2 and asyncio at boot. Every call raises OSError with the kernel's
errno; an identical route already in place is not an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vinitd import console

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
HOST_MASK = "255.255.255.255"
ANY = "0.0.0.0"  # noqa: S104 (a route's destination and mask, never a bind)

SIOCADDRT = 0x890B
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCETHTOOL = 0x8946
IFF_UP = 0x1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_HOST = 0x4
RTF_STATIC = 0x400
IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux


class Offload(enum.IntEnum):
    """ethtool "set" commands for the offloads ``disable-tso`` turns off, in vorteil's order."""

    SCATTER_GATHER = 0x19  # ETHTOOL_SSG
    UDP_FRAGMENTATION = 0x22  # ETHTOOL_SUFO, gone from kernels since 4.14: refused
    TCP_SEGMENTATION = 0x1F  # ETHTOOL_STSO
    GENERIC_SEGMENTATION = 0x24  # ETHTOOL_SGSO
    RX_CHECKSUM = 0x15  # ETHTOOL_SRXCSUM
    TX_CHECKSUM = 0x17  # ETHTOOL_STXCSUM


@dataclass(frozen=True)
class Device:
    """A network device as sysfs lists it."""

    name: str
    ifindex: int
    type: int


def list_devices(sys_net: Path = Path("/sys/class/net")) -> list[Device]:
    """Devices in kernel index order; one whose index or type cannot be read is left out."""
    devices = []
    for entry in sys_net.iterdir():
        try:
            ifindex = int((entry / "ifindex").read_text())
            kind = int((entry / "type").read_text())
        except (OSError, ValueError):
            continue
        devices.append(Device(entry.name, ifindex, kind))
    return sorted(devices, key=lambda d: d.ifindex)


@contextlib.contextmanager
def _control_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        yield sock


def _ifreq(device: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", device.encode()) + payload.ljust(IFREQ_SIZE - 16, b"\0")


def _sockaddr(address: str) -> bytes:
    return struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(address), b"")


def link_up(device: str) -> None:
    with _control_socket() as sock:
        reply = fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(device))
        (flags,) = struct.unpack_from("=H", reply, 16)
        fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(device, struct.pack("=H", flags | IFF_UP)))


def get_mtu(device: str) -> int:
    with _control_socket() as sock:
        reply = fcntl.ioctl(sock, SIOCGIFMTU, _ifreq(device))
    return int(struct.unpack_from("=i", reply, 16)[0])


def set_mtu(device: str, mtu: int) -> None:
    with _control_socket() as sock:
        fcntl.ioctl(sock, SIOCSIFMTU, _ifreq(device, struct.pack("=i", mtu)))


def set_address(device: str, address: str, mask: str) -> None:
    """Make ``address/mask`` the device's address (0.0.0.0 removes it)."""
    with _control_socket() as sock:
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(device, _sockaddr(address)))
        if address != ANY:
            fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(device, _sockaddr(mask)))


class _SockaddrIn(ctypes.Structure):
    _fields_ = (
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_ushort),
        ("address", ctypes.c_ubyte * 4),  # c_char would stop at a zero byte
        ("zero", ctypes.c_ubyte * 8),
    )


class _RtEntry(ctypes.Structure):
    """``struct rtentry`` from <linux/route.h>, for SIOCADDRT."""

    _fields_ = (
        ("pad1", ctypes.c_ulong),
        ("dst", _SockaddrIn),
        ("gateway", _SockaddrIn),
        ("genmask", _SockaddrIn),
        ("flags", ctypes.c_ushort),
        ("pad2", ctypes.c_short),
        ("pad3", ctypes.c_ulong),
        ("pad4", ctypes.c_void_p),
        ("metric", ctypes.c_short),
        ("dev", ctypes.c_char_p),
        ("mtu", ctypes.c_ulong),
        ("window", ctypes.c_ulong),
        ("irtt", ctypes.c_ushort),
    )


def _inet(address: str) -> _SockaddrIn:
    packed = (ctypes.c_ubyte * 4).from_buffer_copy(socket.inet_aton(address))
    return _SockaddrIn(family=socket.AF_INET, address=packed)


def add_route(
    destination: str, mask: str, *, gateway: str = "", device: str = "", static: bool = False
) -> None:
    """Add a route; a host route when ``mask`` is /32. An identical route is not an error."""
    flags = RTF_UP | (RTF_GATEWAY if gateway else 0) | (RTF_STATIC if static else 0)
    if mask == HOST_MASK:
        flags |= RTF_HOST
    entry = _RtEntry(
        dst=_inet(destination),
        gateway=_inet(gateway or ANY),
        genmask=_inet(mask),
        flags=flags,
        dev=device.encode() or None,
    )
    with _control_socket() as sock, contextlib.suppress(FileExistsError):
        fcntl.ioctl(sock, SIOCADDRT, entry)


class _EthtoolValue(ctypes.Structure):
    _fields_ = (("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32))


def ethtool_value(device: str, command: int, value: int | None = None) -> int:
    """Run a get or set ethtool command that takes a ``struct ethtool_value``."""
    request = _EthtoolValue(command, value or 0)
    with _control_socket() as sock:
        pointer = struct.pack("P", ctypes.addressof(request))
        fcntl.ioctl(sock, SIOCETHTOOL, _ifreq(device, pointer))
    return int(request.data)


def disable_offloads(device: str) -> None:
    for offload in Offload:
        try:
            ethtool_value(device, offload, 0)
        except OSError as err:
            console.debug(f"can not turn {offload.name} off on {device}: {err}")
