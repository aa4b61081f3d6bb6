"""vinitd.network and vinitd.dhcp: pure helpers here; the rest in network namespaces, as root.

The namespace tests wire a client namespace to a server namespace with veth pairs, run a real
dnsmasq in the server one, and run `configure_network` in the client one (a child process under
``ip netns exec``, which also gives it the namespace's /sys). The child writes its result as
JSON lines; its stdout is the console.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vinitd import netif, network
from vinitd.errors import ConfigError
from vinitd.vcfg.model import Network

ROOT = Path(__file__).resolve().parents[2]
DNSMASQ = "/usr/sbin/dnsmasq"
CLIENT_MAC = "02:00:00:77:00:10"
SECOND_MAC = "02:00:00:78:00:10"

# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "prefix"),
    [("0.0.0.0", 0), ("255.0.0.0", 8), ("255.255.255.0", 24), ("255.255.255.255", 32)],
)
def test_mask_and_prefix_convert_both_ways(mask: str, prefix: int) -> None:
    """A dotted mask and its prefix length map onto each other."""
    assert network.mask_to_prefix(mask) == prefix
    assert network.prefix_to_mask(prefix) == mask


@pytest.mark.parametrize("mask", ["255.0.255.0", "24", "255.255.255.256", ""])
def test_mask_to_prefix_rejects_what_is_no_netmask(mask: str) -> None:
    """Non-contiguous, prefix-style and malformed masks are refused."""
    with pytest.raises(ValueError):
        network.mask_to_prefix(mask)


def test_parse_static_names_the_bad_field() -> None:
    """An invalid mask is reported with its field path; DHCP entries parse to None."""
    assert network.parse_static(0, Network(ip="dhcp")) is None
    assert network.parse_static(0, Network()) is None
    good = Network(ip="10.0.0.5", mask="255.255.255.0", gateway="10.0.0.1")
    assert network.parse_static(0, good) == network.StaticAddress(
        "10.0.0.5", "255.255.255.0", "10.0.0.1"
    )
    with pytest.raises(ConfigError, match=r"network\[1\]\.mask: '255\.0\.255\.0' is not a netmask"):
        network.parse_static(1, Network(ip="10.0.0.5", mask="255.0.255.0", gateway="10.0.0.1"))
    with pytest.raises(ConfigError, match=r"network\[0\]\.gateway: '' is not an IPv4 address"):
        network.parse_static(0, Network(ip="10.0.0.5", mask="255.255.255.0"))


def _interface(name: str, address: str, gateway: str = "") -> network.Interface:
    return network.Interface(
        name=name,
        device=name,
        index=int(name[3:]),
        ifindex=int(name[3:]) + 2,
        source=network.Source.STATIC,
        address=address,
        mask="255.255.255.0",
        gateway=gateway,
        mtu=1500,
    )


def test_report_lines_are_vorteils() -> None:
    """Lines are sorted as strings (eth10 before eth2), tab-separated, `<nil>` without gateway."""
    lines = network.report_lines(
        [_interface("eth2", "10.0.2.15", "10.0.2.2"), _interface("eth10", "10.0.10.5")]
    )
    assert lines == [
        "eth10 ip\t: 10.0.10.5",
        "eth10 mask\t: 255.255.255.0",
        "eth10 gateway\t: <nil>",
        "eth2 ip\t: 10.0.2.15",
        "eth2 mask\t: 255.255.255.0",
        "eth2 gateway\t: 10.0.2.2",
    ]
    assert network.report_lines([]) == ["ip\t: no network devices available"]


def test_dhcp_host_name_is_sanitised_or_dropped() -> None:
    """A DHCP host name follows the configured name's rules; one with nothing legal is dropped."""
    assert network._usable_host_name("eth0", "Web_1.Example") == "web-1.example"
    assert network._usable_host_name("eth0", "") == ""
    assert network._usable_host_name("eth0", "a.___") == ""


def test_list_devices_orders_by_kernel_index(tmp_path: Path) -> None:
    """sysfs entries come back by ifindex; one without a readable type is left out."""
    for name, ifindex, kind in [("eth1", "3", "1"), ("lo", "1", "772"), ("eth0", "2", "1")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "ifindex").write_text(ifindex + "\n")
        (tmp_path / name / "type").write_text(kind + "\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ifindex").write_text("9\n")
    assert netif.list_devices(tmp_path) == [
        netif.Device("lo", 1, 772),
        netif.Device("eth0", 2, 1),
        netif.Device("eth1", 3, 1),
    ]


