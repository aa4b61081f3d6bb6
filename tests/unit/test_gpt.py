"""GPT structures: packing, reading, corruption, and agreement with sgdisk and sfdisk."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vinitd.errors import LayoutError
from vinitd.gpt import (
    ENTRY_ARRAY_SECTORS,
    ENTRY_COUNT,
    ENTRY_SIZE,
    FIRST_USABLE_LBA,
    SECTOR,
    GptEntry,
    GptHeader,
    build_gpt,
    pack_entries,
    protective_mbr,
    read_gpt,
    unpack_entries,
)
from vinitd.layout import ROOT_PARTUUID, ROOT_TYPE_GUID

TOTAL_SECTORS = 8192  # 4 MiB
OS_LAST_LBA = 101
DISK_GUID = UUID("0b5e7c1a-8d2f-4e3b-9a61-2c4d5e6f7a8b")
OS_GUID = UUID("6a1f0c2e-3b4d-4c5e-8f60-718293a4b5c6")

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
guids = st.uuids()


def vorteil_entries(total_sectors: int = TOTAL_SECTORS) -> list[GptEntry]:
    """The two entries of a vorteil disk: OS (zero type GUID) in slot 0, root in slot 1."""
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


def write_image(path: Path, total_sectors: int = TOTAL_SECTORS) -> Path:
    """Write a sparse disk image holding only the GPT of a vorteil disk."""
    head, tail = build_gpt(total_sectors, vorteil_entries(total_sectors), DISK_GUID)
    with path.open("wb") as image:
        image.truncate(total_sectors * SECTOR)
        image.write(head)
        image.seek((total_sectors - len(tail) // SECTOR) * SECTOR)
        image.write(tail)
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as image:
        image.seek(offset)
        image.write(data)


def read_image(path: Path) -> tuple[GptHeader, list[GptEntry]]:
    with path.open("rb") as image:
        return read_gpt(image, source=str(path))


def require_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (install gdisk and fdisk)")
        pytest.skip(f"{name} is not installed")
    return found


def sample_header() -> GptHeader:
    return GptHeader(
        my_lba=1,
        alternate_lba=TOTAL_SECTORS - 1,
        first_usable_lba=34,
        last_usable_lba=TOTAL_SECTORS - 34,
        disk_guid=DISK_GUID,
        entries_lba=2,
        entry_count=ENTRY_COUNT,
        entry_size=ENTRY_SIZE,
        entries_crc=0x12345678,
    )


def test_constants() -> None:
    """The structure sizes agree with each other."""
    assert ENTRY_COUNT * ENTRY_SIZE == ENTRY_ARRAY_SECTORS * SECTOR == 16384
    assert FIRST_USABLE_LBA == 2 + ENTRY_ARRAY_SECTORS


def test_header_round_trip() -> None:
    """A packed header is one sector and unpacks to the same values."""
    header = sample_header()
    data = header.pack()
    assert len(data) == SECTOR
    assert data[:8] == b"EFI PART"
    assert data[92:] == bytes(SECTOR - 92)
    assert GptHeader.unpack(data) == header


@given(
    my_lba=u64,
    alternate_lba=u64,
    first=u64,
    last=u64,
    guid=guids,
    entries_lba=u64,
    count=u32,
    size=u32,
    crc=u32,
)
def test_header_round_trip_any_values(
    my_lba: int,
    alternate_lba: int,
    first: int,
    last: int,
    guid: UUID,
    entries_lba: int,
    count: int,
    size: int,
    crc: int,
) -> None:
    """Any in-range field values survive pack and unpack."""
    header = GptHeader(my_lba, alternate_lba, first, last, guid, entries_lba, count, size, crc)
    assert GptHeader.unpack(header.pack()) == header


def test_header_field_out_of_range() -> None:
    """A value too big for its field is a LayoutError, not a struct.error."""
    header = GptHeader(2**64, 0, 0, 0, DISK_GUID, 0, 0, 0, 0)
    with pytest.raises(LayoutError, match="out of range"):
        header.pack()


def test_header_crc_mismatch() -> None:
    """A header changed after packing fails its CRC check."""
    data = bytearray(sample_header().pack())
    data[48] ^= 0x01  # last usable LBA
    with pytest.raises(LayoutError, match="GPT header CRC mismatch") as caught:
        GptHeader.unpack(bytes(data), source="disk.img")
    assert caught.value.source == "disk.img"
    assert str(caught.value).startswith("disk.img: ")


def test_header_wrong_signature() -> None:
    """A sector without "EFI PART" is reported as no GPT."""
    data = b"NOT PART" + sample_header().pack()[8:]
    with pytest.raises(LayoutError, match="no GPT"):
        GptHeader.unpack(data)


@pytest.mark.parametrize(
    ("offset", "value", "problem"),
    [
        (8, 0x00020000, "revision"),
        (12, 91, "header size"),
        (12, 513, "header size"),
    ],
)
def test_header_bad_fields(offset: int, value: int, problem: str) -> None:
    """A wrong revision or header size is refused even with a matching CRC."""
    data = bytearray(sample_header().pack())
    struct.pack_into("<I", data, offset, value)
    struct.pack_into("<I", data, 16, 0)
    struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[:92])))
    with pytest.raises(LayoutError, match=problem):
        GptHeader.unpack(bytes(data))


def test_header_too_short() -> None:
    """Fewer than 92 bytes cannot be a header."""
    with pytest.raises(LayoutError, match="needs at least 92"):
        GptHeader.unpack(sample_header().pack()[:91])


def test_entry_round_trip() -> None:
    """An entry packs to 128 bytes with mixed-endian GUIDs and a UTF-16LE name."""
    entry = GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 102, 8158, 1 << 60, "vorteil-root", index=1)
    data = entry.pack()
    assert len(data) == ENTRY_SIZE
    assert data[16:32] == bytes.fromhex("7d4448409dc011d1b2455ffdce74fad2")
    assert data[56:80] == "vorteil-root".encode("utf-16-le")
    assert GptEntry.unpack(data, index=1) == entry


def test_entry_name_limits() -> None:
    """Names up to 36 UTF-16 units fit; longer or unencodable names are refused."""
    fits = GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 34, 40, 0, "n" * 36, index=0)
    assert GptEntry.unpack(fits.pack(), index=0).name == "n" * 36
    with pytest.raises(LayoutError, match="longer than 36"):
        GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 34, 40, 0, "n" * 37, index=0).pack()
    with pytest.raises(LayoutError, match="name"):
        GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 34, 40, 0, "\ud800", index=0).pack()


def test_entries_round_trip_keep_slots() -> None:
    """Entries come back in slot order with their index, empty slots left out."""
    entries = [
        GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 200, 300, 0, "root", index=5),
        *vorteil_entries(),
    ]
    data = pack_entries(entries)
    assert len(data) == ENTRY_COUNT * ENTRY_SIZE
    assert data[2 * ENTRY_SIZE : 5 * ENTRY_SIZE] == bytes(3 * ENTRY_SIZE)
    assert unpack_entries(data) == sorted(entries, key=lambda entry: entry.index)
    assert pack_entries(unpack_entries(data)) == data


def test_zero_type_entry_is_used() -> None:
    """vorteil's OS entry has a zero type GUID and still counts as a partition."""
    (os_entry,) = unpack_entries(pack_entries(vorteil_entries()[:1]))
    assert os_entry.type_guid == UUID(int=0)
    assert os_entry.name == "vorteil-os"


