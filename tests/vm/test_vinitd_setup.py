"""vinitd's setup stage in a VM: network, host name, /etc files and sysctls, as a program sees
them (the probe reports them on the console)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from projects.probe_vm import Probe

from vmtest import Machine, StageFailed

pytestmark = pytest.mark.vm
pytest_plugins = ("projects.probe_vm",)

# QEMU's user network: the gateway, its DNS server and the address its DHCP server gives.
GATEWAY = "10.0.2.2"
QEMU_DNS = "10.0.2.3"
DHCP_ADDRESS = "10.0.2.15"
STATIC_ADDRESS = "10.0.2.42"

INVALID_ADDRESS = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py ids"
[[network]]
ip = "10.0.2.300"
mask = "255.255.255.0"
gateway = "10.0.2.2"
"""

STATIC = f"""
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py net env dns:{QEMU_DNS}"
[[network]]
ip = "{STATIC_ADDRESS}"
mask = "255.255.255.0"
gateway = "{GATEWAY}"
"""

DHCP = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py net read:/etc/resolv.conf dns:"
[[network]]
ip = "dhcp"
"""

HOST_AND_ETC = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py hostname env read:/etc/hostname read:/etc/hosts read:/etc/passwd \
read:/etc/group read:/etc/nsswitch.conf read:/etc/localtime read:/etc/machine-id"
[system]
hostname = "probe-$SALT"
user = "svc"
"""

SYSCTLS = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py hostname sysctl:net.core.somaxconn sysctl:net.ipv4.tcp_rmem \
sysctl:vm.swappiness sysctl:vm.max_map_count sysctl:fs.file-max sysctl:kernel.hostname"
[system]
max-fds = 4096
[sysctl]
"net.core.somaxconn" = "1024"
"net.ipv4.tcp_rmem" = "4096 87380 6291456"
"""


def _address_lines(address: str) -> str:
    """vorteil's three lines for eth0, as a regex over the whole console."""
    stamp = r"\[\d+\.\d{6}\] "
    return (
        rf"^{stamp}eth0 ip\t: {re.escape(address)}\n"
        rf"{stamp}eth0 mask\t: 255\.255\.255\.0\n"
        rf"{stamp}eth0 gateway\t: {re.escape(GATEWAY)}$"
    )


def _network_events(vm: Machine) -> list[dict[str, object]]:
    return [
        {key: value for key, value in e.items() if key not in ("v", "time")}
        for e in vm.events
        if e.type == "network"
    ]


def test_an_invalid_static_address_fails_setup(probe: Probe) -> None:
    """network[0].ip "10.0.2.300" (never validated on the way in): setup fails naming it."""
    vm = probe.start(probe.image(INVALID_ADDRESS))

    with pytest.raises(StageFailed) as failed:
        vm.wait_for_stage("launch")
    assert vm.wait_for_shutdown() == 0

    assert failed.value.stage == "setup"
    assert failed.value.message == "network[0].ip: '10.0.2.300' is not an IPv4 address"
    assert failed.value.error == "ConfigError"
    assert re.search(
        r"^\[ERROR\]: .* - can not run setup: network\[0\]\.ip: '10\.0\.2\.300' is not an IPv4",
        vm.console,
        re.MULTILINE,
    ), vm.console
    assert [(span.stage, span.state) for span in vm.timeline] == [
        ("pre-setup", "finished"),
        ("setup", "failed"),
    ]
    assert not [e for e in vm.events if e.type == "program"]


def test_a_static_address_is_configured_and_routed(probe: Probe) -> None:
    """A static [[network]]: vorteil's console lines, eth0's address and default route, and
    QEMU's DNS server reachable through them."""
    vm = probe.start(probe.image(STATIC))

    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    assert re.search(_address_lines(STATIC_ADDRESS), vm.console, re.MULTILINE), vm.console
    assert _network_events(vm) == [
        {
            "type": "network",
            "interface": "eth0",
            "state": "configured",
            "address": STATIC_ADDRESS,
            "prefix": 24,
            "gateway": GATEWAY,
            "source": "static",
        }
    ]
    net = probe.fact(vm, "net")
    assert net["interfaces"]["eth0"] == {"address": STATIC_ADDRESS, "mask": "255.255.255.0"}
    assert net["interfaces"]["lo"] == {"address": "127.0.0.1", "mask": "255.0.0.0"}
    assert net["gateway"] == GATEWAY
    env = probe.fact(vm, "env")
    assert (env["IP0"], env["EXT_IP0"], env["ETH_COUNT"]) == (STATIC_ADDRESS, STATIC_ADDRESS, "1")
    assert probe.fact(vm, "dns", QEMU_DNS)["answered"] is True


