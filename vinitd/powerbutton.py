"""The ACPI power button, read through evdev.

QEMU's ``system_powerdown`` reaches the guest as ``KEY_POWER`` on the input device named
"Power Button" (needs the ``button`` and ``evdev`` modules). Its ``eventN`` index is not
stable, so the device is found by name.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

DEVICE_NAME = "Power Button"
EV_KEY = 1
KEY_POWER = 116
# struct input_event on 64-bit: struct timeval (two longs), u16 type, u16 code, s32 value.
INPUT_EVENT = struct.Struct("llHHi")


def find_device(
    sys_input: Path = Path("/sys/class/input"), dev_input: Path = Path("/dev/input")
) -> Path | None:
    """The ``/dev/input/eventN`` node of the power button, if there is one."""
    try:
        entries = sorted(sys_input.glob("event*"))
    except OSError:
        return None
    for entry in entries:
        try:
            name = (entry / "device" / "name").read_text().strip()
        except OSError:
            continue
        if name == DEVICE_NAME:
            return dev_input / entry.name
    return None


def open_device(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def pressed(data: bytes) -> bool:
    """Whether a read from the device holds a KEY_POWER press."""
    size = INPUT_EVENT.size
    for offset in range(0, len(data) - size + 1, size):
        _, _, kind, code, value = INPUT_EVENT.unpack_from(data, offset)
        if kind == EV_KEY and code == KEY_POWER and value == 1:
            return True
    return False