@pytest.mark.parametrize(("indexes", "problem"), [((0, 0), "two GPT entries"), ((128,), "0..127")])
def test_pack_entries_bad_slots(indexes: tuple[int, ...], problem: str) -> None:
    """Two entries in one slot, or a slot past the array, are refused."""
    entries = [GptEntry(ROOT_TYPE_GUID, OS_GUID, 34, 40, 0, "x", index=i) for i in indexes]
    with pytest.raises(LayoutError, match=problem):
        pack_entries(entries)


def test_unpack_entries_bad_length() -> None:
    """An array that is not whole entries is refused."""
    with pytest.raises(LayoutError, match="not a multiple of 128"):
        unpack_entries(bytes(200))


def test_protective_mbr() -> None:
    """The MBR has one 0xEE partition from LBA 1 over the whole disk and the 0x55AA mark."""
    mbr = protective_mbr(TOTAL_SECTORS, b"\xfa\xeb\xfe")
    assert len(mbr) == SECTOR
    assert mbr[:3] == b"\xfa\xeb\xfe"
    assert mbr[3:446] == bytes(443)
    status, _, kind, _, first, count = struct.unpack_from("<B3sB3sII", mbr, 446)
    assert (status, kind, first, count) == (0x00, 0xEE, 1, TOTAL_SECTORS - 1)
    assert mbr[462:510] == bytes(48)
    assert mbr[510:] == b"\x55\xaa"


def test_protective_mbr_limits() -> None:
    """The sector count saturates at 2 TiB; oversized boot code and tiny disks are refused."""
    (count,) = struct.unpack_from("<I", protective_mbr(2**40), 458)
    assert count == 0xFFFFFFFF
    with pytest.raises(LayoutError, match="boot code"):
        protective_mbr(TOTAL_SECTORS, bytes(447))
    with pytest.raises(LayoutError, match="cannot hold a GPT"):
        protective_mbr(1)


