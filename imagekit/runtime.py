"""The guest's Python runtime: Debian's interpreter and stdlib as a merged-/usr tree fragment.

The tree is assembled from Debian packages (versions are the archive's, not the build host's),
pruned of what neither an init nor a typical application needs, precompiled to bytecode in
unchecked-hash mode (nothing stats a source file at import) and proven complete by running the
guest interpreter on the build host through the tree's own dynamic loader.

Real files live only under ``usr/``; ``bin``, ``lib``, ``lib64`` and ``sbin`` are links into it.
Every symlink is relative and resolves inside the tree, so the tree works both as a guest root
and in place on the host. Mtimes are all set to the newest mtime found in the packages, so two
builds from the same packages are byte-identical.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import shutil
import struct
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imagekit import debian
from imagekit.cache import BuildCache, key_of
from imagekit.debian import Package
from imagekit.errors import EnvironmentFailure, ToolFailed
from imagekit.tools import run, step

log = logging.getLogger(__name__)

# Bump when the assembly code changes in a way the tables below do not show.
RUNTIME_FORMAT = "1"

PYTHON = "python3.11"
MULTIARCH = "x86_64-linux-gnu"
STDLIB = f"usr/lib/{PYTHON}"
LIBDIR = f"usr/lib/{MULTIARCH}"
LOADER = "usr/lib64/ld-linux-x86-64.so.2"

# Top-level directories that merged-/usr turns into links to their usr/ namesakes.
MERGED_DIRS = ("bin", "lib", "lib64", "sbin")

# Where the guest's loader looks for libraries when there is no ld.so.cache.
LIBRARY_DIRS = (LIBDIR, "usr/lib")

BYTECODE_LEVELS = (0,)


@dataclass(frozen=True)
class RuntimePackage:
    """A Debian package the runtime is made of, and what it brings."""

    name: str
    brings: str


PACKAGES: tuple[RuntimePackage, ...] = (
    RuntimePackage("python3.11-minimal", "the interpreter"),
    RuntimePackage("libpython3.11-minimal", "the core stdlib, _ssl and _hashlib"),
    RuntimePackage("libpython3.11-stdlib", "the rest of the stdlib: json, asyncio, ctypes"),
    RuntimePackage("libc6", "the C library and the dynamic loader"),
    RuntimePackage("libgcc-s1", "unwinding, which glibc loads for thread cancellation"),
    RuntimePackage("libssl3", "ssl and hashlib"),
    RuntimePackage("libexpat1", "pyexpat, which the interpreter links"),
    RuntimePackage("zlib1g", "zlib, which the interpreter links"),
    RuntimePackage("libffi8", "ctypes"),
    RuntimePackage("libbz2-1.0", "bz2"),
    RuntimePackage("liblzma5", "lzma"),
    RuntimePackage("libuuid1", "_uuid, so uuid1() needs no helper program"),
    RuntimePackage("libsqlite3-0", "sqlite3, which pyroute2's NDB imports"),
)


@dataclass(frozen=True)
class Prune:
    """Paths (fnmatch patterns over tree-relative paths, ``*`` spans ``/``) left out."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class DroppedExtension:
    """A stdlib extension module left out, and the package it would have needed."""

    module: str
    needs: str
    reason: str


DROPPED_EXTENSIONS: tuple[DroppedExtension, ...] = (
    DroppedExtension("_curses", "libncursesw6", "terminal UIs; the console is a serial line"),
    DroppedExtension("_curses_panel", "libncursesw6", "terminal UIs"),
    DroppedExtension("readline", "libreadline8", "line editing for an interactive prompt"),
    DroppedExtension("_dbm", "libdb5.3", "Berkeley DB (1.8 MB); dbm falls back to dbm.dumb"),
    DroppedExtension("_crypt", "libcrypt1", "crypt is deprecated and gone in 3.13"),
    DroppedExtension("nis", "libnsl2", "NIS is deprecated and gone in 3.13"),
    DroppedExtension("ossaudiodev", "", "OSS audio; a micro-VM has no sound device"),
    DroppedExtension("_testcapi", "", "CPython's own tests"),
    DroppedExtension("_testbuffer", "", "CPython's own tests"),
    DroppedExtension("_testclinic", "", "CPython's own tests"),
    DroppedExtension("_testimportmultiple", "", "CPython's own tests"),
    DroppedExtension("_testinternalcapi", "", "CPython's own tests"),
    DroppedExtension("_testmultiphase", "", "CPython's own tests"),
    DroppedExtension("_ctypes_test", "", "CPython's own tests"),
    DroppedExtension("_xxtestfuzz", "", "CPython's own tests"),
    DroppedExtension("_xxsubinterpreters", "", "CPython's own tests"),
    DroppedExtension("xxlimited", "", "an example module"),
    DroppedExtension("xxlimited_35", "", "an example module"),
)

