"""System configuration for the setup stage: cgroups, /dev/shm, rlimits, sysctls, host name.

Follows vinitd spec §7.1 (kernel version line, host name), §7.5 and §7.6. Failure policy: every
step here is degraded: a problem is logged at ERROR (WARNING for the host name) and returned,
and the next step still runs. The one fatal case is an /etc/hostname that cannot be rewritten
for a DHCP host name (etcfiles.EtcError). Deviations from vorteil, on purpose:

* cgroups: vorteil mounted a tmpfs with one cgroup v1 hierarchy per line of /proc/cgroups. We
  mount the unified cgroup2 hierarchy instead: it is what a 6.1 kernel offers by default and
  what runc, containerd and Docker expect there, and a controller bound to a v1 hierarchy
  would be missing from v2. No cgroup2 in /proc/filesystems means no mount, without a message.
* A failed cgroup or /dev/shm mount no longer skips the rest of the step (rlimits, sysctls,
  the kernel host name): those matter more than either mount.
* ``shm=<size>`` is honoured anywhere on the command line, not only as its first token (Q11).
* Multi-value sysctls are compared with whitespace normalised, so ``4096 87380 6291456``
  written and read back tab-separated is not reported as a mismatch; a failing user sysctl
  names its reason (vorteil: ``can not set sysctl <path> to <value>`` and nothing more).
* /dev/sda is not made world-readable (vorteil chmodded it 0755): it is not the boot disk on
  virtio, and a readable raw disk would bypass every file permission.
* A host name offered by DHCP is sanitised like the configured one and also set in the kernel
  (Q17); vorteil used it as given and raced the kernel write.
* An empty host name is not written to kernel/hostname (the kernel would keep ``(none)`` and
  vorteil reported a mismatch).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vinitd import console, etcfiles, mounts
from vinitd.errors import ConfigError
from vinitd.vcfg import hostname as hostnames
from vinitd.vcfg.model import VCFG

MIN_FDS = 1024
MAX_PROCS = 10000


@dataclass(frozen=True)
class Sysctl:
    """One value under /proc/sys; ``path`` is relative, with slashes (``vm/swappiness``)."""

    path: str
    value: str


FILE_MAX = "fs/file-max"

# vorteil's defaults, in its order; fs/file-max (the effective max-fds) is appended last by
# `default_sysctls`. That is vorteil's value: 1024 unless system.max-fds is set, which also
# caps the open files of every non-root program together.
DEFAULT_SYSCTLS: tuple[Sysctl, ...] = (
    Sysctl("vm/max_map_count", "1048575"),
    Sysctl("vm/swappiness", "0"),
    Sysctl("kernel/randomize_va_space", "2"),
    Sysctl("net/ipv4/tcp_no_metrics_save", "1"),
    Sysctl("net/core/netdev_max_backlog", "5000"),
    Sysctl("vm/dirty_background_ratio", "20"),
    Sysctl("vm/dirty_ratio", "25"),
    Sysctl("fs/protected_hardlinks", "1"),
    Sysctl("fs/protected_symlinks", "1"),
    Sysctl("fs/suid_dumpable", "1"),
    Sysctl("kernel/kptr_restrict", "1"),
    Sysctl("kernel/dmesg_restrict", "1"),
    Sysctl("kernel/unprivileged_bpf_disabled", "1"),
    Sysctl("net/ipv4/conf/all/bootp_relay", "0"),
    Sysctl("net/ipv4/tcp_syncookies", "1"),
    Sysctl("net/ipv4/tcp_syn_retries", "2"),
    Sysctl("net/ipv4/tcp_synack_retries", "2"),
    Sysctl("net/ipv4/tcp_max_syn_backlog", "4096"),
    Sysctl("net/ipv4/ip_forward", "0"),
    Sysctl("net/ipv4/conf/all/forwarding", "0"),
    Sysctl("net/ipv4/conf/default/forwarding", "0"),
    Sysctl("net/ipv6/conf/all/forwarding", "0"),
    Sysctl("net/ipv6/conf/default/forwarding", "0"),
    Sysctl("net/ipv4/conf/all/rp_filter", "1"),
    Sysctl("net/ipv4/conf/default/rp_filter", "1"),
    Sysctl("net/ipv4/conf/all/accept_redirects", "0"),
    Sysctl("net/ipv4/conf/default/accept_redirects", "0"),
    Sysctl("net/ipv4/conf/all/secure_redirects", "0"),
    Sysctl("net/ipv4/conf/default/secure_redirects", "0"),
    Sysctl("net/ipv6/conf/all/accept_redirects", "0"),
    Sysctl("net/ipv6/conf/default/accept_redirects", "0"),
    Sysctl("net/ipv4/conf/all/accept_source_route", "0"),
    Sysctl("net/ipv4/conf/default/accept_source_route", "0"),
    Sysctl("net/ipv6/conf/all/accept_source_route", "0"),
    Sysctl("net/ipv6/conf/default/accept_source_route", "0"),
    Sysctl("net/ipv4/conf/all/proxy_arp", "0"),
    Sysctl("net/ipv4/conf/all/arp_ignore", "1"),
    Sysctl("net/ipv4/conf/all/arp_announce", "2"),
    Sysctl("net/ipv4/conf/default/log_martians", "0"),
    Sysctl("net/ipv4/conf/all/log_martians", "0"),
    Sysctl("net/ipv4/icmp_ignore_bogus_error_responses", "0"),
    Sysctl("net/ipv4/icmp_echo_ignore_broadcasts", "1"),
)


def effective_max_fds(max_fds: int) -> int:
    """``system.max-fds``, at least 1024."""
    return max(MIN_FDS, max_fds)


def default_sysctls(max_fds: int) -> tuple[Sysctl, ...]:
    """The default table with ``fs/file-max`` set to the effective max-fds, last."""
    return (*DEFAULT_SYSCTLS, Sysctl(FILE_MAX, str(effective_max_fds(max_fds))))


def configure_system(
    vcfg: VCFG,
    hostname: str,
    *,
    cmdline: str,
    etc: Path = Path("/etc"),
    proc_sys: Path = Path("/proc/sys"),
    dev_shm: Path = Path("/dev/shm"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_filesystems: Path = Path("/proc/filesystems"),
    proc_mounts: Path = Path("/proc/mounts"),
) -> list[str]:
    """Setup task B (§7.6) in order; returns every problem, each already logged."""
    remove_loader_files(etc=etc)
    problems = mount_cgroups(
        target=cgroup_root, proc_filesystems=proc_filesystems, proc_mounts=proc_mounts
    )
    problems += mount_shm(cmdline, target=dev_shm)
    problems += set_rlimits(vcfg.system.max_fds)
    problems += apply_sysctls(default_sysctls(vcfg.system.max_fds), proc_sys=proc_sys)
    problems += set_kernel_hostname(hostname, proc_sys=proc_sys)
    problems += apply_user_sysctls(vcfg.sysctl, proc_sys=proc_sys)
    return problems


def remove_loader_files(*, etc: Path = Path("/etc")) -> None:
    """Delete ld.so.preload and ld.so.cache, errors ignored, as vorteil does.

    Nothing is preloaded into the programs, and no loader cache built for another root stays.
    """
    for name in ("ld.so.preload", "ld.so.cache"):
        with contextlib.suppress(OSError):
            (etc / name).unlink(missing_ok=True)


def mount_cgroups(
    *,
    target: Path = Path("/sys/fs/cgroup"),
    proc_filesystems: Path = Path("/proc/filesystems"),
    proc_mounts: Path = Path("/proc/mounts"),
) -> list[str]:
    """Mount the unified cgroup2 hierarchy on ``target`` if the kernel has it."""
    try:
        filesystems = proc_filesystems.read_text().split()
    except OSError as err:
        filesystems = []
        console.log_level("DEBUG", f"can not read {proc_filesystems}: {err}")
    if "cgroup2" not in filesystems:
        console.log_level("DEBUG", f"no cgroup2 in the kernel, not mounting {target}")
        return []
    if mounts.is_mounted(str(target), str(proc_mounts)):
        return []

    flags = mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC
    try:
        mounts.mount(mounts.Mount("cgroup2", str(target), "cgroup2", flags))
    except OSError as err:
        return [_error(f"can not mount cgroups: {err.strerror or err}")]
    return []


def shm_size(cmdline: str) -> str | None:
    """The value of the last non-empty ``shm=`` token on the command line, if any."""
    sizes = [t.removeprefix("shm=") for t in cmdline.split() if t.startswith("shm=")]
    sizes = [size for size in sizes if size]
    return sizes[-1] if sizes else None


def mount_shm(cmdline: str, *, target: Path = Path("/dev/shm")) -> list[str]:
    """Mount a tmpfs of the ``shm=`` size on ``target``; nothing without the token."""
    size = shm_size(cmdline)
    if size is None:
        return []

    entry = mounts.Mount(
        "tmpfs", str(target), "tmpfs", mounts.MS_NOSUID | mounts.MS_NODEV, f"size={size}"
    )
    try:
        mounts.mount(entry)
    except OSError as err:
        return [_error(f"can not mount {target}: {err.strerror or err}")]
    return []


def set_rlimits(max_fds: int) -> list[str]:
    """RLIMIT_NPROC 10000 and RLIMIT_NOFILE twice the effective max-fds, soft and hard.

    Errors are ignored, as in vorteil: they are returned and logged at DEBUG only.
    """
    nofile = 2 * effective_max_fds(max_fds)
    problems: list[str] = []
    for name, limit, value in (
        ("RLIMIT_NPROC", resource.RLIMIT_NPROC, MAX_PROCS),
        ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, nofile),
    ):
        try:
            resource.setrlimit(limit, (value, value))
        except (OSError, ValueError) as err:
            problems.append(f"can not set {name} to {value}: {err}")
            console.log_level("DEBUG", problems[-1])
    return problems


def apply_sysctls(pairs: Iterable[Sysctl], *, proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """Write and verify each value; ``can not set <path>: <reason>`` for each failure."""
    problems: list[str] = []
    for pair in pairs:
        reason = write_sysctl(pair, proc_sys=proc_sys)
        if reason is not None:
            problems.append(_error(f"can not set {pair.path}: {reason}"))
    return problems


def apply_user_sysctls(
    sysctls: Mapping[str, str], *, proc_sys: Path = Path("/proc/sys")
) -> list[str]:
    """The VCFG's ``sysctl`` map (``net.core.somaxconn``: dots become slashes), in its order."""
    problems: list[str] = []
    for key, value in sysctls.items():
        pair = Sysctl(key.replace(".", "/"), value)
        reason = write_sysctl(pair, proc_sys=proc_sys)
        if reason is not None:
            problems.append(_error(f"can not set sysctl {pair.path} to {value}: {reason}"))
    return problems


