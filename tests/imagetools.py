"""Helpers for tests that build disk images and look into them or boot them.

imagekit(...)             the CLI in a subprocess: real exit status, stdout and stderr
write_project(...)        a small project directory from a VCFG text and files
built_hello(...)          examples/hello built once per test session
root_partition(...)       where the root filesystem starts, from the image's own GPT
stat_inode(...), ...      debugfs and dumpe2fs on the root filesystem, no mounting
extract_boot_files(...)   the image's kernel, initramfs and command line, for QEMU
boot(...)                 QEMU under TCG until the guest powers off, with the event port
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.errors import EnvironmentFailure
from imagekit.tools import require
from vinitd import bundle, gpt, layout

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "hello"
BUILD_TIMEOUT = 600.0
BOOT_TIMEOUT = 120.0
GREETING = "hello from a vorteil micro-VM"
# Tools the image checks and boots need, for a skip (a failure under CI=true) when absent.
IMAGE_TOOLS = ("mke2fs", "e2fsck", "debugfs", "dumpe2fs", "fakeroot", "sgdisk", "qemu-img")
VM_TOOLS = (*IMAGE_TOOLS, "qemu-system-x86_64")
_HELLO_KEY = pytest.StashKey["BuiltImage"]()


def require_tools(tools: Sequence[str]) -> None:
    """Skip the test when a tool is missing (the CI hook in conftest turns that into a failure)."""
    for tool in tools:
        try:
            require(tool)
        except EnvironmentFailure as err:
            pytest.skip(f"{err.message} ({err.hint})")


def imagekit(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    launcher: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m imagekit.cli ARGS``; ``env`` adds variables, None removes one.

    ``launcher`` is Python code run with ``-c`` instead of ``-m imagekit.cli``; it gets ARGS
    in ``sys.argv[1:]`` (for patching the CLI's process before it starts).
    """
    merged = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    entry = ["-c", launcher] if launcher is not None else ["-m", "imagekit.cli"]
    return subprocess.run(
        [sys.executable, *entry, *args],
        cwd=ROOT,
        env=merged,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        preexec_fn=preexec_fn,
        check=False,
    )


