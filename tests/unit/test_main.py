"""vinitd.main's setup tasks: run at once, and a failure raised only once all have ended."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from vinitd import etcfiles, main, sysconfig
from vinitd.errors import VinitdError
from vinitd.events import EventChannel


def test_a_task_returns_its_value_or_raises_its_error() -> None:
    ok = main._Task("ok", lambda: 42)
    failing = main._Task("failing", lambda: 1 // 0)
    ok.start()
    failing.start()
    assert ok.outcome() == 42
    with pytest.raises(ZeroDivisionError):
        failing.outcome()
    assert ok.name == "setup-ok"


def test_setup_tasks_run_at_once_and_share_the_network_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All three tasks are in flight together (each waits for the others to start); the
    network's result reaches the boot (search domains, DNS, addresses)."""
    barrier = threading.Barrier(3, timeout=10)

    def network(boot: main.Boot) -> object:
        barrier.wait()
        return SimpleNamespace(
            search=("example.test",),
            dns=("10.0.2.3",),
            host_name="",
            interfaces=(SimpleNamespace(address="10.0.2.15"),),
        )

    monkeypatch.setattr(main, "_network", network)
    monkeypatch.setattr(sysconfig, "configure_system", lambda *a, **k: barrier.wait())
    monkeypatch.setattr(etcfiles, "write_etc", lambda **k: barrier.wait())
    boot = main.Boot(events=EventChannel(None), hostname="vm")
    main._parallel_setup(boot)
    assert boot.search == ("example.test",) and boot.dhcp_dns == ("10.0.2.3",)
    assert boot.values.ips == ("10.0.2.15",)


def test_a_failed_task_is_raised_after_the_others_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The network fails at once; /etc is still writing: the failure waits for it, so nothing
    writes while the VM shuts down."""
    finished: list[str] = []

    def network(boot: main.Boot) -> object:
        raise VinitdError("eth0: no DHCP lease")

    def slow_etc(**kwargs: object) -> None:
        time.sleep(0.3)
        finished.append("etc")

    monkeypatch.setattr(main, "_network", network)
    monkeypatch.setattr(sysconfig, "configure_system", lambda *a, **k: finished.append("system"))
    monkeypatch.setattr(etcfiles, "write_etc", slow_etc)
    boot = main.Boot(events=EventChannel(None))
    with pytest.raises(VinitdError, match="no DHCP lease"):
        main._parallel_setup(boot)
    assert sorted(finished) == ["etc", "system"]


def test_a_read_only_root_writes_no_etc_files(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(main, "_network", lambda boot: None)
    monkeypatch.setattr(sysconfig, "configure_system", lambda *a, **k: called.append("system"))
    monkeypatch.setattr(etcfiles, "write_etc", lambda **k: called.append("etc"))
    main._parallel_setup(main.Boot(events=EventChannel(None), read_only=True))
    assert called == ["system"]
