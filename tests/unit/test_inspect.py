"""imagekit inspect on examples/hello, checked against sgdisk, dumpe2fs and the bundle reader.

examples/hello is built once per test run; tests that damage an image work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from imagetools import built_hello

from imagekit import config
from imagekit.errors import EnvironmentFailure
from imagekit.inspect import SeenPartition, compare_partitions
from imagekit.tools import require
from vinitd import bundle, gpt, layout

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
TOOLS = ("mke2fs", "e2fsck", "debugfs", "dumpe2fs", "fakeroot", "sgdisk", "qemu-img")
ROOT_PARTUUID = "4048447D-C09D-D111-B245-5FFDCE74FAD2"


def require_tools() -> None:
    for tool in TOOLS:
        try:
            require(tool)
        except EnvironmentFailure as err:
            pytest.skip(f"{err.message} ({err.hint})")


@pytest.fixture(scope="session")
def hello_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello, built once per test run for every test module that needs it."""
    return built_hello(request.config, tmp_path_factory).path


@pytest.fixture(scope="session")
def report(hello_image: Path) -> dict[str, Any]:
    result = imagekit("inspect", "--json", str(hello_image))
    assert result.returncode == 0, result.stderr
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


def imagekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def host_tool(*argv: str) -> str:
    return subprocess.run(
        [require(argv[0]), *argv[1:]], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_has_every_section(report: dict[str, Any]) -> None:
    """--json prints one object with the documented keys and no problems."""
    assert list(report) == [
        "image",
        "partition_table",
        "config_block",
        "kernel_args",
        "bundle",
        "vcfg",
        "filesystem",
        "problems",
    ]
    assert report["image"]["format"] == "raw"
    assert report["image"]["size"] == report["image"]["sectors"] * 512
    assert report["problems"] == []


def test_partition_starts_match_sgdisk(report: dict[str, Any], hello_image: Path) -> None:
    """Both partitions start and end where sgdisk -p says; sgdisk -i 2 gives the same GUIDs."""
    table = host_tool("sgdisk", "-p", str(hello_image))
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s.*\s(\S+)$", table, re.MULTILINE)
    expected = [(int(n), int(first), int(last), name) for n, first, last, name in rows]
    partitions = report["partition_table"]["partitions"]
    found = [(p["number"], p["first_lba"], p["last_lba"], p["name"]) for p in partitions]
    assert found == expected

    root = host_tool("sgdisk", "-i", "2", str(hello_image))
    assert f"First sector: {partitions[1]['first_lba']} " in root
    assert f"Partition unique GUID: {partitions[1]['unique_guid']}" in root
    assert f"Partition GUID code: {partitions[1]['type_guid']} " in root


def test_partitions_have_the_vorteil_identity(report: dict[str, Any]) -> None:
    """Slot 0 is vorteil-os at LBA 34 (type Linux reserved); slot 1 carries the fixed PARTUUID."""
    os_part, root = report["partition_table"]["partitions"]
    assert (os_part["index"], os_part["name"], os_part["first_lba"]) == (0, "vorteil-os", 34)
    assert os_part["type_guid"] == str(layout.OS_TYPE_GUID).upper()
    assert (root["index"], root["name"]) == (1, "vorteil-root")
    assert root["unique_guid"] == ROOT_PARTUUID
    assert root["size"] == root["sectors"] * 512 == (root["last_lba"] - root["first_lba"] + 1) * 512
    assert root["last_lba"] == report["partition_table"]["last_usable_lba"]


def test_libparted_agrees(report: dict[str, Any]) -> None:
    """libparted reads the same table, both partitions, with nothing to note."""
    table = report["partition_table"]
    assert table["cross_check"]["agrees"] is True
    assert table["cross_check"]["reader"].startswith("libparted 3.5 (pyparted 3.13.0)")
    assert [p["libparted"] for p in table["partitions"]] == [True, True]
    assert table["cross_check"]["notes"] == []


def test_config_block_and_kernel_args(report: dict[str, Any], hello_image: Path) -> None:
    """The config block fields and the command line are those vinitd's reader finds."""
    with hello_image.open("rb") as handle:
        block = layout.read_config_block(handle)
    fields = report["config_block"]
    assert fields["offset"] == 17408
    assert fields["version"] == "1.0.0"
    assert fields["config_offset"] == block.config_offset
    assert fields["config_len"] == block.config_len
    assert fields["config_capacity"] == block.config_capacity
    assert fields["config_area"] == [
        17408 + block.config_offset,
        17408 + block.config_offset + block.config_capacity,
    ]
    assert report["kernel_args"] == block.kernel_args
    assert f"root=PARTUUID={ROOT_PARTUUID}" in report["kernel_args"]


def test_bundle_members(report: dict[str, Any], hello_image: Path) -> None:
    """The bundle holds linux then initrd, at the offsets and sizes of the bundle reader."""
    with hello_image.open("rb") as handle:
        members = bundle.read_bundle(handle)
    assert [m["name"] for m in report["bundle"]] == ["linux", "initrd"]
    assert report["bundle"] == [
        {"name": m.name, "offset": m.offset, "size": m.size} for m in members
    ]
    assert report["bundle"][0]["offset"] == 67 * 512


def test_vcfg_is_the_rendered_config(report: dict[str, Any]) -> None:
    """The decoded VCFG is what `config render examples/hello` produces, key order kept."""
    rendered = json.loads(config.resolve(str(HELLO)).json())
    assert report["vcfg"] == rendered
    assert list(report["vcfg"]) == list(rendered)
    assert report["vcfg"]["program"][0]["binary"] == "/usr/bin/python3"


def test_filesystem_summary_matches_dumpe2fs(report: dict[str, Any], hello_image: Path) -> None:
    """The ext4 summary is the superblock dumpe2fs prints for the root partition."""
    offset = report["partition_table"]["partitions"][1]["first_lba"] * 512
    output = host_tool("dumpe2fs", "-h", f"{hello_image}?offset={offset}")
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in output.splitlines())
    )
    assert report["filesystem"] == {
        "type": "ext4",
        "offset": offset,
        "block_size": 4096,
        "blocks": int(fields["Block count"]),
        "free_blocks": int(fields["Free blocks"]),
        "inodes": int(fields["Inode count"]),
        "free_inodes": int(fields["Free inodes"]),
        "uuid": fields["Filesystem UUID"],
        "label": "vorteil-root",
        "state": "clean",
    }


