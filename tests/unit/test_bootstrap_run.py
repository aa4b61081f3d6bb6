"""Bootstrap instructions run against real files, a real TCP listener and a real HTTP server."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vinitd import bootstrap_run, console
from vinitd.bootstrap_run import bootstrap_in_background, interface_address, run_bootstrap
from vinitd.programs import LaunchSpec, prepare
from vinitd.vcfg.model import Program

ENV = {"HOSTNAME": "vm-1", "HOST": "h", "IP0": "10.0.0.5"}


@pytest.fixture(autouse=True)
def _print_every_level() -> Iterator[None]:
    before = console.current_level()
    console.set_level("DEBUG")
    yield
    console.set_level(before)


class Events:
    """Records what run_bootstrap emits, as the event channel would send it."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def emit(self, kind: str, **fields: object) -> None:
        fields.pop("seconds")
        self.records.append({"type": kind, **fields})

    @property
    def states(self) -> list[object]:
        return [record["state"] for record in self.records]


class FakeTime:
    """A clock that moves only when slept; ``on_sleep`` runs after each sleep."""

    def __init__(self, on_sleep: Callable[[int], object] | None = None) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def _run(
    *instructions: str,
    fake: FakeTime | None = None,
    address_of: Callable[[str], str] = interface_address,
    poll_interval: float = 1.0,
    http_timeout: float = 30.0,
) -> tuple[dict[str, str], Events]:
    events = Events()
    fake = fake or FakeTime()
    env = run_bootstrap(
        instructions,
        ENV,
        program=3,
        events=events,
        address_of=address_of,
        clock=fake.clock,
        sleep=fake.sleep,
        poll_interval=poll_interval,
        http_timeout=http_timeout,
    )
    return env, events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        status = 200 if self.path in ("/config", "/slow") else 404
        body = b"port = 8080\n" if status == 200 else b"not here\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_sleep_waits_milliseconds() -> None:
    """SLEEP 250 sleeps a quarter of a second and is done."""
    fake = FakeTime()
    env, events = _run("SLEEP 250", fake=fake)
    assert fake.sleeps == [0.25]
    assert env == ENV
    assert events.records == [
        {"type": "bootstrap", "index": 3, "step": 0, "instruction": "SLEEP 250", "state": "done"}
    ]


def test_wait_file_until_it_appears(tmp_path: Path) -> None:
    """WAIT_FILE checks every interval until the file exists."""
    ready = tmp_path / "ready"
    fake = FakeTime(lambda n: n == 3 and ready.write_text(""))
    _, events = _run(f"WAIT_FILE {ready}", fake=fake)
    assert fake.sleeps == [1.0, 1.0, 1.0]
    assert events.records[0]["state"] == "done"
    assert events.records[0]["checks"] == 4


