"""An interactive VM: the console on stdout, QMP commands typed on stdin (`vmtest debug`).

Lines read from stdin:

- ``:COMMAND [ARGUMENTS]`` runs a QMP command and prints its JSON reply; ARGUMENTS is a JSON
  object: ``:query-status``, ``:system_powerdown``, ``:cont``,
  ``:human-monitor-command {"command-line": "info registers"}``;
- ``:help`` lists these, ``:quit`` kills QEMU;
- any other line goes to the serial console, newline included.

``pause_before`` stops the VM (QMP ``stop``) as soon as that stage's ``started`` event
arrives; ``:cont`` goes on. The session ends when QEMU exits; the end of stdin does not end
it (a guest that powers off does, and so do ``:quit`` and Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import TextIO

from vmtest.errors import QmpError, VmtestError
from vmtest.machine import Machine

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
HELP = (
    "type :COMMAND [JSON arguments] for QMP (:query-status, :system_powerdown, :cont, :stop), "
    ":quit to kill QEMU; other lines go to the serial console"
)


class DebugSession:
    """Runs ``vm`` (not started yet) with ``lines`` as commands until QEMU exits."""

    def __init__(
        self,
        vm: Machine,
        lines: Iterable[str],
        *,
        output: TextIO,
        messages: TextIO,
        pause_before: str | None = None,
    ) -> None:
        self.vm = vm
        self.output = output
        self.messages = messages
        self.pause_before = pause_before
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(lines,), name="vmtest-debug-stdin", daemon=True
        )
        self._paused = False

    def run(self) -> int:
        """Start the VM and serve until QEMU exits; returns QEMU's exit status."""
        self.vm.start()
        self.say(f"vm {self.vm.name} running (QEMU pid {self.vm.pid}); {HELP}")
        self._reader.start()
        shown = 0
        while self.vm.running:
            shown = self._show(shown)
            self._check_pause()
            self._serve_lines()
            time.sleep(POLL_SECONDS)
        self.vm.close()
        self._show(shown)
        code = self.vm.returncode
        self.say(f"QEMU exited with status {code}")
        return code if code is not None else 1

    def say(self, text: str) -> None:
        self.messages.write(f"vmtest: {text}\n")
        self.messages.flush()

    def _read(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _show(self, shown: int) -> int:
        text = self.vm.console
        if len(text) > shown:
            self.output.write(text[shown:])
            self.output.flush()
        return len(text)

    def _check_pause(self) -> None:
        if self.pause_before is None or self._paused:
            return
        if any(event.is_stage(self.pause_before, "started") for event in self.vm.events):
            self._paused = True
            self.run_command("stop", {})
            self.say(f"paused as stage {self.pause_before} started; type :cont to go on")

    def _serve_lines(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                log.debug("end of input; the session goes on until QEMU exits")
                continue
            self.handle(line)

    def handle(self, line: str) -> None:
        """One line of input (see the module docstring)."""
        if not line.startswith(":"):
            try:
                self.vm.write_console((line + "\n").encode())
            except VmtestError as err:
                self.say(str(err))
            return
        name, _, rest = line[1:].strip().partition(" ")
        if name in ("", "help"):
            self.say(HELP)
            return
        if name == "quit":
            self.say("killing QEMU")
            self.vm.kill()
            return
        try:
            arguments = json.loads(rest) if rest.strip() else {}
        except ValueError as err:
            self.say(f"{name}: the arguments are not JSON ({err})")
            return
        if not isinstance(arguments, dict):
            self.say(f"{name}: the arguments must be a JSON object")
            return
        self.run_command(name, arguments)

    def run_command(self, name: str, arguments: dict[str, object]) -> None:
        try:
            reply = self.vm.qmp(name, **arguments)
        except QmpError as err:
            self.output.write(json.dumps({"error": err.problem, "command": name}) + "\n")
        else:
            self.output.write(json.dumps({"return": reply}) + "\n")
        self.output.flush()
