"""Growing the boot disk's GPT, root partition and ext filesystem to the disk (spec §6.1).

A VM's disk may be larger than the image written to it. When the primary header's last
usable LBA + 35 is below the disk's sector count, the GPT is rewritten for the new size: the
root partition (the last one) ends at the new last usable LBA, the backup array and header
move to the new end, the protective MBR covers the disk. Then the kernel learns the
partition's new size (BLKPG) and the mounted ext2/ext4 filesystem grows online to fill it
(EXT4_IOC_RESIZE_FS). Failure policy: fatal; the caller stops the boot with the message.

`grow_gpt` is the pure part (bytes in, bytes out); `grow_disk` does the I/O. Differences from
vorteil, on purpose:

- the partition length given to the kernel is ``(last - first + 1) * 512``; vorteil's was
  one sector short, and so was its filesystem size;
- the filesystem's block size and block count come from its superblock, and it is grown
  whenever it is smaller than its partition, so a boot that stopped between the table and
  the filesystem finishes the job next time;
- the new backup copy is written before the primary and the old backup is zeroed last (only
  the part the new backup does not cover), so a table is valid at every step;
- xfs is recognised but not grown (vinitd's images are ext2 or ext4).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from vinitd.errors import LayoutError, VinitdError
from vinitd.gpt import (
    BACKUP_SECTORS,
    ENTRY_SIZE,
    FIRST_USABLE_LBA,
    PROTECTIVE_MBR_TYPE,
    SECTOR,
    GptEntry,
    GptHeader,
    unpack_entries,
)

HEAD_SECTORS = FIRST_USABLE_LBA  # protective MBR, primary header, entry array
GROWTH_MARGIN = BACKUP_SECTORS + 2  # vorteil's "last usable LBA + 35 < sectors"

# Protective MBR: the first partition record's type byte and its u32 sector count.
_MBR_TYPE_OFFSET = 450
_MBR_SECTOR_COUNT_OFFSET = 458
_MBR_MAX_SECTORS = 0xFFFFFFFF
_ENTRY_LAST_LBA = struct.Struct("<Q")
_ENTRY_LAST_LBA_OFFSET = 40  # after the type GUID, unique GUID and first LBA

# ext2/3/4 superblock, 1024 bytes at byte 1024 of the filesystem.
EXT_SUPERBLOCK_OFFSET = 1024
EXT_SUPERBLOCK_SIZE = 1024
EXT_MAGIC = 0xEF53
_EXT_BLOCKS_LO = struct.Struct("<I")  # at 0x04
_EXT_LOG_BLOCK_SIZE = struct.Struct("<I")  # at 0x18
_EXT_MAGIC = struct.Struct("<H")  # at 0x38
_EXT_INCOMPAT = struct.Struct("<I")  # at 0x60
_EXT_BLOCKS_HI = struct.Struct("<I")  # at 0x150
_EXT_INCOMPAT_64BIT = 0x80
XFS_MAGIC = b"XFSB"

# ioctls: <linux/fs.h>, <linux/blkpg.h>, fs/ext4/ext4.h
BLKFLSBUF = 0x1261
BLKPG = 0x1269
BLKPG_RESIZE_PARTITION = 3
EXT4_IOC_RESIZE_FS = 0x40086610


class DiskGrowthError(VinitdError):
    """The disk could not be grown; the boot stops (vorteil: ``error resizing ...``)."""


@dataclass(frozen=True)
class GptGrowth:
    """A GPT rewritten for a bigger disk, as the writes that make it.

    ``head`` goes at LBA 0 (MBR, primary header, entry array) and ``tail`` at ``tail_lba``
    (backup array and header). ``wipe_sectors`` sectors from ``wipe_lba`` held the old backup
    and are zeroed. ``partition`` is the grown root entry.
    """

    total_sectors: int
    head: bytes
    tail: bytes
    tail_lba: int
    wipe_lba: int
    wipe_sectors: int
    partition: GptEntry

    def writes(self) -> list[tuple[int, bytes]]:
        """(byte offset, data) in the order that keeps one table valid after each write."""
        return [
            (self.tail_lba * SECTOR, self.tail),
            (0, self.head),
            (self.wipe_lba * SECTOR, bytes(self.wipe_sectors * SECTOR)),
        ]


@dataclass(frozen=True)
class ExtSuperblock:
    block_size: int
    blocks: int
    has_64bit: bool

    @property
    def max_blocks(self) -> int:
        return (1 << 64) - 1 if self.has_64bit else (1 << 32) - 1


@dataclass(frozen=True)
class DiskGrowth:
    """What `grow_disk` did: the new table (None if it already fit the disk) and the
    filesystem's block count before and after (None if it was not grown)."""

    table: GptGrowth | None
    partition: GptEntry
    blocks: tuple[int, int] | None


def needs_growth(header: GptHeader, total_sectors: int) -> bool:
    return header.last_usable_lba + GROWTH_MARGIN < total_sectors


