"""Preparing and starting a program: environment, argv, binary, credentials and stdio.

Follows vinitd spec §10.1, §10.3 and §10.5. `prepare` does everything that can fail before
the bootstrap instructions run (vinitd.bootstrap_run), `start` forks and executes. Deliberate
differences from vorteil:

* hypervisor values go into the environment as they are; vorteil parsed them as shell words
  too, which stripped the quotes out of JSON user data. Program ``env`` entries are processed
  as vorteil does (`shellwords.expand_env`);
* ``$KEY`` substitution in the arguments replaces the longest key first (quirk Q7) and runs
  once, with the environment as the bootstrap instructions left it, so a variable added by
  DEFINE_IF_NOT_DEFINED reaches the arguments and no argument is dropped (quirk Q8);
* stdout/stderr files are created 0644 and missing directories 0755 (vorteil: 0000), and a
  custom stderr file need not exist beforehand (quirk Q10);
* ``strace = true`` runs /usr/bin/strace when the image has it, else /vorteil/strace; an image
  with neither fails at prepare time with a message that says so;
* a name that cannot be resolved fails with one message (vorteil also logged an ERROR line
  ``application <name> () does not exist`` before failing the same way).
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vinitd import capabilities, console, shellwords
from vinitd.capabilities import SUPERUSER_CAPABILITIES, Capability
from vinitd.errors import VinitdError
from vinitd.vcfg.model import Privilege, Program, TerminateSignal

VTTY = "/dev/vtty"
APP_UID = 1000
STRACE_PATHS = ("/usr/bin/strace", "/vorteil/strace")
DIRECTORY_MODE = 0o755
FILE_MODE = 0o644


class LaunchError(VinitdError):
    """A program cannot be started; the boot stops (vorteil: ``starting program failed``)."""


class Hypervisor(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    KVM = "KVM"
    VMWARE = "VMWARE"
    HYPERV = "HYPERV"
    VIRTUALBOX = "VIRTUALBOX"
    XEN = "XEN"


class CloudProvider(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    NONE = "NONE"
    GCP = "GCP"
    AZURE = "AZURE"
    EC2 = "EC2"


@dataclass(frozen=True)
class HypervisorValues:
    """What vinitd learnt about the machine, for every program's environment (spec §10.1).

    ``ips`` holds the IPv4 address of eth0, eth1, ... in order ("" for one without), and
    ``ext_ips`` the public addresses from cloud metadata by the same index ("" or missing
    means the interface's own address). ``cloud`` carries USERDATA, the user-data keys,
    CLOUD_REGION and CLOUD_INSTANCE_ID.
    """

    hypervisor: Hypervisor = Hypervisor.UNKNOWN
    cloud_provider: CloudProvider = CloudProvider.UNKNOWN
    hostname: str = ""
    ext_hostname: str = ""
    ips: tuple[str, ...] = ()
    ext_ips: tuple[str, ...] = ()
    cloud: Mapping[str, str] = field(default_factory=dict)


def base_environment(values: HypervisorValues) -> dict[str, str]:
    """The hypervisor variables; empty values are left out, as vorteil drops them.

    vinitd's own environment is not inherited, and no PATH or HOME is added.
    """
    env = {
        "HYPERVISOR": str(values.hypervisor),
        "CLOUD_PROVIDER": str(values.cloud_provider),
        "ETH_COUNT": str(len(values.ips)),
        "HOSTNAME": values.hostname,
        "EXT_HOSTNAME": values.ext_hostname or values.hostname,
    }
    for number, ip in enumerate(values.ips):
        public = values.ext_ips[number] if number < len(values.ext_ips) else ""
        env[f"IP{number}"] = ip
        env[f"EXT_IP{number}"] = public or ip
    env.update(values.cloud)
    return {key: value for key, value in env.items() if value}


def program_environment(entries: Sequence[str], base: Mapping[str, str]) -> dict[str, str]:
    """``base``, then the program's ``KEY=VALUE`` entries processed in order; the last wins."""
    return {**base, **dict(shellwords.expand_env(entries, base))}


@dataclass(frozen=True)
class Credentials:
    """Who a program runs as; only ``superuser`` keeps capabilities (as ambient ones)."""

    uid: int = 0
    gid: int = 0
    ambient: tuple[Capability, ...] = ()

    @classmethod
    def for_privilege(cls, privilege: Privilege | None) -> Credentials:
        if privilege is Privilege.SUPERUSER:
            return cls(APP_UID, APP_UID, SUPERUSER_CAPABILITIES)
        if privilege is Privilege.USER:
            return cls(APP_UID, APP_UID)
        return cls()


@dataclass(frozen=True)
class LaunchSpec:
    """A program ready to start once its bootstrap instructions have run.

    ``args`` are the words after the program name before ``$KEY`` substitution; `argv`
    substitutes them with ``env`` as it is, so `with_env` after the bootstrap is all it takes.
    """

    index: int
    path: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str = "/"
    stdout: str = VTTY
    stderr: str = VTTY
    credentials: Credentials = field(default_factory=Credentials)
    terminate: signal.Signals = signal.SIGTERM
    bootstrap: tuple[str, ...] = ()
    strace: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """What the process gets: argv[0] is the resolved path (or strace, then the path)."""
        args = tuple(shellwords.substitute(arg, self.env) for arg in self.args)
        if self.strace is not None:
            return (self.strace, self.path, *args)
        return (self.path, *args)

    def with_env(self, env: Mapping[str, str]) -> LaunchSpec:
        return replace(self, env=dict(env))


def prepare(
    index: int,
    program: Program,
    base_env: Mapping[str, str],
    *,
    strace_paths: Sequence[str] = STRACE_PATHS,
) -> LaunchSpec:
    """Resolve everything about ``program`` that can fail before its bootstrap runs."""
    env = program_environment(program.env, base_env)
    try:
        words = ([program.binary] if program.binary else []) + shellwords.split(program.args)
    except VinitdError as err:
        raise LaunchError(f"error parsing arg: {err}") from err
    if not words:
        raise LaunchError("no program binary or args defined")
    cwd = program.cwd or "/"
    path = resolve_binary(words[0], cwd, raw_path(program.env))
    console.log_level("DEBUG", f"launching {path}")
    return LaunchSpec(
        index=index,
        path=path,
        args=tuple(words[1:]),
        env=env,
        cwd=cwd,
        stdout=program.stdout or VTTY,
        stderr=program.stderr or VTTY,
        credentials=Credentials.for_privilege(program.privilege),
        terminate=signal.Signals[(program.terminate or TerminateSignal.SIGTERM).value],
        bootstrap=program.bootstrap,
        strace=find_strace(strace_paths) if program.strace else None,
    )


def raw_path(entries: Sequence[str]) -> str:
    """The program's own PATH entry as written: vorteil searches it unexpanded."""
    found = ""
    for entry in entries:
        key, _, value = entry.partition("=")
        if key == "PATH":
            found = value
    return found


def resolve_binary(name: str, cwd: str, path: str) -> str:
    """An absolute name as it is; else ``<cwd>/<name>``; else the first PATH directory with it.

    An absolute name is not checked here: a missing one fails at start with
    ``<path> application missing``, as in vorteil.
    """
    if name.startswith("/"):
        return name
    candidates = [Path(cwd, name)] + [Path(d, name) for d in path.split(":") if d]
    for candidate in candidates:
        if candidate.exists():
            return os.path.normpath(candidate.absolute())
    raise LaunchError(f"program {name} can not be found")


def find_strace(paths: Sequence[str] = STRACE_PATHS) -> str:
    for candidate in paths:
        if Path(candidate).exists():
            return candidate
    raise LaunchError(f"strace requested but not in the image (looked for {', '.join(paths)})")


def make_parents(target: Path) -> None:
    """``mkdir -p`` the parent of ``target``, each new directory mode 0755 whatever the umask."""
    missing: list[Path] = []
    parent = target.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            continue  # another program's stdio or bootstrap made it meanwhile
        directory.chmod(DIRECTORY_MODE)


def open_stdio(path: str, console_fd: int) -> int:
    """The descriptor for a program's stdout or stderr; ``/dev/vtty`` is the console sink.

    A new file is created 0644 whatever the umask; an existing one keeps its mode and is
    appended to.
    """
    if path == VTTY:
        return console_fd
    target = Path(path)
    try:
        make_parents(target)
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            fd = os.open(target, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return os.open(target, flags)
        os.fchmod(fd, FILE_MODE)
        return fd
    except OSError as err:
        raise LaunchError(f"can not open {path}: {err.strerror}") from err


def start(spec: LaunchSpec, *, console_fd: int = 1) -> subprocess.Popen[bytes]:
    """Start the program; errors name what is missing (binary, its ELF interpreter, cwd).

    ``user`` programs switch uid and gid inside subprocess's C code between fork and exec.
    ``superuser`` programs need work between the uid change and exec (the ambient set is
    cleared by the change), so they use ``preexec_fn``, which runs Python in the forked child.
    That is unsafe in a threaded process when the child needs a lock another thread held at
    fork time; vinitd runs bootstrap threads, so the child is kept to what cannot block:
    `capabilities.drop_to` builds its structures and binds its C functions in the parent, and
    the child only calls ``prctl``/``capset`` through them and ``os.setgroups``,
    ``os.setresgid``, ``os.setresuid``. It takes no Python-level lock (no logging, imports or
    file objects); CPython re-creates the GIL and import lock after fork, and the C library's
    fork handlers keep ``malloc`` usable.
    """
    argv = spec.argv
    credentials = spec.credentials
    console.log_level("DEBUG", f"launch args {list(argv)}")
    console.log_level("DEBUG", f"launch envs {[f'{k}={v}' for k, v in spec.env.items()]}")
    superuser = " (superuser)" if credentials.ambient else ""
    console.log_level("DEBUG", f"starting as uid {credentials.uid}{superuser}")
    stderr = open_stdio(spec.stderr, console_fd)
    try:
        stdout = open_stdio(spec.stdout, console_fd)
    except LaunchError:
        _close_stdio(stderr, console_fd)
        raise
    become: Callable[[], None] | None = None
    uid: int | None = None
    if credentials.ambient:
        become = capabilities.drop_to(credentials.uid, credentials.gid, credentials.ambient)
    elif credentials.uid or credentials.gid:
        uid = credentials.uid
    try:
        process = subprocess.Popen(
            argv,
            executable=argv[0],
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            user=uid,
            group=credentials.gid if uid is not None else None,
            extra_groups=None if become is not None else [],
            preexec_fn=become,
        )
    except FileNotFoundError as err:
        if err.filename == spec.cwd:
            raise LaunchError(f"working directory {spec.cwd} missing for {argv[0]}") from err
        if Path(argv[0]).exists():
            raise LaunchError(f"ld linker missing for {argv[0]}") from err
        raise LaunchError(f"{argv[0]} application missing") from err
    except OSError as err:
        raise LaunchError(f"{argv[0]}: {err.strerror}") from err
    except subprocess.SubprocessError as err:
        raise LaunchError(
            f"{argv[0]}: can not become uid {credentials.uid} with capabilities: {err}"
        ) from err
    finally:
        _close_stdio(stdout, console_fd)
        _close_stdio(stderr, console_fd)
    console.log_level("DEBUG", f"started {argv[0]} as pid {process.pid}")
    return process


def _close_stdio(fd: int, console_fd: int) -> None:
    if fd != console_fd:
        os.close(fd)
