"""Root remount: flags and data for each filesystem and kernel argument, the root entry of
/proc/mounts, and the messages of the degraded path (mount(2) itself is faked)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from vinitd import mounts, remount
from vinitd.remount import (
    MS_LAZYTIME,
    MS_NOATIME,
    MS_RDONLY,
    MS_REMOUNT,
    cmdline_words,
    find_root,
    plan_remount,
    remount_root,
)

CMDLINE = (
    "rw rootfstype=ext4 quiet console=tty0 console=ttyS0,115200 init=/vorteil/vinitd "
    "root=PARTUUID=4048447D-C09D-D111-B245-5FFDCE74FAD2 panic=-1 i8042.noaux vt.color=0x00\n"
)
DEFAULT_FLAGS = MS_REMOUNT | MS_NOATIME | MS_LAZYTIME


def proc_mounts(fstype: str) -> str:
    return (
        "none /dev devtmpfs rw,relatime,size=10240k,mode=755 0 0\n"
        f"/dev/vda2 / {fstype} rw,relatime 0 0\n"
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    )


@pytest.mark.parametrize(
    ("fstype", "data"),
    [
        ("ext2", "barrier=0"),
        ("ext4", "nodiscard,commit=30,inode_readahead_blks=64"),
        ("xfs", "nodiscard,inode64,noquota"),
    ],
)
@pytest.mark.parametrize(
    ("extra", "flags"),
    [
        ("", DEFAULT_FLAGS),
        (" ro", DEFAULT_FLAGS | MS_RDONLY),
        (" recordmode", MS_REMOUNT),
        (" recordmode ro", MS_REMOUNT | MS_RDONLY),
    ],
    ids=["default", "ro", "recordmode", "recordmode-ro"],
)
def test_plan(fstype: str, data: str, extra: str, flags: int) -> None:
    """Each filesystem gets its data; ro adds MS_RDONLY, recordmode drops noatime/lazytime."""
    plan = plan_remount(cmdline=CMDLINE.strip() + extra + "\n", proc_mounts=proc_mounts(fstype))
    assert plan == mounts.Mount(
        source="/dev/vda2", target="/", fstype=fstype, flags=flags, data=data
    )


def test_flag_values() -> None:
    """The flags are the kernel's numbers (MS_LAZYTIME is bit 25)."""
    assert (MS_RDONLY, MS_REMOUNT, MS_NOATIME, MS_LAZYTIME) == (1, 32, 1024, 1 << 25)


@pytest.mark.parametrize(
    "cmdline",
    [
        "root=/dev/vda2 rootfstype=ext4 rw",
        "rw recordmode=1 noro",
        "rw ro=1 xrecordmode",
        "rw\tquiet",
    ],
)
def test_tokens_are_words(cmdline: str) -> None:
    """ro and recordmode match whole words only, not parts of other arguments."""
    plan = plan_remount(cmdline=cmdline, proc_mounts=proc_mounts("ext4"))
    assert plan.flags == DEFAULT_FLAGS


def test_tokens_anywhere() -> None:
    """A token counts wherever it is, after tabs or repeated spaces too."""
    assert cmdline_words("a  ro\trecordmode\n") == {"a", "ro", "recordmode"}


def test_last_root_entry_wins() -> None:
    """The mount on top (the last / line) is the root, not an initramfs rootfs below it."""
    text = "rootfs / rootfs rw 0 0\n/dev/vda2 / ext4 rw,relatime 0 0\n"
    assert find_root(text) == remount.RootEntry(source="/dev/vda2", fstype="ext4")


def test_remount_calls_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """remount_root mounts the plan once and reports nothing."""
    calls: list[mounts.Mount] = []
    monkeypatch.setattr(mounts, "mount", calls.append)
    table = tmp_path / "mounts"
    table.write_text(proc_mounts("ext4"))

    assert remount_root(cmdline=CMDLINE, proc_mounts=table) is None
    assert calls == [
        mounts.Mount(
            "/dev/vda2", "/", "ext4", DEFAULT_FLAGS, "nodiscard,commit=30,inode_readahead_blks=64"
        )
    ]


def refuse_data(calls: list[mounts.Mount]) -> Callable[[mounts.Mount], None]:
    def mount(entry: mounts.Mount) -> None:
        calls.append(entry)
        if entry.data:
            raise OSError(errno.EINVAL, f"mount {entry.fstype} on {entry.target}: Invalid argument")

    return mount


def test_ext2_driver_without_barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ext2 driver refusing barrier=0 gets the remount with the flags alone."""
    calls: list[mounts.Mount] = []
    monkeypatch.setattr(mounts, "mount", refuse_data(calls))
    table = tmp_path / "mounts"
    table.write_text(proc_mounts("ext2"))

    assert remount_root(cmdline=CMDLINE, proc_mounts=table) is None
    assert [(c.flags, c.data) for c in calls] == [(DEFAULT_FLAGS, "barrier=0"), (DEFAULT_FLAGS, "")]


def test_ext4_einval_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other filesystems are not retried: the error is returned for the ERROR line."""
    calls: list[mounts.Mount] = []
    monkeypatch.setattr(mounts, "mount", refuse_data(calls))
    table = tmp_path / "mounts"
    table.write_text(proc_mounts("ext4"))

    message = remount_root(cmdline=CMDLINE, proc_mounts=table)
    assert message == "can not setup mount options: mount ext4 on /: Invalid argument"
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proc /proc proc rw 0 0\n", "can not setup mount options: can not find root filesystem"),
        (
            "/dev/vda2 / btrfs rw 0 0\n",
            "can not setup mount options: unknown filesystem format: btrfs",
        ),
    ],
    ids=["no-root", "unknown-fs"],
)
def test_plan_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    """No / entry and an unknown type give vorteil's messages; nothing is mounted."""
    calls: list[mounts.Mount] = []
    monkeypatch.setattr(mounts, "mount", calls.append)
    table = tmp_path / "mounts"
    table.write_text(text)

    assert remount_root(cmdline=CMDLINE, proc_mounts=table) == message
    assert calls == []


def test_unreadable_mounts(tmp_path: Path) -> None:
    """A missing /proc/mounts is reported with its path."""
    missing = tmp_path / "mounts"
    assert remount_root(cmdline=CMDLINE, proc_mounts=missing) == (
        f"can not setup mount options: {missing}: No such file or directory"
    )
