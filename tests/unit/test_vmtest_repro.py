"""Repro bundles without QEMU: the files written, and repro.sh run against a fake QEMU."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from vmtest import command
from vmtest.accel import Accel, Decision
from vmtest.bootfiles import BootFiles
from vmtest.command import Argument, CommandSpec, PortForward, Protocol, Sized, Sockets
from vmtest.events import Event
from vmtest.qmp import QmpEvent
from vmtest.report import FailureInfo
from vmtest.repro import Bundle, HostFacts, console_arguments, write

FAKE_QEMU = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_QEMU_ARGV"
echo "fake QEMU booted"
"""


def _arguments(tmp_path: Path, image: Path) -> tuple[Argument, ...]:
    kernel, initrd = tmp_path / "boot-linux", tmp_path / "boot-initrd"
    kernel.write_bytes(b"kernel bytes")
    initrd.write_bytes(b"initrd bytes")
    sockets = tmp_path / "sockets"
    spec = CommandSpec(
        name="hello",
        image=image,
        boot_files=BootFiles(kernel, initrd, "quiet console=ttyS0", image),
        kernel_args="quiet console=ttyS0 init=/vorteil/vinitd",
        accel=Decision(Accel.TCG, "requested: emulation"),
        memory_mib=Sized(256, "default"),
        cpus=Sized(1, "default"),
        writable=False,
        networks=((PortForward(0, Protocol.TCP, 80, 8080, "http"),),),
        sockets=Sockets(sockets / "c.sock", sockets / "e.sock", sockets / "q.sock"),
    )
    return command.build(spec)


def _events() -> tuple[Event, ...]:
    lines = [
        ({"type": "stage", "stage": "pre-setup", "state": "started", "time": 4.45}, 5.21),
        ({"type": "stage", "stage": "pre-setup", "state": "finished", "time": 4.55}, 5.31),
        ({"type": "program", "index": 0, "state": "failed", "message": "gone", "time": 6.9}, 7.6),
    ]
    return tuple(Event({"v": 1, **fields}, host) for fields, host in lines)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "images" / "hello.raw"
    path.parent.mkdir()
    path.write_bytes(b"not really a disk, but bytes to hash" * 100)
    return path


@pytest.fixture
def bundle(tmp_path: Path, image: Path) -> Bundle:
    return Bundle(
        name="hello",
        image=image,
        arguments=_arguments(tmp_path, image),
        kernel_args="quiet console=ttyS0 init=/vorteil/vinitd",
        vcfg_json=b'{"programs":[{"binary":"/usr/bin/python3"}],"info":{"name":"hello"}}',
        console=b"booting\r\nprogram[0] failed\r\n",
        qemu_stderr="",
        events=_events(),
        qmp_events=(QmpEvent("SHUTDOWN", {"reason": "guest-shutdown"}, 7.9, 1.7e9),),
        host=HostFacts(
            "QEMU 7.2", "tcg", "requested", "/dev/kvm missing", "Linux 6", "x86_64", 2, "3.11"
        ),
        failure=FailureInfo("ProgramFailed", "program[0] failed to start: gone", "long message"),
        returncode=0,
    )


def test_console_arguments_drop_the_sockets_and_put_the_serial_on_stdio(
    tmp_path: Path, image: Path
) -> None:
    """No event port, no QMP, serial on stdio, the disk a snapshot; the rest as recorded."""
    recorded = _arguments(tmp_path, image)
    words = command.argv(console_arguments(recorded))
    assert "-qmp" not in words
    assert not any("socket," in word or "virtserialport" in word for word in words)
    assert words[words.index("-serial") + 1] == "stdio"
    assert "-device" in words and "virtio-serial-pci,id=vserial0" in words  # the bus stays
    assert f"file={image},if=none,id=disk0,format=raw,snapshot=on" in words
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80" in words
    result = console_arguments(recorded)
    changed = [a.option for a in recorded if a not in result]
    assert changed == ["-chardev", "-serial", "-chardev", "-device", "-qmp"]
    assert len(result) == len(recorded) - 4  # -serial changed, not dropped


def test_console_arguments_make_a_writable_disk_a_snapshot(tmp_path: Path, image: Path) -> None:
    """A repro never writes to the image, even when the run did (writable=True)."""
    drive = Argument("-drive", f"file={image},if=none,id=disk0,format=raw", "writable")
    (kept,) = console_arguments([drive])
    assert kept.value == f"file={image},if=none,id=disk0,format=raw,snapshot=on"


