"""GUID partition tables (GPT) as bytes: protective MBR, headers and entry arrays.

Pure functions on bytes plus one reader, `read_gpt`; the guest uses them to find its boot disk
and imagekit to write one. Sectors are 512 bytes. GUIDs are stored in the mixed-endian form of
the UEFI spec, which is what `uuid.UUID(bytes_le=...)` reads.

An entry slot counts as unused only when all its 128 bytes are zero. The type GUID alone does
not decide: vorteil's OS partition has a zero type GUID, which the UEFI spec calls unused.
Entries keep their slot in `GptEntry.index`, so the root partition stays at index 1 (the
kernel names it `<disk>2`) even when slot 0 is empty.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import BinaryIO
from uuid import UUID

from vinitd.errors import LayoutError

SECTOR = 512
ENTRY_SIZE = 128
ENTRY_COUNT = 128
ENTRY_ARRAY_SECTORS = 32  # ENTRY_COUNT * ENTRY_SIZE // SECTOR
FIRST_USABLE_LBA = 34  # MBR, primary header, primary entry array
BACKUP_SECTORS = ENTRY_ARRAY_SECTORS + 1  # backup entry array and backup header, at the end

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
MBR_BOOT_CODE_SIZE = 446
PROTECTIVE_MBR_TYPE = 0xEE
# A header may claim any number of entries; more than this is garbage, not a disk.
MAX_ENTRY_ARRAY_BYTES = 1 << 20

_HEADER = struct.Struct("<8sIIII QQQQ 16s QIII")
_ENTRY = struct.Struct("<16s16s QQQ 72s")
_MBR_PARTITION = struct.Struct("<B3sB3sII")
_NAME_BYTES = 72
_EMPTY_ENTRY = bytes(ENTRY_SIZE)


@dataclass(frozen=True)
class GptHeader:
    """One copy of the GPT header: the primary at LBA 1 or the backup at the last LBA."""

    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: UUID
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int

    def pack(self) -> bytes:
        """Return the whole 512-byte sector, header CRC included."""
        try:
            body = _HEADER.pack(
                SIGNATURE,
                REVISION,
                HEADER_SIZE,
                0,  # CRC, computed over the header with this field zero
                0,  # reserved
                self.my_lba,
                self.alternate_lba,
                self.first_usable_lba,
                self.last_usable_lba,
                self.disk_guid.bytes_le,
                self.entries_lba,
                self.entry_count,
                self.entry_size,
                self.entries_crc,
            )
        except struct.error as err:
            raise LayoutError(f"GPT header field out of range: {err}") from err
        crc = zlib.crc32(body).to_bytes(4, "little")
        return body[:16] + crc + body[20:] + bytes(SECTOR - HEADER_SIZE)

    @classmethod
    def unpack(cls, data: bytes, *, source: str | None = None) -> GptHeader:
        """Decode a header sector, checking signature, revision, header size and CRC."""
        if len(data) < HEADER_SIZE:
            raise LayoutError(
                f"GPT header is {len(data)} bytes, needs at least {HEADER_SIZE}", source=source
            )
        (
            signature,
            revision,
            header_size,
            stored_crc,
            _reserved,
            my_lba,
            alternate_lba,
            first_usable_lba,
            last_usable_lba,
            disk_guid,
            entries_lba,
            entry_count,
            entry_size,
            entries_crc,
        ) = _HEADER.unpack_from(data)
        if signature != SIGNATURE:
            raise LayoutError(
                f"no GPT (signature {signature!r}, expected {SIGNATURE!r})", source=source
            )
        if revision != REVISION:
            raise LayoutError(f"unsupported GPT revision {revision:#010x}", source=source)
        if not HEADER_SIZE <= header_size <= SECTOR:
            raise LayoutError(
                f"GPT header size {header_size} is outside {HEADER_SIZE}..{SECTOR}", source=source
            )
        if header_size > len(data):
            raise LayoutError(
                f"GPT header size {header_size} but only {len(data)} bytes given", source=source
            )

        computed_crc = zlib.crc32(data[:16] + bytes(4) + data[20:header_size])
        if computed_crc != stored_crc:
            raise LayoutError(
                f"GPT header CRC mismatch (stored {stored_crc:#010x}, "
                f"computed {computed_crc:#010x})",
                source=source,
            )
        return cls(
            my_lba=my_lba,
            alternate_lba=alternate_lba,
            first_usable_lba=first_usable_lba,
            last_usable_lba=last_usable_lba,
            disk_guid=UUID(bytes_le=disk_guid),
            entries_lba=entries_lba,
            entry_count=entry_count,
            entry_size=entry_size,
            entries_crc=entries_crc,
        )


@dataclass(frozen=True)
class GptEntry:
    """One partition entry. `index` is its slot in the array: partition number minus one.

    `last_lba` is inclusive. `name` holds at most 36 UTF-16 code units.
    """

    type_guid: UUID
    unique_guid: UUID
    first_lba: int
    last_lba: int
    attributes: int
    name: str
    index: int = field(kw_only=True)

    def pack(self) -> bytes:
        """Return the 128-byte entry."""
        try:
            name = self.name.encode("utf-16-le")
        except UnicodeEncodeError as err:
            raise LayoutError(f"GPT entry {self.index}: name {self.name!r}: {err}") from err
        if len(name) > _NAME_BYTES:
            raise LayoutError(
                f"GPT entry {self.index}: name {self.name!r} is longer than 36 UTF-16 units"
            )
        try:
            return _ENTRY.pack(
                self.type_guid.bytes_le,
                self.unique_guid.bytes_le,
                self.first_lba,
                self.last_lba,
                self.attributes,
                name,
            )
        except struct.error as err:
            raise LayoutError(f"GPT entry {self.index}: field out of range: {err}") from err

    @classmethod
    def unpack(cls, data: bytes, *, index: int, source: str | None = None) -> GptEntry:
        """Decode one 128-byte entry found in slot `index`; the name ends at its first NUL."""
        if len(data) < ENTRY_SIZE:
            raise LayoutError(
                f"GPT entry {index} is {len(data)} bytes, expected {ENTRY_SIZE}", source=source
            )
        type_guid, unique_guid, first_lba, last_lba, attributes, name = _ENTRY.unpack_from(data)
        text = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        return cls(
            type_guid=UUID(bytes_le=type_guid),
            unique_guid=UUID(bytes_le=unique_guid),
            first_lba=first_lba,
            last_lba=last_lba,
            attributes=attributes,
            name=text,
            index=index,
        )


def pack_entries(entries: Iterable[GptEntry]) -> bytes:
    """Return the 16384-byte entry array with each entry in its slot `entry.index`."""
    array = bytearray(ENTRY_COUNT * ENTRY_SIZE)
    taken: set[int] = set()
    for entry in entries:
        if not 0 <= entry.index < ENTRY_COUNT:
            raise LayoutError(f"GPT entry index {entry.index} is outside 0..{ENTRY_COUNT - 1}")
        if entry.index in taken:
            raise LayoutError(f"two GPT entries for slot {entry.index}")
        taken.add(entry.index)

        start = entry.index * ENTRY_SIZE
        array[start : start + ENTRY_SIZE] = entry.pack()
    return bytes(array)


def unpack_entries(data: bytes, *, source: str | None = None) -> list[GptEntry]:
    """Decode an entry array and return its used entries in slot order, with their index."""
    if len(data) % ENTRY_SIZE:
        raise LayoutError(
            f"GPT entry array is {len(data)} bytes, not a multiple of {ENTRY_SIZE}", source=source
        )
    entries = []
    for index in range(len(data) // ENTRY_SIZE):
        chunk = data[index * ENTRY_SIZE : (index + 1) * ENTRY_SIZE]
        if chunk != _EMPTY_ENTRY:
            entries.append(GptEntry.unpack(chunk, index=index, source=source))
    return entries


def protective_mbr(total_sectors: int, boot_code: bytes = b"") -> bytes:
    """Return sector 0: boot code, one partition of type 0xEE covering the disk, 0x55AA.

    The sector count saturates at 0xFFFFFFFF for disks of 2 TiB and more, as the UEFI spec asks.
    """
    if len(boot_code) > MBR_BOOT_CODE_SIZE:
        raise LayoutError(
            f"MBR boot code is {len(boot_code)} bytes, at most {MBR_BOOT_CODE_SIZE} fit"
        )
    if total_sectors < 2:
        raise LayoutError(f"a disk of {total_sectors} sectors cannot hold a GPT")

    partition = _MBR_PARTITION.pack(
        0x00,  # status: not bootable
        b"\x00\x02\x00",  # CHS of LBA 1
        PROTECTIVE_MBR_TYPE,
        b"\xff\xff\xff",  # CHS end: past what CHS can address, as the UEFI spec asks
        1,
        min(total_sectors - 1, 0xFFFFFFFF),
    )
    return boot_code.ljust(MBR_BOOT_CODE_SIZE, b"\0") + partition + bytes(48) + b"\x55\xaa"


def build_gpt(
    total_sectors: int,
    entries: Sequence[GptEntry],
    disk_guid: UUID,
    *,
    boot_code: bytes = b"",
) -> tuple[bytes, bytes]:
    """Return the bytes of LBA 0..33 and of the last 33 sectors of a disk.

    The head is the protective MBR, the primary header and the entry array; the tail is the
    backup entry array and the backup header, to be written at LBA `total_sectors - 33`.
    Entries must lie inside the usable area (LBA 34 .. total_sectors - 34) and not overlap.

    >>> head, tail = build_gpt(8192, [], UUID(int=1))
    >>> len(head) // SECTOR, len(tail) // SECTOR
    (34, 33)
    """
    last_usable_lba = total_sectors - BACKUP_SECTORS - 1
    if last_usable_lba < FIRST_USABLE_LBA:
        raise LayoutError(
            f"a disk of {total_sectors} sectors is too small for a GPT "
            f"(needs at least {FIRST_USABLE_LBA + BACKUP_SECTORS + 1})"
        )
    _check_ranges(entries, last_usable_lba)

    array = pack_entries(entries)
    primary = GptHeader(
        my_lba=1,
        alternate_lba=total_sectors - 1,
        first_usable_lba=FIRST_USABLE_LBA,
        last_usable_lba=last_usable_lba,
        disk_guid=disk_guid,
        entries_lba=2,
        entry_count=ENTRY_COUNT,
        entry_size=ENTRY_SIZE,
        entries_crc=zlib.crc32(array),
    )
    backup = replace(
        primary,
        my_lba=total_sectors - 1,
        alternate_lba=1,
        entries_lba=total_sectors - BACKUP_SECTORS,
    )
    head = protective_mbr(total_sectors, boot_code) + primary.pack() + array
    tail = array + backup.pack()
    return head, tail


def _check_ranges(entries: Sequence[GptEntry], last_usable_lba: int) -> None:
    previous: GptEntry | None = None
    for entry in sorted(entries, key=lambda entry: entry.first_lba):
        if not FIRST_USABLE_LBA <= entry.first_lba <= entry.last_lba <= last_usable_lba:
            raise LayoutError(
                f"GPT entry {entry.index} ({entry.name!r}): LBA {entry.first_lba}..{entry.last_lba}"
                f" is not inside the usable area {FIRST_USABLE_LBA}..{last_usable_lba}"
            )
        if previous is not None and entry.first_lba <= previous.last_lba:
            raise LayoutError(
                f"GPT entries {previous.index} and {entry.index} overlap at LBA {entry.first_lba}"
            )
        previous = entry


def read_at(
    fileobj: BinaryIO, offset: int, size: int, *, what: str, source: str | None = None
) -> bytes:
    """Read exactly `size` bytes at `offset`; a disk too small for them is a LayoutError.

    `what` names the structure in the message ("the GPT header").
    """
    end = fileobj.seek(0, io.SEEK_END)
    if offset < 0 or size < 0 or offset + size > end:
        raise LayoutError(
            f"disk too small for {what}: it needs bytes {offset}..{offset + size}, "
            f"the disk has {end}",
            source=source,
        )
    fileobj.seek(offset)
    chunks = []
    remaining = size
    while remaining:
        chunk = fileobj.read(remaining)
        if not chunk:
            raise LayoutError(
                f"short read of {what}: {size - remaining} of {size} bytes at byte {offset}",
                source=source,
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_gpt(fileobj: BinaryIO, *, source: str | None = None) -> tuple[GptHeader, list[GptEntry]]:
    """Read the primary GPT of a disk: the header at byte 512 and its entry array.

    Returns the header and the used entries in slot order; each keeps its slot in `index`.
    The entry array's CRC is checked. The backup copy and the MBR are not read.
    """
    sector = read_at(fileobj, SECTOR, SECTOR, what="a GPT header", source=source)
    header = GptHeader.unpack(sector, source=source)
    if header.my_lba != 1:
        raise LayoutError(f"primary GPT header says it is at LBA {header.my_lba}", source=source)
    if header.entry_size != ENTRY_SIZE:
        raise LayoutError(
            f"GPT entry size {header.entry_size} is not supported (only {ENTRY_SIZE})",
            source=source,
        )
    array_size = header.entry_count * ENTRY_SIZE
    if array_size > MAX_ENTRY_ARRAY_BYTES:
        raise LayoutError(f"GPT claims {header.entry_count} entries", source=source)

    array = read_at(
        fileobj,
        header.entries_lba * SECTOR,
        array_size,
        what="the GPT entry array",
        source=source,
    )
    computed_crc = zlib.crc32(array)
    if computed_crc != header.entries_crc:
        raise LayoutError(
            f"GPT entry array CRC mismatch (stored {header.entries_crc:#010x}, "
            f"computed {computed_crc:#010x})",
            source=source,
        )
    return header, unpack_entries(array, source=source)
