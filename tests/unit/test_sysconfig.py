"""System configuration against fake /proc trees: sysctls, rlimits, mounts and the host name."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vinitd import console, mounts, sysconfig
from vinitd.sysconfig import Sysctl
from vinitd.vcfg.model import VCFG, Info, System

ROOT = Path(__file__).resolve().parents[2]

# §7.6 of the vinitd spec, in its order, without the fs/file-max row.
SPEC_TABLE = """
vm/max_map_count 1048575
vm/swappiness 0
kernel/randomize_va_space 2
net/ipv4/tcp_no_metrics_save 1
net/core/netdev_max_backlog 5000
vm/dirty_background_ratio 20
vm/dirty_ratio 25
fs/protected_hardlinks 1
fs/protected_symlinks 1
fs/suid_dumpable 1
kernel/kptr_restrict 1
kernel/dmesg_restrict 1
kernel/unprivileged_bpf_disabled 1
net/ipv4/conf/all/bootp_relay 0
net/ipv4/tcp_syncookies 1
net/ipv4/tcp_syn_retries 2
net/ipv4/tcp_synack_retries 2
net/ipv4/tcp_max_syn_backlog 4096
net/ipv4/ip_forward 0
net/ipv4/conf/all/forwarding 0
net/ipv4/conf/default/forwarding 0
net/ipv6/conf/all/forwarding 0
net/ipv6/conf/default/forwarding 0
net/ipv4/conf/all/rp_filter 1
net/ipv4/conf/default/rp_filter 1
net/ipv4/conf/all/accept_redirects 0
net/ipv4/conf/default/accept_redirects 0
net/ipv4/conf/all/secure_redirects 0
net/ipv4/conf/default/secure_redirects 0
net/ipv6/conf/all/accept_redirects 0
net/ipv6/conf/default/accept_redirects 0
net/ipv4/conf/all/accept_source_route 0
net/ipv4/conf/default/accept_source_route 0
net/ipv6/conf/all/accept_source_route 0
net/ipv6/conf/default/accept_source_route 0
net/ipv4/conf/all/proxy_arp 0
net/ipv4/conf/all/arp_ignore 1
net/ipv4/conf/all/arp_announce 2
net/ipv4/conf/default/log_martians 0
net/ipv4/conf/all/log_martians 0
net/ipv4/icmp_ignore_bogus_error_responses 0
net/ipv4/icmp_echo_ignore_broadcasts 1
"""

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


def make_proc_sys(root: Path, paths: list[str]) -> Path:
    """A fake /proc/sys holding a file (content "old") for each path."""
    proc_sys = root / "proc" / "sys"
    for relative in paths:
        path = proc_sys / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old\n")
    return proc_sys


@pytest.fixture
def proc_sys(tmp_path: Path) -> Path:
    """A fake /proc/sys with every default sysctl, fs/file-max and kernel/hostname."""
    paths = [s.path for s in sysconfig.default_sysctls(0)] + ["kernel/hostname"]
    return make_proc_sys(tmp_path, paths)


@pytest.fixture
def mount_calls(monkeypatch: pytest.MonkeyPatch) -> list[mounts.Mount]:
    """Record mounts instead of mounting."""
    calls: list[mounts.Mount] = []
    monkeypatch.setattr(mounts, "mount", calls.append)
    return calls


def failing_mount(entry: mounts.Mount) -> None:
    raise OSError(errno.EPERM, os.strerror(errno.EPERM))


def test_default_table_is_the_spec_table() -> None:
    """The table holds the spec's rows in the spec's order, fs/file-max last."""
    rows = [tuple(line.split()) for line in SPEC_TABLE.strip().splitlines()]
    assert [(s.path, s.value) for s in sysconfig.DEFAULT_SYSCTLS] == rows
    table = sysconfig.default_sysctls(0)
    assert table[:-1] == sysconfig.DEFAULT_SYSCTLS
    assert table[-1] == Sysctl("fs/file-max", "1024")


@pytest.mark.parametrize(("max_fds", "file_max"), [(0, "1024"), (1000, "1024"), (65536, "65536")])
def test_file_max_is_max_fds_at_least_1024(max_fds: int, file_max: str) -> None:
    """fs/file-max follows system.max-fds with a floor of 1024."""
    assert sysconfig.default_sysctls(max_fds)[-1].value == file_max


def test_apply_sysctls_writes_every_value(
    proc_sys: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every default lands in its file as the bare decimal value; no problem, no console line."""
    assert sysconfig.apply_sysctls(sysconfig.default_sysctls(4096), proc_sys=proc_sys) == []
    assert (proc_sys / "vm/max_map_count").read_text() == "1048575"
    assert (proc_sys / "net/ipv4/conf/all/arp_announce").read_text() == "2"
    assert (proc_sys / "fs/file-max").read_text() == "4096"
    assert console_messages(capfd) == []


