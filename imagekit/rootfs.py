"""The root filesystem: a staged tree, then ``mke2fs -d`` straight into the image.

The tree is staged from three sources, later ones overriding earlier ones outside
``/vorteil``: the guest runtime (root-owned), vinitd's ``/vorteil`` tree (root-owned), and
the application's files (uid/gid 1000, their permission bits kept, as vorteil's builder
owns them). Files are hard-linked into the stage where possible, so staging is cheap.
Owners are set under fakeroot, so no build needs root.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from imagekit.errors import EnvironmentFailure, ToolFailed, UserError
from imagekit.project import FileEntry
from imagekit.tools import require, run

log = logging.getLogger(__name__)

BLOCK = 4096
INODE_SIZE = 256
APP_OWNER = 1000
RESERVED = frozenset({PurePosixPath("/vorteil")})
# Directories every image has (vorteil-image §1.6), with their modes.
SKELETON = (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("vorteil", 0o755))
JOURNAL_MIB = 4
FREE_SPACE = 1 << 20  # vorteil always leaves 1 MiB free, plus any "+delta"


@dataclass
class StagedTree:
    """A staged root and what is known of it."""

    path: Path
    app_paths: list[str] = field(default_factory=list)
    app_bytes: int = 0
    data_blocks: int = 0
    inodes: int = 0


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _add_tree(tree: Path, stage: Path) -> None:
    """Hard-link (or copy) a cached tree into the stage, preserving links and modes."""
    for current, dirnames, filenames in os.walk(tree):
        here = Path(current)
        relative = here.relative_to(tree)
        (stage / relative).mkdir(exist_ok=True)
        shutil.copymode(here, stage / relative)
        for name in dirnames:
            source = here / name
            if source.is_symlink():
                (stage / relative / name).symlink_to(source.readlink())
        for name in filenames:
            _link_or_copy(here / name, stage / relative / name)


def stage_root(
    work: Path, *, runtime: Path, guest: Path, app_files: Iterable[FileEntry]
) -> StagedTree:
    """Stage the root filesystem under ``work/root``."""
    stage = work / "root"
    stage.mkdir(mode=0o755)
    staged = StagedTree(stage)
    _add_tree(runtime, stage)
    _add_tree(guest, stage)
    for name, mode in SKELETON:
        (stage / name).mkdir(exist_ok=True)
        (stage / name).chmod(mode)
    for entry in app_files:
        _add_app_file(staged, entry)
    _measure(staged)
    return staged


def _add_app_file(staged: StagedTree, entry: FileEntry) -> None:
    dest = entry.dest
    if any(dest == reserved or reserved in dest.parents for reserved in RESERVED):
        raise UserError(f"{entry.source}: {dest} is reserved for vinitd; move it elsewhere")
    target = staged.path / dest.relative_to("/")
    if dest == PurePosixPath("/"):
        return
    info = entry.source.lstat()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()  # the application's file wins over the runtime's
    elif target.is_dir() and not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{entry.source}: {dest} is a directory in the guest runtime")
    target.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(info.st_mode):
        target.symlink_to(entry.source.readlink())
    elif stat.S_ISDIR(info.st_mode):
        target.mkdir(exist_ok=True)
        target.chmod(stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        _link_or_copy(entry.source, target)
        staged.app_bytes += info.st_size
    else:
        log.warning("skipping %s: not a file, directory or symbolic link", entry.source)
        return
    staged.app_paths.append(str(dest))


def _measure(staged: StagedTree) -> None:
    blocks = inodes = 0
    for current, dirnames, filenames in os.walk(staged.path):
        inodes += 1
        blocks += 1 + len(dirnames + filenames) * 64 // BLOCK
        for name in filenames:
            info = (Path(current) / name).lstat()
            inodes += 1
            if stat.S_ISREG(info.st_mode):
                blocks += -(-info.st_size // BLOCK)
            elif stat.S_ISLNK(info.st_mode) and info.st_size >= 60:
                blocks += 1  # not a fast symlink
        inodes += sum(1 for name in dirnames if (Path(current) / name).is_symlink())
    staged.data_blocks = blocks
    staged.inodes = inodes


def minimum_inodes(staged: StagedTree, requested: int) -> int:
    """Inodes to create: the files plus room for runtime files, or vm.inodes if larger."""
    return max(requested, staged.inodes + max(1024, staged.inodes // 4))


def estimate_bytes(staged: StagedTree, *, inodes: int, free_bytes: int, journal: bool) -> int:
    """A filesystem size that holds the tree and leaves ``free_bytes`` free (checked after)."""
    metadata = inodes * INODE_SIZE + (JOURNAL_MIB << 20 if journal else 0)
    data = staged.data_blocks * BLOCK
    overhead = data // 16 + metadata + (2 << 20)  # bitmaps, descriptors, resize reserve
    total = data + overhead + free_bytes
    return -(-total // BLOCK) * BLOCK


def set_owners(staged: StagedTree, state: Path) -> None:
    """Record owners in a fakeroot state file: the application's paths belong to uid 1000."""
    listing = state.with_suffix(".owners")
    listing.write_text("\0".join(staged.app_paths))
    run(
        [
            "fakeroot",
            "-s",
            str(state),
            "--",
            sys.executable,
            "-m",
            "imagekit.owners",
            str(staged.path),
            str(listing),
            str(APP_OWNER),
        ],
    )


