"""Network setup (vinitd spec §7.3): loopback, each ethernet NIC by static address or DHCP, routes.

The n-th ethernet device in kernel index order (``/sys/class/net/<if>/type`` 1) is configured
from ``network[n]`` and known as ``eth<n>``, the name the console lines and ``[[route]]`` use.
Links, addresses and routes are set with ioctls (vinitd.netif), so a VCFG without DHCP imports
nothing beyond the standard library; vinitd.dhcp (pyroute2, asyncio) is imported only when an
entry asks for DHCP.

Failure policy: the caller makes a raised error fatal. `ConfigError` names the invalid field of a
static entry (all entries are checked before any device is touched); `NetworkError` says which
device could not be brought up, addressed or routed, or got no DHCP lease in time. A
``[[route]]`` entry that is invalid or refused is logged at ERROR and skipped; offload settings
that a driver refuses are only logged at DEBUG.

Deviations from vorteil, on purpose:

* DHCP waits for the server's ACK, renews in the background and starts over after a NAK (Q12,
  vinitd.dhcp); a lease's MTU (option 26) applies when ``mtu`` is not set in the VCFG.
* Ethernet devices beyond the ``[[network]]`` entries stay down and unconfigured (Q3).
* A DHCP host name is sanitised (Q17) and returned: the caller sets it after the setup join.
* The VCFG cannot tell an absent ``network`` from an empty one: loopback is always brought up.
* Offloads are only touched with ``disable-tso`` (vorteil also wrote "on" to each otherwise).
* A ``[[route]]`` destination must be a network address: one with host bits set is rejected
  before anything is added (vorteil added the gateway's host route, then the kernel refused).
* Not done: tcpdump (a WARNING says so) and the queue tuning, which vorteil's bug made a no-op
  (Q4).

Events on the port (type ``network``): ``state`` is ``configured`` (also after a new DHCP
lease), ``renewed``, ``lost`` (NAK or expiry) or ``failed`` with a ``message``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from vinitd import console, netif
from vinitd.errors import ConfigError, VinitdError
from vinitd.events import EventChannel
from vinitd.vcfg import hostname as hostnames
from vinitd.vcfg.model import VCFG, Network, Route

if TYPE_CHECKING:
    from vinitd.dhcp import DhcpService, Lease, Renewer


LOOPBACK_MTU = 65536
DEFAULT_DHCP_TIMEOUT = 30.0


class Source(enum.StrEnum):
    STATIC = "static"
    DHCP = "dhcp"


class NetworkError(VinitdError):
    """A device could not be brought up, addressed or routed, or found no DHCP lease."""


@dataclass(frozen=True)
class Interface:
    """One configured ethernet device, as it was when network setup finished."""

    name: str  # eth<n>: vorteil's name, used on the console and in [[route]]
    device: str  # the kernel's name (the same on vorteil kernels)
    index: int  # n: configured from network[n]
    ifindex: int
    source: Source
    address: str
    mask: str
    gateway: str  # "" when none
    mtu: int
    dns: tuple[str, ...] = ()
    ntp: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    host_name: str = ""  # from DHCP, sanitised; "" when none or unusable
    lease_time: int | None = None  # seconds; None for static or infinite leases

    @property
    def prefix(self) -> int:
        return mask_to_prefix(self.mask)


@dataclass(frozen=True)
class NetworkResult:
    """Every configured interface, and the DHCP renewers that must keep running."""

    interfaces: tuple[Interface, ...] = ()
    renewers: tuple[Renewer, ...] = ()
    service: DhcpService | None = field(default=None, repr=False)

    @property
    def dns(self) -> tuple[str, ...]:
        return _union(i.dns for i in self.interfaces)

    @property
    def ntp(self) -> tuple[str, ...]:
        return _union(i.ntp for i in self.interfaces)

    @property
    def search(self) -> tuple[str, ...]:
        return _union(i.search for i in self.interfaces)

    @property
    def host_name(self) -> str:
        """The first host name a DHCP server gave, or ""."""
        return next((i.host_name for i in self.interfaces if i.host_name), "")

    def stop(self) -> None:
        """Stop renewing leases (tests; the VM keeps its leases until it powers off)."""
        if self.service is not None:
            self.service.stop(self.renewers)


def _union(groups: Iterator[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


# Addresses and masks.


def mask_to_prefix(mask: str) -> int:
    """``255.255.255.0`` → 24; ValueError unless a dotted, contiguous IPv4 mask."""
    bits = int(ipaddress.IPv4Address(mask))
    hosts = ~bits & 0xFFFFFFFF
    if hosts & (hosts + 1):
        raise ValueError(f"{mask!r} is not a contiguous netmask")
    return 32 - hosts.bit_length()


def prefix_to_mask(prefix: int) -> str:
    """24 → ``255.255.255.0``."""
    if not 0 <= prefix <= 32:
        raise ValueError(f"prefix length {prefix} is out of range")
    return str(ipaddress.IPv4Address((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))


@dataclass(frozen=True)
class StaticAddress:
    address: str
    mask: str
    gateway: str


def parse_static(index: int, nic: Network) -> StaticAddress | None:
    """``network[index]``'s static address, None for DHCP; ConfigError names a bad field."""
    if nic.ip in ("", "dhcp"):
        return None
    fields = {"ip": nic.ip, "mask": nic.mask, "gateway": nic.gateway}
    for key, value in fields.items():
        try:
            ipaddress.IPv4Address(value)
            if key == "mask":
                mask_to_prefix(value)
        except ValueError:
            what = "a netmask" if key == "mask" else "an IPv4 address"
            raise ConfigError(
                f"{value!r} is not {what}",
                path=f"network[{index}].{key}",
            ) from None
    return StaticAddress(nic.ip, nic.mask, nic.gateway)


