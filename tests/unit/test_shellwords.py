"""Shell-word rules of vorteil: `split`, `join`, `substitute` and `expand_env`."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vinitd import shellwords
from vinitd.errors import ConfigError
from vinitd.shellwords import expand_env, join, split, substitute

TERMINATORS = [";", "&", "|", "<", ">"]
ENV = {"A": "x", "S": "p  q", "Q": 'say "hi"', "P": "a;b", "ÄB": "u", "E": ""}

# Characters that exercise every branch of the parser, mixed with arbitrary ones.
SHELLISH = st.text(
    alphabet=st.one_of(st.sampled_from(list(" \t\n'\"\\$`;&|<>(){}AS_1")), st.characters())
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []), (" \t\r\n ", []), ("a b", ["a", "b"]), ("  a   b  ", ["a", "b"]),
        ("a\tb\nc\rd", ["a", "b", "c", "d"]), ("'a b'", ["a b"]), ('"a b"', ["a b"]),
        ("''", [""]), ('""', [""]), ("x '' y", ["x", "", "y"]), ("a'b c'd", ["ab cd"]),
        ("'it''s'", ["its"]), ('"it\'s"', ["it's"]), ("'say \"hi\"'", ['say "hi"']),
        ("'a b'\"c d\"e", ["a bc de"]),
    ],
)  # fmt: skip
def test_split_quotes(text: str, words: list[str]) -> None:
    """Unquoted blanks separate words; both kinds of quotes group and disappear."""
    assert split(text) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a\\ b", ["a b"]), ("\\'", ["'"]), ('\\"', ['"']), ("\\\\", ["\\"]), ("\\a", ["a"]),
        ("'a\\b'", ["a\\b"]), ("'a\\'", ["a\\"]), ('"a\\"b"', ['a"b']), ('"a\\b"', ["ab"]),
        ('"a\\\\b"', ["a\\b"]), ("\\(", ["("]), ("\\|x", ["|x"]), ("a\\\tb", ["a\tb"]),
    ],
)  # fmt: skip
def test_split_escapes(text: str, words: list[str]) -> None:
    """A backslash makes the next character literal, except inside single quotes."""
    assert split(text) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("$HOME '$X'", ["$HOME", "$X"]), ("${X}", ["${X}"]),
        ("$(date +%s) x", ["$(date +%s)", "x"]),
        ('$(a "b c")', ['$(a "b c")']), ("$(a\\ b)", ["$(a\\ b)"]), ("$(a;b|c)", ["$(a;b|c)"]),
        ("`a b` c", ["`a b`", "c"]), ("`a (b) 'c`", ["`a (b) 'c`"]), ('"f(x)" `', None),
        ("'$'(x)", ["$(x)"]), ('"f(x) `y"', ["f(x) `y"]),
    ],
)  # fmt: skip
def test_split_without_env_keeps_dollars_and_groups(text: str, words: list[str] | None) -> None:
    """Without env `$` is literal; `$( … )` and backquotes are kept verbatim as one word."""
    if words is None:
        with pytest.raises(ConfigError, match="unterminated backquote"):
            split(text)
    else:
        assert split(text) == words


@pytest.mark.parametrize("char", TERMINATORS)
def test_split_terminator_ends_parsing(char: str) -> None:
    """An unquoted `;&|<>` ends the line, keeping the word it ends, as vorteil does."""
    assert split(f"a b{char}c d") == ["a", "b"]
    assert split(f"a {char} 'unterminated") == ["a"]
    assert split(f"a {char}", env=ENV) == ["a"]


@pytest.mark.parametrize("char", TERMINATORS)
def test_split_terminator_quoted_or_escaped(char: str) -> None:
    """Quoted or escaped, a terminator is an ordinary character in both modes."""
    text = f"'{char}' \"{char}\" \\{char} `{char}`"
    expected = [char, char, char, f"`{char}`"]
    assert split(text) == expected
    assert split(text, strict=True) == expected


@pytest.mark.parametrize("char", TERMINATORS)
def test_split_terminator_strict(char: str) -> None:
    """In strict mode an unquoted terminator is an error that says how to fix it."""
    with pytest.raises(ConfigError, match=rf"^unquoted '\{char}' is not allowed \(quote it\)$"):
        split(f"a b{char}c", strict=True)


def test_split_redirect_descriptor() -> None:
    """A digits-only word right before `>` is the redirected descriptor and goes too."""
    assert split("app 2>err.log") == ["app"]
    assert split("app x2>err.log") == ["app", "x2"]
    assert split("app 2 >err.log") == ["app", "2"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("'abc", "unterminated single quote"), ("a 'b c", "unterminated single quote"),
        ('"abc', "unterminated double quote"), ("a\"b'c", "unterminated double quote"),
        ("`abc", "unterminated backquote"), ("$(abc", "unterminated '$('"),
        ("abc\\", "trailing backslash escapes nothing"),
        ("f(x)", "unquoted '(' is not allowed (quote it)"),
        ("(x", "unquoted '(' is not allowed (quote it)"),
        ("a)", "unquoted ')' is not allowed (quote it)"),
        ("$(a (b))", "'(' inside '$( … )' is not allowed"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("strict", [False, True])
def test_split_errors(text: str, problem: str, strict: bool) -> None:
    """Unbalanced quotes, a lone backslash and stray parentheses fail in both modes."""
    with pytest.raises(ConfigError) as caught:
        split(text, strict=strict)
    assert caught.value.problem == problem
    assert caught.value.path == ""
    assert caught.value.source is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("$A", ["x"]), ("${A}b", ["xb"]), ("$Ab", []), ("a$A.$A", ["ax.x"]), ("'$A'", ["x"]),
        ('"$A"', ["x"]), ("\\$A", ["x"]), ("\\\\$A", ["$A"]), ("'\\$A'", ["$A"]),
        ("$ÄB", ["u"]), ("$", ["$"]), ("a$", ["a$"]), ("$-x", ["$-x"]), ("${}", []),
        ("${A", ["${A"]), ("${A-b}c$A", ["${A-b}c$A"]), ("'a\\b'", ["ab"]),
        ("$(date)", ["$(date)"]),
    ],
)  # fmt: skip
def test_split_env_expansion(text: str, words: list[str]) -> None:
    """`$NAME`/`${NAME}` expand in the de-quoted word, single quotes and escapes included."""
    assert split(text, env=ENV) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("$U", []), ("$E", []), ("${U}", []), ('"$U"', [""]), ("a$U", ["a"]),
        ("x $U y", ["x", "y"]), ("''", []), ('""', [""]), ("'' b", ["b"]),
    ],
)  # fmt: skip
def test_split_env_unknown_and_empty(text: str, words: list[str]) -> None:
    """Unknown names are empty; an empty word survives only when it ends double-quoted."""
    assert split(text, env=ENV) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("$S", ["p", "q"]), ('"$S"', ["p  q"]), ("'$S'", ["p", "q"]), ('"$S".', ["p", "q."]),
        ('x"$S"', ["xp  q"]), ("x$S", ["xp", "q"]), ("'a  b'", ["a", "b"]),
        ("$Q", ["say", '"hi"']), ("$P", ["a;b"]), ('"$S"x', []),
    ],
)  # fmt: skip
def test_split_env_resplits(text: str, words: list[str]) -> None:
    """Unless the word ends double-quoted, its expansion is split on whitespace only."""
    assert split(text, env=ENV) == words


@given(SHELLISH, st.booleans(), st.booleans())
def test_split_fails_only_with_config_error(text: str, strict: bool, with_env: bool) -> None:
    """Any text either splits into strings or raises ConfigError, never anything else."""
    try:
        words = split(text, env=ENV if with_env else None, strict=strict)
    except ConfigError:
        return
    assert all(isinstance(word, str) for word in words)


@given(SHELLISH)
def test_split_strict_agrees_when_it_accepts(text: str) -> None:
    """Text that strict mode accepts splits the same way in vorteil's mode."""
    try:
        words = split(text, strict=True)
    except ConfigError:
        return
    assert split(text) == words