# Option 119 exactly as dnsmasq sends `example.test,corp.test`: the second name points back.
DNSMASQ_SEARCH = bytes.fromhex("076578616d706c6504746573740004636f7270c008")


def test_decode_domain_search_follows_pointers() -> None:
    """RFC 1035 compression in option 119 is undone; loops and truncation are errors."""
    from vinitd import dhcp

    assert dhcp.decode_domain_search(DNSMASQ_SEARCH) == ("example.test", "corp.test")
    assert dhcp.decode_domain_search(b"") == ()
    with pytest.raises(ValueError, match="pointer loop"):
        dhcp.decode_domain_search(b"\xc0\x00")
    with pytest.raises(ValueError, match="ends inside a label"):
        dhcp.decode_domain_search(b"\x07exam")


def test_lease_from_ack_decodes_options() -> None:
    """A decoded ACK gives the values vinitd applies; option 15 joins the search list once."""
    from vinitd import dhcp

    ack = {
        "yiaddr": "10.0.2.15",
        "options": {
            "subnet_mask": "255.255.255.0",
            "router": ["10.0.2.2", "10.0.2.3"],
            "name_server": ["10.0.2.3"],
            "ntp_servers": ["10.0.2.4"],
            "domain_search": list(DNSMASQ_SEARCH),
            "domain_name": "corp.test",
            "host_name": "Web_1",
            "interface_mtu": 1400,
            "lease_time": -1,
            "server_id": "10.0.2.2",
        },
    }
    lease = dhcp.Lease.from_ack("eth0", ack)
    assert lease.gateway == "10.0.2.2"
    assert lease.search == ("example.test", "corp.test")
    assert (lease.dns, lease.ntp, lease.mtu) == (("10.0.2.3",), ("10.0.2.4",), 1400)
    assert lease.lease_time is None  # infinite
    bare = dhcp.Lease.from_ack("eth0", {"yiaddr": "10.0.2.15", "options": {"domain_name": "a.b"}})
    assert (bare.mask, bare.gateway, bare.search) == ("255.255.255.255", "", ("a.b",))


def test_backoff_doubles_up_to_the_cap() -> None:
    """Resends wait 1, 2, 4, 8, 8 s, each with up to a quarter more as jitter."""
    from vinitd import dhcp

    delays = list(itertools.islice(dhcp.backoff(1.0, 8.0)(), 6))
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base <= delay <= base * 1.25


def _modules_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return run.stdout.split()


def test_static_network_imports_no_pyroute2_or_asyncio() -> None:
    """vinitd.network alone loads neither pyroute2 nor asyncio (seconds under emulation)."""
    loaded = _modules_after("import vinitd.network")
    assert [m for m in loaded if m.split(".")[0] in ("pyroute2", "asyncio")] == []


def test_dhcp_import_skips_the_pyroute2_package_init() -> None:
    """vinitd.dhcp loads the DHCP client without NDB/sqlite3; `from pyroute2 import` still works."""
    loaded = _modules_after("import vinitd.dhcp")
    assert "pyroute2.dhcp.client" in loaded
    assert "pyroute2.ndb.main" not in loaded and "sqlite3" not in loaded
    later = _modules_after("import vinitd.dhcp\nfrom pyroute2 import IPRoute, config")
    assert "pyroute2.ndb.main" in later


# --- network namespaces ---------------------------------------------------------------------

CHILD = r"""
import dataclasses, json, sys, time
from pathlib import Path
from vinitd import console, netif, network
from vinitd.events import EventChannel
from vinitd.vcfg import codec

console.set_level("WARNING")  # what vorteil's default loglevel=4 gives
spec = json.loads(sys.argv[1])
out = Path(spec["out"])

def report(phase, **fields):
    with out.open("a") as stream:
        stream.write(json.dumps({"phase": phase, **fields}) + "\n")

vcfg = codec.loads(json.dumps(spec["vcfg"]), source="test")
started = time.monotonic()
try:
    result = network.configure_network(
        vcfg, events=EventChannel(Path(spec["events"])), dhcp_timeout=spec["dhcp_timeout"]
    )
except Exception as err:
    report("error", error=type(err).__name__, message=str(err), took=time.monotonic() - started)
    raise SystemExit(0)
offloads = {}
for name, command in spec.get("offloads", {}).items():
    try:
        offloads[name] = netif.ethtool_value("eth0", command)
    except OSError as err:
        offloads[name] = str(err)
report(
    "configured",
    took=time.monotonic() - started,
    interfaces=[dataclasses.asdict(i) for i in result.interfaces],
    dns=result.dns, ntp=result.ntp, search=result.search, host_name=result.host_name,
    offloads=offloads,
)
if result.renewers:
    renewer = result.renewers[0]
    first = result.interfaces[0].address
    deadline = time.monotonic() + spec.get("watch", 0)
    while time.monotonic() < deadline:
        if spec["until"] == "renewed" and renewer.renewals:
            break
        if spec["until"] == "new-address" and renewer.lease and renewer.lease.address != first:
            break
        time.sleep(0.1)
    lease = dataclasses.asdict(renewer.lease) if renewer.lease else None
    report("watched", renewals=renewer.renewals, lease=lease)
result.stop()
"""

