"""/etc generation in a temporary directory: exact contents, existing files, the append rule."""

from __future__ import annotations

import datetime
import random
import re
import stat
import subprocess
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tools

from vinitd import console, etcfiles
from vinitd.etcfiles import EtcError

# The texts of §7.7 of the vinitd spec.
PASSWD = b"root:x:0:0:root:/:/bin/false\nvorteil:x:1000:1000:vorteil:/:/bin/false\n"
GROUP = b"root:x:0:root\nvorteil:x:1000:vorteil\n"
NSSWITCH = b"""passwd:         files
group:          files
shadow:         files
gshadow:        files

hosts:          files dns
networks:       files
"""
RESOLV_CONF = b"nameserver 127.0.0.1\n"
HOSTS = (
    b"127.0.0.1\tlocalhost\n"
    b"127.0.0.1\tweb\n"
    b"::1\tip6-localhost ip6-loopback\n"
    b"fe00::0\tip6-localnet\n"
    b"ff00::0\tip6-mcastprefix\n"
    b"ff02::1\tip6-allnodes\n"
    b"ff02::2\tip6-allrouters\n"
)

LEVELED = re.compile(r"^\[(DEBUG|WARNING|ERROR)\]: \d\d-\d\d \d\d:\d\d:\d\d - (.*)$")


@pytest.fixture(autouse=True)
def debug_console() -> Iterator[None]:
    """Print every console level during a test, then restore the level."""
    level = console.current_level()
    console.set_level("DEBUG")
    yield
    console.set_level(level)


def console_messages(
    capfd: pytest.CaptureFixture[str], levels: tuple[str, ...] = ("WARNING", "ERROR")
) -> list[tuple[str, str]]:
    """The leveled console lines written so far at ``levels``, as (level, message)."""
    out = capfd.readouterr().out
    found = [m for line in out.splitlines() if (m := LEVELED.match(line))]
    return [(m[1], m[2]) for m in found if m[1] in levels]


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """Where /etc would be; not created, as on an image without one."""
    return tmp_path / "etc"


def write(etc: Path, *, user: str = "", hostname: str = "web.example") -> list[str]:
    """write_etc with the default user and host name web.example, with a fixed rng."""
    return etcfiles.write_etc(etc=etc, user=user, hostname=hostname, rng=random.Random(1))


def test_fresh_etc_has_vorteils_files_byte_for_byte(etc: Path) -> None:
    """On an image without /etc every file is created with the spec's exact contents, 0644."""
    assert write(etc) == []
    assert (etc / "passwd").read_bytes() == PASSWD
    assert (etc / "group").read_bytes() == GROUP
    assert (etc / "nsswitch.conf").read_bytes() == NSSWITCH
    assert (etc / "resolv.conf").read_bytes() == RESOLV_CONF
    assert (etc / "localtime").read_bytes() == etcfiles.utc_tzif()
    assert (etc / "hostname").read_bytes() == b"web"
    assert (etc / "hosts").read_bytes() == HOSTS
    machine_id = (etc / "machine-id").read_bytes().decode()
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", machine_id
    )
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in etc.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644)
    assert len(modes) == 8


def test_system_user_gets_uid_1000(etc: Path) -> None:
    """system.user replaces vorteil in the new passwd and group."""
    write(etc, user="app")
    assert (etc / "passwd").read_bytes() == (
        b"root:x:0:0:root:/:/bin/false\napp:x:1000:1000:app:/:/bin/false\n"
    )
    assert (etc / "group").read_bytes() == b"root:x:0:root\napp:x:1000:app\n"


