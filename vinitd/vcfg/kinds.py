"""Field kinds: how one VCFG value is read from JSON or TOML, written to JSON, and judged empty.

Each field of the model (see `model`) names its kind in its metadata; the codec and the merge
walk the fields and let the kind deal with the value. "Empty" is vorteil's notion: the zero
value of the Go type, which JSON omits and which a later file does not override with.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vinitd.errors import ConfigError
from vinitd.vcfg.values import Bytes, Timestamp

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)

UINT_MAX = 2**64 - 1


class Form(enum.Enum):
    """Which document a value is decoded from: keys and some types differ."""

    JSON = "json"
    TOML = "toml"


class Merge(enum.StrEnum):
    """How a later VCFG file's value combines with an earlier one's."""

    OVERRIDE = "override"  # a non-empty later value replaces the earlier one
    FIRST = "first"  # the first non-empty value stays ([info])
    CONCAT = "concat"  # lists are concatenated; "~X" deletes the latest earlier X
    UNION = "union"  # lists are unioned in order; "~X" deletes X
    RECORD = "record"  # a nested table merged field by field
    BY_INDEX = "by_index"  # lists of tables merged entry by entry, extra entries appended
    KEYS = "keys"  # a table of strings merged key by key


class Kind(Generic[T]):
    """Base of the kinds; ``decode`` raises ConfigError with ``path`` set."""

    #: a human name of the expected type, for error messages
    expected = "a value"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> Any:
        return value

    def is_empty(self, value: T) -> bool:
        return not value

    def wrong_type(self, raw: object, path: str) -> ConfigError:
        return ConfigError(f"expected {self.expected}, got {describe(raw)}", path=path)


def describe(raw: object) -> str:
    """Name a decoded JSON/TOML value's type the way a user would."""
    match raw:
        case None:
            return "null"
        case bool():
            return f"a boolean ({str(raw).lower()})"
        case int() | float():
            return f"a number ({raw})"
        case str():
            return f"a string ({raw!r})"
        case list() | tuple():
            return "a list"
        case dict():
            return "a table"
        case datetime.date():
            return f"a date ({raw.isoformat()})"
    return type(raw).__name__


class Text(Kind[str]):
    expected = "a string"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise self.wrong_type(raw, path)
        return raw


class UInt(Kind[int]):
    """A non-negative integer up to ``maximum`` (Go's uint by default)."""

    def __init__(self, maximum: int = UINT_MAX) -> None:
        self.maximum = maximum
        self.expected = f"a whole number from 0 to {maximum}"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> int:
        if raw is None:
            return 0
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.wrong_type(raw, path)
        if not 0 <= raw <= self.maximum:
            raise ConfigError(f"{raw} is out of range", path=path, allowed=f"0 to {self.maximum}")
        return raw


class Flag(Kind[bool]):
    expected = "true or false"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> bool:
        if raw is None:
            return False
        if not isinstance(raw, bool):
            raise self.wrong_type(raw, path)
        return raw


class TextList(Kind[tuple[str, ...]]):
    """A list of strings; ``null_when_empty`` writes an empty list as JSON null."""

    expected = "a list of strings"

    def __init__(self, *, null_when_empty: bool = False) -> None:
        self.null_when_empty = null_when_empty

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple):
            raise self.wrong_type(raw, path)
        items = []
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                raise self.wrong_type(item, f"{path}[{index}]")
            items.append(item)
        return tuple(items)

    def encode(self, value: tuple[str, ...]) -> Any:
        if not value and self.null_when_empty:
            return None
        return list(value)


class TextMap(Kind[Mapping[str, str]]):
    expected = "a table of strings"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> Mapping[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.wrong_type(raw, path)
        result: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"expected a string, got {describe(value)}", path=f"{path}[{key}]"
                )
            result[str(key)] = value
        return result

    def encode(self, value: Mapping[str, str]) -> Any:
        return dict(sorted(value.items()))


class ByteSize(Kind[Bytes]):
    expected = 'a size such as "128 MiB" or "+64 MiB"'

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> Bytes:
        if raw is None:
            return Bytes()
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise self.wrong_type(raw, path)
        try:
            return Bytes.parse(raw)
        except ConfigError as err:
            raise err.located(prefix=path) from None

    def encode(self, value: Bytes) -> Any:
        return value.text()

    def is_empty(self, value: Bytes) -> bool:
        return value.value == 0


class Stamp(Kind[Timestamp]):
    expected = "a date, a time stamp or epoch seconds"

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> Timestamp:
        if raw is None:
            return Timestamp()
        if isinstance(raw, bool) or not isinstance(raw, str | int | datetime.date):
            raise self.wrong_type(raw, path)
        try:
            return Timestamp.parse(raw)
        except ConfigError as err:
            raise err.located(prefix=path) from None

    def encode(self, value: Timestamp) -> Any:
        return value.text

    def is_empty(self, value: Timestamp) -> bool:
        return not value.text


class Choice(Kind[E | None], Generic[E]):
    """One of a StrEnum's values; the empty string means unset (None)."""

    def __init__(self, choices: type[E]) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(repr(c.value) for c in choices if c.value)

    def decode(self, raw: object, path: str, form: Form = Form.JSON) -> E | None:
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            raise self.wrong_type(raw, path)
        try:
            return self.choices(raw)
        except ValueError:
            allowed = ", ".join(c.value for c in self.choices if c.value)
            raise ConfigError(f"unknown value {raw!r}", path=path, allowed=allowed) from None

    def encode(self, value: E | None) -> Any:
        return "" if value is None else value.value

    def is_empty(self, value: E | None) -> bool:
        return value is None or value.value == ""


@dataclass(frozen=True)
class Placement:
    """Where a field goes on disk and how files merge it (the field's metadata)."""

    json: str
    kind: Kind[Any]
    toml: str = ""
    aliases: tuple[str, ...] = ()
    omit_empty: bool = False
    merge: Merge = Merge.OVERRIDE

    @property
    def toml_key(self) -> str:
        return self.toml or self.json
