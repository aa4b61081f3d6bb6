"""Validation of a merged VCFG: each problem, with the field path it is reported at."""

from __future__ import annotations

import pytest

from imagekit.defaults import with_defaults
from imagekit.vcfgfile import parse_vcfg_text
from vinitd.vcfg import validate
from vinitd.vcfg.model import VCFG

PROGRAM = '[[program]]\nbinary = "/app"\n'
STATIC = '[[network]]\nip = "10.0.0.2"\nmask = "255.255.255.0"\ngateway = "10.0.0.1"\n'
ROUTE = '[[route]]\ninterface = "eth0"\ndestination = "10.1.0.0/16"\ngateway = "10.0.2.2"\n'
NFS = '[[nfs]]\nmount = "/data"\nserver = "files.example:/export"\n'

# vorteil-image §2.9, adapted: dns holds IP addresses only.
FULL = """
[[program]]
  binary = "/bin/server"
  args = "--port 8080 --peer $EXT_IP0"
  env = ["HOME=/", "LD_LIBRARY_PATH=/lib64"]
  cwd = "/srv"
  privilege = "user"
  bootstrap = ["WAIT_FILE /srv/ready", "SLEEP 500"]
  terminate = "SIGQUIT"

[[network]]
  ip = "dhcp"
  http = ["8080"]

[[route]]
  destination = "10.1.0.0/16"
  gateway = "10.0.2.2"
  interface = "eth0"

[system]
  hostname = "api-$SALT"
  dns = ["1.1.1.1"]
  ntp = ["pool.ntp.org"]
  output-mode = "serial"
  user = "svc"
  terminate-wait = 5000

[vm]
  cpus = 2
  ram = "256 MiB"
  disk-size = "+64 MiB"

[info]
  name = "api server"
  version = "1.2.0"
  date = "2021-03-01"

[sysctl]
  "net.core.somaxconn" = "1024"
"""


def _problems(text: str) -> list[tuple[str, str]]:
    vcfg = parse_vcfg_text(text, source="test.vcfg")
    return [(problem.path, problem.problem) for problem in validate.problems(vcfg)]


def _program(line: str) -> str:
    return PROGRAM + line + "\n"


def _system(line: str) -> str:
    return f"[system]\n{line}\n"


