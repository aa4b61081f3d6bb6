"""The imagekit command line as a user runs it: output bytes, exit statuses, error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vinitd.vcfg import codec

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"


def imagekit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit.cli", *args], cwd=cwd, capture_output=True, check=False
    )


def test_render_example_prints_on_disk_bytes() -> None:
    """`config render examples/hello` prints exactly the JSON that goes on the disk."""
    result = imagekit("config", "render", str(HELLO))
    assert result.returncode == 0, result.stderr
    vcfg = codec.loads(result.stdout)
    assert codec.dumps(vcfg) == result.stdout  # exact bytes, no trailing newline when piped
    assert vcfg.program[0].binary == "/usr/bin/python3"
    assert vcfg.system.hostname == "hello-$SALT"


def test_render_pretty() -> None:
    """--pretty indents the same JSON."""
    plain = imagekit("config", "render", str(HELLO)).stdout
    pretty = imagekit("config", "render", str(HELLO), "--pretty").stdout
    assert b"\n  " in pretty
    assert json.loads(pretty) == json.loads(plain)


def test_render_current_directory(tmp_path: Path) -> None:
    """Without arguments the current directory is the project."""
    (tmp_path / "default.vcfg").write_text('[[program]]\nbinary = "/app"\n')
    result = imagekit("config", "render", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert codec.loads(result.stdout).program[0].binary == "/app"


def test_render_extra_vcfg_overrides(tmp_path: Path) -> None:
    """--vcfg files merge after the target's files."""
    extra = tmp_path / "extra.vcfg"
    extra.write_text('[vm]\nram = "512 MiB"\n')
    result = imagekit("config", "render", str(HELLO), "--vcfg", str(extra))
    assert codec.loads(result.stdout).vm.ram.text() == "512 MiB"


def test_render_vcfg_only(tmp_path: Path) -> None:
    """--vcfg alone renders without a project."""
    only = tmp_path / "only.vcfg"
    only.write_text('[[program]]\nargs = "/bin/app -v"\n')
    result = imagekit("config", "render", "--vcfg", str(only), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert codec.loads(result.stdout).program[0].args == "/bin/app -v"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[[program]]\nprivilege = "admin"\nbinary = "/a"\n', "program[0].privilege"),
        ('[[program]]\nbinary = "/a"\n[[network]]\nip = "10.0.0.300"\n', "network[0].ip"),
        ("[[program]\n", "not valid TOML"),
    ],
)
def test_invalid_config_exit_2_without_traceback(
    tmp_path: Path, content: str, expected: str
) -> None:
    """A bad VCFG exits 2 with a line naming the file and field, and no traceback."""
    (tmp_path / "default.vcfg").write_text(content)
    result = imagekit("config", "render", str(tmp_path))
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert str(tmp_path / "default.vcfg") in stderr
    assert expected in stderr
    assert "Traceback" not in stderr
    assert result.stdout == b""


def test_debug_shows_traceback(tmp_path: Path) -> None:
    """--debug adds the traceback to the same message."""
    (tmp_path / "default.vcfg").write_text('[[program]]\nprivilege = "admin"\n')
    result = imagekit("--debug", "config", "render", str(tmp_path))
    assert result.returncode == 2
    assert b"Traceback" in result.stderr


def test_not_a_project(tmp_path: Path) -> None:
    """A directory with no project file and no default.vcfg exits 2 with a hint."""
    result = imagekit("config", "render", str(tmp_path))
    assert result.returncode == 2
    assert b"not a project" in result.stderr
    assert b"hint:" in result.stderr


def test_unknown_target() -> None:
    """DIR:TARGET with an unknown target names the known ones."""
    result = imagekit("config", "render", f"{HELLO}:nope")
    assert result.returncode == 2
    assert b"no target named 'nope'" in result.stderr
    assert b"default" in result.stderr


def test_usage_error_exit_2() -> None:
    """Unknown options are usage errors (exit 2)."""
    assert imagekit("config", "render", "--no-such-flag").returncode == 2
    assert imagekit().returncode == 2
