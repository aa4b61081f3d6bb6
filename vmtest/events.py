"""The host side of the stage-event channel: parsing the lines vinitd writes on its event port.

vinitd writes one JSON object per line on the virtio-serial port ``vinitd.events``
(docs/events.md). `EventStream` turns the bytes into `Event`s stamped with the host time they
arrived, and `timeline` folds the stage events into one `StageSpan` per stage.

Reading policy: a line that is not a JSON object with a numeric ``v``, a string ``type`` and a
numeric ``time`` is logged, kept in `EventStream.problems` and skipped (one damaged line must
not hide the rest of the boot). A line with another protocol version is a mismatch: the host
cannot know what the guest means, so the stream stops and `EventStream.mismatch` says why.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vinitd.events import PORT_NAME, PROTOCOL_VERSION, STAGE_NAMES

__all__ = [
    "PORT_NAME",
    "PROTOCOL_VERSION",
    "STAGES",
    "Event",
    "EventStream",
    "EventType",
    "ProgramState",
    "StageSpan",
    "StageState",
    "format_seconds",
    "format_table",
    "format_timeline",
    "timeline",
]

log = logging.getLogger(__name__)

# vinitd's boot stages, in the order it runs them (docs/events.md).
STAGES = STAGE_NAMES


class EventType(enum.StrEnum):
    STAGE = "stage"
    PROGRAM = "program"
    SHUTDOWN = "shutdown"
    FAILURE = "failure"  # vinitd itself failed
    NETWORK = "network"
    BOOTSTRAP = "bootstrap"


class StageState(enum.StrEnum):
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


class ProgramState(enum.StrEnum):
    STARTED = "started"
    EXITED = "exited"
    FAILED = "failed"  # could not be started


@dataclass(frozen=True, eq=False)
class Event(Mapping[str, Any]):
    """One event as the guest sent it, plus the host time it arrived.

    It reads like the guest's JSON object (``event["stage"]``, ``dict(event)``) and compares
    equal to a dict with the same fields; ``host_time`` is seconds since QEMU started.
    """

    fields: Mapping[str, Any]
    host_time: float

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def type(self) -> str:
        return str(self.fields["type"])

    @property
    def time(self) -> float:
        """Guest time: the guest's monotonic clock, about seconds since the kernel started."""
        return float(self.fields["time"])

    @property
    def state(self) -> str | None:
        value = self.fields.get("state")
        return value if isinstance(value, str) else None

    @property
    def stage(self) -> str | None:
        value = self.fields.get("stage")
        return value if isinstance(value, str) else None

    @property
    def index(self) -> int | None:
        value = self.fields.get("index")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def exit_status(self) -> int | None:
        value = self.fields.get("exit_status")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def signal(self) -> str | None:
        value = self.fields.get("signal")
        return value if isinstance(value, str) else None

    @property
    def message(self) -> str | None:
        value = self.fields.get("message")
        return value if isinstance(value, str) else None

    def is_stage(self, stage: str, state: str | None = None) -> bool:
        return (
            self.type == EventType.STAGE
            and self.stage == stage
            and (state is None or self.state == state)
        )

    def is_program(self, index: int, state: str | None = None) -> bool:
        return (
            self.type == EventType.PROGRAM
            and self.index == index
            and (state is None or self.state == state)
        )

    def to_dict(self) -> dict[str, Any]:
        """The guest's fields with ``host_time`` added, for JSON reports."""
        return {**self.fields, "host_time": round(self.host_time, 6)}

    def describe(self) -> str:
        """One line for people: what happened, with guest and host times."""
        when = f"(guest {self.time:.2f} s, host {self.host_time:.2f} s)"
        return f"{self._what()} {when}"

    def _what(self) -> str:
        if self.type == EventType.STAGE:
            text = f"stage {self.stage} {self.state}"
            return f"{text}: {self.message}" if self.message else text
        if self.type == EventType.PROGRAM:
            name = f"program[{self.index}]"
            if self.state == ProgramState.EXITED:
                if self.signal:
                    return f"{name} killed by {self.signal}"
                return f"{name} exited with status {self.exit_status}"
            if self.state == ProgramState.FAILED:
                return f"{name} failed to start: {self.message}"
            pid = self.fields.get("pid")
            return f"{name} {self.state} (pid {pid})" if pid is not None else f"{name} {self.state}"
        if self.type == EventType.SHUTDOWN:
            reason = self.fields.get("reason")
            return f"shutdown {self.state}: {reason}" if reason else f"shutdown {self.state}"
        if self.type == EventType.FAILURE:
            return f"vinitd failed: {self.fields.get('error')}: {self.message}"
        return json.dumps(dict(self.fields), separators=(",", ":"), default=str)


