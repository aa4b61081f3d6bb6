"""CpioWriter against the real cpio tool: names, modes, symlinks, contents, padding."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from imagekit.cpio import MAGIC, TRAILER, CpioWriter

MTIME = 1_700_000_000


@pytest.fixture(scope="module")
def cpio_tool() -> str:
    found = shutil.which("cpio")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cpio is missing (apt-get install cpio)")
        pytest.skip("cpio is not installed")
    return found


def _sample() -> bytes:
    writer = CpioWriter(mtime=MTIME)
    writer.add_directory("bin")
    writer.add_file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
    writer.add_symlink("bin/sh", "tool")
    writer.add_directory("/etc", mode=0o700)
    writer.add_file("etc/empty", b"", mode=0o600, uid=1000, gid=1000)
    writer.add_file("etc/odd-length-name", b"x" * 5, mtime=12345)
    writer.add_symlink("etc/abs", "/bin/tool")
    writer.add_device("dev-console", kind=stat.S_IFCHR, major=5, minor=1)
    return writer.finish()


def _members(archive: bytes) -> list[tuple[str, dict[str, int]]]:
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize")
    members = []
    offset = 0
    while True:
        assert offset % 4 == 0
        assert archive[offset : offset + 6] == MAGIC
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        namesize = fields[11]
        name_start = offset + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        assert archive[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        members.append((name, dict(zip(names, fields, strict=False))))
        if name == TRAILER:
            return members
        offset = (data_start + fields[6] + 3) & ~3


def test_listing_matches_cpio_tool(cpio_tool: str) -> None:
    """cpio -it lists every member in the order it was added."""
    listing = subprocess.run(
        [cpio_tool, "-it", "--quiet"], input=_sample(), capture_output=True, check=True
    ).stdout.decode()
    assert listing.splitlines() == [
        "bin",
        "bin/tool",
        "bin/sh",
        "etc",
        "etc/empty",
        "etc/odd-length-name",
        "etc/abs",
        "dev-console",
    ]


def test_verbose_listing_shows_modes_owners_and_device(cpio_tool: str) -> None:
    """cpio -itv shows the given modes, owners, symlink targets and the device numbers."""
    listing = subprocess.run(
        [cpio_tool, "-itv", "--quiet", "--numeric-uid-gid"],
        input=_sample(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    lines = {line.split(" -> ")[0].split()[-1]: line for line in listing.splitlines()}
    assert lines["bin"].startswith("drwxr-xr-x")
    assert lines["bin/tool"].startswith("-rwxr-xr-x")
    assert lines["etc"].startswith("drwx------")
    assert lines["etc/empty"].split()[:4] == ["-rw-------", "1", "1000", "1000"]
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and lines["bin/sh"].endswith("-> tool")
    assert lines["dev-console"].startswith("crw-------")
    assert "5,   1" in lines["dev-console"]


def test_extraction_gives_contents_modes_links_and_mtimes(cpio_tool: str, tmp_path: Path) -> None:
    """cpio -idm recreates the files, modes, symlink targets and modification times."""
    writer = CpioWriter(mtime=MTIME)
    writer.add_directory("bin")
    writer.add_file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
    writer.add_symlink("bin/sh", "tool")
    writer.add_directory("etc", mode=0o750)
    writer.add_file("etc/empty", b"", mode=0o600)
    writer.add_file("etc/odd-length-name", b"x" * 5, mtime=12345)
    subprocess.run(
        [cpio_tool, "-idm", "--quiet", "--no-absolute-filenames"],
        input=writer.finish(),
        cwd=tmp_path,
        check=True,
    )
    tool = tmp_path / "bin" / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert int(tool.stat().st_mtime) == MTIME
    assert os.readlink(tmp_path / "bin" / "sh") == "tool"
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o750
    assert (tmp_path / "etc" / "empty").read_bytes() == b""
    assert stat.S_IMODE((tmp_path / "etc" / "empty").stat().st_mode) == 0o600
    odd = tmp_path / "etc" / "odd-length-name"
    assert odd.read_bytes() == b"xxxxx"
    assert int(odd.stat().st_mtime) == 12345


@pytest.mark.parametrize("name_length", range(1, 9))
@pytest.mark.parametrize("data_length", range(6))
def test_padding_round_trips(
    cpio_tool: str, tmp_path: Path, name_length: int, data_length: int
) -> None:
    """Every name and data length pads to 4 bytes so that cpio reads back the exact bytes."""
    data = bytes(range(data_length))
    writer = CpioWriter()
    writer.add_file("n" * name_length, data)
    writer.add_file("after", b"tail")
    archive = writer.finish()
    assert len(archive) % 4 == 0
    subprocess.run([cpio_tool, "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / ("n" * name_length)).read_bytes() == data
    assert (tmp_path / "after").read_bytes() == b"tail"


def test_headers_are_aligned_with_sequential_inodes_and_trailer() -> None:
    """Headers start on 4-byte boundaries, inodes count from 1 and the trailer comes last."""
    members = _members(_sample())
    assert [fields["ino"] for _, fields in members[:-1]] == list(range(1, len(members)))
    trailer_name, trailer = members[-1]
    assert trailer_name == TRAILER
    assert (trailer["ino"], trailer["mode"], trailer["nlink"], trailer["filesize"]) == (0, 0, 1, 0)
    directories = [fields["nlink"] for name, fields in members if name in ("bin", "etc")]
    assert directories == [2, 2]


def test_output_is_deterministic() -> None:
    """The same calls give the same bytes."""
    assert _sample() == _sample()


@pytest.mark.parametrize(
    ("existing", "name", "message"),
    [
        (("a",), "a", "duplicate member"),
        ((), "a/b", "comes before its directory"),
        ((), "..", "bad member name"),
        ((), "a//b", "bad member name"),
        ((), "/", "bad member name"),
    ],
)
def test_bad_names_are_refused(existing: tuple[str, ...], name: str, message: str) -> None:
    """Duplicates, members before their directory, empty and dot-dot names raise ValueError."""
    writer = CpioWriter()
    for directory in existing:
        writer.add_directory(directory)
    with pytest.raises(ValueError, match=message):
        writer.add_file(name, b"")


def test_finished_archive_takes_no_more_members() -> None:
    """Adding after finish() raises ValueError and finish() stays idempotent."""
    writer = CpioWriter()
    writer.add_file("a", b"1")
    archive = writer.finish()
    with pytest.raises(ValueError, match="finished"):
        writer.add_file("b", b"2")
    assert writer.finish() == archive
