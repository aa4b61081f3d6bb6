"""The files vinitd writes under /etc (vinitd spec §7.7 and §7.2b), byte for byte as vorteil.

Failure policy: /etc/hostname and the resolv.conf search rewrite are fatal (EtcError); every
other problem is logged (ERROR where vorteil logged it, DEBUG where it ignored it), returned,
and the next file is still written. Deviations from vorteil, on purpose:

* passwd/group that exist without the user: only the missing lines are appended, so the root
  line is not duplicated; a missing final newline is added first, so the file's last line is
  not glued to ours; the user counts as present when a line starts with ``<user>:x:1000:``
  (vorteil looked for ``<user>:x:1000`` anywhere, so ``pp`` matched ``app:x:1000``).
* A dangling symlink (a Debian image's resolv.conf pointing into /run) counts as missing and is
  replaced by the file; vorteil wrote through it and failed silently. Created files are 0644
  whatever the umask.
* /etc/hosts gets no ``127.0.0.1`` line for the host name when there is none.
* /etc/machine-id keeps vorteil's format, a canonical UUID (36 characters, no newline), which
  is what programs of vorteil images have read; systemd's format would be 32 hex digits and a
  newline, but no systemd runs in the guest.
* The resolv.conf search rewrite is skipped on a read-only root (Q14): there it could only
  fail, and vorteil then stopped the boot.
"""

from __future__ import annotations

import os
import random
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vinitd import console
from vinitd.errors import VinitdError

DEFAULT_USER = "vorteil"
USER_ID = 1000
LOCAL_NAMESERVER = "127.0.0.1"


class EtcError(VinitdError):
    """A file the boot depends on cannot be written (vorteil: ``error creating etc files``)."""


def utc_tzif() -> bytes:
    """The 118-byte TZif version 2 file for UTC: no transitions, one type ``UTC``, footer ``UTC0``.

    Both data blocks (32-bit and 64-bit) are the same because there are no transitions.
    """
    # isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    header = b"TZif2" + bytes(15) + struct.pack(">6L", 1, 1, 0, 0, 1, 4)
    # ttinfo (utoff, isdst, desigidx), designations, isstd, isut
    data = struct.pack(">lBB", 0, 0, 0) + b"UTC\0" + b"\0" + b"\0"
    return header + data + header + data + b"\nUTC0\n"


@dataclass(frozen=True)
class Template:
    """A file written into /etc when the image has none."""

    name: str
    content: bytes


NSSWITCH = (
    b"passwd:         files\n"
    b"group:          files\n"
    b"shadow:         files\n"
    b"gshadow:        files\n"
    b"\n"
    b"hosts:          files dns\n"
    b"networks:       files\n"
)

RESOLV_CONF_TEMPLATE = Template("resolv.conf", f"nameserver {LOCAL_NAMESERVER}\n".encode())

TEMPLATES: tuple[Template, ...] = (
    Template("group", b"root:x:0:root\nvorteil:x:1000:vorteil\n"),
    Template("localtime", utc_tzif()),
    Template("nsswitch.conf", NSSWITCH),
    Template("passwd", b"root:x:0:0:root:/:/bin/false\nvorteil:x:1000:1000:vorteil:/:/bin/false\n"),
    RESOLV_CONF_TEMPLATE,
)


def write_etc(
    *,
    etc: Path = Path("/etc"),
    user: str,
    hostname: str,
    dns_local: bool = True,
    rng: random.Random | None = None,
) -> list[str]:
    """Setup task C (§7.7): users, templates, hostname, hosts and machine-id.

    ``user`` is ``system.user`` (empty means ``vorteil``). Without ``dns_local`` (no DNS
    forwarder on 127.0.0.1) resolv.conf is left to the DNS step. Returns the problems, each
    already logged; raises EtcError if /etc/hostname cannot be written.
    """
    try:
        etc.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as err:
        console.log_level("DEBUG", f"can not create {etc}: {err}")
    problems = write_users(user, etc=etc)
    skipped: tuple[str, ...] = () if dns_local else (RESOLV_CONF_TEMPLATE.name,)
    problems += write_templates(etc=etc, skip=skipped)
    write_hostname(hostname, etc=etc)
    problems += write_hosts(hostname, etc=etc)
    problems += write_machine_id(etc=etc, rng=rng)
    return problems


def user_lines(user: str) -> dict[str, tuple[str, str]]:
    """The root and user lines wanted in passwd and in group."""
    name = user or DEFAULT_USER
    return {
        "passwd": (
            "root:x:0:0:root:/:/bin/false",
            f"{name}:x:{USER_ID}:{USER_ID}:{name}:/:/bin/false",
        ),
        "group": ("root:x:0:root", f"{name}:x:{USER_ID}:{name}"),
    }


