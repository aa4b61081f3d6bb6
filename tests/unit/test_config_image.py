"""imagekit config get and config set on a built examples/hello image.

The image is built once per test run; every test that changes an image changes its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from imagetools import built_hello

from imagekit import binaries, config, imagefile
from imagekit.cmdline import kernel_command_line
from imagekit.errors import EnvironmentFailure
from imagekit.tools import require
from vinitd import layout
from vinitd.vcfg import codec
from vinitd.vcfg.model import VCFG

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
TOOLS = ("mke2fs", "e2fsck", "debugfs", "dumpe2fs", "fakeroot", "sgdisk", "qemu-img")
LONG_ARGS = " ".join(f"opt{number}=1" for number in range(40))  # > 256 bytes of command line


def require_tools() -> None:
    for tool in TOOLS:
        try:
            require(tool)
        except EnvironmentFailure as err:
            pytest.skip(f"{err.message} ({err.hint})")


@pytest.fixture(scope="session")
def hello_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello, built once per test run for every test module that needs it."""
    return built_hello(request.config, tmp_path_factory).path


@pytest.fixture
def image(hello_image: Path, tmp_path: Path) -> Path:
    """A private copy of the session image."""
    copy = tmp_path / "hello.raw"
    shutil.copyfile(hello_image, copy)
    return copy


def imagekit(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit.cli", *args],
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=300,
    )


def vcfg_file(directory: Path, text: str, name: str = "extra.vcfg") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def resolved(*extra: Path) -> VCFG:
    return config.resolve(str(HELLO), extra).vcfg


