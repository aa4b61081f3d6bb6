"""A pytest plugin for the vinitd VM tests: the probe image, and VMs booted from copies of it.

    pytest_plugins = ("projects.probe_vm",)

    def test_user(probe: Probe) -> None:
        vm = probe.start(probe.image(VCFG))
        vm.wait_for_program(0, "succeeded")
        assert probe.fact(vm, "ids")["uid"] == 1000

The probe project (``probe/``) is built once per test run. `Probe.image` copies it and rewrites
the copy's VCFG with `imagekit.imagefile.write_config`, which takes well under a second where
a build takes seconds. `Probe.start` boots a copy under TCG. Every VM is killed when its test
ends; its console log stays in the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from imagetools import VM_TOOLS, require_tools

from imagekit.cache import BuildCache
from imagekit.defaults import with_defaults
from imagekit.image import BuildRequest, build
from imagekit.imagefile import write_config
from imagekit.vcfgfile import parse_vcfg_text
from vmtest import Machine

PROBE_PROJECT = Path(__file__).parent / "probe"
FACT_PREFIX = "PROBE "
# Unless a VCFG has a [[network]] of its own: DHCP would cost 2-3 s of every boot under TCG.
STATIC_NETWORK = """
[[network]]
ip = "10.0.2.15"
mask = "255.255.255.0"
gateway = "10.0.2.2"
"""


@dataclass(frozen=True)
class Fact:
    """One line the probe printed: ``fact`` about ``arg``, by the program tagged ``tag``."""

    fact: str
    arg: str
    value: Any
    tag: str = ""


def probe_facts(console: str) -> list[Fact]:
    """Every fact the probe printed on ``console``, in order."""
    return [
        Fact(**json.loads(line.removeprefix(FACT_PREFIX)))
        for line in console.splitlines()
        if line.startswith(FACT_PREFIX)
    ]


@dataclass
class Probe:
    """Copies of the probe image with other VCFGs, and the VMs booted from them."""

    base: Path
    directory: Path
    machines: list[Machine] = field(default_factory=list)

    def image(self, vcfg: str, *, name: str = "probe") -> Path:
        """A copy of the probe image whose VCFG is ``vcfg`` (TOML) with imagekit's defaults
        filled in, and `STATIC_NETWORK` added when it has no ``[[network]]``."""
        if "[[network]]" not in vcfg:
            vcfg += STATIC_NETWORK
        copy = self.directory / f"{name}.raw"
        shutil.copyfile(self.base, copy)
        write_config(copy, with_defaults(parse_vcfg_text(vcfg, source=f"{name}.vcfg")))
        return copy

    def start(self, image: Path, *, writable: bool = False) -> Machine:
        """Boot ``image`` under TCG; ``writable`` keeps what the guest writes in the file."""
        workdir = self.directory / f"vm{len(self.machines)}"
        machine = Machine(image, accel="tcg", writable=writable, workdir=workdir)
        self.machines.append(machine)
        return machine.start()

    def facts(self, machine: Machine, name: str, *, tag: str = "") -> list[Fact]:
        """The facts called ``name`` that the program tagged ``tag`` printed so far."""
        return [f for f in probe_facts(machine.console) if f.fact == name and f.tag == tag]

    def fact(self, machine: Machine, name: str, arg: str = "", *, tag: str = "") -> Any:
        """The value of fact ``name`` about ``arg``; the test fails unless there is one."""
        found = [f.value for f in self.facts(machine, name, tag=tag) if f.arg == arg]
        assert len(found) == 1, f"fact {name}:{arg} printed {len(found)} times:\n{machine.console}"
        return found[0]


@pytest.fixture(scope="session")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe project built once per test run, with the shared build cache."""
    require_tools(VM_TOOLS)
    output = tmp_path_factory.mktemp("probe-image") / "probe.raw"
    with BuildCache() as cache:
        build(BuildRequest(spec=str(PROBE_PROJECT), output=output), cache=cache)
    return output


@pytest.fixture
def probe(probe_image: Path, tmp_path: Path) -> Iterator[Probe]:
    """A `Probe` for one test; its VMs are killed when the test ends."""
    vms = Probe(probe_image, tmp_path)
    yield vms
    for machine in vms.machines:
        machine.close()
