"""The supervisor loop with real child processes, run in a separate Python so that its signal
handlers and its waitpid(-1) reaper own that process alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vinitd import powerbutton

RUNNER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, threading, time
    from vinitd import console
    from vinitd.events import EventChannel
    from vinitd.supervisor import Supervisor

    class Recorder(EventChannel):
        def __init__(self):
            super().__init__(None)
            self.seen = []
        def emit(self, kind, **fields):
            self.seen.append({"type": kind, **fields})

    console.set_level("WARNING")  # the level vinitd reads from a `quiet` kernel's printk
    events = Recorder()
    sup = Supervisor(events, terminate_wait=float(sys.argv[2]))
    sup.install_signals()
    for index, (command, term) in enumerate(json.loads(sys.argv[1])):
        process = subprocess.Popen(["/bin/sh", "-c", command])
        sup.add(index, process, signal.Signals[term])
    if sys.argv[3] != "none":
        delay, signame = sys.argv[3].split(":")
        def later():
            time.sleep(float(delay))
            os.kill(os.getpid(), signal.Signals[signame])
        threading.Thread(target=later, daemon=True).start()
    outcome = sup.run()
    print("OUTCOME", outcome.action.name, outcome.reason, flush=True)
    print("EVENTS", json.dumps(events.seen), flush=True)
    """
)


def supervise(
    programs: list[tuple[str, str]], *, wait: float = 3.0, signal_after: str = "none"
) -> tuple[list[str], list[dict[str, object]]]:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(programs), str(wait), signal_after],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = [line.split("] ", 1)[-1] for line in result.stdout.splitlines()]
    events = json.loads(result.stdout.split("EVENTS ", 1)[1])
    return lines, events


def test_all_programs_exit_then_power_off() -> None:
    """When the last program exits, the loop reports each status and asks for power-off."""
    lines, events = supervise([("exit 0", "SIGTERM"), ("sleep 0.3; exit 3", "SIGTERM")])
    assert any(
        line.startswith("program[0] pid[") and "finished with exit status 0" in line
        for line in lines
    )
    assert any(
        "program[1]" in line and line.endswith("finished with exit status 3") for line in lines
    )
    assert lines[-4:-2] == ["no programs still running", "shutting down applications"]
    assert "OUTCOME POWER_OFF no programs still running" in lines
    exits = [e for e in events if e["type"] == "program"]
    assert sorted((e["index"], e["exit_status"]) for e in exits) == [(0, 0), (1, 3)]


def test_killed_program_counts_as_finished() -> None:
    """A program killed by a signal is finished: the VM does not wait for it forever (Q5)."""
    lines, events = supervise([("kill -KILL $$", "SIGTERM")])
    assert any(line.endswith("finished with signal: killed") for line in lines)
    assert {"type": "program", "index": 0, "state": "exited", "signal": "SIGKILL"}.items() <= {
        k: v for k, v in events[0].items() if k != "pid"
    }.items()
    assert "OUTCOME POWER_OFF no programs still running" in lines


def test_sigpwr_sends_terminate_signal() -> None:
    """SIGPWR: each program gets its terminate signal and the VM powers off."""
    lines, events = supervise(
        [("trap 'kill $!; exit 7' INT; sleep 30 >/dev/null & wait", "SIGINT")],
        signal_after="0.5:SIGPWR",
    )
    assert "shutting down applications" in lines
    assert any(line.endswith("- sending signal 'interrupt'") for line in lines)
    assert any(line.endswith("finished with exit status 7") for line in lines)
    assert "applications terminated" in lines
    assert "OUTCOME POWER_OFF SIGPWR" in lines
    begun = [e for e in events if e["type"] == "shutdown" and e["state"] == "begun"]
    assert begun == [
        {"type": "shutdown", "state": "begun", "action": "power_off", "reason": "SIGPWR"}
    ]


def test_sigint_restarts_and_stubborn_program_is_killed() -> None:
    """SIGINT means restart; a program that ignores its signal is killed after the wait."""
    lines, _ = supervise(
        [("trap '' TERM; while true; do sleep 0.1; done", "SIGTERM")],
        wait=0.5,
        signal_after="0.5:SIGINT",
    )
    assert any("could not terminate all applications before timeout" in line for line in lines)
    assert any(line.endswith("finished with signal: killed") for line in lines)
    assert "OUTCOME RESTART SIGINT" in lines


def test_sigterm_to_pid1_is_ignored() -> None:
    """SIGTERM to the init does nothing; the program still runs to its end."""
    lines, _ = supervise([("sleep 1; exit 0", "SIGTERM")], signal_after="0.2:SIGTERM")
    assert "shutting down applications" in lines
    assert "OUTCOME POWER_OFF no programs still running" in lines
    assert not any("sending signal" in line for line in lines)


def test_orphans_are_reaped() -> None:
    """A grandchild re-parented to the init is reaped, and does not keep the VM alive."""
    lines, _ = supervise([("sleep 0.2 & exit 0", "SIGTERM")])
    assert "OUTCOME POWER_OFF no programs still running" in lines


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([(1, 116, 1)], True),
        ([(1, 116, 0)], False),
        ([(0, 0, 0), (1, 116, 1)], True),
        ([(1, 30, 1)], False),
        ([], False),
    ],
)
def test_power_button_press(events: list[tuple[int, int, int]], expected: bool) -> None:
    """Only a KEY_POWER press (type 1, code 116, value 1) counts."""
    data = b"".join(powerbutton.INPUT_EVENT.pack(0, 0, *event) for event in events)
    assert powerbutton.pressed(data) is expected


def test_power_button_found_by_name(tmp_path: Path) -> None:
    """The device is found by its name, whatever its event index."""
    for index, name in ((0, "AT Translated Set 2 keyboard"), (3, "Power Button")):
        device = tmp_path / "sys" / f"event{index}" / "device"
        device.mkdir(parents=True)
        (device / "name").write_text(name + "\n")
    found = powerbutton.find_device(tmp_path / "sys", tmp_path / "dev")
    assert found == tmp_path / "dev" / "event3"
    assert powerbutton.find_device(tmp_path / "nothing", tmp_path / "dev") is None
