"""DHCP for vinitd: pyroute2's client, kept running in a background thread for the life of the VM.

Imported only when a ``[[network]]`` entry asks for DHCP: pyroute2 and asyncio cost about 1.6 s
under emulation (docs: platform.md). pyroute2's package ``__init__`` imports every subsystem
(NDB, and with it sqlite3), so it is skipped: see `_skip_package_init`.

Behaviour, against vorteil's client (vinitd spec §7.4, quirk Q12):

* the address is used only once the server has acknowledged it (vorteil used the first OFFER);
* DISCOVERs and REQUESTs are resent after 1, 2, 4, 8, 8, ... s (with a little jitter); a REQUEST
  left without an ACK for ``ack_timeout`` starts over with a DISCOVER;
* the first lease must come within ``timeout`` seconds, else the interface fails with a message
  that says how far the exchange got;
* afterwards the client renews at T1 (unicast), rebinds at T2 (broadcast) and, on a NAK or when
  the lease expires, drops the address and starts over; the `LeaseHandler` hears of each step.

Every client runs on one asyncio loop in the daemon thread ``vinitd-dhcp``; the handler's
methods are called in that thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vinitd.errors import VinitdError


def _skip_package_init(name: str) -> None:
    """Register package ``name`` without running its ``__init__``, so submodules import alone.

    The stand-in keeps the package usable by others: the first lookup of a name that is not a
    submodule (``from pyroute2 import IPRoute``) runs the real ``__init__`` after all.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a package: the imports below fail with the usual error
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attribute: str) -> object:
        is_submodule = importlib.util.find_spec(f"{name}.{attribute}") is not None
        if attribute.startswith("__") or is_submodule:
            raise AttributeError(attribute)  # from-imports then load the submodule itself
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, attribute)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[name] = package


_skip_package_init("pyroute2")

# The package __init__ would install this NullHandler; without it pyroute2's warnings would
# reach the console through logging's last-resort handler.
import pyroute2.config.log  # noqa: E402, F401
from pyroute2.dhcp import fsm  # noqa: E402
from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig  # noqa: E402
from pyroute2.dhcp.enums import dhcp as options  # noqa: E402
from pyroute2.dhcp.hooks import Hook, Trigger  # noqa: E402
from pyroute2.dhcp.leases import Lease as _Pyroute2Lease  # noqa: E402

log = logging.getLogger(__name__)

# vorteil asked for 1, 3, 15, 6, 58, 42, 117, 119, 12 and 245 (Azure); we add what we apply.
REQUESTED = (
    options.Option.SUBNET_MASK,
    options.Option.ROUTER,
    options.Option.NAME_SERVER,
    options.Option.HOST_NAME,
    options.Option.DOMAIN_NAME,
    options.Option.INTERFACE_MTU,
    options.Option.BROADCAST_ADDRESS,
    options.Option.NTP_SERVERS,
    options.Option.LEASE_TIME,
    options.Option.RENEWAL_TIME,
    options.Option.REBINDING_TIME,
    options.Option.DOMAIN_SEARCH,
)


STOP_GRACE = 10.0  # seconds for a client to open its socket or to shut down


class DhcpError(VinitdError):
    """No lease for an interface: no server answered in time, or the lease could not be used."""


@dataclass(frozen=True)
class Settings:
    """How long the first lease may take and how requests are resent."""

    timeout: float = 30.0  # for the first lease of each interface
    first_retry: float = 1.0  # seconds before the first resend, then doubled ...
    max_retry: float = 8.0  # ... up to this
    ack_timeout: float = 10.0  # a REQUEST without ACK for this long: DISCOVER again
    host_name: str | None = None  # sent as option 12 when set


@dataclass(frozen=True)
class Lease:
    """What a DHCP ACK granted, decoded: the values vinitd applies and hands on."""

    interface: str
    address: str
    mask: str
    routers: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    ntp: tuple[str, ...] = ()
    search: tuple[str, ...] = ()  # option 119, then option 15 if not already there
    host_name: str = ""  # as sent: the caller sanitises it
    mtu: int | None = None
    lease_time: int | None = None  # None: infinite
    renewal_time: int | None = None
    server: str = ""

    @property
    def gateway(self) -> str:
        return self.routers[0] if self.routers else ""

    @classmethod
    def from_ack(cls, interface: str, ack: Mapping[str, Any]) -> Lease:
        found = ack["options"]
        lease_time = found.get("lease_time")
        return cls(
            interface=interface,
            address=ack["yiaddr"],
            # RFC 2131 leaves a missing mask to the client; a /32 with a route to the router
            # works on any link.
            mask=found.get("subnet_mask") or "255.255.255.255",
            routers=tuple(found.get("router", ())),
            dns=tuple(found.get("name_server", ())),
            ntp=tuple(found.get("ntp_servers", ())),
            search=_search_domains(found),
            host_name=str(found.get("host_name", "")),
            mtu=found.get("interface_mtu"),
            lease_time=None if lease_time in (None, -1) else lease_time,
            renewal_time=found.get("renewal_time"),
            server=found.get("server_id", ""),
        )


