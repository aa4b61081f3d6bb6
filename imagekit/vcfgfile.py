"""Reading user-written ``.vcfg`` files (TOML) into the VCFG model.

Decoding is strict: a key the model does not know, a value of the wrong type or an unknown
choice is an error naming the file and the field path, e.g.
``app.vcfg: program[0].privilege: unknown value 'admin' (allowed: root, superuser, user)``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from imagekit.textfile import TextFileError, read_text
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
        text = read_text(path, max_size=MAX_SIZE, kind="a VCFG file")
    except TextFileError as err:
        raise ConfigError(err.problem, source=source) from None
    return parse_vcfg_text(text, source=source)
