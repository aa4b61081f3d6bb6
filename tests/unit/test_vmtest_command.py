"""vmtest.command and Machine's planning: the QEMU argv from an image's VCFG and the options."""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vinitd import bundle, layout
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG, VM, Info, Network
from vinitd.vcfg.values import Bytes
from vmtest import command
from vmtest.command import PortForward, Protocol
from vmtest.errors import BootModeUnavailable, ImageUnsupported, MachineOptionError
from vmtest.failures import QemuStartFailed
from vmtest.machine import Machine

KERNEL_ARGS = "rw quiet console=ttyS0,115200 init=/vorteil/vinitd panic=-1"
JSON_OFFSET = 64 * 512  # from the OS partition's start: right after the bundle


def make_image(path: Path, vcfg: VCFG | bytes) -> Path:
    """The smallest image Machine can plan for: config block, bundle and VCFG JSON."""
    data = vcfg if isinstance(vcfg, bytes) else codec.dumps(vcfg)
    block = layout.ConfigBlock(
        version=layout.CONFIG_VERSION,
        kernel_args=KERNEL_ARGS,
        config_offset=JSON_OFFSET,
        config_len=len(data),
        config_capacity=4096,
    )
    stream = bundle.write_bundle(
        [(bundle.KERNEL_MEMBER, b"fake kernel"), (bundle.INITRD_MEMBER, b"initrd")]
    )
    with path.open("wb") as handle:
        handle.truncate(layout.CONFIG_BLOCK_OFFSET + JSON_OFFSET + 4096)
        handle.seek(layout.CONFIG_BLOCK_OFFSET)
        handle.write(block.pack())
        handle.seek(layout.BUNDLE_LBA * 512)
        handle.write(stream)
        handle.seek(layout.CONFIG_BLOCK_OFFSET + JSON_OFFSET)
        handle.write(data)
    return path


WEB = VCFG(
    network=(Network(tcp=("9001",), http=("9002", "9001"), https=("9003",), udp=("9004",)),),
    vm=VM(cpus=2, ram=Bytes.mib(512)),
    info=Info(name="web app"),
)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Path]:
    yield make_image(tmp_path / "web.raw", WEB)


def _options(vm: Machine) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for argument in vm.arguments:
        grouped.setdefault(argument.option, []).append(argument.value or "")
    return grouped


def test_memory_cpus_and_name_come_from_the_vcfg(web: Path, tmp_path: Path) -> None:
    """vm.ram 512 MiB and vm.cpus 2 become -m 512 -smp 2; info.name names the VM."""
    vm = Machine(web, accel="tcg", workdir=tmp_path / "work", forward_ports=False)
    options = _options(vm)
    assert options["-m"] == ["512"]
    assert options["-smp"] == ["2"]
    assert options["-name"] == ["web-app"]
    assert vm.name == "web-app"
    assert vm.argv[0] == "qemu-system-x86_64"
    assert vm.argv[vm.argv.index("-accel") + 1] == "tcg"


def test_overrides_win_over_the_vcfg(web: Path, tmp_path: Path) -> None:
    """memory_mib, cpus and name given to the Machine replace the VCFG's."""
    vm = Machine(web, accel="tcg", memory_mib=128, cpus=1, name="other", workdir=tmp_path)
    options = _options(vm)
    assert (options["-m"], options["-smp"], options["-name"]) == (["128"], ["1"], ["other"])
    reasons = {a.option: a.reason for a in vm.arguments}
    assert reasons["-m"] == "memory_mib given to the Machine"


def test_defaults_when_the_vcfg_sets_no_size(tmp_path: Path) -> None:
    """No [vm] values: vmtest's defaults, said so in the reasons."""
    vm = Machine(make_image(tmp_path / "bare.raw", VCFG()), accel="tcg", workdir=tmp_path)
    options = _options(vm)
    assert (options["-m"], options["-smp"]) == (["256"], ["1"])
    assert "-netdev" not in options
    assert vm.name == "bare"


def test_the_fixed_device_set_in_order(web: Path, tmp_path: Path) -> None:
    """The exact option sequence: machine, accel, sizes, no defaults, boot, disk, NIC, rest."""
    vm = Machine(web, accel="tcg", workdir=tmp_path / "w", forward_ports=False)
    assert [a.option for a in vm.arguments] == [
        "-name", "-machine", "-accel", "-m", "-smp", "-nodefaults", "-no-user-config",
        "-display", "-no-reboot", "-kernel", "-initrd", "-append", "-drive", "-device",
        "-netdev", "-device", "-device", "-chardev", "-serial", "-device", "-chardev",
        "-device", "-qmp",
    ]  # fmt: skip
    options = _options(vm)
    assert options["-machine"] == ["q35"]
    assert options["-display"] == ["none"]
    assert options["-append"] == [KERNEL_ARGS]
    assert options["-device"] == [
        "virtio-blk-pci,drive=disk0",
        "virtio-net-pci,netdev=net0,romfile=",
        "virtio-rng-pci",
        "virtio-serial-pci,id=vserial0",
        "virtserialport,bus=vserial0.0,chardev=events,name=vinitd.events",
    ]
    sockets = tmp_path.resolve() / "w"
    assert options["-chardev"] == [
        f"socket,id=console,path={sockets}/console.sock,server=off",
        f"socket,id=events,path={sockets}/events.sock,server=off",
    ]
    assert options["-serial"] == ["chardev:console"]
    assert options["-qmp"] == [f"unix:{sockets}/qmp.sock,server=on,wait=off"]
    assert options["-netdev"] == ["user,id=net0"]


