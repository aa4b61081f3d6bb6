"""vorteil's disk layout: where things sit on the boot disk, and the boot config block.

The disk is a GPT with two entries: `vorteil-os` (slot 0, from LBA 34, not a filesystem) and
`vorteil-root` (slot 1, fixed PARTUUID). The OS partition starts with the config block, which
says where the VCFG JSON is; the kernel bundle (a tar stream) follows at LBA 66. The config
block has no magic number and no checksum: its version string is the only sign that it is real.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO
from uuid import UUID

from vinitd.errors import LayoutError
from vinitd.gpt import FIRST_USABLE_LBA, SECTOR, read_at

ROOT_PARTUUID = UUID("4048447D-C09D-D111-B245-5FFDCE74FAD2")
ROOT_TYPE_GUID = UUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")  # Linux root (x86-64)
# vorteil left the OS partition's type GUID zero, which GPT tools read as an unused slot (and
# a repair could overwrite the kernel there); "Linux reserved" tells them to leave it alone.
OS_TYPE_GUID = UUID("8DA63339-0007-60C0-C436-083AC8230908")
OS_PARTITION_NAME = "vorteil-os"
ROOT_PARTITION_NAME = "vorteil-root"

OS_FIRST_LBA = FIRST_USABLE_LBA  # 34: no alignment, right after the primary GPT
CONFIG_BLOCK_OFFSET = OS_FIRST_LBA * SECTOR  # 17408
CONFIG_BLOCK_SECTORS = 32  # the block is 8448 bytes; the rest of the 32 sectors is zero
CONFIG_BLOCK_SIZE = 8448
BUNDLE_LBA = OS_FIRST_LBA + CONFIG_BLOCK_SECTORS  # 66: the kernel bundle tar starts here
OS_RESERVED_SECTORS = 32  # zero sectors after the VCFG JSON, room for it to grow
CONFIG_VERSION = "1.0.0"
VERSION_FIELD_SIZE = 16
ARGS_FIELD_SIZE = 8192
# A vorteil-style MBR loader reads only the first sector of the config block, so the kernel
# sees at most the first 256 bytes of the command line; the field itself holds 8192.
MBR_LOADER_ARGS_LIMIT = 256

# version, reserved, args length, reserved, ConfigOffset, ConfigLen, ConfigCapacity,
# reserved, args text
_CONFIG_BLOCK = struct.Struct("<16s 16x H 6x QQQ 192x 8192s")
_VERSION_FIELD = CONFIG_VERSION.encode("ascii").ljust(VERSION_FIELD_SIZE, b"\0")
# Offsets past this cannot be seeked to; no real disk gets near it.
_MAX_DISK_BYTES = 1 << 63


@dataclass(frozen=True)
class ConfigBlock:
    """The 8448-byte boot config block at byte 17408 of the boot disk.

    `config_offset` is relative to the start of the OS partition (byte 17408), not to the
    disk; `json_span` gives the absolute position. Invalid values are refused when the object
    is made, so `pack` always succeeds.
    """

    version: str
    kernel_args: str
    config_offset: int
    config_len: int
    config_capacity: int

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise LayoutError(problem)

    def _problem(self) -> str | None:
        if not self.version.isascii() or "\0" in self.version:
            return f"config block version {self.version!r} is not plain ASCII"
        if len(self.version) > VERSION_FIELD_SIZE:
            return f"config block version {self.version!r} is longer than {VERSION_FIELD_SIZE}"
        if "\0" in self.kernel_args:
            return "kernel args contain a NUL character"
        try:
            args_size = len(self.kernel_args.encode("utf-8"))
        except UnicodeEncodeError as err:
            return f"kernel args are not encodable as UTF-8: {err}"
        if args_size > ARGS_FIELD_SIZE:
            return f"kernel args are {args_size} bytes, the field holds {ARGS_FIELD_SIZE}"
        if self.config_len < 0 or self.config_capacity < 0:
            return "ConfigLen and ConfigCapacity must not be negative"
        if self.config_len > self.config_capacity:
            return f"ConfigLen {self.config_len} exceeds ConfigCapacity {self.config_capacity}"
        if self.config_offset < CONFIG_BLOCK_SECTORS * SECTOR:
            return (
                f"ConfigOffset {self.config_offset} points into the config block "
                f"(the VCFG starts at {CONFIG_BLOCK_SECTORS * SECTOR} or later)"
            )
        if CONFIG_BLOCK_OFFSET + self.config_offset + self.config_capacity >= _MAX_DISK_BYTES:
            return (
                f"ConfigOffset {self.config_offset} + ConfigCapacity {self.config_capacity} "
                "is past the end of any disk"
            )
        return None

    def pack(self) -> bytes:
        """Return the 8448-byte block; unused and reserved bytes are zero."""
        args = self.kernel_args.encode("utf-8")
        return _CONFIG_BLOCK.pack(
            self.version.encode("ascii"),
            len(args),
            self.config_offset,
            self.config_len,
            self.config_capacity,
            args,
        )

    @classmethod
    def unpack(cls, data: bytes, *, source: str | None = None) -> ConfigBlock:
        """Decode a block; anything but version "1.0.0" is "no vorteil config block".

        The kernel args end at their recorded length or at a NUL; bytes that are not UTF-8
        become U+FFFD.
        """
        if len(data) < CONFIG_BLOCK_SIZE:
            raise LayoutError(
                f"config block is {len(data)} bytes, expected {CONFIG_BLOCK_SIZE}", source=source
            )
        version, args_len, offset, length, capacity, args = _CONFIG_BLOCK.unpack_from(data)
        if version != _VERSION_FIELD:
            found = version.rstrip(b"\0")
            raise LayoutError(
                f"no vorteil config block (version {found!r}, expected {CONFIG_VERSION!r})",
                source=source,
            )
        if args_len > ARGS_FIELD_SIZE:
            raise LayoutError(
                f"kernel args length {args_len} exceeds the {ARGS_FIELD_SIZE}-byte field",
                source=source,
            )
        # Only loaders read the args; odd bytes in them must not make the VCFG unreadable.
        kernel_args = args[:args_len].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        try:
            return cls(
                version=CONFIG_VERSION,
                kernel_args=kernel_args,
                config_offset=offset,
                config_len=length,
                config_capacity=capacity,
            )
        except LayoutError as err:
            raise LayoutError(err.problem, source=source) from err

    def json_span(self) -> tuple[int, int]:
        """Return the absolute byte offset of the VCFG JSON on the disk, and its length."""
        return CONFIG_BLOCK_OFFSET + self.config_offset, self.config_len


def read_config_block(fileobj: BinaryIO, *, source: str | None = None) -> ConfigBlock:
    """Read and decode the config block at byte 17408 of a whole disk (or image)."""
    data = read_at(
        fileobj, CONFIG_BLOCK_OFFSET, CONFIG_BLOCK_SIZE, what="the config block", source=source
    )
    return ConfigBlock.unpack(data, source=source)


def read_vcfg_json(fileobj: BinaryIO, *, source: str | None = None) -> bytes:
    """Return the VCFG JSON bytes of a whole disk (or image), undecoded.

    Reads the config block, then ConfigLen bytes at 17408 + ConfigOffset. A disk too small
    for either, or an empty ConfigLen, is a LayoutError naming `source`.
    """
    block = read_config_block(fileobj, source=source)
    offset, length = block.json_span()
    if length == 0:
        raise LayoutError("the config block records no VCFG JSON (ConfigLen is 0)", source=source)
    return read_at(fileobj, offset, length, what="the VCFG JSON", source=source)