CASES = [
    # program
    ('[[program]]\ncwd = "/"', "program[0]", "missing binary and arguments for program 0"),
    (PROGRAM + '[[program]]\nenv = ["A=1"]', "program[1]", "program 1"),
    (_program("args = \"'unterminated\""), "program[0].args", "unterminated single quote"),
    (_program('args = "a; b"'), "program[0].args", "unquoted ';'"),
    (_program('env = ["A=1", "NOEQUALS"]'), "program[0].env[1]", "not a variable assignment"),
    (_program('env = ["1A=x"]'), "program[0].env[0]", "not a variable assignment"),
    (_program('env = ["A\\n=x"]'), "program[0].env[0]", "not a variable assignment"),
    (_program('cwd = "srv"'), "program[0].cwd", "not an absolute path"),
    (_program('stdout = "out.log"'), "program[0].stdout", "not an absolute path"),
    (_program('stderr = "err.log"'), "program[0].stderr", "not an absolute path"),
    (_program('logfiles = ["/a", "b.log"]'), "program[0].logfiles[1]", "not an absolute path"),
    # network
    ('[[network]]\nmask = "255.255.255.0"', "network[0].mask", "must be empty when ip is dhcp"),
    ('[[network]]\nip = "dhcp"\ngateway = "10.0.0.1"', "network[0].gateway", "must be empty"),
    (STATIC.replace('mask = "255.255.255.0"\n', ""), "network[0].mask", "needs a mask"),
    (STATIC.replace('gateway = "10.0.0.1"\n', ""), "network[0].gateway", "needs this field"),
    (STATIC.replace("10.0.0.2", "10.0.0.300"), "network[0].ip", "not an IPv4 address"),
    (STATIC.replace("10.0.0.2", "fe80::1"), "network[0].ip", "not an IPv4 address"),
    (STATIC.replace("10.0.0.1", "router"), "network[0].gateway", "not an IPv4 address"),
    (STATIC.replace("255.255.255.0", "255.0.255.0"), "network[0].mask", "not a netmask"),
    (STATIC.replace("255.255.255.0", "0.0.0.255"), "network[0].mask", "not a netmask"),
    (STATIC.replace("255.255.255.0", "24"), "network[0].mask", "not a netmask"),
    (STATIC.replace("255.255.255.0", "255.255.255.256"), "network[0].mask", "not a netmask"),
    ('[[network]]\nhttp = ["80", "http"]', "network[0].http[1]", "not a port number"),
    ('[[network]]\ntcp = ["0"]', "network[0].tcp[0]", "not a port number"),
    ('[[network]]\nudp = ["65536"]', "network[0].udp[0]", "not a port number"),
    ('[[network]]\nhttps = ["-443"]', "network[0].https[0]", "not a port number"),
    ('[[network]]\nhttps = ["8080/tcp"]', "network[0].https[0]", "not a port number"),
    ('[[network]]\nhttp = ["\u00b2"]', "network[0].http[0]", "not a port number"),
    ('[[network]]\nhttp = ["80\\n"]', "network[0].http[0]", "not a port number"),
    ("[[network]]\nmtu = 67", "network[0].mtu", "out of range"),
    ("[[network]]\nmtu = 65536", "network[0].mtu", "out of range"),
    # system
    (_system('dns = ["1.1.1.1", "dns.google"]'), "system.dns[1]", "not an IP address"),
    (_system('ntp = ["pool ntp"]'), "system.ntp[0]", "not a host name or address"),
    (_system('ntp = ["ok.example", "-bad.example"]'), "system.ntp[1]", "not a host name"),
    (_system('ntp = ["a..b"]'), "system.ntp[0]", "not a host name or address"),
    (_system('hostname = "api_$SALT"'), "system.hostname", "characters a host name cannot hold"),
    (_system('hostname = "-api"'), "system.hostname", "starting or ending with '-'"),
    (_system('hostname = "a..b"'), "system.hostname", "empty label"),
    (_system(f'hostname = "{"a" * 57}$SALT"'), "system.hostname", "65 characters long"),
    (_system("kernel-args = \"quiet 'x\""), "system.kernel-args", "unterminated single quote"),
    (_system(f'kernel-args = "{"a" * 1025}"'), "system.kernel-args", "1025 bytes is too long"),
    (_system("kernel-args = \"'a\\nb'\""), "system.kernel-args", "control character"),
    (_system('filesystem = "xfs"'), "system.filesystem", "unsupported filesystem 'xfs'"),
    (_system('user = "Root"'), "system.user", "not a user name"),
    (_system('user = "1svc"'), "system.user", "not a user name"),
    (_system(f'user = "{"u" * 33}"'), "system.user", "not a user name"),
    (_system('user = "svc\\n"'), "system.user", "not a user name"),
    # info and vm
    ('[info]\nurl = "http://[::1"', "info.url", "is not a URL"),
    ('[vm]\nram = "+64 MiB"', "vm.ram", "ram cannot be a +delta"),
    ('[vm]\nkernel = "latest"', "vm.kernel", "not a kernel version"),
    ('[vm]\nkernel = "21.03-rc1"', "vm.kernel", "not a kernel version"),
    ('[vm]\nkernel = "21.03.1\\n"', "vm.kernel", "not a kernel version"),
    # nfs
    (NFS.replace('"/data"', '"data"'), "nfs[0].mount", "not an absolute path"),
    (NFS.replace("files.example:/export", "files.example"), "nfs[0].server", "not an NFS server"),
    (NFS.replace(":/export", ":export"), "nfs[0].server", "not an NFS server"),
    (NFS.replace("files.example", "bad_host"), "nfs[0].server", "not an NFS server"),
    # route
    (ROUTE.replace("eth0", "wlan0"), "route[0].interface", "not an interface"),
    (ROUTE.replace("10.1.0.0/16", "10.1.0.1/16"), "route[0].destination", "has host bits set"),
    (ROUTE.replace("10.1.0.0/16", "10.1.0.0/33"), "route[0].destination", "not a network"),
    (ROUTE.replace('gateway = "10.0.2.2"\n', ""), "route[0].gateway", "needs this field"),
    (ROUTE.replace("10.0.2.2", "gw.example"), "route[0].gateway", "not an IPv4 address"),
    # logging and sysctl
    ('[[logging]]\ntype = "syslog"', "logging[0].type", "unknown logging type 'syslog'"),
    ('[[logging]]\nconfig = ["Name=es"]', "logging[0].type", "unknown logging type ''"),
    ('[[logging]]\ntype = "system"\nconfig = ["Name"]', "logging[0].config[0]", "not a setting"),
    ('[sysctl]\n"bad key" = "1"', "sysctl[bad key]", "not a sysctl key"),
    ('[sysctl]\nnodots = "1"', "sysctl[nodots]", "not a sysctl key"),
    ('[sysctl]\n"net..core" = "1"', "sysctl[net..core]", "not a sysctl key"),
    ('[sysctl]\n"net.core." = "1"', "sysctl[net.core.]", "not a sysctl key"),
    ('[sysctl]\n"net.core.somaxconn" = " "', "sysctl[net.core.somaxconn]", "empty value"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "path", "fragment"), CASES)