PRUNED: tuple[Prune, ...] = (
    Prune("etc", "the image owns /etc; these are ld.so.conf.d and a sitecustomize hook"),
    Prune("usr/share", "documentation, manual pages, translations, lintian and binfmt files"),
    Prune("usr/lib/binfmt.d", "binfmt_misc registration to run .pyc files directly"),
    Prune("*/__pycache__", "bytecode from the packages; the build compiles its own"),
    Prune("*.pyc", "bytecode from the packages; the build compiles its own"),
    Prune("*.a", "static libraries"),
    Prune(f"{STDLIB}/sitecustomize.py", "a link into /etc/python3.11, which is not shipped"),
    Prune(f"{STDLIB}/config-3.11-*", "the build configuration for compiling extensions"),
    Prune(f"{STDLIB}/test", "CPython's test suite"),
    Prune(f"{STDLIB}/*/test", "per-package tests"),
    Prune(f"{STDLIB}/*/tests", "per-package tests"),
    Prune(f"{STDLIB}/*/idle_test", "IDLE's tests"),
    Prune(f"{STDLIB}/idlelib", "the IDLE editor"),
    Prune(f"{STDLIB}/tkinter", "Tk GUIs; there is no display"),
    Prune(f"{STDLIB}/turtle.py", "Tk GUIs; there is no display"),
    Prune(f"{STDLIB}/turtledemo", "Tk GUIs; there is no display"),
    Prune(f"{STDLIB}/ensurepip", "bootstraps pip; images install packages at build time"),
    Prune(f"{STDLIB}/lib2to3", "the Python 2 converter"),
    Prune(f"{STDLIB}/pydoc_data", "help() topics"),
    Prune(f"{STDLIB}/curses", "needs _curses, which is dropped"),
    Prune(f"{STDLIB}/*.rst", "documentation"),
    *(
        Prune(f"{STDLIB}/lib-dynload/{dropped.module}.cpython-*.so", dropped.reason)
        for dropped in DROPPED_EXTENSIONS
    ),
    Prune(f"{LIBDIR}/gconv", "iconv charsets; glibc converts UTF-8 without modules"),
    Prune(f"{LIBDIR}/libmvec.so.*", "vector math for -ffast-math code (1 MB)"),
    Prune(f"{LIBDIR}/libmemusage.so", "profiling preload"),
    Prune(f"{LIBDIR}/libpcprofile.so", "profiling preload"),
    Prune(f"{LIBDIR}/libc_malloc_debug.so.*", "malloc debugging preload"),
    Prune(f"{LIBDIR}/libthread_db.so.*", "for debuggers"),
    Prune(f"{LIBDIR}/libBrokenLocale.so.*", "for programs with broken locale handling"),
    Prune(f"{LIBDIR}/libnss_hesiod.so.*", "Hesiod name service"),
    Prune(f"{LIBDIR}/engines-3", "OpenSSL engines load only through an openssl.cnf"),
    Prune(f"{LIBDIR}/ossl-modules", "OpenSSL providers load only through an openssl.cnf"),
    Prune(f"{LIBDIR}/libexpatw.so*", "wide-character expat; pyexpat uses libexpat"),
)