@pytest.fixture(scope="module")
def dhcp_vm(probe_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    """One boot with DHCP, shared by the tests of its results (DHCP costs seconds)."""
    probe = Probe(probe_image, tmp_path_factory.mktemp("dhcp"))
    vm = probe.start(probe.image(DHCP))
    vm.wait_for_program(0, "succeeded")
    vm.wait_for_shutdown()
    yield probe
    vm.close()


def test_dhcp_configures_eth0_from_qemu(dhcp_vm: Probe) -> None:
    """ip = "dhcp" (the default): QEMU's DHCP server's address, mask and gateway on eth0."""
    (vm,) = dhcp_vm.machines

    assert vm.returncode == 0
    assert re.search(_address_lines(DHCP_ADDRESS), vm.console, re.MULTILINE), vm.console
    (configured,) = _network_events(vm)
    assert configured["source"] == "dhcp"
    assert (configured["address"], configured["prefix"]) == (DHCP_ADDRESS, 24)
    net = dhcp_vm.fact(vm, "net")
    assert net["interfaces"]["eth0"] == {"address": DHCP_ADDRESS, "mask": "255.255.255.0"}
    assert net["gateway"] == GATEWAY


def test_dhcp_dns_server_answers_the_programs(dhcp_vm: Probe) -> None:
    """The name server in resolv.conf answers: DHCP's own, or a DNS cache whose console line
    (vorteil's ``dns: 10.0.2.3``, tab separated) says it forwards to DHCP's."""
    (vm,) = dhcp_vm.machines

    resolver = dhcp_vm.fact(vm, "dns")
    assert resolver["answered"] is True, resolver
    forwarded = re.search(rf"^\[[\d.]+\] dns\t\t: {re.escape(QEMU_DNS)}$", vm.console, re.MULTILINE)
    assert resolver["server"] == QEMU_DNS or forwarded, vm.console


def test_host_name_and_etc_files(probe: Probe) -> None:
    """hostname "probe-$SALT" and user "svc": the host name, and the /etc vinitd writes."""
    vm = probe.start(probe.image(HOST_AND_ETC))

    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    name = probe.fact(vm, "hostname")
    assert re.fullmatch(r"probe-[a-z0-9-]{8}", name), name
    assert probe.fact(vm, "env")["HOSTNAME"] == name

    def etc(file: str) -> dict[str, object]:
        found: dict[str, object] = probe.fact(vm, "read", f"/etc/{file}")
        assert found.get("mode") == 0o644, (file, found)
        return found

    assert etc("hostname")["text"] == name
    hosts = str(etc("hosts")["text"])
    assert hosts.startswith(f"127.0.0.1\tlocalhost\n127.0.0.1\t{name}\n::1\tip6-localhost ")
    assert etc("passwd")["text"] == (
        "root:x:0:0:root:/:/bin/false\nsvc:x:1000:1000:svc:/:/bin/false\n"
    )
    assert etc("group")["text"] == "root:x:0:root\nsvc:x:1000:svc\n"
    assert "\nhosts:          files dns\n" in str(etc("nsswitch.conf")["text"])
    localtime = bytes.fromhex(str(etc("localtime")["hex"]))
    assert (len(localtime), localtime[:5], localtime[-6:]) == (118, b"TZif2", b"\nUTC0\n")
    machine_id = str(etc("machine-id")["text"])
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", machine_id
    )


def test_sysctls_from_the_vcfg_and_vorteils_defaults(probe: Probe) -> None:
    """[sysctl] entries (one of several values), vorteil's defaults, fs.file-max from max-fds."""
    vm = probe.start(probe.image(SYSCTLS))

    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    def sysctl(name: str) -> str:
        return str(probe.fact(vm, "sysctl", name))

    assert sysctl("net.core.somaxconn") == "1024"  # the kernel's default is 4096
    assert sysctl("net.ipv4.tcp_rmem").split() == ["4096", "87380", "6291456"]
    assert sysctl("vm.swappiness") == "0"
    assert sysctl("vm.max_map_count") == "1048575"
    assert sysctl("fs.file-max") == "4096"
    assert sysctl("kernel.hostname") == probe.fact(vm, "hostname")
    assert "can not set" not in vm.console