def test_existing_files_are_preserved(etc: Path) -> None:
    """Files the image brings stay untouched, except /etc/hostname, which is always rewritten."""
    etc.mkdir()
    kept = {
        "passwd": b"root:x:0:0::/root:/bin/sh\nvorteil:x:1000:1000::/home/v:/bin/sh\n",
        "group": b"root:x:0:\nvorteil:x:1000:\n",
        "nsswitch.conf": b"hosts: files\n",
        "resolv.conf": b"nameserver 9.9.9.9\n",
        "localtime": b"not a zone",
        "hosts": b"127.0.0.1\tlocalhost\n",
        "machine-id": b"0123456789abcdef0123456789abcdef\n",
    }
    for name, content in kept.items():
        (etc / name).write_bytes(content)
    (etc / "hostname").write_bytes(b"old-name\n")
    assert write(etc) == []
    assert {name: (etc / name).read_bytes() for name in kept} == kept
    assert (etc / "hostname").read_bytes() == b"web"


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (
            b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/sbin/nologin\n",
            b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/sbin/nologin\n"
            b"vorteil:x:1000:1000:vorteil:/:/bin/false\n",
        ),
        (
            b"root:x:0:0:root:/root:/bin/sh",
            b"root:x:0:0:root:/root:/bin/sh\nvorteil:x:1000:1000:vorteil:/:/bin/false\n",
        ),
        (
            b"daemon:x:1:1::/:/sbin/nologin\n",
            b"daemon:x:1:1::/:/sbin/nologin\nroot:x:0:0:root:/:/bin/false\n"
            b"vorteil:x:1000:1000:vorteil:/:/bin/false\n",
        ),
        (b"", PASSWD),
        (
            b"root:x:0:0::/:/bin/sh\nvorteil:x:1000:1000:me:/home:/bin/sh\n",
            b"root:x:0:0::/:/bin/sh\nvorteil:x:1000:1000:me:/home:/bin/sh\n",
        ),
    ],
    ids=["append-user", "no-final-newline", "no-root", "empty", "user-present"],
)
def test_passwd_append_rule(etc: Path, existing: bytes, expected: bytes) -> None:
    """An existing passwd without the user gets only the missing lines, root never twice."""
    etc.mkdir()
    (etc / "passwd").write_bytes(existing)
    (etc / "passwd").chmod(0o600)
    assert etcfiles.write_users("", etc=etc) == []
    assert (etc / "passwd").read_bytes() == expected
    assert stat.S_IMODE((etc / "passwd").stat().st_mode) == 0o600


def test_group_append_rule(etc: Path) -> None:
    """An existing group without the user gets the user's group appended."""
    etc.mkdir()
    (etc / "group").write_bytes(b"root:x:0:\nusers:x:100:\n")
    etcfiles.write_users("app", etc=etc)
    assert (etc / "group").read_bytes() == b"root:x:0:\nusers:x:100:\napp:x:1000:app\n"


