"""vorteil layout: constants, the boot config block and reading the VCFG JSON off a disk."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vinitd.errors import LayoutError
from vinitd.gpt import SECTOR, GptEntry, build_gpt, read_gpt
from vinitd.layout import (
    ARGS_FIELD_SIZE,
    BUNDLE_LBA,
    CONFIG_BLOCK_OFFSET,
    CONFIG_BLOCK_SECTORS,
    CONFIG_BLOCK_SIZE,
    CONFIG_VERSION,
    OS_FIRST_LBA,
    OS_PARTITION_NAME,
    OS_RESERVED_SECTORS,
    ROOT_PARTITION_NAME,
    ROOT_PARTUUID,
    ROOT_TYPE_GUID,
    ConfigBlock,
    read_config_block,
    read_vcfg_json,
)

TOTAL_SECTORS = 8192  # 4 MiB
BUNDLE_SECTORS = 3
VCFG = json.dumps({"programs": [{"binary": "/hello"}], "vm": {"ram": "64MiB"}}).encode()
ARGS = "console=ttyS0 loglevel=4 root=PARTUUID=4048447D-C09D-D111-B245-5FFDCE74FAD2"


def vorteil_block(vcfg: bytes = VCFG, args: str = ARGS) -> ConfigBlock:
    """The config block a vorteil builder writes for a bundle of BUNDLE_SECTORS sectors."""
    json_sectors = -(-len(vcfg) // SECTOR)
    return ConfigBlock(
        version=CONFIG_VERSION,
        kernel_args=args,
        config_offset=(CONFIG_BLOCK_SECTORS + BUNDLE_SECTORS) * SECTOR,
        config_len=len(vcfg),
        config_capacity=(json_sectors + OS_RESERVED_SECTORS) * SECTOR,
    )


def write_vorteil_image(path: Path, vcfg: bytes = VCFG) -> ConfigBlock:
    """Write a sparse vorteil-layout image: GPT, config block, JSON; return its block."""
    block = vorteil_block(vcfg)
    config_first = BUNDLE_LBA + BUNDLE_SECTORS
    os_last = config_first + block.config_capacity // SECTOR - 1
    entries = [
        GptEntry(UUID(int=0), UUID(int=7), OS_FIRST_LBA, os_last, 0, OS_PARTITION_NAME, index=0),
        GptEntry(
            ROOT_TYPE_GUID,
            ROOT_PARTUUID,
            os_last + 1,
            TOTAL_SECTORS - 34,
            0,
            ROOT_PARTITION_NAME,
            index=1,
        ),
    ]
    head, tail = build_gpt(TOTAL_SECTORS, entries, UUID(int=42))
    with path.open("wb") as image:
        image.truncate(TOTAL_SECTORS * SECTOR)
        image.write(head)
        image.write(block.pack())
        image.seek(config_first * SECTOR)
        image.write(vcfg)
        image.seek(TOTAL_SECTORS * SECTOR - len(tail))
        image.write(tail)
    return block


def with_fields(block: bytes, **fields: int) -> bytes:
    """Overwrite the numeric fields of a packed block, bypassing ConfigBlock's checks."""
    offsets = {"args_len": (32, "<H"), "offset": (40, "<Q"), "length": (48, "<Q")}
    offsets["capacity"] = (56, "<Q")
    data = bytearray(block)
    for name, value in fields.items():
        offset, kind = offsets[name]
        struct.pack_into(kind, data, offset, value)
    return bytes(data)


def test_constants() -> None:
    """The layout numbers are those of vorteil's images."""
    assert CONFIG_BLOCK_OFFSET == 17408 == OS_FIRST_LBA * SECTOR
    assert CONFIG_BLOCK_SIZE == 8448 == 256 + ARGS_FIELD_SIZE
    assert BUNDLE_LBA == 66
    assert ROOT_PARTUUID.bytes_le == bytes.fromhex("7d4448409dc011d1b2455ffdce74fad2")
    assert str(ROOT_TYPE_GUID) == "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"


def test_pack_layout() -> None:
    """Every field sits at its offset, little-endian, and everything else is zero."""
    data = ConfigBlock("1.0.0", "quiet", 16896, 450, 16896).pack()
    assert len(data) == CONFIG_BLOCK_SIZE
    assert data[:16] == b"1.0.0" + bytes(11)
    assert struct.unpack_from("<H", data, 32) == (5,)
    assert struct.unpack_from("<QQQ", data, 40) == (16896, 450, 16896)
    assert data[256:261] == b"quiet"
    expected_zero = data[16:32] + data[34:40] + data[64:256] + data[261:]
    assert expected_zero == bytes(len(expected_zero))


