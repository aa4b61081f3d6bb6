"""The vmtest command line without booting: bad input, missing QEMU, the report's outputs,
and the debug session's command lines against a fake VM."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, cast

import pytest
from imagetools import qemu_processes

from vmtest import cli
from vmtest.debugger import DebugSession
from vmtest.errors import QmpError
from vmtest.events import Event
from vmtest.machine import Machine
from vmtest.report import Artifacts, FailureInfo, RunRecord, judge
from vmtest.scenario import Scenario, parse

ROOT = Path(__file__).resolve().parents[2]
QCOW2_MAGIC = b"QFI\xfb"


def vmtest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmtest.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", "x.raw", "--accel", "bogus"],
        ["run", "x.raw", "--timeout", "0"],
        ["run", "x.raw", "--timeout", "soon"],
        ["run", "x.raw", "--boot", "uefi"],
        ["run", "x.raw", "--art", "dir"],  # no abbreviations
        ["debug", "x.raw", "--pause-before", "boot"],
        ["debug", "x.raw", "--gdb", "port"],
    ],
    ids=["no-command", "no-image", "accel", "timeout-0", "timeout-text", "boot", "abbrev",
         "pause-before", "gdb"],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's errors and a missing command: exit status 2 and a usage line."""
    try:
        status = cli.main(args)
    except SystemExit as exited:
        status = int(exited.code or 0)
    assert status == 2
    assert "usage: vmtest" in capsys.readouterr().err


