"""imagekit build of examples/hello, cold and warm, and what the image is made of.

- cold: a fresh, empty build cache (XDG_CACHE_HOME in a temporary directory), except that
  the Debian .deb files already in the default cache are linked into it, so the run does
  not download ~80 MB. Everything after the download happens: apt-cache lookups, dpkg-deb
  unpacking, depmod, assembling and byte-compiling the Python runtime, the vinitd tree, the
  initramfs, staging and writing the image. Without .debs in the default cache, the cold
  run downloads them too, and the table says so.
- warm: the same cache right after the cold build, median of 3 builds.
- baseline, measured in the same run so the ratio means something on a shared machine:
  bare ``mke2fs -d`` of the same staged root tree into a plain file of the same filesystem
  size (median of 3), and ``cp`` of the finished image (median of 3).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from imagekit import config
from imagekit.cache import BuildCache, default_root
from imagekit.guest import build_guest
from imagekit.image import BuildRequest, BuildResult, PartSizes, build
from imagekit.rootfs import stage_root, work_directory
from imagekit.runtime import build_runtime
from imagekit.tools import require

HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"
WARM_RUNS = 3
MIB = 1 << 20


@contextlib.contextmanager
def _cache_home(path: Path) -> Iterator[None]:
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


def _downloaded_debs(trees: Path) -> list[tuple[str, Path]]:
    """(cache key, .deb) of every download in a cache: a tree holding one .deb and nothing else."""
    found: list[tuple[str, Path]] = []
    if not trees.is_dir():
        return found
    for tree in sorted(path for path in trees.iterdir() if path.is_dir()):
        entries = list(tree.iterdir())
        if len(entries) == 1 and entries[0].suffix == ".deb" and entries[0].is_file():
            found.append((tree.name, entries[0]))
    return found


def _seed_debs(cache: BuildCache, debs: list[tuple[str, Path]]) -> None:
    for key, deb in debs:

        def link(work: Path, deb: Path = deb) -> None:
            try:
                os.link(deb, work / deb.name)
            except OSError:
                shutil.copy2(deb, work / deb.name)

        cache.tree(key, link)


def _timed(func: Callable[[], object]) -> float:
    started = time.monotonic()
    func()
    return time.monotonic() - started


def _build(cache: BuildCache, output: Path) -> tuple[float, BuildResult]:
    """Seconds taken by one build of examples/hello, and its result."""
    request = BuildRequest(spec=str(HELLO), output=output, force=True)
    started = time.monotonic()
    result = build(request, cache=cache, progress=lambda _step: None)
    return time.monotonic() - started, result


def _mke2fs_seconds(cache: BuildCache, work: Path, fs_bytes: int) -> float:
    """Median time of a bare ``mke2fs -d`` of the staged tree, without imagekit around it."""
    resolved = config.resolve(str(HELLO))
    if resolved.project is None or resolved.target is None:
        raise RuntimeError(f"{HELLO} is not a project")
    files = list(resolved.project.files(resolved.target))
    stage = work_directory(work / "stage")
    staged = stage_root(
        stage, runtime=build_runtime(cache).tree, guest=build_guest(cache), app_files=files
    )
    target = work / "baseline.ext4"
    argv = [
        require("mke2fs"),
        "-q",
        "-F",
        "-t", "ext4",
        "-b", "4096",
        "-m", "0",
        "-d", str(staged.path),
        str(target),
        f"{fs_bytes // 1024}k",
    ]  # fmt: skip

    def once() -> None:
        target.unlink(missing_ok=True)
        subprocess.run(argv, check=True, capture_output=True)

    return statistics.median(_timed(once) for _ in range(WARM_RUNS))


def _cp_seconds(image: Path, work: Path) -> float:
    copy = work / "copy.raw"

    def once() -> None:
        copy.unlink(missing_ok=True)
        subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)

    return statistics.median(_timed(once) for _ in range(WARM_RUNS))


def _print_parts(parts: PartSizes) -> None:
    overhead = parts.filesystem - parts.runtime - parts.app
    rest = parts.total - parts.kernel - parts.initramfs - parts.filesystem
    rows = [
        ("kernel (bzImage)", parts.kernel),
        ("initramfs", parts.initramfs),
        ("runtime (Python)", parts.runtime),
        ("application", parts.app),
        ("filesystem overhead", overhead),
        ("GPT, config, padding", rest),
        ("total", parts.total),
    ]
    print()
    print(f"{'part':<24}{'MiB':>8}{'share':>8}")
    for name, size in rows:
        print(f"{name:<24}{size / MIB:>8.1f}{size / parts.total:>8.0%}")
    print("(filesystem overhead: vinitd's files, metadata, journal and free space)")


def main() -> None:
    debs = _downloaded_debs(default_root() / "trees")
    with tempfile.TemporaryDirectory(prefix="bench-build-") as temp:
        work = Path(temp)
        with _cache_home(work / "cache"), BuildCache() as cache:
            _seed_debs(cache, debs)
            output = work / "hello.raw"
            cold, _ = _build(cache, output)
            warm_runs = [_build(cache, output) for _ in range(WARM_RUNS)]
            warm = statistics.median(seconds for seconds, _ in warm_runs)
            result = warm_runs[-1][1]
            mke2fs = _mke2fs_seconds(cache, work, result.parts.filesystem)
            copy = _cp_seconds(output, work)

    cold_name = "cold build, .debs reused" if debs else "cold build, with downloads"
    rows = [
        (cold_name, cold),
        (f"warm build (median of {WARM_RUNS})", warm),
        ("baseline: mke2fs -d", mke2fs),
        ("baseline: cp of the image", copy),
    ]
    print(f"{'run':<30}{'seconds':>9}{'x mke2fs -d':>13}")
    for name, seconds in rows:
        print(f"{name:<30}{seconds:>9.2f}{seconds / mke2fs:>13.1f}")
    _print_parts(result.parts)