# ethtool "get" commands, to read back what disable-tso turned off.
ETHTOOL_GET = {"rx-checksum": 0x14, "tx-checksum": 0x16, "sg": 0x18, "tso": 0x1E, "gso": 0x23}


def _ip(*argv: str) -> str:
    run = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {run.stderr.strip()}")
    return run.stdout


@dataclass
class Child:
    """A finished (or running) configure_network in the client namespace."""

    process: subprocess.Popen[str]
    out: Path
    events_file: Path

    def phases(self) -> dict[str, dict[str, Any]]:
        if not self.out.exists():
            return {}
        lines = self.out.read_text().splitlines()
        return {record["phase"]: record for record in map(json.loads, lines)}

    def wait_phase(self, phase: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if phase in self.phases():
                return self.phases()[phase]
            if self.process.poll() is not None and phase not in self.phases():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {phase!r} from the child; it wrote {self.phases()}")

    def finish(self, timeout: float = 30.0) -> list[str]:
        """Wait for the child; return its console lines without the uptime prefix."""
        stdout, stderr = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, stderr
        return [re.sub(r"^\[\d+\.\d{6}\] ", "", line) for line in stdout.splitlines()]

    def events(self) -> list[dict[str, Any]]:
        lines = self.events_file.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["type"] == "network"]


@dataclass
class Lab:
    """A client namespace wired to a server namespace by veth pairs; dnsmasq on the server."""

    tmp: Path
    server: str
    client: str
    dnsmasqs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    children: list[subprocess.Popen[str]] = field(default_factory=list)
    runs: Iterator[int] = field(default_factory=itertools.count)

    def link(self, name: str, mac: str, server_address: str) -> None:
        """``name`` in the client (down, with ``mac``), its peer s<name> up in the server."""
        peer = f"s{name}"
        _ip("link", "add", peer, "netns", self.server, "type", "veth",
            "peer", "name", name, "netns", self.client, "address", mac)  # fmt: skip
        _ip("-n", self.server, "addr", "add", server_address, "dev", peer)
        _ip("-n", self.server, "link", "set", peer, "up")

    def dnsmasq(self, *options: str, peers: tuple[str, ...] = ("seth0",)) -> Path:
        """Start dnsmasq on ``peers``; returns its log (with --log-dhcp)."""
        run = next(self.runs)
        log_path = self.tmp / f"dnsmasq-{run}.log"
        argv = [
            "ip", "netns", "exec", self.server, DNSMASQ,
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            *(f"--interface={peer}" for peer in peers),
            "--no-ping",  # else a fresh address waits for an ICMP echo check
            f"--dhcp-leasefile={self.tmp / f'leases-{run}'}",
            f"--pid-file={self.tmp / f'dnsmasq-{run}.pid'}",
            "--log-dhcp",
            *options,
        ]  # fmt: skip
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        self.dnsmasqs.append(process)
        deadline = time.monotonic() + 5
        while b"DHCP, IP range" not in log_path.read_bytes():  # logged once listening
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start: {log_path.read_text()}")
            time.sleep(0.05)
        return log_path

    def stop_dnsmasq(self) -> None:
        for process in self.dnsmasqs:
            process.terminate()
            process.wait(timeout=5)
        self.dnsmasqs.clear()

    def start(self, vcfg: dict[str, Any], *, dhcp_timeout: float = 10.0, **spec: Any) -> Child:
        """Run configure_network(vcfg) in the client namespace."""
        run = next(self.runs)
        out = self.tmp / f"child-{run}.jsonl"
        events = self.tmp / f"events-{run}.jsonl"
        events.touch()
        spec = {
            "vcfg": vcfg,
            "out": str(out),
            "events": str(events),
            "dhcp_timeout": dhcp_timeout,
            "until": "",
            **spec,
        }
        argv = ["ip", "netns", "exec", self.client, sys.executable, "-c", CHILD, json.dumps(spec)]
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.children.append(process)
        return Child(process, out, events)

    def run(self, vcfg: dict[str, Any], **spec: Any) -> tuple[Child, list[str]]:
        child = self.start(vcfg, **spec)
        return child, child.finish()

    def client_ip(self, *argv: str) -> str:
        return _ip("-n", self.client, *argv)

    def close(self) -> None:
        for process in self.children:
            if process.poll() is None:
                process.kill()
            process.communicate()
        self.stop_dnsmasq()
        for namespace in (self.client, self.server):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