def test_round_trip_and_span() -> None:
    """A block unpacks to itself and places the JSON relative to the OS partition."""
    block = vorteil_block()
    assert ConfigBlock.unpack(block.pack()) == block
    assert block.json_span() == (17408 + (32 + BUNDLE_SECTORS) * 512, len(VCFG))
    assert block.json_span()[0] == (BUNDLE_LBA + BUNDLE_SECTORS) * SECTOR


@given(
    st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
        max_size=300,
    ),
    st.integers(min_value=16384, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
)
def test_round_trip_any_values(args: str, offset: int, length: int, extra: int) -> None:
    """Any valid block survives pack and unpack."""
    block = ConfigBlock(CONFIG_VERSION, args, offset, length, length + extra)
    assert ConfigBlock.unpack(block.pack()) == block


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"kernel_args": "x" * (ARGS_FIELD_SIZE + 1)}, "8193 bytes, the field holds 8192"),
        ({"kernel_args": "é" * 4097}, "8194 bytes"),
        ({"kernel_args": "a\0b"}, "NUL"),
        ({"kernel_args": "\udc80"}, "UTF-8"),
        ({"version": "1.0.0é"}, "not plain ASCII"),
        ({"version": "1.0.0-0123456789ab"}, "longer than 16"),
        ({"config_len": 1000, "config_capacity": 999}, "exceeds ConfigCapacity"),
        ({"config_len": -1}, "negative"),
        ({"config_offset": 16383}, "points into the config block"),
        ({"config_offset": 2**63}, "past the end"),
    ],
)
def test_refused_values(fields: dict[str, Any], problem: str) -> None:
    """Values that cannot be packed, or would be refused when read back, are LayoutErrors."""
    values: dict[str, Any] = {
        "version": CONFIG_VERSION,
        "kernel_args": ARGS,
        "config_offset": 16896,
        "config_len": 10,
        "config_capacity": 16384,
    }
    with pytest.raises(LayoutError, match=problem):
        ConfigBlock(**(values | fields)).pack()


def test_args_field_can_be_full() -> None:
    """Kernel args may fill all 8192 bytes of their field."""
    block = ConfigBlock(CONFIG_VERSION, "x" * ARGS_FIELD_SIZE, 16384, 0, 0)
    assert ConfigBlock.unpack(block.pack()).kernel_args == "x" * ARGS_FIELD_SIZE


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (bytes(CONFIG_BLOCK_SIZE), "b''"),
        (b"\xff" * CONFIG_BLOCK_SIZE, "b'\\xff"),
        (b"1.0.1" + bytes(CONFIG_BLOCK_SIZE - 5), "b'1.0.1'"),
        (b"1.0.0\0junk" + bytes(CONFIG_BLOCK_SIZE - 10), "b'1.0.0\\x00junk'"),
    ],
)
def test_unpack_garbage(data: bytes, shown: str) -> None:
    """A block without version 1.0.0 is reported as no vorteil config block."""
    with pytest.raises(LayoutError, match="no vorteil config block") as caught:
        ConfigBlock.unpack(data, source="disk.img")
    assert f"(version {shown}" in caught.value.problem
    assert caught.value.source == "disk.img"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"args_len": ARGS_FIELD_SIZE + 1}, "exceeds the 8192-byte field"),
        ({"length": 2**40}, "exceeds ConfigCapacity"),
        ({"offset": 512}, "points into the config block"),
        ({"offset": 2**64 - 1}, "past the end"),
        ({"capacity": 2**64 - 1}, "past the end"),
    ],
)
def test_unpack_bad_fields(fields: dict[str, int], problem: str) -> None:
    """Out-of-range fields in a block with the right version are LayoutErrors with the source."""
    data = with_fields(vorteil_block().pack(), **fields)
    with pytest.raises(LayoutError, match=problem) as caught:
        ConfigBlock.unpack(data, source="disk.img")
    assert caught.value.source == "disk.img"


def test_unpack_odd_args() -> None:
    """Kernel args end at a NUL, and bytes that are not UTF-8 are replaced, not fatal."""
    data = bytearray(with_fields(vorteil_block().pack(), args_len=6))
    data[256:262] = b"a\xc3\x28\0bc"
    assert ConfigBlock.unpack(bytes(data)).kernel_args == "a\ufffd("


def test_unpack_short() -> None:
    """Fewer than 8448 bytes are refused."""
    with pytest.raises(LayoutError, match="8447 bytes, expected 8448"):
        ConfigBlock.unpack(vorteil_block().pack()[:-1])


def test_read_from_image(tmp_path: Path) -> None:
    """The block and the JSON are read back from a vorteil-layout image."""
    image = tmp_path / "disk.img"
    block = write_vorteil_image(image)
    with image.open("rb") as disk:
        assert read_config_block(disk) == block
        assert read_vcfg_json(disk) == VCFG
        _, entries = read_gpt(disk)
    assert [entry.name for entry in entries] == [OS_PARTITION_NAME, ROOT_PARTITION_NAME]
    assert entries[0].last_lba == 97 + BUNDLE_SECTORS + 1  # osLast = 97 + B + C


