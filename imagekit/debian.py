"""Debian packages as build inputs: resolved with apt-cache, fetched with apt-get download.

Guest binaries (kernel, busybox, Python) come from Debian's archive at build time and are
never committed. A package is identified by name, version and SHA256 as apt reports them,
so the cache is keyed by content: a warm build runs apt-cache (local) but never downloads.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from imagekit.cache import BuildCache, key_of
from imagekit.errors import EnvironmentFailure, ToolFailed
from imagekit.tools import run

log = logging.getLogger(__name__)

APT_HINT = "refresh the package lists with: apt-get update"


@dataclass(frozen=True)
class Package:
    """One binary package as the local package lists describe it."""

    name: str
    version: str
    sha256: str
    depends: tuple[str, ...]

    @property
    def key(self) -> str:
        return key_of("deb", self.name, self.version, self.sha256)


APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"))


def resolve(name: str, *, cache: BuildCache | None = None) -> Package:
    """Look ``name`` up in the local package lists (no network)."""
    return resolve_all([name], cache=cache)[name]


def _apt_signature() -> str:
    """What apt's choice of candidate versions depends on: its lists and its settings."""
    parts = []
    for root in APT_STATE:
        for path in sorted(root.rglob("*")) if root.is_dir() else ():
            if path.is_file():
                info = path.stat()
                parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    return "\n".join(parts)


def resolve_all(names: Sequence[str], *, cache: BuildCache | None = None) -> dict[str, Package]:
    """Look several packages up with one apt-cache call (each call costs ~1 s here).

    With a cache, the answer is kept until apt's package lists or settings change, so a
    warm build runs no apt-cache at all.
    """
    if cache is None:
        return _query(names)
    key = key_of("apt-cache", _apt_signature(), *names)
    stored = cache.blob(
        key, lambda: json.dumps([asdict(p) for p in _query(names).values()]).encode()
    )
    packages = [
        Package(**{**item, "depends": tuple(item["depends"])}) for item in json.loads(stored)
    ]
    return {package.name: package for package in packages}


def _query(names: Sequence[str]) -> dict[str, Package]:
    try:
        output = run(["apt-cache", "show", "--no-all-versions", *names], hint=APT_HINT)
    except ToolFailed as err:
        raise EnvironmentFailure(
            f"Debian package(s) not in the package lists: {', '.join(names)}", hint=APT_HINT
        ) from err
    found: dict[str, Package] = {}
    for record in output.split("\n\n"):
        fields = _control_fields(record)
        if "Package" not in fields or "Version" not in fields or "SHA256" not in fields:
            continue
        found.setdefault(
            fields["Package"],
            Package(
                name=fields["Package"],
                version=fields["Version"],
                sha256=fields["SHA256"],
                depends=_first_alternatives(fields.get("Depends", "")),
            ),
        )
    missing = [name for name in names if name not in found]
    if missing:
        raise EnvironmentFailure(
            f"Debian package(s) without a candidate version: {', '.join(missing)}", hint=APT_HINT
        )
    return found


def _control_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9-]+):\s*(.*)$", line)
        if match:
            fields[match[1]] = match[2].strip()
    return fields


def _first_alternatives(depends: str) -> tuple[str, ...]:
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return tuple(names)


def fetch(package: Package, cache: BuildCache) -> Path:
    """The .deb file of ``package``, downloaded once into the cache."""

    def download(directory: Path) -> None:
        log.info("downloading %s %s", package.name, package.version)
        run(
            ["apt-get", "download", f"{package.name}={package.version}"],
            cwd=directory,
            hint=APT_HINT,
        )

    directory = cache.tree(package.key, download)
    debs = sorted(directory.glob("*.deb"))
    if len(debs) != 1:
        raise EnvironmentFailure(f"apt-get download left {len(debs)} files for {package.name}")
    return debs[0]


def unpacked(package: Package, cache: BuildCache) -> Path:
    """The file tree of ``package`` (``dpkg-deb -x``), unpacked once into the cache."""
    deb = fetch(package, cache)

    def extract(directory: Path) -> None:
        run(["dpkg-deb", "-x", str(deb), str(directory)])

    return cache.tree(key_of("unpacked", package.key), extract)