_lab_numbers = itertools.count()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Two fresh namespaces named after this process; eth0 in the client, seth0 in the server."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("ip", DNSMASQ) if not shutil.which(tool)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")  # a failure under CI=true (conftest)
    number = next(_lab_numbers)
    lab = Lab(tmp_path, f"vnS{os.getpid()}-{number}", f"vnC{os.getpid()}-{number}")
    try:
        _ip("netns", "add", lab.server)
    except RuntimeError as err:
        pytest.skip(f"cannot create a network namespace: {err}")
    try:
        _ip("netns", "add", lab.client)
        lab.link("eth0", CLIENT_MAC, "10.77.0.1/24")
        yield lab
    finally:
        lab.close()


DHCP_OPTIONS = (
    "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,120s",
    "--dhcp-option=3,10.77.0.1",
    "--dhcp-option=6,10.77.0.1",
    "--dhcp-option=42,10.77.0.1",
    "--dhcp-option=119,example.test,corp.test",
    "--dhcp-option=15,corp.test",
    "--dhcp-option=26,1400",
    f"--dhcp-host={CLIENT_MAC},Guest-One",
)
ROUTE = {"interface": "eth0", "destination": "10.99.0.0/16", "gateway": "10.77.0.254"}


def _in_range(address: str, first: int, last: int) -> bool:
    prefix, _, host = address.rpartition(".")
    return prefix == "10.77.0" and first <= int(host) <= last


def test_dhcp_applies_the_acknowledged_lease(lab: Lab) -> None:
    """A DHCP NIC gets address, mask, router, MTU and the extras; routes follow the lease."""
    lab.dnsmasq(*DHCP_OPTIONS)
    child, console = lab.run({"network": [{"ip": "dhcp"}], "route": [ROUTE]})

    result = child.phases()["configured"]
    (eth0,) = result["interfaces"]
    address = eth0["address"]
    assert _in_range(address, 50, 99)
    assert eth0 | {"address": "-"} == {
        "name": "eth0",
        "device": "eth0",
        "index": 0,
        "ifindex": eth0["ifindex"],
        "source": "dhcp",
        "address": "-",
        "mask": "255.255.255.0",
        "gateway": "10.77.0.1",
        "mtu": 1400,
        "dns": ["10.77.0.1"],
        "ntp": ["10.77.0.1"],
        "search": ["example.test", "corp.test"],
        "host_name": "guest-one",
        "lease_time": 120,
    }
    assert (result["dns"], result["host_name"]) == (["10.77.0.1"], "guest-one")
    assert result["took"] < 5
    assert console == [
        f"eth0 ip\t: {address}",
        "eth0 mask\t: 255.255.255.0",
        "eth0 gateway\t: 10.77.0.1",
    ]
    assert f"inet {address}/24" in lab.client_ip("addr", "show", "eth0")
    routes = lab.client_ip("route").splitlines()
    assert "default via 10.77.0.1 dev eth0 " in routes
    assert "10.77.0.254 dev eth0 scope link " in routes
    assert "10.99.0.0/16 via 10.77.0.254 dev eth0 " in routes
    assert "inet 127.0.0.1/8" in lab.client_ip("addr", "show", "lo")
    assert [(e["interface"], e["state"], e["source"], e["address"]) for e in child.events()] == [
        ("eth0", "configured", "dhcp", address)
    ]


