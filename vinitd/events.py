"""The stage-event channel: one JSON object per line on the virtio-serial port ``vinitd.events``.

vmtest reads these lines to follow the boot (see docs/events.md for the protocol). Without the
port (a VM started by hand) every emit is a no-op: the console stays the human channel.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

PROTOCOL_VERSION = 1
PORT_NAME = "vinitd.events"
# The boot's stages, in the order vinitd runs them: the names its stage events carry.
STAGE_NAMES = ("pre-setup", "setup", "post-setup", "launch")


def find_port(
    sys_ports: Path = Path("/sys/class/virtio-ports"), dev: Path = Path("/dev")
) -> Path | None:
    """The device node of the virtio-serial port named ``vinitd.events``, if attached."""
    try:
        entries = sorted(sys_ports.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            continue
        if name == PORT_NAME:
            return dev / entry.name
    return None


class EventChannel:
    """Writes events; never raises (losing an event must not stop a boot)."""

    def __init__(self, path: Path | None) -> None:
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                self._fd = None

    @property
    def connected(self) -> bool:
        return self._fd is not None

    def emit(self, kind: str, **fields: object) -> None:
        if self._fd is None:
            return
        record = {"v": PROTOCOL_VERSION, "time": round(time.monotonic(), 6), "type": kind, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:
            self._fd = None

    def stage(self, stage: str, state: str, **fields: object) -> None:
        self.emit("stage", stage=stage, state=state, **fields)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
