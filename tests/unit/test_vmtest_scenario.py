"""Scenario files: parsing, one clear error per bad key, and [vcfg] overrides on a copy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from imagekit.cache import BuildCache
from imagekit.cmdline import kernel_command_line
from imagekit.errors import EnvironmentFailure
from imagekit.image import BuildRequest, build
from imagekit.tools import require
from vinitd import layout
from vmtest import bootfiles
from vmtest.errors import ScenarioError
from vmtest.events import STAGES
from vmtest.scenario import (
    Action,
    ActionKind,
    ConsoleExpectation,
    ProgramExpectation,
    Scenario,
    ShutdownExpectation,
    apply_vcfg,
    load,
    merged_vcfg,
    parse,
)

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
TOOLS = ("mke2fs", "e2fsck", "debugfs", "dumpe2fs", "fakeroot", "sgdisk")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

FULL = """
[expect]
shutdown = "any"
not_reached = ["launch"]

[[expect.console]]
pattern = "hello from"

[[expect.console]]
pattern = "^python 3"

[[expect.program]]
index = 0
exit = 3

[[expect.program]]
index = 1
signal = "SIGTERM"

[[action]]
after_stage = "launch"
do = "powerdown"
delay = 1.5

[[action]]
after_console = "ready"
do = "reset"

[vcfg]
[[vcfg.program]]
binary = "/nonexistent/app"

