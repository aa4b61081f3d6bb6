"""``imagekit inspect``: what an image holds, read back from its bytes.

The partition table is read twice, by `vinitd.gpt.read_gpt` and independently by libparted
(through pyparted); a difference between the two is listed under the problems, not hidden.
libparted takes a zero type GUID to mean "unused", so it never lists vorteil's OS partition;
that is a note, not a problem. A qcow2 image is converted to a temporary raw file with
``qemu-img convert`` first (see `imagekit.imagefile.raw_image`). A file without the vorteil
layout is refused with one line (LayoutError or UserError); damage found past the layout
(a bad backup GPT, an unreadable filesystem, a VCFG that is not valid) is reported as a problem.

``--json`` prints one object with these keys (GUIDs upper case, LBAs inclusive, offsets
absolute byte positions on the raw disk unless said otherwise):

    image            {"path", "format": "raw" | "qcow2", "size": bytes of the raw disk,
                      "sectors"}
    partition_table  {"type": "gpt", "disk_guid", "first_usable_lba", "last_usable_lba",
                      "partitions": [{"index": GPT slot, "number": index + 1, "name",
                                      "first_lba", "last_lba", "sectors", "size": bytes,
                                      "type_guid", "unique_guid",
                                      "libparted": whether libparted lists it}],
                      "cross_check": {"reader": "libparted X (pyparted Y)",
                                      "agrees": true when the two readers agree,
                                      "notes": [explained differences]}}
    config_block     {"offset": 17408, "version", "config_offset": relative to the OS
                      partition, as stored, "config_len", "config_capacity",
                      "config_area": [first byte, end byte] the VCFG may use}
    kernel_args      the kernel command line stored in the config block
    bundle           [{"name", "offset": of the member's data, "size"}] in stream order
    vcfg             the VCFG JSON as stored, decoded (null when it is not JSON)
    filesystem       {"type": "ext2" | "ext3" | "ext4", "offset", "block_size", "blocks",
                      "free_blocks", "inodes", "free_inodes", "uuid", "label", "state"}
                     from ``dumpe2fs -h``, or null when it cannot be read
    problems         [one line per problem found]; empty for a healthy image
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.errors import ImagekitError
from imagekit.imagefile import (
    FilesystemSummary,
    ImageLayout,
    RawImage,
    raw_image,
    read_filesystem,
    read_image_layout,
)
from vinitd import gpt, layout
from vinitd.errors import ConfigError, LayoutError
from vinitd.vcfg import codec, validate

log = logging.getLogger(__name__)

Report = dict[str, Any]


@dataclass(frozen=True)
class SeenPartition:
    """A partition as libparted lists it."""

    number: int
    name: str
    first_lba: int
    last_lba: int


@dataclass(frozen=True)
class CrossCheck:
    reader: str
    agrees: bool
    seen: frozenset[int]
    notes: tuple[str, ...]
    differences: tuple[str, ...]


def inspect_image(path: Path) -> Report:
    """The report on the image at ``path`` (see the module docstring for its keys)."""
    with raw_image(path) as image:
        found = read_image_layout(image)
        check = cross_check(image.raw, found)
        problems = [*check.differences, *_backup_problems(image, found)]
        filesystem = _filesystem(image, found, problems)
    vcfg = _vcfg(found.vcfg_json, problems, source=image.source)
    return {
        "image": {
            "path": str(path),
            "format": str(image.image_format),
            "size": found.size,
            "sectors": found.size // gpt.SECTOR,
        },
        "partition_table": _partition_table(found, check),
        "config_block": {
            "offset": layout.CONFIG_BLOCK_OFFSET,
            "version": found.block.version,
            "config_offset": found.block.config_offset,
            "config_len": found.block.config_len,
            "config_capacity": found.block.config_capacity,
            "config_area": list(found.config_area),
        },
        "kernel_args": found.block.kernel_args,
        "bundle": [
            {"name": member.name, "offset": member.offset, "size": member.size}
            for member in found.members
        ],
        "vcfg": vcfg,
        "filesystem": None if filesystem is None else _filesystem_json(filesystem, found),
        "problems": problems,
    }


def stored_json(data: bytes, *, source: str) -> Any:
    """The stored VCFG bytes decoded as JSON, keys in their stored order."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise LayoutError(f"the VCFG on the disk is not valid JSON: {err}", source=source) from None


def _guid(value: object) -> str:
    return str(value).upper()


def _partition_table(found: ImageLayout, check: CrossCheck) -> Report:
    header = found.header
    return {
        "type": "gpt",
        "disk_guid": _guid(header.disk_guid),
        "first_usable_lba": header.first_usable_lba,
        "last_usable_lba": header.last_usable_lba,
        "partitions": [
            {
                "index": entry.index,
                "number": entry.index + 1,
                "name": entry.name,
                "first_lba": entry.first_lba,
                "last_lba": entry.last_lba,
                "sectors": entry.last_lba - entry.first_lba + 1,
                "size": (entry.last_lba - entry.first_lba + 1) * gpt.SECTOR,
                "type_guid": _guid(entry.type_guid),
                "unique_guid": _guid(entry.unique_guid),
                "libparted": entry.index + 1 in check.seen,
            }
            for entry in found.entries
        ],
        "cross_check": {"reader": check.reader, "agrees": check.agrees, "notes": list(check.notes)},
    }