class LeaseHandler(Protocol):
    """Applies leases; called in the DHCP thread."""

    def bound(self, lease: Lease, *, first: bool) -> None:
        """A new lease (or a new address): put it on the interface.

        For the first lease an exception fails the interface; later ones must be handled inside.
        """

    def renewed(self, lease: Lease) -> None:
        """The same address was renewed (T1) or rebound (T2)."""

    def lost(self, lease: Lease, reason: str) -> None:
        """The server refused the lease (NAK) or it expired: take the address away."""


def decode_domain_search(data: bytes) -> tuple[str, ...]:
    """Option 119 (RFC 3397): DNS names, compressed as in RFC 1035 §4.1.4."""
    names: list[str] = []
    offset = 0
    while offset < len(data):
        name, offset = _read_name(data, offset)
        if name:
            names.append(name)
    return tuple(names)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    resume: int | None = None  # where the next name starts, once a pointer was followed
    jumps = 0
    while True:
        if offset >= len(data):
            raise ValueError("domain search list ends inside a name")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise ValueError("domain search list ends inside a pointer")
            if resume is None:
                resume = offset + 2
            jumps += 1
            if jumps > len(data):
                raise ValueError("domain search list has a pointer loop")
            offset = (length & 0x3F) << 8 | data[offset + 1]
            continue
        if length & 0xC0:
            raise ValueError(f"domain search list has a bad label length {length:#x}")
        label = data[offset + 1 : offset + 1 + length]
        if len(label) < length:
            raise ValueError("domain search list ends inside a label")
        labels.append(label.decode("ascii", errors="replace"))
        offset += 1 + length
    return ".".join(labels), offset if resume is None else resume


