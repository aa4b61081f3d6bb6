"""The guest Python runtime tree: layout, completeness, bytecode, pruning, caching, reproducibility.

The build tests download the runtime's .debs (~15 MB) once into the default build cache. Runtime
trees are built in per-test cache roots that borrow the unpacked packages from that cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import platform
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from imagekit import debian, runtime
from imagekit.cache import BuildCache
from imagekit.debian import Package
from imagekit.errors import EnvironmentFailure
from imagekit.runtime import Runtime

TOOLS = ("apt-cache", "apt-get", "dpkg-deb")
STDLIB = "usr/lib/python3.11"
LIBDIR = "usr/lib/x86_64-linux-gnu"

# Paths the pruning must remove, and paths it must keep, in a built tree.
ABSENT = (
    "etc",
    "usr/share/man",
    "usr/share/locale",
    "usr/lib/binfmt.d",
    f"{STDLIB}/test",
    f"{STDLIB}/idlelib",
    f"{STDLIB}/tkinter",
    f"{STDLIB}/turtledemo",
    f"{STDLIB}/ensurepip",
    f"{STDLIB}/lib2to3",
    f"{STDLIB}/pydoc_data",
    f"{STDLIB}/curses",
    f"{STDLIB}/sitecustomize.py",
    f"{STDLIB}/lib-dynload/_curses.cpython-311-x86_64-linux-gnu.so",
    f"{STDLIB}/lib-dynload/_dbm.cpython-311-x86_64-linux-gnu.so",
    f"{STDLIB}/lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
    f"{LIBDIR}/gconv/IBM1047.so",
    f"{LIBDIR}/libmvec.so.1",
    f"{LIBDIR}/engines-3",
)
PRESENT = (
    f"{STDLIB}/_sysconfigdata__x86_64-linux-gnu.py",
    f"{STDLIB}/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    f"{STDLIB}/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
    f"{LIBDIR}/gconv/UTF-16.so",
    f"{LIBDIR}/libgcc_s.so.1",
    "usr/share/doc/libc6/copyright",
)


def _require_debian_host() -> None:
    reasons = [f"{tool} is missing" for tool in TOOLS if shutil.which(tool) is None]
    if platform.machine() != "x86_64":
        reasons.append(f"the guest interpreter runs on x86_64 hosts, not {platform.machine()}")
    if reasons and os.environ.get("CI") == "true":
        pytest.fail("; ".join(reasons))
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.fixture(scope="module")
def debs() -> Iterator[BuildCache]:
    """The default build cache, which keeps the downloaded and unpacked packages."""
    _require_debian_host()
    with BuildCache() as cache:
        yield cache


@pytest.fixture(scope="module")
def resolved() -> dict[str, Package]:
    """Each runtime package resolved once, so that repeated builds skip apt-cache."""
    _require_debian_host()
    return {entry.name: debian.resolve(entry.name) for entry in runtime.PACKAGES}


@pytest.fixture(scope="module")
def fresh_build(debs: BuildCache, resolved: dict[str, Package]) -> Callable[[Path], Runtime]:
    """Build a runtime in a new cache root, borrowing the unpacked packages from ``debs``."""
    real_unpacked = debian.unpacked

    def build(root: Path) -> Runtime:
        with pytest.MonkeyPatch.context() as patch, BuildCache(root) as cache:
            patch.setattr(debian, "resolve", resolved.__getitem__)
            patch.setattr(debian, "unpacked", lambda package, _: real_unpacked(package, debs))
            return runtime.build_runtime(cache)

    return build


@pytest.fixture(scope="module")
def built(
    fresh_build: Callable[[Path], Runtime], tmp_path_factory: pytest.TempPathFactory
) -> Runtime:
    """One runtime tree shared by the read-only tests."""
    return fresh_build(tmp_path_factory.mktemp("runtime-cache"))


def _entries(tree: Path) -> list[PurePosixPath]:
    found = []
    for root, directories, files in os.walk(tree):
        for name in [*directories, *files]:
            found.append(PurePosixPath((Path(root) / name).relative_to(tree).as_posix()))
    return sorted(found)


def _digest(tree: Path) -> str:
    digest = hashlib.sha256()
    for relative in _entries(tree):
        path = tree / relative
        info = path.lstat()
        digest.update(f"{relative}\0{info.st_mode:o}\0{info.st_mtime_ns}\0".encode())
        if path.is_symlink():
            digest.update(f"-> {path.readlink()}\0".encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_merged_maps_top_level_directories_under_usr() -> None:
    """Package paths in /lib, /lib64, /bin and /sbin land under usr/; others stay put."""
    assert runtime.merged(PurePosixPath("lib/x86_64-linux-gnu/libc.so.6")) == PurePosixPath(
        "usr/lib/x86_64-linux-gnu/libc.so.6"
    )
    assert runtime.merged(PurePosixPath("lib64/ld.so")) == PurePosixPath("usr/lib64/ld.so")
    assert runtime.merged(PurePosixPath("usr/bin/x")) == PurePosixPath("usr/bin/x")
    assert runtime.merged(PurePosixPath("etc/x")) == PurePosixPath("etc/x")


def test_absolute_link_becomes_relative_inside_the_tree() -> None:
    """libc6's /lib64 loader link is rewritten to point into usr/lib from usr/lib64."""
    target = runtime._relative_target(
        PurePosixPath("usr/lib64/ld-linux-x86-64.so.2"),
        Path("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    )
    assert target == "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def test_relative_link_is_kept() -> None:
    """A relative link such as libz.so.1 -> libz.so.1.2.13 is copied as it is."""
    link = PurePosixPath("usr/lib/x86_64-linux-gnu/libz.so.1")
    assert runtime._relative_target(link, Path("libz.so.1.2.13")) == "libz.so.1.2.13"


@pytest.mark.parametrize(
    ("relative", "pruned"),
    [
        ("usr/share/man/man1/python3.11.1.gz", True),
        ("usr/share/doc/libc6/copyright", False),
        ("usr/share/doc/libc6/changelog.gz", True),
        (f"{LIBDIR}/gconv/IBM1047.so", True),
        (f"{LIBDIR}/gconv/UTF-16.so", False),
        (f"{STDLIB}/ctypes/test/test_pep3118.py", True),
        (f"{STDLIB}/test/support/__init__.py", True),
        (f"{STDLIB}/json/__init__.py", False),
        (f"{STDLIB}/lib-dynload/readline.cpython-311-x86_64-linux-gnu.so", True),
        (f"{STDLIB}/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", False),
        (f"{STDLIB}/config-3.11-x86_64-linux-gnu/Makefile", True),
        (f"{STDLIB}/_sysconfigdata__x86_64-linux-gnu.py", False),
        ("etc/python3.11/sitecustomize.py", True),
    ],
)
def test_pruned_by_applies_the_tables(relative: str, pruned: bool) -> None:
    """The prune table removes docs, tests and unneeded modules; KEPT rescues its exceptions."""
    assert (runtime.pruned_by(relative) is not None) == pruned


def test_dropped_extensions_need_packages_the_runtime_leaves_out() -> None:
    """No extension is dropped for a library whose package the runtime ships anyway."""
    shipped = {entry.name for entry in runtime.PACKAGES}
    assert all(dropped.needs not in shipped for dropped in runtime.DROPPED_EXTENSIONS)


def test_upstream_version_from_debian_version() -> None:
    """The Python version is the Debian version without revision and epoch."""
    assert runtime._upstream_version("3.11.2-6+deb12u9") == "3.11.2"
    assert runtime._upstream_version("1:3.11.2-6") == "3.11.2"


def test_tree_is_merged_usr(built: Runtime) -> None:
    """Top-level bin, lib, lib64 and sbin link into usr/, where every real file lives."""
    tree = built.tree
    assert sorted(path.name for path in tree.iterdir()) == ["bin", "lib", "lib64", "sbin", "usr"]
    for name in runtime.MERGED_DIRS:
        assert (tree / name).readlink() == Path(f"usr/{name}")
        assert (tree / "usr" / name).is_dir()
    assert (tree / "usr/bin/python3").readlink() == Path("python3.11")
    assert (tree / "usr/bin/python3.11").is_file()
    assert (tree / "usr/lib64/ld-linux-x86-64.so.2").resolve().is_file()
    for relative in _entries(tree):
        path = tree / relative
        if not path.is_symlink() and not path.is_dir():
            assert relative.parts[0] == "usr", relative


def test_every_symlink_resolves_inside_the_tree(built: Runtime) -> None:
    """No link is absolute, escapes the tree or dangles."""
    root = built.tree.resolve()
    links = [built.tree / r for r in _entries(built.tree) if (built.tree / r).is_symlink()]
    assert len(links) > 10
    for link in links:
        assert not link.readlink().is_absolute(), link
        assert link.resolve().is_relative_to(root), link
        assert link.resolve().exists(), link


def test_smoke_test_passes(built: Runtime) -> None:
    """The tree's interpreter imports socket, ssl, ctypes, asyncio and the rest on the host."""
    runtime.smoke_test(built)
    assert built.python_version.startswith("3.11.")
    assert [p.name for p in built.packages] == [entry.name for entry in runtime.PACKAGES]


def test_smoke_test_names_the_module_that_fails(built: Runtime, tmp_path: Path) -> None:
    """Without _ssl the smoke test fails with a message naming the ssl import."""
    broken = tmp_path / "tree"
    shutil.copytree(built.tree, broken, symlinks=True)
    for extension in (broken / STDLIB / "lib-dynload").glob("_ssl.*.so"):
        extension.unlink()
    with pytest.raises(EnvironmentFailure, match="import ssl: ModuleNotFoundError"):
        runtime.smoke_test(Runtime(broken, built.python_version, built.packages, 0))


def test_needed_reads_the_interpreters_libraries(built: Runtime) -> None:
    """The ELF reader finds the four libraries Debian's python3.11 links."""
    needed = runtime._needed(built.tree / "usr/bin/python3.11")
    assert sorted(needed) == ["libc.so.6", "libexpat.so.1", "libm.so.6", "libz.so.1"]
    assert runtime._needed(built.tree / STDLIB / "os.py") == ()


def test_missing_library_fails_the_build(built: Runtime, tmp_path: Path) -> None:
    """An extension whose library is not shipped stops the build and is named."""
    broken = tmp_path / "tree"
    shutil.copytree(built.tree, broken, symlinks=True)
    for library in (broken / LIBDIR).glob("libsqlite3.so*"):
        library.unlink()
    with pytest.raises(EnvironmentFailure, match=r"_sqlite3\.cpython.* needs libsqlite3\.so\.0"):
        runtime._check_libraries(broken)


def test_stdlib_bytecode_is_unchecked_hash_with_guest_paths(built: Runtime) -> None:
    """Every stdlib module has an unchecked-hash .pyc whose co_filename is the guest path."""
    stdlib = built.tree / STDLIB
    sources = sorted(stdlib.rglob("*.py"))
    assert len(sources) > 400
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        data = cached.read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER, cached
        assert int.from_bytes(data[4:8], "little") == 0b01, cached
        code = marshal.loads(data[16:])
        assert code.co_filename == f"/{source.relative_to(built.tree).as_posix()}"


def test_pruned_paths_are_absent(built: Runtime) -> None:
    """Docs, tests, GUI modules, unused charsets and dropped extensions are not in the tree."""
    for relative in ABSENT:
        assert not (built.tree / relative).exists(), relative
    for relative in PRESENT:
        assert (built.tree / relative).exists(), relative
    for entry in _entries(built.tree):
        path = built.tree / entry
        if (path.is_dir() and not path.is_symlink()) or "__pycache__" in entry.parts:
            continue
        assert runtime.pruned_by(str(entry)) is None, entry


def test_tree_is_readable_by_all(built: Runtime) -> None:
    """Directories are 0755 and files world-readable, whatever the build's umask."""
    for relative in _entries(built.tree):
        mode = (built.tree / relative).lstat().st_mode
        if stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o755, relative
        elif stat.S_ISREG(mode):
            assert mode & 0o444 == 0o444, relative


def test_second_build_hits_the_cache(debs: BuildCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm build resolves versions with apt-cache but never downloads or unpacks."""
    first = runtime.build_runtime(debs)

    def refuse(*_: object) -> Path:
        raise AssertionError("a warm build must not fetch or unpack packages")

    monkeypatch.setattr(debian, "fetch", refuse)
    monkeypatch.setattr(debian, "unpacked", refuse)
    started = time.monotonic()
    second = runtime.build_runtime(debs)
    elapsed = time.monotonic() - started
    assert second == first
    assert elapsed < 60, f"warm build took {elapsed:.1f} s"


def test_fresh_builds_are_byte_identical(
    fresh_build: Callable[[Path], Runtime], built: Runtime, tmp_path: Path
) -> None:
    """Two builds in new cache roots agree on every path, mode, mtime, link and byte."""
    again = fresh_build(tmp_path / "cache")
    assert again.tree != built.tree
    assert again.size_bytes == built.size_bytes
    assert _digest(again.tree) == _digest(built.tree)


def test_guest_interpreter_compiles_when_the_host_python_differs(
    fresh_build: Callable[[Path], Runtime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With another host Python the tree's own interpreter writes the bytecode."""
    monkeypatch.setattr(runtime, "_host_can_compile", lambda _: False)
    guest_built = fresh_build(tmp_path / "cache")
    pyc = guest_built.tree / STDLIB / "__pycache__" / "socket.cpython-311.pyc"
    data = pyc.read_bytes()
    assert int.from_bytes(data[4:8], "little") == 0b01
    assert marshal.loads(data[16:]).co_filename == f"/{STDLIB}/socket.py"
