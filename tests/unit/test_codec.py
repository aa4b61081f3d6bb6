"""The on-disk JSON: exact bytes, tolerant decoding, round trips and fuzzing."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vinitd.errors import ConfigError
from vinitd.vcfg import codec
from vinitd.vcfg.model import (
    NFS,
    VCFG,
    VM,
    Info,
    Logging,
    Network,
    Privilege,
    Program,
    Route,
    StdoutMode,
    System,
    TerminateSignal,
)
from vinitd.vcfg.values import Bytes, Timestamp

SPEC_EXAMPLE = (
    '{"program":[{"binary":"/app","args":"","env":null,"cwd":"/","stdout":"/dev/vtty",'
    '"stderr":"/dev/vtty","bootstrap":null,"logfiles":null,"privilege":"root","strace":false,'
    '"terminate":"SIGTERM"}],"network":[{"ip":"dhcp","http":["8080"],"mtu":1500,"tcpdump":false}],'
    '"system":{"dns":["8.8.8.8"],"hostname":"vorteil-$SALT","max-fds":1024,"user":"root",'
    '"terminate-wait":3000},"info":{"date":""},"vm":{"cpus":1,"ram":"128 MiB"}}'
)


def spec_example_model() -> VCFG:
    return VCFG(
        program=(
            Program(
                binary="/app",
                cwd="/",
                stdout="/dev/vtty",
                stderr="/dev/vtty",
                privilege=Privilege.ROOT,
                terminate=TerminateSignal.SIGTERM,
            ),
        ),
        network=(Network(ip="dhcp", http=("8080",), mtu=1500),),
        system=System(
            dns=("8.8.8.8",),
            hostname="vorteil-$SALT",
            max_fds=1024,
            user="root",
            terminate_wait=3000,
        ),
        vm=VM(cpus=1, ram=Bytes.mib(128)),
    )


def test_spec_example_bytes() -> None:
    """The model of spec §2.7's example encodes to exactly its bytes."""
    assert codec.dumps(spec_example_model()) == SPEC_EXAMPLE.encode()


def test_spec_example_decodes() -> None:
    """The same bytes decode back to the same model."""
    assert codec.loads(SPEC_EXAMPLE.encode()) == spec_example_model()


def test_empty_vcfg_keeps_struct_sections() -> None:
    """system, info and vm are always written; lists and maps are omitted when empty."""
    assert codec.dumps(VCFG()) == b'{"system":{"terminate-wait":0},"info":{"date":""},"vm":{}}'


def test_all_sections_in_go_order() -> None:
    """Every section, in struct order, with omitted and kept keys as vorteil writes them."""
    vcfg = VCFG(
        program=(Program(args="/bin/app -x", env=("A=1",), bootstrap=("SLEEP 5",)),),
        network=(Network(ip="10.0.0.2", mask="255.0.0.0", gateway="10.0.0.1", disable_tso=True),),
        system=System(
            ntp=("pool.ntp.org",),
            stdout_mode=StdoutMode.SERIAL,
            kernel_args="quiet",
            filesystem="ext4",
        ),
        info=Info(name="n", author="a", summary="s", description="d", url="http://x", version="1"),
        vm=VM(inodes=5, kernel="21.1.1", disk_size=Bytes.mib(64, delta=True)),
        nfs=(NFS(mount="/m", server="h:/e"),),
        route=(Route(interface="eth0", destination="10.1.0.0/16", gateway="10.0.0.1"),),
        logging=(Logging(config=("Name=tcp",), type="system"),),
        sysctl={"vm.b": "2", "net.a": "1"},
    )
    out = json.loads(codec.dumps(vcfg))
    assert list(out) == [
        "program", "network", "system", "info", "vm", "nfs", "route", "logging", "sysctl",
    ]  # fmt: skip
    assert list(out["program"][0]) == [
        "binary", "args", "env", "cwd", "stdout", "stderr", "bootstrap", "logfiles",
        "privilege", "strace", "terminate",
    ]  # fmt: skip
    assert out["program"][0]["privilege"] == "" and out["program"][0]["logfiles"] is None
    assert out["network"][0] == {
        "ip": "10.0.0.2",
        "mask": "255.0.0.0",
        "gateway": "10.0.0.1",
        "disable-tso": True,
        "tcpdump": False,
    }
    assert list(out["system"]) == [
        "ntp", "stdout-mode", "kernel-args", "filesystem", "terminate-wait",
    ]  # fmt: skip
    assert list(out["info"]) == [
        "name", "author", "summary", "description", "url", "date", "version",
    ]  # fmt: skip
    assert out["vm"] == {"inodes": 5, "kernel": "21.1.1", "disk-size": "+64 MiB"}
    assert out["nfs"] == [{"mount": "/m", "server": "h:/e", "options": ""}]
    assert list(out["sysctl"]) == ["net.a", "vm.b"]


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("a<b>&c", '"a\\u003cb\\u003e\\u0026c"'),
        ("line\nbreak\ttab\r", '"line\\nbreak\\ttab\\r"'),
        ('quote " and \\', '"quote \\" and \\\\"'),
        ("\x08\x0c\x01", '"\\u0008\\u000c\\u0001"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("héllo ✓", '"héllo ✓"'),
    ],
)
def test_go_string_escapes(text: str, encoded: str) -> None:
    """Strings are escaped exactly as Go's encoding/json escapes them."""
    data = codec.dumps(VCFG(info=Info(name=text)))
    assert f'"name":{encoded}'.encode() in data
    assert codec.loads(data).info.name == text


