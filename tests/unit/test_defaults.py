"""The default layers (vorteil-image §2.3): what they fill, and what they never touch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagekit.defaults import with_defaults
from imagekit.vcfgfile import parse_vcfg_text
from vinitd.vcfg import codec
from vinitd.vcfg.model import (
    VCFG,
    VM,
    Info,
    Network,
    Privilege,
    Program,
    StdoutMode,
    System,
    TerminateSignal,
)
from vinitd.vcfg.values import Bytes

# The example of vorteil-image §2.7, with this project's default host name template.
SPEC_EXAMPLE = (
    b'{"program":[{"binary":"/app","args":"","env":null,"cwd":"/","stdout":"/dev/vtty",'
    b'"stderr":"/dev/vtty","bootstrap":null,"logfiles":null,"privilege":"root","strace":false,'
    b'"terminate":"SIGTERM"}],'
    b'"network":[{"ip":"dhcp","http":["8080"],"mtu":1500,"tcpdump":false}],'
    b'"system":{"dns":["8.8.8.8"],"hostname":"vorteil-$SALT","max-fds":1024,"user":"root",'
    b'"terminate-wait":3000},'
    b'"info":{"date":""},"vm":{"cpus":1,"ram":"128 MiB"}}'
)

FILLED = with_defaults(VCFG(program=(Program(binary="/app"),), network=(Network(),)))


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (lambda v: v.vm.ram, Bytes.mib(128)),
        (lambda v: v.vm.cpus, 1),
        (lambda v: v.system.hostname, "vorteil-$SALT"),
        (lambda v: v.program[0].terminate, TerminateSignal.SIGTERM),
        (lambda v: v.system.terminate_wait, 3000),
        (lambda v: v.program[0].cwd, "/"),
        (lambda v: v.program[0].stdout, "/dev/vtty"),
        (lambda v: v.program[0].stderr, "/dev/vtty"),
        (lambda v: v.program[0].privilege, Privilege.ROOT),
        (lambda v: v.network[0].mtu, 1500),
        (lambda v: v.network[0].ip, "dhcp"),
        (lambda v: v.system.dns, ("8.8.8.8",)),
        (lambda v: v.system.max_fds, 1024),
        (lambda v: v.system.user, "root"),
    ],
    ids=[
        "ram", "cpus", "hostname", "terminate", "terminate-wait", "cwd", "stdout", "stderr",
        "privilege", "mtu", "ip", "dns", "max-fds", "user",
    ],
)  # fmt: skip
def test_each_empty_field_is_filled(read: Callable[[VCFG], object], expected: object) -> None:
    """Layers 1 and 2 fill each field vorteil's build path fills."""
    assert read(FILLED) == expected


def test_a_dhcp_nic_is_added_when_there_is_none() -> None:
    """Without [[network]], one dhcp NIC with the format's MTU is added."""
    assert with_defaults(VCFG()).network == (Network(ip="dhcp", mtu=1500),)


def test_no_nic_is_added_when_one_exists() -> None:
    """A config with NICs keeps exactly those NICs (each filled)."""
    nics = (Network(ip="10.0.0.2", mask="255.255.255.0", gateway="10.0.0.1"), Network())
    filled = with_defaults(VCFG(network=nics))
    assert [nic.ip for nic in filled.network] == ["10.0.0.2", "dhcp"]


@pytest.mark.parametrize("image_format", ["raw", "qcow2"])
def test_mtu_follows_the_image_format(image_format: str) -> None:
    """raw and qcow2 images both get MTU 1500."""
    assert with_defaults(VCFG(), image_format=image_format).network[0].mtu == 1500


def test_every_program_is_filled() -> None:
    """Each program, not only the first, gets the program defaults."""
    filled = with_defaults(VCFG(program=(Program(binary="/a"), Program(args="/b x"))))
    assert {p.terminate for p in filled.program} == {TerminateSignal.SIGTERM}
    assert {p.cwd for p in filled.program} == {"/"}


@pytest.mark.parametrize(
    ("name", "hostname"),
    [
        ("", "vorteil-$SALT"),
        ("hello", "hello-$SALT"),
        ("API Server", "api-server-$SALT"),
        ("My_App.Example", "my-app-example-$SALT"),
        ("!!!", "vorteil-$SALT"),
    ],
)
def test_hostname_comes_from_info_name(name: str, hostname: str) -> None:
    """The default host name is info.name sanitised plus -$SALT, else vorteil-$SALT."""
    assert with_defaults(VCFG(info=Info(name=name))).system.hostname == hostname


USER_VALUES = VCFG(
    program=(
        Program(
            binary="/bin/server",
            cwd="/srv",
            stdout="/var/log/out",
            stderr="/var/log/err",
            privilege=Privilege.USER,
            terminate=TerminateSignal.SIGQUIT,
        ),
    ),
    network=(Network(ip="10.0.0.2", mask="255.255.255.0", gateway="10.0.0.1", mtu=9000),),
    system=System(
        dns=("1.1.1.1",),
        hostname="api-$SALT",
        max_fds=4096,
        stdout_mode=StdoutMode.SERIAL,
        user="svc",
        terminate_wait=5000,
    ),
    info=Info(name="api server"),
    vm=VM(cpus=4, ram=Bytes.mib(512)),
)


def test_user_values_are_never_overwritten() -> None:
    """A config that sets every defaulted field comes out unchanged."""
    assert with_defaults(USER_VALUES) == USER_VALUES


def test_fields_without_a_default_stay_empty() -> None:
    """ntp, output-mode, kernel-args, filesystem, [info] and the other [vm] fields stay unset."""
    filled = with_defaults(VCFG())
    assert filled.system.ntp == ()
    assert filled.system.stdout_mode is None
    assert filled.system.kernel_args == filled.system.filesystem == ""
    assert filled.info == Info()
    assert (filled.vm.inodes, filled.vm.kernel, filled.vm.disk_size) == (0, "", Bytes())
    assert (filled.nfs, filled.route, filled.logging, dict(filled.sysctl)) == ((), (), (), {})


def test_spec_example_renders_byte_for_byte() -> None:
    """One program binary = "/app" and one NIC http = ["8080"] render as in §2.7."""
    vcfg = parse_vcfg_text(
        '[[program]]\nbinary = "/app"\n\n[[network]]\nhttp = ["8080"]\n', source="default.vcfg"
    )
    assert codec.dumps(with_defaults(vcfg)) == SPEC_EXAMPLE


_NAMES = st.text(max_size=80)


@given(name=_NAMES, cpus=st.integers(0, 8), mtu=st.integers(0, 9000))
def test_defaults_are_idempotent(name: str, cpus: int, mtu: int) -> None:
    """Filling an already filled config changes nothing."""
    once = with_defaults(VCFG(network=(Network(mtu=mtu),), info=Info(name=name), vm=VM(cpus=cpus)))
    assert with_defaults(once) == once
