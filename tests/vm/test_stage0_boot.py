"""Stage 0 boots Debian's cloud kernel into a root found by its GPT unique GUID (TCG only)."""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from imagekit.cache import BuildCache
from imagekit.errors import EnvironmentFailure
from imagekit.initramfs import ROOT_GUID, build_initramfs, busybox_static, modules_for
from imagekit.kernel import Kernel, debian_cloud_kernel
from imagekit.tools import require, run

pytestmark = pytest.mark.vm

log = logging.getLogger(__name__)

MARKER = "stage0-ok"
LINUX_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
DISK_BYTES = 32 * 1024 * 1024
ROOT_FIRST_LBA = 8192
BOOT_TIMEOUT = 120.0

# The image's init: says it runs, tells whether the root is writable, powers off.
VINITD = f"""#!/bin/busybox sh
if /bin/busybox touch /probe 2>/dev/null; then access=rw; else access=ro; fi
echo "{MARKER} root-$access"
/bin/busybox poweroff -f
"""


@dataclass(frozen=True)
class Boot:
    """What one boot showed: console text, QEMU's exit status and timings from its start."""

    console: str
    returncode: int
    marker_seconds: float | None
    total_seconds: float


def _skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cache() -> Iterator[BuildCache]:
    with BuildCache() as shared:
        yield shared


@pytest.fixture(scope="module")
def kernel(cache: BuildCache) -> Kernel:
    try:
        for tool in ("qemu-system-x86_64", "sgdisk", "mke2fs", "depmod"):
            require(tool)
        return debian_cloud_kernel(cache)
    except EnvironmentFailure as err:
        _skip_or_fail(err.message)


@pytest.fixture(scope="module")
def busybox(cache: BuildCache) -> Path:
    return busybox_static(cache)


@pytest.fixture(scope="module")
def initrd(
    kernel: Kernel, busybox: Path, cache: BuildCache, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    data = build_initramfs(kernel, modules_for(["rng"]), busybox, mtime=0, cache=cache)
    path = tmp_path_factory.mktemp("initrd") / "initrd.gz"
    path.write_bytes(data)
    log.info("initramfs: %d bytes", len(data))
    return path


def _make_disk(directory: Path, busybox: Path, *, root_guid: str) -> Path:
    """A GPT disk: a small first partition, then an ext4 root with busybox and vinitd."""
    tree = directory / "root"
    for sub in ("bin", "vorteil", "dev"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(busybox, tree / "bin" / "busybox")
    vinitd = tree / "vorteil" / "vinitd"
    vinitd.write_text(VINITD)
    vinitd.chmod(0o755)

    image = directory / "disk.img"
    with image.open("wb") as file:
        file.truncate(DISK_BYTES)
    run(
        [
            "sgdisk",
            "--set-alignment=1",
            f"--new=1:34:{ROOT_FIRST_LBA - 1}",
            f"--new=2:{ROOT_FIRST_LBA}:0",
            f"--partition-guid=2:{root_guid}",
            f"--typecode=2:{LINUX_ROOT_X86_64}",
            str(image),
        ]
    )
    last_lba = DISK_BYTES // 512 - 34
    size_kib = (last_lba - ROOT_FIRST_LBA + 1) * 512 // 1024
    run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-d",
            str(tree),
            "-E",
            f"offset={ROOT_FIRST_LBA * 512}",
            str(image),
            f"{size_kib}k",
        ]
    )
    return image


def _boot(kernel: Kernel, initrd: Path, disk: Path, *, extra_args: str = "") -> Boot:
    """Boot under TCG until QEMU exits; note when the marker appeared on the console."""
    append = (
        f"console=ttyS0 root=PARTUUID={ROOT_GUID} rootfstype=ext4 "
        f"init=/vorteil/vinitd quiet {extra_args}"
    ).strip()
    argv = [
        "qemu-system-x86_64",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "256",
        "-nographic",
        "-no-reboot",
        "-kernel", str(kernel.bzimage),
        "-initrd", str(initrd),
        "-append", append,
        "-drive", f"file={disk},if=virtio,format=raw,snapshot=on",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT
    output = bytearray()
    marker_seconds = None
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"QEMU still running after {BOOT_TIMEOUT:.0f} s:\n{output.decode()}")
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
            if marker_seconds is None and MARKER.encode() in output:
                marker_seconds = time.monotonic() - started
        returncode = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    boot = Boot(
        console=output.decode(errors="replace"),
        returncode=returncode,
        marker_seconds=marker_seconds,
        total_seconds=time.monotonic() - started,
    )
    (disk.parent / "console.log").write_text(boot.console)
    shown = "none" if marker_seconds is None else f"{marker_seconds:.2f} s"
    log.info("boot: marker %s, QEMU exit %.2f s", shown, boot.total_seconds)
    return boot


@pytest.mark.parametrize(("extra_args", "access"), [("", "rw"), ("ro", "ro")])
def test_stage0_mounts_root_and_runs_init(
    kernel: Kernel,
    initrd: Path,
    busybox: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    extra_args: str,
    access: str,
) -> None:
    """The root found by PARTUUID is mounted (ro on request) and /vorteil/vinitd runs as PID 1."""
    disk = _make_disk(tmp_path, busybox, root_guid=ROOT_GUID)
    boot = _boot(kernel, initrd, disk, extra_args=extra_args)
    assert f"{MARKER} root-{access}" in boot.console, boot.console
    assert "stage0:" not in boot.console
    assert boot.returncode == 0
    record_property("marker_seconds", boot.marker_seconds)
    record_property("exit_seconds", boot.total_seconds)


def test_stage0_reports_a_missing_root_and_powers_off(
    kernel: Kernel, initrd: Path, busybox: Path, tmp_path: Path
) -> None:
    """A disk without the root GUID ends in one stage0 line and a clean QEMU exit."""
    disk = _make_disk(tmp_path, busybox, root_guid="11111111-2222-3333-4444-555555555555")
    boot = _boot(kernel, initrd, disk)
    assert f"stage0: root partition {ROOT_GUID} not found on vda" in boot.console
    assert MARKER not in boot.console
    assert "Kernel panic" not in boot.console
    assert boot.returncode == 0
