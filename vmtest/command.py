"""The QEMU command line of a VM, as groups of (option, value) that each say why they are there.

`build` turns a `CommandSpec` (the image, its boot files and VCFG-derived sizes, the chosen
accelerator, the sockets vmtest listens on) into a tuple of `Argument`s; `argv` flattens them
and `explain` prints them one per line with their reasons. The device set is fixed:

- q35 (PCIe, ACPI power button), ``-nodefaults`` so that every device is listed here,
  ``-no-reboot`` so that a guest reboot or panic ends QEMU, no display;
- direct kernel boot with the kernel, initramfs and command line stored in the image;
- the image on virtio-blk, as a snapshot unless the VM is writable;
- one user-mode (slirp) network and virtio-net NIC per ``[[network]]`` of the VCFG, each
  forwarding its declared ports from the host's loopback (`plan_forwards`), without iPXE;
- virtio-rng; the serial console and the event port (virtio-serial, ``vinitd.events``) on
  unix sockets that QEMU dials; QMP on a unix socket that QEMU serves.
"""

from __future__ import annotations

import enum
import logging
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vinitd.events import PORT_NAME
from vinitd.vcfg.model import VCFG, Network
from vinitd.vcfg.values import MIB
from vmtest.accel import Decision
from vmtest.bootfiles import BootFiles
from vmtest.errors import VmtestError
from vmtest.process import QEMU

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_MEMORY_MIB = 256
DEFAULT_CPUS = 1


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


# Which VCFG port list is forwarded with which protocol.
PORT_LISTS: tuple[tuple[str, Protocol], ...] = (
    ("tcp", Protocol.TCP),
    ("http", Protocol.TCP),
    ("https", Protocol.TCP),
    ("udp", Protocol.UDP),
)


@dataclass(frozen=True)
class Argument:
    """One QEMU option with its value (None for a flag) and why it is there."""

    option: str
    value: str | None
    reason: str

    def words(self) -> list[str]:
        return [self.option] if self.value is None else [self.option, self.value]


@dataclass(frozen=True)
class PortForward:
    """Host ``LOOPBACK:host_port`` forwarded to ``guest_port`` of network ``network``.

    ``declared_as`` names the VCFG list that declared the port (tcp, http, https or udp).
    """

    network: int
    protocol: Protocol
    guest_port: int
    host_port: int
    declared_as: str

    @property
    def hostfwd(self) -> str:
        return f"hostfwd={self.protocol}:{LOOPBACK}:{self.host_port}-:{self.guest_port}"

    def describe(self) -> str:
        return f"{self.protocol} {LOOPBACK}:{self.host_port} -> guest {self.guest_port}"


@dataclass(frozen=True)
class Sockets:
    """Where QEMU finds vmtest's console and event sockets, and serves QMP."""

    console: Path
    events: Path
    qmp: Path


@dataclass(frozen=True)
class Sized:
    """A value with the reason it was chosen (VCFG, override or default)."""

    value: int
    reason: str


@dataclass(frozen=True)
class CommandSpec:
    name: str
    image: Path
    boot_files: BootFiles
    kernel_args: str
    accel: Decision
    memory_mib: Sized
    cpus: Sized
    writable: bool
    networks: tuple[tuple[PortForward, ...], ...]  # one entry per NIC: its forwards
    sockets: Sockets


