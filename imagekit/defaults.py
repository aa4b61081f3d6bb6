"""The default layers applied before a VCFG is written to an image (vorteil-image §2.3).

Layer 1 (vorteil's ``WithDefaults``) and layer 2 (its image builder) are applied together:
what they fill is exactly what ends up in the on-disk JSON. Layer 3, the fallbacks vinitd
applies at boot, lives in vinitd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from vinitd.vcfg import hostname
from vinitd.vcfg.model import VCFG, VM, Network, Privilege, Program, System, TerminateSignal
from vinitd.vcfg.values import Bytes


@dataclass(frozen=True)
class ImageFormat:
    name: str
    mtu: int


FORMATS: Mapping[str, ImageFormat] = {
    "raw": ImageFormat("raw", 1500),
    "qcow2": ImageFormat("qcow2", 1500),
}

DEFAULT_RAM = Bytes.mib(128)
DEFAULT_CPUS = 1
DEFAULT_DNS = ("8.8.8.8",)
DEFAULT_MAX_FDS = 1024
DEFAULT_USER = "root"
DEFAULT_TERMINATE_WAIT_MS = 3000
DEFAULT_STDIO = "/dev/vtty"


def with_defaults(vcfg: VCFG, *, image_format: str = "raw") -> VCFG:
    """Fill every field that vorteil's build path fills, leaving the user's values alone."""
    mtu = FORMATS[image_format].mtu
    networks = vcfg.network or (Network(ip="dhcp"),)
    return dataclasses.replace(
        vcfg,
        program=tuple(_program(p) for p in vcfg.program),
        network=tuple(_network(n, mtu) for n in networks),
        system=_system(vcfg.system, vcfg.info.name),
        vm=_vm(vcfg.vm),
    )


def _program(program: Program) -> Program:
    return dataclasses.replace(
        program,
        cwd=program.cwd or "/",
        stdout=program.stdout or DEFAULT_STDIO,
        stderr=program.stderr or DEFAULT_STDIO,
        privilege=program.privilege or Privilege.ROOT,
        terminate=program.terminate or TerminateSignal.SIGTERM,
    )


def _network(nic: Network, mtu: int) -> Network:
    return dataclasses.replace(nic, ip=nic.ip or "dhcp", mtu=nic.mtu or mtu)


def _system(system: System, info_name: str) -> System:
    return dataclasses.replace(
        system,
        dns=system.dns or DEFAULT_DNS,
        hostname=system.hostname or hostname.default_template(info_name),
        max_fds=system.max_fds or DEFAULT_MAX_FDS,
        user=system.user or DEFAULT_USER,
        terminate_wait=system.terminate_wait or DEFAULT_TERMINATE_WAIT_MS,
    )


def _vm(vm: VM) -> VM:
    return dataclasses.replace(
        vm,
        cpus=vm.cpus or DEFAULT_CPUS,
        ram=vm.ram if vm.ram.value else DEFAULT_RAM,
    )