# Configuration.


def configure_address(name: str, device: str, address: str, mask: str, gateway: str) -> None:
    """Address the device; then, with a gateway, the default route through it.

    A /32 mask (Google Cloud) leaves the gateway off-link: a host route to it comes first.
    """
    try:
        netif.set_address(device, address, mask)
    except OSError as err:
        raise NetworkError(f"{name}: can not set address {address}/{mask}: {err}") from err
    if not gateway:
        return
    if mask == netif.HOST_MASK:
        try:
            netif.add_route(gateway, netif.HOST_MASK, device=device)
        except OSError as err:
            raise NetworkError(f"{name}: can not add a host route to {gateway}: {err}") from err
    try:
        netif.add_route(netif.ANY, netif.ANY, gateway=gateway, device=device)
    except OSError as err:
        raise NetworkError(f"{name}: can not add the default route via {gateway}: {err}") from err


@dataclass(frozen=True)
class _Nic:
    """An ethernet device paired with its [[network]] entry."""

    name: str
    device: netif.Device
    index: int
    entry: Network
    static: StaticAddress | None


def configure_network(
    vcfg: VCFG,
    *,
    events: EventChannel,
    sys_net: Path = Path("/sys/class/net"),
    dhcp_timeout: float = DEFAULT_DHCP_TIMEOUT,
    dhcp_host_name: str | None = None,
) -> NetworkResult:
    """Bring up loopback and every ethernet device that has a ``[[network]]`` entry, print the
    addresses, add the ``[[route]]`` entries; raise ConfigError or NetworkError (fatal).

    DHCP interfaces get their first lease concurrently, each within ``dhcp_timeout`` seconds;
    ``dhcp_host_name`` is sent to the server as option 12. Example::

        result = configure_network(boot.vcfg, events=boot.events)
        boot.network = result  # keeps result.renewers referenced
    """
    statics = [parse_static(i, nic) for i, nic in enumerate(vcfg.network)]
    devices = netif.list_devices(sys_net)
    for device in devices:
        if device.type == netif.ARPHRD_LOOPBACK:
            _configure_loopback(device.name)
    nics = _pair(devices, vcfg.network, statics)
    for nic in nics:
        _prepare(nic)

    interfaces: dict[str, Interface] = {}
    for nic in nics:
        if nic.static is not None:
            interfaces[nic.name] = _configure_static(nic, nic.static, events)
    renewers: tuple[Renewer, ...] = ()
    service = None
    if dhcp_nics := [nic for nic in nics if nic.static is None]:
        service, renewers, leased = _configure_dhcp(
            dhcp_nics,
            events,
            _routes_by_interface(vcfg.route),
            timeout=dhcp_timeout,
            host_name=dhcp_host_name,
        )
        interfaces.update(leased)

    configured = tuple(interfaces[nic.name] for nic in nics)
    for line in report_lines(configured):
        console.log_always(line)
    devices_by_name = {nic.name: nic.device.name for nic in nics}
    for route in vcfg.route:
        with contextlib.suppress(_RouteError):
            add_static_route(route, devices_by_name)
    return NetworkResult(configured, renewers, service)


def _pair(
    devices: Sequence[netif.Device],
    entries: Sequence[Network],
    statics: Sequence[StaticAddress | None],
) -> list[_Nic]:
    """The n-th ethernet device with network[n]; devices without an entry are left alone."""
    ethernet = [d for d in devices if d.type == netif.ARPHRD_ETHER]
    for device in ethernet[len(entries) :]:
        console.debug(f"{device.name} has no [[network]] entry: left down")
    return [
        _Nic(f"eth{n}", device, n, entries[n], statics[n])
        for n, device in enumerate(ethernet[: len(entries)])
    ]