def test_wait_file_warns_every_30_checks(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A missing file is reported after every 30 checks without a timeout."""
    ready = tmp_path / "ready"
    fake = FakeTime(lambda n: n == 65 and ready.write_text(""))
    _, events = _run(f"WAIT_FILE {ready}", fake=fake, poll_interval=0.5)
    warning = f"bootstrap 'WAIT_FILE' file {ready} has not appeared yet"
    assert capfd.readouterr().out.count(warning) == 2
    assert events.states == ["done"]
    assert fake.sleeps == [0.5] * 65


def test_wait_file_timeout_continues(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """WAIT_FILE timeout=2 gives up after 2 s, reports it, and the next instruction runs."""
    fake = FakeTime()
    _, events = _run(f"WAIT_FILE {tmp_path}/never timeout=2", "SLEEP 5", fake=fake)
    assert events.states == ["timed-out", "done"]
    assert fake.sleeps == [1.0, 1.0, 0.005]
    out = capfd.readouterr().out
    assert "[ERROR]" in out
    assert f"file {tmp_path}/never did not appear in 2 s" in out


def test_interface_address_of_loopback() -> None:
    """The first IPv4 address of lo is read with SIOCGIFADDR."""
    assert interface_address("lo") == "127.0.0.1"


def test_interface_address_of_missing_interface() -> None:
    """An interface that does not exist is ENODEV."""
    with pytest.raises(OSError) as caught:
        interface_address("nosuch0")
    assert caught.value.errno == errno.ENODEV


def test_wait_port_connects_on_loopback(listener: int) -> None:
    """WAIT_PORT if=lo with a listening port is done at the first attempt."""
    fake = FakeTime()
    _, events = _run(f"WAIT_PORT if=lo {listener}", fake=fake)
    assert fake.sleeps == []
    assert events.records[0]["state"] == "done"
    assert events.records[0]["address"] == "127.0.0.1"


def test_wait_port_waits_for_every_port(listener: int, capfd: pytest.CaptureFixture[str]) -> None:
    """Ports are tried together; a late one is retried every interval until it listens."""
    late = socket.socket()
    late.bind(("127.0.0.1", 0))
    port = late.getsockname()[1]

    def listen_on_second_sleep(sleeps: int) -> None:
        if sleeps == 2:
            late.listen()

    fake = FakeTime(listen_on_second_sleep)
    try:
        _, events = _run(f"WAIT_PORT if=lo {listener} {port}", fake=fake)
    finally:
        late.close()
    assert events.states == ["done"]
    assert fake.sleeps == [1.0, 1.0]
    warning = f"tcp connection to '127.0.0.1:{port}' has not come online"
    out = capfd.readouterr().out
    assert out.count(warning) == 1
    assert f"127.0.0.1:{listener}'" not in out


def test_wait_port_timeout_bounds_the_wait(capfd: pytest.CaptureFixture[str]) -> None:
    """With timeout= a port that never listens is reported, and the launch goes on."""
    port = _free_port()
    began = time.monotonic()
    events = Events()
    env = run_bootstrap(
        [f"WAIT_PORT if=lo timeout=0.3 {port}", "DEFINE_IF_NOT_DEFINED X 1"],
        ENV,
        events=events,
        poll_interval=0.05,
    )
    assert time.monotonic() - began < 2
    assert events.states == ["timed-out", "done"]
    assert events.records[0]["pending"] == [port]
    assert env["X"] == "1"
    out = capfd.readouterr().out
    assert "[ERROR]: " in out
    assert f"127.0.0.1:{port} did not come online in 0.3 s" in out


def test_wait_port_default_interface_is_eth0(listener: int) -> None:
    """Without if= the address of eth0 is asked for."""
    asked: list[str] = []

    def address_of(name: str) -> str:
        asked.append(name)
        return "127.0.0.1"

    _, events = _run(f"WAIT_PORT {listener}", address_of=address_of)
    assert (asked, events.states) == (["eth0"], ["done"])


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.ENODEV, "bootstrap 'WAIT_PORT' unable to fetch interface eth7: No such device"),
        (
            errno.EADDRNOTAVAIL,
            "bootstrap 'WAIT_PORT' unable to read addresses of eth7: "
            "Cannot assign requested address",
        ),
    ],
)
def test_wait_port_interface_errors(
    code: int, message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A missing interface or one without IPv4 fails the instruction, not the launch."""

    def address_of(name: str) -> str:
        raise OSError(code, os.strerror(code))

    _, events = _run("WAIT_PORT if=eth7 80", "SLEEP 1", address_of=address_of)
    assert events.states == ["failed", "done"]
    assert events.records[0]["message"] == message
    assert message in capfd.readouterr().out


def test_get_saves_the_body(tmp_path: Path, http_base: str) -> None:
    """GET writes the body, making missing parent directories 0755."""
    target = tmp_path / "etc" / "app" / "config"
    _, events = _run(f"GET {http_base}/config {target}")
    assert target.read_text() == "port = 8080\n"
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "etc" / "app").stat().st_mode) == 0o755
    assert events.records[0]["state"] == "done"
    assert events.records[0]["status"] == 200


