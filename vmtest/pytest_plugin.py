"""pytest support for VM tests: the ``vm_factory`` fixture and a repro bundle per failed VM.

Installed as the ``vmtest`` plugin (entry point ``pytest11``), so any project with vmtest
installed has it:

    import pytest

    @pytest.mark.vm
    def test_hello(vm_factory):
        vm = vm_factory("build/hello.raw")  # started; kwargs go to vmtest.Machine
        vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0

``vm_factory(image, *, start=True, **kwargs)`` returns a `vmtest.Machine`, started unless
``start=False``. The factory tracks every VM it made and kills them all at teardown,
whatever happened. When the test (or its setup) fails, the repro bundle (`vmtest.repro`)
of each of its VMs is written to ``<DIR>/<test id>/<vm name>/``, where DIR is
``--vmtest-artifacts`` or pytest's basetemp, and the failure report gets a section that says
where. Options: ``--vmtest-accel auto|kvm|tcg`` (the default accelerator of the VMs) and
``--vmtest-artifacts DIR``. The ``vm`` marker is registered if the project has not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtest import repro
from vmtest.accel import Accel
from vmtest.errors import VmtestError
from vmtest.machine import Machine

log = logging.getLogger(__name__)

MARKER = "vm: boots a real VM in QEMU (slow under emulation)"
SECTION = "vmtest repro bundles"
MAX_ID_LENGTH = 120


class VmFactory:
    """Makes Machines for one test, and remembers them (see the module docstring)."""

    def __init__(self, *, accel: str, workdir: Path, artifacts: Path) -> None:
        self.accel = accel
        self.workdir = workdir
        self.artifacts = artifacts
        self.machines: list[Machine] = []

    def __call__(self, image: Path | str, *, start: bool = True, **kwargs: Any) -> Machine:
        kwargs.setdefault("accel", self.accel)
        name = kwargs.pop("name", None)
        if name is None:
            name = Machine(image, **kwargs).name  # the VCFG's name, as the Machine reads it
        name = self._unique(name)
        kwargs.setdefault("workdir", self.workdir / name)
        vm = Machine(image, name=name, **kwargs)
        self.machines.append(vm)
        if start:
            vm.start()
        return vm

    def _unique(self, name: str) -> str:
        taken = {vm.name for vm in self.machines}
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}-{number}"
        return candidate

    def close(self) -> None:
        """Kill every VM (each one, even if closing another fails)."""
        for vm in self.machines:
            try:
                vm.close()
            except Exception:  # the others must still be killed
                log.exception("vm_factory: closing %s", vm.name)

    def save_bundles(self, directory: Path) -> list[str]:
        """Close every VM, then write each one's repro bundle under ``directory``; returns a
        line per VM for the report."""
        self.close()
        lines = []
        for vm in self.machines:
            target = directory / vm.name
            try:
                repro.write(repro.snapshot(vm), target)
            except (OSError, VmtestError) as err:
                lines.append(f"{vm.name}: no bundle ({err})")
                continue
            failure = vm.failure()
            seen = f" ({type(failure).__name__}: {failure.summary})" if failure else ""
            lines.append(f"{vm.name}: {target}{seen}")
            lines.append(f"  console: {target / 'console.log'}; again: {target / 'repro.sh'}")
        return lines


_FACTORY = pytest.StashKey[VmFactory]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmtest", "vmtest: VMs in QEMU")
    group.addoption(
        "--vmtest-accel",
        choices=[accel.value for accel in Accel],
        default=Accel.AUTO.value,
        help="accelerator of the VMs vm_factory starts (default: auto)",
    )
    group.addoption(
        "--vmtest-artifacts",
        type=Path,
        metavar="DIR",
        default=None,
        help="where the repro bundles of a failed test's VMs go (default: pytest's basetemp)",
    )


def pytest_configure(config: pytest.Config) -> None:
    markers = config.getini("markers")
    if not any(str(line).split(":")[0].strip() == "vm" for line in markers):
        config.addinivalue_line("markers", MARKER)


@pytest.fixture
def vm_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VmFactory]:
    """Makes `vmtest.Machine`s: ``vm_factory(image, **kwargs)``; kills them at teardown."""
    artifacts = request.config.getoption("vmtest_artifacts")
    factory = VmFactory(
        accel=request.config.getoption("vmtest_accel"),
        workdir=tmp_path_factory.mktemp("vmtest"),
        artifacts=artifacts if artifacts is not None else tmp_path_factory.getbasetemp(),
    )
    request.node.stash[_FACTORY] = factory
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed setup or call: bundle the test's VMs, and say where in the report."""
    report = yield
    factory = item.stash.get(_FACTORY, None)
    if factory is None or not factory.machines or not report.failed:
        return report
    if report.when not in ("setup", "call"):
        return report
    directory = factory.artifacts / artifact_directory(item.nodeid)
    lines = factory.save_bundles(directory)
    report.sections.append((SECTION, "\n".join(lines)))
    return report


def artifact_directory(nodeid: str) -> str:
    """A directory name for a test id: ``t/test_a.py::test_b[x]`` -> ``t-test_a.py-test_b-x``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-.") or "test"
    return name[:MAX_ID_LENGTH]
