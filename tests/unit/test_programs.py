"""Preparing and starting programs: environment, argv, path resolution, strace, stdio, errors."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from vinitd import programs
from vinitd.capabilities import SUPERUSER_CAPABILITIES
from vinitd.programs import (
    VTTY,
    CloudProvider,
    Credentials,
    Hypervisor,
    HypervisorValues,
    LaunchError,
    LaunchSpec,
    base_environment,
    prepare,
    program_environment,
)
from vinitd.vcfg.model import Privilege, Program, TerminateSignal

BASE = {"HOSTNAME": "vm-1", "HOST": "h", "IP0": "10.0.0.5"}


@pytest.mark.parametrize(
    ("values", "env"),
    [
        (
            HypervisorValues(),
            {"HYPERVISOR": "UNKNOWN", "CLOUD_PROVIDER": "UNKNOWN", "ETH_COUNT": "0"},
        ),
        (
            HypervisorValues(
                hypervisor=Hypervisor.KVM,
                cloud_provider=CloudProvider.NONE,
                hostname="vm-1",
                ips=("10.0.0.5", "192.168.1.2"),
            ),
            {
                "HYPERVISOR": "KVM",
                "CLOUD_PROVIDER": "NONE",
                "ETH_COUNT": "2",
                "HOSTNAME": "vm-1",
                "EXT_HOSTNAME": "vm-1",
                "IP0": "10.0.0.5",
                "EXT_IP0": "10.0.0.5",
                "IP1": "192.168.1.2",
                "EXT_IP1": "192.168.1.2",
            },
        ),
        (
            HypervisorValues(
                hypervisor=Hypervisor.KVM,
                cloud_provider=CloudProvider.EC2,
                hostname="vm-1",
                ext_hostname="ec2-1.example",
                ips=("10.0.0.5", ""),
                ext_ips=("203.0.113.7",),
                cloud={"CLOUD_REGION": "eu-west-1", "USERDATA": '{"a": "b"}'},
            ),
            {
                "HYPERVISOR": "KVM",
                "CLOUD_PROVIDER": "EC2",
                "ETH_COUNT": "2",
                "HOSTNAME": "vm-1",
                "EXT_HOSTNAME": "ec2-1.example",
                "IP0": "10.0.0.5",
                "EXT_IP0": "203.0.113.7",
                "CLOUD_REGION": "eu-west-1",
                "USERDATA": '{"a": "b"}',
            },
        ),
    ],
    ids=["unknown", "kvm-two-nics", "ec2-metadata"],
)
def test_base_environment(values: HypervisorValues, env: dict[str, str]) -> None:
    """Hypervisor variables: external ones default to the own values, empty ones are left out."""
    assert base_environment(values) == env


@pytest.mark.parametrize(
    ("entries", "env"),
    [
        ((), BASE),
        (("PATH=/bin:/usr/bin",), {**BASE, "PATH": "/bin:/usr/bin"}),
        (("URL=http://$HOSTNAME:${PORT}",), {**BASE, "URL": "http://vm-1:"}),
        (("A=1", "B=$A-2", "A=3"), {**BASE, "A": "3", "B": "1-2"}),
        (("HOSTNAME=app",), {**BASE, "HOSTNAME": "app"}),
        (("NOEQUALS", "EMPTY=", "UNSET=$NOPE", "BAD='x"), BASE),
        (("Q=\"a  b\" 'c'",), {**BASE, "Q": "a  b c"}),
    ],
    ids=["none", "path", "expand", "last-wins", "override", "dropped", "quotes"],
)
def test_program_environment(entries: tuple[str, ...], env: Mapping[str, str]) -> None:
    """Program env entries are shell-word processed in order over the base; the last wins."""
    assert program_environment(entries, BASE) == env


@pytest.mark.parametrize(
    ("binary", "args", "argv"),
    [
        ("/bin/true", "", ("/bin/true",)),
        ("", "/bin/echo a b", ("/bin/echo", "a", "b")),
        ("/bin/echo", "'a b' \"c\"", ("/bin/echo", "a b", "c")),
        ("/bin/echo", "--name=$HOSTNAME --host $HOST", ("/bin/echo", "--name=vm-1", "--host", "h")),
        ("/bin/echo", "$HOSTNAMEx ${HOST} $$HOST", ("/bin/echo", "vm-1x", "${HOST}", "$h")),
        ("/bin/echo", "'$IP0' \\$IP0", ("/bin/echo", "10.0.0.5", "10.0.0.5")),
        ("/bin/echo", "$UNKNOWN", ("/bin/echo", "$UNKNOWN")),
        ("/bin/echo", "a ; rm -rf /", ("/bin/echo", "a")),
    ],
    ids=["binary", "args-only", "quoting", "q7-longest", "no-braces", "quoted", "unknown", "cut"],
)
def test_argv(binary: str, args: str, argv: tuple[str, ...]) -> None:
    """argv is binary plus args; $KEY after word 0 is replaced, longest key first (Q7)."""
    spec = prepare(0, Program(binary=binary, args=args), BASE)
    assert spec.argv == argv


def test_word_zero_is_not_substituted(tmp_path: Path) -> None:
    """The program name is resolved as written, without $KEY substitution."""
    (tmp_path / "$HOST").write_text("")
    spec = prepare(0, Program(args="$HOST $HOST", cwd=str(tmp_path)), BASE)
    assert spec.argv == (str(tmp_path / "$HOST"), "h")


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (Program(), "no program binary or args defined"),
        (Program(args="   "), "no program binary or args defined"),
        (Program(binary="/bin/echo", args="'open"), "error parsing arg: unterminated single"),
        (Program(binary="/bin/echo", args="a (b)"), "error parsing arg: unquoted '('"),
        (Program(binary="no-such-app"), "program no-such-app can not be found"),
    ],
    ids=["empty", "blank", "quote", "paren", "not-found"],
)
def test_prepare_errors(program: Program, message: str) -> None:
    """Unusable binary/args fail the launch with vorteil's messages."""
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        prepare(0, program, BASE)


