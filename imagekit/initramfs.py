"""The initramfs of an image: busybox, the kernel modules that reach the root disk, stage 0.

The stock kernel has virtio and virtio-blk as modules, so a root on a virtio disk can only be
mounted from an initramfs. Stage 0 (``/init``, a busybox shell script) loads the modules
listed in ``/modules``, finds the root partition by its fixed GPT unique GUID, mounts it and
hands PID 1 to the image's init with ``switch_root``.

Failure policy of stage 0: every step is fatal. A failure prints one line starting with
``stage0: `` and powers the VM off, so that a test or a user sees why instead of a kernel
panic or a hang. On success it prints nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import stat
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imagekit import debian
from imagekit.cache import BuildCache, key_of
from imagekit.cpio import CpioWriter
from imagekit.errors import EnvironmentFailure, ToolFailed, UserError
from imagekit.kernel import Kernel
from imagekit.tools import require, step
from vinitd.layout import ROOT_PARTUUID

# The root partition's GUID as the kernel and sgdisk print it.
ROOT_GUID = str(ROOT_PARTUUID).upper()

log = logging.getLogger(__name__)

INITRAMFS_FORMAT = "1"
DEFAULT_INIT = "/vorteil/vinitd"
BUSYBOX_PACKAGE = "busybox-static"

# Seconds stage 0 keeps looking for the root partition: virtio probing is asynchronous.
ROOT_WAIT_SECONDS = 5


@dataclass(frozen=True)
class ModuleSet:
    """Modules to load for one feature; `module_closure` adds what they depend on."""

    name: str
    modules: tuple[str, ...]
    purpose: str


BASE_SET = "base"

MODULE_SETS: tuple[ModuleSet, ...] = (
    # virtio_pci is the transport virtio_blk needs, but not a symbol dependency of it.
    ModuleSet(BASE_SET, ("virtio_pci", "virtio_blk"), "mount the root from a virtio-blk disk"),
    ModuleSet("network", ("virtio_net",), "virtio network interfaces"),
    ModuleSet("console", ("virtio_console",), "virtio-serial ports (host channel)"),
    ModuleSet("rng", ("virtio_rng",), "entropy from virtio-rng, so early reads do not block"),
    ModuleSet("power", ("button", "evdev"), "ACPI power button as /dev/input/event*"),
    # FAT's defaults (codepage 437, utf8) live in NLS modules on Debian's kernel.
    ModuleSet("vfat", ("vfat", "nls_cp437", "nls_ascii", "nls_utf8"), "FAT file systems"),
    ModuleSet("nfs", ("nfsv3", "nfsv4"), "NFS v3 and v4 mounts (sunrpc stack)"),
)

# The busybox applets /init runs, linked in /bin; echo, test and read are shell builtins.
APPLETS = (
    "sh",
    "cat",
    "cut",
    "dd",
    "grep",
    "hexdump",
    "insmod",
    "ls",
    "mount",
    "od",
    "poweroff",
    "sleep",
    "switch_root",
    "umount",
)

_ROOT_DIRECTORIES = ("bin", "dev", "lib", "proc", "root", "sys")
_CONSOLE_DEVICE = (5, 1)
_COMPRESSED_SUFFIXES = (".xz", ".gz", ".zst")

_STAGE0_PREAMBLE = """\
#!/bin/sh
# Stage 0 of a vorteil image: load the disk drivers, find the root partition by its GPT
# unique GUID, mount it and make the image's init PID 1. Silent on success; any failure
# prints one "stage0: " line and powers off, so QEMU exits instead of panicking or hanging.
export PATH=/bin
root_guid={guid}
root_guid_hex={guid_hex}  # as stored in a GPT entry (mixed-endian)
root_wait_seconds={wait_seconds}
default_init={default_init}
"""

_STAGE0_BODY = r"""
fail() {
    echo "stage0: $*"
    poweroff -f
    exit 1
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"

# The kernel consumed init= and rootfstype=, but /proc/cmdline still shows them.
init=$default_init
fstype=
access=rw
set -f
for word in $(cat /proc/cmdline); do
    case $word in
        init=*) init=${word#init=} ;;
        rootfstype=*) fstype=${word#rootfstype=} ;;
        ro | rw) access=$word ;;
    esac
done
set +f

while read -r module; do
    insmod "$module" || fail "cannot load module $module"
done < /modules

