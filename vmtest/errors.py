"""The exceptions of vmtest: one root, a few setup errors, and the boot failures.

VmtestError
 +-- BootModeUnavailable   a boot mode (uefi, bios) that vmtest cannot start yet
 +-- AcceleratorUnavailable  ``accel="kvm"`` on a host whose /dev/kvm is missing or unusable
 +-- ImageUnsupported      an image vmtest cannot boot (not raw, no vorteil layout)
 +-- MachineOptionError    a Machine option with an impossible value (cpus=0, boot="pxe")
 +-- QmpError              a QMP command that failed or could not be sent
 +-- ScenarioError         a scenario file that cannot be read, or a key in it that is wrong
 +-- MachineFailure        the VM did not do what was awaited (see `vmtest.failures`)

Setup errors are raised before QEMU starts and name the input that is wrong. Boot failures
carry what the console and the event port showed when the wait gave up.
"""

from __future__ import annotations


class VmtestError(Exception):
    """Root of every error raised on purpose by vmtest."""


class BootModeUnavailable(VmtestError, NotImplementedError):
    """The boot mode exists in the design but not in this version of vmtest."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__(f"boot mode {mode} is not available yet (use boot='direct')")


class AcceleratorUnavailable(VmtestError):
    """KVM was required but the host cannot provide it."""


class ImageUnsupported(VmtestError):
    """An image that vmtest cannot boot; ``source`` names it."""

    def __init__(self, problem: str, *, source: str, hint: str | None = None) -> None:
        self.problem = problem
        self.source = source
        self.hint = hint
        text = f"{source}: {problem}"
        super().__init__(f"{text} ({hint})" if hint else text)


class QmpError(VmtestError):
    """A QMP command failed; ``command`` names it."""

    def __init__(self, command: str, problem: str) -> None:
        self.command = command
        self.problem = problem
        super().__init__(f"QMP {command}: {problem}")


class MachineOptionError(VmtestError, ValueError):
    """A Machine option with a value that cannot work; names the option."""


class ScenarioError(VmtestError):
    """A scenario file (`vmtest.scenario`) that cannot be used; names the file and the key."""

    def __init__(self, problem: str, *, source: str | None, key: str = "") -> None:
        self.problem = problem
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
