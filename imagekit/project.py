"""vorteil projects: a directory, its ``.vorteilproject`` targets and its ignore globs.

A ``.vorteilproject`` (TOML, at most 64 KiB) holds ``ignore = [globs]`` and one or more
``[[target]]`` tables with ``name``, ``vcfgs`` (merged in order), ``icon`` and ``files``.
The first target is the default; ``DIR:TARGET`` picks another. A directory without a
``.vorteilproject`` but with a ``default.vcfg`` is a project with one target, ``default``.

Unlike vorteil at its last release, the ignore globs really ignore (see `IgnoreRules`), and
``.vorteilproject`` itself never goes into the VM.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imagekit.errors import UserError

PROJECT_FILE = ".vorteilproject"
DEFAULT_VCFG = "default.vcfg"
MAX_PROJECT_FILE = 64 * 1024
_TARGET_KEYS = ("name", "vcfgs", "icon", "files")


@dataclass(frozen=True)
class Target:
    name: str
    vcfgs: tuple[str, ...] = ()
    icon: str = ""
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    """A host path and where it lands in the VM's root filesystem."""

    source: Path
    dest: PurePosixPath


class IgnoreRules:
    """Globs in the spirit of .gitignore, matched against paths relative to the project.

    - a pattern without ``/`` matches a file or directory name at any depth (``*.log``);
    - a pattern with ``/`` is anchored at the project root (``build/*.o``, ``/secret``);
    - ``*`` and ``?`` stay within one path component, ``**`` spans any number of them;
    - a trailing ``/`` matches directories only; an ignored directory hides all below it.
    """

    def __init__(self, patterns: Sequence[str], *, source: str = PROJECT_FILE) -> None:
        self._rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for position, pattern in enumerate(patterns):
            if not pattern.strip() or pattern.startswith("!"):
                raise UserError(
                    f"{source}: ignore[{position}]: unsupported pattern {pattern!r}",
                    hint="patterns are globs such as '*.log', 'build/' or '/docs/**/*.md'",
                )
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            anchored = "/" in body
            self._rules.append((_glob_regex(body.lstrip("/")), anchored, dir_only))

    def ignored(self, relative: PurePosixPath, *, is_dir: bool) -> bool:
        text = relative.as_posix()
        for regex, anchored, dir_only in self._rules:
            if dir_only and not is_dir:
                continue
            subject = text if anchored else relative.name
            if regex.fullmatch(subject):
                return True
        return False


