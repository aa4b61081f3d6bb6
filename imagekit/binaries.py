"""Whether each program's binary is in the image, where vinitd will look for it.

vinitd takes an absolute name as it is, and looks for any other name in the program's
``cwd``, then (for a bare name) in the directories of the program's own ``PATH``
(`vinitd.programs.resolve_binary`). `check_programs` asks the same of an image before it
is written: `in_tree` answers for the staged tree of a build, `in_filesystem` for the root
filesystem of an existing image (``imagekit config set``), through ``debugfs``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from imagekit.errors import ToolFailed, UserError
from imagekit.tools import run
from vinitd import shellwords
from vinitd.vcfg.model import VCFG, Program

# Links followed before a path counts as a loop, as the kernel's limit.
MAX_LINKS = 40

IsFile = Callable[[PurePosixPath], bool]


def lookup(program: Program) -> tuple[str, list[PurePosixPath]]:
    """The name vinitd resolves for ``program``, and the paths it would try, in order."""
    words = ([program.binary] if program.binary else []) + shellwords.split(program.args)
    name = words[0]
    if name.startswith("/"):
        return name, [PurePosixPath(name)]
    found = [PurePosixPath(program.cwd or "/") / name]
    if "/" not in name:
        values = dict(shellwords.expand_env(program.env, {}))
        found += [PurePosixPath(d) / name for d in values.get("PATH", "").split(":") if d]
    return name, found


def check_programs(vcfg: VCFG, is_file: IsFile) -> None:
    """A UserError listing every program whose binary ``is_file`` cannot find."""
    problems = []
    for index, program in enumerate(vcfg.program):
        name, tried = lookup(program)
        if not any(is_file(path) for path in tried):
            where = ", ".join(str(path) for path in tried)
            problems.append(f"program[{index}]: {name!r} is not in the image (looked for {where})")
    if problems:
        raise UserError("\n".join(problems), hint="add the binary to the project or fix its path")


def in_tree(root: Path) -> IsFile:
    """Whether a guest path is a file of the tree at ``root``, following links inside it."""

    def is_file(path: PurePosixPath) -> bool:
        current = PurePosixPath("/")
        parts = list(path.relative_to("/").parts) if path.is_absolute() else list(path.parts)
        for _ in range(MAX_LINKS):
            if not parts:
                return (root / current.relative_to("/")).is_file()
            part = parts.pop(0)
            candidate = root / (current / part).relative_to("/")
            if candidate.is_symlink():
                target = PurePosixPath(candidate.readlink())
                if target.is_absolute():
                    parts, current = [*target.parts[1:], *parts], PurePosixPath("/")
                else:
                    parts = [*target.parts, *parts]
            elif part == "..":
                current = current.parent
            elif part != ".":
                current = current / part
        return False

    return is_file


def in_filesystem(raw: Path, offset: int) -> IsFile:
    """Whether a guest path is a file of the ext2/ext4 filesystem at byte ``offset`` of the
    raw disk ``raw``, following links (debugfs follows those on the way; the last one here)."""
    device = f"{raw}?offset={offset}"

    def is_file(path: PurePosixPath) -> bool:
        for _ in range(MAX_LINKS):
            kind, target = _stat(device, str(path))
            if kind != "symlink" or target is None:
                return kind == "regular"
            following = PurePosixPath(target)
            path = following if following.is_absolute() else path.parent / following
        return False

    return is_file


def _stat(device: str, path: str) -> tuple[str | None, str | None]:
    """The inode type debugfs reports for ``path`` ("regular", "symlink", ...) and a link's
    target; (None, None) when there is no such path."""
    if any(char in path for char in '"\n\\'):
        return None, None  # not a name debugfs can be asked about
    try:
        output = run(["debugfs", "-R", f'stat "{path}"', device])
    except ToolFailed:
        return None, None
    kind = target = None
    for line in output.splitlines():
        if "Type:" in line and kind is None:
            kind = line.split("Type:", 1)[1].split()[0]
        elif line.startswith("Fast link dest:"):
            target = line.split(":", 1)[1].strip().removeprefix('"').removesuffix('"')
    if kind == "symlink" and target is None:  # a long target lives in a data block
        try:
            target = run(["debugfs", "-R", f'cat "{path}"', device]).rstrip("\n")
        except ToolFailed:
            return kind, None
    return kind, target
