"""The VCFG's on-disk JSON: decoded tolerantly, encoded byte for byte as vorteil writes it.

vorteil serialises with Go's encoding/json: compact, no trailing newline, keys in struct
order, non-ASCII text as UTF-8, and ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as
``\\u003c`` and so on. `dumps` reproduces those bytes so that an image's config is the same
whichever tool wrote it.
"""

from __future__ import annotations

import json
from typing import Any

from vinitd.errors import ConfigError
from vinitd.vcfg.kinds import Form
from vinitd.vcfg.model import VCFG
from vinitd.vcfg.records import decode_record, encode_record

# Go escapes these beyond what JSON requires (HTML safety and JavaScript line separators).
_GO_EXTRA_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[char])
        elif char in _GO_EXTRA_ESCAPES:
            out.append(_GO_EXTRA_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            out.append("\ufffd")  # a lone surrogate is not text; Go writes U+FFFD
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _go_json(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case str():
            return _go_string(value)
        case list():
            return "[" + ",".join(_go_json(item) for item in value) + "]"
        case dict():
            return "{" + ",".join(f"{_go_string(k)}:{_go_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} as VCFG JSON")


def to_json_object(vcfg: VCFG) -> dict[str, Any]:
    """The VCFG as the JSON object vorteil writes (ordered dict of plain values)."""
    return encode_record(vcfg)


def dumps(vcfg: VCFG) -> bytes:
    """The exact on-disk bytes: compact Go-style JSON, UTF-8, no trailing newline."""
    return _go_json(to_json_object(vcfg)).encode()


def dumps_pretty(vcfg: VCFG) -> str:
    """The same JSON indented for people (not the on-disk form)."""
    return json.dumps(to_json_object(vcfg), indent=2, ensure_ascii=False)


def loads(data: bytes | str, *, source: str | None = None) -> VCFG:
    """Decode on-disk JSON: unknown keys ignored, keys matched case-insensitively.

    Anything that is not a valid VCFG raises ConfigError naming ``source`` and the field.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = json.loads(text)
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"not UTF-8 text ({err.reason} at byte {err.start})", source=source
        ) from None
    except (json.JSONDecodeError, RecursionError) as err:
        problem = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        where = (
            f" at line {err.lineno} column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else ""
        )
        raise ConfigError(f"not valid JSON: {problem}{where}", source=source) from None
    return from_json_object(raw, source=source)


def from_json_object(raw: object, *, source: str | None = None) -> VCFG:
    """Decode an already parsed JSON value."""
    try:
        return decode_record(VCFG, raw, "", Form.JSON)
    except ConfigError as err:
        raise err.located(source=source) from None
