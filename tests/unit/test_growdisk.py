"""Disk growth: the GPT rewrite on image files (checked by sgdisk), the ext block count
(checked against resize2fs) and grow_disk's order of steps and error messages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from uuid import UUID

import pytest

from vinitd import growdisk
from vinitd.errors import LayoutError
from vinitd.gpt import (
    FIRST_USABLE_LBA,
    SECTOR,
    GptEntry,
    GptHeader,
    build_gpt,
    protective_mbr,
    read_gpt,
    unpack_entries,
)
from vinitd.growdisk import (
    HEAD_SECTORS,
    DiskGrowthError,
    ExtSuperblock,
    GptGrowth,
    ext_target_blocks,
    grow_disk,
    grow_gpt,
    parse_ext_superblock,
    partition_bytes,
    write_growth,
)
from vinitd.layout import ROOT_PARTUUID, ROOT_TYPE_GUID

OLD_SECTORS = 32768  # 16 MiB
NEW_SECTORS = 81920  # 40 MiB
OS_LAST_LBA = 2047  # the root starts at 1 MiB, 4 KiB aligned
DISK_GUID = UUID("0b5e7c1a-8d2f-4e3b-9a61-2c4d5e6f7a8b")
OS_GUID = UUID("6a1f0c2e-3b4d-4c5e-8f60-718293a4b5c6")
BOOT_CODE = bytes(range(256)) + bytes(190)


def vorteil_entries(total_sectors: int) -> list[GptEntry]:
    return [
        GptEntry(UUID(int=0), OS_GUID, FIRST_USABLE_LBA, OS_LAST_LBA, 0, "vorteil-os", index=0),
        GptEntry(
            ROOT_TYPE_GUID,
            ROOT_PARTUUID,
            OS_LAST_LBA + 1,
            total_sectors - 34,
            0,
            "vorteil-root",
            index=1,
        ),
    ]


def write_image(path: Path, total_sectors: int = OLD_SECTORS) -> Path:
    head, tail = build_gpt(
        total_sectors, vorteil_entries(total_sectors), DISK_GUID, boot_code=BOOT_CODE
    )
    with path.open("wb") as image:
        image.truncate(total_sectors * SECTOR)
        image.write(head)
        image.seek(total_sectors * SECTOR - len(tail))
        image.write(tail)
    return path


def enlarge(path: Path, total_sectors: int) -> None:
    with path.open("r+b") as image:
        image.truncate(total_sectors * SECTOR)


def read_head(path: Path) -> bytes:
    with path.open("rb") as image:
        return image.read(HEAD_SECTORS * SECTOR)


def grow_file(path: Path, total_sectors: int) -> GptGrowth:
    """Enlarge the image, compute the new GPT from its head and write it."""
    enlarge(path, total_sectors)
    growth = grow_gpt(read_head(path), total_sectors)
    assert growth is not None
    with path.open("r+b") as image:
        write_growth(image.fileno(), growth)
    return growth


def require_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (install gdisk and e2fsprogs)")
        pytest.skip(f"{name} is not installed")
    return found


def sgdisk(*args: str) -> str:
    result = subprocess.run(
        [require_tool("sgdisk"), *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def sector(path: Path, lba: int, count: int = 1) -> bytes:
    with path.open("rb") as image:
        image.seek(lba * SECTOR)
        return image.read(count * SECTOR)


def test_grown_image_verifies_clean(tmp_path: Path) -> None:
    """After growth sgdisk finds no problems and sees the root end at the new last sector."""
    path = write_image(tmp_path / "disk.img")
    grow_file(path, NEW_SECTORS)

    assert "No problems found" in sgdisk("-v", str(path))
    info = sgdisk("-i", "2", str(path))
    assert f"First sector: {OS_LAST_LBA + 1} " in info
    assert f"Last sector: {NEW_SECTORS - 34} " in info
    assert f"Partition unique GUID: {str(ROOT_PARTUUID).upper()}" in info
    assert "Partition name: 'vorteil-root'" in info


def test_grown_headers_and_arrays(tmp_path: Path) -> None:
    """Both headers describe the new disk, point at each other and carry the same array."""
    path = write_image(tmp_path / "disk.img")
    grow_file(path, NEW_SECTORS)

    with path.open("rb") as image:
        primary, entries = read_gpt(image)
    backup = GptHeader.unpack(sector(path, NEW_SECTORS - 1))
    backup_array = sector(path, NEW_SECTORS - 33, 32)

    assert (primary.my_lba, primary.alternate_lba) == (1, NEW_SECTORS - 1)
    assert primary.last_usable_lba == NEW_SECTORS - 34
    assert (backup.my_lba, backup.alternate_lba) == (NEW_SECTORS - 1, 1)
    assert backup.entries_lba == NEW_SECTORS - 33
    assert backup.last_usable_lba == primary.last_usable_lba
    assert backup.disk_guid == primary.disk_guid == DISK_GUID
    assert zlib.crc32(backup_array) == backup.entries_crc == primary.entries_crc
    assert unpack_entries(backup_array) == entries
    assert [(e.first_lba, e.last_lba) for e in entries] == [
        (FIRST_USABLE_LBA, OS_LAST_LBA),
        (OS_LAST_LBA + 1, NEW_SECTORS - 34),
    ]


def test_protective_mbr_covers_new_disk(tmp_path: Path) -> None:
    """The MBR's sector count becomes the new size - 1; its boot code is untouched."""
    path = write_image(tmp_path / "disk.img")
    grow_file(path, NEW_SECTORS)

    mbr = sector(path, 0)
    assert mbr == protective_mbr(NEW_SECTORS, BOOT_CODE)
    assert int.from_bytes(mbr[458:462], "little") == NEW_SECTORS - 1