def test_keys_match_case_insensitively() -> None:
    """Go's decoder matches keys regardless of case."""
    vcfg = codec.loads(b'{"Program":[{"BINARY":"/a","Privilege":"user"}],"SYSTEM":{"Max-FDs":9}}')
    assert vcfg.program[0].binary == "/a"
    assert vcfg.program[0].privilege is Privilege.USER
    assert vcfg.system.max_fds == 9


def test_unknown_keys_ignored() -> None:
    """Keys the model does not know are skipped at every level."""
    vcfg = codec.loads(b'{"future":1,"program":[{"binary":"/a","x":[1]}],"vm":{"gpu":true}}')
    assert vcfg.program[0].binary == "/a"


def test_nulls_are_empty() -> None:
    """null stands for the empty value of any field."""
    vcfg = codec.loads(b'{"program":null,"system":null,"info":{"date":null,"name":null}}')
    assert vcfg == VCFG()


def test_numbers_accepted_for_sizes_and_dates() -> None:
    """ram and disk-size may be numbers (bare numbers mean MiB), date may be epoch seconds."""
    vcfg = codec.loads(b'{"vm":{"ram":512,"disk-size":"+1 GiB"},"info":{"date":1614556800}}')
    assert vcfg.vm.ram == Bytes.mib(512)
    assert vcfg.vm.disk_size == Bytes(1 << 30, delta=True)
    assert vcfg.info.date.layout == "epoch"


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        (b'{"program":[{"privilege":"admin"}]}', "program[0].privilege", "unknown value 'admin'"),
        (b'{"program":[{"terminate":"SIGHUP"}]}', "program[0].terminate", "unknown value"),
        (b'{"system":{"stdout-mode":"loud"}}', "system.stdout-mode", "unknown value 'loud'"),
        (b'{"network":[{"mtu":-1}]}', "network[0].mtu", "out of range"),
        (b'{"network":[{"mtu":1.5}]}', "network[0].mtu", "expected a whole number"),
        (b'{"network":[{"mtu":true}]}', "network[0].mtu", "expected a whole number"),
        (b'{"network":[{"tcpdump":"yes"}]}', "network[0].tcpdump", "expected true or false"),
        (b'{"network":[{"http":[8080]}]}', "network[0].http[0]", "expected a list of strings"),
        (b'{"program":{"binary":"/a"}}', "program", "expected a list of tables"),
        (b'{"program":["x"]}', "program[0]", "expected an object"),
        (b'{"sysctl":{"a.b":1}}', "sysctl[a.b]", "expected a string"),
        (b'{"vm":{"ram":"lots"}}', "vm.ram", ""),
        (b'{"vm":{"inodes":4294967296}}', "vm.inodes", "out of range"),
        (b'{"info":{"date":"yesterday"}}', "info.date", ""),
        (b'{"system":{"dns":"8.8.8.8"}}', "system.dns", "expected a list of strings"),
        (b"[]", "", "expected an object"),
    ],
)
def test_decode_errors_name_the_field(data: bytes, path: str, problem: str) -> None:
    """A wrong value names the input, the field path and the problem."""
    with pytest.raises(ConfigError) as caught:
        codec.loads(data, source="disk.raw")
    assert caught.value.path == path
    assert caught.value.source == "disk.raw"
    assert problem in caught.value.problem
    assert str(caught.value).startswith("disk.raw: ")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100000, "nested too deeply"),
    ],
)
def test_malformed_documents(data: bytes, problem: str) -> None:
    """Bytes that are not a JSON document give a ConfigError saying so."""
    with pytest.raises(ConfigError, match=problem):
        codec.loads(data, source="x")