def _glob_regex(glob: str) -> re.Pattern[str]:
    out: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if glob.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = glob.find("]", index + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = glob[index + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Project:
    root: Path
    targets: tuple[Target, ...]
    ignore: tuple[str, ...] = ()

    def target(self, name: str | None) -> Target:
        if name is None:
            return self.targets[0]
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets)
        raise UserError(f"{self.root}: no target named {name!r}", hint=f"targets: {known}")

    def vcfg_paths(self, target: Target) -> list[Path]:
        return [self._inside(item, f"target {target.name!r} vcfgs") for item in target.vcfgs]

    def files(self, target: Target) -> Iterator[FileEntry]:
        """The project's files (minus ignored ones), then the target's extra ``files``."""
        rules = IgnoreRules(self.ignore)
        yield from _walk(self.root, PurePosixPath("/"), rules, top=True)
        for item in target.files:
            source_text, _, dest_text = item.partition("@")
            source = self._inside(source_text, f"target {target.name!r} files")
            dest = PurePosixPath(dest_text or "/" + source.name)
            if not dest.is_absolute():
                raise UserError(f"{self.root}: files entry {item!r}: {dest} is not absolute")
            if source.is_dir() and not source.is_symlink():
                yield FileEntry(source, dest)
                yield from _walk(source, dest, IgnoreRules(()), top=False)
            else:
                yield FileEntry(source, dest)

    def _inside(self, item: str, what: str) -> Path:
        # Normalised, not resolved: a symlink stays a link, under its own name.
        path = Path(os.path.normpath(self.root / item))
        if not path.exists() and not path.is_symlink():
            raise UserError(f"{self.root / PROJECT_FILE}: {what}: {item} does not exist")
        return path


def _walk(
    directory: Path, dest: PurePosixPath, rules: IgnoreRules, *, top: bool
) -> Iterator[FileEntry]:
    base = directory
    for current, dirnames, filenames in os.walk(directory):
        here = Path(current)
        relative_dir = PurePosixPath(here.relative_to(base).as_posix())
        kept = []
        for name in sorted(dirnames):
            relative = relative_dir / name
            if rules.ignored(relative, is_dir=True):
                continue
            path = here / name
            if path.is_symlink():
                yield FileEntry(path, dest / relative)  # kept as a link, not followed
                continue
            kept.append(name)
            yield FileEntry(path, dest / relative)
        dirnames[:] = kept
        for name in sorted(filenames):
            relative = relative_dir / name
            if top and relative == PurePosixPath(PROJECT_FILE):
                continue
            if not rules.ignored(relative, is_dir=False):
                yield FileEntry(here / name, dest / relative)


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:TARGET``; a directory whose own name holds ':' still works."""
    if Path(spec).is_dir() or ":" not in spec:
        return Path(spec), None
    directory, _, target = spec.rpartition(":")
    return Path(directory or "."), target or None


def load_project(directory: Path) -> Project:
    """Read a project directory; errors name the project file and the field."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such project directory")
    project_file = directory / PROJECT_FILE
    if not project_file.exists():
        if (directory / DEFAULT_VCFG).is_file():
            return Project(directory.resolve(), (Target("default", (DEFAULT_VCFG,)),))
        raise UserError(
            f"{directory}: not a project (no {PROJECT_FILE} and no {DEFAULT_VCFG})",
            hint=f"create {DEFAULT_VCFG}, or a {PROJECT_FILE} with a [[target]]",
        )
    try:
        data = project_file.read_bytes()
    except OSError as err:
        raise UserError(f"{project_file}: cannot read: {err.strerror}") from None
    if len(data) > MAX_PROJECT_FILE:
        raise UserError(f"{project_file}: larger than {MAX_PROJECT_FILE} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"{project_file}: not valid TOML: {err}") from None
    return Project(directory.resolve(), _targets(raw, project_file), _ignore(raw, project_file))


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where}: expected a list of strings")
    return tuple(value)


def _ignore(raw: dict[str, object], source: Path) -> tuple[str, ...]:
    unknown = sorted(set(raw) - {"ignore", "target"})
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}", hint="allowed: ignore, target")
    patterns = _strings(raw.get("ignore", []), f"{source}: ignore")
    IgnoreRules(patterns, source=str(source))  # reject bad patterns now, not at build time
    return patterns


def _targets(raw: dict[str, object], source: Path) -> tuple[Target, ...]:
    tables = raw.get("target")
    if not isinstance(tables, list) or not tables:
        raise UserError(f"{source}: no [[target]]", hint="add [[target]] with name and vcfgs")
    targets: list[Target] = []
    for index, table in enumerate(tables):
        where = f"{source}: target[{index}]"
        if not isinstance(table, dict):
            raise UserError(f"{where}: expected a table")
        unknown = sorted(set(table) - set(_TARGET_KEYS))
        if unknown:
            raise UserError(
                f"{where}: unknown key {unknown[0]!r}", hint="allowed: " + ", ".join(_TARGET_KEYS)
            )
        name = table.get("name", "")
        icon = table.get("icon", "")
        if not isinstance(name, str) or not name or ":" in name:
            raise UserError(f"{where}.name: expected a non-empty name without ':'")
        if not isinstance(icon, str):
            raise UserError(f"{where}.icon: expected a string")
        if any(t.name == name for t in targets):
            raise UserError(f"{where}.name: target {name!r} is defined twice")
        targets.append(
            Target(
                name=name,
                vcfgs=_strings(table.get("vcfgs", []), f"{where}.vcfgs"),
                icon=icon,
                files=_strings(table.get("files", []), f"{where}.files"),
            )
        )
    return tuple(targets)