def test_user_must_start_a_line(etc: Path) -> None:
    """User pp is not mistaken for app:x:1000 (vorteil matched the substring anywhere)."""
    etc.mkdir()
    (etc / "passwd").write_bytes(b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    etcfiles.write_users("pp", etc=etc)
    lines = (etc / "passwd").read_text().splitlines()
    assert lines[-1] == "pp:x:1000:1000:pp:/:/bin/false"


def test_unreadable_passwd_is_logged_and_the_rest_written(
    etc: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A passwd that cannot be read gives one ERROR line; the other files are still written."""
    (etc / "passwd").mkdir(parents=True)
    problems = write(etc)
    assert problems == [f"can not read {etc / 'passwd'}: Is a directory"]
    assert console_messages(capfd) == [("ERROR", problems[0])]
    assert (etc / "group").read_bytes() == GROUP
    assert (etc / "hostname").read_bytes() == b"web"


def test_localtime_is_utc_for_zoneinfo(etc: Path) -> None:
    """Python's zoneinfo reads the generated localtime as UTC, summer and winter."""
    write(etc)
    with (etc / "localtime").open("rb") as file:
        zone = zoneinfo.ZoneInfo.from_file(file)
    for month in (1, 7):
        moment = datetime.datetime(2026, month, 1, 12, tzinfo=zone)
        assert moment.utcoffset() == datetime.timedelta(0)
        assert moment.tzname() == "UTC"


def test_localtime_is_utc_for_zdump(etc: Path) -> None:
    """glibc's zdump loads the generated localtime and names the zone UTC."""
    require_tools("zdump")
    write(etc)
    result = subprocess.run(
        ["zdump", str(etc / "localtime")], capture_output=True, text=True, check=True
    )
    assert result.stdout.rstrip().endswith(" UTC")


def test_localtime_layout() -> None:
    """The TZif file is 118 bytes: version 2, one type, the POSIX footer UTC0."""
    data = etcfiles.utc_tzif()
    assert len(data) == 118
    assert data[:5] == b"TZif2"
    assert data[44:56] == data[100:112] == b"\0\0\0\0\0\0UTC\0\0\0"
    assert data.endswith(b"\nUTC0\n")


@pytest.mark.parametrize(
    ("hostname", "short"),
    [
        ("web.example.com", "web"),
        ("web", "web"),
        ("a.b", "a"),
        (".abc", ".abc"),
        ("abc.", "abc"),
        ("", ""),
    ],
)
def test_short_hostname(hostname: str, short: str) -> None:
    """The name is cut at its first dot unless the dot leads."""
    assert etcfiles.short_hostname(hostname) == short


def test_empty_hostname(etc: Path) -> None:
    """An empty host name gives an empty /etc/hostname and no host line in /etc/hosts."""
    write(etc, hostname="")
    assert (etc / "hostname").read_bytes() == b""
    assert b"127.0.0.1\t\n" not in (etc / "hosts").read_bytes()
    assert (etc / "hosts").read_bytes() == HOSTS.replace(b"127.0.0.1\tweb\n", b"")


def test_hostname_write_failure_is_fatal(etc: Path) -> None:
    """/etc/hostname that cannot be written raises EtcError naming the file."""
    (etc / "hostname").mkdir(parents=True)
    with pytest.raises(EtcError, match=r"can not write .*/etc/hostname: Is a directory"):
        write(etc)


def test_dangling_resolv_conf_link_is_replaced(etc: Path) -> None:
    """A resolv.conf linking into a missing /run is replaced by the template file."""
    etc.mkdir()
    (etc / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    write(etc)
    assert not (etc / "resolv.conf").is_symlink()
    assert (etc / "resolv.conf").read_bytes() == RESOLV_CONF


def test_no_local_dns_leaves_resolv_conf(etc: Path) -> None:
    """Without the local DNS forwarder no resolv.conf template is written."""
    etcfiles.write_etc(etc=etc, user="", hostname="web", dns_local=False)
    assert not (etc / "resolv.conf").exists()
    assert (etc / "nsswitch.conf").exists()


def test_machine_id_from_rng_is_a_v4_uuid() -> None:
    """A seeded rng gives a reproducible canonical version 4 UUID, 36 characters."""
    first = etcfiles.machine_id(random.Random(3))
    assert first == etcfiles.machine_id(random.Random(3))
    assert len(first) == 36
    assert uuid.UUID(first).version == 4
    assert str(uuid.UUID(first)) == first
    assert uuid.UUID(etcfiles.machine_id()).version == 4


def test_rewrite_host_files_replaces_both(etc: Path) -> None:
    """After a host name change /etc/hostname and /etc/hosts hold the new name."""
    write(etc)
    assert etcfiles.rewrite_host_files("db.example", etc=etc) == []
    assert (etc / "hostname").read_bytes() == b"db"
    assert (etc / "hosts").read_bytes() == HOSTS.replace(b"\tweb\n", b"\tdb\n")


@pytest.mark.parametrize(
    ("nameservers", "search", "text"),
    [
        (("127.0.0.1",), (), "nameserver 127.0.0.1\n"),
        (("127.0.0.1",), ("a", "b"), "nameserver 127.0.0.1\noptions edns0\nsearch a b\n"),
        (
            ("10.0.2.3", "1.1.1.1"),
            ("lan",),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\noptions edns0\nsearch lan\n",
        ),
    ],
)
def test_resolv_conf(nameservers: tuple[str, ...], search: tuple[str, ...], text: str) -> None:
    """One nameserver line each, then edns0 and the search line when there are domains."""
    assert etcfiles.resolv_conf(nameservers, search) == text


def test_resolv_conf_default_is_the_template() -> None:
    """With no arguments the builder gives the template."""
    assert etcfiles.resolv_conf().encode() == RESOLV_CONF


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (b"nameserver 127.0.0.1\n", b"nameserver 127.0.0.1\noptions edns0\nsearch a b\n"),
        (b"nameserver 127.0.0.1", b"nameserver 127.0.0.1\noptions edns0\nsearch a b\n"),
    ],
)
def test_append_search_domains(etc: Path, existing: bytes, expected: bytes) -> None:
    """DHCP's search domains are appended to the existing resolv.conf."""
    etc.mkdir()
    (etc / "resolv.conf").write_bytes(existing)
    etcfiles.append_search_domains(["a", "b"], etc=etc)
    assert (etc / "resolv.conf").read_bytes() == expected


def test_append_search_domains_skipped(etc: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """No domains: nothing; a read-only root: nothing but a WARNING (Q14)."""
    etc.mkdir()
    (etc / "resolv.conf").write_bytes(RESOLV_CONF)
    etcfiles.append_search_domains([], etc=etc)
    etcfiles.append_search_domains(["a"], etc=etc, read_only=True)
    assert (etc / "resolv.conf").read_bytes() == RESOLV_CONF
    assert [level for level, _ in console_messages(capfd)] == ["WARNING"]


def test_append_search_domains_without_resolv_conf_is_fatal(etc: Path) -> None:
    """A missing resolv.conf stops the stage, as in vorteil."""
    etc.mkdir()
    with pytest.raises(EtcError, match="can not add search domains"):
        etcfiles.append_search_domains(["a"], etc=etc)