def test_allowed_values_listed() -> None:
    """An unknown choice lists what is allowed."""
    with pytest.raises(ConfigError) as caught:
        codec.loads(b'{"program":[{"privilege":"admin"}]}')
    assert caught.value.allowed == "root, superuser, user"


# Hypothesis strategies for whole models.
texts = st.text(max_size=12)
text_lists = st.lists(texts, max_size=3).map(tuple)
u32 = st.integers(0, 2**32 - 1)
sizes = st.builds(Bytes, st.integers(1, 2**40), st.booleans()) | st.just(Bytes())
programs = st.builds(
    Program,
    binary=texts,
    args=texts,
    env=text_lists,
    cwd=texts,
    stdout=texts,
    stderr=texts,
    bootstrap=text_lists,
    logfiles=text_lists,
    privilege=st.none() | st.sampled_from(Privilege),
    strace=st.booleans(),
    terminate=st.none() | st.sampled_from(TerminateSignal),
)
networks = st.builds(
    Network,
    ip=texts,
    mask=texts,
    gateway=texts,
    udp=text_lists,
    tcp=text_lists,
    http=text_lists,
    https=text_lists,
    mtu=u32,
    disable_tso=st.booleans(),
    tcpdump=st.booleans(),
)
systems = st.builds(
    System,
    dns=text_lists,
    ntp=text_lists,
    hostname=texts,
    max_fds=u32,
    stdout_mode=st.none() | st.sampled_from(StdoutMode),
    kernel_args=texts,
    filesystem=texts,
    user=texts,
    terminate_wait=u32,
)
dates = st.sampled_from(["", "2021-03-01", "1614556800", "Mon, 02 Jan 2006 15:04:05 MST"])
infos = st.builds(
    Info,
    name=texts,
    author=texts,
    summary=texts,
    description=texts,
    url=texts,
    date=dates.map(Timestamp.parse),
    version=texts,
)
vms = st.builds(VM, cpus=u32, ram=sizes, inodes=u32, kernel=texts, disk_size=sizes)
vcfgs = st.builds(
    VCFG,
    program=st.lists(programs, max_size=2).map(tuple),
    network=st.lists(networks, max_size=2).map(tuple),
    system=systems,
    info=infos,
    vm=vms,
    nfs=st.lists(st.builds(NFS, mount=texts, server=texts, options=texts), max_size=2).map(tuple),
    route=st.lists(
        st.builds(Route, interface=texts, destination=texts, gateway=texts), max_size=2
    ).map(tuple),
    logging=st.lists(st.builds(Logging, config=text_lists, type=texts), max_size=2).map(tuple),
    sysctl=st.dictionaries(texts, texts, max_size=3),
)


@settings(max_examples=300)
@given(vcfgs)
def test_round_trip_model_json_model(vcfg: VCFG) -> None:
    """model -> JSON -> model is the identity, and JSON -> model -> JSON too."""
    data = codec.dumps(vcfg)
    back = codec.loads(data)
    assert back == vcfg
    assert codec.dumps(back) == data


@given(vcfgs)
def test_encoding_is_valid_json(vcfg: VCFG) -> None:
    """The Go-style bytes are JSON that the standard parser reads to the same object."""
    assert json.loads(codec.dumps(vcfg)) == codec.to_json_object(vcfg)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_config_error(data: bytes) -> None:
    """Decoding arbitrary bytes either works or raises ConfigError."""
    with contextlib.suppress(ConfigError):
        codec.loads(data)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
section_keys = st.sampled_from(
    ["program", "network", "system", "info", "vm", "nfs", "route", "logging", "sysctl", "Program"]
)
field_keys = st.sampled_from(
    ["binary", "env", "privilege", "mtu", "ip", "http", "ram", "date", "stdout-mode", "cpus", "x"]
)
shaped = st.dictionaries(
    section_keys,
    json_values
    | st.dictionaries(field_keys, json_values, max_size=4)
    | st.lists(st.dictionaries(field_keys, json_values, max_size=4), max_size=2),
    max_size=4,
)


@settings(max_examples=500)
@given(json_values | shaped)
def test_random_json_raises_only_config_error(raw: Any) -> None:
    """Arbitrary JSON, including VCFG-shaped JSON with wrong values, raises only ConfigError."""
    try:
        vcfg = codec.loads(json.dumps(raw))
    except ConfigError:
        return
    assert isinstance(vcfg, VCFG)