def test_resolution_order(tmp_path: Path) -> None:
    """Absolute names stay as they are; else cwd, then each raw PATH directory in order."""
    for directory in ("cwd", "first", "second", "$LITERAL"):
        (tmp_path / directory).mkdir()
    for place in ("cwd/here", "first/app", "second/app", "second/only", "$LITERAL/raw"):
        (tmp_path / place).write_text("")
    path = f"PATH={tmp_path}/first:{tmp_path}/second:{tmp_path}/$LITERAL"
    env = (path, "LITERAL=never-expanded")
    cwd = str(tmp_path / "cwd")

    def resolved(name: str) -> str:
        return prepare(0, Program(binary=name, cwd=cwd, env=env), {}).path

    assert resolved("/does/not/exist") == "/does/not/exist"
    assert resolved("here") == f"{cwd}/here"
    assert resolved("./here") == f"{cwd}/here"
    assert resolved("app") == f"{tmp_path}/first/app"
    assert resolved("only") == f"{tmp_path}/second/only"
    assert resolved("raw") == f"{tmp_path}/$LITERAL/raw"


def test_empty_cwd_means_root() -> None:
    """Without cwd a relative name is looked up under / and the program starts in /."""
    spec = prepare(0, Program(binary="bin/sh"), {})
    assert (spec.path, spec.cwd) == ("/bin/sh", "/")


def test_strace_prefers_the_image_strace(tmp_path: Path) -> None:
    """strace = true runs the first strace found, with the resolved program as argument 1."""
    vorteil = tmp_path / "vorteil-strace"
    vorteil.write_text("")
    program = Program(binary="/bin/echo", args="$HOST", strace=True)
    paths = (str(tmp_path / "usr-bin-strace"), str(vorteil))
    spec = prepare(0, program, BASE, strace_paths=paths)
    assert spec.argv == (str(vorteil), "/bin/echo", "h")
    (tmp_path / "usr-bin-strace").write_text("")
    spec = prepare(0, program, BASE, strace_paths=paths)
    assert spec.argv == (paths[0], "/bin/echo", "h")


def test_strace_missing_is_a_clear_error(tmp_path: Path) -> None:
    """strace = true in an image without strace fails the launch and says so."""
    program = Program(binary="/bin/true", strace=True)
    with pytest.raises(LaunchError, match="strace requested but not in the image"):
        prepare(0, program, {}, strace_paths=(str(tmp_path / "a"), str(tmp_path / "b")))


@pytest.mark.parametrize(
    ("privilege", "credentials"),
    [
        (None, Credentials(0, 0)),
        (Privilege.ROOT, Credentials(0, 0)),
        (Privilege.USER, Credentials(1000, 1000)),
        (
            Privilege.SUPERUSER,
            Credentials(1000, 1000, SUPERUSER_CAPABILITIES),
        ),
    ],
)
def test_credentials(privilege: Privilege | None, credentials: Credentials) -> None:
    """user and superuser run as 1000:1000; only superuser keeps capabilities."""
    spec = prepare(0, Program(binary="/bin/true", privilege=privilege), {})
    assert spec.credentials == credentials


@pytest.mark.parametrize(
    ("terminate", "signum"),
    [
        (None, signal.SIGTERM),
        (TerminateSignal.SIGINT, signal.SIGINT),
        (TerminateSignal.SIGPWR, signal.SIGPWR),
        (TerminateSignal.SIGKILL, signal.SIGKILL),
    ],
)
def test_terminate_signal(terminate: TerminateSignal | None, signum: signal.Signals) -> None:
    """The terminate signal defaults to SIGTERM."""
    spec = prepare(0, Program(binary="/bin/true", terminate=terminate), {})
    assert spec.terminate is signum