@dataclass(frozen=True)
class FilesystemSpec:
    fstype: str
    size_bytes: int
    inodes: int
    uuid: str
    fake_time: int | None = None


def make_filesystem(
    staged: StagedTree, state: Path, image: Path, *, offset: int, spec: FilesystemSpec
) -> None:
    """``mke2fs -d`` the staged tree into ``image`` at byte ``offset`` (under fakeroot)."""
    extended = [f"offset={offset}", f"hash_seed={spec.uuid}", "root_owner=0:0"]
    argv = [
        "fakeroot",
        "-i",
        str(state),
        "--",
        require("mke2fs"),  # fakeroot searches only PATH, which may lack /usr/sbin
        "-q",
        "-F",
        "-t",
        spec.fstype,
        "-b",
        str(BLOCK),
        "-I",
        str(INODE_SIZE),
        "-N",
        str(spec.inodes),
        "-m",
        "0",
        "-L",
        "vorteil-root",
        "-U",
        spec.uuid,
        "-E",
        ",".join(extended),
        "-d",
        str(staged.path),
    ]
    if spec.fstype == "ext4":
        argv += ["-J", f"size={JOURNAL_MIB}"]
    argv += [str(image), f"{spec.size_bytes // 1024}k"]
    env = dict(os.environ)
    if spec.fake_time is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(spec.fake_time)
    try:
        run(argv, env=env, hint="mke2fs comes with e2fsprogs")
    except ToolFailed as err:
        if _filesystem_full(err.output):
            raise FilesystemFull(spec.size_bytes) from err
        raise


def _filesystem_full(output: str) -> bool:
    """Whether mke2fs ran out of room in the new filesystem (not on the host's disk)."""
    text = output.lower()
    if "no space left on device" in text:
        return False  # ENOSPC from the host: a bigger filesystem would not help
    return "could not allocate" in text or "no free space" in text


class FilesystemFull(UserError):
    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        super().__init__(f"the root filesystem does not fit in {size_bytes >> 20} MiB")


def free_bytes(image: Path, *, offset: int) -> int:
    """Free space of the filesystem at ``offset``, as its superblock reports it."""
    output = run(["dumpe2fs", "-h", f"{image}?offset={offset}"])
    fields: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    try:
        return int(fields["Free blocks"]) * int(fields["Block size"])
    except (KeyError, ValueError) as err:
        raise EnvironmentFailure(f"cannot read the free space of {image}") from err


def work_directory(near: Path) -> Path:
    """A scratch directory on the same filesystem as ``near`` (so hard links work)."""
    near.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".stage-", dir=near))