# Print the partition of disk $1 whose GPT entry has the root's unique GUID.
# No udev and no PARTUUID in sysfs: read the GPT header (LBA 1) and entry array directly.
root_on() {
    sector=$(cat "/sys/block/$1/queue/logical_block_size") || return 1
    [ "$(dd if="/dev/$1" bs=1 skip="$sector" count=8 2>/dev/null)" = "EFI PART" ] || return 1
    array=$(($(od -A n -t u8 -j $((sector + 72)) -N 8 "/dev/$1")))
    set -- "$1" $(od -A n -t u4 -j $((sector + 80)) -N 8 "/dev/$1")  # disk, count, size
    [ "$3" -ge 32 ] || return 1
    # One line of hex per entry; the unique GUID is bytes 16-31, hex columns 33-64.
    number=$(dd if="/dev/$1" bs="$sector" skip="$array" \
            count=$((($2 * $3 + sector - 1) / sector)) 2>/dev/null |
        hexdump -v -e "$3/1 \"%02x\" \"\n\"" | cut -c33-64 | grep -n -x -m 1 "$root_guid_hex")
    [ -n "$number" ] || return 1
    for partition in "/sys/block/$1/$1"*; do
        if [ "$(cat "$partition/partition" 2>/dev/null)" = "${number%%:*}" ]; then
            echo "${partition##*/}"
            return 0
        fi
    done
    return 1
}

find_root() {
    for disk in /sys/block/*; do
        root_on "${disk##*/}" && return 0
    done
    return 1
}

# Seconds since boot, from /proc/uptime.
seconds_up() {
    read -r seconds _ < /proc/uptime
    echo "${seconds%.*}"
}

deadline=$(($(seconds_up) + root_wait_seconds))
until partition=$(find_root); do
    if [ "$(seconds_up)" -ge "$deadline" ]; then
        disks=$(echo $(ls /sys/block))
        fail "root partition $root_guid not found on ${disks:-no disks}"
    fi
    sleep 0.1
done

set --
[ -n "$fstype" ] && set -- -t "$fstype"
mount "$@" -o "$access" "/dev/$partition" /root ||
    fail "cannot mount /dev/$partition on /root (type ${fstype:-auto}, $access)"
[ -e "/root$init" ] || [ -L "/root$init" ] || fail "init $init not found on $partition"
[ -d /root/dev ] || fail "no /dev on $partition to move devtmpfs to"
mount --move /dev /root/dev || fail "cannot move /dev to the root"
umount /proc /sys
exec switch_root /root "$init"
"""


def stage0_script(*, wait_seconds: int = ROOT_WAIT_SECONDS) -> str:
    """The text of ``/init``."""
    preamble = _STAGE0_PREAMBLE.format(
        guid=ROOT_GUID,
        guid_hex=ROOT_PARTUUID.bytes_le.hex(),
        wait_seconds=wait_seconds,
        default_init=DEFAULT_INIT,
    )
    return preamble + _STAGE0_BODY


def modules_for(set_names: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules of the base set plus the named optional sets, without duplicates."""
    by_name = {module_set.name: module_set for module_set in MODULE_SETS}
    names: list[str] = []
    for set_name in (BASE_SET, *set_names):
        if set_name not in by_name:
            known = ", ".join(sorted(by_name))
            raise UserError(f"unknown module set {set_name!r}", hint=f"known sets: {known}")
        names.extend(m for m in by_name[set_name].modules if m not in names)
    return tuple(names)


@dataclass(frozen=True)
class KernelModule:
    """One line of modules.dep: ``path`` is relative to the modules directory."""

    name: str
    path: str
    depends: tuple[str, ...]


def module_closure(kernel: Kernel, names: Iterable[str]) -> list[str]:
    """``names`` plus their dependencies, dependencies before dependents (load order).

    Names are normalised the kernel's way (``-`` and ``_`` are the same); built-in modules
    need no loading and are dropped.
    """
    index = module_index(kernel)
    builtin = _builtin_names(kernel)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str | None) -> None:
        if name in order or name in visiting:
            return
        if name not in index:
            if name in builtin:
                log.debug("module %s is built into kernel %s", name, kernel.release)
                return
            source = f" (needed by {wanted_by})" if wanted_by else ""
            raise UserError(
                f"kernel {kernel.release} has no module {name}{source}",
                hint=f"module names are listed in {kernel.modules_dep}",
            )
        visiting.add(name)
        # modules.dep lists the deepest dependency last; visiting in reverse keeps that order.
        for dependency in reversed(index[name].depends):
            visit(dependency, name)
        visiting.discard(name)
        order.append(name)

    for name in names:
        visit(_normalise(name), None)
    return order


def module_index(kernel: Kernel) -> dict[str, KernelModule]:
    """The modules of ``kernel`` by normalised name, read from modules.dep."""
    try:
        text = kernel.modules_dep.read_text()
    except OSError as err:
        raise EnvironmentFailure(f"cannot read {kernel.modules_dep}: {err.strerror}") from err
    index: dict[str, KernelModule] = {}
    for line in text.splitlines():
        path, separator, rest = line.partition(":")
        if not separator:
            continue
        name = _module_name(path)
        index[name] = KernelModule(name, path, tuple(_module_name(d) for d in rest.split()))
    return index