def cross_check(raw: Path, found: ImageLayout) -> CrossCheck:
    """Read the partition table again with libparted and compare it with ``found``."""
    try:
        import parted
    except ImportError:
        return CrossCheck("libparted", False, frozenset(), (), ("pyparted is not installed",))
    versions = parted.version()
    pyparted = ".".join(str(part) for part in versions["pyparted"])
    reader = f"libparted {versions['libparted']} (pyparted {pyparted})"
    try:
        device = parted.getDevice(str(raw))
    except Exception as err:  # libparted's errors are a dozen unrelated _ped classes
        return _unreadable(reader, err)
    try:
        disk = parted.newDisk(device)
        label = disk.type
        sectors = device.length * device.sectorSize // gpt.SECTOR
        seen = [
            SeenPartition(part.number, part.name, part.geometry.start, part.geometry.end)
            for part in disk.partitions
        ]
    except Exception as err:  # as above
        return _unreadable(reader, err)
    finally:
        device.removeFromCache()

    differences, notes = compare_partitions(found.entries, seen)
    if label != "gpt":
        differences.insert(0, f"libparted reads a {label!r} partition table, not a GPT")
    if sectors != found.size // gpt.SECTOR:
        differences.append(
            f"libparted sees {sectors} sectors, the file has {found.size // gpt.SECTOR}"
        )
    return CrossCheck(
        reader,
        not differences,
        frozenset(part.number for part in seen),
        tuple(notes),
        tuple(differences),
    )


def _unreadable(reader: str, err: Exception) -> CrossCheck:
    problem = f"libparted cannot read the partition table: {err}"
    return CrossCheck(reader, False, frozenset(), (), (problem,))


def compare_partitions(
    entries: Sequence[gpt.GptEntry], seen: Sequence[SeenPartition]
) -> tuple[list[str], list[str]]:
    """Differences and explained notes between the GPT entries and libparted's partitions."""
    differences: list[str] = []
    notes: list[str] = []
    by_number = {part.number: part for part in seen}
    for entry in entries:
        number = entry.index + 1
        other = by_number.pop(number, None)
        if other is None and entry.type_guid.int == 0:
            notes.append(
                f"libparted does not list partition {number} ({entry.name}): "
                "its type GUID is zero, which means unused to libparted"
            )
        elif other is None:
            differences.append(f"libparted does not list partition {number} ({entry.name})")
        else:
            for what, ours, theirs in (
                ("name", entry.name, other.name),
                ("first LBA", entry.first_lba, other.first_lba),
                ("last LBA", entry.last_lba, other.last_lba),
            ):
                if ours != theirs:
                    differences.append(
                        f"partition {number}: {what} is {ours!r} in the GPT "
                        f"but {theirs!r} for libparted"
                    )
    for other in by_number.values():
        differences.append(
            f"libparted lists a partition {other.number} ({other.name}, LBA "
            f"{other.first_lba}..{other.last_lba}) that the GPT does not have"
        )
    return differences, notes


def _backup_problems(image: RawImage, found: ImageLayout) -> list[str]:
    """The backup GPT must sit at the last sector and match the primary."""
    primary = found.header
    last_lba = found.size // gpt.SECTOR - 1
    problems = []
    if primary.alternate_lba != last_lba:
        problems.append(
            f"the GPT says its backup is at LBA {primary.alternate_lba}, but the last LBA is "
            f"{last_lba} (was the file resized?)"
        )
    try:
        with image.raw.open("rb") as handle:
            sector = gpt.read_at(
                handle, primary.alternate_lba * gpt.SECTOR, gpt.SECTOR, what="backup header"
            )
            backup = gpt.GptHeader.unpack(sector)
            array_size = backup.entry_count * backup.entry_size
            if array_size > gpt.MAX_ENTRY_ARRAY_BYTES:
                return [*problems, f"backup GPT: it claims {backup.entry_count} entries"]
            array = gpt.read_at(
                handle,
                backup.entries_lba * gpt.SECTOR,
                array_size,
                what="backup entry array",
            )
    except LayoutError as err:
        return [*problems, f"backup GPT: {err.problem}"]
    if (backup.disk_guid, backup.entries_crc) != (primary.disk_guid, primary.entries_crc):
        problems.append("the backup GPT header does not match the primary")
    if zlib.crc32(array) != backup.entries_crc:
        problems.append("the backup GPT entry array does not match its CRC")
    return problems