def _configure_loopback(device: str) -> None:
    try:
        netif.link_up(device)
    except OSError as err:
        raise NetworkError(f"can not get enable network device {device}: {err}") from err
    with contextlib.suppress(OSError):
        netif.set_address(device, "127.0.0.1", "255.0.0.0")  # the kernel adds it on up already
    with contextlib.suppress(OSError):
        netif.set_mtu(device, LOOPBACK_MTU)


def _prepare(nic: _Nic) -> None:
    device = nic.device.name
    try:
        netif.link_up(device)
    except OSError as err:
        raise NetworkError(f"can not get enable network device {device}: {err}") from err
    if nic.entry.mtu:
        console.debug(f"set mtu to {nic.entry.mtu} for {device}")
        try:
            netif.set_mtu(device, nic.entry.mtu)
        except OSError as err:
            console.debug(f"can not set mtu {nic.entry.mtu} on {device}: {err}")
    if nic.entry.disable_tso:
        netif.disable_offloads(device)
    if nic.entry.tcpdump:
        console.log_level("WARNING", f"tcpdump is not supported: {nic.name} runs without it")


def _configure_static(nic: _Nic, static: StaticAddress, events: EventChannel) -> Interface:
    try:
        configure_address(nic.name, nic.device.name, static.address, static.mask, static.gateway)
    except NetworkError as err:
        source = Source.STATIC.value
        events.emit("network", interface=nic.name, state="failed", message=str(err), source=source)
        raise
    interface = Interface(
        name=nic.name,
        device=nic.device.name,
        index=nic.index,
        ifindex=nic.device.ifindex,
        source=Source.STATIC,
        address=static.address,
        mask=static.mask,
        gateway=static.gateway,
        mtu=_read_mtu(nic.device.name),
    )
    _emit_configured(events, interface)
    return interface


def _emit_configured(events: EventChannel, interface: Interface) -> None:
    events.emit(
        "network",
        interface=interface.name,
        state="configured",
        address=interface.address,
        prefix=interface.prefix,
        gateway=interface.gateway,
        source=interface.source.value,
    )


def _read_mtu(device: str) -> int:
    try:
        return netif.get_mtu(device)
    except OSError:
        return 0


# DHCP.


def _configure_dhcp(
    nics: Sequence[_Nic],
    events: EventChannel,
    routes: Mapping[str, tuple[Route, ...]],
    *,
    timeout: float,
    host_name: str | None,
) -> tuple[DhcpService, tuple[Renewer, ...], dict[str, Interface]]:
    """First leases for ``nics``, all at once; NetworkError if any interface got none."""
    from vinitd import dhcp  # deferred: pyroute2 and asyncio cost ~1.6 s under emulation

    appliers = {
        nic.device.name: _LeaseApplier(nic, events, routes.get(nic.name, ())) for nic in nics
    }
    service = dhcp.DhcpService()
    outcomes = service.acquire(appliers, dhcp.Settings(timeout=timeout, host_name=host_name))
    renewers = tuple(o for o in outcomes.values() if isinstance(o, dhcp.Renewer))
    failures = []
    for nic in nics:
        outcome = outcomes[nic.device.name]
        if isinstance(outcome, dhcp.DhcpError):
            failures.append(outcome)
            source = Source.DHCP.value
            events.emit(
                "network", interface=nic.name, state="failed", message=str(outcome), source=source
            )
    if failures:
        service.stop(renewers)
        reasons = "; ".join(str(f) for f in failures)
        raise NetworkError(f"can not get IP from DHCP: {reasons}") from failures[0]

    leased = {}
    for nic in nics:
        interface = appliers[nic.device.name].interface
        if interface is None:  # a Renewer returns only once its first lease is applied
            raise NetworkError(f"{nic.name}: DHCP reported a lease that was never applied")
        leased[nic.name] = interface
        _emit_configured(events, interface)
    return service, renewers, leased


