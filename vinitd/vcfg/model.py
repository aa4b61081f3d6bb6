"""The VCFG model: every section and field of vorteil's VCFG, as frozen dataclasses.

Field order is the order of vorteil's on-disk JSON. Each field carries its JSON key, TOML key,
kind, whether JSON omits it when empty, and how files merge it (see `records.entry`).
Values are what the user wrote; the default layers (`defaults`) fill the empty ones.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from vinitd.vcfg.kinds import (
    ByteSize,
    Choice,
    Flag,
    Merge,
    Stamp,
    Text,
    TextList,
    TextMap,
    UInt,
)
from vinitd.vcfg.records import Record, RecordList, entry
from vinitd.vcfg.values import Bytes, Timestamp


class Privilege(enum.StrEnum):
    """Who a program runs as: root, or uid/gid 1000 (with capabilities for superuser)."""

    ROOT = "root"
    SUPERUSER = "superuser"
    USER = "user"


class TerminateSignal(enum.StrEnum):
    """The signal a program gets when the VM shuts down."""

    SIGINT = "SIGINT"
    SIGKILL = "SIGKILL"
    SIGQUIT = "SIGQUIT"
    SIGPWR = "SIGPWR"
    SIGSTOP = "SIGSTOP"
    SIGTERM = "SIGTERM"
    SIGUSR1 = "SIGUSR1"
    SIGUSR2 = "SIGUSR2"


class StdoutMode(enum.StrEnum):
    """Where programs' console output goes; unset (None) means standard."""

    STANDARD = "standard"  # serial and screen
    SCREEN = "screen"
    SERIAL = "serial"
    DISABLED = "disabled"


class LoggingType(enum.StrEnum):
    SYSTEM = "system"
    KERNEL = "kernel"
    PROGRAMS = "programs"
    STDOUT = "stdout"


# A TCP/UDP port, a count or a size in Go's uint32 range.
U32 = UInt(2**32 - 1)


@dataclass(frozen=True)
class Program:
    binary: str = entry("binary", Text(), default="")
    args: str = entry("args", Text(), default="")
    env: tuple[str, ...] = entry(
        "env", TextList(null_when_empty=True), default=(), merge=Merge.CONCAT
    )
    cwd: str = entry("cwd", Text(), default="")
    stdout: str = entry("stdout", Text(), default="")
    stderr: str = entry("stderr", Text(), default="")
    bootstrap: tuple[str, ...] = entry(
        "bootstrap", TextList(null_when_empty=True), default=(), merge=Merge.CONCAT
    )
    logfiles: tuple[str, ...] = entry(
        "logfiles", TextList(null_when_empty=True), default=(), merge=Merge.UNION
    )
    privilege: Privilege | None = entry("privilege", Choice(Privilege), default=None)
    strace: bool = entry("strace", Flag(), default=False)
    terminate: TerminateSignal | None = entry("terminate", Choice(TerminateSignal), default=None)


@dataclass(frozen=True)
class Network:
    ip: str = entry("ip", Text(), default="")
    mask: str = entry("mask", Text(), default="", omit_empty=True)
    gateway: str = entry("gateway", Text(), default="", omit_empty=True)
    udp: tuple[str, ...] = entry("udp", TextList(), default=(), omit_empty=True, merge=Merge.UNION)
    tcp: tuple[str, ...] = entry("tcp", TextList(), default=(), omit_empty=True, merge=Merge.UNION)
    http: tuple[str, ...] = entry(
        "http", TextList(), default=(), omit_empty=True, merge=Merge.UNION
    )
    https: tuple[str, ...] = entry(
        "https", TextList(), default=(), omit_empty=True, merge=Merge.UNION
    )
    mtu: int = entry("mtu", U32, default=0, omit_empty=True)
    disable_tso: bool = entry("disable-tso", Flag(), default=False, omit_empty=True)
    tcpdump: bool = entry("tcpdump", Flag(), default=False)


