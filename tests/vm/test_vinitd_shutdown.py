"""vinitd's shutdown in a VM: the power button stops the programs, then the disk is clean."""

from __future__ import annotations

import re

import pytest
from imagetools import debugfs, root_offset, tool
from projects.probe_vm import Probe

pytestmark = pytest.mark.vm
pytest_plugins = ("projects.probe_vm",)

SAVED = "/data/saved.txt"
SAVED_TEXT = "saved on SIGTERM\n"  # what the probe writes (probe/app/probe.py)

SAVES_ON_SIGTERM = f"""
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py on-term:{SAVED} wait"
"""


def test_the_power_button_lets_the_program_save_its_work(probe: Probe) -> None:
    """QMP system_powerdown while the program waits: it gets SIGTERM, saves a file and exits;
    vinitd says so, powers off, and the file is on a clean filesystem."""
    image = probe.image(SAVES_ON_SIGTERM)
    vm = probe.start(image, writable=True)
    vm.wait_for_console(r'^PROBE .*"fact": "on-term"')

    vm.powerdown()
    assert vm.wait_for_shutdown() == 0

    pid = next(e for e in vm.events if e.is_program(0, "started"))["pid"]
    stamp = r"^\[\d+\.\d{6}\] "
    expected = [
        "shutting down applications",
        rf"program\[0\] pid\[{pid}\] - sending signal 'terminated'",
        rf"program\[0\] pid\[{pid}\] finished with exit status 0",
        "applications terminated",
        "shutting down system",
    ]
    position = 0
    for line in expected:
        found = re.compile(stamp + line + "$", re.MULTILINE).search(vm.console, position)
        assert found, f"{line!r} missing after byte {position}:\n{vm.console}"
        position = found.end()
    assert probe.fact(vm, "saved", SAVED) == "SIGTERM"
    begun = next(e for e in vm.events if e.type == "shutdown")
    assert (begun["action"], begun["reason"]) == ("power_off", "power button")
    (exited,) = [e for e in vm.events if e.is_program(0, "exited")]
    assert exited.exit_status == 0

    checked = tool(["e2fsck", "-fn", f"{image}?offset={root_offset(image)}"], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert debugfs(image, f"cat {SAVED}") == SAVED_TEXT


@pytest.mark.parametrize(
    ("helper", "action", "reason"),
    [("poweroff", "power_off", "SIGPWR"), ("reboot", "restart", "SIGINT")],
)
def test_sbin_helpers_signal_the_init(probe: Probe, helper: str, action: str, reason: str) -> None:
    """A program running /sbin/poweroff or /sbin/reboot asks PID 1 to shut down (SIGPWR or
    SIGINT); the links call vinitd, which sends the signal when it is not PID 1."""
    image = probe.image(
        f"""
[[program]]
binary = "/usr/bin/python3"
args = "-c 'import subprocess, time; subprocess.run([\\"/sbin/{helper}\\"]); time.sleep(600)'"
"""
    )
    vm = probe.start(image)
    assert vm.wait_for_shutdown() == 0
    begun = next(e for e in vm.events if e.type == "shutdown")
    assert (begun["action"], begun["reason"]) == (action, reason)
    assert "sending signal 'terminated'" in vm.console
    (exited,) = [e for e in vm.events if e.is_program(0, "exited")]
    assert exited["signal"] == "SIGTERM"