class _LeaseApplier:
    """Puts one NIC's DHCP leases on it; runs in the DHCP thread (vinitd.dhcp.LeaseHandler)."""

    def __init__(self, nic: _Nic, events: EventChannel, routes: tuple[Route, ...]) -> None:
        self.nic = nic
        self.events = events
        self.routes = routes
        self.interface: Interface | None = None

    def bound(self, lease: Lease, *, first: bool) -> None:
        if first:
            self.interface = self._apply(lease)
            return
        try:
            self.interface = self._apply(lease)
        except (OSError, NetworkError) as err:
            console.log_level("ERROR", f"{self.nic.name}: can not apply DHCP lease: {err}")
            self._emit("failed", message=str(err))
            return
        for line in report_lines((self.interface,)):
            console.log_always(line)
        names = {self.nic.name: self.nic.device.name}
        for route in self.routes:  # the old address took them along
            with contextlib.suppress(_RouteError):
                add_static_route(route, names)
        _emit_configured(self.events, self.interface)

    def renewed(self, lease: Lease) -> None:
        console.debug(f"{self.nic.name}: DHCP lease {lease.address} renewed")
        self._emit("renewed", address=lease.address)

    def lost(self, lease: Lease, reason: str) -> None:
        console.log_level("WARNING", f"{self.nic.name}: DHCP lease {lease.address} lost: {reason}")
        # Taking the address away takes the routes through it along.
        with contextlib.suppress(OSError):
            netif.set_address(self.nic.device.name, netif.ANY, netif.ANY)
        self._emit("lost", address=lease.address, message=reason)

    def _emit(self, state: str, **fields: object) -> None:
        self.events.emit(
            "network", interface=self.nic.name, state=state, source=Source.DHCP.value, **fields
        )

    def _apply(self, lease: Lease) -> Interface:
        device = self.nic.device.name
        if lease.mtu and not self.nic.entry.mtu:
            console.debug(f"set mtu to {lease.mtu} for {device} (DHCP)")
            try:
                netif.set_mtu(device, lease.mtu)
            except OSError as err:
                console.debug(f"can not set mtu {lease.mtu} on {device}: {err}")
        configure_address(self.nic.name, device, lease.address, lease.mask, lease.gateway)
        return Interface(
            name=self.nic.name,
            device=device,
            index=self.nic.index,
            ifindex=self.nic.device.ifindex,
            source=Source.DHCP,
            address=lease.address,
            mask=lease.mask,
            gateway=lease.gateway,
            mtu=_read_mtu(device),
            dns=lease.dns,
            ntp=lease.ntp,
            search=lease.search,
            host_name=_usable_host_name(self.nic.name, lease.host_name),
            lease_time=lease.lease_time,
        )


def _usable_host_name(name: str, offered: str) -> str:
    if not offered:
        return ""
    try:
        return hostnames.sanitize(offered)
    except ConfigError as err:
        console.log_level("WARNING", f"ignoring hostname {offered!r} from DHCP on {name}: {err}")
        return ""


# Console lines and [[route]] entries.


def report_lines(interfaces: Sequence[Interface]) -> list[str]:
    """vorteil's address lines, by interface name (a string sort: eth10 before eth2)."""
    if not interfaces:
        return ["ip\t: no network devices available"]
    lines = []
    for interface in sorted(interfaces, key=lambda i: i.name):
        lines.append(f"{interface.name} ip\t: {interface.address}")
        lines.append(f"{interface.name} mask\t: {interface.mask}")
        lines.append(f"{interface.name} gateway\t: {interface.gateway or '<nil>'}")
    return lines


class _RouteError(Exception):
    """A [[route]] entry that was skipped (already logged)."""


def _routes_by_interface(routes: Sequence[Route]) -> dict[str, tuple[Route, ...]]:
    found: dict[str, list[Route]] = {}
    for route in routes:
        found.setdefault(route.interface, []).append(route)
    return {name: tuple(entries) for name, entries in found.items()}


def add_static_route(route: Route, devices: Mapping[str, str]) -> None:
    """One ``[[route]]``: a direct host route to the gateway, then the route through it.

    ``devices`` maps eth<n> to kernel names. A problem is logged at ERROR (vorteil's words) and
    raised as _RouteError. The host route is added even when the destination holds the
    gateway: vorteil's RTF_HOST made the kernel ignore its mask, so it always was a /32.
    """
    try:
        destination = ipaddress.IPv4Network(route.destination)
    except ValueError:
        _route_error(f"can not set route destination: {route.destination}")
    try:
        ipaddress.IPv4Address(route.gateway)
    except ValueError:
        _route_error(f"gateway {route.gateway} invalid")
    device = devices.get(route.interface, route.interface)
    try:
        netif.add_route(route.gateway, netif.HOST_MASK, device=device)
    except OSError as err:
        _route_error(f"can not set route direct link: {err}")
    try:
        netif.add_route(
            str(destination.network_address),
            str(destination.netmask),
            gateway=route.gateway,
            device=device,
            static=True,
        )
    except OSError as err:
        _route_error(f"can not set route: {err}")


def _route_error(message: str) -> NoReturn:
    console.log_level("ERROR", message)
    raise _RouteError(message)