def test_build_gpt_structures() -> None:
    """Head and tail carry matching arrays and headers that point at each other."""
    head, tail = build_gpt(TOTAL_SECTORS, vorteil_entries(), DISK_GUID)
    assert len(head) == 34 * SECTOR
    assert len(tail) == 33 * SECTOR
    array = head[2 * SECTOR :]
    assert tail[: 32 * SECTOR] == array

    primary = GptHeader.unpack(head[SECTOR : 2 * SECTOR])
    backup = GptHeader.unpack(tail[32 * SECTOR :])
    assert primary == GptHeader(
        my_lba=1,
        alternate_lba=TOTAL_SECTORS - 1,
        first_usable_lba=34,
        last_usable_lba=TOTAL_SECTORS - 34,
        disk_guid=DISK_GUID,
        entries_lba=2,
        entry_count=128,
        entry_size=128,
        entries_crc=zlib.crc32(array),
    )
    assert (backup.my_lba, backup.alternate_lba) == (TOTAL_SECTORS - 1, 1)
    assert backup.entries_lba == TOTAL_SECTORS - 33
    assert backup.entries_crc == primary.entries_crc


@pytest.mark.parametrize(
    ("total", "entries", "problem"),
    [
        (67, [], "too small for a GPT"),
        (
            TOTAL_SECTORS,
            [GptEntry(ROOT_TYPE_GUID, OS_GUID, 33, 40, 0, "x", index=0)],
            "not inside the usable area",
        ),
        (
            TOTAL_SECTORS,
            [GptEntry(ROOT_TYPE_GUID, OS_GUID, 100, TOTAL_SECTORS - 33, 0, "x", index=0)],
            "not inside the usable area",
        ),
        (
            TOTAL_SECTORS,
            [GptEntry(ROOT_TYPE_GUID, OS_GUID, 50, 40, 0, "x", index=0)],
            "not inside the usable area",
        ),
        (
            TOTAL_SECTORS,
            [
                GptEntry(ROOT_TYPE_GUID, OS_GUID, 34, 100, 0, "a", index=0),
                GptEntry(ROOT_TYPE_GUID, ROOT_PARTUUID, 100, 200, 0, "b", index=1),
            ],
            "overlap",
        ),
    ],
)
def test_build_gpt_refuses(total: int, entries: list[GptEntry], problem: str) -> None:
    """Tiny disks, entries outside the usable area and overlapping entries are refused."""
    with pytest.raises(LayoutError, match=problem):
        build_gpt(total, entries, DISK_GUID)


def test_read_gpt_image(tmp_path: Path) -> None:
    """read_gpt returns the primary header and both used entries with their slots."""
    image = write_image(tmp_path / "disk.img")
    header, entries = read_image(image)
    assert header.disk_guid == DISK_GUID
    assert header.last_usable_lba == TOTAL_SECTORS - 34
    assert entries == vorteil_entries()
    assert [entry.index for entry in entries] == [0, 1]


def test_read_gpt_array_crc_mismatch(tmp_path: Path) -> None:
    """A changed entry array no longer matches the CRC in the header."""
    image = write_image(tmp_path / "disk.img")
    patch(image, 2 * SECTOR + ENTRY_SIZE + 32, b"\x99")  # root first LBA
    with pytest.raises(LayoutError, match="entry array CRC mismatch") as caught:
        read_image(image)
    assert caught.value.source == str(image)


def test_read_gpt_header_crc_mismatch(tmp_path: Path) -> None:
    """A changed primary header is found by read_gpt."""
    image = write_image(tmp_path / "disk.img")
    patch(image, SECTOR + 40, b"\x23")
    with pytest.raises(LayoutError, match="GPT header CRC mismatch"):
        read_image(image)


def test_read_gpt_blank_disk(tmp_path: Path) -> None:
    """A zeroed disk has no GPT."""
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(64 * SECTOR))
    with pytest.raises(LayoutError, match="no GPT"):
        read_image(image)


@pytest.mark.parametrize(
    ("size", "problem"),
    [(0, "too small for a GPT header"), (1000, "too small for a GPT header")],
)
def test_read_gpt_truncated_header(tmp_path: Path, size: int, problem: str) -> None:
    """An image cut before the end of the header is reported as too small."""
    image = write_image(tmp_path / "disk.img")
    os.truncate(image, size)
    with pytest.raises(LayoutError, match=problem):
        read_image(image)


