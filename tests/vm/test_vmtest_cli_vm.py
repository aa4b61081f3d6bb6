"""vmtest run, vmtest debug and the vm_factory fixture against examples/hello under TCG."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagetools import VM_TOOLS, built_hello, qemu_processes, require_tools

pytestmark = pytest.mark.vm
pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["pre-setup", "setup", "post-setup", "launch"]
DEBUG = [sys.executable, "-m", "vmtest.cli", "debug"]

EXIT_3 = """
[[expect.program]]
index = 0
exit = 3

[[expect.console]]
pattern = "^failing on purpose$"

[vcfg]
[[vcfg.program]]
args = "-c 'import sys; print(\\"failing on purpose\\"); sys.exit(3)'"
"""

MISSING_BINARY = """
[vcfg]
[[vcfg.program]]
binary = "/nonexistent/app"
"""

POWERDOWN = """
[[action]]
after_stage = "launch"
do = "powerdown"
delay = 1.0

[vcfg]
[[vcfg.program]]
args = "-c 'import time; print(\\"sleeping\\", flush=True); time.sleep(600)'"
"""

INNER_TEST = """
from pathlib import Path

import pytest


@pytest.mark.vm
def test_fails_with_a_vm(vm_factory):
    vm = vm_factory({image!r})
    Path({pidfile!r}).write_text(str(vm.pid))
    vm.wait_for_stage("pre-setup")
    assert False, "failing on purpose"
"""


@pytest.fixture(scope="session")
def hello(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello, built once per test run for every test module that needs it."""
    require_tools(VM_TOOLS)
    return built_hello(request.config, tmp_path_factory).path


@pytest.fixture(autouse=True)
def no_qemu_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After each test, no QEMU runs on this test run's images (scenario copies included)."""
    yield
    assert qemu_processes(str(tmp_path_factory.getbasetemp())) == []


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmtest.cli", "run", *args, "--accel", "tcg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def scenario(directory: Path, text: str) -> str:
    path = directory / "scenario.toml"
    path.write_text(text)
    return str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_reports_every_stage_and_program(hello: Path, tmp_path: Path) -> None:
    """--json: four stages with guest and host times, program 0 exit 0; --junit and
    --artifacts are written for a passing run too."""
    junit, artifacts = tmp_path / "junit.xml", tmp_path / "artifacts"
    result = run(str(hello), "--json", "--junit", str(junit), "--artifacts", str(artifacts))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)

    assert report["result"] == "pass" and report["failure"] is None
    assert report["boot"]["kernel"] > 0 and report["boot"]["vinitd_start"] > 0
    assert [s["stage"] for s in report["stages"]] == STAGES
    previous_end = 0.0
    for span in report["stages"]:
        assert span["state"] == "finished"
        assert previous_end <= span["guest_start"] <= span["guest_end"]
        assert 0 < span["host_start"] <= span["host_end"] < report["host_seconds"]
        previous_end = span["guest_end"]
    (program,) = report["programs"]
    assert (program["index"], program["state"], program["exit_status"]) == (0, "exited", 0)
    assert report["qemu_exit_status"] == 0
    assert all(check["passed"] for check in report["checks"])

    suite = ElementTree.fromstring(junit.read_bytes())
    assert (suite.get("tests"), suite.get("failures")) == ("6", "0")
    assert report["artifacts"]["directory"] == str(artifacts)
    assert "hello from a vorteil micro-VM" in (artifacts / "console.log").read_text()
    assert len((artifacts / "events.jsonl").read_text().splitlines()) >= 12
    assert not (artifacts / "failure.txt").exists()
    assert not list(artifacts.glob("*.sock"))