@pytest.mark.parametrize(
    ("words", "line"),
    [
        ([], ""), (["a", "b"], "a b"), ([""], '""'), (["a b"], '"a b"'), (['a"b'], '"a\\"b"'),
        (["a\\b"], '"a\\\\b"'), (["$HOME"], '"$HOME"'), (["x|y"], '"x|y"'), (["it's"], '"it\'s"'),
        (["f(x)"], '"f(x)"'), (["-o", "a=1,b=2"], "-o a=1,b=2"),
    ],
)  # fmt: skip
def test_join_quotes_only_what_needs_it(words: list[str], line: str) -> None:
    """Plain words stay bare; the others are double-quoted with `\\` before `"` and `\\`."""
    assert join(words) == line
    assert split(line) == words


@given(st.lists(st.text()))
def test_join_split_round_trip(words: list[str]) -> None:
    """Whatever the words, splitting the joined line gives them back."""
    assert split(join(words)) == words
    assert split(join(words), strict=True) == words


@given(SHELLISH)
def test_join_inverts_split(text: str) -> None:
    """Every word list that split produces survives a join and a second split."""
    try:
        words = split(text)
    except ConfigError:
        return
    assert split(join(words)) == words


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("$HOSTNAME/$HOST", "vm-1/h"), ("$HOST$HOSTNAME", "hvm-1"), ("$HOSTNAMEX", "vm-1X"),
        ("$A$A", "$B$B"), ("$B-$A", "x-$B"), ("${B}", "${B}"), ("$", "$"), ("no keys", "no keys"),
        ("$A.B $AxB", "dot $BxB"),
    ],
)  # fmt: skip
def test_substitute(text: str, result: str) -> None:
    """Longest key first, one pass: `$HOST` never clobbers `$HOSTNAME`, values are not rescanned."""
    values = {"HOST": "h", "HOSTNAME": "vm-1", "A": "$B", "B": "x", "A.B": "dot", "": "z"}
    assert substitute(text, values) == result


