"""Shell-word splitting as vorteil does it (go-shellwords v1.0.11), its inverse and `$KEY` rules.

vorteil splits program args, environment values and kernel args with the same rules:

* words are separated by unquoted space, tab, CR and LF;
* ``'…'`` and ``"…"`` quote; a backslash outside single quotes makes the next character
  literal (also inside double quotes, where ``"\\a"`` is ``a``);
* ``$( … )`` and ``` `…` ``` are kept verbatim, whitespace and quotes included (nothing is
  executed); an unquoted ``(`` anywhere else is an error;
* an unquoted ``;``, ``&``, ``|``, ``<`` or ``>`` ends parsing and the rest is discarded; before
  ``>``, a word made only of digits is the redirected descriptor and is discarded too;
* with variable expansion, ``$NAME`` and ``${NAME}`` are replaced in the de-quoted text of each
  word, so even single-quoted or backslash-escaped ``$NAME`` expands; a backslash in that text
  escapes the next character (``\\\\$NAME`` and ``'\\$NAME'`` stay literal); a ``${`` without a
  closing ``}`` leaves the whole word unexpanded. Unless the word ends in a double-quoted part,
  the result is split again on whitespace, so an empty expansion yields no word at all.

Deviations from vorteil:

* ``strict=True`` makes an unquoted ``;&|<>`` an error instead of the silent cut, so that
  imagekit can reject what vorteil would quietly truncate.
* The second split of an expanded word is on whitespace only. vorteil parses the text again as
  shell syntax, so a quote, backslash or ``;&|<>()`` in a variable's value (or in de-quoted text)
  could fail the entry or cut it short; here they stay literal.
* An unquoted ``)`` that closes no ``$(`` is an error. vorteil opens a ``$(`` group with it,
  which fails as unterminated unless another ``)`` happens to follow.
* Errors name the problem; vorteil only says "invalid command line string".
* `substitute` replaces the longest keys first, in one pass (quirk Q7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import Enum, auto

from vinitd.errors import ConfigError

_BLANKS = frozenset(" \t\r\n")
_TERMINATORS = frozenset(";&|<>")
_BLANK_RUN = re.compile(r"[ \t\r\n]+")
_NEEDS_QUOTES = frozenset("'\"\\$`;&|<>()#{}")


class _Quoting(Enum):
    """Where the parser is: outside quotes, or inside which kind of quoted or verbatim part."""

    NONE = auto()
    SINGLE = auto()
    DOUBLE = auto()
    BACKQUOTE = auto()
    DOLLAR_PAREN = auto()


class _Ending(Enum):
    """What the current word has seen last: nothing yet, plain text, or a closing ``"``."""

    NOTHING = auto()
    PLAIN = auto()
    DOUBLE_QUOTED = auto()


_VERBATIM = (_Quoting.BACKQUOTE, _Quoting.DOLLAR_PAREN)
_UNTERMINATED = {
    _Quoting.SINGLE: "unterminated single quote",
    _Quoting.DOUBLE: "unterminated double quote",
    _Quoting.BACKQUOTE: "unterminated backquote",
    _Quoting.DOLLAR_PAREN: "unterminated '$('",
}
_OPENERS = {"`": _Quoting.BACKQUOTE, "(": _Quoting.DOLLAR_PAREN}
_CLOSERS = {
    _Quoting.SINGLE: "'",
    _Quoting.DOUBLE: '"',
    _Quoting.BACKQUOTE: "`",
    _Quoting.DOLLAR_PAREN: ")",
}


def split(text: str, *, env: Mapping[str, str] | None = None, strict: bool = False) -> list[str]:
    """Split ``text`` into words; expand ``$NAME``/``${NAME}`` from ``env`` when it is given.

    Without ``env`` a ``$`` is an ordinary character. Unknown names expand to the empty
    string. ``strict`` rejects an unquoted ``;&|<>`` instead of discarding the rest.

    >>> split("ls -l 'my file' \\"a b\\"c")
    ['ls', '-l', 'my file', 'a bc']
    >>> split("echo $HOME/x", env={"HOME": "/root"})
    ['echo', '/root/x']
    """
    words: list[str] = []
    buf: list[str] = []
    quoting = _Quoting.NONE
    ending = _Ending.NOTHING
    escaped = False
    for char in text:
        if escaped:
            buf.append("\\" + char if quoting in _VERBATIM else char)
            escaped = False
            ending = _Ending.PLAIN
        elif char == "\\":
            if quoting is _Quoting.SINGLE:
                buf.append(char)
            else:
                escaped = True
        elif char in _BLANKS and quoting is _Quoting.NONE:
            if ending is not _Ending.NOTHING:
                words.extend(_finish("".join(buf), ending, env))
                buf, ending = [], _Ending.NOTHING
        elif quoting is _Quoting.NONE and char in _TERMINATORS:
            if strict:
                raise ConfigError(f"unquoted {char!r} is not allowed (quote it)")
            if char == ">" and _is_descriptor("".join(buf)):
                ending = _Ending.NOTHING
            break
        else:
            quoting, ending = _step(char, quoting, ending, buf)
    if escaped:
        raise ConfigError("trailing backslash escapes nothing")
    if quoting is not _Quoting.NONE:
        raise ConfigError(_UNTERMINATED[quoting])
    if ending is not _Ending.NOTHING:
        words.extend(_finish("".join(buf), ending, env))
    return words


