"""The boot files of an image: kernel, initramfs and command line, read from its OS partition.

Direct kernel boot (``-kernel/-initrd/-append``) needs them as files; they are extracted
into a directory, named after the image's content so repeated boots reuse them.

    python -m vmtest.bootfiles IMAGE [--boot]

prints where the files are; ``--boot`` starts QEMU on the image with the console attached
(the guest's power-off ends QEMU).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vinitd import bundle, layout
from vinitd.errors import LayoutError


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    cmdline: str
    image: Path


def extract(image: Path, directory: Path | None = None) -> BootFiles:
    """Extract the boot files of ``image`` (raw) into ``directory`` (default: a temp dir)."""
    source = str(image)
    try:
        handle = image.open("rb")
    except OSError as err:
        raise LayoutError(f"cannot open: {err.strerror}", source=source) from None
    with handle:
        block = layout.read_config_block(handle, source=source)
        members = bundle.read_bundle(handle, source=source)
        kernel = bundle.read_member(handle, bundle.find_member(members, bundle.KERNEL_MEMBER))
        initrd = bundle.read_member(handle, bundle.find_member(members, bundle.INITRD_MEMBER))
    digest = hashlib.sha256(kernel + initrd).hexdigest()[:16]
    target = directory or Path(tempfile.gettempdir()) / f"vmtest-boot-{os.getuid()}-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    files = BootFiles(target / "linux", target / "initrd", block.kernel_args, image)
    for path, data in ((files.kernel, kernel), (files.initrd, initrd)):
        if not path.exists() or path.stat().st_size != len(data):
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(path)
    return files


def console_argv(files: BootFiles, *, memory_mib: int = 256) -> list[str]:
    """QEMU under TCG with the serial console on stdio and the disk as a snapshot."""
    return [
        "qemu-system-x86_64",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", str(memory_mib),
        "-nographic",
        "-no-reboot",
        "-kernel", str(files.kernel),
        "-initrd", str(files.initrd),
        "-append", files.cmdline,
        "-drive", f"file={files.image},if=virtio,format=raw,snapshot=on",
        "-device", "virtio-rng-pci",
        "-nic", "user,model=virtio-net-pci",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmtest.bootfiles", allow_abbrev=False)
    parser.add_argument("image", type=Path)
    parser.add_argument("--boot", action="store_true", help="boot it with the console attached")
    args = parser.parse_args(argv)
    try:
        files = extract(args.image)
    except LayoutError as err:
        print(f"vmtest: {err}", file=sys.stderr)
        return 2
    if not args.boot:
        print(f"kernel: {files.kernel}\ninitrd: {files.initrd}\ncmdline: {files.cmdline}")
        return 0
    command = console_argv(files)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