def test_text_report(hello_image: Path, report: dict[str, Any]) -> None:
    """The text report names every part, and the partition table's columns line up."""
    result = imagekit("inspect", str(hello_image))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for expected in (
        "vorteil-os",
        "vorteil-root",
        ROOT_PARTUUID,
        "cross-check: libparted 3.5",
        "agrees",
        "version         1.0.0",
        report["kernel_args"],
        "root filesystem: ext4",
        '"binary": "/usr/bin/python3"',
        "problems: none",
    ):
        assert expected in text
    lines = text.splitlines()
    header = next(line for line in lines if "type GUID" in line)
    rows = [line for line in lines if "vorteil-os " in line or "vorteil-root " in line]
    assert len(rows) == 2
    for column in ("type GUID", "unique GUID"):
        assert {row[header.index(column) - 1] for row in rows} == {" "}
    assert re.search(r"^  linux\s+\d+\.\d MiB\s+\d+ bytes at byte 34304$", text, re.MULTILINE)
    assert re.search(r"^  initrd\s", text, re.MULTILINE)


def test_inspect_does_not_change_the_image(hello_image: Path) -> None:
    """Reading with libparted, dumpe2fs and the layout reader leaves every byte alone."""
    before = sha256(hello_image)
    assert imagekit("inspect", str(hello_image)).returncode == 0
    assert sha256(hello_image) == before


