"""Finding the boot disk by the root PARTUUID in a fake sysfs and /dev, and reading its VCFG."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from vinitd.bootdisk import BootDisk, find_boot_disk, partition_name, read_vcfg_from_disk
from vinitd.errors import BootDiskNotFound, LayoutError
from vinitd.gpt import SECTOR, GptEntry, build_gpt
from vinitd.layout import (
    BUNDLE_LBA,
    CONFIG_BLOCK_OFFSET,
    CONFIG_BLOCK_SECTORS,
    CONFIG_VERSION,
    OS_RESERVED_SECTORS,
    ROOT_PARTUUID,
    ROOT_TYPE_GUID,
    ConfigBlock,
)

TOTAL_SECTORS = 4096  # 2 MiB
VCFG = json.dumps({"programs": [{"binary": "/app"}]}).encode()
OTHER_GUID = UUID("9c3e1f7a-5b2d-4e8f-a1c6-d7e8f9a0b1c2")


def write_disk(path: Path, *, partuuid: UUID = ROOT_PARTUUID, root_index: int = 1) -> None:
    """Write a sparse vorteil-layout disk whose root entry has `partuuid` in `root_index`."""
    config_first = BUNDLE_LBA + 1
    os_last = config_first + 1 + OS_RESERVED_SECTORS - 1
    block = ConfigBlock(
        CONFIG_VERSION,
        "console=ttyS0",
        (CONFIG_BLOCK_SECTORS + 1) * SECTOR,
        len(VCFG),
        (1 + OS_RESERVED_SECTORS) * SECTOR,
    )
    entries = [
        GptEntry(UUID(int=0), UUID(int=5), 34, os_last, 0, "vorteil-os", index=0),
        GptEntry(
            ROOT_TYPE_GUID,
            partuuid,
            os_last + 1,
            TOTAL_SECTORS - 34,
            0,
            "vorteil-root",
            index=root_index,
        ),
    ]
    head, tail = build_gpt(TOTAL_SECTORS, entries, UUID(int=9))
    with path.open("wb") as image:
        image.truncate(TOTAL_SECTORS * SECTOR)
        image.write(head)
        image.seek(CONFIG_BLOCK_OFFSET)
        image.write(block.pack())
        image.seek(config_first * SECTOR)
        image.write(VCFG)
        image.seek(TOTAL_SECTORS * SECTOR - len(tail))
        image.write(tail)


class FakeSystem:
    """A sysfs block class directory and a /dev directory under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.sys_block = root / "sys" / "class" / "block"
        self.dev = root / "dev"
        self.sys_block.mkdir(parents=True)
        self.dev.mkdir()

    def disk(self, name: str, *partitions: str) -> Path:
        """Add a whole disk and its partitions the way sysfs lists them; return its node."""
        (self.sys_block / name).mkdir()
        for partition in partitions:
            (self.sys_block / name / partition).mkdir()
            (self.sys_block / name / partition / "partition").write_text("1\n")
            (self.sys_block / partition).mkdir()
            (self.sys_block / partition / "partition").write_text("1\n")
        return self.dev / name

    def find(self) -> BootDisk:
        return find_boot_disk(sys_block=self.sys_block, dev=self.dev)


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


@pytest.mark.parametrize(
    ("disk", "number", "expected"),
    [
        ("vda", 2, "vda2"),
        ("sda", 2, "sda2"),
        ("xvdb", 1, "xvdb1"),
        ("nvme0n1", 2, "nvme0n1p2"),
        ("mmcblk0", 2, "mmcblk0p2"),
    ],
)
def test_partition_name(disk: str, number: int, expected: str) -> None:
    """Disks whose names end in a digit put a "p" before the partition number."""
    assert partition_name(disk, number) == expected


def test_finds_disk_among_others(system: FakeSystem) -> None:
    """Skipped devices, partitions, a disk without GPT and one without the root are passed over."""
    write_disk(system.disk("loop0"))
    write_disk(system.disk("sr0"))
    system.disk("nvme0n1", "nvme0n1p1").write_bytes(bytes(TOTAL_SECTORS * SECTOR))
    write_disk(system.disk("nvme1n1", "nvme1n1p1", "nvme1n1p2"), partuuid=OTHER_GUID)
    write_disk(system.dev / "nvme1n1p1")  # a partition holding a disk image: not a disk
    write_disk(system.disk("nvme2n1", "nvme2n1p1", "nvme2n1p2"))

    found = system.find()

    assert found == BootDisk(
        disk=system.dev / "nvme2n1",
        root_partition=system.dev / "nvme2n1p2",
        root_index=1,
    )
    assert read_vcfg_from_disk(found.disk) == VCFG


def test_virtio_naming(system: FakeSystem) -> None:
    """On a virtio disk the root partition is vda2."""
    write_disk(system.disk("vda", "vda1", "vda2"))
    assert system.find() == BootDisk(system.dev / "vda", system.dev / "vda2", 1)


def test_root_in_another_slot(system: FakeSystem) -> None:
    """The partition number follows the root entry's slot in the array."""
    write_disk(system.disk("sda"), root_index=3)
    assert system.find() == BootDisk(system.dev / "sda", system.dev / "sda4", 3)


def test_first_match_wins(system: FakeSystem) -> None:
    """With two disks carrying the root PARTUUID, the first by name is chosen."""
    write_disk(system.disk("vdb"))
    write_disk(system.disk("vda"))
    assert system.find().disk == system.dev / "vda"


def test_not_found_lists_disks(system: FakeSystem) -> None:
    """Without a root PARTUUID anywhere, the error names every disk examined and why."""
    write_disk(system.disk("loop0"))
    system.disk("nvme0n1").write_bytes(bytes(TOTAL_SECTORS * SECTOR))
    write_disk(system.disk("nvme1n1"), partuuid=OTHER_GUID)
    system.disk("sdb")  # no device node
    system.disk("sdc").mkdir()  # a node that cannot be read as a file
    system.disk("sdd").write_bytes(b"")

    with pytest.raises(BootDiskNotFound) as caught:
        system.find()

    message = str(caught.value)
    assert caught.value.source == str(system.sys_block)
    assert "PARTUUID 4048447D-C09D-D111-B245-5FFDCE74FAD2" in message
    assert "nvme0n1 (no GPT" in message
    assert "nvme1n1 (no root partition)" in message
    assert "sdb (No such file or directory)" in message
    assert "sdc (Is a directory)" in message
    assert "sdd (disk too small for a GPT header" in message
    assert "loop0" not in message


def test_no_disks(system: FakeSystem) -> None:
    """An empty block class is reported as such."""
    with pytest.raises(BootDiskNotFound, match=r"examined: none"):
        system.find()


def test_no_sysfs(tmp_path: Path) -> None:
    """A missing sysfs directory is BootDiskNotFound, not a bare OSError."""
    with pytest.raises(BootDiskNotFound, match="cannot list block devices"):
        find_boot_disk(sys_block=tmp_path / "missing", dev=tmp_path)


def test_read_vcfg_from_disk_errors(tmp_path: Path) -> None:
    """A missing disk is an OSError; a disk without config block is a LayoutError naming it."""
    with pytest.raises(FileNotFoundError):
        read_vcfg_from_disk(tmp_path / "missing")

    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(TOTAL_SECTORS * SECTOR))
    with pytest.raises(LayoutError, match="no vorteil config block") as caught:
        read_vcfg_from_disk(blank)
    assert caught.value.source == str(blank)