def _search_domains(found: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    raw = found.get("domain_search")  # pyroute2 has no decoder for 119: a list of bytes
    if raw:
        try:
            names.extend(decode_domain_search(bytes(raw)))
        except (ValueError, TypeError) as err:
            log.debug("ignoring DHCP option 119: %s", err)
    domain = found.get("domain_name")
    if isinstance(domain, str) and domain and domain not in names:
        names.append(domain)
    return tuple(names)


def backoff(first: float, cap: float) -> Callable[[], Iterator[float]]:
    """pyroute2's retransmission schedule: ``first``, doubled up to ``cap``, plus up to 1/4."""

    def schedule() -> Iterator[float]:
        delay = first
        while True:
            yield delay + random.uniform(0, delay / 4)  # noqa: S311 (jitter, not crypto)
            delay = min(delay * 2, cap)

    return schedule


class _MemoryLease(_Pyroute2Lease):  # type: ignore[misc]
    """pyroute2 writes leases to the working directory by default; PID 1 keeps them in memory."""

    def dump(self) -> None:
        pass

    @classmethod
    def load(cls, interface: str) -> None:
        return None


class _Client(AsyncDHCPClient):  # type: ignore[misc]
    """pyroute2's client, counting OFFERs and NAKs so that a failure can say how far it got."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.offers = 0
        self.naks = 0

    async def offer_received(self, msg: Any) -> None:
        self.offers += 1
        await super().offer_received(msg)

    async def nak_received(self, msg: Any) -> None:
        self.naks += 1
        log.debug("%s: DHCP NAK in state %s", self.config.interface, self.state.name)
        await super().nak_received(msg)


class Renewer:
    """Keeps one interface's lease: the running client and the latest lease it got."""

    def __init__(self, interface: str, handler: LeaseHandler, settings: Settings) -> None:
        self.interface = interface
        self.lease: Lease | None = None
        self.renewals = 0  # RENEWED and REBOUND acknowledgements since the first lease
        self._handler = handler
        self._settings = settings
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: asyncio.Future[Lease] | None = None

    def stop(self, timeout: float = STOP_GRACE) -> None:
        """Stop the client (no RELEASE is sent: the VM keeps its address until it powers off)."""
        if self._client is None or self._loop is None or self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout)

    async def start(self) -> Lease:
        """Run the client until the first lease is applied; raise DhcpError after the timeout."""
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        settings = self._settings
        config = ClientConfig(
            interface=self.interface,
            lease_type=_MemoryLease,
            hooks=(
                Hook(func=self._on_bound, triggers={Trigger.BOUND}),
                Hook(func=self._on_renewed, triggers={Trigger.RENEWED, Trigger.REBOUND}),
                Hook(func=self._on_nak, triggers={Trigger.UNBOUND}),
                Hook(func=self._on_expired, triggers={Trigger.EXPIRED}),
            ),
            requested_parameters=REQUESTED,
            timeouts={
                fsm.State.REBOOTING: settings.ack_timeout,
                fsm.State.REQUESTING: settings.ack_timeout,
                fsm.State.SELECTING: 15 * 60,  # pyroute2's: a fresh xid now and then
            },
            retransmission=backoff(settings.first_retry, settings.max_retry),
            release=False,
            hook_timeout=None,
            handle_signals=False,  # signals belong to PID 1's supervisor
            vendor_id=None,
            host_name=settings.host_name,
        )
        client = _Client(config)
        try:
            await client.__aenter__()
        except OSError as err:
            raise DhcpError(f"{self.interface}: can not open a DHCP socket: {err}") from err
        self._client = client
        await client.bootstrap()
        try:
            return await asyncio.wait_for(asyncio.shield(self._first), settings.timeout)
        except TimeoutError:
            why = _why_no_lease(client)
            await self._close()
            raise DhcpError(
                f"{self.interface}: no DHCP lease after {settings.timeout:g} s: {why}"
            ) from None
        except (OSError, VinitdError) as err:
            await self._close()
            raise DhcpError(f"{self.interface}: can not use the DHCP lease: {err}") from err

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    # pyroute2 hooks: each gets pyroute2's lease, with the ACK in `.ack`.

    async def _on_bound(self, lease: Any) -> None:
        decoded = Lease.from_ack(self.interface, lease.ack)
        log.debug("%s: DHCP lease %s/%s", self.interface, decoded.address, decoded.mask)
        first = self._first
        if first is None or first.done():  # bound again after a NAK or an expiry
            self._handler.bound(decoded, first=False)
            self.lease = decoded
            return
        try:
            self._handler.bound(decoded, first=True)
        except (OSError, VinitdError) as err:
            first.set_exception(err)
            return
        self.lease = decoded
        first.set_result(decoded)

    async def _on_renewed(self, lease: Any) -> None:
        decoded = Lease.from_ack(self.interface, lease.ack)
        previous, self.lease = self.lease, decoded
        self.renewals += 1
        if previous is None or (previous.address, previous.mask) != (decoded.address, decoded.mask):
            self._handler.bound(decoded, first=False)  # rebound to another server's address
        else:
            self._handler.renewed(decoded)

    async def _on_nak(self, lease: Any) -> None:
        self._lose("the server refused the lease (NAK)")

    async def _on_expired(self, lease: Any) -> None:
        self._lose("the lease expired")

    def _lose(self, reason: str) -> None:
        if self.lease is not None:
            self._handler.lost(self.lease, reason)
        self.lease = None


def _why_no_lease(client: _Client) -> str:
    if client.naks:
        return f"{client.offers} offer(s), but the server refused ({client.naks} NAK)"
    if client.offers:
        return f"{client.offers} offer(s), but no server acknowledged the request"
    return "no server answered the DISCOVERs"


class DhcpService:
    """One asyncio loop in the daemon thread ``vinitd-dhcp``, running every DHCP client."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="vinitd-dhcp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def acquire(
        self, handlers: Mapping[str, LeaseHandler], settings: Settings
    ) -> dict[str, Renewer | DhcpError]:
        """Get a first lease for every interface at once; each ends as a Renewer or an error."""
        renewers = {name: Renewer(name, handler, settings) for name, handler in handlers.items()}
        future = asyncio.run_coroutine_threadsafe(self._start_all(renewers), self._loop)
        deadline = settings.timeout + STOP_GRACE  # each start ends by itself after the timeout
        try:
            failures = future.result(deadline)
        except TimeoutError:
            future.cancel()
            stuck = DhcpError(f"the DHCP clients did not finish starting in {deadline:g} s")
            return dict.fromkeys(renewers, stuck)
        return {name: failures.get(name, renewer) for name, renewer in renewers.items()}

    async def _start_all(self, renewers: Mapping[str, Renewer]) -> dict[str, DhcpError]:
        names = list(renewers)
        results = await asyncio.gather(
            *(renewers[name].start() for name in names), return_exceptions=True
        )
        failures: dict[str, DhcpError] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, DhcpError):
                failures[name] = result
            elif isinstance(result, BaseException):
                raise result  # a bug, not a network problem: let the caller see it
        return failures

    def stop(self, renewers: Sequence[Renewer] = (), timeout: float = STOP_GRACE) -> None:
        """Stop ``renewers``, then the loop and its thread."""
        for renewer in renewers:
            renewer.stop(timeout)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
