"""vmtest.accel and vmtest.process: choosing the accelerator, and QEMU dying with its owner."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmtest import accel
from vmtest.accel import Accel, Decision, ProbeResult
from vmtest.errors import AcceleratorUnavailable
from vmtest.process import signal_name, spawn

KERNEL = Path("/boot/vmlinuz-for-the-probe")


@pytest.fixture(autouse=True)
def fresh_decision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No decision in memory, and a cache directory of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    accel.forget_decision()
    yield
    accel.forget_decision()


def _usable_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boot_id: str = "boot-1") -> None:
    """A /dev/kvm that answers (as far as vmtest asks) and a host boot id of the test's."""
    device, boot = tmp_path / "kvm", tmp_path / "boot_id"
    device.write_text("")
    boot.write_text(boot_id + "\n")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    monkeypatch.setattr(accel, "BOOT_ID", boot)
    monkeypatch.setattr(accel, "kvm_problem", lambda device=None: None)


def _probes(monkeypatch: pytest.MonkeyPatch, result: ProbeResult) -> list[Path]:
    calls: list[Path] = []

    def fake(kernel: Path, accelerator: Accel = Accel.KVM, *, timeout: float = 0) -> ProbeResult:
        calls.append(kernel)
        return result

    monkeypatch.setattr(accel, "probe", fake)
    return calls


def test_kvm_problems_are_named(tmp_path: Path) -> None:
    """A missing device, and a device that is not KVM (/dev/null)."""
    assert accel.kvm_problem(tmp_path / "kvm") == f"{tmp_path / 'kvm'} does not exist"
    problem = accel.kvm_problem(Path("/dev/null"))
    assert problem is not None and "does not answer KVM_GET_API_VERSION" in problem


def test_tcg_is_used_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """accel=tcg never looks at KVM."""
    calls = _probes(monkeypatch, ProbeResult(True, "works", 0.5))
    assert accel.decide(Accel.TCG, KERNEL) == Decision(Accel.TCG, "requested: emulation")
    assert calls == []


def test_kvm_required_but_missing_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """accel=kvm on a host without /dev/kvm: AcceleratorUnavailable naming the device."""
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")
    with pytest.raises(AcceleratorUnavailable, match=r"accel=kvm: .*/kvm does not exist"):
        accel.decide(Accel.KVM, KERNEL)


def test_auto_without_kvm_warns_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No /dev/kvm: TCG, one warning for the whole process, no probe."""
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")
    calls = _probes(monkeypatch, ProbeResult(True, "works", 0.5))
    with caplog.at_level(logging.WARNING, logger="vmtest.accel"):
        first = accel.decide(Accel.AUTO, KERNEL)
        second = accel.decide(Accel.AUTO, KERNEL)
    assert first is second
    assert first.accel == Accel.TCG
    assert calls == []
    assert [r.getMessage() for r in caplog.records] == [
        f"KVM unavailable ({tmp_path / 'kvm'} does not exist): emulating with TCG"
    ]


def test_auto_with_a_kvm_that_runs_nothing_falls_back_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/kvm answers but the probe's kernel makes no progress: TCG, one warning, one probe."""
    monkeypatch.setattr(accel, "kvm_problem", lambda device=None: None)
    calls = _probes(monkeypatch, ProbeResult(False, "a kernel made no progress in 6 s", 6.0))
    with caplog.at_level(logging.WARNING, logger="vmtest.accel"):
        decisions = [accel.decide(Accel.AUTO, KERNEL) for _ in range(3)]
    assert {d.accel for d in decisions} == {Accel.TCG}
    assert calls == [KERNEL]
    assert [r.getMessage() for r in caplog.records] == [
        "KVM does not run guests here (a kernel made no progress in 6 s): emulating with TCG"
    ]
    assert decisions[0].reason == "auto: KVM probe failed (a kernel made no progress in 6 s)"


def test_auto_with_a_working_kvm_uses_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe's kernel reached its root mount: KVM, no warning."""
    monkeypatch.setattr(accel, "kvm_problem", lambda device=None: None)
    _probes(monkeypatch, ProbeResult(True, "a kernel reached its root mount in 0.4 s", 0.4))
    with caplog.at_level(logging.WARNING, logger="vmtest.accel"):
        decision = accel.decide(Accel.AUTO, KERNEL)
    assert decision.accel == Accel.KVM
    assert caplog.records == []


def test_a_child_dies_when_the_thread_that_started_it_ends() -> None:
    """PR_SET_PDEATHSIG: the owner's end is the child's SIGKILL."""
    started: list[subprocess.Popen[bytes]] = []
    owner = threading.Thread(
        target=lambda: started.append(
            spawn(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    )
    owner.start()
    owner.join()
    (child,) = started
    deadline = time.monotonic() + 5
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.returncode == -9


def test_spawn_writes_output_to_files(tmp_path: Path) -> None:
    """stdout and stderr go to the named files."""
    child = spawn(
        ["sh", "-c", "echo out; echo err >&2"], stdout=tmp_path / "out", stderr=tmp_path / "err"
    )
    assert child.wait(5) == 0
    assert (tmp_path / "out").read_text() == "out\n"
    assert (tmp_path / "err").read_text() == "err\n"


def test_signal_names() -> None:
    assert signal_name(-9) == "SIGKILL"
    assert signal_name(3) == "status 3"


def test_a_probe_outcome_is_reused_by_the_next_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The probe runs once per host boot: a new process (the in-memory decision dropped)
    reads the outcome back from the cache file and says so."""
    _usable_kvm(monkeypatch, tmp_path)
    calls = _probes(monkeypatch, ProbeResult(False, "a kernel made no progress in 6 s", 6.0))
    first = accel.decide(Accel.AUTO, KERNEL)
    assert calls == [KERNEL] and accel.probe_cache_path().is_file()

    monkeypatch.setattr(accel, "_auto_decision", None)  # as in a new process
    second = accel.decide(Accel.AUTO, KERNEL)
    assert calls == [KERNEL]
    assert second.accel == first.accel == Accel.TCG
    assert second.reason == (
        "auto: KVM probe failed (a kernel made no progress in 6 s; probed earlier this host boot)"
    )


def test_a_new_host_boot_or_a_damaged_cache_probes_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The cached outcome belongs to one host boot; a file that is not JSON is ignored."""
    _usable_kvm(monkeypatch, tmp_path, boot_id="boot-1")
    calls = _probes(monkeypatch, ProbeResult(True, "a kernel reached its root mount", 0.4))
    assert accel.decide(Accel.AUTO, KERNEL).accel == Accel.KVM

    monkeypatch.setattr(accel, "_auto_decision", None)
    (tmp_path / "boot_id").write_text("boot-2\n")
    assert accel.decide(Accel.AUTO, KERNEL).accel == Accel.KVM
    assert len(calls) == 2

    monkeypatch.setattr(accel, "_auto_decision", None)
    accel.probe_cache_path().write_text("{not json")
    assert accel.decide(Accel.AUTO, KERNEL).accel == Accel.KVM
    assert len(calls) == 3
    assert json.loads(accel.probe_cache_path().read_text())["works"] is True


def test_forget_decision_removes_the_cached_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _usable_kvm(monkeypatch, tmp_path)
    calls = _probes(monkeypatch, ProbeResult(True, "works", 0.4))
    accel.decide(Accel.AUTO, KERNEL)
    accel.forget_decision()
    assert not accel.probe_cache_path().exists()
    accel.decide(Accel.AUTO, KERNEL)
    assert len(calls) == 2