def stored(path: Path) -> tuple[layout.ConfigBlock, bytes]:
    with path.open("rb") as handle:
        return layout.read_config_block(handle), layout.read_vcfg_json(handle)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_disk_clean(path: Path) -> None:
    with path.open("rb") as handle:
        offset = imagefile.read_layout(handle, source=str(path)).root_offset
    fsck = subprocess.run(
        [require("e2fsck"), "-fn", f"{path}?offset={offset}"], capture_output=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    verify = subprocess.run([require("sgdisk"), "-v", str(path)], capture_output=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert b"No problems found" in verify.stdout


def test_get_prints_the_stored_bytes(hello_image: Path) -> None:
    """config get prints exactly the JSON the build wrote, with no newline when piped."""
    result = imagekit("config", "get", str(hello_image))
    assert result.returncode == 0, result.stderr
    assert result.stdout == codec.dumps(resolved())
    assert result.stdout == stored(hello_image)[1]


def test_get_pretty(hello_image: Path) -> None:
    """--pretty indents the same JSON, keys in the stored order."""
    result = imagekit("config", "get", "--pretty", str(hello_image))
    assert result.returncode == 0, result.stderr
    assert b'\n  "program": [' in result.stdout
    assert json.loads(result.stdout) == json.loads(stored(hello_image)[1])


def test_get_qcow2(hello_image: Path, tmp_path: Path) -> None:
    """A qcow2 image gives the same bytes as the raw image it came from."""
    require_tools()
    qcow2 = tmp_path / "hello.qcow2"
    subprocess.run(
        [require("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", str(hello_image), str(qcow2)],
        check=True,
    )
    assert imagekit("config", "get", str(qcow2)).stdout == stored(hello_image)[1]


def test_set_round_trip(image: Path, tmp_path: Path) -> None:
    """set then get gives the new JSON; the command line follows kernel-args; disk stays clean."""
    extra = vcfg_file(tmp_path, '[system]\nkernel-args = "loglevel=7"\n[vm]\nram = "256 MiB"\n')
    result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 0, result.stderr
    assert b"written in place" in result.stdout

    expected = resolved(extra)
    assert imagekit("config", "get", str(image)).stdout == codec.dumps(expected)
    block, _ = stored(image)
    assert block.kernel_args == kernel_command_line(expected)
    assert block.kernel_args.startswith("loglevel=7 ")
    assert " quiet " not in block.kernel_args  # the user's loglevel replaces it
    assert f"kernel command line: {block.kernel_args}".encode() in result.stdout
    assert_disk_clean(image)

    report = json.loads(imagekit("inspect", "--json", str(image)).stdout)
    assert report["problems"] == []
    assert report["vcfg"]["vm"]["ram"] == "256 MiB"


def test_set_alternates_in_place_and_clears_the_old_copy(image: Path, tmp_path: Path) -> None:
    """Repeated sets stay in place; the config area holds only the current JSON."""
    first = vcfg_file(tmp_path, '[vm]\nram = "256 MiB"\n', "first.vcfg")
    second = vcfg_file(tmp_path, '[vm]\nram = "512 MiB"\n', "second.vcfg")
    offsets = []
    for extra in (first, second, first):
        result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
        assert result.returncode == 0, result.stderr
        assert b"written in place" in result.stdout
        block, data = stored(image)
        assert data == codec.dumps(resolved(extra))
        offsets.append(block.config_offset)

        with image.open("rb") as handle:
            found = imagefile.read_layout(handle, source=str(image))
            start, end = found.config_area
            handle.seek(start)
            area = handle.read(end - start)
        position = layout.CONFIG_BLOCK_OFFSET + block.config_offset - start
        assert area[position : position + len(data)] == data
        assert area.count(0) == len(area) - len(data) + data.count(0)
        assert block.config_capacity == end - layout.CONFIG_BLOCK_OFFSET - block.config_offset
    assert offsets[0] != offsets[1]
    assert offsets[0] == offsets[2]
    assert_disk_clean(image)


def test_long_command_line_goes_through_a_copy(
    image: Path, hello_image: Path, tmp_path: Path
) -> None:
    """A command line past the block's first sector is written to a copy renamed into place.

    Setting the original VCFG back gives the original image, byte for byte.
    """
    extra = vcfg_file(tmp_path, f'[system]\nkernel-args = "{LONG_ARGS}"\n')
    result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 0, result.stderr
    assert b"written to a copy renamed into place" in result.stdout
    block, data = stored(image)
    assert block.kernel_args.startswith(LONG_ARGS + " ")
    assert data == codec.dumps(resolved(extra))
    assert sorted(path.name for path in image.parent.iterdir()) == ["extra.vcfg", "hello.raw"]
    assert_disk_clean(image)

    assert imagekit("config", "set", str(image), str(HELLO)).returncode == 0
    assert sha256(image) == sha256(hello_image)


def test_set_qcow2(hello_image: Path, tmp_path: Path) -> None:
    """A qcow2 image is rewritten through a raw copy and stays a valid qcow2."""
    require_tools()
    qcow2 = tmp_path / "hello.qcow2"
    qemu_img = require("qemu-img")
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(hello_image), str(qcow2)], check=True
    )
    extra = vcfg_file(tmp_path, '[system]\nkernel-args = "loglevel=7"\n')
    result = imagekit("config", "set", str(qcow2), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 0, result.stderr
    assert imagekit("config", "get", str(qcow2)).stdout == codec.dumps(resolved(extra))
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"
    subprocess.run([qemu_img, "check", "-q", str(qcow2)], check=True)
    report = json.loads(imagekit("inspect", "--json", str(qcow2)).stdout)
    assert report["kernel_args"].startswith("loglevel=7 ")
    assert report["problems"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'[info]\ndescription = "{"x" * 30000}"\n', b"the image has room for"),
        ('[[program]]\nprivilege = "admin"\n', b"program[0].privilege"),
        ('[system]\nfilesystem = "ext2"\n', b"the image's root filesystem is ext4"),
        ('[system]\nkernel-args = "a\\"b"\n', b"system.kernel-args"),
        (
            '[[program]]\n[[program]]\nbinary = "/usr/bin/node"\n',
            b"program[1]: '/usr/bin/node' is not in the image (looked for /usr/bin/node)",
        ),
        (
            '[[program]]\n[[program]]\nbinary = "node"\nenv = ["PATH=/usr/bin:/bin"]\n',
            b"program[1]: 'node' is not in the image (looked for /node, /usr/bin/node, /bin/node)",
        ),
    ],
    ids=[
        "over-capacity",
        "invalid-vcfg",
        "other-filesystem",
        "bad-kernel-args",
        "missing-binary",
        "missing-on-path",
    ],
)
def test_set_refused_leaves_the_image_unchanged(
    image: Path, tmp_path: Path, text: str, expected: bytes
) -> None:
    """A VCFG the image cannot take: exit 2, the reason in one message, not a byte changed."""
    before = sha256(image)
    extra = vcfg_file(tmp_path, text)
    result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 2
    assert expected in result.stderr
    assert b"Traceback" not in result.stderr
    assert sha256(image) == before


