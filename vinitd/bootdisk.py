"""Find the boot disk on a stock kernel, which has no /proc/bootdev.

The kernel does not report PARTUUIDs in sysfs and there is no udev for /dev/disk/by-partuuid,
so every whole disk's GPT is read until one has the vorteil root PARTUUID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vinitd import console
from vinitd.errors import BootDiskNotFound, LayoutError
from vinitd.gpt import read_gpt
from vinitd.layout import ROOT_PARTUUID, read_vcfg_json

# Devices that never hold the boot disk; reading a floppy or CD-ROM can also take seconds.
SKIPPED_PREFIXES = ("loop", "ram", "zram", "sr", "fd")


@dataclass(frozen=True)
class BootDisk:
    """The whole disk holding the root partition, and that partition's device node."""

    disk: Path
    root_partition: Path
    root_index: int  # slot in the GPT entry array; the partition number is one more


def partition_name(disk: str, number: int) -> str:
    """Return the kernel's name for partition `number` of `disk`: vda2, nvme0n1p2."""
    separator = "p" if disk[-1:].isdigit() else ""
    return f"{disk}{separator}{number}"


def find_boot_disk(
    *, sys_block: Path = Path("/sys/class/block"), dev: Path = Path("/dev")
) -> BootDisk:
    """Return the disk whose GPT has an entry with the vorteil root PARTUUID.

    Whole disks are the entries of `sys_block` without a `partition` file, except loop, RAM,
    zram, CD-ROM and floppy devices. Each is opened read-only as `dev/<name>`; disks that
    cannot be read or have no valid GPT are passed over. Disks are tried in name order and
    the first match wins, so a second disk with the same PARTUUID is not noticed.
    """
    try:
        names = sorted(entry.name for entry in sys_block.iterdir())
    except OSError as err:
        raise BootDiskNotFound(f"cannot list block devices: {err}", source=str(sys_block)) from err

    examined: list[str] = []
    for name in names:
        if name.startswith(SKIPPED_PREFIXES) or (sys_block / name / "partition").exists():
            continue

        disk = dev / name
        try:
            with disk.open("rb") as fileobj:
                _, entries = read_gpt(fileobj, source=str(disk))
        except (OSError, LayoutError) as err:
            console.debug(f"{disk}: not the boot disk: {err}")
            examined.append(f"{name} ({_reason(err)})")
            continue

        for entry in entries:
            if entry.unique_guid == ROOT_PARTUUID:
                root = dev / partition_name(name, entry.index + 1)
                console.debug(f"boot disk {disk}, root partition {root}")
                return BootDisk(disk=disk, root_partition=root, root_index=entry.index)
        console.debug(f"{disk}: GPT without the root PARTUUID")
        examined.append(f"{name} (no root partition)")

    raise BootDiskNotFound(
        f"no disk has a partition with PARTUUID {str(ROOT_PARTUUID).upper()} "
        f"(examined: {', '.join(examined) or 'none'})",
        source=str(sys_block),
    )


def _reason(err: OSError | LayoutError) -> str:
    if isinstance(err, LayoutError):
        return err.problem
    return err.strerror or str(err)


def read_vcfg_from_disk(disk: Path) -> bytes:
    """Return the VCFG JSON bytes of the whole disk `disk` (see `layout.read_vcfg_json`)."""
    with disk.open("rb") as fileobj:
        return read_vcfg_json(fileobj, source=str(disk))
