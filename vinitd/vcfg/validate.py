"""Validation of a complete (merged) VCFG: vorteil's checks and the ones it left out.

`problems` returns every problem at once, each a ConfigError with the field path (TOML
names: ``system.output-mode``), so a user fixes a config in one pass. vorteil checked the
program, network, size and filesystem rules; this also checks host names, ports, routes,
NFS servers, bootstrap instructions, kernel arguments, sysctl keys and logging entries.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from vinitd import shellwords
from vinitd.errors import ConfigError
from vinitd.vcfg import bootstrap, hostname
from vinitd.vcfg.model import NFS, VCFG, LoggingType, Network, Program, Route, System

FILESYSTEMS = ("", "ext", "ext2", "ext4")
MIN_MTU, MAX_MTU = 68, 65535
MAX_KERNEL_ARGS = 1024

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IFACE = re.compile(r"^eth[0-9]+$")
_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*-]+)+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_CALVER = re.compile(r"^[0-9]{2}\.[0-9]{1,2}(\.[0-9]+(-[A-Za-z0-9.]+)?)?$")
_DIGITS = re.compile(r"^[0-9]+$")

Problems = Iterator[ConfigError]


def problems(vcfg: VCFG) -> list[ConfigError]:
    """Every problem of ``vcfg``; an empty list means it is valid."""
    found: list[ConfigError] = []
    for index, program in enumerate(vcfg.program):
        found += _located(_program(program, index), f"program[{index}]")
    for index, nic in enumerate(vcfg.network):
        found += _located(_network(nic), f"network[{index}]")
    found += _located(_system(vcfg.system), "system")
    found += _located(_info_and_vm(vcfg), "")
    for index, nfs in enumerate(vcfg.nfs):
        found += _located(_nfs(nfs), f"nfs[{index}]")
    for index, route in enumerate(vcfg.route):
        found += _located(_route(route), f"route[{index}]")
    for index, entry in enumerate(vcfg.logging):
        found += _located(_logging(entry.type, entry.config), f"logging[{index}]")
    for key, value in vcfg.sysctl.items():
        found += _located(_sysctl(key, value), f"sysctl[{key}]")
    return found


def _located(errors: Problems, prefix: str) -> list[ConfigError]:
    return [error.located(prefix=prefix) if prefix else error for error in errors]


def _check(path: str, check: Callable[[], object]) -> Problems:
    """Run ``check``; a ConfigError it raises is yielded under ``path``."""
    try:
        check()
    except ConfigError as err:
        yield err.located(prefix=path)


def _program(program: Program, index: int) -> Problems:
    if not program.binary and not program.args:
        yield ConfigError(
            f"missing binary and arguments for program {index}",
            allowed='binary = "/path" or args = "/path arg ..."',
        )
    yield from _check("args", lambda: shellwords.split(program.args, strict=True))
    for position, item in enumerate(program.env):
        name, sep, _ = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            yield ConfigError(
                f"{item!r} is not a variable assignment",
                path=f"env[{position}]",
                allowed="NAME=value",
            )
    for key in ("cwd", "stdout", "stderr"):
        value = getattr(program, key)
        if value and not value.startswith("/"):
            yield ConfigError(f"{value!r} is not an absolute path", path=key)
    for position, text in enumerate(program.bootstrap):
        yield from _check(f"bootstrap[{position}]", functools.partial(bootstrap.parse, text))
    for position, path in enumerate(program.logfiles):
        if not path.startswith("/"):
            yield ConfigError(f"{path!r} is not an absolute path", path=f"logfiles[{position}]")


def _network(nic: Network) -> Problems:
    if nic.ip in ("", "dhcp"):
        for key in ("mask", "gateway"):
            if getattr(nic, key):
                yield ConfigError(f"{key} must be empty when ip is dhcp", path=key)
    else:
        yield from _ipv4("ip", nic.ip, required=True)
        yield from _ipv4("gateway", nic.gateway, required=True)
        if not nic.mask:
            yield ConfigError("a static address needs a mask", path="mask")
        elif not _is_netmask(nic.mask):
            yield ConfigError(
                f"{nic.mask!r} is not a netmask", path="mask", allowed="e.g. 255.255.255.0"
            )
    for key in ("udp", "tcp", "http", "https"):
        for position, port in enumerate(getattr(nic, key)):
            if not (_DIGITS.fullmatch(port) and 1 <= int(port) <= 65535):
                yield ConfigError(
                    f"{port!r} is not a port number",
                    path=f"{key}[{position}]",
                    allowed="1 to 65535",
                )
    if nic.mtu and not MIN_MTU <= nic.mtu <= MAX_MTU:
        yield ConfigError(
            f"mtu {nic.mtu} is out of range", path="mtu", allowed=f"{MIN_MTU} to {MAX_MTU}"
        )


def _is_netmask(text: str) -> bool:
    # Dotted form only: ipaddress would also take a prefix length ("24") or a host mask.
    try:
        bits = int(ipaddress.IPv4Address(text))
    except ValueError:
        return False
    hosts = ~bits & 0xFFFFFFFF
    return hosts & (hosts + 1) == 0


def _ipv4(path: str, value: str, *, required: bool) -> Problems:
    if not value:
        if required:
            yield ConfigError(
                "a static address needs this field", path=path, allowed="an IPv4 address"
            )
        return
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        yield ConfigError(f"{value!r} is not an IPv4 address", path=path)


def _system(system: System) -> Problems:
    for position, server in enumerate(system.dns):
        if "$" in server:
            continue  # substituted from the environment at boot
        try:
            ipaddress.ip_address(server)
        except ValueError:
            yield ConfigError(f"{server!r} is not an IP address", path=f"dns[{position}]")
    for position, server in enumerate(system.ntp):
        if not _is_host(server):
            yield ConfigError(f"{server!r} is not a host name or address", path=f"ntp[{position}]")
    yield from _check("hostname", lambda: hostname.check_template(system.hostname))
    yield from _check("kernel-args", lambda: _kernel_args(system.kernel_args))
    if system.filesystem not in FILESYSTEMS:
        yield ConfigError(
            f"unsupported filesystem {system.filesystem!r}", path="filesystem", allowed="ext2, ext4"
        )
    if system.user and not _USER.fullmatch(system.user):
        yield ConfigError(
            f"{system.user!r} is not a user name",
            path="user",
            allowed="[a-z_][a-z0-9_-]*, up to 32",
        )


def _kernel_args(text: str) -> None:
    words = shellwords.split(text, strict=True)
    if len(text.encode()) > MAX_KERNEL_ARGS:
        raise ConfigError(
            f"{len(text.encode())} bytes is too long", allowed=f"at most {MAX_KERNEL_ARGS}"
        )
    for word in words:
        if "\x00" in word or "\n" in word:
            raise ConfigError(f"{word!r} holds a control character")


def _info_and_vm(vcfg: VCFG) -> Problems:
    if vcfg.info.url:
        try:
            urlsplit(vcfg.info.url)
        except ValueError as err:
            yield ConfigError(f"{vcfg.info.url!r} is not a URL: {err}", path="info.url")
    if vcfg.vm.ram.delta:
        yield ConfigError("ram cannot be a +delta", path="vm.ram", allowed="an absolute size")
    if vcfg.vm.kernel and not _CALVER.fullmatch(vcfg.vm.kernel):
        yield ConfigError(
            f"{vcfg.vm.kernel!r} is not a kernel version",
            path="vm.kernel",
            allowed="YY.MM[.PATCH[-mod]]",
        )


def _nfs(nfs: NFS) -> Problems:
    if not nfs.mount.startswith("/"):
        yield ConfigError(f"{nfs.mount!r} is not an absolute path", path="mount")
    host, sep, export = nfs.server.partition(":")
    if not sep or not _is_host(host) or not export.startswith("/"):
        yield ConfigError(
            f"{nfs.server!r} is not an NFS server", path="server", allowed="host:/export"
        )


def _route(route: Route) -> Problems:
    if not _IFACE.fullmatch(route.interface):
        yield ConfigError(
            f"{route.interface!r} is not an interface", path="interface", allowed="eth0, eth1, ..."
        )
    try:
        ipaddress.IPv4Network(route.destination, strict=True)
    except ValueError as err:
        yield ConfigError(
            f"{route.destination!r} is not a network: {err}",
            path="destination",
            allowed="e.g. 10.1.0.0/16",
        )
    yield from _ipv4("gateway", route.gateway, required=True)


def _logging(kind: str, config: tuple[str, ...]) -> Problems:
    if kind not in set(LoggingType):
        yield ConfigError(
            f"unknown logging type {kind!r}", path="type", allowed=", ".join(LoggingType)
        )
    for position, item in enumerate(config):
        if "=" not in item:
            yield ConfigError(
                f"{item!r} is not a setting", path=f"config[{position}]", allowed="Key=Value"
            )


def _sysctl(key: str, value: str) -> Problems:
    if not _SYSCTL_KEY.fullmatch(key) or ".." in key:
        yield ConfigError(
            f"{key!r} is not a sysctl key", allowed="dotted names such as net.core.somaxconn"
        )
    if not value.strip():
        yield ConfigError("empty value")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOST.fullmatch(text)) and len(text) <= 253
    return True
