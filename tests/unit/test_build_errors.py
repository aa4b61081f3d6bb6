"""imagekit build on bad input or a failing machine: one clear message, nothing left behind.

Bad input exits with status 2, a machine that lacks something (a tool, disk space) with 1.
Either way stderr holds no traceback, and the output directory holds nothing new: no image,
no partial image, no work directory.
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from imagetools import (
    HELLO,
    build,
    built_hello,
    imagekit,
    write_project,
)

from imagekit import tools
from imagekit.errors import EnvironmentFailure, ToolFailed
from imagekit.rootfs import FilesystemFull, FilesystemSpec, StagedTree, make_filesystem

HELLO_VCFG = (HELLO / "default.vcfg").read_text()
FILE_SIZE_LIMIT = 8 << 20  # far below the image's size
# Runs the CLI with tools found only on PATH: imagekit also looks in /usr/sbin and /sbin.
WITHOUT_SBIN = (
    "import sys\n"
    "from imagekit import tools\n"
    "tools._sbin = lambda tool: None\n"
    "from imagekit.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="session")
def warm_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Builds that must fail late need a warm cache, so nothing is downloaded on the way."""
    built_hello(request.config, tmp_path_factory)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory for the output; it must still be empty after a failed build."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def assert_one_error(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """One ``imagekit:`` message (its detail lines indented), an optional hint, no traceback."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("imagekit: "), result.stderr
    rest = [line for line in lines[1:] if not line.startswith("  ")]
    assert len(rest) <= 1 and all(line.startswith("hint: ") for line in rest), lines
    for needle in needles:
        assert needle in result.stderr
    return result.stderr


def assert_nothing_left(out: Path) -> None:
    assert sorted(path.name for path in out.iterdir()) == []


def test_missing_project_directory(out: Path, tmp_path: Path) -> None:
    """A project directory that does not exist is named in the message."""
    missing = tmp_path / "no-such-project"
    result = imagekit("build", str(missing), "-o", str(out / "x.raw"))
    assert_one_error(result, 2, str(missing), "no such project directory")
    assert_nothing_left(out)


def test_invalid_vcfg(out: Path, tmp_path: Path) -> None:
    """A VCFG with a wrong type names the file and the field."""
    project = write_project(tmp_path / "p", "[[program]]\nbinary = 5\n")
    result = imagekit("build", str(project), "-o", str(out / "x.raw"))
    assert_one_error(result, 2, "invalid VCFG", "default.vcfg", "program[0].binary")
    assert_nothing_left(out)


def test_program_binary_not_in_the_tree(out: Path, tmp_path: Path) -> None:
    """A program whose binary is not in the image fails before the image is written."""
    project = write_project(tmp_path / "p", '[[program]]\nbinary = "/bin/nope"\n')
    result = imagekit("build", str(project), "-o", str(out / "x.raw"))
    assert_one_error(result, 2, "program[0]", "'/bin/nope' is not in the image")
    assert_nothing_left(out)


def test_disk_size_too_small(out: Path, tmp_path: Path) -> None:
    """An absolute vm.disk-size smaller than the content is refused."""
    vcfg = HELLO_VCFG + '\n[vm]\ndisk-size = "16 MiB"\n'
    project = write_project(tmp_path / "p", vcfg, {"hello.py": "print('hi')\n"})
    result = imagekit("build", str(project), "-o", str(out / "x.raw"))
    assert_one_error(result, 2, "vm.disk-size 16 MiB is too small")
    assert_nothing_left(out)


def test_kernel_directory_without_a_kernel(out: Path, tmp_path: Path) -> None:
    """--kernel DIR with neither a bzImage nor modules says what it expected."""
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    result = imagekit("build", str(HELLO), "-o", str(out / "x.raw"), "--kernel", str(kernel))
    assert_one_error(result, 2, str(kernel), "has no kernel image")
    assert_nothing_left(out)


def test_kernel_directory_without_modules(out: Path, tmp_path: Path) -> None:
    """--kernel DIR with a bzImage but no lib/modules/<release> is refused."""
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    setup = bytearray(0x400)
    setup[0x202:0x206] = b"HdrS"
    (kernel / "bzImage").write_bytes(bytes(setup))
    result = imagekit("build", str(HELLO), "-o", str(out / "x.raw"), "--kernel", str(kernel))
    assert_one_error(result, 2, "has no modules", "lib/modules/<release>/")
    assert_nothing_left(out)