# Exceptions to PRUNED: licence terms travel with the binaries; UTF-7/16/32 stay available.
KEPT: tuple[str, ...] = (
    "usr/share/doc/*/copyright",
    f"{LIBDIR}/gconv/gconv-modules",
    f"{LIBDIR}/gconv/gconv-modules.cache",
    f"{LIBDIR}/gconv/gconv-modules.d/*",
    f"{LIBDIR}/gconv/UTF-*.so",
    f"{LIBDIR}/gconv/UNICODE.so",
)

# What the smoke test imports: what vinitd needs and what a typical application expects.
SMOKE_IMPORTS: tuple[str, ...] = (
    "socket",
    "json",
    "asyncio",
    "ctypes",
    "ssl",
    "struct",
    "signal",
    "subprocess",
    "hashlib",
    "zlib",
    "uuid",
    "tomllib",
    "ipaddress",
    "http.client",
    "urllib.request",
    "logging",
    "select",
    "fcntl",
    "termios",
    "sqlite3",
    "bz2",
    "lzma",
    "decimal",
    "xml.etree.ElementTree",
)

# Run by the guest interpreter: argv is the expected prefix, then the modules to import.
SMOKE_SCRIPT = textwrap.dedent(
    """\
    import importlib, sys
    prefix, names = sys.argv[1], sys.argv[2:]
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            failures.append(f"import {name}: {type(err).__name__}: {err}")
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").getpid()
    except Exception as err:
        failures.append(f"ctypes.CDLL('libc.so.6'): {type(err).__name__}: {err}")
    for name, module in sorted(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and not origin.startswith(prefix + "/"):
            failures.append(f"{name} was loaded from {origin}, outside {prefix}")
    if failures:
        print("\\n".join(failures))
        sys.exit(1)
    print(sys.version)
    """
)

RUNTIME_HINT = "the runtime's package list (imagekit.runtime.PACKAGES) no longer fits the archive"


@dataclass(frozen=True)
class Runtime:
    """A finished runtime tree in the build cache; treat ``tree`` as read-only."""

    tree: Path
    python_version: str
    packages: tuple[Package, ...]
    size_bytes: int


def build_runtime(cache: BuildCache) -> Runtime:
    """The guest Python runtime tree, built once per set of package versions and tables."""
    # apt-cache rebuilds its package cache in memory on each call where none is kept on disk
    # (Debian's container images), so the lookups run side by side.
    found = debian.resolve_all([entry.name for entry in PACKAGES], cache=cache)
    packages = tuple(found[entry.name] for entry in PACKAGES)
    python_version = _upstream_version(packages[0].version)
    host_compiles = _host_can_compile(python_version)
    compiler = f"host {sys.version}" if host_compiles else "guest"
    key = key_of(
        "runtime",
        RUNTIME_FORMAT,
        *(package.key for package in packages),
        repr((PACKAGES, PRUNED, KEPT, BYTECODE_LEVELS)),
        compiler,
    )

    def build(work: Path) -> None:
        with step(f"runtime: assemble Python {python_version} from {len(packages)} packages"):
            epoch = _assemble(work, packages, cache)
        _check_libraries(work)
        with step("runtime: compile the stdlib to bytecode"):
            _compile(work, host_compiles=host_compiles)
        _check_links(work)
        _normalize(work, epoch)
        smoke_test(Runtime(work, python_version, packages, _size(work)))

    tree = cache.tree(key, build)
    runtime = Runtime(tree, python_version, packages, _size(tree))
    log.info("runtime: Python %s, %.1f MB", python_version, runtime.size_bytes / 1e6)
    return runtime


def hosted_interpreter(tree: Path) -> list[str]:
    """argv that runs the tree's interpreter on the build host through the tree's own loader."""
    root = tree.resolve()
    return [
        str(root / LOADER),
        "--library-path", str(root / LIBDIR),
        str(root / "usr/bin" / PYTHON),
    ]  # fmt: skip


