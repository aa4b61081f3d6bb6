"""vmtest.events: recorded event streams parsed into events and a stage timeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vmtest.events import Event, EventStream, StageSpan, format_timeline, timeline

FIXTURES = Path(__file__).parent / "fixtures" / "vmtest"


def _stream(name: str, *, chunk: int = 50) -> EventStream:
    data = (FIXTURES / f"events-{name}.jsonl").read_bytes()
    stream = EventStream()
    for position in range(0, len(data), chunk):
        stream.feed(data[position : position + chunk], host_time=1.0 + position / 1000)
    stream.close(host_time=9.0)
    return stream


def _summary(events: list[Event]) -> list[tuple[str, str | None, str | None]]:
    return [
        (e.type, e.stage if e.type == "stage" else str(e.get("index", "")), e.state) for e in events
    ]


def test_a_good_boot_is_every_stage_then_the_program_then_the_shutdown() -> None:
    """The hello boot's events, in order, with nothing left over."""
    stream = _stream("good-boot")
    assert _summary(stream.events) == [
        ("stage", "pre-setup", "started"),
        ("stage", "pre-setup", "finished"),
        ("stage", "setup", "started"),
        ("stage", "setup", "finished"),
        ("stage", "post-setup", "started"),
        ("stage", "post-setup", "finished"),
        ("stage", "launch", "started"),
        ("program", "0", "started"),
        ("stage", "launch", "finished"),
        ("program", "0", "exited"),
        ("shutdown", "", "begun"),
        ("shutdown", "", "terminated"),
        ("shutdown", "", "synced"),
    ]
    assert stream.problems == []
    assert stream.mismatch is None


def test_the_timeline_has_one_span_per_stage_with_growing_times() -> None:
    """Each stage starts after the one before ended, in guest and host time."""
    spans = timeline(_stream("good-boot", chunk=1).events)
    assert [(s.stage, s.state) for s in spans] == [
        ("pre-setup", "finished"),
        ("setup", "finished"),
        ("post-setup", "finished"),
        ("launch", "finished"),
    ]
    previous_end = (0.0, 0.0)
    for span in spans:
        assert span.guest_start is not None and span.guest_end is not None
        assert span.host_start is not None and span.host_end is not None
        assert previous_end <= (span.guest_start, span.host_start)
        assert span.guest_start <= span.guest_end and span.host_start <= span.host_end
        previous_end = (span.guest_end, span.host_end)
    assert spans[0].guest_start == 4.591644
    assert spans[0].guest_seconds == pytest.approx(4.63099 - 4.591644)


def test_a_failed_stage_ends_its_span_with_vinitd_message() -> None:
    """launch failed: the span says so, with the message and no later stage."""
    spans = timeline(_stream("stage-failed").events)
    assert spans[-1] == StageSpan(
        "launch",
        "failed",
        guest_start=5.453785,
        host_start=spans[-1].host_start,
        guest_end=5.478192,
        host_end=spans[-1].host_end,
        message="/nonexistent/py3 application missing",
    )


def test_a_failed_program_is_an_exit_event_with_its_status() -> None:
    """program[0] exited 3; the VM still shuts down cleanly."""
    events = _stream("program-failed").events
    exited = [e for e in events if e.is_program(0, "exited")]
    assert len(exited) == 1
    assert exited[0].exit_status == 3
    assert exited[0].signal is None
    assert exited[0].describe().startswith("program[0] exited with status 3 (guest ")
    assert events[-1].state == "synced"


def test_a_bad_json_line_is_a_problem_and_the_rest_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A truncated line is logged and skipped; the lines around it are events."""
    with caplog.at_level(logging.WARNING, logger="vmtest.events"):
        stream = _stream("bad-json")
    assert _summary(stream.events) == [
        ("stage", "pre-setup", "started"),
        ("stage", "pre-setup", "finished"),
        ("stage", "setup", "started"),
        ("stage", "setup", "finished"),
    ]
    assert len(stream.problems) == 1
    assert stream.problems[0].startswith("line 3 is not JSON")
    assert [r.getMessage() for r in caplog.records] == [f"event port: {stream.problems[0]}"]
    assert stream.mismatch is None


def test_another_protocol_version_stops_the_stream() -> None:
    """v=2 is a mismatch: no events are read from it, nor after it."""
    stream = _stream("wrong-version")
    assert stream.events == []
    assert stream.mismatch == "line 1 speaks protocol version 2; this vmtest reads version 1"
    assert stream.feed(b'{"v":1,"time":1,"type":"stage"}\n', 2.0) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"[1, 2]", "line 1 is not a JSON object"),
        (b'{"time": 1, "type": "stage"}', "line 1 has no protocol version 'v'"),
        (b'{"v": true, "time": 1, "type": "stage"}', "line 1 has no protocol version 'v'"),
        (b'{"v": 1, "time": 1}', "line 1 has no event 'type'"),
        (b'{"v": 1, "type": "stage"}', "line 1 has no guest 'time'"),
    ],
)
def test_malformed_lines_are_problems(line: bytes, problem: str) -> None:
    """Each kind of malformed line is named in the problem."""
    stream = EventStream()
    assert stream.feed(line + b"\n", 0.0) == []
    assert stream.problems[0].startswith(problem)


def test_a_line_without_its_newline_at_the_end_is_a_problem() -> None:
    """The port closed in the middle of a line."""
    stream = EventStream()
    stream.feed(b'{"v":1,"time":1,"type":"stage"', 0.0)
    stream.close(1.0)
    assert stream.events == []
    assert stream.problems[0].startswith("line 1 ended without a newline")


def test_an_event_reads_like_the_guest_object() -> None:
    """Mapping access and equality with the guest's dict; host time beside it."""
    stream = EventStream()
    raw = {
        "v": 1,
        "time": 2.5,
        "type": "program",
        "index": 0,
        "state": "exited",
        "signal": "SIGTERM",
    }
    (event,) = stream.feed(json.dumps(raw).encode() + b"\n", 3.25)
    assert event == raw
    assert dict(event) == raw
    assert event["signal"] == "SIGTERM"
    assert event.host_time == 3.25
    assert event.to_dict() == {**raw, "host_time": 3.25}
    assert event.describe() == "program[0] killed by SIGTERM (guest 2.50 s, host 3.25 s)"
    assert event.is_program(0, "exited") and not event.is_program(1)
    assert not event.is_stage("launch")


def test_unknown_event_types_are_kept() -> None:
    """A newer vinitd's event type within version 1 is kept as an event, not a problem."""
    stream = EventStream()
    line = b'{"v":1,"time":1,"type":"network","interface":"eth0","state":"configured"}\n'
    (event,) = stream.feed(line, 0.0)
    assert event.type == "network"
    assert stream.problems == []
    assert timeline([event]) == ()


def test_format_timeline_is_a_table() -> None:
    """One header and one row per span, columns aligned."""
    text = format_timeline(timeline(_stream("stage-failed").events))
    lines = text.splitlines()
    assert lines[0].split() == [
        "stage",
        "state",
        "guest",
        "start",
        "guest",
        "end",
        "host",
        "start",
        "host",
        "end",
    ]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["pre-setup", "finished"],
        ["setup", "finished"],
        ["post-setup", "finished"],
        ["launch", "failed"],
    ]
    assert lines[4].split()[2:4] == ["5.454", "5.478"]