def test_qcow2_is_inspected_through_a_raw_copy(
    hello_image: Path, report: dict[str, Any], tmp_path: Path
) -> None:
    """A qcow2 image reports the same content as the raw image it was converted from."""
    qcow2 = tmp_path / "hello.qcow2"
    host_tool("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(hello_image), str(qcow2))
    result = imagekit("inspect", "--json", str(qcow2))
    assert result.returncode == 0, result.stderr
    converted = json.loads(result.stdout)
    assert converted["image"] == {**report["image"], "path": str(qcow2), "format": "qcow2"}
    for key in ("partition_table", "config_block", "kernel_args", "bundle", "vcfg", "problems"):
        assert converted[key] == report[key]


def test_damaged_backup_gpt_is_a_reported_disagreement(hello_image: Path, tmp_path: Path) -> None:
    """A broken backup header: inspect still reports, libparted's refusal is listed."""
    image = tmp_path / "damaged.raw"
    shutil.copyfile(hello_image, image)
    with image.open("r+b") as handle:
        handle.seek(-512, 2)
        handle.write(b"XXXXXXXX")
    result = imagekit("inspect", "--json", str(image))
    assert result.returncode == 0, result.stderr
    damaged = json.loads(result.stdout)
    assert damaged["partition_table"]["cross_check"]["agrees"] is False
    assert any(p.startswith("libparted cannot read") for p in damaged["problems"])
    assert any(p.startswith("backup GPT:") for p in damaged["problems"])
    text = imagekit("inspect", str(image)).stdout
    assert "DISAGREES" in text
    assert "problems\n  libparted cannot read" in text


def _entry(
    index: int, first: int, last: int, name: str, *, zero_type: bool = False
) -> gpt.GptEntry:
    return gpt.GptEntry(
        type_guid=uuid.UUID(int=0 if zero_type else 1),
        unique_guid=uuid.UUID(int=index + 2),
        first_lba=first,
        last_lba=last,
        attributes=0,
        name=name,
        index=index,
    )


def test_compare_partitions_agreeing() -> None:
    """Same partitions: no difference; a zero-type entry libparted skips is only a note."""
    entries = [_entry(0, 34, 99, "os", zero_type=True), _entry(1, 100, 199, "root")]
    differences, notes = compare_partitions(entries, [SeenPartition(2, "root", 100, 199)])
    assert differences == []
    assert len(notes) == 1


def test_compare_partitions_reports_each_difference() -> None:
    """A moved start, a renamed, a missing and an extra partition are each one line."""
    entries = [_entry(0, 34, 99, "os"), _entry(1, 100, 199, "root"), _entry(2, 200, 299, "data")]
    seen = [
        SeenPartition(2, "root", 104, 199),
        SeenPartition(3, "other", 200, 299),
        SeenPartition(5, "ghost", 300, 399),
    ]
    differences, notes = compare_partitions(entries, seen)
    assert notes == []
    assert differences == [
        "libparted does not list partition 1 (os)",
        "partition 2: first LBA is 100 in the GPT but 104 for libparted",
        "partition 3: name is 'data' in the GPT but 'other' for libparted",
        "libparted lists a partition 5 (ghost, LBA 300..399) that the GPT does not have",
    ]


def _plain_gpt(path: Path) -> None:
    """A 4 MiB GPT disk with one data partition: a disk, but not a vorteil image."""
    sectors = 8192
    entry = _entry(0, 2048, 4095, "data")
    head, tail = gpt.build_gpt(sectors, [entry], uuid.UUID(int=9))
    with path.open("wb") as handle:
        handle.truncate(sectors * 512)
        handle.write(head)
        handle.seek(-len(tail), 2)
        handle.write(tail)


def _vorteil_gpt_without_config(path: Path) -> None:
    """The vorteil partitions, but nothing written inside them."""
    sectors = 8192
    os_entry = _entry(0, 34, 1023, "vorteil-os", zero_type=True)
    root = gpt.GptEntry(
        type_guid=layout.ROOT_TYPE_GUID,
        unique_guid=layout.ROOT_PARTUUID,
        first_lba=1024,
        last_lba=sectors - 34,
        attributes=0,
        name="vorteil-root",
        index=1,
    )
    head, tail = gpt.build_gpt(sectors, [os_entry, root], uuid.UUID(int=9))
    with path.open("wb") as handle:
        handle.truncate(sectors * 512)
        handle.write(head)
        handle.seek(-len(tail), 2)
        handle.write(tail)


BAD_IMAGES: dict[str, Callable[[Path], object]] = {
    "random bytes": lambda path: path.write_bytes(random.Random(7).randbytes(1 << 20)),
    "empty file": lambda path: path.write_bytes(b""),
    "tiny file": lambda path: path.write_bytes(b"\0" * 100),
    "missing file": lambda path: None,
    "directory": lambda path: path.mkdir(),
    "plain GPT disk": _plain_gpt,
    "vorteil GPT without config block": _vorteil_gpt_without_config,
    "broken qcow2": lambda path: path.write_bytes(b"QFI\xfb" + bytes(1020)),
}
COMMANDS = {
    "inspect": ("inspect", "{image}"),
    "inspect --json": ("inspect", "--json", "{image}"),
    "config get": ("config", "get", "{image}"),
    "config set": ("config", "set", "{image}", str(HELLO)),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_one_line_exit_2(tmp_path: Path, kind: str, command: str) -> None:
    """Something that is no vorteil image: exit 2, one line naming it, no traceback."""
    if kind == "broken qcow2":
        require_tools()
    image = tmp_path / "disk.img"
    BAD_IMAGES[kind](image)
    before = sha256(image) if image.is_file() else None
    argv = [part.format(image=image) for part in COMMANDS[command]]
    result = imagekit(*argv)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"imagekit: {image}: ")
    if before is not None:
        assert sha256(image) == before
