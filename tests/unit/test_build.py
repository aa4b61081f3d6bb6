"""imagekit build on examples/hello: the disk layout, the root filesystem, sizes and formats.

examples/hello is built once per test run with the default build cache; the tests that need
another image (a format, a disk size, reproducibility) build their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import parted
import pytest
from imagetools import (
    HELLO,
    IMAGE_TOOLS,
    BuiltImage,
    build,
    built_hello,
    debugfs,
    free_bytes,
    imagekit,
    list_directory,
    read_partitions,
    require_tools,
    root_partition,
    stat_inode,
    superblock,
    tool,
)

from imagekit.cache import BuildCache, key_of
from vinitd import bundle, layout
from vinitd.layout import OS_TYPE_GUID

SECTOR = 512
MIB = 1 << 20
CONFIG_BLOCK_OFFSET = 17408
BUNDLE_OFFSET = 66 * SECTOR
ROOT_PARTUUID = UUID("4048447D-C09D-D111-B245-5FFDCE74FAD2")
LINUX_ROOT_X86_64 = UUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
EPOCH = 1700000000


@pytest.fixture(scope="session")
def hello(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return built_hello(request.config, tmp_path_factory)


@pytest.fixture(scope="session")
def image(hello: BuiltImage) -> Path:
    return hello.path


@pytest.fixture
def tools() -> None:
    require_tools(IMAGE_TOOLS)


def _extra_vcfg(directory: Path, text: str) -> Path:
    path = directory / "extra.vcfg"
    path.write_text(text)
    return path


def test_partition_table_verifies(image: Path) -> None:
    """sgdisk finds nothing wrong with the GPT (headers, CRCs, backup copy, overlaps)."""
    result = tool(["sgdisk", "-v", str(image)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout


def test_root_filesystem_is_clean(image: Path) -> None:
    """e2fsck -fn on the root partition reports no problem."""
    offset = root_partition(image).first_lba * SECTOR
    result = tool(["e2fsck", "-fn", f"{image}?offset={offset}"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyparted_reads_both_partitions(image: Path) -> None:
    """libparted reads the table: vorteil-os at LBA 34, then the ext4 root at its planned start."""
    disk = parted.newDisk(parted.getDevice(str(image)))
    assert disk.type == "gpt"
    by_number = {partition.number: partition for partition in disk.partitions}
    root = by_number[2]
    assert root.name == "vorteil-root"
    assert root.geometry.start == root_partition(image).first_lba
    assert root.fileSystem is not None and root.fileSystem.type == "ext4"
    assert (by_number[1].name, by_number[1].geometry.start) == ("vorteil-os", 34)
    os_entry = read_partitions(image)[1][0]
    assert (os_entry.index, os_entry.name) == (0, "vorteil-os")
    assert os_entry.type_guid == OS_TYPE_GUID


def test_config_block(image: Path) -> None:
    """The config block sits at byte 17408 with version 1.0.0 and the kernel command line."""
    with image.open("rb") as handle:
        handle.seek(CONFIG_BLOCK_OFFSET)
        raw = handle.read(16)
        block = layout.read_config_block(handle)
    assert raw == b"1.0.0".ljust(16, b"\0")
    assert block.version == "1.0.0"
    words = block.kernel_args.split()
    assert f"root=PARTUUID={ROOT_PARTUUID}".upper() in [w.upper() for w in words]
    assert "init=/vorteil/vinitd" in words


def test_kernel_bundle(image: Path) -> None:
    """The bundle at LBA 66 holds the bzImage as member 0 and the gzip'd initramfs as member 1."""
    with image.open("rb") as handle:
        handle.seek(BUNDLE_OFFSET)
        header = handle.read(SECTOR)
        members = bundle.read_bundle(handle)
        kernel_head = bundle.read_member(handle, members[0])[:0x210]
        initrd_head = bundle.read_member(handle, members[1])[:2]
    assert header[:6] == b"linux\0"
    assert [m.name for m in members] == ["linux", "initrd"]
    assert members[0].offset == BUNDLE_OFFSET + SECTOR  # LBA 67, where an MBR loader reads it
    assert kernel_head[0x202:0x206] == b"HdrS"
    assert initrd_head == b"\x1f\x8b"


def test_vcfg_json_is_the_rendered_config(image: Path) -> None:
    """The JSON at 17408 + ConfigOffset is exactly what `config render` prints."""
    rendered = imagekit("config", "render", str(HELLO))
    assert rendered.returncode == 0, rendered.stderr
    with image.open("rb") as handle:
        block = layout.read_config_block(handle)
        handle.seek(CONFIG_BLOCK_OFFSET + block.config_offset)
        stored = handle.read(block.config_len)
    assert stored == rendered.stdout.encode()
    assert block.config_capacity >= block.config_len
    json.loads(stored)


def test_root_partition_entry_and_size(image: Path) -> None:
    """Root in slot 1 with the fixed PARTUUID, 4 KiB aligned, last on the disk; 2 MiB sizes."""
    size = image.stat().st_size
    sectors = size // SECTOR
    header, entries = read_partitions(image)
    assert [entry.index for entry in entries] == [0, 1]
    root = entries[1]
    assert root.unique_guid == ROOT_PARTUUID
    assert root.type_guid == LINUX_ROOT_X86_64
    assert root.name == "vorteil-root"
    assert root.first_lba % 8 == 0
    assert root.first_lba > entries[0].last_lba
    assert root.last_lba == header.last_usable_lba == sectors - 34
    assert size % (2 * MIB) == 0


def test_application_file_owned_by_uid_1000(image: Path) -> None:
    """The application's file belongs to 1000:1000 and keeps its permission bits."""
    inode = stat_inode(image, "/hello.py")
    assert inode.kind == "regular"
    assert (inode.uid, inode.gid) == (1000, 1000)
    assert inode.mode == stat.S_IMODE((HELLO / "hello.py").stat().st_mode)


