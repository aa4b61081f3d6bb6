"""An existing image file: read back as a raw disk, and its VCFG rewritten.

Reading: `raw_image` gives a raw view of an image (the file itself, or a temporary raw copy of
a qcow2 image made with ``qemu-img convert``); `read_layout` checks that the disk has the
vorteil layout (docs/image-layout.md) and returns where everything is; `read_filesystem`
summarises the root filesystem with ``dumpe2fs -h``. Anything that is not such an image (no
file, a directory, an empty file, random bytes, a GPT disk laid out otherwise) is a UserError or
a LayoutError with one line naming the file.

Rewriting: `write_config` replaces the VCFG JSON and the kernel command line of an image. The
config area runs from the end of the kernel bundle to ``ConfigOffset + ConfigCapacity`` (the
end of the OS partition); a VCFG larger than the area is refused before anything is written.
An interruption at any moment leaves the old config or the new one, never a mix:

- in place, when the new JSON fits in the area beside the old one and the config block changes
  only in its first sector (so with command lines of at most 256 bytes, old and new): the JSON
  is written to the free part of the area and synced, then the block's first sector (version,
  ConfigOffset/Len/Capacity and the command line) is rewritten with one 512-byte write and
  synced, and only then is the old JSON zeroed. Until that one write the block points at the
  old JSON, which is untouched; after it, at the new one, already on disk. This relies on an
  aligned 512-byte write landing whole or not at all, as disks promise for a sector. The JSON
  alternates between the start of the area and its end, so repeated changes stay in place;
  ConfigCapacity is the room from the JSON to the end of the area, as vorteil defines it;
- otherwise (the JSON does not fit twice, a longer command line, or a qcow2 image) on a copy
  beside the image, holes kept and extents shared where the filesystem can, which is synced
  and renamed over the original. A reader sees the old file or the new one. The copy puts the
  JSON back at the start of the area, which restores the full ConfigCapacity.

A raw image is locked (``lockf``) while it is changed; a lock held by someone else, such as a
QEMU process running the image, refuses the change. qemu-img checks QEMU's locks on qcow2.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from imagekit.cmdline import kernel_command_line, root_filesystem
from imagekit.errors import EnvironmentFailure, ToolFailed, UserError
from imagekit.tools import run
from vinitd import bundle, gpt, layout
from vinitd.errors import ConfigError, LayoutError
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG

log = logging.getLogger(__name__)

QCOW2_MAGIC = b"QFI\xfb"
# The kernel args start at byte 256 of the config block; this many fit in its first sector.
ARGS_IN_FIRST_SECTOR = gpt.SECTOR - 256
_COPY_CHUNK = 1 << 20

# Fields used only when an image is built: a new value on an existing image changes nothing.
BUILD_TIME_FIELDS: tuple[tuple[str, Callable[[VCFG], object]], ...] = (
    ("vm.disk-size", lambda vcfg: vcfg.vm.disk_size),
    ("vm.inodes", lambda vcfg: vcfg.vm.inodes),
    ("nfs", lambda vcfg: bool(vcfg.nfs)),  # the initramfs has NFS modules only when it is set
)
# Features that mke2fs turns on for ext4 and never for ext2 or ext3.
_EXT4_FEATURES = frozenset(
    {"extent", "flex_bg", "64bit", "huge_file", "dir_nlink", "extra_isize", "metadata_csum"}
)


class ImageFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class WriteMethod(enum.StrEnum):
    IN_PLACE = "in place"
    COPY = "to a copy renamed into place"


@dataclass(frozen=True)
class RawImage:
    """An image (``path``) and a raw disk file with its content (``raw``, maybe the same)."""

    path: Path
    raw: Path
    image_format: ImageFormat

    @property
    def source(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class ImageLayout:
    """Where things are on a disk with the vorteil layout; offsets are absolute bytes."""

    size: int
    header: gpt.GptHeader
    entries: tuple[gpt.GptEntry, ...]
    os_partition: gpt.GptEntry
    root_partition: gpt.GptEntry
    block: layout.ConfigBlock
    members: tuple[bundle.BundleMember, ...]
    config_area: tuple[int, int]
    vcfg_json: bytes

    @property
    def root_offset(self) -> int:
        return self.root_partition.first_lba * gpt.SECTOR


@dataclass(frozen=True)
class FilesystemSummary:
    """The root filesystem's superblock, as ``dumpe2fs -h`` shows it."""

    type: str
    block_size: int
    blocks: int
    free_blocks: int
    inodes: int
    free_inodes: int
    uuid: str | None
    label: str | None
    state: str


