"""From a project (and extra ``--vcfg`` files) to the VCFG that goes on the disk.

The steps: read each file of the target in order, merge them, fill the default layers, and
validate. Every problem is reported at once, each naming the file that set the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagekit.defaults import with_defaults
from imagekit.errors import InvalidConfig, UserError
from imagekit.merge import Sources, merge_all, source_of
from imagekit.project import Project, Target, load_project, split_spec
from imagekit.vcfgfile import read_vcfg_file
from vinitd.errors import ConfigError
from vinitd.vcfg import codec, validate
from vinitd.vcfg.model import VCFG


@dataclass(frozen=True)
class ResolvedConfig:
    """The VCFG to write, and how it came to be."""

    vcfg: VCFG
    merged: VCFG
    sources: Sources
    files: tuple[Path, ...]
    project: Project | None = None
    target: Target | None = None

    def json(self) -> bytes:
        return codec.dumps(self.vcfg)


def resolve(
    spec: str | None,
    extra_vcfgs: Sequence[Path] = (),
    *,
    image_format: str = "raw",
) -> ResolvedConfig:
    """Resolve ``DIR[:TARGET]`` (or none: the ``--vcfg`` files alone) to a valid VCFG."""
    project: Project | None = None
    target: Target | None = None
    files: list[Path] = []
    if spec is not None:
        directory, target_name = split_spec(spec)
        project = load_project(directory)
        target = project.target(target_name)
        files += project.vcfg_paths(target)
    files += extra_vcfgs
    if not files:
        raise UserError("no VCFG to read", hint="name a project directory or pass --vcfg FILE")
    loaded: list[tuple[str, VCFG]] = []
    errors: list[str] = []
    for path in files:
        try:
            loaded.append((str(path), read_vcfg_file(path)))
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise InvalidConfig(errors)
    merged, sources = merge_all(loaded)
    final = with_defaults(merged, image_format=image_format)
    problems = validate.problems(final)
    if problems:
        raise InvalidConfig([_locate(problem, sources, files) for problem in problems])
    return ResolvedConfig(final, merged, sources, tuple(files), project, target)


def _locate(problem: ConfigError, sources: Sources, files: Sequence[Path]) -> str:
    source = source_of(sources, problem.path)
    if source is None:
        source = " + ".join(str(path) for path in files)
    return str(problem.located(source=source))
