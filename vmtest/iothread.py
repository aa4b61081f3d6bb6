"""One VM's sockets: an asyncio loop on a daemon thread, and taps on the sockets QEMU dials.

The console and the event port are unix sockets that vmtest listens on before QEMU starts;
QEMU connects to them as a client while it sets up its devices, before the guest runs, so
not one byte of output is lost. Each `SocketTap` hands what it reads to a callback on the
loop's thread; the callback's owner does its own locking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_SIZE = 65536


class IoThread:
    """An event loop running on its own daemon thread until `stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result; TimeoutError after timeout."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result after {timeout} s") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop and end the thread."""
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


class SocketTap:
    """A listening unix socket for one client; reads go to ``on_data``, the end to ``on_close``.

    A second client is refused (closed at once): only QEMU is meant to connect.
    """

    def __init__(
        self,
        io: IoThread,
        path: Path,
        *,
        on_data: Callable[[bytes], None],
        on_close: Callable[[], None],
        name: str,
    ) -> None:
        self.path = path
        self.name = name
        self._io = io
        self._on_data = on_data
        self._on_close = on_close
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connected = threading.Event()
        self.ended = threading.Event()

    def listen(self, timeout: float = 5.0) -> None:
        self._io.run(self._listen(), timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connected.is_set():
            log.warning("%s: refused a second connection", self.name)
            writer.close()
            return
        self.connected.set()
        self._writer = writer
        try:
            while data := await reader.read(READ_SIZE):
                self._on_data(data)
        except (ConnectionError, OSError) as err:
            log.debug("%s: read ended: %s", self.name, err)
        finally:
            self._writer = None
            self.ended.set()
            self._on_close()
            writer.close()

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Send ``data`` to the connected client; ConnectionError if there is none."""
        self._io.run(self._write(data), timeout)

    async def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionError(f"{self.name}: no client connected")
        self._writer.write(data)
        await self._writer.drain()

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening; a connection still open ends when its peer closes or the loop stops."""
        if self._server is None or not self._io.running:
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._io.run(self._close(), timeout)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
