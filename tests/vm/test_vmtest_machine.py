"""vmtest.Machine against real images under TCG: each stage, each kind of failure, power-off."""

from __future__ import annotations

import gc
import logging
import os
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.cache import BuildCache
from imagekit.errors import EnvironmentFailure
from imagekit.image import BuildRequest, build
from imagekit.tools import require
from vinitd import layout
from vmtest import (
    InitCrashed,
    KernelPanic,
    Machine,
    ProgramFailed,
    ShutdownHung,
    Stage0Failed,
    StageFailed,
    bootfiles,
)
from vmtest.accel import Accel, probe
from vmtest.events import timeline

pytestmark = pytest.mark.vm

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
GREETING = "hello from a vorteil micro-VM"
TOOLS = ("qemu-system-x86_64", "mke2fs", "debugfs", "sgdisk", "fakeroot")
# Same length as "/usr/bin/python3", so the VCFG JSON keeps its length.
MISSING_BINARY = "/nonexistent/py3"
POWER_EVENTS = ("POWERDOWN", "SHUTDOWN", "RESET")  # QMP also reports NIC filter changes

FAILING_VCFG = """
[[program]]
binary = "/usr/bin/python3"
args = "-c 'import sys; print(\\"failing on purpose\\"); sys.exit(3)'"
[info]
name = "failing"
"""

SLEEPER_VCFG = """
[[program]]
binary = "/usr/bin/python3"
args = "-c 'import time; time.sleep(600)'"
[info]
name = "sleeper"
"""


@dataclass(frozen=True)
class Images:
    hello: Path
    failing: Path
    sleeper: Path
    missing_binary: Path
    bad_vcfg: Path


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def _project(directory: Path, vcfg: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "default.vcfg").write_text(vcfg)
    return directory


def _patched(image: Path, output: Path, old: bytes, new: bytes) -> Path:
    """A copy of ``image`` whose VCFG JSON has ``old`` replaced by ``new`` (same length, so
    the config block's ConfigLen stays right)."""
    assert len(old) == len(new)
    output.write_bytes(image.read_bytes())
    with output.open("r+b") as handle:
        offset, length = layout.read_config_block(handle).json_span()
        handle.seek(offset)
        data = handle.read(length)
        assert old in data, data
        handle.seek(offset)
        handle.write(data.replace(old, new, 1))
    return output


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """The test images, built once per test run with the shared build cache."""
    for tool in TOOLS:
        try:
            require(tool)
        except EnvironmentFailure as err:
            _skip_or_fail(err.message)
    out = tmp_path_factory.mktemp("vmtest-images")
    projects = {
        "failing": _project(out / "failing", FAILING_VCFG),
        "sleeper": _project(out / "sleeper", SLEEPER_VCFG),
    }
    with BuildCache() as cache:
        built = {}
        for name, project in [("hello", HELLO), *projects.items()]:
            request = BuildRequest(spec=str(project), output=out / f"{name}.raw")
            built[name] = build(request, cache=cache).path
    hello = built["hello"]
    yield Images(
        hello,
        built["failing"],
        built["sleeper"],
        _patched(
            hello,
            out / "missing-binary.raw",
            b'"binary":"/usr/bin/python3"',
            f'"binary":"{MISSING_BINARY}"'.encode(),
        ),
        _patched(hello, out / "bad-vcfg.raw", b'"privilege":"root"', b'"privilege":"xxxx"'),
    )


def test_hello_boots_through_its_stages_and_powers_off(images: Images) -> None:
    """pre-setup and launch finish, program 0 exits 0, the VM powers off with status 0."""
    started = time.monotonic()
    with Machine(images.hello, accel="tcg") as vm:
        vm.wait_for_stage("pre-setup")
        vm.wait_for_stage("launch")
        exited = vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0
        log.info("hello: QEMU exit after %.2f s", time.monotonic() - started)

        assert exited["exit_status"] == 0
        assert GREETING in vm.console
        spans = {span.stage: span for span in vm.timeline}
        pre_setup, launch = spans["pre-setup"], spans["launch"]
        assert pre_setup.state == launch.state == "finished"
        for span in (pre_setup, launch):
            assert span.guest_start is not None and span.guest_end is not None
            assert span.host_start is not None and span.host_end is not None
            assert span.guest_start <= span.guest_end
            assert span.host_start <= span.host_end
        assert pre_setup.guest_end is not None and launch.guest_start is not None
        assert pre_setup.guest_end <= launch.guest_start
        init = vm.events[0]
        assert init.type == "init" and init["pid"] == 1
        assert pre_setup.guest_start is not None
        assert 0 < init["started"] < init.time <= pre_setup.guest_start  # imports took time
        power = [e.describe() for e in vm.qmp_events if e.name in POWER_EVENTS]
        assert power == ["SHUTDOWN(guest-shutdown)"]
        assert vm.failure() is None