def build(
    project: Path, output: Path, *options: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``imagekit build PROJECT -o OUTPUT OPTIONS``; fails the test unless it succeeds."""
    environment: dict[str, str | None] = {"SOURCE_DATE_EPOCH": None}
    environment.update(env or {})
    result = imagekit("build", str(project), "-o", str(output), *options, env=environment)
    assert result.returncode == 0, f"imagekit build failed:\n{result.stderr}"
    return result


def write_project(directory: Path, vcfg: str, files: Mapping[str, str] | None = None) -> Path:
    """A project directory with ``default.vcfg`` and ``files`` (name to text)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.vcfg").write_text(vcfg)
    for name, text in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


@dataclass(frozen=True)
class BuiltImage:
    """An image and what ``imagekit build`` printed while making it."""

    path: Path
    stdout: str
    stderr: str


def built_hello(config: pytest.Config, factory: pytest.TempPathFactory) -> BuiltImage:
    """examples/hello built with the default cache, once per test run (test modules share it)."""
    if _HELLO_KEY not in config.stash:
        require_tools(IMAGE_TOOLS)
        output = factory.mktemp("hello") / "hello.raw"
        result = build(HELLO, output)
        config.stash[_HELLO_KEY] = BuiltImage(output, result.stdout, result.stderr)
    return config.stash[_HELLO_KEY]


def qemu_processes(marker: str) -> list[str]:
    """Command lines of running QEMUs that mention ``marker`` (a test's own path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(words).decode(errors="replace")
        if words and b"qemu-system" in words[0] and marker in line:
            found.append(line)
    return found


def read_partitions(image: Path) -> tuple[gpt.GptHeader, list[gpt.GptEntry]]:
    with image.open("rb") as handle:
        return gpt.read_gpt(handle, source=str(image))


def root_partition(image: Path) -> gpt.GptEntry:
    _, entries = read_partitions(image)
    (root,) = [entry for entry in entries if entry.name == layout.ROOT_PARTITION_NAME]
    return root


def root_offset(image: Path) -> int:
    """Byte offset of the root filesystem, as debugfs and e2fsck take it (``IMAGE?offset=``)."""
    return root_partition(image).first_lba * gpt.SECTOR


def tool(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host tool (found like imagekit finds it, /usr/sbin included)."""
    return subprocess.run(
        [require(argv[0]), *argv[1:]], capture_output=True, text=True, check=check, timeout=120
    )


def debugfs(image: Path, request: str) -> str:
    """One read-only debugfs request on the root filesystem; its output."""
    target = f"{image}?offset={root_offset(image)}"
    return tool(["debugfs", "-R", request, target]).stdout


@dataclass(frozen=True)
class Inode:
    kind: str
    mode: int
    uid: int
    gid: int


def stat_inode(image: Path, path: str) -> Inode:
    """Type, permission bits and owner of ``path`` in the root filesystem."""
    text = debugfs(image, f"stat {path}")
    kind = re.search(r"Type:\s+(\S+)\s+Mode:\s+([0-7]+)", text)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    if kind is None or owner is None:
        raise AssertionError(f"debugfs cannot stat {path} in {image}: {text!r}")
    return Inode(kind[1], int(kind[2], 8), int(owner[1]), int(owner[2]))


def list_directory(image: Path, path: str) -> list[str]:
    """Names in a directory of the root filesystem (``ls -p``: /inode/mode/uid/gid/name/...)."""
    names = []
    for line in debugfs(image, f"ls -p {path}").splitlines():
        fields = line.split("/")
        if len(fields) >= 6 and fields[5] not in (".", ".."):
            names.append(fields[5])
    return names


def superblock(image: Path) -> dict[str, str]:
    """The root filesystem's superblock fields, as ``dumpe2fs -h`` names them."""
    output = tool(["dumpe2fs", "-h", f"{image}?offset={root_offset(image)}"]).stdout
    fields = {}
    for line in output.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


def free_bytes(image: Path) -> int:
    fields = superblock(image)
    return int(fields["Free blocks"]) * int(fields["Block size"])


@dataclass(frozen=True)
class BootFiles:
    """What a loader takes from the image: kernel, initramfs and the command line."""

    kernel: Path
    initrd: Path
    kernel_args: str


def extract_boot_files(image: Path, directory: Path) -> BootFiles:
    """Copy the bundle's ``linux`` and ``initrd`` members out; read the config block's args."""
    directory.mkdir(parents=True, exist_ok=True)
    with image.open("rb") as handle:
        members = bundle.read_bundle(handle, source=str(image))
        paths = []
        for name in (bundle.KERNEL_MEMBER, bundle.INITRD_MEMBER):
            member = bundle.find_member(members, name, source=str(image))
            path = directory / name
            path.write_bytes(bundle.read_member(handle, member, source=str(image)))
            paths.append(path)
        args = layout.read_config_block(handle, source=str(image)).kernel_args
    return BootFiles(kernel=paths[0], initrd=paths[1], kernel_args=args)


# Always attached: entropy, so the guest's first Python output does not wait for the pool.
BASE_DEVICES = ("-device", "virtio-rng-pci")


def event_port(events: Path) -> tuple[str, ...]:
    """A virtio-serial port named ``vinitd.events`` whose output goes to the file ``events``."""
    return (
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=events,path={events}",
        "-device", "virtserialport,chardev=events,name=vinitd.events",
    )  # fmt: skip


def qemu_argv(files: BootFiles, image: Path, *extra: str) -> list[str]:
    """Direct kernel boot of ``image`` under TCG (KVM is not trusted on the test machines)."""
    return [
        "qemu-system-x86_64",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "256",
        "-nographic",
        "-no-reboot",
        "-kernel", str(files.kernel),
        "-initrd", str(files.initrd),
        "-append", files.kernel_args,
        "-drive", f"file={image},if=virtio,format=raw,snapshot=on",
        *BASE_DEVICES,
        *extra,
    ]  # fmt: skip


@dataclass(frozen=True)
class Boot:
    """One QEMU run: the console, QEMU's exit status (None after a timeout), its duration."""

    console: str
    returncode: int | None
    seconds: float
    argv: tuple[str, ...]

    def describe(self) -> str:
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        return f"QEMU {status} after {self.seconds:.1f} s\n{' '.join(self.argv)}\n{self.console}"


def run_qemu(argv: Sequence[str], *, timeout: float = BOOT_TIMEOUT) -> Boot:
    """Run QEMU until it exits or ``timeout`` passes (then it is killed)."""
    started = time.monotonic()
    deadline = started + timeout
    output = bytearray()
    process = subprocess.Popen(
        [require(argv[0]), *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    returncode: int | None = None
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                returncode = process.wait(timeout=max(deadline - time.monotonic(), 1))
                break
            output += chunk
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    return Boot(
        console=output.decode(errors="replace"),
        returncode=returncode,
        seconds=time.monotonic() - started,
        argv=tuple(argv),
    )


def boot(image: Path, directory: Path) -> tuple[Boot, list[dict[str, object]]]:
    """Boot ``image`` from its own kernel, initramfs and command line, with the event port.

    The console is kept in ``directory/console.log`` for a failing test's reader.
    """
    files = extract_boot_files(image, directory / "boot")
    events = directory / "events.jsonl"
    events.touch()
    result = run_qemu(qemu_argv(files, image, *event_port(events)))
    (directory / "console.log").write_text(result.describe())
    return result, read_events(events)


def read_events(path: Path) -> list[dict[str, object]]:
    """The event port's JSON lines (a last line cut off by the power-off is dropped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
