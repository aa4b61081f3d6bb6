"""vinitd's launch stage and its supervisor in a VM: starting programs, their bootstrap, their
credentials, where their output goes, and how they end."""

from __future__ import annotations

import re

import pytest
from imagetools import Inode, debugfs, stat_inode
from projects.probe_vm import Probe

from vmtest import Event, Machine, ProgramFailed

pytestmark = pytest.mark.vm
pytest_plugins = ("projects.probe_vm",)

MISSING_BINARY = "/nonexistent/probe"
APP_UID = 1000
# vorteil's ambient capabilities for "superuser" programs (vinitd spec §10.5), by number.
SUPERUSER_CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_ADMIN": 21,
    "CAP_MKNOD": 27,
}
NO_CAPABILITIES = f"{0:016x}"

MISSING = f"""
[[program]]
binary = "{MISSING_BINARY}"
args = "ids"
"""

EXITS = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py print:finishing"
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py exit:3"
"""

# Program 0 opens port 8080 and then makes /tmp/ready, a second after it starts; programs 1
# and 2 wait for one each. Program 0 ends when WAIT_PORT's connection has come.
BOOTSTRAP = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:server sleep:1 listen:8080 touch:/tmp/ready accept"
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:port clock"
bootstrap = ["WAIT_PORT if=lo 8080"]
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:file clock"
bootstrap = ["WAIT_FILE /tmp/ready"]
"""

PRIVILEGES = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:root ids caps writable:/"
privilege = "root"
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:user ids caps writable:/"
privilege = "user"
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py as:superuser ids caps writable:/"
privilege = "superuser"
"""

OUTPUT = """
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py print:to-the-vtty"
[[program]]
binary = "/usr/bin/python3"
args = "/app/probe.py print:to-the-file"
stdout = "/logs/out.txt"
[system]
output-mode = "disabled"
"""


def _program_events(vm: Machine, index: int, state: str) -> list[Event]:
    return [e for e in vm.events if e.is_program(index, state)]


def _started(vm: Machine, index: int) -> Event:
    (event,) = _program_events(vm, index, "started")
    return event


def _finished_line(index: int, pid: object, status: int) -> str:
    return rf"^\[\d+\.\d{{6}}\] program\[{index}\] pid\[{pid}\] finished with exit status {status}$"


def test_a_missing_binary_fails_its_program(probe: Probe) -> None:
    """program[0].binary does not exist: the program fails to start and the VM powers off."""
    vm = probe.start(probe.image(MISSING))

    with pytest.raises(ProgramFailed) as failed:
        vm.wait_for_program(0, "started")
    assert vm.wait_for_shutdown() == 0

    assert failed.value.exit_status is None
    assert failed.value.message == f"{MISSING_BINARY} application missing"
    assert re.search(
        rf"^\[ERROR\]: .* - starting program failed: {MISSING_BINARY} application missing$",
        vm.console,
        re.MULTILINE,
    ), vm.console
    (event,) = _program_events(vm, 0, "failed")
    assert event["error"] == "LaunchError"
    begun = next(e for e in vm.events if e.type == "shutdown")
    assert begun["reason"] == "program 0 failed to start"


def test_exit_statuses_are_reported(probe: Probe) -> None:
    """Programs exiting 0 and 3: both statuses in the events and vorteil's console lines."""
    vm = probe.start(probe.image(EXITS))

    with pytest.raises(ProgramFailed) as failed:
        vm.wait_for_program(1, "succeeded")
    vm.wait_for_program(0, "succeeded")
    assert vm.wait_for_shutdown() == 0

    assert failed.value.exit_status == 3
    for index, status in ((0, 0), (1, 3)):
        pid = _started(vm, index)["pid"]
        (exited,) = _program_events(vm, index, "exited")
        assert (exited["pid"], exited.exit_status, exited.signal) == (pid, status, None)
        assert re.search(_finished_line(index, pid, status), vm.console, re.MULTILINE)
    assert re.search(r"^\[[\d.]+\] no programs still running$", vm.console, re.MULTILINE)


def test_bootstraps_wait_for_a_port_and_a_file(probe: Probe) -> None:
    """WAIT_PORT if=lo 8080 and WAIT_FILE /tmp/ready hold programs 1 and 2 back until
    program 0 has opened the port and made the file."""
    vm = probe.start(probe.image(BOOTSTRAP))

    for index in range(3):
        vm.wait_for_program(index, "succeeded")
    assert vm.wait_for_shutdown() == 0

    listening = probe.fact(vm, "listen", "8080", tag="server")
    ready = probe.fact(vm, "touch", "/tmp/ready", tag="server")
    assert _started(vm, 0).time < listening <= ready
    assert _started(vm, 1).time > listening
    assert _started(vm, 2).time > ready
    steps = {e["index"]: e for e in vm.events if e.type == "bootstrap"}
    assert steps[1]["instruction"] == "WAIT_PORT if=lo 8080"
    assert (steps[1]["state"], steps[1]["address"]) == ("done", "127.0.0.1")
    assert steps[2]["instruction"] == "WAIT_FILE /tmp/ready"
    assert steps[2]["state"] == "done"
    for index in (1, 2):
        assert steps[index].time < _started(vm, index).time
        assert steps[index]["seconds"] >= 1.0  # program 0 slept a second first


def test_privileges_set_uid_and_capabilities(probe: Probe) -> None:
    """privilege root, user and superuser: the uid, the capabilities, and what they allow."""
    vm = probe.start(probe.image(PRIVILEGES))

    for index in range(3):
        vm.wait_for_program(index, "succeeded")
    assert vm.wait_for_shutdown() == 0

    ids = {tag: probe.fact(vm, "ids", tag=tag) for tag in ("root", "user", "superuser")}
    caps = {tag: probe.fact(vm, "caps", tag=tag) for tag in ids}
    writable = {tag: probe.fact(vm, "writable", "/", tag=tag)["writable"] for tag in ids}
    assert ids["root"] == {"uid": 0, "gid": 0, "euid": 0, "groups": []}
    assert caps["root"]["CapEff"] != NO_CAPABILITIES
    for tag in ("user", "superuser"):
        assert ids[tag] == {"uid": APP_UID, "gid": APP_UID, "euid": APP_UID, "groups": []}
    assert caps["user"]["CapEff"] == caps["user"]["CapAmb"] == NO_CAPABILITIES
    ambient = f"{sum(1 << number for number in SUPERUSER_CAPABILITIES.values()):016x}"
    assert caps["superuser"]["CapAmb"] == caps["superuser"]["CapEff"] == ambient
    assert writable == {"root": True, "user": False, "superuser": True}  # CAP_DAC_OVERRIDE


def test_output_mode_disabled_and_a_stdout_file(probe: Probe) -> None:
    """output-mode "disabled" keeps program output off the console; a program's stdout file
    is made 0644 in a new 0755 directory and gets its output."""
    image = probe.image(OUTPUT)
    vm = probe.start(image, writable=True)

    for index in range(2):
        vm.wait_for_program(index, "succeeded")
    assert vm.wait_for_shutdown() == 0

    assert "to-the-vtty" not in vm.console
    assert "to-the-file" not in vm.console
    # vinitd's own lines go through the vtty too, so they are not shown either (spec §4.4).
    assert "finished with exit status" not in vm.console
    assert stat_inode(image, "/logs") == Inode("directory", 0o755, 0, 0)
    assert stat_inode(image, "/logs/out.txt") == Inode("regular", 0o644, 0, 0)
    assert debugfs(image, "cat /logs/out.txt") == "to-the-file\n"