def _filesystem(
    image: RawImage, found: ImageLayout, problems: list[str]
) -> FilesystemSummary | None:
    try:
        summary = read_filesystem(image.raw, found.root_offset, source=image.source)
    except LayoutError as err:
        problems.append(f"root filesystem: {err.problem}")
        return None
    except ImagekitError as err:
        problems.append(f"root filesystem: {err.message}")
        return None
    if summary.state != "clean":
        problems.append(f"root filesystem state is {summary.state!r}, not 'clean'")
    return summary


def _filesystem_json(summary: FilesystemSummary, found: ImageLayout) -> Report:
    return {
        "type": summary.type,
        "offset": found.root_offset,
        "block_size": summary.block_size,
        "blocks": summary.blocks,
        "free_blocks": summary.free_blocks,
        "inodes": summary.inodes,
        "free_inodes": summary.free_inodes,
        "uuid": summary.uuid,
        "label": summary.label,
        "state": summary.state,
    }


def _vcfg(data: bytes, problems: list[str], *, source: str) -> Any:
    """The stored JSON decoded; a VCFG that does not decode or validate adds problems."""
    try:
        decoded = stored_json(data, source=source)
    except LayoutError as err:
        problems.append(err.problem)
        return None
    try:
        vcfg = codec.from_json_object(decoded)
    except ConfigError as err:
        problems.append(f"the VCFG does not decode: {err}")
        return decoded
    problems += [f"the VCFG is not valid: {problem}" for problem in validate.problems(vcfg)]
    return decoded


def render_text(report: Report) -> str:
    """The report as aligned text for a person."""
    lines: list[str] = []
    image = report["image"]
    lines.append(
        f"image {image['path']}: {image['format']}, {_human(image['size'])} "
        f"({image['sectors']} sectors)"
    )
    lines += ["", *_table_lines(report["partition_table"])]
    block = report["config_block"]
    area_start, area_end = block["config_area"]
    json_start = block["offset"] + block["config_offset"]
    lines += [
        "",
        f"config block (byte {block['offset']})",
        *_pairs(
            [
                ("version", block["version"]),
                ("ConfigOffset", f"{block['config_offset']} (byte {json_start})"),
                ("ConfigLen", str(block["config_len"])),
                ("ConfigCapacity", str(block["config_capacity"])),
                ("config area", f"bytes {area_start}..{area_end}"),
            ]
        ),
    ]
    lines += ["", "kernel command line", f"  {report['kernel_args']}"]
    lines += ["", f"kernel bundle (LBA {layout.BUNDLE_LBA})"]
    width = max(len(member["name"]) for member in report["bundle"])
    for member in report["bundle"]:
        lines.append(
            f"  {member['name']:<{width}}  {_human(member['size']):>10}  "
            f"{member['size']} bytes at byte {member['offset']}"
        )
    lines += ["", *_filesystem_lines(report["filesystem"])]
    lines += ["", f"VCFG ({block['config_len']} bytes)"]
    if report["vcfg"] is None:
        lines.append("  (not JSON)")
    else:
        pretty = json.dumps(report["vcfg"], indent=2, ensure_ascii=False)
        lines += [f"  {line}" for line in pretty.splitlines()]
    lines.append("")
    if report["problems"]:
        lines.append("problems")
        lines += [f"  {problem}" for problem in report["problems"]]
    else:
        lines.append("problems: none")
    return "\n".join(lines) + "\n"


def _table_lines(table: Report) -> list[str]:
    lines = [
        f"partition table: GPT, disk GUID {table['disk_guid']}, "
        f"usable LBA {table['first_usable_lba']}..{table['last_usable_lba']}"
    ]
    rows = [("#", "name", "first LBA", "last LBA", "size", "type GUID", "unique GUID")]
    for part in table["partitions"]:
        rows.append(
            (
                str(part["number"]),
                part["name"],
                str(part["first_lba"]),
                str(part["last_lba"]),
                _human(part["size"]),
                part["type_guid"],
                part["unique_guid"],
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    right = {0, 2, 3, 4}
    for row in rows:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    check = table["cross_check"]
    verdict = "agrees" if check["agrees"] else "DISAGREES (see problems)"
    lines.append(f"  cross-check: {check['reader']} {verdict}")
    lines += [f"  note: {note}" for note in check["notes"]]
    return lines


def _filesystem_lines(filesystem: Report | None) -> list[str]:
    if filesystem is None:
        return ["root filesystem: unreadable (see problems)"]
    return [
        f"root filesystem: {filesystem['type']} at byte {filesystem['offset']}",
        *_pairs(
            [
                ("label", filesystem["label"] or "(none)"),
                ("UUID", filesystem["uuid"] or "(none)"),
                ("state", filesystem["state"]),
                ("block size", str(filesystem["block_size"])),
                ("blocks", f"{filesystem['blocks']} ({filesystem['free_blocks']} free)"),
                ("inodes", f"{filesystem['inodes']} ({filesystem['free_inodes']} free)"),
            ]
        ),
    ]


def _pairs(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(key) for key, _ in pairs)
    return [f"  {key:<{width}}  {value}" for key, value in pairs]


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
