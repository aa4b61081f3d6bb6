"""vinitd's pre-setup stage in a VM: reading the VCFG, the root's mount options, disk growth."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from imagetools import read_partitions, root_offset, root_partition, superblock, tool
from projects.probe_vm import Probe

from vinitd import gpt, layout
from vmtest import StageFailed

pytestmark = pytest.mark.vm
pytest_plugins = ("projects.probe_vm",)

GROWTH = 64 * 1024 * 1024
GPT_TAIL_SECTORS = 33  # the backup entry array and header after the last usable LBA

PRINT_ROOT = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py statvfs:/"
"""

READ_ONLY = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py writable:/ read:/etc/hostname hostname"
[system]
kernel-args = "ro"
"""


def _patch_vcfg_json(image: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in the image's VCFG JSON, past all checks."""
    assert len(old) == len(new)
    with image.open("r+b") as handle:
        offset, length = layout.read_config_block(handle).json_span()
        handle.seek(offset)
        data = handle.read(length)
        assert old in data, data
        handle.seek(offset)
        handle.write(data.replace(old, new, 1))


def test_an_unparseable_vcfg_fails_pre_setup(probe: Probe) -> None:
    """VCFG JSON that does not parse: pre-setup fails naming the problem; the VM powers off."""
    image = probe.image(PRINT_ROOT)
    _patch_vcfg_json(image, b'"program":[', b'"program";[')
    vm = probe.start(image)

    with pytest.raises(StageFailed) as failed:
        vm.wait_for_stage("launch")
    assert vm.wait_for_shutdown() == 0

    assert failed.value.stage == "pre-setup"
    assert failed.value.message is not None
    assert "(VCFG): not valid JSON: Expecting ':' delimiter" in failed.value.message
    assert re.search(
        r"^\[ERROR\]: \d\d-\d\d \d\d:\d\d:\d\d - can not run pre-setup: .*not valid JSON",
        vm.console,
        re.MULTILINE,
    ), vm.console
    assert [(e.stage, e.state) for e in vm.events if e.type == "stage"] == [
        ("pre-setup", "started"),
        ("pre-setup", "failed"),
    ]
    shutdown = [(e.state, e.get("reason")) for e in vm.events if e.type == "shutdown"]
    assert shutdown == [("begun", "pre-setup failed"), ("synced", None)]
    assert not [e for e in vm.events if e.type == "program"]


def test_a_bigger_disk_grows_the_partition_and_filesystem(probe: Probe) -> None:
    """A copy 64 MiB larger: the GPT, partition 2 and ext4 grow to the disk's end, all clean."""
    image = probe.image(PRINT_ROOT)
    blocks_before = int(superblock(image)["Block count"])
    os.truncate(image, image.stat().st_size + GROWTH)
    vm = probe.start(image, writable=True)

    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    verified = tool(["sgdisk", "-v", str(image)])
    assert "No problems found" in verified.stdout, verified.stdout
    header, _ = read_partitions(image)
    sectors = image.stat().st_size // gpt.SECTOR
    assert header.alternate_lba == sectors - 1
    assert header.last_usable_lba == sectors - 1 - GPT_TAIL_SECTORS
    root = root_partition(image)
    assert root.last_lba == header.last_usable_lba
    fields = superblock(image)
    block_size = int(fields["Block size"])
    blocks = int(fields["Block count"])
    assert blocks > blocks_before
    assert blocks == (root.last_lba - root.first_lba + 1) * gpt.SECTOR // block_size
    checked = tool(["e2fsck", "-fn", f"{image}?offset={root_offset(image)}"], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert probe.fact(vm, "statvfs", "/")["bytes"] > blocks_before * block_size


def test_a_read_only_root_still_runs_the_program(probe: Probe) -> None:
    """kernel-args "ro": the root stays read-only, /etc is not written, the program runs."""
    vm = probe.start(probe.image(READ_ONLY))

    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    assert probe.fact(vm, "writable", "/") == {
        "writable": False,
        "error": "Read-only file system",
    }
    assert probe.fact(vm, "read", "/etc/hostname") == {"error": "No such file or directory"}
    assert re.fullmatch(r"vorteil-[a-z0-9-]{8}", probe.fact(vm, "hostname"))