def test_an_expected_exit_status_passes(hello: Path, tmp_path: Path) -> None:
    """A program that exits 3, with a scenario that expects 3 and its console line: pass."""
    result = run(str(hello), "--scenario", scenario(tmp_path, EXIT_3), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["programs"][0]["exit_status"] == 3
    checks = {check["name"]: check["passed"] for check in report["checks"]}
    assert checks["program[0] exits with status 3"]
    assert checks["console matches /^failing on purpose$/"]


def test_a_missing_binary_fails_and_leaves_a_repro_bundle(hello: Path, tmp_path: Path) -> None:
    """[vcfg] makes program 0's binary missing: ProgramFailed, exit 1, a bundle in a temporary
    directory whose repro.sh boots the scenario's copy again, to the same failure, with the
    console on its stdout; the built image is unchanged."""
    before = sha256(hello)
    result = run(str(hello), "--scenario", scenario(tmp_path, MISSING_BINARY), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    bundle = Path(report["artifacts"]["directory"])
    try:
        assert report["result"] == "fail"
        assert report["failure"]["class"] == "ProgramFailed"
        assert report["failure"]["summary"] == (
            "program[0] failed to start: /nonexistent/app application missing"
        )
        assert report["programs"][0]["state"] == "failed"
        assert sha256(hello) == before

        script = bundle / "repro.sh"
        assert os.access(script, os.X_OK)
        copy = bundle / "scenario-image.raw"
        assert f"image={copy}\n" in script.read_text()
        assert f"file={copy}," in script.read_text()
        summary = json.loads((bundle / "bundle.json").read_text())
        assert summary["image"] == str(copy) and summary["image_sha256"] == sha256(copy)
        assert summary["failure"]["class"] == "ProgramFailed"
        assert (bundle / "failure.txt").read_text().startswith("ProgramFailed: program[0]")
        assert "/nonexistent/app" in (bundle / "console.log").read_text()

        again = subprocess.run(
            [str(script)], capture_output=True, text=True, timeout=600, check=False
        )
        assert again.returncode == 0, again.stderr
        assert "starting program failed: /nonexistent/app application missing" in again.stdout
        assert "reboot: Power down" in again.stdout
        assert "changed since the run" not in again.stderr
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def test_a_powerdown_after_launch_is_a_clean_shutdown(hello: Path, tmp_path: Path) -> None:
    """A program that sleeps; the power button a second after launch: vinitd stops it with
    SIGTERM, syncs, and QEMU exits 0."""
    result = run(str(hello), "--scenario", scenario(tmp_path, POWERDOWN), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["programs"][0]["signal"] == "SIGTERM"
    assert report["actions"][0].startswith("powerdown 1 s after stage launch finished: done")
    shutdown = next(c for c in report["checks"] if c["name"] == "the VM powers off cleanly")
    assert shutdown["passed"], shutdown
    assert report["qemu_exit_status"] == 0


def test_debug_pauses_before_a_stage(hello: Path) -> None:
    """--pause-before launch stops the VM as launch starts; :query-status shows it paused and
    :cont lets hello finish and power off."""
    process = subprocess.Popen(
        [*DEBUG, str(hello), "--accel", "tcg", "--pause-before", "launch"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stderr is not None
    try:
        deadline = time.monotonic() + 300
        while "paused as stage launch started" not in (line := process.stderr.readline()):
            assert line, "vmtest debug ended before pausing"
            assert time.monotonic() < deadline
        process.stdin.write(":query-status\n:cont\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert '"status": "paused"' in out  # the reply to :query-status, one JSON line
    assert "hello from a vorteil micro-VM" in out
    assert "QEMU exited with status 0" in err


def test_vm_factory_keeps_a_bundle_of_a_failed_test(
    hello: Path, tmp_path: Path, pytester: pytest.Pytester
) -> None:
    """An inner test that fails with a VM running: the VM is killed, its bundle written to
    <artifacts>/<test id>/<vm name>/, and the report says where."""
    pidfile, artifacts = tmp_path / "pid", tmp_path / "artifacts"
    pytester.makepyfile(test_inner=INNER_TEST.format(image=str(hello), pidfile=str(pidfile)))
    result = pytester.runpytest(
        "--strict-markers", "--vmtest-accel=tcg", f"--vmtest-artifacts={artifacts}"
    )
    result.assert_outcomes(failed=1)

    bundle = artifacts / "test_inner.py-test_fails_with_a_vm" / "hello"
    result.stdout.fnmatch_lines(["*vmtest repro bundles*", f"hello: {bundle}*"])
    for name in ("repro.sh", "console.log", "events.jsonl", "qemu-argv.json", "bundle.json"):
        assert (bundle / name).is_file(), name
    events = [json.loads(line) for line in (bundle / "events.jsonl").read_text().splitlines()]
    finished = {"type": "stage", "stage": "pre-setup", "state": "finished"}
    assert any(finished.items() <= event.items() for event in events)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
