"""Reading user-written ``.vcfg`` files (TOML) into the VCFG model.

Decoding is strict: a key the model does not know, a value of the wrong type or an unknown
choice is an error naming the file and the field path, e.g.
``app.vcfg: program[0].privilege: unknown value 'admin' (allowed: root, superuser, user)``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from vinitd.errors import ConfigError
from vinitd.vcfg.kinds import Form
from vinitd.vcfg.model import VCFG
from vinitd.vcfg.records import decode_record

MAX_SIZE = 1024 * 1024


def parse_vcfg_text(text: str, *, source: str) -> VCFG:
    """Decode TOML text; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", source=source) from None
    try:
        return decode_record(VCFG, raw, "", Form.TOML)
    except ConfigError as err:
        raise err.located(source=source) from None


def read_vcfg_file(path: Path) -> VCFG:
    """Read and decode one ``.vcfg`` file."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_SIZE:
            raise ConfigError(f"larger than {MAX_SIZE} bytes", source=source)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a VCFG file", source=source) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", source=source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text (byte {err.start})", source=source) from None
    return parse_vcfg_text(text, source=source)