def test_set_accepts_binaries_found_through_links_and_path(image: Path, tmp_path: Path) -> None:
    """/bin/python3 (/bin -> usr/bin, python3 -> python3.11) and a bare name on the
    program's PATH are found in the image's filesystem, as vinitd will find them."""
    extra = vcfg_file(
        tmp_path,
        '[[program]]\n[[program]]\nbinary = "/bin/python3"\nargs = "/hello.py"\n'
        '[[program]]\nbinary = "python3.11"\nenv = ["PATH=/usr/local/bin:/usr/bin"]\n',
    )
    result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(imagekit("config", "get", str(image)).stdout)["program"]) == 3


def test_in_filesystem_follows_links_to_regular_files(hello_image: Path) -> None:
    with imagefile.raw_image(hello_image) as raw:
        offset = imagefile.read_image_layout(raw).root_offset
    is_file = binaries.in_filesystem(hello_image, offset)
    assert is_file(PurePosixPath("/hello.py"))
    assert is_file(PurePosixPath("/usr/bin/python3"))  # a link to python3.11
    assert is_file(PurePosixPath("/bin/python3"))  # through the /bin -> usr/bin link
    assert not is_file(PurePosixPath("/usr/bin"))  # a directory
    assert not is_file(PurePosixPath("/usr/bin/node"))
    assert not is_file(PurePosixPath('/odd"name'))


def test_set_without_a_vcfg(image: Path) -> None:
    """Neither a project nor --vcfg: nothing to set, exit 2."""
    result = imagekit("config", "set", str(image))
    assert result.returncode == 2
    assert b"no VCFG to read" in result.stderr


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "rb+")
fcntl.lockf(handle.fileno(), fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def locked(image: Path) -> Iterator[Path]:
    """The image locked by another process, the way a running QEMU locks it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(image)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        yield image
    finally:
        holder.kill()
        holder.wait()


def test_set_refuses_an_image_in_use(locked: Path) -> None:
    """A lock held by another process (a VM) refuses the change."""
    before = sha256(locked)
    result = imagekit("config", "set", str(locked), str(HELLO))
    assert result.returncode == 2
    assert b"in use by another process" in result.stderr
    assert sha256(locked) == before


def test_build_time_field_warns(image: Path, tmp_path: Path) -> None:
    """A new vm.disk-size is stored, with a warning that only a rebuild applies it."""
    extra = vcfg_file(tmp_path, '[vm]\ndisk-size = "+100 MiB"\n')
    result = imagekit("config", "set", str(image), str(HELLO), "--vcfg", str(extra))
    assert result.returncode == 0, result.stderr
    assert b"vm.disk-size changed; it takes effect when the image is rebuilt" in result.stderr


class Interrupted(Exception):
    pass


def interrupt_write(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """Make the `at_call`-th low-level write of write_config fail, as a crash would stop it."""
    real = imagefile._pwrite_all
    calls = 0

    def write(descriptor: int, data: bytes, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls == at_call:
            raise Interrupted
        real(descriptor, data, offset)

    monkeypatch.setattr(imagefile, "_pwrite_all", write)


@pytest.mark.parametrize(
    ("at_call", "old_remains"),
    [(1, True), (2, True), (3, False)],
    ids=["during-json", "before-block", "after-block"],
)
def test_interrupted_in_place_write_leaves_one_config(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_call: int, old_remains: bool
) -> None:
    """Stopped before the block's sector is written: the old config; after it: the new one."""
    old_block, old_json = stored(image)
    extra = vcfg_file(tmp_path, '[system]\nkernel-args = "loglevel=7"\n')
    new = resolved(extra)
    interrupt_write(monkeypatch, at_call)
    with pytest.raises(Interrupted):
        imagefile.write_config(image, new)
    block, data = stored(image)
    if old_remains:
        assert (block, data) == (old_block, old_json)
    else:
        assert data == codec.dumps(new)
        assert block.kernel_args == kernel_command_line(new)


def test_interrupted_copy_leaves_the_original(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while the copy is written: the original is untouched and the copy is gone."""
    before = sha256(image)
    new = resolved(vcfg_file(tmp_path, f'[system]\nkernel-args = "{LONG_ARGS}"\n'))
    interrupt_write(monkeypatch, 1)
    with pytest.raises(Interrupted):
        imagefile.write_config(image, new)
    assert sha256(image) == before
    assert sorted(path.name for path in image.parent.iterdir()) == ["extra.vcfg", "hello.raw"]
