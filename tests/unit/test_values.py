"""VCFG value types: sizes (`Bytes`) and dates (`Timestamp`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vinitd.errors import ConfigError
from vinitd.vcfg.values import GIB, KIB, MAX_BYTES, MIB, TIB, Bytes, Timestamp

MST = timezone(timedelta(hours=-7))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1k", KIB), ("1ki", KIB), ("1kb", KIB), ("1kib", KIB), ("1 KiB", KIB), ("1 KB", KIB),
        ("1m", MIB), ("1mi", MIB), ("1mb", MIB), ("1mib", MIB), ("128 MiB", 128 * MIB),
        ("2g", 2 * GIB), ("2gi", 2 * GIB), ("2gb", 2 * GIB), ("1 GiB", GIB), ("1 GIB", GIB),
        ("1t", TIB), ("1ti", TIB), ("1tb", TIB), ("1 TiB", TIB), ("3 mIb", 3 * MIB),
        ("1000 B", 1000), ("1000b", 1000), ("7\tKiB", 7 * KIB), ("  64 MiB  ", 64 * MIB),
    ],
)  # fmt: skip
def test_bytes_units(text: str, value: int) -> None:
    """Every unit spelling, in any case, is a power of 1024; a lone b means bytes."""
    assert Bytes.parse(text) == Bytes(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x1f kb", 31 * KIB), ("0X10 MiB", 16 * MIB), ("0x1f", 31 * MIB), ("0xb", 11 * MIB),
        ("0x1b", 27 * MIB), ("0o17 k", 15 * KIB), ("0O17", 15 * MIB), ("017 k", 15 * KIB),
        ("0b101 B", 5), ("0B101", 5 * MIB), ("0b", 0), ("0", 0), ("00", 0),
    ],
)  # fmt: skip
def test_bytes_base_prefixes(text: str, value: int) -> None:
    """Go-style base prefixes; a b right after hex digits is a digit, after 0 it is the unit."""
    assert Bytes.parse(text) == Bytes(value)


@pytest.mark.parametrize(
    ("given_", "value"),
    [
        ("512", 512 * MIB), (512, 512 * MIB), ("1048575", 1048575 * MIB), (1, MIB),
        ("1048576", MIB), ("2097152", 2 * MIB), (3 * MIB + 1, 3 * MIB + 1),
        ("100k", 100 * KIB), ("512 B", 512), ("512b", 512), ("1 KiB", KIB),
    ],
)  # fmt: skip
def test_bytes_bare_number_quirk(given_: str | int, value: int) -> None:
    """A number without any unit below 1 MiB counts MiB; a written unit is never multiplied."""
    assert Bytes.parse(given_) == Bytes(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+64 MiB", Bytes.mib(64, delta=True)), ("+64", Bytes.mib(64, delta=True)),
        ("+1g", Bytes(GIB, delta=True)), ("+100 b", Bytes(100, delta=True)),
        ("+0", Bytes()), ("", Bytes()), ("   ", Bytes()),
    ],
)  # fmt: skip
def test_bytes_delta_and_empty(text: str, expected: Bytes) -> None:
    """A leading + is a delta; a zero delta and the empty string are the unset size."""
    assert Bytes.parse(text) == expected


@pytest.mark.parametrize(
    "given_",
    [
        "1.5 GiB", "0.5", "-1", "-1 MiB", "abc", "MiB", "1 kk", "1 ib", "1 PiB", "1 MiBs",
        "08", "0x", "0o8", "0b2", "++1", "+ 1", "+", "1_000", "1 000", "1,5 k", "\u0663",
        "1\u212a", "\uff11 MiB", "9223372036854775808 B", "8589934592 GiB", "8388608 TiB",
        pytest.param("1" * 5000, id="5000-digits"), pytest.param(10**5000, id="huge-int"),
        -1, 2**63, 1.5, None, True,
    ],
)  # fmt: skip
def test_bytes_rejects(given_: object) -> None:
    """Fractions, negatives, unknown units, bad digits and absurd sizes are ConfigErrors."""
    with pytest.raises(ConfigError) as caught:
        Bytes.parse(given_)  # type: ignore[arg-type]
    assert caught.value.allowed
    assert caught.value.path == ""
    assert caught.value.source is None


def test_bytes_largest_size() -> None:
    """2**63-1 bytes is the largest size accepted."""
    assert Bytes.parse(f"{MAX_BYTES} B").value == MAX_BYTES
    assert Bytes.parse(MAX_BYTES).value == MAX_BYTES


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (Bytes(), ""), (Bytes(0, delta=True), ""), (Bytes(1), "1 B"), (Bytes(1000), "1000 B"),
        (Bytes(1023), "1023 B"), (Bytes(KIB), "1 KiB"), (Bytes(1536 * KIB), "1536 KiB"),
        (Bytes(1536 * MIB), "1536 MiB"),
        (Bytes(GIB), "1 GiB"), (Bytes(TIB), "1024 GiB"), (Bytes.mib(64, delta=True), "+64 MiB"),
        (Bytes(1000, delta=True), "+1000 B"), (Bytes(MAX_BYTES), f"{MAX_BYTES} B"),
    ],
)  # fmt: skip
def test_bytes_text(size: Bytes, text: str) -> None:
    """Serialised with the largest exact unit of GiB, MiB, KiB, else explicit bytes."""
    assert size.text() == text
    assert str(size) == text
    assert Bytes.parse(text) == size


def test_bytes_helpers() -> None:
    """mib(), mebibytes, is_zero, and truthiness left as the dataclass default."""
    assert Bytes.mib(3) == Bytes(3 * MIB)
    assert Bytes(3 * MIB + 5).mebibytes == 3
    assert Bytes().is_zero
    assert not Bytes(1).is_zero
    assert bool(Bytes())
    with pytest.raises(ValueError):
        Bytes(-1)


SIZE_LIKE = st.from_regex(r"\A[ +-]?(0[xXoObB])?[0-9a-fA-F_.]{0,25}[ \t]*[kmgtiKMGTIbB]{0,4}\Z")


@given(st.text() | SIZE_LIKE)
def test_bytes_parse_raises_only_config_error(text: str) -> None:
    """Any text either parses to a valid size or raises ConfigError."""
    try:
        size = Bytes.parse(text)
    except ConfigError:
        return
    assert 0 <= size.value <= MAX_BYTES


@given(st.integers())
def test_bytes_parse_any_integer(number: int) -> None:
    """Any integer either parses or raises ConfigError."""
    try:
        Bytes.parse(number)
    except ConfigError:
        assert not 0 <= number <= MAX_BYTES


@given(st.builds(Bytes, st.integers(0, MAX_BYTES), st.booleans()))
def test_bytes_round_trip(size: Bytes) -> None:
    """Every size parses back from its own text."""
    assert Bytes.parse(size.text()) == size


@given(st.integers(0, 2**30), st.sampled_from([("b", 1), ("KiB", KIB), ("m", MIB), ("gb", GIB)]))
def test_bytes_unit_is_literal(number: int, unit: tuple[str, int]) -> None:
    """A number with a unit is exactly number times unit, however small."""
    assert Bytes.parse(f"{number} {unit[0]}").value == number * unit[1]


@pytest.mark.parametrize(
    ("text", "layout", "moment"),
    [
        ("Mon Jan  2 15:04:05 2006", "ansic", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("Sat Dec 14 08:30:00 2024", "ansic", datetime(2024, 12, 14, 8, 30, tzinfo=UTC)),
        ("Mon Jan  2 15:04:05 MST 2006", "unixdate", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("Tue Mar 5 08:00:00 UTC 2024", "unixdate", datetime(2024, 3, 5, 8, tzinfo=UTC)),
        ("Mon Jan 02 15:04:05 -0700 2006", "rubydate", datetime(2006, 1, 2, 15, 4, 5, tzinfo=MST)),
        ("02 Jan 06 15:04 MST", "rfc822", datetime(2006, 1, 2, 15, 4, tzinfo=UTC)),
        ("02 Jan 06 15:04 -0700", "rfc822z", datetime(2006, 1, 2, 15, 4, tzinfo=MST)),
        ("Monday, 02-Jan-06 15:04:05 MST", "rfc850", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("Mon, 02 Jan 2006 15:04:05 GMT", "rfc1123", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("Mon, 02 Jan 2006 15:04:05 -0700", "rfc1123z", datetime(2006, 1, 2, 15, 4, 5, tzinfo=MST)),
        ("mon, 02 JAN 2006 15:04:05 PST", "rfc1123", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("2006-01-02T15:04:05Z", "rfc3339", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("2006-01-02T15:04:05-07:00", "rfc3339", datetime(2006, 1, 2, 15, 4, 5, tzinfo=MST)),
        ("2006-01-02T15:04:05+00:00", "rfc3339", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        (
            "2006-01-02T15:04:05.999999999-07:00",
            "rfc3339nano",
            datetime(2006, 1, 2, 15, 4, 5, 999999, tzinfo=MST),
        ),
        ("2006-01-02T15:04:05.5Z", "rfc3339nano", datetime(2006, 1, 2, 15, 4, 5, 500000, UTC)),
        ("Jan  2 15:04:05", "stamp", datetime(1, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("Feb 28 7:04:05", "stamp", datetime(1, 2, 28, 7, 4, 5, tzinfo=UTC)),
        ("1136214245", "epoch", datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("0", "epoch", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamp_layouts(text: str, layout: str, moment: datetime) -> None:
    """Each Go layout parses to its moment and keeps the text it was written as."""
    stamp = Timestamp.parse(f"  {text}\n")
    assert stamp == Timestamp(text, moment, layout)
    assert stamp.is_set
    assert str(stamp) == text


@pytest.mark.parametrize(
    ("text", "layout", "year"),
    [
        ("2006 01 02", "2006 01 02", 2006), ("2006-01-02", "2006-01-02", 2006),
        ("2006/01/02", "2006/01/02", 2006), ("2006.01.02", "2006.01.02", 2006),
        ("02 01 2006", "02 01 2006", 2006), ("02-01-2006", "02-01-2006", 2006),
        ("02/01/2006", "02/01/2006", 2006), ("02.01.2006", "02.01.2006", 2006),
        ("02 01 06", "02 01 06", 2006), ("02-01-06", "02-01-06", 2006),
        ("02/01/06", "02/01/06", 2006), ("02.01.06", "02.01.06", 2006),
        ("02.01.68", "02.01.06", 2068), ("02/01/69", "02/01/06", 1969),
        ("02-01-99", "02-01-06", 1999), ("02  01  00", "02 01 06", 2000),
    ],
)  # fmt: skip
def test_timestamp_date_only(text: str, layout: str, year: int) -> None:
    """Date-only forms, year-first and day-first; two-digit years split at 69 as in Go."""
    assert Timestamp.parse(text) == Timestamp(text, datetime(year, 1, 2, tzinfo=UTC), layout)


@pytest.mark.parametrize(
    ("given_", "text", "layout"),
    [
        (0, "0", "epoch"), (1136214245, "1136214245", "epoch"),
        (date(2024, 5, 6), "2024-05-06", "2006-01-02"),
        (datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "2024-05-06T07:08:09Z", "rfc3339"),
        (datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09Z", "rfc3339"),
        (datetime(2024, 5, 6, 7, 8, 9, tzinfo=MST), "2024-05-06T07:08:09-07:00", "rfc3339"),
        (datetime(2024, 5, 6, 7, 8, 9, 120000, UTC), "2024-05-06T07:08:09.120000Z", "rfc3339nano"),
    ],
)  # fmt: skip
def test_timestamp_from_toml_values(given_: int | date, text: str, layout: str) -> None:
    """Epoch integers and TOML dates and date-times get their text form; naive counts as UTC."""
    stamp = Timestamp.parse(given_)
    assert (stamp.text, stamp.layout) == (text, layout)
    assert Timestamp.parse(text) == stamp


def test_timestamp_unset() -> None:
    """The empty string is the unset timestamp."""
    assert Timestamp.parse("  ") == Timestamp()
    assert not Timestamp().is_set
    assert str(Timestamp()) == ""


@pytest.mark.parametrize(
    "given_",
    [
        "2006-02-30", "30.02.2006", "29/02/2023", "2006-13-01", "2006-00-10",
        "2006-01-02T24:00:00Z", "2006-01-02T15:60:05Z", "2006-01-02T15:04:05+24:00",
        "2006-01-02T15:04:05+05:60", "2006-01-02T15:04:05.1234567890Z", "2006-01-02t15:04:05z",
        "2006-01-02T15:04:05", "2006-1-2", "2-1-2006", "Funday, 02-Jan-06 15:04:05 MST",
        "02 Foo 06 15:04 MST", "02 Jan 06 15:04 mst", "02 Jan 06 15:04 ABCDEF", "0000-01-01",
        "yesterday", "-5", "99999999999999", pytest.param("1" * 5000, id="5000-digits"),
        "\u0661\u0662", -5, pytest.param(10**5000, id="huge-int"), True,
        1.5, None, time(1, 2), datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=30))),
    ],
)  # fmt: skip
def test_timestamp_rejects(given_: object) -> None:
    """Impossible dates, unknown forms and wrong types are ConfigErrors that say what is allowed."""
    with pytest.raises(ConfigError) as caught:
        Timestamp.parse(given_)  # type: ignore[arg-type]
    assert caught.value.allowed
    assert caught.value.path == ""


DATE_LIKE = st.text(alphabet="0123456789 -/.:,TZ+MSTJanMonFebday", max_size=40)


@given(st.text() | DATE_LIKE)
def test_timestamp_parse_raises_only_config_error(text: str) -> None:
    """Any text either parses to an aware moment or raises ConfigError."""
    try:
        stamp = Timestamp.parse(text)
    except ConfigError:
        return
    assert stamp.text == text.strip()
    assert stamp.moment is None or stamp.moment.tzinfo is not None


@given(st.integers())
def test_timestamp_parse_any_integer(number: int) -> None:
    """Any integer is epoch seconds or a ConfigError."""
    try:
        Timestamp.parse(number)
    except ConfigError:
        assert number < 0 or number > 253402300799


OFFSETS = st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(timezones=OFFSETS | st.none()))
def test_timestamp_datetime_round_trip(moment: datetime) -> None:
    """A TOML date-time keeps its moment and re-parses from its own text."""
    stamp = Timestamp.parse(moment)
    assert stamp.moment == (moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    assert Timestamp.parse(stamp.text) == stamp
