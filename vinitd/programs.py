"""Preparing a program for launch: argv, environment, binary, credentials and stdio.

Follows vinitd spec §10.3 and §10.5, with these fixes: stdout/stderr files and directories get
sane modes (0644/0755, not 0000), a custom stderr file need not exist beforehand, and
``$KEY`` substitution replaces the longest keys first.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vinitd import shellwords
from vinitd.errors import VinitdError
from vinitd.vcfg.model import Privilege, Program, TerminateSignal

VTTY = "/dev/vtty"
APP_UID = 1000


class LaunchError(VinitdError):
    """A program cannot be started; the boot stops (vorteil: ``starting program failed``)."""


@dataclass(frozen=True)
class LaunchSpec:
    index: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stdout: str
    stderr: str
    uid: int | None
    terminate: signal.Signals


def prepare(index: int, program: Program, base_env: Mapping[str, str]) -> LaunchSpec:
    """Resolve everything about ``program`` that can fail before it starts."""
    processed = shellwords.expand_env(program.env, base_env)
    env = {**base_env, **dict(processed)}
    try:
        words = ([program.binary] if program.binary else []) + shellwords.split(program.args)
    except VinitdError as err:
        raise LaunchError(f"error parsing arg: {err}") from None
    if not words:
        raise LaunchError("no program binary or args defined")
    args = [shellwords.substitute(word, env) for word in words[1:]]
    binary = resolve_binary(words[0], program.cwd or "/", _raw_path(program))
    uid = APP_UID if program.privilege in (Privilege.USER, Privilege.SUPERUSER) else None
    return LaunchSpec(
        index=index,
        argv=(binary, *args),
        env=env,
        cwd=program.cwd or "/",
        stdout=program.stdout or VTTY,
        stderr=program.stderr or VTTY,
        uid=uid,
        terminate=signal.Signals[(program.terminate or TerminateSignal.SIGTERM).value],
    )


def _raw_path(program: Program) -> str:
    """The program's own PATH entry as written (vorteil searches it unexpanded)."""
    found = ""
    for entry in program.env:
        key, _, value = entry.partition("=")
        if key == "PATH":
            found = value
    return found


def resolve_binary(name: str, cwd: str, path: str) -> str:
    """An absolute name as it is; else ``<cwd>/<name>``; else each directory of PATH."""
    if name.startswith("/"):
        if Path(name).exists():
            return name
        raise LaunchError(f"program {name} can not be found")
    candidates = [Path(cwd) / name]
    if "/" not in name:
        candidates += [Path(d) / name for d in path.split(":") if d]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate.absolute())
    raise LaunchError(f"program {name} can not be found")


def _stdio(path: str, console_fd: int) -> int:
    if path == VTTY:
        return console_fd
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def start(spec: LaunchSpec, *, console_fd: int = 1) -> subprocess.Popen[bytes]:
    """Start the program; errors name what is missing (binary or its ELF interpreter)."""
    stdout = _stdio(spec.stdout, console_fd)
    stderr = _stdio(spec.stderr, console_fd)
    try:
        return subprocess.Popen(
            spec.argv,
            executable=spec.argv[0],
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            user=spec.uid,
            group=spec.uid,
            extra_groups=[] if spec.uid is not None else None,
        )
    except FileNotFoundError:
        if Path(spec.argv[0]).exists():
            raise LaunchError(f"ld linker missing for {spec.argv[0]}") from None
        raise LaunchError(f"{spec.argv[0]} application missing") from None
    except OSError as err:
        raise LaunchError(f"{spec.argv[0]}: {err.strerror}") from None
    finally:
        for fd in (stdout, stderr):
            if fd != console_fd:
                os.close(fd)