def test_with_env_substitutes_again_from_the_raw_args() -> None:
    """A changed environment re-substitutes the raw args once; values are not re-expanded."""
    spec = prepare(0, Program(binary="/bin/echo", args="--port $PORT -v"), {"A": "$PORT"})
    assert spec.argv == ("/bin/echo", "--port", "$PORT", "-v")
    later = spec.with_env({**spec.env, "PORT": "8080"})
    assert later.argv == ("/bin/echo", "--port", "8080", "-v")
    assert spec.with_env({"PORT": "$A", "A": "x"}).argv == ("/bin/echo", "--port", "$A", "-v")


def _spec(
    path: str, *args: str, cwd: str = "/", stdout: str = VTTY, stderr: str = VTTY
) -> LaunchSpec:
    return LaunchSpec(0, path, args, {}, cwd=cwd, stdout=stdout, stderr=stderr)


def _finish(process: subprocess.Popen[bytes]) -> int:
    return process.wait(timeout=10)


def test_environment_is_not_inherited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process sees exactly its spec's environment, none of vinitd's."""
    monkeypatch.setenv("VINITD_OWN", "leak")
    out = tmp_path / "env.txt"
    spec = LaunchSpec(index=0, path="/usr/bin/env", args=(), env={"A": "1"}, stdout=str(out))
    assert _finish(programs.start(spec)) == 0
    assert out.read_text() == "A=1\n"


def test_stdio_files_and_directories_get_sane_modes(tmp_path: Path) -> None:
    """Missing parents are made 0755, new stdout and stderr files 0644 (Q10 fixed)."""
    old = os.umask(0o077)
    try:
        out = tmp_path / "logs" / "app" / "out.log"
        err = tmp_path / "errs" / "err.log"
        spec = _spec("/bin/sh", "-c", "echo out; echo err >&2", stdout=str(out), stderr=str(err))
        assert _finish(programs.start(spec)) == 0
    finally:
        os.umask(old)
    assert (out.read_text(), err.read_text()) == ("out\n", "err\n")
    for directory in (tmp_path / "logs", tmp_path / "logs" / "app", tmp_path / "errs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    for file in (out, err):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644


def test_existing_stdio_file_is_appended_and_keeps_its_mode(tmp_path: Path) -> None:
    """An existing stdout file is appended to and keeps its mode; both streams can share it."""
    log = tmp_path / "app.log"
    log.write_text("before\n")
    log.chmod(0o600)
    spec = _spec("/bin/sh", "-c", "echo out; echo err >&2", stdout=str(log), stderr=str(log))
    assert _finish(programs.start(spec)) == 0
    assert log.read_text() == "before\nout\nerr\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_vtty_is_the_console_sink() -> None:
    """/dev/vtty means the descriptor the caller passes; stdin is /dev/null."""
    read_fd, write_fd = os.pipe()
    spec = _spec("/bin/sh", "-c", "cat; echo out; echo err >&2", stdout=VTTY, stderr=VTTY)
    try:
        process = programs.start(spec, console_fd=write_fd)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as console:
        text = console.read()
    assert _finish(process) == 0
    assert text == "out\nerr\n"


def test_cwd_and_argv0(tmp_path: Path) -> None:
    """The program runs in its cwd, and argv[0] is the resolved absolute path."""
    out = tmp_path / "out.txt"
    spec = prepare(0, Program(binary="sh", args="-c 'pwd; echo $0'", env=("PATH=/bin",)), {})
    spec = replace(spec, cwd=str(tmp_path), stdout=str(out))
    assert _finish(programs.start(spec)) == 0
    assert out.read_text() == f"{tmp_path}\n/bin/sh\n"


def test_missing_application(tmp_path: Path) -> None:
    """A binary that does not exist: '<path> application missing'."""
    missing = str(tmp_path / "app")
    with pytest.raises(LaunchError, match=f"^{missing} application missing$"):
        programs.start(_spec(missing))


def test_missing_interpreter(tmp_path: Path) -> None:
    """A binary whose interpreter does not exist: 'ld linker missing for <path>'."""
    app = tmp_path / "app"
    app.write_text("#!/lib/ld-missing.so\n")
    app.chmod(0o755)
    with pytest.raises(LaunchError, match=f"^ld linker missing for {app}$"):
        programs.start(_spec(str(app)))


def test_missing_cwd(tmp_path: Path) -> None:
    """A cwd that does not exist is named as such, not blamed on the binary."""
    cwd = str(tmp_path / "gone")
    with pytest.raises(LaunchError, match=f"working directory {cwd} missing"):
        programs.start(_spec("/bin/true", cwd=cwd))


def test_not_executable(tmp_path: Path) -> None:
    """Other exec errors are passed on verbatim with the path."""
    app = tmp_path / "app"
    app.write_text("data")
    app.chmod(0o644)  # no x bit at all: not even root may execute it
    with pytest.raises(LaunchError, match=f"^{app}: Permission denied$"):
        programs.start(_spec(str(app)))


def test_unopenable_stdout(tmp_path: Path) -> None:
    """A stdout path that cannot be opened fails the launch with the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LaunchError, match=f"can not open {blocker}/out"):
        programs.start(_spec("/bin/true", stdout=f"{blocker}/out"))