def write_users(user: str, *, etc: Path = Path("/etc")) -> list[str]:
    """Put root and the user (uid/gid 1000) into passwd and group; errors are logged."""
    name = user or DEFAULT_USER
    marker = f"{name}:x:{USER_ID}:".encode()
    problems: list[str] = []
    for filename, (root_line, user_line) in user_lines(user).items():
        path = etc / filename
        try:
            existing = path.read_bytes() if path.exists() else None
        except OSError as err:
            problems.append(_error(f"can not read {path}: {_reason(err)}"))
            continue
        if existing is None:
            text = f"{root_line}\n{user_line}\n".encode()
        else:
            lines = existing.splitlines()
            if any(line.startswith(marker) for line in lines):
                continue
            missing = [user_line]
            if not any(line.startswith(b"root:") for line in lines):
                missing.insert(0, root_line)
            newline = b"\n" if existing and not existing.endswith(b"\n") else b""
            text = existing + newline + "".join(f"{line}\n" for line in missing).encode()
        try:
            _write(path, text, replace=existing is not None)
        except OSError as err:
            problems.append(_error(f"can not write {path}: {_reason(err)}"))
    return problems


def write_templates(*, etc: Path = Path("/etc"), skip: Sequence[str] = ()) -> list[str]:
    """Write each template whose file is missing; errors are ignored (returned, DEBUG)."""
    problems: list[str] = []
    for template in TEMPLATES:
        path = etc / template.name
        if template.name in skip or path.exists():
            continue
        try:
            _write(path, template.content)
        except OSError as err:
            problems.append(f"can not create {path}: {_reason(err)}")
            console.log_level("DEBUG", problems[-1])
    return problems


def short_hostname(hostname: str) -> str:
    """``hostname`` up to its first dot, unless the dot leads."""
    dot = hostname.find(".")
    return hostname[:dot] if dot > 0 else hostname


def write_hostname(hostname: str, *, etc: Path = Path("/etc")) -> None:
    """/etc/hostname holds the short name, no newline; always rewritten. Raises EtcError."""
    path = etc / "hostname"
    try:
        _write(path, short_hostname(hostname).encode(), replace=True)
    except OSError as err:
        raise EtcError(f"can not write {path}: {_reason(err)}") from err


def hosts_file(hostname: str) -> str:
    """The /etc/hosts vorteil writes: tab separated, the short name on 127.0.0.1."""
    short = short_hostname(hostname)
    lines = [
        "127.0.0.1\tlocalhost",
        *([f"127.0.0.1\t{short}"] if short else []),
        "::1\tip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    return "".join(f"{line}\n" for line in lines)


def write_hosts(hostname: str, *, etc: Path = Path("/etc")) -> list[str]:
    """/etc/hosts if the image has none; a write error is logged."""
    path = etc / "hosts"
    if path.exists():
        return []
    try:
        _write(path, hosts_file(hostname).encode())
    except OSError as err:
        return [_error(f"can not create {path} file: {_reason(err)}")]
    return []


def rewrite_host_files(hostname: str, *, etc: Path = Path("/etc")) -> list[str]:
    """Replace /etc/hostname and /etc/hosts after a host name change (§7.2b). Raises EtcError."""
    for name in ("hosts", "hostname"):
        try:
            (etc / name).unlink(missing_ok=True)
        except OSError as err:
            console.log_level("DEBUG", f"can not remove {etc / name}: {err}")
    write_hostname(hostname, etc=etc)
    return write_hosts(hostname, etc=etc)


def machine_id(rng: random.Random | None = None) -> str:
    """A random version 4 UUID in canonical lower-case form."""
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def write_machine_id(*, etc: Path = Path("/etc"), rng: random.Random | None = None) -> list[str]:
    """/etc/machine-id if the image has none; a write error is logged."""
    path = etc / "machine-id"
    if path.exists():
        return []
    try:
        _write(path, machine_id(rng).encode())
    except OSError as err:
        return [_error(f"can not create {path}: {_reason(err)}")]
    return []


def search_lines(search: Sequence[str]) -> str:
    """What DHCP search domains add to resolv.conf; nothing without any."""
    if not search:
        return ""
    return f"options edns0\nsearch {' '.join(search)}\n"


def resolv_conf(
    nameservers: Sequence[str] = (LOCAL_NAMESERVER,), search: Sequence[str] = ()
) -> str:
    """A resolv.conf: one ``nameserver`` line each, then the search lines."""
    return "".join(f"nameserver {server}\n" for server in nameservers) + search_lines(search)


def append_search_domains(
    search: Sequence[str], *, etc: Path = Path("/etc"), read_only: bool = False
) -> None:
    """Add DHCP's search domains to resolv.conf (§7.2b); raises EtcError if that fails."""
    if not search:
        return
    path = etc / "resolv.conf"
    if read_only:
        console.log_level("WARNING", f"not adding search domains to {path}: read-only root")
        return

    try:
        existing = path.read_bytes()
        newline = b"\n" if existing and not existing.endswith(b"\n") else b""
        _write(path, existing + newline + search_lines(search).encode(), replace=True)
    except OSError as err:
        raise EtcError(f"can not add search domains to {path}: {_reason(err)}") from err


def _write(path: Path, content: bytes, *, replace: bool = False) -> None:
    """Create ``path`` (0644) with ``content``; with ``replace`` an existing file is truncated.

    A file that existed keeps its mode.
    """
    if not replace and path.is_symlink() and not path.exists():
        path.unlink()  # dangling: write a real file instead of through the link
    created = not path.exists()
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_TRUNC if replace else os.O_EXCL
    fd = os.open(path, flags, 0o644)
    try:
        if created:
            os.fchmod(fd, 0o644)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _error(message: str) -> str:
    console.log_level("ERROR", message)
    return message
