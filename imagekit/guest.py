"""vinitd's own files in the guest: everything under ``/vorteil/``.

    /vorteil/vinitd          the init (a Python script run by the guest's /usr/bin/python3.11)
    /vorteil/lib/vinitd/     the vinitd package, compiled to bytecode
    /vorteil/lib/<dep>/      its pure-Python dependencies, at the versions pinned for the host

These never overwrite the application's files: the application owns every path outside
``/vorteil``. The tree is cached by the content of the sources that went into it.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import logging
import py_compile
import shutil
from pathlib import Path

import vinitd
from imagekit.cache import BuildCache, key_of
from imagekit.errors import EnvironmentFailure

log = logging.getLogger(__name__)

GUEST_PREFIX = "vorteil"
GUEST_LIB = f"/{GUEST_PREFIX}/lib"
INIT_NAME = "vinitd"
GUEST_PYTHON = "/usr/bin/python3.11"
# Pure-Python packages vinitd imports in the guest.
DEPENDENCIES = ("pyroute2", "dnslib")
# -I: ignore the environment and the user site; -S: no site module (faster start, no site-packages).
# The clock is read first, so that vinitd's init event can say when it began, imports included.
LAUNCHER = f"""#!{GUEST_PYTHON} -IS
import time
started = time.monotonic()
import sys
sys.path.insert(0, "{GUEST_LIB}")
from vinitd.main import main
sys.exit(main(started=started))
"""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentFailure(
            f"Python package {name} is not installed on the build host",
            hint="run `make setup` to install the project's dependencies",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sources(name: str) -> list[Path]:
    root = _package_dir(name)
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def build_guest(cache: BuildCache) -> Path:
    """The ``/vorteil`` tree (as ``<tree>/vorteil/...``), built once per source content."""
    digest = hashlib.sha256(LAUNCHER.encode())
    for name in ("vinitd", *DEPENDENCIES):
        root = _package_dir(name)
        for path in _sources(name):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())

    def build(work: Path) -> None:
        lib = work / GUEST_PREFIX / "lib"
        for name in ("vinitd", *DEPENDENCIES):
            root = _package_dir(name)
            for path in _sources(name):
                target = lib / name / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            compileall.compile_dir(
                lib / name,
                quiet=1,
                stripdir=str(lib),
                prependdir=GUEST_LIB,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        launcher = work / GUEST_PREFIX / INIT_NAME
        launcher.write_text(LAUNCHER)
        launcher.chmod(0o755)

    log.debug("guest tree for vinitd %s", Path(vinitd.__file__).parent)
    return cache.tree(key_of("guest", digest.hexdigest()), build)