def test_the_disk_is_a_snapshot_unless_writable(web: Path, tmp_path: Path) -> None:
    """snapshot=on keeps the image unchanged; writable=True leaves it out."""
    snapshot = _options(Machine(web, accel="tcg", workdir=tmp_path, forward_ports=False))
    writable = _options(
        Machine(web, accel="tcg", workdir=tmp_path, writable=True, forward_ports=False)
    )
    image = web.resolve()
    assert snapshot["-drive"] == [f"file={image},if=none,id=disk0,format=raw,snapshot=on"]
    assert writable["-drive"] == [f"file={image},if=none,id=disk0,format=raw"]


def test_extra_kernel_args_go_last(web: Path, tmp_path: Path) -> None:
    """Later words win on the kernel command line."""
    vm = Machine(web, accel="tcg", workdir=tmp_path, extra_kernel_args=["init=/nope", "loglevel=7"])
    assert vm.kernel_args == KERNEL_ARGS + " init=/nope loglevel=7"
    assert _options(vm)["-append"] == [vm.kernel_args]


def test_every_declared_port_is_forwarded(web: Path, tmp_path: Path) -> None:
    """tcp, http and https ports forward as tcp, udp as udp; 9001 declared twice once."""
    vm = Machine(web, accel="tcg", workdir=tmp_path)
    declared = [(f.protocol, f.guest_port, f.declared_as) for f in vm.forwards]
    assert declared == [
        ("tcp", 9001, "tcp"),
        ("tcp", 9002, "http"),
        ("tcp", 9003, "https"),
        ("udp", 9004, "udp"),
    ]
    netdev = _options(vm)["-netdev"][0]
    assert netdev.startswith("user,id=net0,hostfwd=tcp:127.0.0.1:")
    assert netdev.count("hostfwd=") == 4
    for forward in vm.forwards:
        assert forward.hostfwd in netdev


def test_an_occupied_port_moves_to_a_free_one(tmp_path: Path) -> None:
    """A host port in use does not fail the plan: another one is picked and reported."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        image = make_image(tmp_path / "busy.raw", VCFG(network=(Network(tcp=(str(port),)),)))
        vm = Machine(image, accel="tcg", workdir=tmp_path)
        (forward,) = vm.forwards
    assert forward.guest_port == port
    assert forward.host_port != port
    assert forward.hostfwd == f"hostfwd=tcp:127.0.0.1:{forward.host_port}-:{port}"


def test_plan_forwards_exact_sequence() -> None:
    """Same port when free; a picked one when busy or already taken by an earlier network."""
    busy = {(Protocol.TCP, 80)}
    picks = iter([40001, 40002, 40003])
    networks = [
        Network(tcp=("80", "22"), udp=("53",)),
        Network(http=("22",), udp=("53",)),
    ]
    planned = command.plan_forwards(
        networks,
        is_free=lambda protocol, port: (protocol, port) not in busy,
        pick_free=lambda protocol: next(picks),
    )
    assert planned == (
        (
            PortForward(0, Protocol.TCP, 80, 40001, "tcp"),
            PortForward(0, Protocol.TCP, 22, 22, "tcp"),
            PortForward(0, Protocol.UDP, 53, 53, "udp"),
        ),
        (
            PortForward(1, Protocol.TCP, 22, 40002, "http"),
            PortForward(1, Protocol.UDP, 53, 40003, "udp"),
        ),
    )


def test_forward_ports_off_keeps_the_nics(web: Path, tmp_path: Path) -> None:
    """forward_ports=False: one NIC per network, no hostfwd."""
    vm = Machine(web, accel="tcg", workdir=tmp_path, forward_ports=False)
    assert vm.forwards == ()
    assert _options(vm)["-netdev"] == ["user,id=net0"]


def test_explain_gives_every_option_a_reason(web: Path, tmp_path: Path) -> None:
    """One line per option after the program name, each with '# reason'."""
    vm = Machine(web, accel="tcg", workdir=tmp_path)
    lines = vm.explain().splitlines()
    assert lines[0] == "qemu-system-x86_64"
    assert len(lines) == len(vm.arguments) + 1
    assert all("  # " in line for line in lines[1:])
    memory = next(line for line in lines if line.lstrip().startswith("-m "))
    assert memory.endswith("# vm.ram from the image's VCFG (512 MiB)")
    accel = next(line for line in lines if line.lstrip().startswith("-accel "))
    assert accel.endswith("# requested: emulation")


def test_long_workdirs_get_short_socket_paths(web: Path, tmp_path: Path) -> None:
    """A unix socket path must fit in 108 bytes; a deep workdir gets sockets under /tmp."""
    deep = tmp_path / ("d" * 90)
    vm = Machine(web, accel="tcg", workdir=deep)
    chardev = _options(vm)["-chardev"][0]
    path = chardev.split("path=")[1].split(",")[0]
    assert len(path) <= 100
    assert vm.workdir == deep
    vm.close()
    assert not Path(path).parent.exists()


def test_a_temporary_workdir_is_removed_on_close(web: Path) -> None:
    """Without workdir=, the Machine's directory lives until close()."""
    vm = Machine(web, accel="tcg")
    workdir = vm.workdir
    assert workdir.is_dir()
    vm.close()
    assert not workdir.exists()


