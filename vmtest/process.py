"""Starting QEMU as a child process that cannot outlive its owner.

The child asks the kernel for SIGKILL when its parent goes away (``PR_SET_PDEATHSIG``), so a
test runner that crashes or is killed leaves no VM behind. The kernel sends that signal when
the *thread* that started the child ends: start VMs from a thread that lives as long as they
do (the main thread, in tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

QEMU = "qemu-system-x86_64"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL when the parent thread ends."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)  # no exec without the guarantee: an orphan VM could run forever


def spawn(
    argv: Sequence[str], *, stdout: Path | int, stderr: Path | int
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdin closed; stdout and stderr go to files (or descriptors)."""
    with contextlib.ExitStack() as files:
        out: IO[bytes] | int = (
            files.enter_context(stdout.open("wb")) if isinstance(stdout, Path) else stdout
        )
        err: IO[bytes] | int = (
            files.enter_context(stderr.open("wb")) if isinstance(stderr, Path) else stderr
        )
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=die_with_parent,  # one prctl call between fork and exec
            close_fds=True,
        )


def signal_name(returncode: int) -> str:
    """``SIGKILL`` for -9; the status itself for a normal exit."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
