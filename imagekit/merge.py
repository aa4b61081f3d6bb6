"""Merging VCFG files, later over earlier, with vorteil's per-field rules.

The rule of each field is in the model (`Placement.merge`): programs, NICs, NFS mounts,
routes and logging entries merge by index; ``env`` and ``bootstrap`` concatenate,
``logfiles``, port lists, ``dns`` and ``ntp`` union; ``[info]`` keeps the first value;
``[sysctl]`` merges key by key; anything else is replaced by a later non-empty value. In a
list, an item written ``~X`` deletes the latest earlier ``X`` (and is not kept itself).

Merging also records which file last set each field path, and which file wrote each item of
a list, so that a validation error on the merged config can name the file to edit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from vinitd.vcfg.kinds import Merge
from vinitd.vcfg.model import VCFG
from vinitd.vcfg.records import placements

R = TypeVar("R")

#: field path (``program[0].binary``, ``sysctl[net.core.somaxconn]``) -> file that set it
Sources = dict[str, str]


def merge(base: VCFG, later: VCFG, *, source: str, sources: Sources) -> VCFG:
    """``later`` merged over ``base``; ``sources`` is updated with what ``later`` set."""
    return _record(base, later, "", source, sources)


def merge_all(configs: list[tuple[str, VCFG]]) -> tuple[VCFG, Sources]:
    """Merge (source, vcfg) pairs in order, starting from an empty VCFG."""
    merged = VCFG()
    sources: Sources = {}
    for source, vcfg in configs:
        merged = merge(merged, vcfg, source=source, sources=sources)
    return merged, sources


def source_of(sources: Sources, path: str) -> str | None:
    """The file behind ``path``: the longest recorded path that is ``path`` or contains it."""
    candidate = path
    while candidate:
        if candidate in sources:
            return sources[candidate]
        cut = max(candidate.rfind("."), candidate.rfind("["))
        candidate = candidate[:cut] if cut > 0 else ""
    # A parent path that was never set itself: look for anything set below it.
    below = [p for p in sources if p.startswith(path)] if path else []
    return sources[below[-1]] if below else None


def _record(base: R, later: R, path: str, source: str, sources: Sources) -> R:
    changes: dict[str, Any] = {}
    for name, placement in placements(type(base)):
        old, new = getattr(base, name), getattr(later, name)
        here = f"{path}.{placement.toml_key}" if path else placement.toml_key
        kind = placement.kind
        match placement.merge:
            case Merge.RECORD:
                changes[name] = _record(old, new, here, source, sources)
                continue
            case Merge.BY_INDEX:
                changes[name] = _by_index(old, new, here, source, sources)
                continue
            case Merge.KEYS:
                merged_map = dict(old)
                for key, value in new.items():
                    merged_map[key] = value
                    sources[f"{here}[{key}]"] = source
                changes[name] = merged_map
                continue
        if kind.is_empty(new):
            continue
        match placement.merge:
            case Merge.OVERRIDE:
                changes[name] = new
            case Merge.FIRST:
                if not kind.is_empty(old):
                    continue
                changes[name] = new
            case Merge.CONCAT | Merge.UNION:
                union = placement.merge is Merge.UNION
                changes[name] = _combine(old, new, here, source, sources, union=union)
        sources[here] = source
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[type-var]


def _by_index(
    old: tuple[Any, ...], new: tuple[Any, ...], path: str, source: str, sources: Sources
) -> tuple[Any, ...]:
    merged = list(old)
    for index, item in enumerate(new):
        here = f"{path}[{index}]"
        if index < len(merged):
            merged[index] = _record(merged[index], item, here, source, sources)
        else:
            merged.append(_record(type(item)(), item, here, source, sources))
            sources[here] = source
    return tuple(merged)


def _combine(
    old: tuple[str, ...],
    new: tuple[str, ...],
    path: str,
    source: str,
    sources: Sources,
    *,
    union: bool,
) -> tuple[str, ...]:
    # Each item keeps the file that wrote it (``dns[0]``), so that an error in an item from
    # the first file names the first file even after a later file added items.
    earlier = sources.get(path)
    result: list[tuple[str, str | None]] = [
        (item, sources.pop(f"{path}[{index}]", earlier)) for index, item in enumerate(old)
    ]
    for item in new:
        if item.startswith("~"):
            target = item[1:]
            for position in range(len(result) - 1, -1, -1):
                if result[position][0] == target:
                    del result[position]
                    break
        elif not (union and any(item == kept for kept, _ in result)):
            result.append((item, source))
    for index, (_, origin) in enumerate(result):
        if origin is not None:
            sources[f"{path}[{index}]"] = origin
    return tuple(item for item, _ in result)
