"""vmtest: boots images in QEMU and asserts each stage of the boot.

    from vmtest import Machine

    with Machine("hello.raw") as vm:
        vm.wait_for_stage("launch")
        vm.wait_for_program(0, "succeeded")
        assert vm.wait_for_shutdown() == 0

`Machine` is the API; `vmtest.failures` holds what its waits raise, `vmtest.events` the event
protocol's host side (docs/events.md) and `vmtest.errors` the root of the exception tree.
`vmtest.scenario`, `vmtest.runner` and `vmtest.report` make the ``vmtest run`` command
(`vmtest.cli`); `vmtest.repro` writes repro bundles; `vmtest.pytest_plugin` gives pytest the
``vm_factory`` fixture (docs/vmtest.md).
"""

from vmtest.accel import Accel
from vmtest.command import PortForward
from vmtest.errors import (
    AcceleratorUnavailable,
    BootModeUnavailable,
    ImageUnsupported,
    MachineOptionError,
    QmpError,
    ScenarioError,
    VmtestError,
)
from vmtest.events import Event, StageSpan, StageState, format_timeline
from vmtest.failures import (
    EventProtocolError,
    ExpectationFailed,
    InitCrashed,
    KernelPanic,
    MachineFailure,
    NoKernelOutput,
    PoweredOffEarly,
    ProgramFailed,
    QemuFailed,
    QemuStartFailed,
    ShutdownHung,
    Stage0Failed,
    StageFailed,
    StageTimedOut,
    StillRunningAfterPowerOff,
    VinitdFailed,
)
from vmtest.machine import DEADLINES, BootMode, Deadlines, Machine, ProgramTarget
from vmtest.qmp import QmpEvent

__all__ = [
    "DEADLINES",
    "Accel",
    "AcceleratorUnavailable",
    "BootMode",
    "BootModeUnavailable",
    "Deadlines",
    "Event",
    "EventProtocolError",
    "ExpectationFailed",
    "ImageUnsupported",
    "InitCrashed",
    "KernelPanic",
    "Machine",
    "MachineFailure",
    "MachineOptionError",
    "NoKernelOutput",
    "PortForward",
    "PoweredOffEarly",
    "ProgramFailed",
    "ProgramTarget",
    "QemuFailed",
    "QemuStartFailed",
    "QmpError",
    "QmpEvent",
    "ScenarioError",
    "ShutdownHung",
    "Stage0Failed",
    "StageFailed",
    "StageSpan",
    "StageState",
    "StageTimedOut",
    "StillRunningAfterPowerOff",
    "VinitdFailed",
    "VmtestError",
    "format_timeline",
]
