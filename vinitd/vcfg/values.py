"""Value types of the VCFG: sizes (`Bytes`) and dates (`Timestamp`).

Each type parses what a user writes in a VCFG and serialises to text that parses back to the
same value. Every parse failure is a `ConfigError` without a field path or source; the caller
places it with `ConfigError.located`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from vinitd.errors import ConfigError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
MAX_BYTES = (1 << 63) - 1
"""The largest size accepted: what fits a signed 64-bit integer, as in vorteil."""

_SIZE = re.compile(
    r"""
    (?P<delta>\+)?
    (?P<number>0x[0-9a-f]+ | 0o[0-7]+ | 0b[01]+ | 0[0-7]* | [1-9][0-9]*)
    [ \t]*
    (?P<unit>[kmgt]i?b? | b)?
    """,
    re.ASCII | re.IGNORECASE | re.VERBOSE,
)
_UNIT_FACTORS = {"b": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}
_SERIALISED_UNITS = ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB"))
_BASE_PREFIXES = {"0x": 16, "0o": 8, "0b": 2}
_SIZE_ALLOWED = (
    'a whole number and an optional unit B, KiB, MiB, GiB, TiB (or k, m, g, t), e.g. "128 MiB";'
    " a leading + for extra free space; a bare number below 1048576 counts MiB"
)


def _shown(text: str) -> str:
    """Quote user input for an error message, cut short when long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _size_integer(literal: str) -> int:
    """Convert a number the size pattern accepted, with Go's base prefixes (017 is octal)."""
    base = _BASE_PREFIXES.get(literal[:2].lower())
    if base is not None:
        digits = literal[2:]
    elif literal.startswith("0") and len(literal) > 1:
        base, digits = 8, literal[1:]
    else:
        base, digits = 10, literal
    # Anything past 64 significant digits is too large in any base, and int() stays cheap.
    if len(digits.lstrip("0")) > 64:
        raise ConfigError(f"size {_shown(literal)} is too large", allowed=_SIZE_ALLOWED)
    return int(digits, base)


@dataclass(frozen=True)
class Bytes:
    """A size in bytes, as written for `ram` and `disk-size`.

    `delta` marks "+N": N bytes of free space on top of what the contents need. A zero delta
    means the same as no size at all, so it is stored as a plain zero.

    Text forms (`Bytes.parse`): `"128 MiB"`, `"2g"`, `"+64 MiB"`, `"0x10 KiB"`, `512`. Units
    are powers of 1024 whatever their spelling. A number with no unit at all below 1 MiB counts
    MiB (`ram = 512` is 512 MiB), as in vorteil. Unlike vorteil, a number with a unit is never
    multiplied again (vorteil read `"100k"` as 100 GiB). Numbers take Go's base prefixes
    (`0x1f`, `0o17`, `017`, `0b101`); a `b` right after hex digits is a digit (`0x1b` is 27), so
    a unit after a hex number wants a space.

    Serialised (`Bytes.text`) with the largest of GiB, MiB and KiB that divides exactly, and as
    `"<n> B"` otherwise. vorteil wrote such sizes as bare digits, which its own parser then read
    back as MiB; the explicit `B` keeps every size stable through a round trip.
    """

    value: int = 0
    delta: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.value <= MAX_BYTES:
            raise ValueError(f"size out of range 0..{MAX_BYTES}: {self.value}")
        if self.value == 0 and self.delta:
            object.__setattr__(self, "delta", False)

    @classmethod
    def mib(cls, count: int, *, delta: bool = False) -> Bytes:
        """`count` mebibytes."""
        return cls(count * MIB, delta=delta)

    @classmethod
    def parse(cls, text: str | int) -> Bytes:
        """Read a size as written in a VCFG; an integer counts like its decimal text.

        >>> Bytes.parse("+64 MiB")
        Bytes(value=67108864, delta=True)
        """
        if isinstance(text, bool) or not isinstance(text, str | int):
            raise ConfigError(
                f"a size must be text or a whole number, not {type(text).__name__}",
                allowed=_SIZE_ALLOWED,
            )
        if isinstance(text, int):
            if text < 0:
                raise ConfigError(f"size {text} is negative", allowed=_SIZE_ALLOWED)
            if text > MAX_BYTES:
                raise ConfigError("size is too large", allowed=_SIZE_ALLOWED)
            text = str(text)

        written = text.strip()
        if not written:
            return cls()

        match = _SIZE.fullmatch(written)
        if match is None:
            raise ConfigError(_size_problem(written), allowed=_SIZE_ALLOWED)

        value = _size_integer(match["number"])
        unit = match["unit"]
        if unit:
            value *= _UNIT_FACTORS[unit[0].lower()]
        elif value < MIB:
            value *= MIB
        if value > MAX_BYTES:
            raise ConfigError(f"size {_shown(written)} is too large", allowed=_SIZE_ALLOWED)
        return cls(value, delta=match["delta"] is not None)

    @property
    def is_zero(self) -> bool:
        """True for the unset size (0, "auto" for `disk-size`)."""
        return self.value == 0

    @property
    def mebibytes(self) -> int:
        """The size in whole MiB, rounded down."""
        return self.value // MIB

    def text(self) -> str:
        """The VCFG form: `""` for zero, else e.g. `"1 GiB"`, `"+64 MiB"`, `"1000 B"`."""
        if self.value == 0:
            return ""
        sign = "+" if self.delta else ""
        for factor, name in _SERIALISED_UNITS:
            if self.value % factor == 0:
                return f"{sign}{self.value // factor} {name}"
        return f"{sign}{self.value} B"

    def __str__(self) -> str:
        return self.text()


