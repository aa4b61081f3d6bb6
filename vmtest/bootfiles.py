"""The boot files of an image: kernel, initramfs and command line, read from its OS partition.

Direct kernel boot (``-kernel/-initrd/-append``) needs them as files; they are extracted
into a directory, named after the image's content so repeated boots reuse them.
`read_vcfg_json` and `read_vcfg` read the image's VCFG, which sizes the VM.

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
from vinitd.errors import LayoutError, VinitdError
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG
from vmtest.errors import ImageUnsupported

QCOW2_MAGIC = b"QFI\xfb"


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


def read_vcfg_json(image: Path) -> bytes:
    """The VCFG JSON stored in ``image``, undecoded; ImageUnsupported unless it is a raw
    vorteil image."""
    source = str(image)
    try:
        with image.open("rb") as handle:
            if handle.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC:
                raise ImageUnsupported(
                    "a qcow2 image; direct boot reads raw images",
                    source=source,
                    hint=f"qemu-img convert -O raw {image} {image.with_suffix('.raw')}",
                )
            handle.seek(0)
            return layout.read_vcfg_json(handle)
    except OSError as err:
        raise ImageUnsupported(f"cannot read: {err.strerror}", source=source) from err
    except LayoutError as err:
        raise ImageUnsupported(err.problem, source=source) from err


def read_vcfg(image: Path) -> VCFG:
    """The VCFG stored in ``image``; ImageUnsupported if it cannot be read or decoded."""
    data = read_vcfg_json(image)
    try:
        return codec.loads(data)
    except VinitdError as err:
        raise ImageUnsupported(f"VCFG: {err}", source=str(image)) from err


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
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
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
    os.execvp(command[0], command)  # noqa: S606 - an argv list; QEMU replaces this process


if __name__ == "__main__":
    sys.exit(main())