def test_dhcp_on_two_nics_at_once(lab: Lab) -> None:
    """Each NIC gets its own lease; the console lists them by name."""
    lab.link("eth1", SECOND_MAC, "10.78.0.1/24")
    lab.dnsmasq(
        "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,120s",
        "--dhcp-range=10.78.0.50,10.78.0.99,255.255.255.0,120s",
        peers=("seth0", "seth1"),
    )
    child, console = lab.run({"network": [{"ip": "dhcp"}, {"ip": ""}]})

    eth0, eth1 = child.phases()["configured"]["interfaces"]
    assert (eth0["name"], eth0["gateway"], eth1["name"], eth1["gateway"]) == (
        "eth0",
        "10.77.0.1",
        "eth1",
        "10.78.0.1",
    )
    assert [line.split("\t")[0] for line in console] == [
        "eth0 ip",
        "eth0 mask",
        "eth0 gateway",
        "eth1 ip",
        "eth1 mask",
        "eth1 gateway",
    ]
    assert f"inet {eth1['address']}/24" in lab.client_ip("addr", "show", "eth1")


def test_dhcp_gives_up_after_the_timeout(lab: Lab) -> None:
    """With no server, DHCP fails after dhcp_timeout with a message that says why."""
    child, console = lab.run({"network": [{"ip": "dhcp"}]}, dhcp_timeout=3)

    error = child.phases()["error"]
    assert error["error"] == "NetworkError"
    assert error["message"] == (
        "can not get IP from DHCP: eth0: no DHCP lease after 3 s: no server answered the DISCOVERs"
    )
    assert 3 <= error["took"] < 6
    assert console == []
    assert [(e["state"], e["message"]) for e in child.events()] == [
        ("failed", error["message"].removeprefix("can not get IP from DHCP: "))
    ]
    assert "inet " not in lab.client_ip("addr", "show", "eth0")


def test_dhcp_renews_at_t1(lab: Lab) -> None:
    """The lease is renewed in the background when T1 (option 58) expires."""
    log_path = lab.dnsmasq(*DHCP_OPTIONS, "--dhcp-option=58,2", "--dhcp-option=59,4")
    child = lab.start({"network": [{"ip": "dhcp"}]}, watch=10, until="renewed")
    child.finish()

    phases = child.phases()
    address = phases["configured"]["interfaces"][0]["address"]
    assert phases["watched"]["renewals"] >= 1
    assert phases["watched"]["lease"]["address"] == address
    assert [e["state"] for e in child.events()][:2] == ["configured", "renewed"]
    assert log_path.read_text().count(f"DHCPACK(seth0) {address}") >= 2


def test_dhcp_nak_starts_over(lab: Lab) -> None:
    """A NAK at renewal drops the address; a new lease is applied with the [[route]] entries."""
    lab.dnsmasq(*DHCP_OPTIONS, "--dhcp-option=58,3", "--dhcp-option=59,6")
    child = lab.start(
        {"network": [{"ip": "dhcp"}], "route": [ROUTE]}, watch=20, until="new-address"
    )
    first = child.wait_phase("configured", timeout=10)["interfaces"][0]["address"]

    # The same server comes back with another range and refuses the old address.
    lab.stop_dnsmasq()
    log_path = lab.dnsmasq(
        *(o for o in DHCP_OPTIONS if not o.startswith("--dhcp-range")),
        "--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,120s",
        "--dhcp-option=58,3",
        "--dhcp-authoritative",
    )
    console = child.finish()

    lease = child.phases()["watched"]["lease"]
    assert lease is not None and _in_range(lease["address"], 150, 199), log_path.read_text()
    assert f"DHCPNAK(seth0) {first}" in log_path.read_text()
    states = [(e["state"], e.get("address")) for e in child.events()]
    assert states[:3] == [
        ("configured", first),
        ("lost", first),
        ("configured", lease["address"]),
    ]
    assert f"eth0 ip\t: {lease['address']}" in console
    assert any("DHCP lease" in line and "lost" in line for line in console), console
    addresses = lab.client_ip("-4", "addr", "show", "eth0")
    assert f"inet {lease['address']}/24" in addresses and f"inet {first}/" not in addresses
    routes = lab.client_ip("route").splitlines()
    assert "default via 10.77.0.1 dev eth0 " in routes
    assert "10.99.0.0/16 via 10.77.0.254 dev eth0 " in routes


