"""Kernel inputs, module closures on Debian's cloud kernel, stage 0 and the initramfs archive."""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from imagekit.cache import BuildCache
from imagekit.errors import EnvironmentFailure, UserError
from imagekit.initramfs import (
    APPLETS,
    MODULE_SETS,
    ROOT_GUID,
    build_initramfs,
    busybox_static,
    module_closure,
    module_index,
    modules_for,
    stage0_script,
)
from imagekit.kernel import Kernel, bzimage_release, debian_cloud_kernel, kernel_from_dir

BASE_ORDER = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
]


def _skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cache() -> Iterator[BuildCache]:
    with BuildCache() as shared:
        yield shared


@pytest.fixture(scope="module")
def cloud_kernel(cache: BuildCache) -> Kernel:
    try:
        return debian_cloud_kernel(cache)
    except EnvironmentFailure as err:
        _skip_or_fail(f"Debian cloud kernel unavailable: {err.message}")


@pytest.fixture(scope="module")
def busybox(cache: BuildCache) -> Path:
    try:
        return busybox_static(cache)
    except EnvironmentFailure as err:
        _skip_or_fail(f"busybox-static unavailable: {err.message}")


def _fake_bzimage(path: Path, release: str | None) -> Path:
    image = bytearray(0x6000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    if release is not None:
        struct.pack_into("<H", image, 0x20E, 0x4000 - 0x200)
        text = f"{release} (builder@example) #1 SMP".encode() + b"\0"
        image[0x4000 : 0x4000 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(image))
    return path


def _listing(initramfs: bytes) -> list[str]:
    archive = gzip.decompress(initramfs)
    result = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def _member(initramfs: bytes, name: str) -> bytes:
    archive = gzip.decompress(initramfs)
    result = subprocess.run(
        ["cpio", "-i", "--quiet", "--to-stdout", name], input=archive, capture_output=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# Kernel directories (--kernel DIR)


def test_kernel_dir_with_modules_dep(tmp_path: Path) -> None:
    """A directory with a bzImage and modules.dep is used in place."""
    _fake_bzimage(tmp_path / "boot" / "vmlinuz-6.1.0-test", "6.1.0-test")
    modules = tmp_path / "lib" / "modules" / "6.1.0-test"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text("")
    kernel = kernel_from_dir(tmp_path)
    assert kernel.release == "6.1.0-test"
    assert kernel.bzimage == tmp_path / "boot" / "vmlinuz-6.1.0-test"
    assert kernel.modules_dir == modules
    assert kernel.origin.startswith("dir:")


def test_kernel_dir_without_modules_dep_runs_depmod_on_a_copy(tmp_path: Path) -> None:
    """Without modules.dep, depmod runs into a cached copy and DIR stays untouched."""
    if shutil.which("depmod") is None and not Path("/usr/sbin/depmod").exists():
        _skip_or_fail("depmod (kmod) is not installed")
    source = tmp_path / "kernel"
    _fake_bzimage(source / "bzImage", "6.1.0-test")
    (source / "lib" / "modules" / "6.1.0-test").mkdir(parents=True)
    with BuildCache(tmp_path / "cache") as cache:
        kernel = kernel_from_dir(source, cache=cache)
    assert kernel.modules_dep.is_file()
    assert kernel.modules_dir.is_relative_to(tmp_path / "cache")
    assert not (source / "lib" / "modules" / "6.1.0-test" / "modules.dep").exists()


def test_kernel_dir_without_image_is_a_user_error(tmp_path: Path) -> None:
    """A directory with modules but no kernel image names the directory and what is missing."""
    (tmp_path / "lib" / "modules" / "6.1.0-test").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))} has no kernel image"):
        kernel_from_dir(tmp_path)


def test_kernel_dir_without_modules_is_a_user_error(tmp_path: Path) -> None:
    """A directory with a bzImage but no lib/modules/<release> is refused."""
    _fake_bzimage(tmp_path / "vmlinuz", "6.1.0-test")
    with pytest.raises(
        UserError, match=f"{re.escape(str(tmp_path))} has no modules: expected lib/modules"
    ):
        kernel_from_dir(tmp_path)