def test_old_backup_is_wiped(tmp_path: Path) -> None:
    """The old backup header and array, now inside the root partition, are zeroed."""
    path = write_image(tmp_path / "disk.img")
    assert sector(path, OLD_SECTORS - 1)[:8] == b"EFI PART"

    growth = grow_file(path, NEW_SECTORS)

    assert (growth.wipe_lba, growth.wipe_sectors) == (OLD_SECTORS - 33, 33)
    assert sector(path, OLD_SECTORS - 33, 33) == bytes(33 * SECTOR)


def test_small_growth_overlapping_old_backup(tmp_path: Path) -> None:
    """Growing by fewer sectors than the backup spans wipes only what the new one misses."""
    path = write_image(tmp_path / "disk.img")
    growth = grow_file(path, OLD_SECTORS + 10)

    assert (growth.wipe_lba, growth.wipe_sectors) == (OLD_SECTORS - 33, 10)
    assert growth.tail_lba == OLD_SECTORS + 10 - 33
    assert "No problems found" in sgdisk("-v", str(path))
    assert f"Last sector: {OLD_SECTORS + 10 - 34} " in sgdisk("-i", "2", str(path))


@pytest.mark.parametrize(
    ("extra", "grows"),
    [(0, False), (1, False), (2, True), (35, True)],
    ids=["same-size", "one-sector", "two-sectors", "thirty-five"],
)
def test_growth_condition(tmp_path: Path, extra: int, grows: bool) -> None:
    """A table is rewritten only when last usable LBA + 35 is below the sector count."""
    head = read_head(write_image(tmp_path / "disk.img"))
    assert (grow_gpt(head, OLD_SECTORS + extra) is not None) is grows


def test_smaller_disk_is_left_alone(tmp_path: Path) -> None:
    """A disk smaller than the image gets no rewrite (there is nothing to grow into)."""
    head = read_head(write_image(tmp_path / "disk.img"))
    assert grow_gpt(head, OLD_SECTORS - 100) is None


def test_huge_disk_saturates_mbr(tmp_path: Path) -> None:
    """On a disk of 2 TiB or more the MBR's sector count is 0xFFFFFFFF."""
    head = read_head(write_image(tmp_path / "disk.img"))
    growth = grow_gpt(head, 1 << 33)
    assert growth is not None
    assert growth.head[458:462] == b"\xff\xff\xff\xff"
    assert growth.partition.last_lba == (1 << 33) - 34


def test_non_protective_mbr_is_kept(tmp_path: Path) -> None:
    """An MBR without a protective 0xEE record is not touched."""
    head = bytearray(read_head(write_image(tmp_path / "disk.img")))
    head[450] = 0x83
    growth = grow_gpt(bytes(head), NEW_SECTORS)
    assert growth is not None
    assert growth.head[:SECTOR] == head[:SECTOR]


def test_root_must_be_last(tmp_path: Path) -> None:
    """A partition after the root stops the growth with a clear error."""
    entries = [
        GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 34, 9999, 0, "vorteil-root", index=1),
        GptEntry(UUID(int=0), OS_GUID, 10000, OLD_SECTORS - 34, 0, "vorteil-os", index=0),
    ]
    head, _ = build_gpt(OLD_SECTORS, entries, DISK_GUID)
    with pytest.raises(LayoutError, match="partition 2 is not the last partition"):
        grow_gpt(head, NEW_SECTORS)


