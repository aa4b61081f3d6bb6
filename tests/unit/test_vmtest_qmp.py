"""vmtest.qmp against a fake QMP server on a socketpair: greeting, capabilities, execute, events."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from vmtest.errors import QmpError
from vmtest.iothread import IoThread
from vmtest.qmp import QmpConnection, QmpEvent

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"},
        "capabilities": [],
    }
}


class FakeQmpServer:
    """The far end of QMP: greets, answers each command, and sends events after some.

    ``replies`` maps a command to its return value, ``errors`` to an error description,
    ``events`` to the events sent right after its reply. ``received`` lists the commands
    in the order they came.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        replies: Mapping[str, object] | None = None,
        errors: Mapping[str, str] | None = None,
        events: Mapping[str, list[dict[str, Any]]] | None = None,
        silent: frozenset[str] = frozenset(),
    ) -> None:
        self.sock = sock
        self.replies = {"query-version": GREETING["QMP"]["version"], **(replies or {})}
        self.errors = errors or {}
        self.events = events or {}
        self.silent = silent
        self.received: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, message: Mapping[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\r\n")

    def _requests(self) -> Iterator[dict[str, Any]]:
        """Requests as they come: QMP clients send JSON objects with no separator."""
        decoder = json.JSONDecoder()
        buffer = ""
        while data := self.sock.recv(4096):
            buffer += data.decode()
            while buffer.strip():
                try:
                    request, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                yield request

    def _serve(self) -> None:
        self._send(GREETING)
        try:
            for request in self._requests():
                self._answer(request)
        except OSError:
            pass  # the client went away

    def _answer(self, request: dict[str, Any]) -> None:
        name = request["execute"]
        self.received.append(name)
        if name in self.silent:
            return
        reply: dict[str, Any]
        if name in self.errors:
            reply = {"error": {"class": "GenericError", "desc": self.errors[name]}}
        else:
            reply = {"return": self.replies.get(name, {})}
        if "id" in request:
            reply["id"] = request["id"]
        self._send(reply)
        for event in self.events.get(name, []):
            self._send({"timestamp": {"seconds": 100, "microseconds": 250000}, **event})


@pytest.fixture
def io() -> Iterator[IoThread]:
    thread = IoThread("test-io")
    yield thread
    thread.stop()


def _connect(io: IoThread, **server: Any) -> tuple[QmpConnection, FakeQmpServer, list[QmpEvent]]:
    ours, theirs = socket.socketpair()
    fake = FakeQmpServer(theirs, **server)
    seen: list[QmpEvent] = []
    clock = iter(float(n) for n in range(1, 100))
    qmp = QmpConnection(io, name="fake", clock=lambda: next(clock), on_event=seen.append)
    qmp.connect(ours, timeout=5)
    return qmp, fake, seen


def test_connect_negotiates_and_asks_for_the_version(io: IoThread) -> None:
    """The exchange: greeting, qmp_capabilities, query-version; the version is kept."""
    qmp, fake, _ = _connect(io)
    assert fake.received == ["qmp_capabilities", "query-version"]
    assert qmp.version == "7.2.22"
    qmp.close()


def test_execute_returns_the_result_and_records_events(io: IoThread) -> None:
    """system_powerdown answers {} and is followed by POWERDOWN, then SHUTDOWN."""
    events = {
        "system_powerdown": [
            {"event": "POWERDOWN"},
            {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}},
        ]
    }
    qmp, fake, seen = _connect(io, replies={"query-status": {"status": "running"}}, events=events)
    assert qmp.execute("query-status", timeout=5) == {"status": "running"}
    assert qmp.execute("system_powerdown", timeout=5) == {}
    assert qmp.execute("query-status", timeout=5) == {"status": "running"}  # events arrived
    assert fake.received == [
        "qmp_capabilities",
        "query-version",
        "query-status",
        "system_powerdown",
        "query-status",
    ]
    assert [(e.name, dict(e.data), e.host_time, e.qemu_time) for e in qmp.events] == [
        ("POWERDOWN", {}, 1.0, 100.25),
        ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, 2.0, 100.25),
    ]
    assert seen == qmp.events
    assert [e.describe() for e in seen] == ["POWERDOWN", "SHUTDOWN(guest-shutdown)"]
    assert seen[1].to_dict() == {
        "event": "SHUTDOWN",
        "data": {"guest": True, "reason": "guest-shutdown"},
        "host_time": 2.0,
        "qemu_time": 100.25,
    }
    qmp.close()


def test_an_error_reply_is_a_qmp_error(io: IoThread) -> None:
    """The error class and description are in the message."""
    qmp, _, _ = _connect(io, errors={"system_reset": "not now"})
    with pytest.raises(QmpError) as failed:
        qmp.execute("system_reset", timeout=5)
    assert failed.value.command == "system_reset"
    assert str(failed.value) == "QMP system_reset: GenericError: not now"
    qmp.close()


def test_no_reply_is_a_qmp_error_after_the_timeout(io: IoThread) -> None:
    """A server that never answers: the deadline ends the command."""
    qmp, _, _ = _connect(io, silent=frozenset({"stop"}))
    with pytest.raises(QmpError, match=r"QMP stop: no reply in 0\.2 s"):
        qmp.execute("stop", timeout=0.2)
    qmp.close()


def test_a_closed_server_is_a_qmp_error(io: IoThread) -> None:
    """QEMU gone: commands fail with QmpError, and close() still returns."""
    qmp, fake, _ = _connect(io)
    fake.sock.shutdown(socket.SHUT_RDWR)
    fake.thread.join(5)
    with pytest.raises(QmpError):
        qmp.execute("query-status", timeout=2)
    qmp.close()


def test_connecting_to_nothing_is_a_qmp_error(io: IoThread, tmp_path: Any) -> None:
    """No socket at the path yet."""
    qmp = QmpConnection(io, name="nothing", clock=lambda: 0.0)
    with pytest.raises(QmpError, match="QMP connect"):
        qmp.connect(tmp_path / "qmp.sock", timeout=1)
