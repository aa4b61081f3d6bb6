"""The exceptions of the contracts that vinitd defines (VCFG and disk layout).

VinitdError
 +-- ConfigError    a VCFG that cannot be decoded or is invalid; names the input, the
 |                  field path (``program[0].privilege``), the problem and what is allowed
 +-- LayoutError    a disk or image without the vorteil layout (GPT, config block, ...)
      +-- BootDiskNotFound   no disk holds the root partition's PARTUUID

imagekit and vmtest catch these and turn them into one clear line for their users.
"""

from __future__ import annotations


class VinitdError(Exception):
    """Root of every error raised on purpose by the vinitd package."""


class ConfigError(VinitdError):
    """A VCFG (TOML or JSON) that is malformed or invalid.

    ``source`` is the file or input it came from (None when unknown), ``path`` the field path
    inside it (empty for the whole document), ``problem`` what is wrong and ``allowed`` what
    would have been accepted.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str = "",
        source: str | None = None,
        allowed: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = path
        self.source = source
        self.allowed = allowed
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(part for part in (self.source, self.path) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        return text

    def located(self, *, source: str | None = None, prefix: str = "") -> ConfigError:
        """Return a copy placed in ``source`` and under the field path ``prefix``."""
        path = self.path
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
        return ConfigError(
            self.problem,
            path=path,
            source=source if source is not None else self.source,
            allowed=self.allowed,
        )


class LayoutError(VinitdError):
    """A disk or image that does not have the vorteil layout."""

    def __init__(self, problem: str, *, source: str | None = None) -> None:
        self.problem = problem
        self.source = source
        super().__init__(f"{source}: {problem}" if source else problem)


class BootDiskNotFound(LayoutError):
    """No disk carries the root partition's PARTUUID."""