def test_static_address_routes_and_offloads(lab: Lab) -> None:
    """A static NIC gets address, gateway, MTU and no offloads; bad [[route]]s are skipped."""
    vcfg = {
        "network": [
            {
                "ip": "10.77.0.5",
                "mask": "255.255.255.0",
                "gateway": "10.77.0.1",
                "mtu": 1400,
                "disable-tso": True,
            }
        ],
        "route": [
            ROUTE,
            {"interface": "eth0", "destination": "10.98.0.1/16", "gateway": "10.77.0.254"},
            {"interface": "eth0", "destination": "10.97.0.0/16", "gateway": "nope"},
            {"interface": "eth7", "destination": "10.96.0.0/16", "gateway": "10.77.0.254"},
        ],
    }
    child, console = lab.run(vcfg, offloads=ETHTOOL_GET)

    result = child.phases()["configured"]
    (eth0,) = result["interfaces"]
    assert (eth0["source"], eth0["address"], eth0["mtu"]) == ("static", "10.77.0.5", 1400)
    assert result["offloads"] == dict.fromkeys(ETHTOOL_GET, 0)
    assert console[:3] == [
        "eth0 ip\t: 10.77.0.5",
        "eth0 mask\t: 255.255.255.0",
        "eth0 gateway\t: 10.77.0.1",
    ]
    errors = [re.sub(r"^\[ERROR\]: [\d -:]+ - ", "", line) for line in console[3:]]
    assert errors == [
        "can not set route destination: 10.98.0.1/16",
        "gateway nope invalid",
        "can not set route direct link: [Errno 19] No such device",
    ]
    assert lab.client_ip("route").splitlines() == [
        "default via 10.77.0.1 dev eth0 ",
        "10.77.0.0/24 dev eth0 proto kernel scope link src 10.77.0.5 ",
        "10.77.0.254 dev eth0 scope link ",
        "10.99.0.0/16 via 10.77.0.254 dev eth0 ",
    ]
    assert "mtu 1400" in lab.client_ip("link", "show", "eth0")
    assert [(e["state"], e["source"], e["prefix"]) for e in child.events()] == [
        ("configured", "static", 24)
    ]


def test_static_host_mask_routes_the_gateway_first(lab: Lab) -> None:
    """With a /32 (Google Cloud style) the gateway gets a host route before the default one."""
    vcfg = {"network": [{"ip": "10.77.0.5", "mask": "255.255.255.255", "gateway": "10.77.0.1"}]}
    _, console = lab.run(vcfg)

    assert console[1] == "eth0 mask\t: 255.255.255.255"
    assert "inet 10.77.0.5/32" in lab.client_ip("addr", "show", "eth0")
    assert lab.client_ip("route").splitlines() == [
        "default via 10.77.0.1 dev eth0 ",
        "10.77.0.1 dev eth0 scope link ",
    ]


def test_more_nics_than_entries_leaves_the_rest_down(lab: Lab) -> None:
    """A second NIC without a [[network]] entry stays down and unaddressed (quirk Q3)."""
    lab.link("eth1", SECOND_MAC, "10.78.0.1/24")
    vcfg = {"network": [{"ip": "10.77.0.5", "mask": "255.255.255.0", "gateway": "10.77.0.1"}]}
    child, console = lab.run(vcfg)

    assert [i["name"] for i in child.phases()["configured"]["interfaces"]] == ["eth0"]
    assert [line.split("\t")[0] for line in console] == ["eth0 ip", "eth0 mask", "eth0 gateway"]
    eth1 = lab.client_ip("addr", "show", "eth1")
    assert "state DOWN" in eth1 and "inet " not in eth1


def test_no_entries_brings_up_loopback_only(lab: Lab) -> None:
    """Without [[network]] entries only loopback comes up, and the console says so."""
    child, console = lab.run({})

    assert child.phases()["configured"]["interfaces"] == []
    assert console == ["ip\t: no network devices available"]
    assert "state DOWN" in lab.client_ip("link", "show", "eth0")
    assert "inet 127.0.0.1/8" in lab.client_ip("addr", "show", "lo")


def test_invalid_static_entry_fails_before_touching_a_device(lab: Lab) -> None:
    """An invalid mask is a ConfigError naming the field; no device is brought up."""
    vcfg = {"network": [{"ip": "10.77.0.5", "mask": "255.0.255.0", "gateway": "10.77.0.1"}]}
    child, console = lab.run(vcfg)

    error = child.phases()["error"]
    assert error["error"] == "ConfigError"
    assert error["message"].startswith("network[0].mask: '255.0.255.0' is not a netmask")
    assert console == []
    assert "state DOWN" in lab.client_ip("link", "show", "lo")