def memory_for(vcfg: VCFG, override: int | None) -> Sized:
    """MiB of guest memory: the override, else the VCFG's vm.ram, else the default."""
    if override is not None:
        return Sized(override, "memory_mib given to the Machine")
    ram = vcfg.vm.ram.value
    if ram:
        return Sized(-(-ram // MIB), f"vm.ram from the image's VCFG ({vcfg.vm.ram})")
    return Sized(DEFAULT_MEMORY_MIB, "the VCFG sets no vm.ram: vmtest's default")


def cpus_for(vcfg: VCFG, override: int | None) -> Sized:
    """Virtual CPUs: the override, else the VCFG's vm.cpus, else the default."""
    if override is not None:
        return Sized(override, "cpus given to the Machine")
    if vcfg.vm.cpus:
        return Sized(vcfg.vm.cpus, "vm.cpus from the image's VCFG")
    return Sized(DEFAULT_CPUS, "the VCFG sets no vm.cpus: vmtest's default")


def build(spec: CommandSpec) -> tuple[Argument, ...]:
    """Every option of the QEMU command line for ``spec``, in order."""
    files = spec.boot_files
    snapshot = "" if spec.writable else ",snapshot=on"
    disk_reason = (
        "the image, written in place (writable)"
        if spec.writable
        else "the image; snapshot=on keeps guest writes in a temporary overlay"
    )
    return (
        Argument("-name", spec.name, "names the VM in ps, logs and QMP"),
        Argument("-machine", "q35", "PCIe PC with ACPI (power button) for virtio-pci devices"),
        Argument("-accel", str(spec.accel.accel), spec.accel.reason),
        Argument("-m", str(spec.memory_mib.value), spec.memory_mib.reason),
        Argument("-smp", str(spec.cpus.value), spec.cpus.reason),
        Argument("-nodefaults", None, "no implicit devices: every device is listed here"),
        Argument("-no-user-config", None, "ignore QEMU configuration files on the host"),
        Argument("-display", "none", "no window: the serial port is the console"),
        Argument("-no-reboot", None, "a guest reboot, reset or panic (panic=-1) ends QEMU"),
        Argument("-kernel", str(files.kernel), "direct boot: the kernel stored in the image"),
        Argument("-initrd", str(files.initrd), "the initramfs (stage 0) stored in the image"),
        Argument("-append", spec.kernel_args, "the kernel command line stored in the image"),
        Argument("-drive", f"file={spec.image},if=none,id=disk0,format=raw{snapshot}", disk_reason),
        Argument("-device", "virtio-blk-pci,drive=disk0", "the boot disk on virtio-blk (vda)"),
        *_network_arguments(spec.networks),
        Argument("-device", "virtio-rng-pci", "entropy, so early random reads do not block"),
        Argument(
            "-chardev",
            f"socket,id=console,path={spec.sockets.console},server=off",
            "console socket: vmtest listens, QEMU dials before the guest runs",
        ),
        Argument("-serial", "chardev:console", "ttyS0, the console, captured to console.log"),
        Argument("-device", "virtio-serial-pci,id=vserial0", "the bus of the event port"),
        Argument(
            "-chardev",
            f"socket,id=events,path={spec.sockets.events},server=off",
            "event socket: vmtest listens, QEMU dials before the guest runs",
        ),
        Argument(
            "-device",
            f"virtserialport,bus=vserial0.0,chardev=events,name={PORT_NAME}",
            "the event port vinitd finds by name (docs/events.md)",
        ),
        Argument(
            "-qmp",
            f"unix:{spec.sockets.qmp},server=on,wait=off",
            "QMP: power button, reset and QEMU's events",
        ),
    )


def _network_arguments(networks: Sequence[Sequence[PortForward]]) -> list[Argument]:
    arguments = []
    for index, forwards in enumerate(networks):
        netdev = ",".join([f"user,id=net{index}", *(f.hostfwd for f in forwards)])
        shown = "; ".join(f.describe() for f in forwards) or "no ports forwarded"
        arguments += [
            Argument("-netdev", netdev, f"network[{index}]: user networking, {shown}"),
            Argument(
                "-device",
                f"virtio-net-pci,netdev=net{index},romfile=",
                f"eth{index}; romfile= leaves out the iPXE boot ROM",
            ),
        ]
    return arguments


def argv(arguments: Sequence[Argument]) -> list[str]:
    """The command as a list of words, QEMU's path first."""
    return [QEMU, *(word for argument in arguments for word in argument.words())]


def explain(arguments: Sequence[Argument]) -> str:
    """One line per option: the words (shell-quoted) and, after ``#``, why."""
    rows = [(shlex.join(argument.words()), argument.reason) for argument in arguments]
    width = min(max(len(words) for words, _ in rows), 60)
    lines = [QEMU] + [f"  {words.ljust(width)}  # {reason}" for words, reason in rows]
    return "\n".join(lines)


def port_is_free(protocol: Protocol, port: int) -> bool:
    """Whether ``port`` can be bound on the loopback address now."""
    kind = socket.SOCK_STREAM if protocol == Protocol.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def any_free_port(protocol: Protocol) -> int:
    """A port the kernel picks as free on the loopback address."""
    kind = socket.SOCK_STREAM if protocol == Protocol.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def plan_forwards(
    networks: Sequence[Network],
    *,
    is_free: Callable[[Protocol, int], bool] = port_is_free,
    pick_free: Callable[[Protocol], int] = any_free_port,
) -> tuple[tuple[PortForward, ...], ...]:
    """The forwards of each network: every declared port, on the same host port when that is
    free, else on one the kernel picks. A port declared twice is forwarded once."""
    taken: set[tuple[Protocol, int]] = set()
    planned: list[tuple[PortForward, ...]] = []
    for index, network in enumerate(networks):
        forwards: list[PortForward] = []
        seen: set[tuple[Protocol, int]] = set()
        for field, protocol in PORT_LISTS:
            for text in getattr(network, field):
                if not text.isdigit() or not 0 < int(text) < 65536:
                    log.warning(
                        "network[%d].%s: %r is not a port; not forwarded", index, field, text
                    )
                    continue
                guest = int(text)
                if (protocol, guest) in seen:
                    continue
                seen.add((protocol, guest))
                host = guest
                if (protocol, host) in taken or not is_free(protocol, host):
                    host = _pick(protocol, taken, pick_free)
                taken.add((protocol, host))
                forwards.append(PortForward(index, protocol, guest, host, field))
        planned.append(tuple(forwards))
    return tuple(planned)


def _pick(
    protocol: Protocol, taken: set[tuple[Protocol, int]], pick_free: Callable[[Protocol], int]
) -> int:
    for _ in range(100):
        port = pick_free(protocol)
        if (protocol, port) not in taken:
            return port
    raise VmtestError(f"no free {protocol} port on {LOOPBACK} for a forward")