def read_table(head: bytes, *, root_partition_number: int = 2) -> tuple[GptHeader, GptEntry]:
    """The primary header and the root entry of a disk whose first sectors are ``head``.

    The root must be the last partition on the disk; the entry array must follow the header.
    """
    header = GptHeader.unpack(head[SECTOR : 2 * SECTOR])
    if header.my_lba != 1 or header.entries_lba != 2 or header.entry_size != ENTRY_SIZE:
        raise LayoutError(
            f"unexpected GPT header (at LBA {header.my_lba}, entries at LBA "
            f"{header.entries_lba}, entry size {header.entry_size})"
        )
    array = head[2 * SECTOR : 2 * SECTOR + header.entry_count * ENTRY_SIZE]
    if len(array) != header.entry_count * ENTRY_SIZE:
        raise LayoutError(f"the GPT entry array does not fit in {len(head)} bytes")
    if zlib.crc32(array) != header.entries_crc:
        raise LayoutError("GPT entry array CRC mismatch")

    entries = unpack_entries(array)
    root = next((e for e in entries if e.index == root_partition_number - 1), None)
    if root is None:
        raise LayoutError(f"the GPT has no partition {root_partition_number}")
    if any(entry.last_lba > root.last_lba for entry in entries):
        raise LayoutError(f"partition {root_partition_number} is not the last partition")
    return header, root