def test_existing_output_needs_force(out: Path) -> None:
    """An existing output is kept unless --force is given."""
    output = out / "x.raw"
    output.write_bytes(b"keep me")
    result = imagekit("build", str(HELLO), "-o", str(output))
    assert_one_error(result, 2, f"{output} exists", "--force")
    assert output.read_bytes() == b"keep me"
    assert sorted(path.name for path in out.iterdir()) == ["x.raw"]


@pytest.mark.usefixtures("warm_cache")
def test_force_replaces_existing_output(out: Path) -> None:
    """--force replaces an existing output with the new image."""
    output = out / "x.raw"
    output.write_bytes(b"old")
    build(HELLO, output, "--force")
    assert output.stat().st_size > 1 << 20
    assert sorted(path.name for path in out.iterdir()) == ["x.raw"]


def _path_without(tool_names: set[str], directory: Path) -> str:
    """A PATH of one directory linking every program of the usual PATH but ``tool_names``."""
    directory.mkdir()
    for source in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not Path(source).is_dir():
            continue
        for program in Path(source).iterdir():
            link = directory / program.name
            if program.name not in tool_names and not link.exists():
                link.symlink_to(program)
    return str(directory)


@pytest.mark.usefixtures("warm_cache")
def test_missing_tool(out: Path, tmp_path: Path) -> None:
    """Without mke2fs the build stops with exit status 1 and names the Debian package."""
    path = _path_without({"mke2fs", "mkfs.ext2", "mkfs.ext3", "mkfs.ext4"}, tmp_path / "bin")
    result = imagekit(
        "build", str(HELLO), "-o", str(out / "x.raw"), env={"PATH": path}, launcher=WITHOUT_SBIN
    )
    assert_one_error(result, 1, "required tool not found: mke2fs", "apt-get install e2fsprogs")
    assert_nothing_left(out)


def test_require_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`require` fails for a tool on neither PATH nor /usr/sbin, with a hint naming its package."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tools, "_sbin", lambda tool: None)
    with pytest.raises(EnvironmentFailure) as caught:
        tools.require("mke2fs")
    assert caught.value.message == "required tool not found: mke2fs"
    assert caught.value.hint == "install it with: apt-get install e2fsprogs"
    assert caught.value.exit_status == 1


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.usefixtures("warm_cache")
def test_full_disk(out: Path) -> None:
    """Writing the image fails (EFBIG under a file size limit): one line, exit 1, no leftovers."""
    result = imagekit("build", str(HELLO), "-o", str(out / "x.raw"), preexec_fn=_limit_file_size)
    assert_one_error(result, 1, f"cannot build {out / 'x.raw'}", "File too large", "ulimit -f")
    assert_nothing_left(out)


def _fake_mke2fs(directory: Path, message: str) -> None:
    directory.mkdir()
    script = directory / "mke2fs"
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    script.chmod(0o755)


@pytest.mark.parametrize(
    ("message", "full"),
    [
        ("mke2fs: Could not allocate block in ext2 filesystem while populating file system", True),
        ("mke2fs: Could not allocate inode in ext2 filesystem while populating file system", True),
        ("ext2fs_flush: No space left on device while writing out and closing file system", False),
    ],
)
def test_full_filesystem_is_told_from_a_full_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, message: str, full: bool
) -> None:
    """Only mke2fs running out of room inside the new filesystem means "make it bigger"."""
    if shutil.which("fakeroot") is None:
        pytest.skip("fakeroot is not installed")
    fake = tmp_path / "bin"
    _fake_mke2fs(fake, message)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    stage = tmp_path / "root"
    stage.mkdir()
    state = tmp_path / "state"
    state.write_text("")
    spec = FilesystemSpec("ext4", 8 << 20, 64, "00000000-0000-4000-8000-000000000000")
    expected: type[Exception] = FilesystemFull if full else ToolFailed
    with pytest.raises(expected):
        make_filesystem(StagedTree(stage), state, tmp_path / "image", offset=0, spec=spec)
