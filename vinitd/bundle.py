"""The kernel bundle: a plain USTAR stream at LBA 66 of the OS partition.

Member 0 is the kernel, named ``linux`` (its data starts at LBA 67, where a vorteil-style MBR
loader expects the bzImage); member 1 is the initramfs, ``initrd``. One 512-byte header per
member, no PAX or GNU records, then two zero blocks and nothing more, so the stream is
exactly ``sum(512 + round_up(size, 512)) + 1024`` bytes, as vorteil's builder predicts.

The writer and the reader live here, beside the rest of the layout, so that imagekit writes
and vmtest (and vinitd) read the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from vinitd.errors import LayoutError
from vinitd.gpt import SECTOR, read_at
from vinitd.layout import BUNDLE_LBA

KERNEL_MEMBER = "linux"
INITRD_MEMBER = "initrd"
BLOCK = 512
MAX_MEMBERS = 64
_NAME_FIELD = 100


@dataclass(frozen=True)
class BundleMember:
    """A member's name, its data's absolute byte offset on the disk, and its size."""

    name: str
    offset: int
    size: int


def bundle_size(sizes: Sequence[int]) -> int:
    """Bytes of a bundle whose members have ``sizes``."""
    return sum(BLOCK + _round_up(size) for size in sizes) + 2 * BLOCK


def _round_up(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _octal(value: int, width: int) -> bytes:
    text = f"{value:0{width - 1}o}".encode("ascii")
    if len(text) > width - 1:
        raise LayoutError(f"bundle value {value} does not fit a {width}-byte USTAR field")
    return text + b"\0"


def _header(name: str, size: int, mtime: int) -> bytes:
    encoded = name.encode("ascii")
    if not encoded or len(encoded) >= _NAME_FIELD or "/" in name:
        raise LayoutError(f"bundle member name {name!r} must be a short plain file name")
    fields = [
        encoded.ljust(_NAME_FIELD, b"\0"),
        _octal(0o644, 8),
        _octal(0, 8),
        _octal(0, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b" " * 8,  # checksum placeholder, counted as spaces
        b"0",
        bytes(100),
        b"ustar\x0000",
        bytes(32),
        bytes(32),
        bytes(8),
        bytes(8),
        bytes(155),
    ]
    header = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = f"{sum(header):06o}\0 ".encode("ascii")
    return header[:148] + checksum + header[156:]


def write_bundle(members: Sequence[tuple[str, bytes]], *, mtime: int = 0) -> bytes:
    """The bundle stream for (name, data) pairs, in order."""
    out = bytearray()
    for name, data in members:
        out += _header(name, len(data), mtime)
        out += data
        out += bytes(_round_up(len(data)) - len(data))
    out += bytes(2 * BLOCK)
    return bytes(out)


def read_bundle(fileobj: BinaryIO, *, source: str | None = None) -> list[BundleMember]:
    """The members of the bundle at LBA 66 of a whole disk (data is not read)."""
    offset = BUNDLE_LBA * SECTOR
    members: list[BundleMember] = []
    while len(members) <= MAX_MEMBERS:
        header = read_at(fileobj, offset, BLOCK, what="kernel bundle header", source=source)
        if header == bytes(BLOCK):
            if not members:
                raise LayoutError("the kernel bundle is empty", source=source)
            return members
        if header[257:263] != b"ustar\x00":
            raise LayoutError(
                f"no USTAR header at byte {offset} (not a vorteil kernel bundle)", source=source
            )
        stored = _parse_octal(header[148:156], source)
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise LayoutError(f"bad USTAR checksum at byte {offset}", source=source)
        name = header[:_NAME_FIELD].split(b"\0", 1)[0].decode("ascii", errors="replace")
        size = _parse_octal(header[124:136], source)
        members.append(BundleMember(name, offset + BLOCK, size))
        offset += BLOCK + _round_up(size)
    raise LayoutError(f"more than {MAX_MEMBERS} members in the kernel bundle", source=source)


def _parse_octal(field: bytes, source: str | None) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ").decode("ascii", errors="replace")
    try:
        return int(text or "0", 8)
    except ValueError:
        raise LayoutError(f"bad number {text!r} in a USTAR header", source=source) from None


def read_member(fileobj: BinaryIO, member: BundleMember, *, source: str | None = None) -> bytes:
    """The data of one bundle member."""
    return read_at(
        fileobj, member.offset, member.size, what=f"bundle member {member.name}", source=source
    )


def find_member(
    members: Sequence[BundleMember], name: str, *, source: str | None = None
) -> BundleMember:
    for member in members:
        if member.name == name:
            return member
    names = ", ".join(m.name for m in members)
    raise LayoutError(f"no {name!r} in the kernel bundle (it holds: {names})", source=source)
