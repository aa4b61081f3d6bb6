"""Building a disk image: the vorteil layout on a stock kernel (docs/image-layout.md).

    LBA 0        protective MBR
    LBA 1..33    primary GPT header and entry array
    LBA 34       partition 1 "vorteil-os": config block (32 sectors), kernel bundle at LBA 66
                 (kernel, then initramfs), the VCFG JSON, reserved sectors
    ...          partition 2 "vorteil-root": ext4 (or ext2), the root PARTUUID, last on disk
    N-33..N-1    backup entry array and header

The image is written to a temporary file beside the output and renamed into place only once
it is complete, so a failed build never leaves a half-written image at the output path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imagekit import config as config_pipeline
from imagekit.binaries import check_programs, in_tree
from imagekit.cache import BuildCache
from imagekit.cmdline import kernel_command_line, root_filesystem
from imagekit.errors import UserError
from imagekit.guest import build_guest
from imagekit.initramfs import build_initramfs, busybox_static, module_closure, modules_for
from imagekit.kernel import Kernel, debian_cloud_kernel, kernel_from_dir
from imagekit.project import FileEntry
from imagekit.rootfs import (
    FREE_SPACE,
    FilesystemFull,
    FilesystemSpec,
    StagedTree,
    estimate_bytes,
    free_bytes,
    make_filesystem,
    minimum_inodes,
    set_owners,
    stage_root,
    work_directory,
)
from imagekit.runtime import build_runtime
from imagekit.tools import run
from vinitd import bundle, gpt, layout
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG

log = logging.getLogger(__name__)

ALIGN_BYTES = 2 << 20  # images are rounded up to 2 MiB, as vorteil's raw images are
ROOT_ALIGN_SECTORS = 8  # the root filesystem starts on a 4 KiB boundary
MIN_JSON_SECTORS = 8  # 4 KiB for the VCFG, so `config set` can grow it in place
FORMATS = ("raw", "qcow2")
# Module sets the initramfs always carries: disk, entropy, event port, power button, NICs.
MODULE_SETS = ("rng", "console", "power", "network")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    spec: str | None
    output: Path
    vcfgs: tuple[Path, ...] = ()
    image_format: str = "raw"
    kernel_dir: Path | None = None
    force: bool = False
    source_date_epoch: int | None = None


@dataclass(frozen=True)
class PartSizes:
    """Bytes of each part of the image, for the closing line and the benchmark."""

    kernel: int
    initramfs: int
    runtime: int
    app: int
    filesystem: int
    total: int


@dataclass(frozen=True)
class BuildResult:
    path: Path
    size: int
    allocated: int
    parts: PartSizes
    kernel_args: str


@dataclass(frozen=True)
class OsPlan:
    """Where things go in partition 1, in sectors."""

    bundle_sectors: int
    json_sectors: int
    last_lba: int

    @property
    def json_lba(self) -> int:
        return layout.BUNDLE_LBA + self.bundle_sectors

    @property
    def capacity_bytes(self) -> int:
        return (self.last_lba - self.json_lba + 1) * gpt.SECTOR


def plan_os(bundle_bytes: int, json_bytes: int) -> OsPlan:
    bundle_sectors = -(-bundle_bytes // gpt.SECTOR)
    json_sectors = max(-(-json_bytes // gpt.SECTOR), MIN_JSON_SECTORS)
    last = layout.BUNDLE_LBA + bundle_sectors + json_sectors + layout.OS_RESERVED_SECTORS - 1
    last += (-(last + 1)) % ROOT_ALIGN_SECTORS  # so the root starts 4 KiB aligned
    return OsPlan(bundle_sectors, json_sectors, last)


def build(
    request: BuildRequest, *, cache: BuildCache, progress: Progress = log.info
) -> BuildResult:
    """Build ``request.output``; see the module docstring for the layout."""
    if request.image_format not in FORMATS:
        raise UserError(f"unknown format {request.image_format!r}", hint="raw or qcow2")
    if request.output.exists() and not request.force:
        raise UserError(f"{request.output} exists", hint="pass --force to replace it")
    if request.output.is_dir():
        raise UserError(f"{request.output} is a directory")
    resolved = config_pipeline.resolve(request.spec, request.vcfgs, image_format="raw")
    vcfg = resolved.vcfg
    app_files: list[FileEntry] = []
    if resolved.project is not None and resolved.target is not None:
        app_files = list(resolved.project.files(resolved.target))

    progress("kernel")
    kernel = (
        kernel_from_dir(request.kernel_dir, cache=cache)
        if request.kernel_dir
        else debian_cloud_kernel(cache)
    )
    progress("initramfs")
    initramfs = _initramfs(kernel, vcfg, cache, request.source_date_epoch or 0)
    progress("guest runtime")
    runtime = build_runtime(cache)
    guest = build_guest(cache)

    work_root = request.output.parent.resolve() / ".imagekit-work"
    work = work_directory(work_root)
    try:
        progress("root filesystem tree")
        staged = stage_root(work, runtime=runtime.tree, guest=guest, app_files=app_files)
        check_programs(vcfg, in_tree(staged.path))
        kernel_bytes = kernel.bzimage.read_bytes()
        return _write(
            request, vcfg, staged, work, kernel_bytes, initramfs, runtime.size_bytes, progress
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work_root.rmdir()  # kept while another build in the same directory still uses it


def _initramfs(kernel: Kernel, vcfg: VCFG, cache: BuildCache, mtime: int) -> bytes:
    sets = list(MODULE_SETS)
    if vcfg.nfs:
        sets.append("nfs")
    names = module_closure(kernel, modules_for(sets))
    return build_initramfs(kernel, names, busybox_static(cache), mtime=mtime, cache=cache)


def _write(
    request: BuildRequest,
    vcfg: VCFG,
    staged: StagedTree,
    work: Path,
    kernel: bytes,
    initramfs: bytes,
    runtime_bytes: int,
    progress: Progress,
) -> BuildResult:
    json_bytes = codec.dumps(vcfg)
    bundle_bytes = bundle.write_bundle(
        [(bundle.KERNEL_MEMBER, kernel), (bundle.INITRD_MEMBER, initramfs)],
        mtime=request.source_date_epoch or 0,
    )
    args = kernel_command_line(vcfg)
    os_plan = plan_os(len(bundle_bytes), len(json_bytes))
    root_first = os_plan.last_lba + 1
    fstype = root_filesystem(vcfg)
    inodes = minimum_inodes(staged, vcfg.vm.inodes)
    wanted_free = FREE_SPACE + (vcfg.vm.disk_size.value if vcfg.vm.disk_size.delta else 0)
    absolute = 0 if vcfg.vm.disk_size.delta else vcfg.vm.disk_size.value
    identity = _identity(request, json_bytes, bundle_bytes, staged)

    state = work / "owners.state"
    set_owners(staged, state)
    temp = request.output.parent / f".{request.output.name}.partial-{os.getpid()}"
    try:
        fs_bytes = estimate_bytes(
            staged, inodes=inodes, free_bytes=wanted_free, journal=fstype == "ext4"
        )
        for _attempt in range(4):
            total = _disk_bytes(root_first, fs_bytes, absolute)
            root_last = total // gpt.SECTOR - gpt.BACKUP_SECTORS - 1
            fs_size = (root_last - root_first + 1) * gpt.SECTOR // 4096 * 4096
            progress(f"writing {total >> 20} MiB image")
            _write_os_area(
                temp,
                total,
                os_plan,
                root_first,
                root_last,
                bundle_bytes,
                json_bytes,
                args,
                identity,
            )
            spec = FilesystemSpec(
                fstype, fs_size, inodes, str(identity.fs_uuid), request.source_date_epoch
            )
            try:
                make_filesystem(staged, state, temp, offset=root_first * gpt.SECTOR, spec=spec)
            except FilesystemFull:
                if absolute:
                    raise _too_small(absolute) from None
                fs_bytes = fs_bytes * 3 // 2
                continue
            free = free_bytes(temp, offset=root_first * gpt.SECTOR)
            if free >= wanted_free:
                break
            if absolute:
                raise _too_small(absolute)
            fs_bytes += wanted_free - free + (4 << 20)
        else:
            raise UserError("could not size the root filesystem for its content")
        if request.source_date_epoch is not None:
            _pin_times(temp, root_first * gpt.SECTOR, staged, request.source_date_epoch)
        final = temp
        if request.image_format == "qcow2":
            final = temp.with_name(temp.name + ".qcow2")
            run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(temp), str(final)])
            temp.unlink()
        with final.open("rb+") as handle:
            os.fsync(handle.fileno())
        final.replace(request.output)
    except BaseException:
        for leftover in (temp, temp.with_name(temp.name + ".qcow2")):
            leftover.unlink(missing_ok=True)
        raise
    info = request.output.stat()
    parts = PartSizes(
        kernel=len(kernel),
        initramfs=len(initramfs),
        runtime=runtime_bytes,
        app=staged.app_bytes,
        filesystem=fs_size,
        total=total,
    )
    return BuildResult(request.output, info.st_size, info.st_blocks * 512, parts, args)


def _too_small(absolute: int) -> UserError:
    return UserError(
        f"vm.disk-size {absolute >> 20} MiB is too small for the content",
        hint="raise vm.disk-size, or give a '+N MiB' delta to size the disk automatically",
    )


def _disk_bytes(root_first: int, fs_bytes: int, absolute: int) -> int:
    minimum = (root_first + -(-fs_bytes // gpt.SECTOR) + gpt.BACKUP_SECTORS) * gpt.SECTOR
    if absolute and absolute < minimum:
        raise _too_small(absolute)
    wanted = max(minimum, absolute)
    return -(-wanted // ALIGN_BYTES) * ALIGN_BYTES


@dataclass(frozen=True)
class Identity:
    disk_guid: uuid.UUID
    os_guid: uuid.UUID
    fs_uuid: uuid.UUID


def _identity(
    request: BuildRequest, json_bytes: bytes, bundle_bytes: bytes, staged: StagedTree
) -> Identity:
    """GUIDs: random, or derived from the inputs when SOURCE_DATE_EPOCH asks for reproducibility."""
    if request.source_date_epoch is None:
        return Identity(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    digest = hashlib.sha256(json_bytes + hashlib.sha256(bundle_bytes).digest())
    for current, dirnames, filenames in sorted(os.walk(staged.path)):
        for name in sorted(dirnames + filenames):
            path = Path(current) / name
            info = path.lstat()
            # A directory's size is the host filesystem's business (tmpfs and ext4 differ).
            size = 0 if stat.S_ISDIR(info.st_mode) else info.st_size
            digest.update(f"{path.relative_to(staged.path)}\0{info.st_mode}\0{size}\0".encode())
    digest.update(str(request.source_date_epoch).encode())

    def derived(label: str) -> uuid.UUID:
        return uuid.UUID(
            bytes=hashlib.sha256(digest.digest() + label.encode()).digest()[:16], version=4
        )

    return Identity(derived("disk"), derived("os"), derived("fs"))


def _write_os_area(
    path: Path,
    total: int,
    plan: OsPlan,
    root_first: int,
    root_last: int,
    bundle_bytes: bytes,
    json_bytes: bytes,
    args: str,
    identity: Identity,
) -> None:
    sectors = total // gpt.SECTOR
    entries = [
        gpt.GptEntry(
            type_guid=layout.OS_TYPE_GUID,
            unique_guid=identity.os_guid,
            first_lba=layout.OS_FIRST_LBA,
            last_lba=plan.last_lba,
            attributes=0,
            name=layout.OS_PARTITION_NAME,
            index=0,
        ),
        gpt.GptEntry(
            type_guid=layout.ROOT_TYPE_GUID,
            unique_guid=layout.ROOT_PARTUUID,
            first_lba=root_first,
            last_lba=root_last,
            attributes=0,
            name=layout.ROOT_PARTITION_NAME,
            index=1,
        ),
    ]
    head, tail = gpt.build_gpt(sectors, entries, identity.disk_guid)
    block = layout.ConfigBlock(
        version=layout.CONFIG_VERSION,
        kernel_args=args,
        config_offset=(plan.json_lba - layout.OS_FIRST_LBA) * gpt.SECTOR,
        config_len=len(json_bytes),
        config_capacity=plan.capacity_bytes,
    )
    with path.open("wb") as handle:
        handle.truncate(total)
        handle.write(head)
        handle.seek(layout.CONFIG_BLOCK_OFFSET)
        handle.write(block.pack())
        handle.seek(layout.BUNDLE_LBA * gpt.SECTOR)
        handle.write(bundle_bytes)
        handle.seek(plan.json_lba * gpt.SECTOR)
        handle.write(json_bytes)
        handle.seek(total - len(tail))
        handle.write(tail)


def _pin_times(image: Path, offset: int, staged: StagedTree, epoch: int) -> None:
    """Set every inode's times to SOURCE_DATE_EPOCH (mke2fs copies them from the stage)."""
    guest_paths = ["/"]
    for current, dirnames, filenames in os.walk(staged.path):
        here = PurePosixPath("/") / Path(current).relative_to(staged.path).as_posix()
        guest_paths += [str(here / name) for name in (*dirnames, *filenames)]
    commands = [
        f'sif "{path}" {field} {epoch}'
        for path in guest_paths
        for field in ("atime", "mtime", "ctime")
    ]
    # "Lifetime writes" counts mke2fs's writes, which depend on the host filesystem (what
    # it can zero out without writing); start it from zero so that it does not vary between hosts.
    commands.append("ssv kbytes_written 0")
    script = image.with_name(image.name + ".debugfs")
    script.write_text("\n".join(commands) + "\n")
    try:
        # debugfs stamps the superblock's write time on close, unless the time is faked.
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)}
        run(["debugfs", "-w", "-f", str(script), f"{image}?offset={offset}"], env=env)
    finally:
        script.unlink(missing_ok=True)