def write_sysctl(pair: Sysctl, *, proc_sys: Path = Path("/proc/sys")) -> str | None:
    """Write ``pair`` and read it back; the reason it failed, or None."""
    relative = pair.path.strip("/")
    if not relative:
        return "empty sysctl name"
    path = proc_sys / relative
    try:
        # No O_CREAT: /proc/sys cannot create files, and a fake tree should not either.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, pair.value.encode())
        finally:
            os.close(fd)
        got = path.read_text()
    except OSError as err:
        return err.strerror or str(err)
    if not same_value(pair.value, got):
        return f"values mismatch after set {pair.value} != {got.strip()}"
    return None


def same_value(written: str, read_back: str) -> bool:
    """Equal once whitespace is normalised: the kernel prints multi-value entries with tabs."""
    return written.split() == read_back.split()


def set_kernel_hostname(name: str, *, proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """Write ``kernel/hostname``; nothing to do for an empty name."""
    if not name:
        return []
    return apply_sysctls((Sysctl("kernel/hostname", name),), proc_sys=proc_sys)


def kernel_version_line(
    *, proc_sys: Path = Path("/proc/sys"), proc_version: Path = Path("/proc/version")
) -> str | None:
    """``<kernel/version> (<text of /proc/version before its first "(">)``, or None (§7.1)."""
    try:
        build = (proc_sys / "kernel" / "version").read_text()
        release = proc_version.read_text()
    except OSError:
        return None
    return f"{build.strip()} ({release.split('(', 1)[0].strip()})"


def choose_hostname(vcfg: VCFG, *, rng: random.Random | None = None) -> str:
    """The host name for this boot (§7.5); empty, with a WARNING, if it cannot be made."""
    try:
        name = hostnames.resolve(vcfg.system.hostname, vcfg.info.name, rng)
    except ConfigError as err:
        console.log_level("WARNING", f"could not set hostname: {err}")
        return ""
    console.log_level("DEBUG", f"set hostname to {name}")
    return name


def apply_dhcp_hostname(
    offered: str,
    current: str,
    *,
    read_only: bool = False,
    etc: Path = Path("/etc"),
    proc_sys: Path = Path("/proc/sys"),
) -> str:
    """Adopt a host name offered by DHCP (§7.2b, after the setup join); returns the one in use.

    The offer is sanitised like a configured name; one that cannot be is ignored with a
    WARNING. A new name replaces /etc/hostname and /etc/hosts (unless ``read_only``) and the
    kernel host name. Raises etcfiles.EtcError if /etc/hostname cannot be written.
    """
    try:
        name = hostnames.sanitize(offered)
    except ConfigError as err:
        console.log_level("WARNING", f"ignoring hostname {offered!r} from DHCP: {err}")
        return current
    if name == current:
        return current

    console.log_level("DEBUG", f"changed hostname from {current} to {name}")
    if not read_only:
        etcfiles.rewrite_host_files(name, etc=etc)
    set_kernel_hostname(name, proc_sys=proc_sys)
    return name


def _error(message: str) -> str:
    console.log_level("ERROR", message)
    return message