def smoke_test(runtime: Runtime) -> None:
    """Import what an init and a typical app need with the tree's interpreter, or fail."""
    prefix = runtime.tree.resolve() / "usr"
    argv = [
        *hosted_interpreter(runtime.tree),
        "-I", "-B",
        "-c", SMOKE_SCRIPT,
        str(prefix),
        *SMOKE_IMPORTS,
    ]  # fmt: skip
    env = {"PYTHONHOME": str(prefix), "LC_ALL": "C.UTF-8"}
    try:
        output = run(argv, env=env)
    except ToolFailed as err:
        raise EnvironmentFailure(
            f"the guest Python runtime in {runtime.tree} is incomplete:\n{err.output.strip()}",
            hint=RUNTIME_HINT,
        ) from err
    version = output.strip().splitlines()[-1] if output.strip() else ""
    if not version.startswith(runtime.python_version):
        raise EnvironmentFailure(
            f"the guest interpreter in {runtime.tree} reports version {version!r},"
            f" expected {runtime.python_version}"
        )
    log.info("runtime: smoke test passed with Python %s", version)


def pruned_by(relative: str) -> Prune | None:
    """The rule that leaves ``relative`` (a tree path such as ``usr/share/man``) out, if any."""
    if any(fnmatch.fnmatchcase(relative, pattern) for pattern in KEPT):
        return None
    path = PurePosixPath(relative)
    candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    for rule in PRUNED:
        if any(fnmatch.fnmatchcase(candidate, rule.pattern) for candidate in candidates):
            return rule
    return None


def merged(relative: PurePosixPath) -> PurePosixPath:
    """Where a package path lands in the merged-/usr layout (``lib/x`` -> ``usr/lib/x``)."""
    if relative.parts and relative.parts[0] in MERGED_DIRS:
        return PurePosixPath("usr", relative)
    return relative


def _assemble(work: Path, packages: tuple[Package, ...], cache: BuildCache) -> float:
    """Merge the packages into ``work``; return the newest mtime among their regular files."""
    work.chmod(0o755)
    epoch = 0.0
    pruned = 0
    for package in packages:
        source = debian.unpacked(package, cache)
        for entry in _entries(source):
            relative = merged(PurePosixPath(entry.relative_to(source).as_posix()))
            if not entry.is_symlink():
                epoch = max(epoch, entry.lstat().st_mtime)
            if pruned_by(str(relative)) is not None:
                pruned += 1
                continue
            _place(work, entry, relative, package)
    log.debug("runtime: left out %d files", pruned)
    (work / "usr/sbin").mkdir(mode=0o755, parents=True, exist_ok=True)
    (work / "usr/bin/python3").symlink_to(PYTHON)
    for name in MERGED_DIRS:
        (work / name).symlink_to(f"usr/{name}")
    return epoch


def _entries(root: Path) -> list[Path]:
    """Every non-directory under ``root`` (symlinks to directories included), sorted."""
    found: list[Path] = []
    with os.scandir(root) as scan:
        for entry in sorted(scan, key=lambda item: item.name):
            if entry.is_dir(follow_symlinks=False):
                found.extend(_entries(Path(entry.path)))
            else:
                found.append(Path(entry.path))
    return found


def _place(work: Path, source: Path, relative: PurePosixPath, package: Package) -> None:
    destination = work / relative
    destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if destination.is_symlink() or destination.exists():
        if _same(source, destination, relative):
            return
        raise EnvironmentFailure(
            f"{package.name} ships {relative}, which an earlier package ships differently",
            hint=RUNTIME_HINT,
        )
    if source.is_symlink():
        destination.symlink_to(_relative_target(relative, source.readlink()))
    elif source.is_file():
        shutil.copy2(source, destination, follow_symlinks=False)
    else:
        raise EnvironmentFailure(f"{package.name} ships {relative}, which is not a file")


def _same(source: Path, destination: Path, relative: PurePosixPath) -> bool:
    if source.is_symlink() and destination.is_symlink():
        return _relative_target(relative, source.readlink()) == str(destination.readlink())
    if source.is_symlink() or destination.is_symlink():
        return False
    return source.read_bytes() == destination.read_bytes()


def _relative_target(link: PurePosixPath, target: Path) -> str:
    """``target`` of the link at ``link``, made relative and moved into merged-/usr."""
    if not target.is_absolute():
        return str(target)
    landing = merged(PurePosixPath(target.as_posix()).relative_to("/"))
    return posixpath.relpath(f"/{landing}", start=f"/{link.parent}")


