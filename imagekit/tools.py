"""Running the external tools imagekit builds with: argv lists, one clear failure each."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from imagekit.errors import EnvironmentFailure, ToolFailed

log = logging.getLogger(__name__)

# Which Debian package brings each tool, for the hint of a missing-tool error.
TOOL_PACKAGES: Mapping[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "fakeroot": "fakeroot",
    "sgdisk": "gdisk",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
}


def require(tool: str) -> str:
    """Return the full path of ``tool`` or fail with a hint naming its Debian package."""
    found = shutil.which(tool) or _sbin(tool)
    if found is None:
        package = TOOL_PACKAGES.get(tool)
        hint = f"install it with: apt-get install {package}" if package else None
        raise EnvironmentFailure(f"required tool not found: {tool}", hint=hint)
    return found


def _sbin(tool: str) -> str | None:
    # Non-root shells often lack /sbin and /usr/sbin on PATH, where e2fsprogs and kmod live.
    for directory in ("/usr/sbin", "/sbin"):
        candidate = Path(directory) / tool
        if candidate.is_file():
            return str(candidate)
    return None


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
    input_bytes: bytes | None = None,
) -> str:
    """Run ``argv`` (its first word resolved with `require`) and return its output.

    A non-zero exit raises ToolFailed with the argv, the exit code and the output's tail.
    """
    resolved = [require(argv[0]), *argv[1:]]
    log.debug("running %s", " ".join(resolved))
    completed = subprocess.run(
        resolved,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=input_bytes,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = completed.stdout.decode(errors="replace")
    if completed.returncode != 0:
        raise ToolFailed(resolved, completed.returncode, output, hint=hint)
    return output


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log a build step with its duration."""
    started = time.monotonic()
    log.info("%s ...", name)
    try:
        yield
    finally:
        log.info("%s: %.2f s", name, time.monotonic() - started)