@dataclass(frozen=True)
class ConfigWrite:
    """What `write_config` wrote."""

    json_len: int
    area_bytes: int  # the config area's size: the most a VCFG may take in this image
    kernel_args: str
    kernel_args_changed: bool
    method: WriteMethod


def image_format(path: Path) -> ImageFormat:
    """The format of the image file at ``path``; anything but a non-empty file is a UserError."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{path}: is a directory, not a disk image")
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: is not a regular file")
        if info.st_size == 0:
            raise UserError(f"{path}: is empty, not a disk image")
        with path.open("rb") as handle:
            magic = handle.read(len(QCOW2_MAGIC))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror}") from None
    return ImageFormat.QCOW2 if magic == QCOW2_MAGIC else ImageFormat.RAW


@contextmanager
def raw_image(path: Path) -> Iterator[RawImage]:
    """The image as a raw disk: the file itself, or a temporary raw copy of a qcow2 image."""
    found = image_format(path)
    if found is ImageFormat.RAW:
        yield RawImage(path, path, found)
        return
    with tempfile.TemporaryDirectory(prefix="imagekit-inspect-") as scratch:
        raw = Path(scratch) / "disk.raw"
        _qcow2_to_raw(path, raw)
        yield RawImage(path, raw, found)


def _qcow2_to_raw(path: Path, raw: Path) -> None:
    try:
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(path), str(raw)])
    except ToolFailed as err:
        raise UserError(f"{path}: qemu-img cannot read it as qcow2: {_last_line(err)}") from None


def _last_line(err: ToolFailed) -> str:
    lines = err.output.strip().splitlines()
    return lines[-1] if lines else f"exit status {err.returncode}"


def read_layout(handle: BinaryIO, *, source: str) -> ImageLayout:
    """Read the GPT, the config block, the kernel bundle and the VCFG JSON of a raw disk."""
    header, entries = gpt.read_gpt(handle, source=source)
    slots = {entry.index: entry for entry in entries}
    os_partition = slots.get(0)
    if os_partition is None or os_partition.name != layout.OS_PARTITION_NAME:
        raise LayoutError(
            f"GPT slot 0 holds no {layout.OS_PARTITION_NAME!r} partition (not a vorteil image)",
            source=source,
        )
    if os_partition.first_lba != layout.OS_FIRST_LBA:
        raise LayoutError(
            f"{layout.OS_PARTITION_NAME} starts at LBA {os_partition.first_lba}, "
            f"not {layout.OS_FIRST_LBA}",
            source=source,
        )
    root_partition = slots.get(1)
    if root_partition is None or root_partition.unique_guid != layout.ROOT_PARTUUID:
        raise LayoutError(
            f"GPT slot 1 holds no partition with the root PARTUUID "
            f"{str(layout.ROOT_PARTUUID).upper()} (not a vorteil image)",
            source=source,
        )

    block = layout.read_config_block(handle, source=source)
    members = bundle.read_bundle(handle, source=source)
    last = members[-1]
    bundle_end = last.offset + _round_up(last.size) + 2 * bundle.BLOCK
    json_start, json_len = block.json_span()
    area = (_round_up(bundle_end), json_start + block.config_capacity)
    os_end = (os_partition.last_lba + 1) * gpt.SECTOR
    if json_start < area[0] or area[1] > os_end:
        raise LayoutError(
            f"the VCFG area (bytes {json_start}..{area[1]}) is not between the kernel bundle "
            f"(ends at {bundle_end}) and the end of {layout.OS_PARTITION_NAME} ({os_end})",
            source=source,
        )
    if json_len == 0:
        raise LayoutError("the config block records no VCFG JSON (ConfigLen is 0)", source=source)
    vcfg_json = gpt.read_at(handle, json_start, json_len, what="the VCFG JSON", source=source)
    return ImageLayout(
        size=handle.seek(0, os.SEEK_END),
        header=header,
        entries=tuple(entries),
        os_partition=os_partition,
        root_partition=root_partition,
        block=block,
        members=tuple(members),
        config_area=area,
        vcfg_json=vcfg_json,
    )


def _round_up(size: int) -> int:
    return -(-size // gpt.SECTOR) * gpt.SECTOR


def read_image_layout(image: RawImage) -> ImageLayout:
    """`read_layout` of a whole image file."""
    try:
        handle = image.raw.open("rb")
    except OSError as err:
        raise UserError(f"{image.source}: cannot read: {err.strerror}") from None
    with handle:
        return read_layout(handle, source=image.source)


def read_filesystem(raw: Path, offset: int, *, source: str) -> FilesystemSummary:
    """Summarise the ext2/3/4 filesystem at byte ``offset`` of ``raw`` with ``dumpe2fs -h``."""
    try:
        output = run(["dumpe2fs", "-h", f"{raw}?offset={offset}"])
    except ToolFailed as err:
        raise LayoutError(
            f"no ext2/ext4 filesystem at byte {offset} (dumpe2fs: {_last_line(err)})",
            source=source,
        ) from None
    fields: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    features = set(fields.get("Filesystem features", "").split())
    try:
        return FilesystemSummary(
            type=_ext_type(features),
            block_size=int(fields["Block size"]),
            blocks=int(fields["Block count"]),
            free_blocks=int(fields["Free blocks"]),
            inodes=int(fields["Inode count"]),
            free_inodes=int(fields["Free inodes"]),
            uuid=_unless_none(fields.get("Filesystem UUID", "")),
            label=_unless_none(fields.get("Filesystem volume name", "")),
            state=fields.get("Filesystem state", ""),
        )
    except (KeyError, ValueError) as err:
        raise LayoutError(
            f"dumpe2fs gave no usable superblock summary at byte {offset} ({err})", source=source
        ) from None


def _ext_type(features: set[str]) -> str:
    if features & _EXT4_FEATURES:
        return "ext4"
    return "ext3" if "has_journal" in features else "ext2"


def _unless_none(value: str) -> str | None:
    return None if value in ("", "<none>") else value


def write_config(path: Path, vcfg: VCFG) -> ConfigWrite:
    """Replace the VCFG and the kernel command line of the image at ``path``.

    See the module docstring for why an interruption leaves the old or the new config.
    """
    json_bytes = codec.dumps(vcfg)
    kernel_args = kernel_command_line(vcfg)
    try:
        if image_format(path) is ImageFormat.QCOW2:
            return _write_qcow2(path, vcfg, json_bytes, kernel_args)
        with _locked(path) as handle:
            image = _prepare(handle, path, vcfg, json_bytes, source=str(path))
            start = _free_place(handle, image, json_bytes, kernel_args)
            if start is not None:
                block = _new_block(image, start, json_bytes, kernel_args)
                _write_in_place(handle, image, start, json_bytes, block)
                method = WriteMethod.IN_PLACE
            else:
                block = _new_block(image, image.config_area[0], json_bytes, kernel_args)
                _write_copy(handle, path, image, json_bytes, block)
                method = WriteMethod.COPY
    except OSError as err:
        raise EnvironmentFailure(f"{path}: cannot write the new VCFG: {err.strerror}") from err
    return ConfigWrite(
        json_len=len(json_bytes),
        area_bytes=image.config_area[1] - image.config_area[0],
        kernel_args=kernel_args,
        kernel_args_changed=kernel_args != image.block.kernel_args,
        method=method,
    )


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO]:
    """The image open for writing, with an exclusive lock on the whole file."""
    try:
        handle = path.open("r+b")
    except OSError as err:
        raise UserError(f"{path}: cannot open for writing: {err.strerror}") from None
    with handle:
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise UserError(
                f"{path}: in use by another process", hint="stop the VM that runs it first"
            ) from None
        yield handle


def _prepare(
    handle: BinaryIO, raw: Path, vcfg: VCFG, json_bytes: bytes, *, source: str
) -> ImageLayout:
    """Read the image and refuse a VCFG it cannot take; warn about build-time fields."""
    image = read_layout(handle, source=source)
    start, end = image.config_area
    if len(json_bytes) > end - start:
        raise UserError(
            f"{source}: the new VCFG is {len(json_bytes)} bytes, "
            f"the image has room for {end - start}",
            hint="rebuild the image with imagekit build to make room",
        )
    actual = read_filesystem(raw, image.root_offset, source=source).type
    wanted = root_filesystem(vcfg)
    if actual != wanted:
        raise UserError(
            f"{source}: system.filesystem asks for {wanted}, "
            f"but the image's root filesystem is {actual}",
            hint="rebuild the image to change its filesystem",
        )
    try:
        old = codec.loads(image.vcfg_json, source=source)
    except ConfigError:
        return image
    for name, value_of in BUILD_TIME_FIELDS:
        if value_of(old) != value_of(vcfg):
            log.warning("%s: %s changed; it takes effect when the image is rebuilt", source, name)
    return image


def _free_place(
    handle: BinaryIO, image: ImageLayout, json_bytes: bytes, kernel_args: str
) -> int | None:
    """Where the new JSON can go beside the old, if the block changes only in its first sector."""
    old_block = gpt.read_at(
        handle, layout.CONFIG_BLOCK_OFFSET, layout.CONFIG_BLOCK_SIZE, what="the config block"
    )
    area_start, area_end = image.config_area
    new_block = _new_block(image, area_start, json_bytes, kernel_args).pack()
    if new_block[gpt.SECTOR :] != old_block[gpt.SECTOR :]:
        return None
    old_start, old_len = image.block.json_span()
    size = len(json_bytes)
    for start in (area_start, (area_end - size) // gpt.SECTOR * gpt.SECTOR):
        inside = area_start <= start and start + size <= area_end
        if inside and (start + size <= old_start or start >= old_start + old_len):
            return start
    return None


def _new_block(
    image: ImageLayout, start: int, json_bytes: bytes, kernel_args: str
) -> layout.ConfigBlock:
    return replace(
        image.block,
        kernel_args=kernel_args,
        config_offset=start - layout.CONFIG_BLOCK_OFFSET,
        config_len=len(json_bytes),
        config_capacity=image.config_area[1] - start,
    )


def _write_in_place(
    handle: BinaryIO,
    image: ImageLayout,
    start: int,
    json_bytes: bytes,
    block: layout.ConfigBlock,
) -> None:
    descriptor = handle.fileno()
    _pwrite_all(descriptor, json_bytes, start)
    os.fsync(descriptor)
    # The switch: one aligned sector holding ConfigOffset, ConfigLen and the command line.
    _pwrite_all(descriptor, block.pack()[: gpt.SECTOR], layout.CONFIG_BLOCK_OFFSET)
    os.fsync(descriptor)
    old_start, old_len = image.block.json_span()
    _pwrite_all(descriptor, bytes(old_len), old_start)
    os.fsync(descriptor)
    log.info("wrote the VCFG in place at byte %d", start)


def _write_copy(
    handle: BinaryIO,
    path: Path,
    image: ImageLayout,
    json_bytes: bytes,
    block: layout.ConfigBlock,
) -> None:
    temp = path.with_name(f".{path.name}.config-{os.getpid()}")
    try:
        with temp.open("xb") as copy:
            _copy_sparse(handle.fileno(), copy.fileno())
            _rewrite_area(copy.fileno(), image, json_bytes, block)
            os.fsync(copy.fileno())
        shutil.copymode(path, temp)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    log.info("wrote the VCFG to a copy and renamed it over %s", path)


def _write_qcow2(path: Path, vcfg: VCFG, json_bytes: bytes, kernel_args: str) -> ConfigWrite:
    """Convert to raw beside the image, rewrite the area, convert back, rename over it."""
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.config-", dir=path.parent) as scratch:
        raw = Path(scratch) / "disk.raw"
        _qcow2_to_raw(path, raw)
        with raw.open("r+b") as handle:
            image = _prepare(handle, raw, vcfg, json_bytes, source=str(path))
            block = _new_block(image, image.config_area[0], json_bytes, kernel_args)
            _rewrite_area(handle.fileno(), image, json_bytes, block)
        converted = Path(scratch) / "disk.qcow2"
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(converted)])
        with converted.open("rb+") as handle:
            os.fsync(handle.fileno())
        shutil.copymode(path, converted)
        converted.replace(path)
    _fsync_directory(path.parent)
    return ConfigWrite(
        json_len=len(json_bytes),
        area_bytes=image.config_area[1] - image.config_area[0],
        kernel_args=kernel_args,
        kernel_args_changed=kernel_args != image.block.kernel_args,
        method=WriteMethod.COPY,
    )


def _rewrite_area(
    descriptor: int, image: ImageLayout, json_bytes: bytes, block: layout.ConfigBlock
) -> None:
    """On a private copy: the JSON at the start of the zeroed area, then the whole block."""
    area_start, area_end = image.config_area
    _pwrite_all(descriptor, json_bytes.ljust(area_end - area_start, b"\0"), area_start)
    _pwrite_all(descriptor, block.pack(), layout.CONFIG_BLOCK_OFFSET)


def _pwrite_all(descriptor: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view = view[written:]
        offset += written


def _copy_sparse(source: int, target: int) -> None:
    """Copy a whole file, keeping its holes; copy_file_range shares extents where it can."""
    size = os.fstat(source).st_size
    os.ftruncate(target, size)
    position = 0
    while position < size:
        try:
            data = os.lseek(source, position, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        hole = os.lseek(source, data, os.SEEK_HOLE)
        _copy_range(source, target, data, hole - data)
        position = hole


def _copy_range(source: int, target: int, offset: int, count: int) -> None:
    while count > 0:
        try:
            done = os.copy_file_range(source, target, count, offset, offset)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            done = 0
        if done == 0:  # not supported here: copy through memory
            chunk = os.pread(source, min(count, _COPY_CHUNK), offset)
            if not chunk:
                raise OSError(errno.EIO, f"short read at byte {offset}")
            _pwrite_all(target, chunk, offset)
            done = len(chunk)
        offset += done
        count -= done


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
