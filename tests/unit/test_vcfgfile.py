"""Reading user-written TOML VCFG files: every field, strictness, and errors that name the file."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from imagekit.vcfgfile import parse_vcfg_text, read_vcfg_file
from vinitd.errors import ConfigError
from vinitd.vcfg.model import (
    NFS,
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
from vinitd.vcfg.values import Bytes

EVERY_FIELD = """
[[program]]
  binary = "/bin/server"
  args = "--port 8080"
  env = ["HOME=/"]
  cwd = "/srv"
  stdout = "/log/out"
  stderr = "/log/err"
  bootstrap = ["SLEEP 500"]
  logfiles = ["/log/app.log"]
  privilege = "superuser"
  strace = true
  terminate = "SIGQUIT"

[[network]]
  ip = "10.0.0.2"
  mask = "255.255.255.0"
  gateway = "10.0.0.1"
  udp = ["53"]
  tcp = ["22"]
  http = ["80"]
  https = ["443"]
  mtu = 9000
  disable-tso = true
  tcpdump = true

[system]
  dns = ["1.1.1.1"]
  ntp = ["pool.ntp.org"]
  hostname = "api-$SALT"
  max-fds = 4096
  output-mode = "serial"
  kernel-args = "quiet"
  filesystem = "ext4"
  user = "svc"
  terminate-wait = 5000

[info]
  name = "api"
  author = "me"
  summary = "an api"
  description = "longer"
  url = "https://example.org"
  version = "1.2.0"
  date = 2021-03-01

[vm]
  cpus = 2
  ram = "256 MiB"
  inodes = 4096
  kernel = "21.1.1"
  disk-size = "+64 MiB"

[[nfs]]
  mount = "/data"
  server = "nfs.local:/export"
  options = "nolock"

[[route]]
  interface = "eth0"
  destination = "10.1.0.0/16"
  gateway = "10.0.0.1"

[[logging]]
  type = "system"
  config = ["Name=tcp", "Host=10.0.0.1"]

[sysctl]
  "net.core.somaxconn" = "1024"