def _check_libraries(tree: Path) -> None:
    """Every ELF file's NEEDED libraries are in the tree, where the guest's loader looks."""
    missing: list[str] = []
    for path in _entries(tree / "usr"):
        if path.is_symlink() or not path.is_file():
            continue
        for library in _needed(path):
            if not any((tree / directory / library).exists() for directory in LIBRARY_DIRS):
                missing.append(f"{path.relative_to(tree)} needs {library}")
    if missing:
        raise EnvironmentFailure(
            "the runtime tree lacks shared libraries:\n" + "\n".join(missing),
            hint="add the library's package to PACKAGES or its module to DROPPED_EXTENSIONS",
        )


def _needed(path: Path) -> tuple[str, ...]:
    """The DT_NEEDED names of a 64-bit little-endian ELF file (empty for anything else)."""
    with path.open("rb") as file:
        head = file.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return ()
        data = head + file.read()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        kind, _, offset, vaddr, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if kind == 1:
            loads.append((vaddr, offset, filesz))
        elif kind == 2:
            dynamic = (offset, filesz)
    if dynamic is None:
        return ()
    names: list[int] = []
    strtab = 0
    for position in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, position)
        if tag == 0:
            break
        if tag == 1:
            names.append(value)
        elif tag == 5:
            strtab = value
    base = next(
        (
            offset + strtab - vaddr
            for vaddr, offset, size in loads
            if vaddr <= strtab < vaddr + size
        ),
        None,
    )
    if base is None:
        return ()
    return tuple(data[base + name : data.index(b"\0", base + name)].decode() for name in names)


def _compile(tree: Path, *, host_compiles: bool) -> None:
    """Bytecode for the whole stdlib, reproducible and naming guest paths."""
    interpreter = [sys.executable] if host_compiles else hosted_interpreter(tree)
    levels = [argument for level in BYTECODE_LEVELS for argument in ("-o", str(level))]
    argv = [
        *interpreter,
        "-I", "-B",
        "-m", "compileall",
        "-q", "-f",
        "--invalidation-mode", "unchecked-hash",
        *levels,
        "-d", f"/{STDLIB}",
        str(tree / STDLIB),
    ]  # fmt: skip
    # A fixed hash seed keeps set and dict iteration, and so the marshalled output, stable.
    env = {"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    run(argv, env=env, hint="the stdlib has a file the interpreter cannot compile")


def _check_links(tree: Path) -> None:
    """Every symlink resolves to something inside the tree."""
    root = tree.resolve()
    broken: list[str] = []
    for path in _entries(tree):
        if not path.is_symlink():
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(root) or not resolved.exists():
            broken.append(f"{path.relative_to(tree)} -> {path.readlink()}")
    if broken:
        raise EnvironmentFailure(
            "the runtime tree has links that leave it or dangle:\n" + "\n".join(broken)
        )


def _directories(tree: Path) -> list[Path]:
    return sorted(Path(root) for root, _, _ in os.walk(tree))


def _normalize(tree: Path, epoch: float) -> None:
    """Directories 0755 and one mtime for everything, whatever the umask and the clock."""
    for directory in _directories(tree):
        directory.chmod(0o755)
    for path in [*_entries(tree), *reversed(_directories(tree))]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def _size(tree: Path) -> int:
    return sum(path.lstat().st_size for path in _entries(tree) if not path.is_symlink())


def _upstream_version(debian_version: str) -> str:
    """``3.11.2`` from ``3.11.2-6+deb12u9`` (or ``1:3.11.2-6``)."""
    match = re.match(r"^(?:\d+:)?(\d+\.\d+(?:\.\d+)?)", debian_version)
    if match is None:
        raise EnvironmentFailure(f"cannot read a Python version from {debian_version!r}")
    return match[1]


def _host_can_compile(python_version: str) -> bool:
    """Whether the build host's Python writes bytecode the guest's interpreter reads."""
    major, minor = python_version.split(".")[:2]
    return sys.version_info[:2] == (int(major), int(minor))