def test_missing_root(tmp_path: Path) -> None:
    """A table without partition 2 is an error naming the partition."""
    head, _ = build_gpt(OLD_SECTORS, vorteil_entries(OLD_SECTORS)[:1], DISK_GUID)
    with pytest.raises(LayoutError, match="the GPT has no partition 2"):
        grow_gpt(head, NEW_SECTORS)


def test_corrupt_array(tmp_path: Path) -> None:
    """An entry array that does not match its CRC is refused."""
    head = bytearray(read_head(write_image(tmp_path / "disk.img")))
    head[2 * SECTOR + 200] ^= 0xFF
    with pytest.raises(LayoutError, match="CRC mismatch"):
        grow_gpt(bytes(head), NEW_SECTORS)


def test_partition_bytes_are_inclusive() -> None:
    """The partition length counts its last sector (vorteil's was one sector short)."""
    entry = vorteil_entries(OLD_SECTORS)[1]
    assert partition_bytes(entry) == (OLD_SECTORS - 34 - OS_LAST_LBA) * SECTOR


def superblock_bytes(*, blocks: int, log_block_size: int, incompat: int = 0) -> bytes:
    data = bytearray(1024)
    data[0x04:0x08] = (blocks & 0xFFFFFFFF).to_bytes(4, "little")
    data[0x18:0x1C] = log_block_size.to_bytes(4, "little")
    data[0x38:0x3A] = (0xEF53).to_bytes(2, "little")
    data[0x60:0x64] = incompat.to_bytes(4, "little")
    data[0x150:0x154] = (blocks >> 32).to_bytes(4, "little")
    return bytes(data)


def test_parse_superblock() -> None:
    """Block size and count come from the superblock; the high half only with 64bit."""
    assert parse_ext_superblock(superblock_bytes(blocks=4096, log_block_size=2)) == (
        ExtSuperblock(block_size=4096, blocks=4096, has_64bit=False)
    )
    big = superblock_bytes(blocks=(3 << 32) + 7, log_block_size=2, incompat=0x80)
    assert parse_ext_superblock(big) == ExtSuperblock(4096, (3 << 32) + 7, has_64bit=True)
    no_64bit = superblock_bytes(blocks=(3 << 32) + 7, log_block_size=0)
    assert parse_ext_superblock(no_64bit) == ExtSuperblock(1024, 7, has_64bit=False)


def test_parse_superblock_rejects() -> None:
    """No magic, a silly block size or a short buffer is not an ext superblock."""
    assert parse_ext_superblock(bytes(1024)) is None
    assert parse_ext_superblock(superblock_bytes(blocks=1, log_block_size=7)) is None
    assert parse_ext_superblock(superblock_bytes(blocks=1, log_block_size=2)[:512]) is None


def test_ext_target_blocks() -> None:
    """The target fills the partition, only if that is more than now, capped without 64bit."""
    small = ExtSuperblock(block_size=4096, blocks=1000, has_64bit=False)
    assert ext_target_blocks(small, 4096 * 1000) is None
    assert ext_target_blocks(small, 4096 * 1000 + 4095) is None
    assert ext_target_blocks(small, 4096 * 2000 + 100) == 2000
    assert ext_target_blocks(small, 4096 << 33) == (1 << 32) - 1


def make_ext(path: Path, fstype: str, entry: GptEntry) -> None:
    """mke2fs a filesystem exactly filling ``entry`` inside the image."""
    size_k = partition_bytes(entry) // 1024
    subprocess.run(
        [
            require_tool("mke2fs"),
            "-q",
            "-F",
            "-t",
            fstype,
            "-b",
            "4096",
            "-E",
            f"offset={entry.first_lba * SECTOR}",
            str(path),
            f"{size_k}k",
        ],
        check=True,
        capture_output=True,
    )


def dumpe2fs_block_count(path: Path) -> int:
    result = subprocess.run(
        [require_tool("dumpe2fs"), "-h", str(path)], capture_output=True, text=True, check=True
    )
    found = re.search(r"^Block count:\s+(\d+)$", result.stdout, re.MULTILINE)
    assert found is not None, result.stdout
    return int(found.group(1))