"""


def test_every_field_read() -> None:
    """Each TOML key lands in its model field with its type."""
    vcfg = parse_vcfg_text(EVERY_FIELD, source="all.vcfg")
    assert vcfg.program == (
        Program(
            binary="/bin/server",
            args="--port 8080",
            env=("HOME=/",),
            cwd="/srv",
            stdout="/log/out",
            stderr="/log/err",
            bootstrap=("SLEEP 500",),
            logfiles=("/log/app.log",),
            privilege=Privilege.SUPERUSER,
            strace=True,
            terminate=TerminateSignal.SIGQUIT,
        ),
    )
    assert vcfg.network == (
        Network(
            ip="10.0.0.2",
            mask="255.255.255.0",
            gateway="10.0.0.1",
            udp=("53",),
            tcp=("22",),
            http=("80",),
            https=("443",),
            mtu=9000,
            disable_tso=True,
            tcpdump=True,
        ),
    )
    assert vcfg.system == System(
        dns=("1.1.1.1",),
        ntp=("pool.ntp.org",),
        hostname="api-$SALT",
        max_fds=4096,
        stdout_mode=StdoutMode.SERIAL,
        kernel_args="quiet",
        filesystem="ext4",
        user="svc",
        terminate_wait=5000,
    )
    assert vcfg.info.name == "api" and vcfg.info.url == "https://example.org"
    assert vcfg.info.date.moment == datetime.datetime(2021, 3, 1, tzinfo=datetime.UTC)
    assert vcfg.info == Info(
        name="api",
        author="me",
        summary="an api",
        description="longer",
        url="https://example.org",
        date=vcfg.info.date,
        version="1.2.0",
    )
    assert vcfg.vm == VM(
        cpus=2,
        ram=Bytes.mib(256),
        inodes=4096,
        kernel="21.1.1",
        disk_size=Bytes.mib(64, delta=True),
    )
    assert vcfg.nfs == (NFS(mount="/data", server="nfs.local:/export", options="nolock"),)
    assert vcfg.route == (Route("eth0", "10.1.0.0/16", "10.0.0.1"),)
    assert vcfg.logging == (Logging(config=("Name=tcp", "Host=10.0.0.1"), type="system"),)
    assert vcfg.sysctl == {"net.core.somaxconn": "1024"}


def test_stdout_mode_alias() -> None:
    """The JSON name stdout-mode is accepted in TOML beside output-mode."""
    vcfg = parse_vcfg_text('[system]\nstdout-mode = "screen"', source="a.vcfg")
    assert vcfg.system.stdout_mode is StdoutMode.SCREEN


def test_ram_as_integer_means_mib() -> None:
    """`ram = 512` is 512 MiB, as in vorteil."""
    assert parse_vcfg_text("[vm]\nram = 512", source="a.vcfg").vm.ram == Bytes.mib(512)


def test_toml_datetime_accepted() -> None:
    """A TOML offset date-time is a valid info.date."""
    vcfg = parse_vcfg_text("[info]\ndate = 2021-03-01T10:00:00Z", source="a.vcfg")
    assert vcfg.info.date.moment == datetime.datetime(2021, 3, 1, 10, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ('[[program]]\nbinray = "/a"', "program[0]", "unknown key 'binray'"),
        ('[system]\nhost = "a"', "system", "unknown key 'host'"),
        ("colour = 1", "", "unknown key 'colour'"),
        ('[[program]]\nprivilege = "admin"', "program[0].privilege", "unknown value 'admin'"),
        ('[system]\noutput-mode = "loud"', "system.output-mode", "unknown value 'loud'"),
        ('[[network]]\nmtu = "1500"', "network[0].mtu", "expected a whole number"),
        ('[[network]]\nhttp = "80"', "network[0].http", "expected a list of strings"),
        ("[[network]]\nhttp = [80]", "network[0].http[0]", "expected a list of strings"),
        ('[vm]\nram = "1.5 GiB"', "vm.ram", ""),
        ('[info]\ndate = "someday"', "info.date", ""),
        ("[info]\ndate = 10:00:00", "info.date", "expected a date"),
        ('[sysctl]\n"a.b" = 1', "sysctl[a.b]", "expected a string"),
        ('program = "x"', "program", "expected a list of tables"),
    ],
)
def test_errors_name_file_and_field(text: str, path: str, problem: str) -> None:
    """A wrong key or value names the file, the TOML field path and the problem."""
    with pytest.raises(ConfigError) as caught:
        parse_vcfg_text(text, source="app.vcfg")
    assert caught.value.source == "app.vcfg"
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_unknown_key_lists_allowed() -> None:
    """An unknown key lists the keys of its table."""
    with pytest.raises(ConfigError) as caught:
        parse_vcfg_text('[vm]\nmemory = "1G"', source="a.vcfg")
    assert caught.value.allowed == "cpus, ram, inodes, kernel, disk-size"


def test_toml_syntax_error() -> None:
    """Broken TOML is reported with the file name."""
    with pytest.raises(ConfigError, match=r"^a\.vcfg: not valid TOML"):
        parse_vcfg_text("[[program]\n", source="a.vcfg")


def test_read_file_errors(tmp_path: Path) -> None:
    """Missing files, directories and non-UTF-8 files are ConfigErrors naming the path."""
    with pytest.raises(ConfigError, match="no such file"):
        read_vcfg_file(tmp_path / "missing.vcfg")
    with pytest.raises(ConfigError, match="is a directory"):
        read_vcfg_file(tmp_path)
    bad = tmp_path / "bad.vcfg"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_vcfg_file(bad)
    good = tmp_path / "good.vcfg"
    good.write_text('[[program]]\nbinary = "/a"\n')
    assert read_vcfg_file(good).program[0].binary == "/a"