def test_kernel_dir_release_mismatch_is_a_user_error(tmp_path: Path) -> None:
    """Modules built for another release than the bzImage header's are refused."""
    _fake_bzimage(tmp_path / "bzImage", "6.1.0-new")
    (tmp_path / "lib" / "modules" / "6.1.0-old").mkdir(parents=True)
    with pytest.raises(UserError, match=r"is release 6\.1\.0-new but .* modules for 6\.1\.0-old"):
        kernel_from_dir(tmp_path)


def test_kernel_dir_with_a_non_bzimage_is_a_user_error(tmp_path: Path) -> None:
    """A file named bzImage without a setup header is refused."""
    (tmp_path / "bzImage").write_bytes(b"\0" * 4096)
    (tmp_path / "lib" / "modules" / "6.1.0-test").mkdir(parents=True)
    with pytest.raises(UserError, match="not a Linux bzImage"):
        kernel_from_dir(tmp_path)


def test_missing_kernel_dir_is_a_user_error(tmp_path: Path) -> None:
    """A --kernel path that does not exist is refused."""
    with pytest.raises(UserError, match="does not exist"):
        kernel_from_dir(tmp_path / "nope")


def test_cloud_kernel_release_matches_its_header(cloud_kernel: Kernel) -> None:
    """Debian's bzImage header names the release of its modules directory."""
    assert bzimage_release(cloud_kernel.bzimage) == cloud_kernel.release
    assert cloud_kernel.modules_dir.name == cloud_kernel.release
    assert cloud_kernel.modules_dep.stat().st_size > 0


# Module closures


def test_base_closure_is_in_load_order(cloud_kernel: Kernel) -> None:
    """The base set expands to the six virtio modules, dependencies first."""
    assert module_closure(cloud_kernel, modules_for()) == BASE_ORDER


def test_every_set_closes_with_dependencies_first(cloud_kernel: Kernel) -> None:
    """For each set, every module's modules.dep dependencies come before it."""
    index = module_index(cloud_kernel)
    for module_set in MODULE_SETS:
        closure = module_closure(cloud_kernel, modules_for([module_set.name]))
        assert len(closure) == len(set(closure))
        for position, name in enumerate(closure):
            assert set(index[name].depends) <= set(closure[:position]), (module_set.name, name)


def test_optional_sets_resolve_to_real_modules(cloud_kernel: Kernel) -> None:
    """The network, rng, power, vfat and nfs sets pull in the expected stacks."""
    closure = module_closure(
        cloud_kernel, modules_for(["network", "rng", "power", "vfat", "nfs", "console"])
    )
    assert closure[: len(BASE_ORDER)] == BASE_ORDER
    assert closure.index("failover") < closure.index("net_failover") < closure.index("virtio_net")
    assert closure.index("fat") < closure.index("vfat")
    assert closure.index("sunrpc") < closure.index("lockd") < closure.index("nfs")
    assert closure.index("nfs") < closure.index("nfsv3")
    assert {"virtio_rng", "button", "evdev", "virtio_console", "nfsv4"} <= set(closure)


def test_dashes_and_underscores_name_the_same_module(cloud_kernel: Kernel) -> None:
    """virtio-rng (its file name) and virtio_rng both resolve."""
    assert module_closure(cloud_kernel, ["virtio-rng"]) == ["virtio_ring", "virtio", "virtio_rng"]


def test_built_in_modules_are_skipped(cloud_kernel: Kernel) -> None:
    """ext4 is built into the cloud kernel, so it needs no loading."""
    assert module_closure(cloud_kernel, ["ext4", "virtio"]) == ["virtio_ring", "virtio"]


def test_unknown_module_is_a_user_error(cloud_kernel: Kernel) -> None:
    """A module the kernel does not have is named in the error."""
    with pytest.raises(UserError, match="has no module no_such_module"):
        module_closure(cloud_kernel, ["no_such_module"])


def test_unknown_module_set_is_a_user_error() -> None:
    """An unknown set name is refused with the known names as a hint."""
    with pytest.raises(UserError, match="unknown module set 'sound'") as caught:
        modules_for(["sound"])
    assert caught.value.hint is not None and "network" in caught.value.hint