@pytest.mark.parametrize("fstype", ["ext2", "ext4"])
def test_ext_target_matches_resize2fs(tmp_path: Path, fstype: str) -> None:
    """The block count computed for the grown partition is the one resize2fs picks."""
    e2fsck, resize2fs = require_tool("e2fsck"), require_tool("resize2fs")
    path = write_image(tmp_path / "disk.img")
    make_ext(path, fstype, vorteil_entries(OLD_SECTORS)[1])

    growth = grow_file(path, NEW_SECTORS)
    root = growth.partition
    superblock = parse_ext_superblock(
        sector(path, root.first_lba + 2, 2)  # byte 1024 of the partition
    )
    assert superblock is not None
    assert superblock.blocks == (OLD_SECTORS - 34 - OS_LAST_LBA) * SECTOR // 4096
    target = ext_target_blocks(superblock, partition_bytes(root))
    assert target is not None

    copy = tmp_path / "root.img"
    with path.open("rb") as image, copy.open("wb") as out:
        image.seek(root.first_lba * SECTOR)
        out.write(image.read(partition_bytes(root)))
    subprocess.run([e2fsck, "-f", "-y", str(copy)], check=True, capture_output=True)
    subprocess.run([resize2fs, str(copy)], check=True, capture_output=True)
    assert dumpe2fs_block_count(copy) == target
    subprocess.run([e2fsck, "-f", "-n", str(copy)], check=True, capture_output=True)


def test_grow_disk_on_image_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """grow_disk rewrites the table and asks for the ext resize of the mount point."""
    path = write_image(tmp_path / "disk.img")
    make_ext(path, "ext4", vorteil_entries(OLD_SECTORS)[1])
    enlarge(path, NEW_SECTORS)
    calls: list[tuple[Path, int]] = []
    monkeypatch.setattr(growdisk, "resize_ext", lambda mount, blocks: calls.append((mount, blocks)))

    result = grow_disk(path, mount_point=tmp_path)

    partition_blocks = (NEW_SECTORS - 34 - OS_LAST_LBA) * SECTOR // 4096
    old_blocks = (OLD_SECTORS - 34 - OS_LAST_LBA) * SECTOR // 4096
    assert result.table is not None
    assert result.partition.last_lba == NEW_SECTORS - 34
    assert result.blocks == (old_blocks, partition_blocks)
    assert calls == [(tmp_path, partition_blocks)]
    assert "No problems found" in sgdisk("-v", str(path))


def test_grow_disk_without_filesystem(tmp_path: Path) -> None:
    """A root partition without an ext superblock only gets its table grown."""
    path = write_image(tmp_path / "disk.img")
    enlarge(path, NEW_SECTORS)

    result = grow_disk(path, mount_point=tmp_path)

    assert result.table is not None
    assert result.blocks is None
    assert grow_disk(path, mount_point=tmp_path).table is None


def test_grow_disk_finishes_filesystem_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed ext resize is fatal; the next run, with the table already grown, retries it."""
    path = write_image(tmp_path / "disk.img")
    make_ext(path, "ext4", vorteil_entries(OLD_SECTORS)[1])
    enlarge(path, NEW_SECTORS)

    def refuse(mount: Path, blocks: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(growdisk, "resize_ext", refuse)
    with pytest.raises(DiskGrowthError) as failure:
        grow_disk(path, mount_point=tmp_path)
    old_blocks = (OLD_SECTORS - 34 - OS_LAST_LBA) * SECTOR // 4096
    new_blocks = (NEW_SECTORS - 34 - OS_LAST_LBA) * SECTOR // 4096
    assert str(failure.value) == (
        f"error resizing ext filesystem: {old_blocks} to {new_blocks} blocks of 4096 bytes: "
        "No space left on device"
    )

    calls: list[int] = []
    monkeypatch.setattr(growdisk, "resize_ext", lambda mount, blocks: calls.append(blocks))
    again = grow_disk(path, mount_point=tmp_path)
    assert again.table is None
    assert calls == [new_blocks]


def test_grow_disk_bad_table(tmp_path: Path) -> None:
    """A disk without a GPT fails with vorteil's gpt message naming the disk."""
    path = tmp_path / "blank.img"
    path.write_bytes(bytes(OLD_SECTORS * SECTOR))
    with pytest.raises(DiskGrowthError, match=r"^error resizing gpt: .*blank\.img: no GPT"):
        grow_disk(path, mount_point=tmp_path)


def test_grow_disk_missing_disk(tmp_path: Path) -> None:
    """A disk that cannot be opened fails with the gpt message and the reason."""
    with pytest.raises(DiskGrowthError, match=r"^error resizing gpt: .*: No such file"):
        grow_disk(tmp_path / "absent", mount_point=tmp_path)
