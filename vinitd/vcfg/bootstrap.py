"""Bootstrap instructions: the steps a program waits for before it starts.

One grammar, used by the builder to validate and by vinitd to run them. Words are separated
by white space (vorteil split on single spaces, so values cannot hold spaces either way).

    SLEEP <milliseconds>
    WAIT_FILE <path> [timeout=<seconds>]
    WAIT_PORT [if=<interface>] [timeout=<seconds>] <port> [<port> ...]
    GET <url> <file>
    FIND_AND_REPLACE find=<text> replace=<text> file=<path>
    DEFINE_IF_NOT_DEFINED <NAME> <value>

Options may come in any order, each at most once, and only ``replace=`` may be empty.

Differences from vorteil, on purpose: WAIT_PORT takes a single port (vorteil demanded two
words), WAIT_FILE and WAIT_PORT take an optional ``timeout=`` (vorteil waited forever), and
malformed instructions are rejected when the image is built instead of logged at boot.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vinitd.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGITS = re.compile(r"[0-9]+")
# Options that may be given empty: replacing text with nothing deletes it.
_MAY_BE_EMPTY = frozenset({"replace"})


class Command(enum.StrEnum):
    SLEEP = "SLEEP"
    WAIT_FILE = "WAIT_FILE"
    WAIT_PORT = "WAIT_PORT"
    GET = "GET"
    FIND_AND_REPLACE = "FIND_AND_REPLACE"
    DEFINE_IF_NOT_DEFINED = "DEFINE_IF_NOT_DEFINED"


@dataclass(frozen=True)
class Instruction:
    """A parsed instruction: positional words and ``key=value`` options."""

    command: Command
    words: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def timeout(self) -> float | None:
        value = self.options.get("timeout")
        return float(value) if value is not None else None


# command -> (allowed option keys, required option keys, min words, max words)
_GRAMMAR: dict[Command, tuple[frozenset[str], frozenset[str], int, int | None]] = {
    Command.SLEEP: (frozenset(), frozenset(), 1, 1),
    Command.WAIT_FILE: (frozenset({"timeout"}), frozenset(), 1, 1),
    Command.WAIT_PORT: (frozenset({"if", "timeout"}), frozenset(), 1, None),
    Command.GET: (frozenset(), frozenset(), 2, 2),
    Command.FIND_AND_REPLACE: (
        frozenset({"find", "replace", "file"}),
        frozenset({"find", "replace", "file"}),
        0,
        0,
    ),
    Command.DEFINE_IF_NOT_DEFINED: (frozenset(), frozenset(), 2, 2),
}

USAGE = {
    Command.SLEEP: "SLEEP <milliseconds>",
    Command.WAIT_FILE: "WAIT_FILE <path> [timeout=<seconds>]",
    Command.WAIT_PORT: "WAIT_PORT [if=<interface>] [timeout=<seconds>] <port> [<port> ...]",
    Command.GET: "GET <url> <file>",
    Command.FIND_AND_REPLACE: "FIND_AND_REPLACE find=<text> replace=<text> file=<path>",
    Command.DEFINE_IF_NOT_DEFINED: "DEFINE_IF_NOT_DEFINED <NAME> <value>",
}


def parse(text: str) -> Instruction:
    """Parse one instruction; ConfigError says what is wrong and shows the usage."""
    tokens = text.split()
    if not tokens:
        raise ConfigError("empty bootstrap instruction", allowed=", ".join(Command))
    try:
        command = Command(tokens[0])
    except ValueError:
        raise ConfigError(
            f"unknown bootstrap command {tokens[0]!r}", allowed=", ".join(Command)
        ) from None
    allowed, required, least, most = _GRAMMAR[command]
    words: list[str] = []
    options: dict[str, str] = {}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if sep and key in allowed and command is not Command.DEFINE_IF_NOT_DEFINED:
            if key in options:
                raise ConfigError(f"{key}= given twice in {text!r}", allowed=USAGE[command])
            if not value and key not in _MAY_BE_EMPTY:
                raise ConfigError(f"{key}= needs a value in {text!r}", allowed=USAGE[command])
            options[key] = value
        else:
            words.append(token)
    usage = USAGE[command]
    missing = required - options.keys()
    if missing or len(words) < least or (most is not None and len(words) > most):
        raise ConfigError(f"malformed {command} instruction {text!r}", allowed=usage)
    instruction = Instruction(command, tuple(words), options)
    _check_values(instruction, text)
    return instruction


def _check_values(instruction: Instruction, text: str) -> None:
    usage = USAGE[instruction.command]
    match instruction.command:
        case Command.SLEEP:
            if not _DIGITS.fullmatch(instruction.words[0]):
                raise ConfigError(f"SLEEP needs whole milliseconds in {text!r}", allowed=usage)
        case Command.WAIT_PORT:
            for word in instruction.words:
                if not (_DIGITS.fullmatch(word) and 1 <= int(word) <= 65535):
                    raise ConfigError(f"{word!r} is not a port number in {text!r}", allowed=usage)
        case Command.GET:
            if not _is_http_url(instruction.words[0]):
                raise ConfigError(f"GET needs an http(s) URL in {text!r}", allowed=usage)
        case Command.DEFINE_IF_NOT_DEFINED:
            if not _NAME.match(instruction.words[0]):
                raise ConfigError(
                    f"{instruction.words[0]!r} is not a variable name in {text!r}", allowed=usage
                )
        case _:
            pass
    timeout = instruction.options.get("timeout")
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise ConfigError(f"timeout must be a positive number of seconds in {text!r}")


def _is_http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return url.scheme in ("http", "https") and bool(url.netloc)