def _step(
    char: str, quoting: _Quoting, ending: _Ending, buf: list[str]
) -> tuple[_Quoting, _Ending]:
    """Take one character that is neither an escape nor a word break; return the new state."""
    if quoting is _Quoting.NONE:
        return _step_unquoted(char, ending, buf)
    closes = char == _CLOSERS[quoting]
    if closes and quoting is _Quoting.SINGLE:
        return _Quoting.NONE, _Ending.PLAIN
    if closes and quoting is _Quoting.DOUBLE:
        return _Quoting.NONE, _Ending.DOUBLE_QUOTED
    if quoting is _Quoting.DOLLAR_PAREN and char == "(":
        raise ConfigError("'(' inside '$( … )' is not allowed")
    buf.append(char)
    return (_Quoting.NONE if closes else quoting), _Ending.PLAIN


def _step_unquoted(char: str, ending: _Ending, buf: list[str]) -> tuple[_Quoting, _Ending]:
    """Take one character outside any quotes: open a quoted or verbatim part, or keep it."""
    if char == "'":
        return _Quoting.SINGLE, ending
    if char == '"':
        return _Quoting.DOUBLE, ending
    if char == ")":
        raise ConfigError("unquoted ')' is not allowed (quote it)")
    if char == "(" and not "".join(buf).endswith("$"):
        raise ConfigError("unquoted '(' is not allowed (quote it)")
    buf.append(char)
    return _OPENERS.get(char, _Quoting.NONE), _Ending.PLAIN


def _is_descriptor(word: str) -> bool:
    """Tell whether a word before ``>`` is a file descriptor number (``2`` in ``2>log``)."""
    return bool(word) and all("0" <= char <= "9" for char in word)


def _finish(word: str, ending: _Ending, env: Mapping[str, str] | None) -> list[str]:
    """Turn the de-quoted text of one word into the words it yields."""
    if env is None:
        return [word]
    expanded = _expand(word, env)
    if ending is _Ending.DOUBLE_QUOTED:
        return [expanded]
    return [part for part in _BLANK_RUN.split(expanded) if part]


def _expand(word: str, env: Mapping[str, str]) -> str:
    """Replace ``$NAME`` and ``${NAME}`` in de-quoted text; a backslash keeps the next char."""
    out: list[str] = []
    index = 0
    while index < len(word):
        char = word[index]
        if char == "\\":
            out.append(word[index + 1 : index + 2])
            index += 2
        elif char != "$":
            out.append(char)
            index += 1
        elif word.startswith("{", index + 1):
            end = _name_end(word, index + 2)
            if not word.startswith("}", end):
                return word
            out.append(env.get(word[index + 2 : end], "") if end > index + 2 else "")
            index = end + 1
        else:
            end = _name_end(word, index + 1)
            out.append(env.get(word[index + 1 : end], "") if end > index + 1 else "$")
            index = max(end, index + 1)
    return "".join(out)


def _name_end(text: str, start: int) -> int:
    """Index just past the variable name (letters, digits, ``_``) that starts at ``start``."""
    end = start
    while end < len(text) and (text[end].isalpha() or text[end].isdecimal() or text[end] == "_"):
        end += 1
    return end


def join(words: Sequence[str]) -> str:
    """Build a line that `split` (without ``env``) turns back into ``words``.

    Words with whitespace, quotes, backslashes, ``$`` or shell punctuation are double-quoted
    with ``\\`` before every ``"`` and ``\\``; an empty word becomes ``""``.

    >>> join(["echo", "a b", "", 'say "hi"'])
    'echo "a b" "" "say \\\\"hi\\\\""'
    """
    return " ".join(_quote(word) for word in words)


def _quote(word: str) -> str:
    """Quote one word for `join` when it needs it."""
    if word and not any(char in _NEEDS_QUOTES or char.isspace() for char in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``$KEY`` in ``text`` by ``values[KEY]`` (plain substrings, no ``${}``).

    vorteil uses this for the arguments after word 0, FIND_AND_REPLACE, DEFINE_IF_NOT_DEFINED
    and ``$SALT``. Deliberate deviation (quirk Q7): vorteil replaces the keys one after the
    other in no fixed order, so ``$HOST`` can clobber ``$HOSTNAME`` and a value that contains
    ``$KEY`` may be replaced again. Here the longest key wins at each position and the text is
    scanned once, so replaced values are never substituted again.

    >>> substitute("$HOSTNAME on $HOST", {"HOST": "h", "HOSTNAME": "vm-1"})
    'vm-1 on h'
    """
    keys = sorted((key for key in values if key), key=len, reverse=True)
    if not keys:
        return text
    pattern = re.compile("|".join(re.escape("$" + key) for key in keys))
    return pattern.sub(lambda match: values[match.group()[1:]], text)


def expand_env(entries: Sequence[str], base: Mapping[str, str]) -> list[tuple[str, str]]:
    """Process a program's ``KEY=VALUE`` entries in order, as vorteil does before exec.

    Each value is split with expansion from ``base`` and the entries kept so far (the latest
    one of a key counts), and its words are joined with single spaces. Following vorteil, an
    entry is dropped when it has no ``=``, when its value yields no words (empty, only
    whitespace, or only unknown variables) or when its value does not parse. The result keeps
    the order and any repeated keys; the caller decides that the last one wins.

    >>> expand_env(["A=x", "B=$A  y", "C=", "D"], {})
    [('A', 'x'), ('B', 'x y')]
    """
    known = dict(base)
    processed: list[tuple[str, str]] = []
    for entry in entries:
        key, equals, raw = entry.partition("=")
        if not equals:
            continue
        try:
            words = split(raw, env=known)
        except ConfigError:
            continue
        if not words:
            continue
        value = " ".join(words)
        known[key] = value
        processed.append((key, value))
    return processed
