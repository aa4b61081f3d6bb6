"""The guest kernel: a bzImage and its modules, from Debian's archive or from a directory.

A `Kernel` is a release string, a bzImage and the ``lib/modules/<release>`` directory that
holds ``modules.dep``. Debian's .deb ships no ``modules.dep`` (its postinst runs depmod), so
depmod runs once into a separate cached tree of hard links: the unpacked package stays as
``dpkg-deb`` left it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from imagekit import debian
from imagekit.cache import BuildCache, key_of
from imagekit.errors import EnvironmentFailure, UserError
from imagekit.tools import run, step

log = logging.getLogger(__name__)

CLOUD_METAPACKAGE = "linux-image-cloud-amd64"

# Linux boot protocol (Documentation/arch/x86/boot.rst): the setup header's magic and the
# field pointing at the NUL-terminated version string, relative to the end of the boot sector.
_HEADER_MAGIC_OFFSET = 0x202
_HEADER_MAGIC = b"HdrS"
_KERNEL_VERSION_FIELD = 0x20E
_KERNEL_VERSION_BASE = 0x200
_HEADER_READ_BYTES = 0x10000

# Where a kernel directory may keep its bzImage, in order of preference.
_BZIMAGE_PATTERNS = ("bzImage", "vmlinuz*", "boot/vmlinuz-*")


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel: ``modules_dir`` is ``.../lib/modules/<release>`` with modules.dep."""

    release: str
    bzimage: Path
    modules_dir: Path
    origin: str

    @property
    def modules_dep(self) -> Path:
        return self.modules_dir / "modules.dep"


def debian_cloud_kernel(cache: BuildCache) -> Kernel:
    """Debian's current cloud kernel (the ABI package named by `CLOUD_METAPACKAGE`)."""
    with step("kernel: Debian cloud kernel"):
        meta = debian.resolve(CLOUD_METAPACKAGE, cache=cache)
        if not meta.depends:
            raise EnvironmentFailure(f"Debian package {meta.name} names no kernel package")
        package = debian.resolve(meta.depends[0], cache=cache)
        tree = debian.unpacked(package, cache)
        try:
            bzimage, release = _locate(tree)
        except UserError as err:
            raise EnvironmentFailure(f"Debian package {package.name}: {err.message}") from err
        modules_root = _depmod_tree(cache, key_of("depmod", package.key), tree, release)
        kernel = Kernel(
            release=release,
            bzimage=bzimage,
            modules_dir=modules_root / "lib" / "modules" / release,
            origin=f"debian:{package.name}={package.version}",
        )
    log.info("kernel %s from %s", kernel.release, kernel.origin)
    return kernel


def kernel_from_dir(path: Path, *, cache: BuildCache | None = None) -> Kernel:
    """The kernel in directory ``path`` (``--kernel DIR``).

    DIR holds a bzImage (``bzImage``, ``vmlinuz*`` or ``boot/vmlinuz-*``) and its modules in
    ``lib/modules/<release>/``. When modules.dep is missing, depmod runs into a cached copy
    (``cache``, by default the shared build cache); DIR itself is never written to.
    """
    if not path.is_dir():
        raise UserError(f"kernel directory {path} does not exist or is not a directory")
    bzimage, release = _locate(path)
    modules_dir = path / "lib" / "modules" / release
    if not (modules_dir / "modules.dep").is_file():
        log.info("kernel directory %s has no modules.dep: running depmod on a copy", path)
        key = key_of("depmod-dir", release, *_fingerprint(modules_dir))
        if cache is None:
            with BuildCache() as default_cache:
                root = _depmod_tree(default_cache, key, path, release)
        else:
            root = _depmod_tree(cache, key, path, release)
        modules_dir = root / "lib" / "modules" / release
    return Kernel(
        release=release,
        bzimage=bzimage,
        modules_dir=modules_dir,
        origin=f"dir:{path.resolve()}",
    )


def bzimage_release(bzimage: Path) -> str | None:
    """The release in the bzImage's setup header, or None when the header names none.

    Raises UserError when ``bzimage`` is not a Linux bzImage at all.
    """
    with bzimage.open("rb") as file:
        head = file.read(_HEADER_READ_BYTES)
    if head[_HEADER_MAGIC_OFFSET : _HEADER_MAGIC_OFFSET + 4] != _HEADER_MAGIC:
        raise UserError(f"{bzimage} is not a Linux bzImage (no 'HdrS' setup header)")
    (pointer,) = struct.unpack_from("<H", head, _KERNEL_VERSION_FIELD)
    if pointer == 0:
        return None
    start = pointer + _KERNEL_VERSION_BASE
    text = head[start : start + 256].split(b"\0", 1)[0].decode("ascii", errors="replace")
    words = text.split()
    return words[0] if words else None


def _locate(root: Path) -> tuple[Path, str]:
    """The bzImage under ``root`` and the release its modules directory is named after."""
    bzimage = _find_bzimage(root)
    modules_base = root / "lib" / "modules"
    releases = sorted(p.name for p in modules_base.glob("*") if p.is_dir())
    if not releases:
        raise UserError(
            f"kernel directory {root} has no modules: expected lib/modules/<release>/",
            hint="the modules are needed to mount a virtio-blk root from the initramfs",
        )
    header_release = bzimage_release(bzimage)
    if header_release is None:
        if len(releases) > 1:
            raise UserError(
                f"{bzimage} names no release and {modules_base} holds several: "
                f"{', '.join(releases)}"
            )
        return bzimage, releases[0]
    if header_release not in releases:
        raise UserError(
            f"kernel {bzimage} is release {header_release} but {modules_base} holds "
            f"modules for {', '.join(releases)}",
            hint=f"add lib/modules/{header_release}/ from the same kernel build",
        )
    return bzimage, header_release


def _find_bzimage(root: Path) -> Path:
    for pattern in _BZIMAGE_PATTERNS:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(root)) for p in found)
            raise UserError(f"kernel directory {root} holds several kernel images: {names}")
    raise UserError(
        f"kernel directory {root} has no kernel image: expected bzImage, vmlinuz* or boot/vmlinuz-*"
    )


def _fingerprint(modules_dir: Path) -> list[str]:
    # Names, sizes and mtimes: enough to notice a changed module without hashing them all.
    lines = []
    for file in sorted(modules_dir.rglob("*")):
        if file.is_file():
            info = file.stat()
            lines.append(f"{file.relative_to(modules_dir)} {info.st_size} {info.st_mtime_ns}")
    return lines


def _depmod_tree(cache: BuildCache, key: str, source: Path, release: str) -> Path:
    """A cached tree with ``lib/modules/<release>`` linked from ``source`` plus depmod's files."""
    relative = Path("lib") / "modules" / release

    def build(work: Path) -> None:
        with step(f"depmod {release}"):
            shutil.copytree(source / relative, work / relative, copy_function=_link_or_copy)
            run(["depmod", "-b", str(work), release])

    return cache.tree(key, build)


def _link_or_copy(src: str, dst: str) -> None:
    # depmod writes its index files beside the modules by rename, so links to the
    # unpacked package are never modified; another filesystem means copying.
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