def busybox_static(cache: BuildCache) -> Path:
    """The static busybox binary from Debian's ``busybox-static`` package."""
    tree = debian.unpacked(debian.resolve(BUSYBOX_PACKAGE, cache=cache), cache)
    binary = tree / "bin" / "busybox"
    if not binary.is_file():
        raise EnvironmentFailure(f"Debian package {BUSYBOX_PACKAGE} has no bin/busybox")
    return binary


def build_initramfs(
    kernel: Kernel,
    module_names: Sequence[str],
    busybox: Path,
    *,
    mtime: int,
    cache: BuildCache | None = None,
) -> bytes:
    """A gzip'd newc initramfs with busybox, ``module_names`` (and dependencies) and stage 0.

    ``mtime`` stamps every member and the gzip header, so equal inputs give equal bytes.
    With a ``cache`` the result is stored under a key made of the release, the module list,
    the contents of busybox and of each module, and the text of ``/init``.

    Example::

        kernel = debian_cloud_kernel(cache)
        modules = modules_for(["rng", "power"])
        image = build_initramfs(kernel, modules, busybox_static(cache), mtime=0, cache=cache)
    """
    index = module_index(kernel)
    closure = module_closure(kernel, module_names)
    modules = [index[name] for name in closure]
    script = stage0_script()

    def build() -> bytes:
        with step(f"initramfs: {len(modules)} modules for {kernel.release}"):
            archive = _archive(kernel, modules, busybox.read_bytes(), script, mtime)
            data = gzip.compress(archive, compresslevel=9, mtime=mtime)
        log.info("initramfs: %d bytes (%d uncompressed)", len(data), len(archive))
        return data

    if cache is None:
        return build()
    key = key_of(
        "initramfs",
        INITRAMFS_FORMAT,
        kernel.release,
        script,
        str(mtime),
        _digest(busybox),
        *(f"{module.path} {_digest(kernel.modules_dir / module.path)}" for module in modules),
    )
    return cache.blob(key, build)


def _archive(
    kernel: Kernel, modules: Sequence[KernelModule], busybox: bytes, script: str, mtime: int
) -> bytes:
    writer = CpioWriter(mtime=mtime)
    for directory in _ROOT_DIRECTORIES:
        writer.add_directory(directory)
    # Open as the initial console before devtmpfs is mounted (the kernel also has one).
    major, minor = _CONSOLE_DEVICE
    writer.add_device("dev/console", kind=stat.S_IFCHR, major=major, minor=minor)
    writer.add_file("bin/busybox", busybox, mode=0o755)
    for applet in APPLETS:
        writer.add_symlink(f"bin/{applet}", "busybox")

    base = PurePosixPath("lib/modules") / kernel.release
    installed: list[str] = []
    directories = set(_ROOT_DIRECTORIES)
    for module in modules:
        target = base / _uncompressed_path(module.path)
        for parent in reversed(target.parents):
            if str(parent) != "." and str(parent) not in directories:
                writer.add_directory(str(parent))
                directories.add(str(parent))
        writer.add_file(str(target), _module_bytes(kernel.modules_dir / module.path))
        installed.append(f"/{target}")

    writer.add_file("modules", "".join(f"{path}\n" for path in installed).encode())
    writer.add_file("init", script.encode(), mode=0o755)
    return writer.finish()


def _module_bytes(path: Path) -> bytes:
    # busybox insmod hands the file to init_module() as is: decompress here.
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        argv = [require("zstd"), "-d", "-c", "-q", str(path)]
        completed = subprocess.run(argv, capture_output=True, check=False)
        if completed.returncode != 0:
            output = completed.stderr.decode(errors="replace")
            raise ToolFailed(argv, completed.returncode, output, hint="apt-get install zstd")
        return completed.stdout
    return data


def _uncompressed_path(path: str) -> str:
    for suffix in _COMPRESSED_SUFFIXES:
        if path.endswith(suffix):
            return path.removesuffix(suffix)
    return path


def _module_name(path: str) -> str:
    file_name = PurePosixPath(_uncompressed_path(path)).name
    return _normalise(file_name.removesuffix(".ko"))


def _normalise(name: str) -> str:
    return name.replace("-", "_")


def _builtin_names(kernel: Kernel) -> frozenset[str]:
    builtin = kernel.modules_dir / "modules.builtin"
    if not builtin.is_file():
        return frozenset()
    return frozenset(_module_name(line) for line in builtin.read_text().split())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