@pytest.mark.parametrize("mode", ["uefi", "bios"])
def test_other_boot_modes_are_not_available_yet(web: Path, mode: str) -> None:
    """uefi and bios raise a clear error before anything starts."""
    with pytest.raises(BootModeUnavailable, match=f"boot mode {mode} is not available yet"):
        Machine(web, boot=mode)
    with pytest.raises(NotImplementedError):
        Machine(web, boot=mode)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accel": "hvf"}, "accel='hvf' (allowed: auto, kvm, tcg)"),
        ({"boot": "pxe"}, "boot='pxe' (allowed: direct, uefi, bios)"),
        ({"cpus": 0}, "cpus must be at least 1, not 0"),
        ({"memory_mib": -1}, "memory_mib must be at least 1, not -1"),
        ({"timeout_scale": 0}, "timeout_scale must be positive, not 0"),
    ],
)
def test_bad_options_are_refused(web: Path, options: dict[str, object], message: str) -> None:
    """Each impossible option is named in a MachineOptionError (also a ValueError)."""
    with pytest.raises(MachineOptionError) as refused:
        Machine(web, **options)  # type: ignore[arg-type]
    assert str(refused.value) == message
    assert isinstance(refused.value, ValueError)


def test_images_that_cannot_be_booted(tmp_path: Path) -> None:
    """Missing file, qcow2, and a file without the vorteil layout: ImageUnsupported."""
    with pytest.raises(ImageUnsupported, match="cannot read"):
        Machine(tmp_path / "missing.raw")
    qcow2 = tmp_path / "image.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(100))
    with pytest.raises(ImageUnsupported, match="qcow2") as refused:
        Machine(qcow2)
    assert refused.value.hint is not None and "qemu-img convert -O raw" in refused.value.hint
    plain = tmp_path / "plain.raw"
    plain.write_bytes(bytes(40000))
    with pytest.raises(ImageUnsupported, match="no vorteil config block"):
        Machine(plain)


def test_a_vcfg_that_does_not_decode_still_boots_with_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """vinitd's refusal of a bad VCFG is worth testing: the Machine warns and goes on."""
    image = make_image(tmp_path / "bad.raw", b'{"program":[{"privilege":"xxxx"}],"vm":{"cpus":4}}')
    with caplog.at_level(logging.WARNING, logger="vmtest.machine"):
        vm = Machine(image, accel="tcg", workdir=tmp_path)
    assert vm.vcfg_problem is not None and "privilege" in vm.vcfg_problem
    assert _options(vm)["-smp"] == ["1"]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "does not decode" in caplog.records[0].getMessage()


def test_the_timeout_scale_follows_the_accelerator(web: Path, tmp_path: Path) -> None:
    """x3 under TCG unless given; scaled() applies it."""
    assert Machine(web, accel="tcg", workdir=tmp_path).timeout_scale == 3
    vm = Machine(web, accel="tcg", workdir=tmp_path, timeout_scale=1.5)
    assert vm.scaled(10) == 15


def test_waits_before_start_are_refused(web: Path, tmp_path: Path) -> None:
    """A Machine that was not started has nothing to wait for."""
    vm = Machine(web, accel="tcg", workdir=tmp_path)
    with pytest.raises(Exception, match="not started"):
        vm.wait_for_stage("launch")
    assert vm.console == "" and vm.events == [] and vm.failure() is None
    assert not vm.running and vm.returncode is None


def test_qemu_refusing_to_start_is_qemu_start_failed(web: Path, tmp_path: Path) -> None:
    """The fake image's kernel is no kernel: QEMU exits at once, and the failure shows why."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    vm = Machine(web, accel="tcg", workdir=tmp_path / "work")
    with pytest.raises(QemuStartFailed) as failed:
        vm.start()
    assert failed.value.returncode == 1
    assert failed.value.summary == "QEMU exited with status 1 at start"
    assert failed.value.argv == tuple(vm.argv)
    assert "linux kernel too old" in failed.value.stderr
    assert "stderr: qemu: linux kernel too old to load a ram disk" in str(failed.value)
    assert not vm.running