@dataclass(frozen=True)
class System:
    dns: tuple[str, ...] = entry("dns", TextList(), default=(), omit_empty=True, merge=Merge.UNION)
    ntp: tuple[str, ...] = entry("ntp", TextList(), default=(), omit_empty=True, merge=Merge.UNION)
    hostname: str = entry("hostname", Text(), default="", omit_empty=True)
    max_fds: int = entry("max-fds", U32, default=0, omit_empty=True)
    stdout_mode: StdoutMode | None = entry(
        "stdout-mode",
        Choice(StdoutMode),
        default=None,
        toml="output-mode",
        aliases=("stdout-mode",),
        omit_empty=True,
    )
    kernel_args: str = entry("kernel-args", Text(), default="", omit_empty=True)
    filesystem: str = entry("filesystem", Text(), default="", omit_empty=True)
    user: str = entry("user", Text(), default="", omit_empty=True)
    terminate_wait: int = entry("terminate-wait", U32, default=0)


@dataclass(frozen=True)
class Info:
    name: str = entry("name", Text(), default="", omit_empty=True, merge=Merge.FIRST)
    author: str = entry("author", Text(), default="", omit_empty=True, merge=Merge.FIRST)
    summary: str = entry("summary", Text(), default="", omit_empty=True, merge=Merge.FIRST)
    description: str = entry("description", Text(), default="", omit_empty=True, merge=Merge.FIRST)
    url: str = entry("url", Text(), default="", omit_empty=True, merge=Merge.FIRST)
    date: Timestamp = entry("date", Stamp(), factory=Timestamp, merge=Merge.FIRST)
    version: str = entry("version", Text(), default="", omit_empty=True, merge=Merge.FIRST)


@dataclass(frozen=True)
class VM:
    cpus: int = entry("cpus", U32, default=0, omit_empty=True)
    ram: Bytes = entry("ram", ByteSize(), factory=Bytes, omit_empty=True)
    inodes: int = entry("inodes", U32, default=0, omit_empty=True)
    kernel: str = entry("kernel", Text(), default="", omit_empty=True)
    disk_size: Bytes = entry("disk-size", ByteSize(), factory=Bytes, omit_empty=True)


@dataclass(frozen=True)
class NFS:
    mount: str = entry("mount", Text(), default="")
    server: str = entry("server", Text(), default="")
    options: str = entry("options", Text(), default="")


@dataclass(frozen=True)
class Route:
    interface: str = entry("interface", Text(), default="", omit_empty=True)
    destination: str = entry("destination", Text(), default="", omit_empty=True)
    gateway: str = entry("gateway", Text(), default="", omit_empty=True)


@dataclass(frozen=True)
class Logging:
    config: tuple[str, ...] = entry(
        "config", TextList(), default=(), omit_empty=True, merge=Merge.CONCAT
    )
    type: str = entry("type", Text(), default="", omit_empty=True)


@dataclass(frozen=True)
class VCFG:
    """A whole VCFG. An empty one is valid input to the default layers."""

    program: tuple[Program, ...] = entry(
        "program", RecordList(Program), default=(), omit_empty=True, merge=Merge.BY_INDEX
    )
    network: tuple[Network, ...] = entry(
        "network", RecordList(Network), default=(), omit_empty=True, merge=Merge.BY_INDEX
    )
    system: System = entry("system", Record(System), factory=System, merge=Merge.RECORD)
    info: Info = entry("info", Record(Info), factory=Info, merge=Merge.RECORD)
    vm: VM = entry("vm", Record(VM), factory=VM, merge=Merge.RECORD)
    nfs: tuple[NFS, ...] = entry(
        "nfs", RecordList(NFS), default=(), omit_empty=True, merge=Merge.BY_INDEX
    )
    route: tuple[Route, ...] = entry(
        "route", RecordList(Route), default=(), omit_empty=True, merge=Merge.BY_INDEX
    )
    logging: tuple[Logging, ...] = entry(
        "logging", RecordList(Logging), default=(), omit_empty=True, merge=Merge.BY_INDEX
    )
    sysctl: Mapping[str, str] = entry(
        "sysctl", TextMap(), factory=dict, omit_empty=True, merge=Merge.KEYS
    )
