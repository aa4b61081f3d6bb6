"""Credentials of started programs: real children as root, their /proc/self/status checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vinitd import capabilities, programs
from vinitd.capabilities import SUPERUSER_CAPABILITIES, Capability
from vinitd.programs import Credentials, LaunchSpec
from vinitd.vcfg.model import Privilege

SUPERUSER_MASK = 0x820B40F  # bits 0-3, 10, 12, 13, 15, 21, 27


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing uid and capabilities needs root")


def _status(text: str) -> dict[str, str]:
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def _run(tmp_path: Path, privilege: Privilege, *argv: str) -> tuple[int, str]:
    out = tmp_path / "out.txt"
    spec = LaunchSpec(
        index=0,
        path=argv[0],
        args=argv[1:],
        env={"PATH": "/usr/bin:/bin"},
        stdout=str(out),
        stderr=str(out),
        credentials=Credentials.for_privilege(privilege),
    )
    process = programs.start(spec)
    code = process.wait(timeout=10)
    return code, out.read_text()


def test_superuser_mask_is_the_ten_capabilities() -> None:
    """The superuser set is vorteil's ten capabilities, as /proc shows them."""
    assert len(set(SUPERUSER_CAPABILITIES)) == 10
    assert capabilities.mask(SUPERUSER_CAPABILITIES) == SUPERUSER_MASK


def test_get_matches_proc_status() -> None:
    """capget reports the same sets as /proc/self/status for this process."""
    status = _status(Path("/proc/self/status").read_text())
    sets = capabilities.get()
    assert sets.effective == int(status["CapEff"], 16)
    assert sets.permitted == int(status["CapPrm"], 16)
    assert sets.inheritable == int(status["CapInh"], 16)


def test_superuser_child_has_uid_1000_and_ambient_capabilities(tmp_path: Path) -> None:
    """A superuser program runs as 1000:1000, no groups, the ten caps ambient and effective."""
    code, text = _run(tmp_path, Privilege.SUPERUSER, "/bin/cat", "/proc/self/status")
    status = _status(text)
    assert code == 0
    assert status["Uid"].split() == ["1000"] * 4
    assert status["Gid"].split() == ["1000"] * 4
    assert status["Groups"] == ""
    for field in ("CapAmb", "CapEff", "CapPrm", "CapInh"):
        assert int(status[field], 16) == SUPERUSER_MASK, field


def test_user_child_has_no_capabilities(tmp_path: Path) -> None:
    """A user program runs as 1000:1000 with no groups and no capabilities at all."""
    code, text = _run(tmp_path, Privilege.USER, "/bin/cat", "/proc/self/status")
    status = _status(text)
    assert code == 0
    assert status["Uid"].split() == ["1000"] * 4
    assert status["Gid"].split() == ["1000"] * 4
    assert status["Groups"] == ""
    for field in ("CapAmb", "CapEff", "CapPrm"):
        assert int(status[field], 16) == 0, field


def test_root_child_stays_root_without_groups(tmp_path: Path) -> None:
    """A root program keeps uid 0 and its capabilities; supplementary groups are cleared."""
    code, text = _run(tmp_path, Privilege.ROOT, "/bin/cat", "/proc/self/status")
    status = _status(text)
    assert code == 0
    assert status["Uid"].split() == ["0"] * 4
    assert status["Groups"] == ""
    assert int(status["CapEff"], 16) & SUPERUSER_MASK == SUPERUSER_MASK


def test_ambient_capabilities_reach_grandchildren(tmp_path: Path) -> None:
    """A shell started as superuser runs cat, which reads a root-only file through DAC caps."""
    secret = tmp_path / "private" / "secret"
    secret.parent.mkdir(mode=0o700)
    secret.write_text("only root\n")
    secret.chmod(0o600)
    code, text = _run(tmp_path, Privilege.SUPERUSER, "/bin/sh", "-c", f"cat {secret}")
    assert (code, text) == (0, "only root\n")


def test_user_cannot_read_root_only_files(tmp_path: Path) -> None:
    """The same read fails for a plain user: the capabilities are what made it work."""
    secret = tmp_path / "private" / "secret"
    secret.parent.mkdir(mode=0o700)
    secret.write_text("only root\n")
    code, text = _run(tmp_path, Privilege.USER, "/bin/sh", "-c", f"cat {secret}")
    assert code != 0
    assert "Permission denied" in text


def test_drop_to_in_a_forked_child() -> None:
    """drop_to's function, run in a fork, leaves every kept capability ambient there."""
    become = capabilities.drop_to(1000, 1000, (Capability.NET_RAW, Capability.CHOWN))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and never returns into pytest
        try:
            become()
            ambient = [capabilities.ambient_is_set(c) for c in Capability]
            report = f"{os.getuid()} {capabilities.get().effective} {ambient}"
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    expected = [c in (Capability.NET_RAW, Capability.CHOWN) for c in Capability]
    assert report == f"1000 {(1 << 13) | 1} {expected}"
