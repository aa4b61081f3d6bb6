"""Scenario files: what a run expects of a boot, what it does to the VM, and how it changes
the image's VCFG first. TOML, read strictly (an unknown key is an error naming it):

    [expect]
    shutdown = "clean"          # vinitd synced the disks and QEMU exited 0; or "any"
    not_reached = ["launch"]    # stages that must not start

    [[expect.console]]
    pattern = "hello from"      # a regex (MULTILINE) that must match the console

    [[expect.program]]
    index = 0
    exit = 3                    # or: signal = "SIGTERM"

    [[action]]
    after_stage = "launch"      # once the stage finished; or after_console = "regex"
    do = "powerdown"            # or "reset"
    delay = 1.0                 # seconds to wait after the trigger (default 0)

    [vcfg]                      # a VCFG fragment merged over the image's VCFG
    [[vcfg.program]]
    binary = "/nonexistent/app"

Without a scenario (or for what it leaves out) a run expects every stage to finish in
order, every program to start and to exit 0 unless the shutdown stopped it, and a clean
power-off. `apply_vcfg` writes the merged VCFG into a copy of the image, so that one built
image is tested under many configs; the image itself is never changed.
"""

from __future__ import annotations

import enum
import logging
import re
import shutil
import signal
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.imagefile import write_config
from imagekit.merge import Sources, merge, source_of
from imagekit.textfile import TextFileError, read_text
from vinitd.errors import ConfigError
from vinitd.vcfg import codec, validate
from vinitd.vcfg.kinds import Form
from vinitd.vcfg.model import VCFG
from vinitd.vcfg.records import decode_record
from vmtest import bootfiles
from vmtest.errors import ScenarioError
from vmtest.events import STAGES

log = logging.getLogger(__name__)

MAX_SIZE = 1024 * 1024


class ShutdownExpectation(enum.StrEnum):
    CLEAN = "clean"  # vinitd's `shutdown synced` event, then QEMU exit status 0
    ANY = "any"  # QEMU ended by itself, however


class ActionKind(enum.StrEnum):
    POWERDOWN = "powerdown"  # the ACPI power button (QMP system_powerdown)
    RESET = "reset"  # QMP system_reset; with -no-reboot QEMU then exits


@dataclass(frozen=True)
class ConsoleExpectation:
    """A regular expression that must match the console text (MULTILINE)."""

    pattern: str

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.MULTILINE)

    def describe(self) -> str:
        return f"console matches /{self.pattern}/"


