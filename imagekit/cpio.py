"""A writer for cpio "newc" archives (magic 070701), the format the kernel unpacks as initramfs.

Each member is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated
name padded so that header plus name end on a 4-byte boundary, then the data padded to 4
bytes. The archive ends with a member named ``TRAILER!!!``. The output depends only on the
calls made: inode numbers count up from 1 and every field is given or defaulted explicitly.

Example::

    writer = CpioWriter(mtime=0)
    writer.add_directory("bin")
    writer.add_file("bin/hello", b"#!/bin/sh\\necho hello\\n", mode=0o755)
    writer.add_symlink("bin/sh", "busybox")
    archive = writer.finish()
"""

from __future__ import annotations

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_ALIGNMENT = 4


class CpioWriter:
    """Builds one newc archive in memory; members go in the order they are added.

    Names are relative (a leading ``/`` is dropped) and a member's parent directory must
    have been added first, because the kernel's unpacker does not create parents.
    """

    def __init__(self, *, mtime: int = 0) -> None:
        self._mtime = mtime
        self._chunks: list[bytes] = []
        self._directories: set[str] = set()
        self._names: set[str] = set()
        self._next_inode = 1
        self._finished = False

    def add_directory(
        self, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int | None = None
    ) -> None:
        path = self._claim(name)
        self._directories.add(path)
        self._member(path, stat.S_IFDIR | mode, b"", (uid, gid), mtime, nlink=2)

    def add_file(
        self,
        name: str,
        data: bytes,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> None:
        path = self._claim(name)
        self._member(path, stat.S_IFREG | mode, data, (uid, gid), mtime)

    def add_symlink(
        self, name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int | None = None
    ) -> None:
        """A symbolic link; newc stores the target as the member's data."""
        path = self._claim(name)
        self._member(path, stat.S_IFLNK | 0o777, target.encode(), (uid, gid), mtime)

    def add_device(
        self,
        name: str,
        *,
        kind: int,
        major: int,
        minor: int,
        mode: int = 0o600,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> None:
        """A device node: ``kind`` is `stat.S_IFCHR` or `stat.S_IFBLK`."""
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            raise ValueError(f"device kind must be S_IFCHR or S_IFBLK, not {kind:#o}")
        path = self._claim(name)
        self._member(path, kind | mode, b"", (uid, gid), mtime, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive with its trailer; the writer accepts nothing after this."""
        if not self._finished:
            self._chunks.append(_entry(TRAILER, inode=0, mode=0, uid=0, gid=0, nlink=1, mtime=0))
            self._finished = True
        return b"".join(self._chunks)

    def _claim(self, name: str) -> str:
        if self._finished:
            raise ValueError("the archive is finished")
        path = name.lstrip("/")
        parts = path.split("/")
        if not path or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"bad member name {name!r}")
        if path in self._names:
            raise ValueError(f"duplicate member {path!r}")
        parent = "/".join(parts[:-1])
        if parent and parent not in self._directories:
            raise ValueError(f"member {path!r} comes before its directory {parent!r}")
        self._names.add(path)
        return path

    def _member(
        self,
        path: str,
        mode: int,
        data: bytes,
        owner: tuple[int, int],
        mtime: int | None,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        self._chunks.append(
            _entry(
                path,
                inode=self._next_inode,
                mode=mode,
                uid=owner[0],
                gid=owner[1],
                nlink=nlink,
                mtime=self._mtime if mtime is None else mtime,
                data=data,
                rdev=rdev,
            )
        )
        self._next_inode += 1


def _entry(
    name: str,
    *,
    inode: int,
    mode: int,
    uid: int,
    gid: int,
    nlink: int,
    mtime: int,
    data: bytes = b"",
    rdev: tuple[int, int] = (0, 0),
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (
        inode,
        mode,
        uid,
        gid,
        nlink,
        mtime,
        len(data),
        0,  # devmajor: the device holding the file, meaningless in an archive
        0,  # devminor
        rdev[0],
        rdev[1],
        len(encoded),
        0,  # check: only used by the "crc" variant (070702)
    )
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio field out of range in {name!r}: {value}")
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + encoded
    return head + _padding(len(head)) + data + _padding(len(data))


def _padding(length: int) -> bytes:
    return b"\0" * (-length % _ALIGNMENT)