# Stage 0


def test_stage0_passes_busybox_syntax_check(busybox: Path, tmp_path: Path) -> None:
    """busybox sh -n accepts /init."""
    script = tmp_path / "init"
    script.write_text(stage0_script())
    result = subprocess.run([busybox, "sh", "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stage0_looks_for_the_mixed_endian_root_guid() -> None:
    """The script compares GPT entries with the root GUID's on-disk bytes."""
    script = stage0_script()
    assert "root_guid_hex=7d4448409dc011d1b2455ffdce74fad2" in script
    assert f"root_guid={ROOT_GUID}" in script
    assert script.startswith("#!/bin/sh\n")


def test_stage0_uses_only_linked_applets() -> None:
    """Every external command /init runs has a symlink in /bin."""
    script = stage0_script()
    for command in ("mount", "insmod", "dd", "od", "hexdump", "switch_root", "poweroff"):
        assert command in APPLETS
        assert command in script


# The archive


def test_initramfs_holds_busybox_modules_and_init(
    cloud_kernel: Kernel, busybox: Path, tmp_path: Path
) -> None:
    """The archive has /init, busybox with its applets and the modules in load order."""
    with BuildCache(tmp_path / "cache") as cache:
        image = build_initramfs(cloud_kernel, modules_for(["rng"]), busybox, mtime=0, cache=cache)
    assert gzip.decompress(image).startswith(b"070701")
    names = _listing(image)
    assert {"init", "modules", "bin/busybox", "dev/console"} <= set(names)
    assert {f"bin/{applet}" for applet in APPLETS} <= set(names)
    listed = _member(image, "modules").decode().splitlines()
    index = module_index(cloud_kernel)
    expected = [*BASE_ORDER, "virtio_rng"]
    assert listed == [f"/lib/modules/{cloud_kernel.release}/{index[n].path}" for n in expected]
    assert all(path.lstrip("/") in names for path in listed)
    assert _member(image, "init").decode() == stage0_script()
    assert _member(image, "bin/busybox") == busybox.read_bytes()
    assert len(image) < 2_000_000


def test_initramfs_is_reproducible_and_cached(
    cloud_kernel: Kernel, busybox: Path, tmp_path: Path
) -> None:
    """Equal inputs give equal bytes, with the gzip header's mtime fixed."""
    first = build_initramfs(cloud_kernel, modules_for(), busybox, mtime=1234)
    second = build_initramfs(cloud_kernel, modules_for(), busybox, mtime=1234)
    assert first == second
    assert struct.unpack_from("<I", first, 4)[0] == 1234
    with BuildCache(tmp_path / "cache") as cache:
        stored = build_initramfs(cloud_kernel, modules_for(), busybox, mtime=1234, cache=cache)
        again = build_initramfs(cloud_kernel, modules_for(), busybox, mtime=1234, cache=cache)
    assert stored == again == first


def test_compressed_modules_are_stored_decompressed(tmp_path: Path) -> None:
    """A .ko.xz module is decompressed at build time and stored as .ko."""
    modules_dir = tmp_path / "lib" / "modules" / "6.1.0-test"
    (modules_dir / "kernel").mkdir(parents=True)
    (modules_dir / "kernel" / "a.ko.xz").write_bytes(lzma.compress(b"module a"))
    (modules_dir / "kernel" / "b.ko").write_bytes(b"module b")
    (modules_dir / "modules.dep").write_text("kernel/a.ko.xz:\nkernel/b.ko: kernel/a.ko.xz\n")
    kernel = Kernel("6.1.0-test", tmp_path / "bzImage", modules_dir, "test")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"not really busybox")
    image = build_initramfs(kernel, ["b"], busybox, mtime=0)
    assert _member(image, "lib/modules/6.1.0-test/kernel/a.ko") == b"module a"
    assert _member(image, "modules").decode().splitlines() == [
        "/lib/modules/6.1.0-test/kernel/a.ko",
        "/lib/modules/6.1.0-test/kernel/b.ko",
    ]
