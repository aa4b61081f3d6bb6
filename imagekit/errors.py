"""imagekit's exceptions.

ImagekitError          one clear line for the user, an optional hint, an exit status
 +-- UserError         bad input: project, VCFG, kernel directory, sizes (exit status 2)
 +-- EnvironmentFailure  the machine lacks something: a tool, a package list (exit status 1)
      +-- ToolFailed   an external command failed; carries argv, exit code and output tail

Errors from the contracts in vinitd (ConfigError, LayoutError) are user errors too; the CLI
maps them to exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence


class ImagekitError(Exception):
    """Root of imagekit's errors: a message for the user and an optional hint."""

    exit_status = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)


class UserError(ImagekitError):
    """The input is wrong: the user can fix it."""

    exit_status = 2


class EnvironmentFailure(ImagekitError):
    """The machine is missing something that imagekit needs."""

    exit_status = 1


class ToolFailed(EnvironmentFailure):
    """An external command exited non-zero."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        output: str,
        *,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-5:])
        message = f"{argv[0]} failed with exit status {returncode}"
        if tail:
            message += f":\n{tail}"
        super().__init__(message, hint=hint)


class InvalidConfig(UserError):
    """A VCFG with one or more problems; each is a line naming file, field and problem."""

    def __init__(self, problems: Sequence[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        heading = "invalid VCFG" if count == 1 else f"invalid VCFG ({count} problems)"
        super().__init__(heading + ":\n" + "\n".join(f"  {p}" for p in self.problems), hint=hint)