def _size_problem(written: str) -> str:
    if written.startswith("-"):
        return f"size {_shown(written)} is negative"
    if "." in written:
        return f"size {_shown(written)} is not a whole number"
    return f"{_shown(written)} is not a size"


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Go layout elements and what each matches. Names match without regard to case, as Go's do;
# the weekday is checked for spelling only and otherwise ignored, as Go does.
_DAY_NAMES = "|".join(_DAYS)
_DAY_ABBREVIATIONS = "|".join(day[:3] for day in _DAYS)
_MONTH_ABBREVIATIONS = "|".join(_MONTHS)
_LAYOUT_ELEMENTS = (
    ("Monday", f"(?i:{_DAY_NAMES})"),
    ("Mon", f"(?i:{_DAY_ABBREVIATIONS})"),
    ("Jan", f"(?P<month_name>(?i:{_MONTH_ABBREVIATIONS}))"),
    ("2006", "(?P<year>[0-9]{4})"),
    ("Z07:00", "(?P<offset>Z|[+-][0-9]{2}:[0-9]{2})"),
    ("-0700", "(?P<offset>[+-][0-9]{4})"),
    ("MST", "(?P<zone>[A-Z]{3,5})"),
    (".999999999", r"\.(?P<fraction>[0-9]{1,9})"),
    ("_2", "(?P<day>[0-9]{1,2})"),
    ("01", "(?P<month>[0-9]{2})"),
    ("02", "(?P<day>[0-9]{2})"),
    ("06", "(?P<short_year>[0-9]{2})"),
    ("15", "(?P<hour>[0-9]{1,2})"),
    ("04", "(?P<minute>[0-9]{2})"),
    ("05", "(?P<second>[0-9]{2})"),
    (" ", " +"),
)


def _compile_layout(layout: str) -> re.Pattern[str]:
    """Translate a Go time layout into a regular expression with named fields."""
    parts: list[str] = []
    rest = layout
    while rest:
        for element, pattern in _LAYOUT_ELEMENTS:
            if rest.startswith(element):
                parts.append(pattern)
                rest = rest[len(element) :]
                break
        else:
            parts.append(re.escape(rest[0]))
            rest = rest[1:]
    return re.compile("".join(parts), re.ASCII)


_DATE_ONLY_LAYOUTS = (
    "2006 01 02",
    "2006-01-02",
    "2006/01/02",
    "2006.01.02",
    "02 01 2006",
    "02-01-2006",
    "02/01/2006",
    "02.01.2006",
    "02 01 06",
    "02-01-06",
    "02/01/06",
    "02.01.06",
)
# (name, Go layout); the date-only layouts are named by themselves.
_LAYOUTS = (
    ("ansic", "Mon Jan _2 15:04:05 2006"),
    ("unixdate", "Mon Jan _2 15:04:05 MST 2006"),
    ("rubydate", "Mon Jan 02 15:04:05 -0700 2006"),
    ("rfc822", "02 Jan 06 15:04 MST"),
    ("rfc822z", "02 Jan 06 15:04 -0700"),
    ("rfc850", "Monday, 02-Jan-06 15:04:05 MST"),
    ("rfc1123", "Mon, 02 Jan 2006 15:04:05 MST"),
    ("rfc1123z", "Mon, 02 Jan 2006 15:04:05 -0700"),
    ("rfc3339", "2006-01-02T15:04:05Z07:00"),
    ("rfc3339nano", "2006-01-02T15:04:05.999999999Z07:00"),
    ("stamp", "Jan _2 15:04:05"),
    *((layout, layout) for layout in _DATE_ONLY_LAYOUTS),
)


@functools.cache
def _layout_patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The layouts compiled, on first use: a VCFG without a date never pays for it (about
    70 ms of vinitd's start under emulation)."""
    return tuple((name, _compile_layout(layout)) for name, layout in _LAYOUTS)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_EPOCH = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds())
_DATE_ALLOWED = (
    "epoch seconds, RFC 3339 (2006-01-02T15:04:05Z), RFC 1123 (Mon, 02 Jan 2006 15:04:05 MST),"
    " RFC 822, RFC 850, ANSIC, UnixDate, RubyDate, Stamp (Jan _2 15:04:05), or a date:"
    " 2006-01-02, 02-01-2006 or 02-01-06, separated by '-', '/', '.' or ' '"
)