def grow_gpt(
    head: bytes, total_sectors: int, *, root_partition_number: int = 2
) -> GptGrowth | None:
    """Rewrite a GPT for a disk of ``total_sectors``; None if the table already fits.

    ``head`` is the disk's first `HEAD_SECTORS` sectors. A LayoutError names what is wrong
    with the table.
    """
    header, root = read_table(head, root_partition_number=root_partition_number)
    if not needs_growth(header, total_sectors):
        return None

    array_bytes = header.entry_count * ENTRY_SIZE
    array_sectors = -(-array_bytes // SECTOR)
    last_usable = total_sectors - array_sectors - 2
    array = bytearray(head[2 * SECTOR : 2 * SECTOR + array_bytes])
    _ENTRY_LAST_LBA.pack_into(array, root.index * ENTRY_SIZE + _ENTRY_LAST_LBA_OFFSET, last_usable)
    array_crc = zlib.crc32(array)
    array_sectors_bytes = bytes(array).ljust(array_sectors * SECTOR, b"\0")

    primary = replace(
        header,
        alternate_lba=total_sectors - 1,
        last_usable_lba=last_usable,
        entries_crc=array_crc,
    )
    tail_lba = total_sectors - 1 - array_sectors
    backup = replace(primary, my_lba=total_sectors - 1, alternate_lba=1, entries_lba=tail_lba)

    # The old backup sits after the old usable area; never wipe below it or into the new tail.
    old_first = max(header.alternate_lba - array_sectors, header.last_usable_lba + 1)
    old_end = min(header.alternate_lba + 1, tail_lba)
    return GptGrowth(
        total_sectors=total_sectors,
        head=_grown_mbr(head[:SECTOR], total_sectors) + primary.pack() + array_sectors_bytes,
        tail=array_sectors_bytes + backup.pack(),
        tail_lba=tail_lba,
        wipe_lba=old_first,
        wipe_sectors=max(old_end - old_first, 0),
        partition=replace(root, last_lba=last_usable),
    )


def _grown_mbr(mbr: bytes, total_sectors: int) -> bytes:
    """The MBR with its protective partition covering the disk; any other MBR is kept."""
    if mbr[_MBR_TYPE_OFFSET] != PROTECTIVE_MBR_TYPE:
        return mbr
    sectors = min(total_sectors - 1, _MBR_MAX_SECTORS)
    return (
        mbr[:_MBR_SECTOR_COUNT_OFFSET]
        + sectors.to_bytes(4, "little")
        + mbr[_MBR_SECTOR_COUNT_OFFSET + 4 :]
    )


def parse_ext_superblock(data: bytes) -> ExtSuperblock | None:
    """The block size and count of an ext2/3/4 superblock; None if ``data`` is not one."""
    if len(data) < EXT_SUPERBLOCK_SIZE or _EXT_MAGIC.unpack_from(data, 0x38)[0] != EXT_MAGIC:
        return None
    log_block_size = _EXT_LOG_BLOCK_SIZE.unpack_from(data, 0x18)[0]
    if log_block_size > 6:
        return None  # beyond 64 KiB blocks: not a superblock any kernel mounts
    has_64bit = bool(_EXT_INCOMPAT.unpack_from(data, 0x60)[0] & _EXT_INCOMPAT_64BIT)
    blocks = _EXT_BLOCKS_LO.unpack_from(data, 0x04)[0]
    if has_64bit:
        blocks |= _EXT_BLOCKS_HI.unpack_from(data, 0x150)[0] << 32
    return ExtSuperblock(block_size=1024 << log_block_size, blocks=blocks, has_64bit=has_64bit)


def partition_bytes(entry: GptEntry) -> int:
    return (entry.last_lba - entry.first_lba + 1) * SECTOR


def ext_target_blocks(superblock: ExtSuperblock, size: int) -> int | None:
    """The block count that fills ``size`` bytes, if it is more than the filesystem has."""
    target = min(size // superblock.block_size, superblock.max_blocks)
    return target if target > superblock.blocks else None


def grow_disk(
    disk: Path, *, root_partition_number: int = 2, mount_point: Path = Path("/")
) -> DiskGrowth:
    """Grow the GPT, the root partition and its filesystem (mounted at ``mount_point``).

    Ends with the disk flushed, whatever happened. Raises DiskGrowthError with vorteil's
    ``error resizing gpt: ...`` or ``error resizing ext filesystem: ...``.
    """
    try:
        fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise DiskGrowthError(f"error resizing gpt: {disk}: {err.strerror}") from err
    try:
        is_block = stat.S_ISBLK(os.fstat(fd).st_mode)
        try:
            growth = _grow(fd, disk, is_block, root_partition_number, mount_point)
        except Exception:
            with contextlib.suppress(OSError):
                flush(fd, is_block=is_block)
            raise
        try:
            flush(fd, is_block=is_block)
        except OSError as err:
            raise DiskGrowthError(f"error flushing {disk}: {_reason(err)}") from err
        return growth
    finally:
        os.close(fd)


def _grow(
    fd: int, disk: Path, is_block: bool, root_partition_number: int, mount_point: Path
) -> DiskGrowth:
    try:
        total_sectors = os.lseek(fd, 0, os.SEEK_END) // SECTOR
        head = _pread(fd, HEAD_SECTORS * SECTOR, 0)
        table = grow_gpt(head, total_sectors, root_partition_number=root_partition_number)
        if table is not None:
            write_growth(fd, table)
            partition = table.partition
        else:
            partition = read_table(head, root_partition_number=root_partition_number)[1]
    except (LayoutError, OSError) as err:
        raise DiskGrowthError(f"error resizing gpt: {disk}: {_reason(err)}") from err

    try:
        offset = partition.first_lba * SECTOR + EXT_SUPERBLOCK_OFFSET
        superblock = parse_ext_superblock(_pread(fd, EXT_SUPERBLOCK_SIZE, offset))
    except (LayoutError, OSError) as err:
        raise DiskGrowthError(f"error resizing ext filesystem: {_reason(err)}") from err
    target = None
    if superblock is not None:
        target = ext_target_blocks(superblock, partition_bytes(partition))

    if is_block and (table is not None or target is not None):
        try:
            resize_partition(fd, root_partition_number, partition)
        except OSError as err:
            raise DiskGrowthError(
                f"error resizing gpt: telling the kernel partition {root_partition_number} "
                f"ends at LBA {partition.last_lba}: {_reason(err)}"
            ) from err

    if superblock is None or target is None:
        return DiskGrowth(table=table, partition=partition, blocks=None)
    try:
        resize_ext(mount_point, target)
    except OSError as err:
        raise DiskGrowthError(
            f"error resizing ext filesystem: {superblock.blocks} to {target} blocks "
            f"of {superblock.block_size} bytes: {_reason(err)}"
        ) from err
    return DiskGrowth(table=table, partition=partition, blocks=(superblock.blocks, target))


def write_growth(fd: int, growth: GptGrowth) -> None:
    """Write a grown GPT to the disk open as ``fd`` and wait for it to reach the disk."""
    for offset, data in growth.writes():
        if data:
            _pwrite(fd, data, offset)
            os.fsync(fd)


class _BlkpgPartition(ctypes.Structure):
    _fields_ = (
        ("start", ctypes.c_longlong),
        ("length", ctypes.c_longlong),
        ("pno", ctypes.c_int),
        ("devname", ctypes.c_char * 64),
        ("volname", ctypes.c_char * 64),
    )


class _BlkpgIoctlArg(ctypes.Structure):
    _fields_ = (
        ("op", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("datalen", ctypes.c_int),
        ("data", ctypes.c_void_p),
    )


def resize_partition(disk_fd: int, number: int, entry: GptEntry) -> None:
    """BLKPG_RESIZE_PARTITION: the kernel's partition ``number`` becomes ``entry``'s size."""
    partition = _BlkpgPartition(
        start=entry.first_lba * SECTOR, length=partition_bytes(entry), pno=number
    )
    arg = _BlkpgIoctlArg(
        op=BLKPG_RESIZE_PARTITION,
        flags=0,
        datalen=ctypes.sizeof(partition),
        data=ctypes.addressof(partition),
    )
    fcntl.ioctl(disk_fd, BLKPG, arg)


def resize_ext(mount_point: Path, blocks: int) -> None:
    """EXT4_IOC_RESIZE_FS: grow the mounted ext2/3/4 filesystem at ``mount_point`` online."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("=Q", blocks))
    finally:
        os.close(fd)


def flush(fd: int, *, is_block: bool) -> None:
    """Write back and drop the disk's cached blocks (BLKFLSBUF), then sync everything."""
    os.fsync(fd)
    if is_block:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    os.sync()


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise LayoutError(f"short read: {len(data)} of {size} bytes at byte {offset}")
    return data


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _reason(err: LayoutError | OSError) -> str:
    if isinstance(err, LayoutError):
        return err.problem
    return err.strerror or str(err)