def test_a_bad_vcfg_is_a_failed_stage(images: Images) -> None:
    """program[0].privilege "xxxx": pre-setup cannot decode the VCFG; StageFailed says why."""
    vm = Machine(images.bad_vcfg, accel="tcg")
    with vm, pytest.raises(StageFailed) as failed:
        vm.wait_for_stage("launch")
    assert failed.value.stage == "pre-setup"
    assert failed.value.message is not None and "privilege" in failed.value.message
    assert "'xxxx'" in str(failed.value)
    assert [(span.stage, span.state) for span in timeline(vm.events)] == [("pre-setup", "failed")]
    assert vm.returncode == 0


def test_a_missing_program_binary_is_a_failed_program(images: Images) -> None:
    """program[0].binary does not exist: the program fails to start and the VM powers off."""
    vm = Machine(images.missing_binary, accel="tcg")
    with vm, pytest.raises(ProgramFailed) as failed:
        vm.wait_for_program(0, "started")
    assert failed.value.exit_status is None
    assert failed.value.message is not None and MISSING_BINARY in failed.value.message
    assert f"program[0] failed to start: {MISSING_BINARY}" in str(failed.value)


def test_a_program_exiting_non_zero_is_a_failed_program(images: Images) -> None:
    """Waiting for success of a program that exits 3 raises ProgramFailed with status 3."""
    with Machine(images.failing, accel="tcg") as vm:
        with pytest.raises(ProgramFailed) as failed:
            vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0
    assert failed.value.exit_status == 3
    assert "program[0] exited with status 3" in str(failed.value)
    assert "failing on purpose" in vm.console


def test_an_init_stage0_cannot_find_is_a_stage0_failure(images: Images) -> None:
    """init=/nonexistent: stage 0 says so on the console and powers off."""
    vm = Machine(images.hello, accel="tcg", extra_kernel_args=["init=/nonexistent"])
    with vm, pytest.raises(Stage0Failed) as failed:
        vm.wait_for_stage("pre-setup")
    assert failed.value.message.startswith("init /nonexistent not found on vda")
    assert vm.returncode == 0
    assert vm.events == []


def test_no_initramfs_init_is_a_kernel_panic(images: Images) -> None:
    """rdinit=/nope: the kernel looks for the root itself, cannot mount it and panics."""
    vm = Machine(images.hello, accel="tcg", extra_kernel_args=["rdinit=/nope"])
    with vm, pytest.raises(KernelPanic) as panicked:
        vm.wait_for_stage("pre-setup")
    assert not isinstance(panicked.value, InitCrashed)
    assert panicked.value.reason.startswith("VFS: Unable to mount root fs")
    assert "Kernel panic - not syncing: VFS" in str(panicked.value)


def test_an_init_that_exits_is_an_init_crash(images: Images) -> None:
    """init=<a program that exits 1>: the kernel panics with 'Attempted to kill init'."""
    vm = Machine(images.hello, accel="tcg", extra_kernel_args=["init=/lib64/ld-linux-x86-64.so.2"])
    with vm, pytest.raises(InitCrashed) as crashed:
        vm.wait_for_stage("pre-setup")
    assert crashed.value.exitcode == 0x100
    assert "init crashed (exit status 1)" in str(crashed.value)


def test_the_power_button_terminates_the_program_and_powers_off(images: Images) -> None:
    """A running VM does not end by itself (ShutdownHung); the power button powers it off."""
    with Machine(images.sleeper, accel="tcg") as vm:
        vm.wait_for_program(0, "started")
        with pytest.raises(ShutdownHung):
            vm.wait_for_shutdown(timeout=0.5)
        vm.powerdown()
        assert vm.wait_for_shutdown() == 0
    exited = [e for e in vm.events if e.is_program(0, "exited")]
    assert [e.signal for e in exited] == ["SIGTERM"]
    shutdown = [e.state for e in vm.events if e.type == "shutdown"]
    assert shutdown[0] == "begun" and shutdown[-1] == "synced"
    begun = next(e for e in vm.events if e.type == "shutdown")
    assert begun["reason"] == "power button"
    assert [e.name for e in vm.qmp_events if e.name in POWER_EVENTS] == ["POWERDOWN", "SHUTDOWN"]


def test_an_abandoned_machine_takes_qemu_down(images: Images) -> None:
    """A Machine dropped without close() still kills its QEMU (weakref finalizer)."""
    vm = Machine(images.sleeper, accel="tcg").start()
    pid = vm.pid
    assert pid is not None and vm.running
    watcher = weakref.ref(vm)
    del vm
    gc.collect()
    assert watcher() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_auto_accel_boots_with_whichever_accelerator_works(images: Images) -> None:
    """accel='auto' probes KVM once and boots hello with the outcome."""
    with Machine(images.hello, accel="auto") as vm:
        assert vm.accel in ("kvm", "tcg")
        vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0


def test_the_kvm_probe_recognises_a_running_kernel_under_tcg(images: Images) -> None:
    """The probe's test itself: under TCG the image's kernel reaches its root-mount panic."""
    result = probe(bootfiles.extract(images.hello).kernel, Accel.TCG)
    assert result.works, result.detail
    log.info("probe under TCG: %s", result.detail)