[vcfg.vm]
cpus = 2
"""


def test_a_full_scenario_is_read_into_its_parts() -> None:
    """Every section of the format lands in its field, in order."""
    scenario = parse(FULL, source="full.toml")
    assert scenario.source == "full.toml"
    assert scenario.shutdown is ShutdownExpectation.ANY
    assert scenario.not_reached == ("launch",)
    assert scenario.expected_stages == ("pre-setup", "setup", "post-setup")
    assert scenario.console == (ConsoleExpectation("hello from"), ConsoleExpectation("^python 3"))
    assert scenario.console[1].regex.search("x\npython 3.11\n")
    assert scenario.programs == (
        ProgramExpectation(0, exit=3),
        ProgramExpectation(1, signal="SIGTERM"),
    )
    assert scenario.program(1) == ProgramExpectation(1, signal="SIGTERM")
    assert scenario.program(2) is None
    assert scenario.actions == (
        Action(ActionKind.POWERDOWN, after_stage="launch", delay=1.5),
        Action(ActionKind.RESET, after_console="ready"),
    )
    assert scenario.actions[0].describe() == "powerdown 1.5 s after stage launch finished"
    assert scenario.actions[1].describe() == "reset once console matched /ready/"
    assert scenario.vcfg is not None
    assert scenario.vcfg.program[0].binary == "/nonexistent/app"
    assert scenario.vcfg.vm.cpus == 2


def test_an_empty_file_is_the_default_run() -> None:
    """No keys: every stage expected, a clean shutdown, no actions, no override."""
    scenario = parse("", source="empty.toml")
    assert scenario == Scenario(source="empty.toml")
    assert scenario.expected_stages == STAGES
    assert scenario.shutdown is ShutdownExpectation.CLEAN


def test_program_expectations_say_what_they_accept() -> None:
    """exit matches only that status without a signal; signal only that signal."""
    exits = ProgramExpectation(0, exit=3)
    assert exits.met_by(3, None) and not exits.met_by(0, None) and not exits.met_by(None, "SIGKILL")
    killed = ProgramExpectation(0, signal="SIGTERM")
    assert killed.met_by(None, "SIGTERM") and not killed.met_by(0, None)
    assert exits.describe() == "program[0] exits with status 3"
    assert killed.describe() == "program[0] killed by SIGTERM"


BAD = [
    ("not toml = = 1", "s.toml: not valid TOML"),
    ("[expext]", "s.toml: expext: unknown key (allowed: expect, action, vcfg)"),
    ("expect = 1", "s.toml: expect: must be a table, not int"),
    (
        '[expect]\nshutdown = "maybe"',
        "s.toml: expect.shutdown: unknown value 'maybe' (allowed: clean, any)",
    ),
    ("[expect]\nnot_reached = 'launch'", "s.toml: expect.not_reached: must be an array"),
    ('[expect]\nnot_reached = ["lunch"]', "s.toml: expect.not_reached[0]: unknown stage 'lunch'"),
    ("[expect]\nconsole = 'x'", "s.toml: expect.console: must be an array of tables"),
    (
        "[[expect.console]]\npattern = '('",
        "s.toml: expect.console[0].pattern: not a regular expression",
    ),
    (
        "[[expect.console]]\nregex = 'x'",
        "s.toml: expect.console[0].regex: unknown key (allowed: pattern)",
    ),
    ("[[expect.console]]", "s.toml: expect.console[0].pattern: missing"),
    ("[[expect.program]]\nexit = 1", "s.toml: expect.program[0].index: missing"),
    (
        "[[expect.program]]\nindex = -1\nexit = 1",
        "s.toml: expect.program[0].index: -1 is out of range",
    ),
    (
        "[[expect.program]]\nindex = 0",
        "s.toml: expect.program[0]: give exactly one of exit and signal",
    ),
    (
        "[[expect.program]]\nindex = 0\nexit = 1\nsignal = 'SIGTERM'",
        "exactly one of exit and signal",
    ),
    (
        "[[expect.program]]\nindex = 0\nexit = 256",
        "s.toml: expect.program[0].exit: 256 is out of range (from 0 to 255)",
    ),
    (
        "[[expect.program]]\nindex = 0\nexit = 'three'",
        "s.toml: expect.program[0].exit: must be an integer, not a string",
    ),
    (
        "[[expect.program]]\nindex = 0\nexit = true",
        "expect.program[0].exit: must be an integer, not a boolean",
    ),
    (
        "[[expect.program]]\nindex = 0\nsignal = 'TERM'",
        "s.toml: expect.program[0].signal: unknown signal 'TERM'",
    ),
    (
        "[[expect.program]]\nindex = 0\nexit = 0\n[[expect.program]]\nindex = 0\nexit = 1",
        "s.toml: expect.program[1].index: program 0 listed twice",
    ),
    ("[[action]]\nafter_stage = 'launch'", "s.toml: action[0].do: missing (powerdown or reset)"),
    (
        "[[action]]\ndo = 'explode'\nafter_stage = 'launch'",
        "s.toml: action[0].do: unknown value 'explode' (allowed: powerdown, reset)",
    ),
    (
        "[[action]]\ndo = 'reset'",
        "s.toml: action[0]: give exactly one of after_stage and after_console",
    ),
    (
        "[[action]]\ndo = 'reset'\nafter_stage = 'launch'\nafter_console = 'x'",
        "exactly one of after_stage and after_console",
    ),
    (
        "[[action]]\ndo = 'reset'\nafter_stage = 'boot'",
        "s.toml: action[0].after_stage: unknown stage 'boot'",
    ),
    (
        "[[action]]\ndo = 'reset'\nafter_console = '['",
        "s.toml: action[0].after_console: not a regular expression",
    ),
    (
        "[[action]]\ndo = 'reset'\nafter_stage = 'launch'\ndelay = -1",
        "s.toml: action[0].delay: must be a number of seconds >= 0",
    ),
    (
        "[[action]]\ndo = 'reset'\nafter_stage = 'launch'\nwhen = 1",
        "s.toml: action[0].when: unknown key",
    ),
    ("vcfg = 3", "s.toml: vcfg: must be a table, not int"),
    ("[vcfg]\nfoo = 1", "s.toml: vcfg: unknown key 'foo'"),
    (
        "[[vcfg.program]]\nprivilege = 'admin'",
        "s.toml: vcfg.program[0].privilege: unknown value 'admin'",
    ),
    ("[[vcfg.program]]\nbinnary = '/x'", "s.toml: vcfg.program[0]: unknown key 'binnary'"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_scenario_is_one_error_naming_file_and_key(text: str, message: str) -> None:
    """Each mistake is a ScenarioError whose message names the file and the key."""
    with pytest.raises(ScenarioError) as raised:
        parse(text, source="s.toml")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert raised.value.source == "s.toml"


def test_load_reads_a_file(tmp_path: Path) -> None:
    """load() reads the file and names it as the source."""
    path = tmp_path / "run.toml"
    path.write_text('[expect]\nshutdown = "any"\n')
    assert load(path) == Scenario(source=str(path), shutdown=ShutdownExpectation.ANY)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory, not a scenario file"),
        ("binary", "not UTF-8 text (byte 0)"),
    ],
)
def test_load_names_a_file_it_cannot_read(tmp_path: Path, kind: str, message: str) -> None:
    """A missing file, a directory, bytes that are not UTF-8: one line naming the path."""
    path = tmp_path / "s.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError) as raised:
        load(path)
    assert str(raised.value) == f"{path}: {message}"


# -- [vcfg] overrides on a real image --------------------------------------------------------


@pytest.fixture(scope="session")
def hello_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello built once per test run (the same file test_config_image.py builds)."""
    output = tmp_path_factory.getbasetemp() / "imagekit-hello" / "hello.raw"
    if output.exists():
        return output
    for tool in TOOLS:
        try:
            require(tool)
        except EnvironmentFailure as err:
            if IN_CI:
                pytest.fail(err.message)
            pytest.skip(err.message)
    output.parent.mkdir(exist_ok=True)
    with BuildCache() as cache:
        build(BuildRequest(spec=str(HELLO), output=output), cache=cache)
    return output


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_override_is_written_into_a_copy(hello_image: Path, tmp_path: Path) -> None:
    """[vcfg] merges over the image's VCFG into a copy; the image keeps its bytes."""
    before = _sha256(hello_image)
    scenario = parse(
        '[[vcfg.program]]\nbinary = "/nonexistent/app"\n[vcfg.vm]\ncpus = 2\n', source="o.toml"
    )
    copy = apply_vcfg(scenario, hello_image, tmp_path / "work" / "copy.raw")

    assert copy == tmp_path / "work" / "copy.raw"
    assert _sha256(hello_image) == before
    original, changed = bootfiles.read_vcfg(hello_image), bootfiles.read_vcfg(copy)
    assert changed.program[0].binary == "/nonexistent/app"
    assert changed.vm.cpus == 2
    # Everything the override leaves out is the image's: args, env, info.
    assert changed.program[0].args == original.program[0].args
    assert changed.program[0].env == original.program[0].env
    assert changed.info == original.info
    with copy.open("rb") as handle:
        assert layout.read_config_block(handle).kernel_args == kernel_command_line(changed)