def test_substitute_without_values() -> None:
    """With nothing to substitute the text comes back unchanged."""
    assert substitute("$SALT and $X", {}) == "$SALT and $X"


def test_expand_env_refers_to_earlier_entries() -> None:
    """Values see the base and the entries before them, never those after."""
    entries = ["B=$A-$C", "C=c", "D=${C}d $PATH", "PATH=$PATH:/x"]
    assert expand_env(entries, {"A": "a", "PATH": "/bin"}) == [
        ("B", "a-"),
        ("C", "c"),
        ("D", "cd /bin"),
        ("PATH", "/bin:/x"),
    ]


def test_expand_env_drops_entries() -> None:
    """No `=`, no words (empty, blank, unknown only) or a parse error drop the entry."""
    entries = ["NOEQ", "EMPTY=", "BLANK=  ", "UNSET=$NOPE", "BAD='open", "PAREN=f(x)", "OK=1"]
    assert expand_env(entries, {}) == [("OK", "1")]


def test_expand_env_dropped_entry_defines_nothing() -> None:
    """A dropped entry leaves its name as it was for the entries after it."""
    assert expand_env(["A=", "B=${A}x"], {}) == [("B", "x")]
    assert expand_env(["A=", "B=${A}x"], {"A": "base"}) == [("B", "basex")]


def test_expand_env_keeps_duplicates_in_order() -> None:
    """Repeated keys all stay, in order; a lookup sees the latest one."""
    assert expand_env(["A=1", "B=$A", "A=2", "C=$A"], {}) == [
        ("A", "1"),
        ("B", "1"),
        ("A", "2"),
        ("C", "2"),
    ]


@pytest.mark.parametrize(
    ("entry", "pair"),
    [
        ("A=b=c", ("A", "b=c")), ('A=""', ("A", "")), ("A=  x   y ", ("A", "x y")),
        ('USERDATA={"a": 1}', ("USERDATA", "{a: 1}")), ("A=x;rest", ("A", "x")),
        ("A='$HOME'", ("A", "/root")), ('A="a  b"', ("A", "a  b")), ("=v", ("", "v")),
    ],
)  # fmt: skip
def test_expand_env_values(entry: str, pair: tuple[str, str]) -> None:
    """Values are split with expansion and joined with single spaces, as vorteil does."""
    assert expand_env([entry], {"HOME": "/root"}) == [pair]


def test_docstring_examples() -> None:
    """The examples in the module's docstrings hold."""
    assert doctest.testmod(shellwords).failed == 0