def test_read_gpt_truncated_array(tmp_path: Path) -> None:
    """An image cut inside the entry array is reported as too small for it."""
    image = write_image(tmp_path / "disk.img")
    os.truncate(image, 4 * SECTOR)
    with pytest.raises(LayoutError, match="too small for the GPT entry array"):
        read_image(image)


def test_read_gpt_not_primary() -> None:
    """A backup header at LBA 1 is not accepted as the primary."""
    _, tail = build_gpt(TOTAL_SECTORS, vorteil_entries(), DISK_GUID)
    disk = bytes(SECTOR) + tail[32 * SECTOR :] + tail[: 32 * SECTOR]
    with pytest.raises(LayoutError, match="at LBA 8191"):
        read_gpt(io.BytesIO(disk))


def test_sgdisk_accepts_image(tmp_path: Path) -> None:
    """sgdisk verifies the image without problems and sees the root's PARTUUID."""
    sgdisk = require_tool("sgdisk")
    image = write_image(tmp_path / "disk.img")

    verify = subprocess.run([sgdisk, "-v", str(image)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "No problems found" in verify.stdout

    info = subprocess.run([sgdisk, "-i", "2", str(image)], capture_output=True, text=True)
    assert info.returncode == 0, info.stdout + info.stderr
    assert f"Partition unique GUID: {str(ROOT_PARTUUID).upper()}" in info.stdout
    assert "Partition name: 'vorteil-root'" in info.stdout


def test_sfdisk_lists_partitions(tmp_path: Path) -> None:
    """sfdisk reads both partitions with the starts and sizes that were written."""
    sfdisk = require_tool("sfdisk")
    image = write_image(tmp_path / "disk.img")
    result = subprocess.run(
        [sfdisk, "--json", str(image)], capture_output=True, text=True, check=True
    )
    table = json.loads(result.stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"] == str(DISK_GUID).upper()
    found = [
        (part["start"], part["size"], part["uuid"], part["name"]) for part in table["partitions"]
    ]
    assert found == [
        (34, OS_LAST_LBA - 33, str(OS_GUID).upper(), "vorteil-os"),
        (
            OS_LAST_LBA + 1,
            TOTAL_SECTORS - 34 - OS_LAST_LBA,
            str(ROOT_PARTUUID).upper(),
            "vorteil-root",
        ),
    ]


@given(st.binary(max_size=700))
def test_fuzz_header_unpack(data: bytes) -> None:
    """Random bytes either decode or raise LayoutError."""
    with contextlib.suppress(LayoutError):
        GptHeader.unpack(data)


@given(
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=700),
    st.binary(min_size=420, max_size=420),
)
def test_fuzz_header_with_valid_crc(revision: int, header_size: int, rest: bytes) -> None:
    """Random fields under a real signature and a matching CRC decode or raise LayoutError."""
    data = bytearray(b"EFI PART" + struct.pack("<II", revision, header_size) + bytes(4) + rest)
    end = min(max(header_size, 92), len(data))
    struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[:end])))
    with contextlib.suppress(LayoutError):
        GptHeader.unpack(bytes(data))


@given(st.binary(max_size=3 * ENTRY_SIZE))
def test_fuzz_entries(data: bytes) -> None:
    """Random entry arrays and entries decode or raise LayoutError."""
    with contextlib.suppress(LayoutError):
        unpack_entries(data)
    with contextlib.suppress(LayoutError):
        GptEntry.unpack(data, index=0)


@given(
    st.binary(max_size=2 * SECTOR),
    st.just(1) | u64,
    st.integers(min_value=0, max_value=8) | u64,
    st.integers(min_value=0, max_value=16) | u32,
    st.just(ENTRY_SIZE) | u32,
    st.binary(max_size=4 * SECTOR),
)
def test_fuzz_read_gpt(
    prefix: bytes, my_lba: int, entries_lba: int, count: int, size: int, tail: bytes
) -> None:
    """read_gpt on random disks, with and without a well-formed header, raises only LayoutError."""
    with contextlib.suppress(LayoutError):
        read_gpt(io.BytesIO(prefix))

    mbr = prefix[:SECTOR].ljust(SECTOR, b"\0")
    array_start = entries_lba * SECTOR - 2 * SECTOR
    array = tail[array_start : array_start + count * size] if array_start >= 0 else b""
    header = GptHeader(my_lba, 0, 0, 0, DISK_GUID, entries_lba, count, size, zlib.crc32(array))
    with contextlib.suppress(LayoutError):
        read_gpt(io.BytesIO(mbr + header.pack() + tail))
