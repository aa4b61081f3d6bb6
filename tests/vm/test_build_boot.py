"""Images from imagekit build boot under TCG from their own kernel, initramfs and command line.

Each boot attaches the ``vinitd.events`` port to a file and waits for the guest to power off
on its own (QEMU runs with -no-reboot, so QEMU exits).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from imagetools import (
    GREETING,
    VM_TOOLS,
    BuiltImage,
    boot,
    build,
    built_hello,
    require_tools,
    write_project,
)

pytestmark = pytest.mark.vm

Events = list[dict[str, object]]


@pytest.fixture(scope="session")
def hello(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    require_tools(VM_TOOLS)
    return built_hello(request.config, tmp_path_factory)


def _python_project(directory: Path, script: str, *, privilege: str | None = None) -> Path:
    """A project whose program[0] is the guest's Python running ``/main.py``."""
    vcfg = '[[program]]\nbinary = "/usr/bin/python3"\nargs = "/main.py"\n'
    if privilege is not None:
        vcfg += f'privilege = "{privilege}"\n'
    return write_project(directory, vcfg, {"main.py": script})


def _finished(status: int) -> re.Pattern[str]:
    return re.compile(rf"program\[0\] pid\[\d+\] finished with exit status {status}\b")


def _stage_events(events: Events) -> list[tuple[object, object]]:
    return [(e.get("stage"), e.get("state")) for e in events if e.get("type") == "stage"]


def _program_exits(events: Events) -> list[dict[str, object]]:
    return [e for e in events if e.get("type") == "program" and e.get("state") == "exited"]


def _in_order(wanted: list[tuple[str, str]], seen: list[tuple[object, object]]) -> bool:
    remaining = iter(seen)
    return all(item in remaining for item in wanted)


def test_hello_boots_and_reports_its_stages(hello: BuiltImage, tmp_path: Path) -> None:
    """examples/hello greets, its program exits 0, the stages are reported, QEMU exits 0."""
    result, events = boot(hello.path, tmp_path)
    assert result.returncode == 0, result.describe()
    assert GREETING in result.console, result.describe()
    assert _finished(0).search(result.console), result.describe()
    stages = _stage_events(events)
    expected = [
        ("pre-setup", "started"),
        ("pre-setup", "finished"),
        ("launch", "started"),
        ("launch", "finished"),
    ]
    assert _in_order(expected, stages), stages
    exits = _program_exits(events)
    assert [(e.get("index"), e.get("exit_status")) for e in exits] == [(0, 0)], events


def test_exit_status_is_reported(hello: BuiltImage, tmp_path: Path) -> None:
    """A program that exits 3 is reported as such on the console and the event port."""
    project = _python_project(tmp_path / "project", "raise SystemExit(3)\n")
    image = tmp_path / "exit3.raw"
    build(project, image)
    result, events = boot(image, tmp_path)
    assert result.returncode == 0, result.describe()
    assert _finished(3).search(result.console), result.describe()
    assert [e.get("exit_status") for e in _program_exits(events)] == [3], events


def test_user_privilege_runs_as_uid_1000(hello: BuiltImage, tmp_path: Path) -> None:
    """A program with privilege = "user" runs as uid and gid 1000."""
    script = 'import os\nprint(f"ids uid={os.getuid()} gid={os.getgid()} euid={os.geteuid()}")\n'
    project = _python_project(tmp_path / "project", script, privilege="user")
    image = tmp_path / "user.raw"
    build(project, image)
    result, _ = boot(image, tmp_path)
    assert result.returncode == 0, result.describe()
    assert "ids uid=1000 gid=1000 euid=1000" in result.console, result.describe()
    assert _finished(0).search(result.console), result.describe()