def test_each_problem_is_reported_at_its_field(text: str, path: str, fragment: str) -> None:
    """A config with one mistake yields exactly one problem, at the field's path."""
    found = _problems(text)
    assert [p for p, _ in found] == [path]
    assert fragment in found[0][1]


BOOTSTRAP_ERRORS = [
    "",
    "REBOOT now",
    "SLEEP",
    "SLEEP five",
    "WAIT_FILE",
    "WAIT_FILE /x timeout=0",
    "WAIT_PORT",
    "WAIT_PORT 70000",
    "WAIT_PORT if= 80",
    "GET http://example.com/x",
    "GET ftp://example.com/x /x",
    "FIND_AND_REPLACE find=a replace=b",
    "FIND_AND_REPLACE find=a find=b replace=c file=/x",
    "DEFINE_IF_NOT_DEFINED 1X y",
]


@pytest.mark.parametrize("instruction", BOOTSTRAP_ERRORS)
def test_bootstrap_problems_name_the_instruction(instruction: str) -> None:
    """A bad bootstrap instruction is reported at program[0].bootstrap[N]."""
    found = _problems(_program(f'bootstrap = ["SLEEP 1", "{instruction}"]'))
    assert [p for p, _ in found] == ["program[0].bootstrap[1]"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        PROGRAM + "[[program]]\nargs = \"/bin/sh -c 'echo hi'\"",
        STATIC.replace("255.255.255.0", "255.255.255.255"),
        STATIC.replace("255.255.255.0", "0.0.0.0"),
        '[[network]]\nhttp = ["1", "65535"]\nmtu = 68',
        "[[network]]\nmtu = 65535",
        _system('dns = ["$DNS_SERVER", "2606:4700:4700::1111"]'),
        _system('ntp = ["10.0.0.1", "time.example.org"]'),
        _system('hostname = "$SALT"\nfilesystem = "ext4"\nuser = "_svc-1"'),
        _system(f'hostname = "{"a" * 64}"'),
        _system(f'kernel-args = "{"a" * 1024}"'),
        '[vm]\nkernel = "20.09.1-rc.1"\ndisk-size = "+64 MiB"',
        '[[logging]]\ntype = "stdout"\nconfig = ["Host=$LOG_HOST", "Port=9200"]',
        ROUTE.replace("10.1.0.0/16", "10.1.2.3"),
        NFS.replace("files.example", "10.0.0.5"),
        '[sysctl]\n"net.ipv4.conf.*.rp_filter" = "0"',
    ],
)
def test_valid_values_have_no_problems(text: str) -> None:
    """Edge values that are allowed produce no problem."""
    assert _problems(text) == []


def test_full_example_has_no_problems() -> None:
    """The §2.9 example (dns as IPs) is valid as written and once defaults are filled."""
    vcfg = parse_vcfg_text(FULL, source="default.vcfg")
    assert validate.problems(vcfg) == []
    assert validate.problems(with_defaults(vcfg)) == []


def test_an_empty_config_is_valid() -> None:
    """An empty VCFG, and the filled-in defaults, have nothing to complain about."""
    assert validate.problems(VCFG()) == []
    assert validate.problems(with_defaults(VCFG())) == []


def test_all_problems_are_reported_at_once() -> None:
    """Every problem comes back in one list, in config order."""
    text = (
        '[[program]]\ncwd = "x"\n[[network]]\nmtu = 1\n'
        '[system]\nfilesystem = "xfs"\n[sysctl]\nbad = "1"\n'
    )
    assert [path for path, _ in _problems(text)] == [
        "program[0]",
        "program[0].cwd",
        "network[0].mtu",
        "system.filesystem",
        "sysctl[bad]",
    ]


def test_problems_carry_what_is_allowed() -> None:
    """A problem says what would have been accepted."""
    [problem] = validate.problems(parse_vcfg_text('[system]\nfilesystem = "xfs"', source="x"))
    assert problem.allowed == "ext2, ext4"
    assert str(problem) == "system.filesystem: unsupported filesystem 'xfs' (allowed: ext2, ext4)"
