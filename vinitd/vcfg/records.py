"""Tables of the VCFG as frozen dataclasses: declaring fields, decoding and encoding them.

A record class declares each field with `entry(...)`, which stores a `Placement` in the
field's metadata. Decoding follows the document's form: the on-disk JSON is read as Go's
decoder reads it (keys matched case-insensitively, unknown keys ignored); user-written TOML
is read strictly (unknown keys are an error naming the key and the allowed ones, since a
silently ignored typo is the worst kind of configuration bug).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from vinitd.errors import ConfigError
from vinitd.vcfg.kinds import Form, Kind, Merge, Placement, describe

R = TypeVar("R")


def entry(
    json: str,
    kind: Kind[Any],
    *,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
    toml: str = "",
    aliases: tuple[str, ...] = (),
    omit_empty: bool = False,
    merge: Merge = Merge.OVERRIDE,
) -> Any:
    """Declare a record field with its JSON key, kind, TOML key and merge rule."""
    placement = Placement(
        json=json, kind=kind, toml=toml, aliases=aliases, omit_empty=omit_empty, merge=merge
    )
    metadata = {"vcfg": placement}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def placements(cls: type[Any]) -> Iterator[tuple[str, Placement]]:
    """(attribute name, placement) of each field of a record class, in declaration order."""
    for field in dataclasses.fields(cls):
        yield field.name, field.metadata["vcfg"]


def decode_record(cls: type[R], raw: object, path: str, form: Form) -> R:
    """Build a ``cls`` from a decoded JSON object or TOML table."""
    if not isinstance(raw, dict):
        noun = "an object" if form is Form.JSON else "a table"
        raise ConfigError(f"expected {noun}, got {describe(raw)}", path=path)
    fields = list(placements(cls))
    if form is Form.JSON:
        by_key = {placement.json.lower(): name for name, placement in fields}
    else:
        by_key = {}
        for name, placement in fields:
            for key in (placement.toml_key, *placement.aliases):
                by_key[key] = name
    values: dict[str, Any] = {}
    for key, value in raw.items():
        attribute = by_key.get(str(key).lower() if form is Form.JSON else str(key))
        if attribute is None:
            if form is Form.TOML:
                allowed = ", ".join(p.toml_key for _, p in fields)
                raise ConfigError(f"unknown key {key!r}", path=path, allowed=allowed)
            continue
        values[attribute] = value
    kwargs: dict[str, Any] = {}
    placed = dict(fields)
    for name, value in values.items():
        placement = placed[name]
        key = placement.json if form is Form.JSON else placement.toml_key
        kwargs[name] = placement.kind.decode(value, _join(path, key), form)
    return cls(**kwargs)


def encode_record(record: object) -> dict[str, Any]:
    """The JSON object of a record, keys in declaration order, empty ones omitted as declared."""
    result: dict[str, Any] = {}
    for name, placement in placements(type(record)):
        value = getattr(record, name)
        if placement.omit_empty and placement.kind.is_empty(value):
            continue
        result[placement.json] = placement.kind.encode(value)
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Record(Kind[R], Generic[R]):
    """A nested table (``[system]``, ``[vm]``, ``[info]``)."""

    def __init__(self, cls: type[R]) -> None:
        self.cls = cls
        self.expected = "a table"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> R:
        if raw is None:
            return self.cls()
        return decode_record(self.cls, raw, path, form)

    def encode(self, value: R) -> Any:
        return encode_record(value)

    def is_empty(self, value: R) -> bool:
        return bool(value == self.cls())


class RecordList(Kind[tuple[R, ...]], Generic[R]):
    """A list of tables (``[[program]]``, ``[[network]]``, ...)."""

    def __init__(self, cls: type[R]) -> None:
        self.cls = cls
        self.expected = "a list of tables"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> tuple[R, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.wrong_type(raw, path)
        return tuple(
            decode_record(self.cls, item, f"{path}[{index}]", form)
            for index, item in enumerate(raw)
        )

    def encode(self, value: tuple[R, ...]) -> Any:
        return [encode_record(item) for item in value]