def test_an_override_that_breaks_validation_names_its_key(hello_image: Path) -> None:
    """The merged VCFG is validated; a problem the override caused names vcfg.<path>."""
    scenario = parse('[[vcfg.program]]\ncwd = "relative"\n', source="o.toml")
    with pytest.raises(ScenarioError) as raised:
        merged_vcfg(scenario, hello_image)
    assert str(raised.value) == "o.toml: vcfg.program[0].cwd: 'relative' is not an absolute path"


def test_several_problems_are_listed_at_once(hello_image: Path) -> None:
    """Two problems: one error with a line for each."""
    scenario = parse('[[vcfg.program]]\ncwd = "a"\nstdout = "b"\n', source="o.toml")
    with pytest.raises(ScenarioError) as raised:
        merged_vcfg(scenario, hello_image)
    lines = str(raised.value).splitlines()
    assert lines[0] == "o.toml: vcfg: the merged VCFG has 2 problems:"
    assert lines[1:] == [
        "  vcfg.program[0].cwd: 'a' is not an absolute path",
        "  vcfg.program[0].stdout: 'b' is not an absolute path",
    ]


def test_an_image_whose_vcfg_does_not_decode_cannot_take_an_override(
    hello_image: Path, tmp_path: Path
) -> None:
    """Nothing to merge over: the error names the scenario's vcfg and the image."""
    broken = tmp_path / "broken.raw"
    broken.write_bytes(hello_image.read_bytes())
    with broken.open("r+b") as handle:
        offset, length = layout.read_config_block(handle).json_span()
        handle.seek(offset)
        data = handle.read(length)
        handle.seek(offset)
        handle.write(data.replace(b'"privilege":"root"', b'"privilege":"xxxx"', 1))
    scenario = parse('[[vcfg.program]]\nbinary = "/x"\n', source="o.toml")
    with pytest.raises(ScenarioError) as raised:
        apply_vcfg(scenario, broken, tmp_path / "copy.raw")
    assert str(raised.value).startswith(f"o.toml: vcfg: cannot merge over the VCFG of {broken}")
    assert not (tmp_path / "copy.raw").exists()


def test_the_copy_may_not_be_the_image(hello_image: Path) -> None:
    """apply_vcfg refuses to write over the image it reads."""
    scenario = parse('[[vcfg.program]]\nbinary = "/x"\n', source="o.toml")
    before = _sha256(hello_image)
    with pytest.raises(ValueError, match="overwrite the image itself"):
        apply_vcfg(scenario, hello_image, hello_image)
    assert _sha256(hello_image) == before