def test_unwritable_sysctl_is_logged_and_the_rest_applied(
    proc_sys: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A sysctl that cannot be written gives one ERROR line; the values after it are still set."""
    (proc_sys / "vm/swappiness").unlink()
    (proc_sys / "vm/swappiness").mkdir()
    problems = sysconfig.apply_sysctls(sysconfig.default_sysctls(0), proc_sys=proc_sys)
    assert problems == ["can not set vm/swappiness: Is a directory"]
    assert console_messages(capfd) == [("ERROR", "can not set vm/swappiness: Is a directory")]
    assert (proc_sys / "fs/file-max").read_text() == "1024"


def test_missing_sysctl_is_not_created(proc_sys: Path) -> None:
    """A sysctl the kernel lacks is reported, and no file appears for it (no O_CREAT)."""
    (proc_sys / "kernel/unprivileged_bpf_disabled").unlink()
    problems = sysconfig.apply_sysctls(sysconfig.DEFAULT_SYSCTLS, proc_sys=proc_sys)
    assert problems == ["can not set kernel/unprivileged_bpf_disabled: No such file or directory"]
    assert not (proc_sys / "kernel/unprivileged_bpf_disabled").exists()


def test_value_read_back_differently_is_a_mismatch(
    proc_sys: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A file that swallows the write (a link to /dev/null) reads back empty: a mismatch."""
    (proc_sys / "vm/dirty_ratio").unlink()
    (proc_sys / "vm/dirty_ratio").symlink_to("/dev/null")
    problems = sysconfig.apply_sysctls([Sysctl("vm/dirty_ratio", "25")], proc_sys=proc_sys)
    assert problems == ["can not set vm/dirty_ratio: values mismatch after set 25 != "]
    assert console_messages(capfd) == [("ERROR", problems[0])]


@pytest.mark.parametrize(
    ("written", "read_back", "same"),
    [
        ("0", "0\n", True),
        ("  7 ", "7", True),
        ("4096 87380 6291456", "4096\t87380\t6291456\n", True),
        ("4096  87380", "4096 87380", True),
        ("1", "2\n", False),
        ("4096 87380", "4096", False),
    ],
)
def test_same_value_normalises_whitespace(written: str, read_back: str, same: bool) -> None:
    """Values compare equal when only their whitespace differs."""
    assert sysconfig.same_value(written, read_back) is same


def test_user_sysctls_dots_become_slashes(tmp_path: Path) -> None:
    """net.core.somaxconn is written to net/core/somaxconn, multi-value entries verbatim."""
    proc_sys = make_proc_sys(tmp_path, ["net/core/somaxconn", "net/ipv4/tcp_rmem"])
    sysctls = {"net.core.somaxconn": "4096", "net.ipv4.tcp_rmem": "4096 87380 6291456"}
    assert sysconfig.apply_user_sysctls(sysctls, proc_sys=proc_sys) == []
    assert (proc_sys / "net/core/somaxconn").read_text() == "4096"
    assert (proc_sys / "net/ipv4/tcp_rmem").read_text() == "4096 87380 6291456"


def test_failing_user_sysctl_names_value_and_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An unknown user sysctl logs vorteil's line plus the reason."""
    proc_sys = make_proc_sys(tmp_path, [])
    problems = sysconfig.apply_user_sysctls({"net.core.nothing": "1"}, proc_sys=proc_sys)
    message = "can not set sysctl net/core/nothing to 1: No such file or directory"
    assert problems == [message]
    assert console_messages(capfd) == [("ERROR", message)]


def test_user_sysctl_cannot_leave_proc_sys(tmp_path: Path) -> None:
    """A key that looks like an absolute path stays under /proc/sys."""
    proc_sys = make_proc_sys(tmp_path, [])
    outside = tmp_path / "outside"
    outside.write_text("keep")
    key = str(outside).replace("/", ".")
    problems = sysconfig.apply_user_sysctls({key: "1"}, proc_sys=proc_sys)
    assert len(problems) == 1
    assert problems[0].endswith("No such file or directory")
    assert outside.read_text() == "keep"


def test_kernel_hostname(proc_sys: Path) -> None:
    """The full host name goes to kernel/hostname; an empty one is not written."""
    assert sysconfig.set_kernel_hostname("web.example", proc_sys=proc_sys) == []
    assert (proc_sys / "kernel/hostname").read_text() == "web.example"
    assert sysconfig.set_kernel_hostname("", proc_sys=proc_sys) == []
    assert (proc_sys / "kernel/hostname").read_text() == "web.example"


def test_kernel_version_line(tmp_path: Path) -> None:
    """kernel/version trimmed, then /proc/version up to its first '(' in parentheses."""
    proc_sys = make_proc_sys(tmp_path, [])
    (proc_sys / "kernel").mkdir(parents=True)
    (proc_sys / "kernel/version").write_text(
        "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-01-12)\n"
    )
    proc_version = tmp_path / "version"
    proc_version.write_text(
        "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) "
        "(gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3\n"
    )
    line = sysconfig.kernel_version_line(proc_sys=proc_sys, proc_version=proc_version)
    assert line == (
        "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-01-12) (Linux version 6.1.0-57-cloud-amd64)"
    )


def test_kernel_version_line_unreadable(tmp_path: Path) -> None:
    """Without /proc/version there is no line at all."""
    proc_sys = make_proc_sys(tmp_path, ["kernel/version"])
    missing = tmp_path / "version"
    assert sysconfig.kernel_version_line(proc_sys=proc_sys, proc_version=missing) is None


def run_set_rlimits(max_fds: int) -> tuple[list[str], list[int], list[int]]:
    """set_rlimits in a child Python; its problems and getrlimit(NPROC), getrlimit(NOFILE)."""
    script = (
        "import json, resource, sys\n"
        "from vinitd.sysconfig import set_rlimits\n"
        "problems = set_rlimits(int(sys.argv[1]))\n"
        "print(json.dumps([problems, resource.getrlimit(resource.RLIMIT_NPROC),"
        " resource.getrlimit(resource.RLIMIT_NOFILE)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(max_fds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    problems, nproc, nofile = json.loads(result.stdout)
    return problems, nproc, nofile


@pytest.mark.parametrize(("max_fds", "nofile"), [(0, 2048), (3000, 6000)])
def test_rlimits_are_set(max_fds: int, nofile: int) -> None:
    """NPROC becomes 10000 and NOFILE twice max(1024, max-fds), soft and hard."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if os.geteuid() != 0 and hard != resource.RLIM_INFINITY and hard < nofile:
        pytest.skip(f"NOFILE hard limit {hard} is below {nofile} and raising it needs root")
    problems, nproc_limits, nofile_limits = run_set_rlimits(max_fds)
    assert problems == []
    assert nproc_limits == [10000, 10000]
    assert nofile_limits == [nofile, nofile]


def test_rlimit_failure_is_returned_not_raised() -> None:
    """A NOFILE above the kernel's nr_open fails; the problem is returned, NPROC still set."""
    problems, nproc_limits, _ = run_set_rlimits(2**32 - 1)
    assert len(problems) == 1
    assert problems[0].startswith(f"can not set RLIMIT_NOFILE to {2 * (2**32 - 1)}: ")
    assert nproc_limits == [10000, 10000]


@pytest.mark.parametrize(
    "cmdline",
    [
        "shm=64m console=ttyS0",
        "console=ttyS0 shm=64m quiet\n",
        "console=ttyS0 quiet shm=64m",
        "shm=8m console=ttyS0 shm=64m",
    ],
)
def test_shm_token_anywhere(cmdline: str, tmp_path: Path, mount_calls: list[mounts.Mount]) -> None:
    """shm=<size> anywhere on the command line mounts a tmpfs of that size (the last one wins)."""
    assert sysconfig.mount_shm(cmdline, target=tmp_path / "shm") == []
    flags = mounts.MS_NOSUID | mounts.MS_NODEV
    assert mount_calls == [mounts.Mount("tmpfs", str(tmp_path / "shm"), "tmpfs", flags, "size=64m")]


@pytest.mark.parametrize("cmdline", ["", "console=ttyS0 quiet", "shm= ro", "noshm=64m"])
def test_no_shm_token_no_mount(
    cmdline: str, tmp_path: Path, mount_calls: list[mounts.Mount]
) -> None:
    """Without a non-empty shm= token nothing is mounted."""
    assert sysconfig.mount_shm(cmdline, target=tmp_path / "shm") == []
    assert mount_calls == []


def test_shm_mount_failure_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A failing /dev/shm mount is one ERROR line, not an exception."""
    monkeypatch.setattr(mounts, "mount", failing_mount)
    problems = sysconfig.mount_shm("shm=1g", target=tmp_path / "shm")
    assert problems == [f"can not mount {tmp_path / 'shm'}: Operation not permitted"]
    assert console_messages(capfd) == [("ERROR", problems[0])]


def fake_proc(tmp_path: Path, filesystems: str, mounted: str = "") -> tuple[Path, Path]:
    """Fake /proc/filesystems and /proc/mounts."""
    (tmp_path / "filesystems").write_text(filesystems)
    (tmp_path / "mounts").write_text(mounted)
    return tmp_path / "filesystems", tmp_path / "mounts"


def test_cgroup2_is_mounted(tmp_path: Path, mount_calls: list[mounts.Mount]) -> None:
    """With cgroup2 in the kernel, the unified hierarchy is mounted nosuid,nodev,noexec."""
    filesystems, proc_mounts = fake_proc(tmp_path, "nodev\tcgroup\nnodev\tcgroup2\n")
    target = tmp_path / "cgroup"
    problems = sysconfig.mount_cgroups(
        target=target, proc_filesystems=filesystems, proc_mounts=proc_mounts
    )
    flags = mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC
    assert problems == []
    assert mount_calls == [mounts.Mount("cgroup2", str(target), "cgroup2", flags)]


def test_cgroup2_absent_or_mounted(tmp_path: Path, mount_calls: list[mounts.Mount]) -> None:
    """No cgroup2 in the kernel, or already mounted: nothing to do, nothing to report."""
    target = tmp_path / "cgroup"
    filesystems, proc_mounts = fake_proc(tmp_path, "nodev\tcgroup\n")
    assert (
        sysconfig.mount_cgroups(
            target=target, proc_filesystems=filesystems, proc_mounts=proc_mounts
        )
        == []
    )
    filesystems, proc_mounts = fake_proc(
        tmp_path, "nodev\tcgroup2\n", f"cgroup2 {target} cgroup2 rw 0 0\n"
    )
    assert (
        sysconfig.mount_cgroups(
            target=target, proc_filesystems=filesystems, proc_mounts=proc_mounts
        )
        == []
    )
    assert mount_calls == []


def test_configure_system_goes_on_after_mount_failures(
    tmp_path: Path,
    proc_sys: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Failed cgroup and shm mounts are logged; loader files go, sysctls and host name are set."""
    monkeypatch.setattr(mounts, "mount", failing_mount)
    monkeypatch.setattr(sysconfig, "set_rlimits", lambda max_fds: [])
    make_proc_sys(tmp_path, ["net/core/somaxconn"])
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ld.so.preload").write_text("/lib/evil.so\n")
    (etc / "ld.so.cache").write_text("stale")
    filesystems, proc_mounts = fake_proc(tmp_path, "nodev\tcgroup2\n")
    vcfg = VCFG(system=System(max_fds=5000), sysctl={"net.core.somaxconn": "4096"})
    problems = sysconfig.configure_system(
        vcfg,
        "web.example",
        cmdline="console=ttyS0 shm=64m",
        etc=etc,
        proc_sys=proc_sys,
        dev_shm=tmp_path / "shm",
        cgroup_root=tmp_path / "cgroup",
        proc_filesystems=filesystems,
        proc_mounts=proc_mounts,
    )
    assert problems == [
        "can not mount cgroups: Operation not permitted",
        f"can not mount {tmp_path / 'shm'}: Operation not permitted",
    ]
    assert [level for level, _ in console_messages(capfd)] == ["ERROR", "ERROR"]
    assert list(etc.iterdir()) == []
    assert (proc_sys / "fs/file-max").read_text() == "5000"
    assert (proc_sys / "kernel/hostname").read_text() == "web.example"
    assert (proc_sys / "net/core/somaxconn").read_text() == "4096"


def test_choose_hostname_sanitises_the_configured_name(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """system.hostname is lower-cased and cleaned by vorteil's rules."""
    vcfg = VCFG(system=System(hostname="My_App.Example"))
    assert sysconfig.choose_hostname(vcfg) == "my-app.example"
    debug = console_messages(capfd, ("DEBUG",))
    assert debug == [("DEBUG", "set hostname to my-app.example")]


def test_choose_hostname_default_is_salted_info_name() -> None:
    """Without system.hostname: info.name plus an 8-character salt, drawn from the given rng."""
    vcfg = VCFG(info=Info(name="API"))
    name = sysconfig.choose_hostname(vcfg, rng=random.Random(7))
    assert re.fullmatch(r"api-[a-z0-9-]{8}", name)
    assert sysconfig.choose_hostname(vcfg, rng=random.Random(7)) == name


def test_choose_hostname_error_warns_and_is_empty(capfd: pytest.CaptureFixture[str]) -> None:
    """A name with no legal character gives vorteil's WARNING and an empty host name."""
    vcfg = VCFG(system=System(hostname="___"))
    assert sysconfig.choose_hostname(vcfg) == ""
    assert console_messages(capfd) == [
        ("WARNING", "could not set hostname: host name label '___' has no legal character")
    ]


def test_dhcp_hostname_is_sanitised_and_applied(
    tmp_path: Path, proc_sys: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A DHCP name is cleaned, replaces /etc/hostname and /etc/hosts, and reaches the kernel."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("old")
    (etc / "hosts").write_text("127.0.0.1\told\n")
    name = sysconfig.apply_dhcp_hostname("Node_7.LAN", "old", etc=etc, proc_sys=proc_sys)
    assert name == "node-7.lan"
    assert (etc / "hostname").read_bytes() == b"node-7"
    assert (etc / "hosts").read_text().splitlines()[1] == "127.0.0.1\tnode-7"
    assert (proc_sys / "kernel/hostname").read_text() == "node-7.lan"
    debug = console_messages(capfd, ("DEBUG",))
    assert debug == [("DEBUG", "changed hostname from old to node-7.lan")]


def test_dhcp_hostname_read_only_sets_only_the_kernel(tmp_path: Path, proc_sys: Path) -> None:
    """On a read-only root the /etc files stay; the kernel host name still changes."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("old")
    name = sysconfig.apply_dhcp_hostname("node", "old", read_only=True, etc=etc, proc_sys=proc_sys)
    assert name == "node"
    assert (etc / "hostname").read_text() == "old"
    assert (proc_sys / "kernel/hostname").read_text() == "node"


@pytest.mark.parametrize("offered", ["old", "OLD", "___"])
def test_dhcp_hostname_unchanged_or_invalid_keeps_current(
    offered: str, tmp_path: Path, proc_sys: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The same name, or one with nothing legal in it, changes nothing; the latter warns."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("old")
    name = sysconfig.apply_dhcp_hostname(offered, "old", etc=etc, proc_sys=proc_sys)
    assert name == "old"
    assert (etc / "hostname").read_text() == "old"
    assert (proc_sys / "kernel/hostname").read_text() == "old\n"
    levels = [level for level, _ in console_messages(capfd)]
    assert levels == (["WARNING"] if offered == "___" else [])