@dataclass(frozen=True)
class Timestamp:
    """A point in time as written for `date`, kept with the exact text it was written as.

    `text` is the stripped input and also the serialised form, so a timestamp goes back out in
    the format it came in. `moment` is the time it names, always aware: UTC when the text has
    no zone, and UTC for any zone abbreviation (Go gives unknown abbreviations offset 0).
    `layout` names the format: `"epoch"`, `"rfc3339"`, `"ansic"`, ... or, for date-only
    forms, the Go layout itself (`"2006-01-02"`). The unset timestamp has empty fields.

    Stamp (`Jan _2 15:04:05`) carries no year; Go puts it in year 0, which Python lacks, so it
    lands in year 1. Sub-microsecond digits stay in `text` and are dropped from `moment`.
    """

    text: str = ""
    moment: datetime | None = None
    layout: str = ""

    @classmethod
    def parse(cls, value: str | int | date | datetime) -> Timestamp:
        """Read a timestamp: text, epoch seconds, or a TOML date or date-time.

        >>> Timestamp.parse("2006-01-02").moment
        datetime.datetime(2006, 1, 2, 0, 0, tzinfo=datetime.timezone.utc)
        """
        if isinstance(value, bool):
            raise ConfigError("a date cannot be true or false", allowed=_DATE_ALLOWED)
        if isinstance(value, int):
            if not 0 <= value <= _MAX_EPOCH:
                raise ConfigError(
                    f"epoch seconds must be between 0 and {_MAX_EPOCH}", allowed=_DATE_ALLOWED
                )
            return cls._from_text(str(value))
        if isinstance(value, datetime):
            return cls._from_text(_rfc3339(value))
        if isinstance(value, date):
            return cls._from_text(value.isoformat())
        if isinstance(value, str):
            return cls._from_text(value.strip())
        raise ConfigError(
            f"a date must be text, a number or a date, not {type(value).__name__}",
            allowed=_DATE_ALLOWED,
        )

    @classmethod
    def _from_text(cls, text: str) -> Timestamp:
        if not text:
            return cls()
        if text.isascii() and text.isdigit():
            return cls(text, _epoch_moment(text), "epoch")

        for name, pattern in _layout_patterns():
            match = pattern.fullmatch(text)
            if match is None:
                continue
            try:
                moment = _moment(match)
            except ValueError as err:
                raise ConfigError(
                    f"{_shown(text)} is not a valid date: {err}", allowed=_DATE_ALLOWED
                ) from err
            return cls(text, moment, name)

        raise ConfigError(f"{_shown(text)} is not a recognised date", allowed=_DATE_ALLOWED)

    @property
    def is_set(self) -> bool:
        """False for the unset timestamp (empty `date`)."""
        return self.moment is not None

    def __str__(self) -> str:
        return self.text


def _epoch_moment(digits: str) -> datetime:
    significant = digits.lstrip("0")
    if len(significant) > len(str(_MAX_EPOCH)) or int(significant or "0") > _MAX_EPOCH:
        raise ConfigError(f"epoch seconds {_shown(digits)} out of range", allowed=_DATE_ALLOWED)
    return _EPOCH + timedelta(seconds=int(digits))


def _moment(match: re.Match[str]) -> datetime:
    """Build the datetime a layout match names; ValueError for impossible values."""
    fields = {name: text for name, text in match.groupdict().items() if text is not None}
    if "year" in fields:
        year = int(fields["year"])
    elif "short_year" in fields:
        short = int(fields["short_year"])
        year = short + (1900 if short >= 69 else 2000)
    else:
        year = 1
    if "month_name" in fields:
        month = _MONTHS.index(fields["month_name"].lower()) + 1
    else:
        month = int(fields["month"])
    microsecond = int(fields.get("fraction", "").ljust(6, "0")[:6])
    return datetime(
        year,
        month,
        int(fields["day"]),
        int(fields.get("hour", "0")),
        int(fields.get("minute", "0")),
        int(fields.get("second", "0")),
        microsecond,
        tzinfo=_zone(fields.get("offset")),
    )


def _zone(offset: str | None) -> timezone:
    """The zone of a numeric offset (`Z`, `+07:00`, `-0700`); UTC when there is none."""
    if offset is None or offset == "Z":
        return UTC
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if minutes >= 60:
        raise ValueError(f"zone offset minutes {minutes} must be below 60")
    if hours >= 24:
        raise ValueError(f"zone offset hours {hours} must be below 24")
    shift = timedelta(hours=hours, minutes=minutes)
    if not shift:
        return UTC
    return timezone(-shift if offset.startswith("-") else shift)


def _rfc3339(moment: datetime) -> str:
    """RFC 3339 text of a datetime, `Z` for UTC; a naive datetime counts as UTC."""
    offset = moment.utcoffset() or timedelta(0)
    minutes, rest = divmod(offset, timedelta(minutes=1))
    if rest:
        raise ConfigError(
            f"zone offset {offset} of {moment} is not whole minutes",
            allowed="zone offsets in whole minutes, as RFC 3339 writes them",
        )
    local = moment.replace(tzinfo=None).isoformat()
    if not minutes:
        return local + "Z"
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{local}{sign}{hours:02d}:{minutes:02d}"