def test_read_vcfg_json_larger_than_a_sector(tmp_path: Path) -> None:
    """A JSON spanning several sectors comes back whole."""
    vcfg = json.dumps({"env": [f"KEY{i}=value" for i in range(200)]}).encode()
    image = tmp_path / "disk.img"
    write_vorteil_image(image, vcfg)
    with image.open("rb") as disk:
        assert read_vcfg_json(disk) == vcfg


@pytest.mark.parametrize(
    ("size", "what"),
    [
        (0, "config block"),
        (CONFIG_BLOCK_OFFSET + CONFIG_BLOCK_SIZE - 1, "config block"),
        ((BUNDLE_LBA + BUNDLE_SECTORS) * SECTOR + len(VCFG) - 1, "VCFG JSON"),
    ],
)
def test_read_truncated_image(tmp_path: Path, size: int, what: str) -> None:
    """An image cut before the end of the block or the JSON is too small, and says which."""
    image = tmp_path / "disk.img"
    write_vorteil_image(image)
    os.truncate(image, size)
    with image.open("rb") as disk, pytest.raises(LayoutError, match=what) as caught:
        read_vcfg_json(disk, source=str(image))
    assert caught.value.problem.startswith("disk too small for the " + what)
    assert caught.value.source == str(image)


def test_read_vcfg_json_empty() -> None:
    """A block recording no JSON is a LayoutError."""
    disk = bytes(CONFIG_BLOCK_OFFSET) + ConfigBlock(CONFIG_VERSION, "", 16384, 0, 512).pack()
    with pytest.raises(LayoutError, match="ConfigLen is 0"):
        read_vcfg_json(io.BytesIO(disk.ljust(40000, b"\0")))


def test_read_vcfg_json_past_end() -> None:
    """A JSON span past the end of the disk is a LayoutError, not a short result."""
    block = ConfigBlock(CONFIG_VERSION, "", 2**40, 100, 512).pack()
    disk = io.BytesIO((bytes(CONFIG_BLOCK_OFFSET) + block).ljust(40000, b"\0"))
    with pytest.raises(LayoutError, match="too small for the VCFG JSON"):
        read_vcfg_json(disk, source="disk.img")


@given(st.binary(max_size=CONFIG_BLOCK_SIZE + 16))
def test_fuzz_unpack(data: bytes) -> None:
    """Random blocks, as they are and padded to full size, decode or raise LayoutError."""
    for block in (data, data.ljust(CONFIG_BLOCK_SIZE, b"\0")):
        with contextlib.suppress(LayoutError):
            ConfigBlock.unpack(block)


@given(st.binary(min_size=48, max_size=48), st.binary(max_size=CONFIG_BLOCK_SIZE))
def test_fuzz_unpack_with_version(fields: bytes, args: bytes) -> None:
    """Random fields and args behind a real version decode or raise LayoutError."""
    data = (b"1.0.0".ljust(32, b"\0") + fields).ljust(256, b"\0") + args
    with contextlib.suppress(LayoutError):
        ConfigBlock.unpack(data.ljust(CONFIG_BLOCK_SIZE, b"\0")[:CONFIG_BLOCK_SIZE])


@given(st.binary(max_size=CONFIG_BLOCK_OFFSET + CONFIG_BLOCK_SIZE + 1024))
def test_fuzz_read_vcfg_json(data: bytes) -> None:
    """read_vcfg_json on random disks raises only LayoutError."""
    with contextlib.suppress(LayoutError):
        read_vcfg_json(io.BytesIO(data))


u64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(
    st.integers(min_value=0, max_value=300) | st.integers(min_value=0, max_value=2**16 - 1),
    st.integers(min_value=16384, max_value=20000) | u64,
    st.integers(min_value=0, max_value=2000) | u64,
    st.integers(min_value=0, max_value=4000) | u64,
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=0, max_value=20000),
)
def test_fuzz_read_vcfg_json_with_version(
    args_len: int, offset: int, length: int, capacity: int, pattern: bytes, tail_size: int
) -> None:
    """Disks with a real version and random fields either yield ConfigLen bytes or LayoutError."""
    block = struct.pack("<16s16xH6xQQQ", b"1.0.0", args_len, offset, length, capacity)
    tail = (pattern * (tail_size // len(pattern) + 1))[:tail_size]
    disk = bytes(CONFIG_BLOCK_OFFSET) + block.ljust(CONFIG_BLOCK_SIZE, b"\0") + tail
    try:
        vcfg = read_vcfg_json(io.BytesIO(disk))
    except LayoutError:
        return
    assert len(vcfg) == length
    assert vcfg == disk[CONFIG_BLOCK_OFFSET + offset :][:length]