@dataclass(frozen=True)
class ProgramExpectation:
    """How program ``index`` must end: with status ``exit``, or killed by ``signal``."""

    index: int
    exit: int | None = None
    signal: str | None = None

    def describe(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exits with status {self.exit}"
        return f"program[{self.index}] {how}"

    def met_by(self, exit_status: int | None, signal_name: str | None) -> bool:
        if self.signal is not None:
            return signal_name == self.signal
        return signal_name is None and exit_status == self.exit


@dataclass(frozen=True)
class Action:
    """Something done to the VM once a stage finished or the console showed a pattern."""

    do: ActionKind
    after_stage: str | None = None
    after_console: str | None = None
    delay: float = 0.0

    def describe(self) -> str:
        trigger = (
            f"stage {self.after_stage} finished"
            if self.after_stage is not None
            else f"console matched /{self.after_console}/"
        )
        wait = f"{self.delay:g} s after " if self.delay else "once "
        return f"{self.do} {wait}{trigger}"


@dataclass(frozen=True)
class Scenario:
    """Expectations, actions and a VCFG override; `Scenario()` is the default run."""

    source: str | None = None
    console: tuple[ConsoleExpectation, ...] = ()
    programs: tuple[ProgramExpectation, ...] = ()
    not_reached: tuple[str, ...] = ()
    shutdown: ShutdownExpectation = ShutdownExpectation.CLEAN
    actions: tuple[Action, ...] = ()
    vcfg: VCFG | None = None

    @property
    def expected_stages(self) -> tuple[str, ...]:
        """The stages that must finish, in order."""
        return tuple(stage for stage in STAGES if stage not in self.not_reached)

    def program(self, index: int) -> ProgramExpectation | None:
        return next((p for p in self.programs if p.index == index), None)


def load(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError names the file and the key."""
    source = str(path)
    try:
        text = read_text(path, max_size=MAX_SIZE, kind="a scenario file")
    except TextFileError as err:
        raise ScenarioError(err.problem, source=source) from None
    return parse(text, source=source)


def parse(text: str, *, source: str) -> Scenario:
    """A scenario from TOML text; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"not valid TOML: {err}", source=source) from None
    keys = _Keys(source)
    keys.only(raw, "", ("expect", "action", "vcfg"))
    expect = keys.table(raw.get("expect", {}), "expect")
    keys.only(expect, "expect", ("console", "program", "not_reached", "shutdown"))
    programs = tuple(
        _program(keys, item, f"expect.program[{number}]")
        for number, item in enumerate(keys.tables(expect.get("program", []), "expect.program"))
    )
    indexes = [program.index for program in programs]
    for number, index in enumerate(indexes):
        if index in indexes[:number]:
            raise keys.error(f"expect.program[{number}].index", f"program {index} listed twice")
    return Scenario(
        source=source,
        console=tuple(
            ConsoleExpectation(keys.regex(item, f"expect.console[{number}]", "pattern"))
            for number, item in enumerate(keys.tables(expect.get("console", []), "expect.console"))
        ),
        programs=programs,
        not_reached=_stages(keys, expect.get("not_reached", []), "expect.not_reached"),
        shutdown=keys.choice(
            ShutdownExpectation, expect.get("shutdown", "clean"), "expect.shutdown"
        ),
        actions=tuple(
            _action(keys, item, f"action[{number}]")
            for number, item in enumerate(keys.tables(raw.get("action", []), "action"))
        ),
        vcfg=_vcfg(keys, raw["vcfg"]) if "vcfg" in raw else None,
    )


class _Keys:
    """Reads the parts of one scenario file; every error names the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(problem, source=self.source, key=key)

    def only(self, table: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
        for name in table:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.error(where, f"unknown key (allowed: {', '.join(allowed)})")

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_kind(value)}")
        return value

    def tables(self, value: object, key: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(key, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
        return value

    def integer(self, value: object, key: str, low: int, high: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"must be an integer, not {_kind(value)}")
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise self.error(key, f"{value} is out of range ({bounds})")
        return value

    def text(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, not {_kind(value)}")
        return value

    def regex(self, table: Mapping[str, Any], key: str, name: str) -> str:
        self.only(table, key, (name,))
        if name not in table:
            raise self.error(f"{key}.{name}", "missing")
        return self.pattern(table[name], f"{key}.{name}")

    def pattern(self, value: object, key: str) -> str:
        text = self.text(value, key)
        try:
            re.compile(text, re.MULTILINE)
        except re.error as err:
            raise self.error(key, f"not a regular expression: {err}") from None
        return text

    def choice(self, kind: type[enum.StrEnum], value: object, key: str) -> Any:
        allowed = ", ".join(member.value for member in kind)
        if not isinstance(value, str) or value not in {member.value for member in kind}:
            raise self.error(key, f"unknown value {value!r} (allowed: {allowed})")
        return kind(value)

    def stage(self, value: object, key: str) -> str:
        if value not in STAGES:
            raise self.error(key, f"unknown stage {value!r} (allowed: {', '.join(STAGES)})")
        return str(value)


def _program(keys: _Keys, table: Mapping[str, Any], key: str) -> ProgramExpectation:
    keys.only(table, key, ("index", "exit", "signal"))
    if "index" not in table:
        raise keys.error(f"{key}.index", "missing")
    index = keys.integer(table["index"], f"{key}.index", 0)
    if ("exit" in table) == ("signal" in table):
        raise keys.error(key, "give exactly one of exit and signal")
    if "exit" in table:
        return ProgramExpectation(index, exit=keys.integer(table["exit"], f"{key}.exit", 0, 255))
    name = keys.text(table["signal"], f"{key}.signal")
    if name not in signal.Signals.__members__ or not name.startswith("SIG"):
        raise keys.error(f"{key}.signal", f"unknown signal {name!r} (write it as SIGTERM)")
    return ProgramExpectation(index, signal=name)


def _stages(keys: _Keys, value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise keys.error(key, f"must be an array of stage names, not {_kind(value)}")
    return tuple(keys.stage(item, f"{key}[{number}]") for number, item in enumerate(value))


def _action(keys: _Keys, table: Mapping[str, Any], key: str) -> Action:
    keys.only(table, key, ("do", "after_stage", "after_console", "delay"))
    if "do" not in table:
        raise keys.error(f"{key}.do", "missing (powerdown or reset)")
    do = keys.choice(ActionKind, table["do"], f"{key}.do")
    if ("after_stage" in table) == ("after_console" in table):
        raise keys.error(key, "give exactly one of after_stage and after_console")
    delay = table.get("delay", 0.0)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise keys.error(f"{key}.delay", f"must be a number of seconds >= 0, not {delay!r}")
    if "after_stage" in table:
        stage = keys.stage(table["after_stage"], f"{key}.after_stage")
        return Action(do, after_stage=stage, delay=float(delay))
    pattern = keys.pattern(table["after_console"], f"{key}.after_console")
    return Action(do, after_console=pattern, delay=float(delay))


def _vcfg(keys: _Keys, value: object) -> VCFG:
    """The ``[vcfg]`` table decoded as a VCFG file's TOML (`imagekit.vcfgfile` reads the
    same way, from text), strictly: an unknown key names its path under ``vcfg``."""
    table = keys.table(value, "vcfg")
    try:
        return decode_record(VCFG, table, "", Form.TOML)
    except ConfigError as err:
        problem = f"{err.problem} (allowed: {err.allowed})" if err.allowed else err.problem
        raise keys.error(_under_vcfg(err.path), problem) from None


def _under_vcfg(path: str) -> str:
    return f"vcfg.{path}" if path else "vcfg"


def _kind(value: object) -> str:
    names = {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def merged_vcfg(scenario: Scenario, image: Path) -> VCFG:
    """The image's VCFG with the scenario's ``[vcfg]`` merged over it, validated."""
    if scenario.vcfg is None:
        raise ValueError("the scenario has no [vcfg] override")
    data = bootfiles.read_vcfg_json(image)
    try:
        base = codec.loads(data, source=str(image))
    except ConfigError as err:
        raise ScenarioError(
            f"cannot merge over the VCFG of {image}, which does not decode ({err})",
            source=scenario.source,
            key="vcfg",
        ) from None
    override_source = scenario.source or "[vcfg]"
    sources: Sources = {}
    merged = merge(base, scenario.vcfg, source=override_source, sources=sources)
    problems = validate.problems(merged)
    if not problems:
        return merged
    lines = []
    for problem in problems:
        detail = (
            f"{problem.problem} (allowed: {problem.allowed})"
            if problem.allowed
            else problem.problem
        )
        if source_of(sources, problem.path) == override_source:
            lines.append((_under_vcfg(problem.path), detail))
        else:
            lines.append((f"{problem.path} (from {image})", detail))
    if len(lines) == 1:
        key, detail = lines[0]
        raise ScenarioError(detail, source=scenario.source, key=key)
    listed = "".join(f"\n  {key}: {detail}" for key, detail in lines)
    raise ScenarioError(
        f"the merged VCFG has {len(lines)} problems:{listed}", source=scenario.source, key="vcfg"
    )


def apply_vcfg(scenario: Scenario, image: Path, output: Path) -> Path:
    """Copy ``image`` to ``output`` and write the merged VCFG (`merged_vcfg`) into the copy
    with `imagekit.imagefile.write_config`; returns ``output``. ``image`` is only read."""
    vcfg = merged_vcfg(scenario, image)
    if output.resolve() == image.resolve():
        raise ValueError(f"{output}: the copy would overwrite the image itself")
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, output)
    written = write_config(output, vcfg)
    log.info(
        "%s: VCFG of %s with [vcfg] of %s merged over it (%s)",
        output,
        image,
        scenario.source,
        written.method,
    )
    return output