def _image(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "image.raw"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "random":
        path.write_bytes(os.urandom(64 * 1024))
    elif kind == "qcow2":
        path.write_bytes(QCOW2_MAGIC + bytes(4096))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "cannot read: No such file or directory"),
        ("directory", "cannot read: Is a directory"),
        ("empty", "image.raw: "),
        ("random", "image.raw: "),
        ("qcow2", "a qcow2 image; direct boot reads raw images"),
    ],
)
def test_an_image_vmtest_cannot_boot_exits_2(tmp_path: Path, kind: str, message: str) -> None:
    """Missing, a directory, empty, random bytes, qcow2: one line naming it; no QEMU runs."""
    image = _image(tmp_path, kind)
    result = vmtest("run", str(image), "--accel", "tcg")
    assert result.returncode == 2, result.stderr
    first, *rest = result.stderr.splitlines()
    assert first.startswith(f"vmtest: {image}: ")
    assert message in first
    assert "Traceback" not in result.stderr
    if kind == "qcow2":
        assert rest == [f"hint: qemu-img convert -O raw {image} {image}"]
    assert result.stdout == ""
    assert qemu_processes(str(tmp_path)) == []
    assert not list(Path("/tmp").glob("vmtest-run-*/image.raw"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """--debug adds the traceback to the one-line error."""
    result = vmtest("--debug", "run", str(tmp_path / "missing.raw"), "--accel", "tcg")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("vmtest: ")


def test_a_bad_scenario_exits_2_before_the_image_is_read(tmp_path: Path) -> None:
    """The scenario is checked first: its file and key are named, no QEMU runs."""
    scenario = tmp_path / "s.toml"
    scenario.write_text('[expect]\nshutdown = "maybe"\n')
    result = vmtest("run", str(tmp_path / "missing.raw"), "--scenario", str(scenario))
    assert result.returncode == 2
    assert result.stderr == (
        f"vmtest: {scenario}: expect.shutdown: unknown value 'maybe' (allowed: clean, any)\n"
    )
    assert qemu_processes(str(tmp_path)) == []


def test_a_missing_scenario_file_exits_2(tmp_path: Path) -> None:
    result = vmtest("run", "x.raw", "--scenario", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"vmtest: {tmp_path / 'nope.toml'}: no such file\n"


def test_missing_qemu_is_an_environment_failure(tmp_path: Path) -> None:
    """No qemu-system-x86_64 on PATH: exit status 1 and the package to install."""
    image = _image(tmp_path, "random")
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    result = vmtest("run", str(image), env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "vmtest: qemu-system-x86_64 not found on PATH",
        "hint: apt-get install qemu-system-x86",
    ]


@pytest.mark.parametrize(
    ("option", "make", "message"),
    [
        ("--junit", "nodir/report.xml", "no directory"),
        ("--junit", ".", "is a directory"),
        ("--artifacts", "file.txt", "exists and is not a directory"),
    ],
)
def test_unusable_outputs_exit_2(tmp_path: Path, option: str, make: str, message: str) -> None:
    """Outputs are checked before the boot."""
    target = tmp_path / make
    if make == "file.txt":
        target.write_text("")
    result = vmtest("run", str(_image(tmp_path, "random")), option, str(target))
    assert result.returncode == 2
    assert result.stderr.startswith(f"vmtest: {option} {target}: {message}")


def test_an_occupied_gdb_port_exits_2(tmp_path: Path) -> None:
    """--gdb on a port something listens on: refused before QEMU starts."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = vmtest("debug", str(_image(tmp_path, "random")), "--gdb", str(port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"vmtest: --gdb {port}: the port is in use on 127.0.0.1",
        "hint: choose another",
    ]
    assert qemu_processes(str(tmp_path)) == []


# -- outputs of a recorded run ---------------------------------------------------------------

RECORDED = [
    '{"v":1,"time":4.454371,"type":"stage","stage":"pre-setup","state":"started"}',
    '{"v":1,"time":4.552899,"type":"stage","stage":"pre-setup","state":"finished"}',
    '{"v":1,"time":4.55396,"type":"stage","stage":"setup","state":"started"}',
    '{"v":1,"time":6.759239,"type":"stage","stage":"setup","state":"finished"}',
    '{"v":1,"time":6.759891,"type":"stage","stage":"post-setup","state":"started"}',
    '{"v":1,"time":6.760411,"type":"stage","stage":"post-setup","state":"finished"}',
    '{"v":1,"time":6.762337,"type":"stage","stage":"launch","state":"started"}',
    '{"v":1,"time":6.952903,"type":"stage","stage":"launch","state":"finished"}',
    '{"v":1,"time":6.989161,"type":"program","index":0,"state":"started","pid":121}',
    '{"v":1,"time":7.31793,"type":"program","index":0,"state":"exited","pid":121,"exit_status":0}',
    '{"v":1,"time":7.322931,"type":"shutdown","state":"begun","action":"power_off"}',
    '{"v":1,"time":7.420825,"type":"shutdown","state":"synced","action":"power_off"}',
]  # examples/hello under TCG, from docs/events.md


def recorded_run(**overrides: Any) -> RunRecord:
    events = tuple(Event(json.loads(line), 0.76 + json.loads(line)["time"]) for line in RECORDED)
    fields: dict[str, Any] = {
        "name": "hello",
        "image": Path("/images/hello.raw"),
        "accel": "tcg",
        "accel_reason": "requested: emulation",
        "events": events,
        "console": "hello from a vorteil micro-VM\n\x1b[0m",
        "returncode": 0,
        "programs": 1,
        "host_seconds": 8.4,
    }
    return RunRecord(**{**fields, **overrides})


def test_json_and_junit_of_a_passing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: result, stages with guest and host times, program 0's exit status; --junit:
    one testcase per stage and per expectation, none failed."""
    junit = tmp_path / "report.xml"
    cli.write_outputs(judge(recorded_run(), Scenario()), junit=junit, as_json=True)
    report = json.loads(capsys.readouterr().out)

    assert report["result"] == "pass" and report["failure"] is None
    assert [(s["stage"], s["state"]) for s in report["stages"]] == [
        ("pre-setup", "finished"),
        ("setup", "finished"),
        ("post-setup", "finished"),
        ("launch", "finished"),
    ]
    setup = report["stages"][1]
    assert setup["guest_start"] == 4.55396 and setup["guest_end"] == 6.759239
    assert setup["host_start"] == pytest.approx(5.31396) and setup["host_end"] > 7.5
    assert setup["guest_seconds"] == pytest.approx(2.205279)
    assert report["programs"][0]["exit_status"] == 0
    assert report["programs"][0]["signal"] is None
    assert report["qemu_exit_status"] == 0
    assert report["artifacts"] is None

    suite = ElementTree.fromstring(junit.read_bytes())
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures")) == ("6", "0")
    cases = [(case.get("classname"), case.get("name")) for case in suite.iter("testcase")]
    assert cases == [
        ("vmtest.hello.stages", "stage pre-setup finished"),
        ("vmtest.hello.stages", "stage setup finished"),
        ("vmtest.hello.stages", "stage post-setup finished"),
        ("vmtest.hello.stages", "stage launch finished"),
        ("vmtest.hello.expectations", "program[0] runs and does not fail"),
        ("vmtest.hello.expectations", "the VM powers off cleanly"),
    ]
    assert suite.findtext("system-out", "").startswith("hello from a vorteil micro-VM\n\ufffd")


def test_json_and_junit_of_a_failing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expectation that fails: its class and message in the JSON, a <failure> in JUnit,
    and the artifacts' paths."""
    scenario = parse("[[expect.program]]\nindex = 0\nexit = 3\n", source="exit3.toml")
    report = judge(recorded_run(), scenario)
    artifacts = Artifacts(tmp_path / "bundle", {"repro": tmp_path / "bundle" / "repro.sh"})
    junit = tmp_path / "report.xml"
    cli.write_outputs(
        report.__class__(**{**report.__dict__, "artifacts": artifacts}), junit=junit, as_json=True
    )
    printed = json.loads(capsys.readouterr().out)

    assert printed["result"] == "fail"
    assert printed["scenario"] == "exit3.toml"
    assert printed["failure"]["class"] == "ExpectationFailed"
    assert printed["failure"]["message"] == "program[0] exits with status 3: exited with status 0"
    assert printed["artifacts"] == {
        "directory": str(tmp_path / "bundle"),
        "files": {"repro": str(tmp_path / "bundle" / "repro.sh")},
    }
    suite = ElementTree.fromstring(junit.read_bytes())
    assert suite.get("failures") == "1"
    (failure,) = suite.iter("failure")
    assert failure.get("type") == "ExpectationFailed"
    assert failure.get("message") == "exited with status 0"
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["failure_class"] == "ExpectationFailed"
    assert properties["artifacts"] == str(tmp_path / "bundle")


def test_the_text_output_names_the_failure_and_the_artifacts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Text mode ends with FAIL: class: message, then where the bundle is."""
    failure = FailureInfo("StageTimedOut", "timed out", "timed out after 180.0 s waiting")
    report = judge(recorded_run(failure=failure, killed=True, returncode=-9), Scenario())
    report = report.__class__(**{**report.__dict__, "artifacts": Artifacts(Path("/tmp/b"))})
    cli.write_outputs(report, junit=None, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "FAIL: StageTimedOut: timed out after 180.0 s waiting",
        "artifacts: /tmp/b",
    ]


# -- the debug session -----------------------------------------------------------------------


class FakeVm:
    """The part of a Machine a DebugSession uses, recording what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def qmp(self, command: str, **arguments: object) -> object:
        self.calls.append(("qmp", (command, arguments)))
        if command == "bogus":
            raise QmpError(command, "CommandNotFound: The command bogus has not been found")
        return {"status": "running", "running": True} if command == "query-status" else {}

    def write_console(self, data: bytes) -> None:
        self.calls.append(("console", data))

    def kill(self) -> None:
        self.calls.append(("kill", None))


def session() -> tuple[DebugSession, FakeVm, io.StringIO, io.StringIO]:
    vm, output, messages = FakeVm(), io.StringIO(), io.StringIO()
    debug = DebugSession(cast(Machine, vm), [], output=output, messages=messages)
    return debug, vm, output, messages


def test_a_colon_line_is_a_qmp_command_with_json_arguments() -> None:
    """:query-status prints the reply; arguments are a JSON object."""
    debug, vm, output, _ = session()
    debug.handle(":query-status")
    debug.handle(':human-monitor-command {"command-line": "info status"}')
    assert vm.calls == [
        ("qmp", ("query-status", {})),
        ("qmp", ("human-monitor-command", {"command-line": "info status"})),
    ]
    first, second = output.getvalue().splitlines()
    assert json.loads(first) == {"return": {"status": "running", "running": True}}
    assert json.loads(second) == {"return": {}}


def test_a_failing_command_prints_its_error() -> None:
    debug, _, output, _ = session()
    debug.handle(":bogus")
    assert json.loads(output.getvalue()) == {
        "error": "CommandNotFound: The command bogus has not been found",
        "command": "bogus",
    }


def test_bad_arguments_are_explained_and_not_sent() -> None:
    debug, vm, _, messages = session()
    debug.handle(":cont {oops")
    debug.handle(":cont [1]")
    assert vm.calls == []
    assert (
        messages.getvalue().splitlines()[0].startswith("vmtest: cont: the arguments are not JSON")
    )
    assert (
        messages.getvalue().splitlines()[1] == "vmtest: cont: the arguments must be a JSON object"
    )


def test_other_lines_go_to_the_console_and_quit_kills() -> None:
    """Plain text is typed on the serial console; :quit kills QEMU; :help explains."""
    debug, vm, _, messages = session()
    debug.handle("echo hi")
    debug.handle(":help")
    debug.handle(":quit")
    assert vm.calls == [("console", b"echo hi\n"), ("kill", None)]
    assert "QMP" in messages.getvalue() and "killing QEMU" in messages.getvalue()


@pytest.mark.parametrize(
    ("argv", "tty", "shown"),
    [
        (["run", "x.raw"], True, True),
        (["run", "x.raw"], False, False),  # CI: the report is enough
        (["run", "x.raw", "--console"], True, False),  # the console shows the boot already
        (["-v", "run", "x.raw"], True, False),  # -v logs it all anyway
        (["debug", "x.raw"], True, False),
    ],
)
def test_run_at_a_terminal_shows_each_step(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], tty: bool, shown: bool
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert cli._shows_progress(cli._parser().parse_args(argv)) is shown