class EventStream:
    """Parses the event port's bytes into events, line by line.

    Not thread-safe: the owner serialises access. ``logger`` receives a warning for every
    problem (default: this module's logger).
    """

    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._buffer = b""
        self._line_number = 0
        self.events: list[Event] = []
        self.problems: list[str] = []
        self.mismatch: str | None = None
        self.closed = False

    def feed(self, data: bytes, host_time: float) -> list[Event]:
        """Add bytes that arrived at ``host_time``; return the events they completed."""
        if self.mismatch is not None:
            return []
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        added: list[Event] = []
        for line in lines:
            event = self._parse(line, host_time)
            if event is not None:
                self.events.append(event)
                added.append(event)
            if self.mismatch is not None:
                break
        return added

    def close(self, host_time: float) -> list[Event]:
        """The port closed; an unfinished last line is a problem."""
        if self.closed:
            return []
        self.closed = True
        if self._buffer.strip() and self.mismatch is None:
            self._line_number += 1
            self._problem(f"line {self._line_number} ended without a newline: {self._buffer!r}")
        self._buffer = b""
        return []

    def _parse(self, raw: bytes, host_time: float) -> Event | None:
        self._line_number += 1
        where = f"line {self._line_number}"
        if not raw.strip():
            return None
        try:
            value = json.loads(raw)
        except ValueError as err:
            self._problem(f"{where} is not JSON ({err}): {raw[:200]!r}")
            return None
        if not isinstance(value, dict):
            self._problem(f"{where} is not a JSON object: {raw[:200]!r}")
            return None
        version = value.get("v")
        if not _is_number(version):
            self._problem(f"{where} has no protocol version 'v': {raw[:200]!r}")
            return None
        if version != PROTOCOL_VERSION:
            self.mismatch = (
                f"{where} speaks protocol version {version!r}; "
                f"this vmtest reads version {PROTOCOL_VERSION}"
            )
            self._log.error("event port: %s", self.mismatch)
            return None
        if not isinstance(value.get("type"), str):
            self._problem(f"{where} has no event 'type': {raw[:200]!r}")
            return None
        if not _is_number(value.get("time")):
            self._problem(f"{where} has no guest 'time': {raw[:200]!r}")
            return None
        return Event(value, host_time)

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self._log.warning("event port: %s", text)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class StageSpan:
    """One run of a stage: when it started and ended, in guest and host seconds.

    ``state`` is the last state seen (started while it runs, then finished or failed);
    ``message`` is vinitd's message for a failed stage.
    """

    stage: str
    state: str
    guest_start: float | None
    host_start: float | None
    guest_end: float | None = None
    host_end: float | None = None
    message: str | None = None

    @property
    def guest_seconds(self) -> float | None:
        """How long the stage took in the guest, None until it ended."""
        if self.guest_start is None or self.guest_end is None:
            return None
        return self.guest_end - self.guest_start


def timeline(events: Iterable[Event]) -> tuple[StageSpan, ...]:
    """The stages in the order they started; a stage that starts again opens a new span."""
    spans: list[StageSpan] = []
    running: dict[str, int] = {}
    for event in events:
        stage, state = event.stage, event.state
        if event.type != EventType.STAGE or stage is None or state is None:
            continue
        if state == StageState.STARTED:
            running[stage] = len(spans)
            spans.append(StageSpan(stage, state, event.time, event.host_time))
            continue
        position = running.pop(stage, None)
        begun = spans[position] if position is not None else StageSpan(stage, state, None, None)
        span = replace(
            begun,
            state=state,
            guest_end=event.time,
            host_end=event.host_time,
            message=event.message,
        )
        if position is None:  # an end whose start was lost
            spans.append(span)
        else:
            spans[position] = span
    return tuple(spans)


def format_seconds(value: float | None) -> str:
    """A time in a table: three decimals, or "-" when there is none."""
    return "-" if value is None else f"{value:.3f}"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the header) in left-aligned columns two spaces apart."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_timeline(spans: Iterable[StageSpan]) -> str:
    """A small table: stage, state, guest start/end and host start/end in seconds."""
    rows = [("stage", "state", "guest start", "guest end", "host start", "host end")]
    rows += [
        (
            span.stage,
            span.state,
            format_seconds(span.guest_start),
            format_seconds(span.guest_end),
            format_seconds(span.host_start),
            format_seconds(span.host_end),
        )
        for span in spans
    ]
    return format_table(rows)