@pytest.mark.parametrize("path", ["/vorteil/vinitd", "/usr/bin/python3.11"])
def test_system_files_owned_by_root(image: Path, path: str) -> None:
    """vinitd and the interpreter belong to root and are not writable by group or others."""
    inode = stat_inode(image, path)
    assert inode.kind == "regular"
    assert (inode.uid, inode.gid) == (0, 0)
    assert inode.mode & 0o022 == 0
    assert inode.mode & 0o111


def test_skeleton_directories(image: Path) -> None:
    """/dev, /proc, /sys and /vorteil exist; /tmp is world-writable and sticky."""
    for path in ("/dev", "/proc", "/sys", "/vorteil"):
        assert stat_inode(image, path).kind == "directory", path
    tmp = stat_inode(image, "/tmp")
    assert tmp.kind == "directory"
    assert tmp.mode == 0o1777


def test_ignored_and_project_files_left_out(image: Path) -> None:
    """default.vcfg (ignored by '*.vcfg') and .vorteilproject are not in the image."""
    names = list_directory(image, "/")
    assert "hello.py" in names
    assert "default.vcfg" not in names
    assert ".vorteilproject" not in names


def test_free_space(image: Path) -> None:
    """At least 1 MiB is free in the root filesystem."""
    assert free_bytes(image) >= MIB


def test_closing_line(hello: BuiltImage) -> None:
    """The CLI's last line names the image, its size, its allocated size and the time taken."""
    line = hello.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"created image: (.+) \((\d+\.\d) MiB, (\d+\.\d) MiB allocated\) in (\d+\.\d) s", line
    )
    assert match is not None, line
    info = hello.path.stat()
    assert Path(match[1]) == hello.path
    assert match[2] == f"{info.st_size / MIB:.1f}"
    assert match[3] == f"{info.st_blocks * 512 / MIB:.1f}"
    assert float(match[4]) > 0


@pytest.mark.usefixtures("tools")
def test_qcow2_format(tmp_path: Path) -> None:
    """--format qcow2 writes a qcow2 image of a 2 MiB-multiple virtual size."""
    output = tmp_path / "hello.qcow2"
    build(HELLO, output, "--format", "qcow2")
    info = json.loads(tool(["qemu-img", "info", "--output=json", str(output)]).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] % (2 * MIB) == 0
    assert not list(tmp_path.glob(".*"))


@pytest.mark.usefixtures("tools")
def test_disk_size_delta_adds_free_space(tmp_path: Path) -> None:
    """vm.disk-size = "+64 MiB" leaves at least 64 MiB free in the root filesystem."""
    extra = _extra_vcfg(tmp_path, '[vm]\ndisk-size = "+64 MiB"\n')
    output = tmp_path / "big.raw"
    build(HELLO, output, "--vcfg", str(extra))
    assert free_bytes(output) >= 64 * MIB
    assert output.stat().st_size % (2 * MIB) == 0


@pytest.mark.usefixtures("tools")
def test_disk_size_absolute_is_the_image_size(tmp_path: Path) -> None:
    """An absolute vm.disk-size is the image size, rounded up to 2 MiB."""
    extra = _extra_vcfg(tmp_path, '[vm]\ndisk-size = "101 MiB"\n')
    output = tmp_path / "sized.raw"
    build(HELLO, output, "--vcfg", str(extra))
    assert output.stat().st_size == 102 * MIB
    assert root_partition(output).last_lba == 102 * MIB // SECTOR - 34


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem type (tmpfs) when the machine has one, else tmp_path.

    The host filesystem shows through in directory sizes and in what mke2fs can zero out
    without writing; neither may reach the image.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "other"
        return
    directory = Path(tempfile.mkdtemp(prefix="imagekit-test-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.usefixtures("tools")
def test_reproducible_with_source_date_epoch(tmp_path: Path, other_filesystem: Path) -> None:
    """With SOURCE_DATE_EPOCH two builds to different paths are byte-identical."""
    env: dict[str, str | None] = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    first, second = tmp_path / "a" / "hello.raw", other_filesystem / "b" / "hello.raw"
    build(HELLO, first, env=env)
    build(HELLO, second, env=env)
    compared = subprocess.run(
        ["cmp", str(first), str(second)], capture_output=True, text=True, check=False
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert f"mtime: {EPOCH:#x}" in debugfs(first, "stat /hello.py")
    assert superblock(first)["Last write time"] == superblock(first)["Filesystem created"]


def _one_file(work: Path) -> None:
    (work / "file").write_bytes(b"x")


def test_cache_info_and_clear(tmp_path: Path) -> None:
    """`cache info` reports the cache under $XDG_CACHE_HOME; `cache clear` empties it."""
    env: dict[str, str | None] = {"XDG_CACHE_HOME": str(tmp_path)}
    root = tmp_path / "imagekit"
    with BuildCache(root) as cache:
        cache.blob(key_of("test", "blob"), lambda: bytes(3 * MIB))
        cache.tree(key_of("test", "tree"), _one_file)

    info = imagekit("cache", "info", env=env)
    assert info.returncode == 0, info.stderr
    path_line, entries_line, size_line = info.stdout.splitlines()
    assert path_line == f"path: {root}"
    assert entries_line == "entries: 2"
    assert re.fullmatch(r"size: \d+\.\d MiB", size_line)
    assert float(size_line.split()[1]) >= 3.0

    cleared = imagekit("cache", "clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.startswith(f"cleared {root} (")

    after = imagekit("cache", "info", env=env)
    assert "entries: 0" in after.stdout.splitlines()
    assert not any((root / "trees").iterdir())
