"""Repro bundles: everything needed to understand a VM's run, and to boot it again.

`snapshot` takes what a `Machine` knows (after its run) into a `Bundle`; `write` lays it out
in a directory:

    bundle.json          the summary: VM, image and sha256, failure, host, the files below
    image.sha256         the image's sha256, as ``sha256sum`` prints it
    qemu-argv.json       the QEMU command, one word per item
    qemu-argv.txt        the same, shell-quoted on one line
    qemu-explain.txt     one option per line, each with the reason it is there
    kernel-cmdline.txt   the kernel command line
    vcfg.json            the image's VCFG, indented
    console.log          the serial console, byte for byte
    qemu.stderr          what QEMU wrote to its standard error
    events.jsonl         the events of vinitd's event port, with host times
    qmp-events.jsonl     QEMU's QMP events, with host times
    timeline.txt/.json   the stage timeline (guest and host times)
    host.json            QEMU's version, the accelerator and why, the host's kernel and CPUs
    failure.txt          the failure's class and message (only when there was one)
    boot/linux, initrd   the kernel and initramfs the VM booted (linked or copied)
    repro.sh             boots the same VM again with the console on the terminal

``repro.sh`` runs the recorded command with two differences: the serial console is on
stdio, and vmtest's sockets (event port, QMP) are left out; the disk is always a snapshot.
It names the image by its absolute path and checks its sha256 first, with a warning if
the image changed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vinitd.vcfg import codec
from vmtest import bootfiles, command
from vmtest.accel import kvm_problem
from vmtest.command import Argument
from vmtest.errors import VmtestError
from vmtest.events import Event, format_timeline, timeline
from vmtest.machine import CONSOLE_LOG, QEMU_STDERR, Machine
from vmtest.process import QEMU
from vmtest.qmp import QmpEvent
from vmtest.report import Artifacts, FailureInfo, span_to_dict

log = logging.getLogger(__name__)

REPRO_SCRIPT = "repro.sh"
_HASH_CHUNK = 1 << 20
# The chardevs, devices and options that exist only for vmtest's sockets.
_SOCKET_ONLY = (
    ("-chardev", "socket,id=console,"),
    ("-chardev", "socket,id=events,"),
    ("-device", "virtserialport,"),
    ("-qmp", ""),
)


@dataclass(frozen=True)
class HostFacts:
    """The host a VM ran on, as far as a failure may depend on it."""

    qemu: str
    accel: str
    accel_reason: str
    kvm: str
    kernel: str
    machine: str
    cpus: int
    python: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "qemu": self.qemu,
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "kvm": self.kvm,
            "kernel": self.kernel,
            "machine": self.machine,
            "cpus": self.cpus,
            "python": self.python,
        }


@dataclass(frozen=True)
class Bundle:
    """What a repro bundle holds, before it is written."""

    name: str
    image: Path
    arguments: tuple[Argument, ...]
    kernel_args: str
    vcfg_json: bytes | None
    console: bytes
    qemu_stderr: str
    events: tuple[Event, ...]
    qmp_events: tuple[QmpEvent, ...]
    host: HostFacts
    failure: FailureInfo | None = None
    returncode: int | None = None

    @property
    def argv(self) -> list[str]:
        return [QEMU, *(word for argument in self.arguments for word in argument.words())]


def qemu_version() -> str:
    """The first line of ``qemu-system-x86_64 --version``, or why there is none."""
    try:
        result = subprocess.run(
            [QEMU, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else f"unknown (exit status {result.returncode})"


def host_facts(accel: str, accel_reason: str) -> HostFacts:
    return HostFacts(
        qemu=qemu_version(),
        accel=accel,
        accel_reason=accel_reason,
        kvm=kvm_problem() or "/dev/kvm answers (accel auto also boots a probe under it)",
        kernel=f"{platform.system()} {platform.release()}",
        machine=platform.machine(),
        cpus=os.cpu_count() or 0,
        python=platform.python_version(),
    )


def snapshot(vm: Machine, failure: FailureInfo | None = None) -> Bundle:
    """What ``vm`` knows now (call it after the run); ``failure`` defaults to its own."""
    if failure is None:
        seen = vm.failure()
        failure = FailureInfo.of(seen) if seen is not None else None
    try:
        arguments, kernel_args = vm.arguments, vm.kernel_args
        accel, reason = str(vm.accel), vm.accel_reason
    except VmtestError as err:  # the Machine could not even plan its command
        arguments, kernel_args, accel, reason = (), "", "", f"no command ({err})"
    try:
        vcfg_json: bytes | None = bootfiles.read_vcfg_json(vm.image)
    except VmtestError:
        vcfg_json = None
    console = vm.console.encode()
    if arguments:  # the log keeps the exact bytes (carriage returns included)
        try:
            console = (vm.workdir / CONSOLE_LOG).read_bytes()
        except OSError as err:
            log.debug("repro bundle: no console log: %s", err)
    return Bundle(
        name=vm.name,
        image=vm.image.resolve(),
        arguments=tuple(arguments),
        kernel_args=kernel_args,
        vcfg_json=vcfg_json,
        console=console,
        qemu_stderr=vm.stderr,
        events=tuple(vm.events),
        qmp_events=tuple(vm.qmp_events),
        host=host_facts(accel, reason),
        failure=failure,
        returncode=vm.returncode,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write(bundle: Bundle, directory: Path) -> Artifacts:
    """Write ``bundle`` into ``directory`` (created; files of an earlier bundle replaced)."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(role: str, name: str, data: str | bytes) -> None:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
        files[role] = path

    try:
        image_sha256: str | None = sha256_of(bundle.image)
    except OSError as err:
        log.warning("repro bundle: cannot hash %s: %s", bundle.image, err.strerror)
        image_sha256 = None
    spans = timeline(bundle.events)
    put("image_sha256", "image.sha256", f"{image_sha256 or 'unknown'}  {bundle.image}\n")
    put("argv", "qemu-argv.json", json.dumps(bundle.argv, indent=2) + "\n")
    put("argv_text", "qemu-argv.txt", shlex.join(bundle.argv) + "\n")
    explained = command.explain(bundle.arguments) if bundle.arguments else "(no command)"
    put("explain", "qemu-explain.txt", explained + "\n")
    put("kernel_cmdline", "kernel-cmdline.txt", bundle.kernel_args + "\n")
    put("vcfg", "vcfg.json", _pretty_vcfg(bundle.vcfg_json))
    put("console", CONSOLE_LOG, bundle.console)
    put("qemu_stderr", QEMU_STDERR, bundle.qemu_stderr)
    put("events", "events.jsonl", _jsonl(event.to_dict() for event in bundle.events))
    put("qmp_events", "qmp-events.jsonl", _jsonl(event.to_dict() for event in bundle.qmp_events))
    put("timeline", "timeline.txt", format_timeline(spans) + "\n")
    put(
        "timeline_json",
        "timeline.json",
        json.dumps([span_to_dict(s) for s in spans], indent=2) + "\n",
    )
    put("host", "host.json", json.dumps(bundle.host.to_dict(), indent=2) + "\n")
    if bundle.failure is not None:
        put("failure", "failure.txt", f"{bundle.failure.kind}: {bundle.failure.message}\n")
    else:
        (directory / "failure.txt").unlink(missing_ok=True)
    boot = _keep_boot_files(bundle.arguments, directory / "boot")
    files.update(boot)
    script = directory / REPRO_SCRIPT
    script.write_text(repro_script(bundle, image_sha256, boot), encoding="utf-8")
    script.chmod(0o755)
    files["repro"] = script
    summary = {
        "vm": bundle.name,
        "image": str(bundle.image),
        "image_sha256": image_sha256,
        "failure": bundle.failure.to_dict() if bundle.failure else None,
        "qemu_exit_status": bundle.returncode,
        "host": bundle.host.to_dict(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {role: str(path.relative_to(directory)) for role, path in files.items()},
    }
    put("summary", "bundle.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log.info("repro bundle of %s in %s", bundle.name, directory)
    return Artifacts(directory, files)


def _pretty_vcfg(data: bytes | None) -> str:
    if data is None:
        return "null\n"
    try:
        return codec.dumps_pretty(codec.loads(data)) + "\n"
    except Exception:  # any VCFG the codec refuses is still worth keeping as it was
        return data.decode("utf-8", errors="replace") + "\n"


def _jsonl(items: Any) -> str:
    return "".join(json.dumps(item, ensure_ascii=False, default=str) + "\n" for item in items)


def _keep_boot_files(arguments: Sequence[Argument], directory: Path) -> dict[str, Path]:
    """Hard links (else copies) of the kernel and initramfs in the bundle: the extracted
    files live in a shared temporary directory that may be cleaned before the repro runs."""
    kept: dict[str, Path] = {}
    for option, role in (("-kernel", "kernel"), ("-initrd", "initrd")):
        source = next((Path(a.value) for a in arguments if a.option == option and a.value), None)
        if source is None:
            continue
        target = directory / source.name
        directory.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            try:
                shutil.copyfile(source, target)
            except OSError as err:
                log.warning("repro bundle: cannot keep %s: %s", source, err.strerror)
                continue
        kept[role] = target
    return kept


def console_arguments(arguments: Sequence[Argument]) -> tuple[Argument, ...]:
    """The same VM with the serial console on stdio and without vmtest's sockets; the disk
    always a snapshot."""
    kept: list[Argument] = []
    for argument in arguments:
        value = argument.value or ""
        if any(argument.option == o and value.startswith(v) for o, v in _SOCKET_ONLY):
            continue
        if argument.option == "-serial":
            argument = Argument("-serial", "stdio", "the console on this terminal")
        elif argument.option == "-drive" and "snapshot=on" not in value:
            argument = replace(argument, value=value + ",snapshot=on")
        kept.append(argument)
    return tuple(kept)


def repro_script(bundle: Bundle, image_sha256: str | None, boot_files: Mapping[str, Path]) -> str:
    """The text of repro.sh (see the module docstring)."""
    lines = []
    for argument in console_arguments(bundle.arguments):
        kept = boot_files.get(argument.option[1:])
        if kept is not None:  # -kernel and -initrd: the copies beside this script
            words = f'{argument.option} "$here"/boot/{shlex.quote(kept.name)}'
        else:
            words = shlex.join(argument.words())
        lines.append(f"    {words} \\")
    failure = bundle.failure.summary if bundle.failure else "no failure"
    qemu = "\n".join([f"    {QEMU} \\", *lines, '    "$@"'])
    return f"""#!/usr/bin/env bash
# Boots VM {_comment(bundle.name)} again, as vmtest ran it, with the console on this terminal.
# That run: {_comment(failure)}
# The same command but for vmtest's sockets (no event port, no QMP); guest writes go to a
# snapshot, the image is not changed. QEMU ends when the guest powers off (Ctrl-C ends it
# too). Extra words are passed on to QEMU, e.g. ./repro.sh -S -gdb tcp:127.0.0.1:1234
set -euo pipefail
here=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
image={shlex.quote(str(bundle.image))}
recorded_sha256={shlex.quote(image_sha256 or "unknown")}

if [[ ! -f "$image" ]]; then
    echo "repro: the image $image is gone" >&2
    exit 1
fi
echo "repro: checking the sha256 of $image ..." >&2
actual_sha256=$(sha256sum "$image" | cut -d ' ' -f 1)
if [[ "$actual_sha256" != "$recorded_sha256" ]]; then
    echo "repro: WARNING: $image changed since the run (sha256 $actual_sha256, recorded" \\
        "$recorded_sha256): this boot may not reproduce it" >&2
fi
exec \\
{qemu}
"""


def _comment(text: str) -> str:
    return " ".join(text.split())
