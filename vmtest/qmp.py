"""A thin synchronous layer over qemu.qmp: commands with deadlines, and a log of QMP events.

`QmpConnection` drives a `qemu.qmp.QMPClient` on a VM's `IoThread`, so callers stay
synchronous. Every event QEMU sends (``SHUTDOWN``, ``POWERDOWN``, ``RESET``, ...) is recorded
as it arrives, stamped with the host clock the owner passes in; commands and replies are
logged at DEBUG on a logger named after the VM (``vmtest.qmp.<name>``).

In qemu.qmp 0.0.6 the server's greeting is an object of its own: ask ``query-version`` for
QEMU's version.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, Message, QMPClient, QMPError

from vmtest.errors import QmpError
from vmtest.iothread import IoThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QmpEvent:
    """A QMP event: its name, data, QEMU's own timestamp and the host time it arrived."""

    name: str
    data: Mapping[str, Any]
    host_time: float
    qemu_time: float | None = None  # seconds since the epoch, as QEMU stamped it

    def describe(self) -> str:
        """The name, with the reason when QEMU gives one: ``SHUTDOWN(guest-shutdown)``."""
        reason = self.data.get("reason")
        return f"{self.name}({reason})" if isinstance(reason, str) else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "data": dict(self.data),
            "host_time": round(self.host_time, 6),
            "qemu_time": self.qemu_time,
        }


class _Recorder(EventListener):
    """Sees every event as it is dispatched and keeps none in a queue."""

    def __init__(self, record: Callable[[Message], None]) -> None:
        super().__init__()
        self._record = record

    def accept(self, event: Message) -> bool:
        self._record(event)
        return False


class QmpConnection:
    """A QMP session with one QEMU; ``clock`` gives the host time for event stamps.

    ``on_event`` (optional) is called on the loop's thread for each recorded event.
    """

    def __init__(
        self,
        io: IoThread,
        *,
        name: str,
        clock: Callable[[], float],
        on_event: Callable[[QmpEvent], None] | None = None,
    ) -> None:
        self._io = io
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.Lock()
        self._events: list[QmpEvent] = []
        self.log = log.getChild(name)
        self._client = QMPClient(name)
        self._client.register_listener(_Recorder(self._record))
        self.version: str | None = None

    @property
    def events(self) -> list[QmpEvent]:
        with self._lock:
            return list(self._events)

    def connect(self, address: Path | socket.socket, *, timeout: float) -> None:
        """Connect (a socket path, or a connected socket) and negotiate; QmpError if not."""
        target: str | socket.socket = (
            address if isinstance(address, socket.socket) else str(address)
        )
        try:
            self._io.run(self._client.connect(target), timeout)
        except (QMPError, OSError) as err:  # TimeoutError is an OSError
            raise QmpError("connect", str(err) or type(err).__name__) from err
        reply = self.execute("query-version", timeout=timeout)
        if isinstance(reply, dict) and isinstance(reply.get("qemu"), dict):
            qemu = reply["qemu"]
            self.version = f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')}"
        self.log.debug("connected to QEMU %s", self.version)

    def execute(
        self, command: str, arguments: Mapping[str, object] | None = None, *, timeout: float
    ) -> object:
        """Run ``command`` and return its result; QmpError on an error reply or no reply."""
        self.log.debug("-> %s %s", command, dict(arguments) if arguments else "")
        try:
            result = self._io.run(self._client.execute(command, arguments), timeout)
        except ExecuteError as err:
            raise QmpError(command, f"{err.error_class}: {err}") from err
        except TimeoutError as err:  # an OSError too: caught first
            raise QmpError(command, f"no reply in {timeout:.1f} s") from err
        except (QMPError, OSError, EOFError) as err:
            raise QmpError(command, str(err) or type(err).__name__) from err
        self.log.debug("<- %s %s", command, result)
        return result

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect; errors of a session that QEMU already ended are only logged."""
        if not self._io.running:
            return
        try:
            self._io.run(self._client.disconnect(), timeout)
        except Exception as err:  # the session is over whatever went wrong
            self.log.debug("disconnect: %s", err)

    def _record(self, message: Message) -> None:
        stamp = message.get("timestamp")
        qemu_time = None
        if isinstance(stamp, dict):
            qemu_time = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        data = message.get("data")
        event = QmpEvent(
            str(message.get("event")),
            data if isinstance(data, dict) else {},
            self._clock(),
            qemu_time,
        )
        with self._lock:
            self._events.append(event)
        self.log.debug("event %s %s", event.name, dict(event.data))
        if self._on_event is not None:
            self._on_event(event)