def test_get_error_status_saves_and_warns(
    tmp_path: Path, http_base: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A 404 body is saved as vorteil does, with a warning naming the status."""
    target = tmp_path / "config"
    target.write_text("old content that is longer\n")
    _, events = _run(f"GET {http_base}/missing {target}")
    assert target.read_text() == "not here\n"
    assert (events.states, events.records[0]["status"]) == (["done"], 404)
    assert "[WARNING]: " in (out := capfd.readouterr().out)
    assert f"bootstrap 'GET' {http_base}/missing answered 404" in out


def test_get_unreachable_fails(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A refused connection fails the instruction and creates no file."""
    target = tmp_path / "config"
    _, events = _run(f"GET http://127.0.0.1:{_free_port()}/x {target}", "SLEEP 1")
    assert events.states == ["failed", "done"]
    assert not target.exists()
    assert "can not get url: " in capfd.readouterr().out


def test_get_times_out(tmp_path: Path, http_base: str) -> None:
    """A server that does not answer is given up on after the HTTP timeout (Q13 fixed)."""
    began = time.monotonic()
    _, events = _run(f"GET {http_base}/slow {tmp_path}/x", http_timeout=0.3)
    assert time.monotonic() - began < 1.5
    assert events.states == ["failed"]


def test_find_and_replace(tmp_path: Path) -> None:
    """Every occurrence is replaced, $KEY longest first (Q7), and the file keeps its mode."""
    conf = tmp_path / "app.conf"
    conf.write_text("host=@ name=@\n")
    conf.chmod(0o640)
    _, events = _run(f"FIND_AND_REPLACE file={conf} find=@ replace=$HOSTNAME/$HOST")
    assert conf.read_text() == "host=vm-1/h name=vm-1/h\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert (events.states, events.records[0]["replaced"]) == (["done"], 2)


def test_find_and_replace_with_nothing_deletes(tmp_path: Path) -> None:
    """An empty replace= removes the text."""
    conf = tmp_path / "app.conf"
    conf.write_text("a-DEBUG-b\n")
    _run(f"FIND_AND_REPLACE find=-DEBUG replace= file={conf}")
    assert conf.read_text() == "a-b\n"


def test_find_and_replace_missing_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A missing file is a warning and a failed instruction; the launch goes on."""
    _, events = _run(f"FIND_AND_REPLACE file={tmp_path}/none find=a replace=b", "SLEEP 1")
    assert events.states == ["failed", "done"]
    assert "[WARNING]: " in (out := capfd.readouterr().out)
    assert f"file {tmp_path}/none does not exist to replace text" in out


def test_define_if_not_defined() -> None:
    """A new name is added with $KEY substituted; a defined one is kept; env is not mutated."""
    env, events = _run(
        "DEFINE_IF_NOT_DEFINED URL http://$HOSTNAME:$PORT",
        "DEFINE_IF_NOT_DEFINED PORT 8080",
        "DEFINE_IF_NOT_DEFINED HOST other",
        "DEFINE_IF_NOT_DEFINED LATER $PORT",
    )
    assert env == {**ENV, "URL": "http://vm-1:$PORT", "PORT": "8080", "LATER": "8080"}
    assert [r["defined"] for r in events.records] == [True, True, False, True]
    assert "PORT" not in ENV


def test_define_keeps_every_argument() -> None:
    """Q8 fixed: a defined variable reaches the arguments and none of them is dropped."""
    program = Program(
        binary="/bin/echo",
        args="--port $PORT --host $HOSTNAME -v",
        bootstrap=("DEFINE_IF_NOT_DEFINED PORT 8080",),
    )
    spec = prepare(0, program, ENV)
    env = run_bootstrap(spec.bootstrap, spec.env)
    assert spec.with_env(env).argv == ("/bin/echo", "--port", "8080", "--host", "vm-1", "-v")


def test_malformed_and_unknown_instructions_are_skipped(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Instructions that do not parse fail with the grammar's message; later ones still run."""
    _, events = _run("WAIT_PORT", "REBOOT now", "", "SLEEP 1")
    assert events.states == ["failed", "failed", "failed", "done"]
    out = capfd.readouterr().out
    assert "malformed WAIT_PORT instruction" in out
    assert "unknown bootstrap command 'REBOOT'" in out


def test_unexpected_errors_fail_only_the_instruction(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An OS error inside an instruction is logged once; the launch goes on."""
    conf = tmp_path / "dir"
    conf.mkdir()
    _, events = _run(f"FIND_AND_REPLACE file={conf} find=a replace=b", "SLEEP 1")
    assert events.states == ["failed", "done"]
    assert events.records[0]["error"] == "IsADirectoryError"
    assert "[ERROR]: " in capfd.readouterr().out


def test_event_sequence(tmp_path: Path, listener: int) -> None:
    """Each instruction emits one event with the program index, its step and its text."""
    ready = tmp_path / "ready"
    ready.write_text("")
    texts = ["SLEEP 1", f"WAIT_FILE {ready}", f"WAIT_PORT if=lo {listener}", "BAD"]
    _, events = _run(*texts)
    assert [(r["index"], r["step"], r["instruction"], r["state"]) for r in events.records] == [
        (3, 0, texts[0], "done"),
        (3, 1, texts[1], "done"),
        (3, 2, texts[2], "done"),
        (3, 3, texts[3], "failed"),
    ]


def test_bootstrap_in_background_delivers_the_spec(tmp_path: Path) -> None:
    """The thread runs the instructions, then hands over the spec with the new environment."""
    ready = tmp_path / "ready"
    spec = LaunchSpec(
        index=1,
        path="/bin/echo",
        args=("$PORT",),
        env={"A": "1"},
        bootstrap=(f"WAIT_FILE {ready}", "DEFINE_IF_NOT_DEFINED PORT 80"),
    )
    delivered: list[LaunchSpec] = []
    events = Events()
    thread = bootstrap_in_background(spec, delivered.append, events=events, poll_interval=0.02)
    time.sleep(0.1)
    assert delivered == []
    ready.write_text("")
    thread.join(timeout=5)
    assert [d.argv for d in delivered] == [("/bin/echo", "80")]
    assert events.states == ["done", "done"]
    assert thread.name == "bootstrap-1"


def test_poll_interval_default_is_one_second() -> None:
    """vorteil checks files and ports once a second and warns every 30 checks."""
    assert (bootstrap_run.POLL_INTERVAL, bootstrap_run.WARN_EVERY) == (1.0, 30)