def test_a_bundle_holds_every_file(tmp_path: Path, bundle: Bundle, image: Path) -> None:
    """Each file of the bundle exists with what it should say."""
    out = tmp_path / "bundle"
    artifacts = write(bundle, out)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()

    assert artifacts.directory == out
    names = {path.relative_to(out).as_posix() for path in artifacts.files.values()}
    assert names == {
        "image.sha256", "qemu-argv.json", "qemu-argv.txt", "qemu-explain.txt",
        "kernel-cmdline.txt", "vcfg.json", "console.log", "qemu.stderr", "events.jsonl",
        "qmp-events.jsonl", "timeline.txt", "timeline.json", "host.json", "failure.txt",
        "boot/boot-linux", "boot/boot-initrd", "repro.sh", "bundle.json",
    }  # fmt: skip
    assert (out / "image.sha256").read_text() == f"{digest}  {image}\n"
    assert json.loads((out / "qemu-argv.json").read_text()) == bundle.argv
    assert "# the image; snapshot=on" in (out / "qemu-explain.txt").read_text()
    assert (out / "kernel-cmdline.txt").read_text() == bundle.kernel_args + "\n"
    assert json.loads((out / "vcfg.json").read_text())["info"]["name"] == "hello"
    assert (out / "console.log").read_bytes() == bundle.console
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["host_time"] for e in events] == [5.21, 5.31, 7.6]
    assert events[2]["message"] == "gone"
    qmp = json.loads((out / "qmp-events.jsonl").read_text())
    assert qmp["event"] == "SHUTDOWN" and qmp["data"] == {"reason": "guest-shutdown"}
    assert (out / "timeline.txt").read_text().splitlines()[1].split() == [
        "pre-setup", "finished", "4.450", "4.550", "5.210", "5.310",
    ]  # fmt: skip
    assert json.loads((out / "timeline.json").read_text())[0]["guest_seconds"] == 0.1
    host = json.loads((out / "host.json").read_text())
    assert host["accel"] == "tcg" and host["cpus"] == 2 and host["kvm"] == "/dev/kvm missing"
    assert (out / "failure.txt").read_text() == "ProgramFailed: long message\n"
    assert (out / "boot" / "boot-linux").read_bytes() == b"kernel bytes"
    summary = json.loads((out / "bundle.json").read_text())
    assert summary["image"] == str(image) and summary["image_sha256"] == digest
    assert summary["failure"]["class"] == "ProgramFailed"
    assert summary["files"]["repro"] == "repro.sh"


def test_a_bundle_without_failure_has_no_failure_file(tmp_path: Path, bundle: Bundle) -> None:
    """Writing a passing run's bundle over a failed one's removes failure.txt."""
    out = tmp_path / "bundle"
    write(bundle, out)
    write(Bundle(**{**bundle.__dict__, "failure": None}), out)
    assert not (out / "failure.txt").exists()
    assert json.loads((out / "bundle.json").read_text())["failure"] is None


@pytest.fixture
def fake_qemu(tmp_path: Path) -> dict[str, str]:
    """An environment whose qemu-system-x86_64 records its argv and exits."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU)
    qemu.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_QEMU_ARGV": str(tmp_path / "argv.txt"),
    }


def run_repro(bundle: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The bundle's repro.sh, with the fake QEMU first on PATH."""
    return subprocess.run(
        [str(bundle / "repro.sh"), *args], env=env, capture_output=True, text=True, check=False
    )


def test_repro_sh_boots_the_recorded_command(
    tmp_path: Path, bundle: Bundle, image: Path, fake_qemu: dict[str, str]
) -> None:
    """repro.sh is executable, checks the image, and runs QEMU with the console on stdio."""
    out = tmp_path / "bundle"
    write(bundle, out)
    script = out / "repro.sh"
    assert os.access(script, os.X_OK)
    assert f"image={image}\n" in script.read_text()

    result = run_repro(out, fake_qemu, "-S")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "fake QEMU booted\n"
    assert "WARNING" not in result.stderr
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    expected = command.argv(console_arguments(bundle.arguments))[1:]
    expected[expected.index("-kernel") + 1] = str(out / "boot" / "boot-linux")
    expected[expected.index("-initrd") + 1] = str(out / "boot" / "boot-initrd")
    assert argv == [*expected, "-S"]


def test_repro_sh_warns_when_the_image_changed(
    tmp_path: Path, bundle: Bundle, image: Path, fake_qemu: dict[str, str]
) -> None:
    """A changed image still boots, with a warning naming both hashes."""
    write(bundle, tmp_path / "bundle")
    image.write_bytes(b"changed")
    result = run_repro(tmp_path / "bundle", fake_qemu)
    assert result.returncode == 0
    assert f"WARNING: {image} changed since the run" in result.stderr
    assert hashlib.sha256(b"changed").hexdigest() in result.stderr


def test_repro_sh_stops_when_the_image_is_gone(
    tmp_path: Path, bundle: Bundle, image: Path, fake_qemu: dict[str, str]
) -> None:
    """No image, no boot: exit status 1 and a line saying so."""
    write(bundle, tmp_path / "bundle")
    image.unlink()
    result = run_repro(tmp_path / "bundle", fake_qemu)
    assert result.returncode == 1
    assert f"the image {image} is gone" in result.stderr
    assert not (tmp_path / "argv.txt").exists()
