"""The bootstrap instruction grammar: every command's accepted and rejected forms."""

from __future__ import annotations

import itertools

import pytest

from vinitd.errors import ConfigError
from vinitd.vcfg.bootstrap import USAGE, Command, Instruction, parse


@pytest.mark.parametrize(
    ("text", "instruction"),
    [
        ("SLEEP 500", Instruction(Command.SLEEP, ("500",))),
        ("SLEEP 0", Instruction(Command.SLEEP, ("0",))),
        ("SLEEP \t 10  ", Instruction(Command.SLEEP, ("10",))),
        ("WAIT_FILE /srv/ready", Instruction(Command.WAIT_FILE, ("/srv/ready",))),
        (
            "WAIT_FILE /srv/ready timeout=30",
            Instruction(Command.WAIT_FILE, ("/srv/ready",), {"timeout": "30"}),
        ),
        ("WAIT_FILE /a=b", Instruction(Command.WAIT_FILE, ("/a=b",))),
        ("WAIT_PORT 8080", Instruction(Command.WAIT_PORT, ("8080",))),
        ("WAIT_PORT 80 443 65535 1", Instruction(Command.WAIT_PORT, ("80", "443", "65535", "1"))),
        ("WAIT_PORT if=eth1 8080", Instruction(Command.WAIT_PORT, ("8080",), {"if": "eth1"})),
        (
            "WAIT_PORT timeout=2.5 if=eth0 80 443",
            Instruction(Command.WAIT_PORT, ("80", "443"), {"if": "eth0", "timeout": "2.5"}),
        ),
        ("WAIT_PORT 80 timeout=5", Instruction(Command.WAIT_PORT, ("80",), {"timeout": "5"})),
        (
            "GET http://example.com/a?b=c /tmp/a",
            Instruction(Command.GET, ("http://example.com/a?b=c", "/tmp/a")),
        ),
        (
            "GET https://10.0.0.1:8443/x x",
            Instruction(Command.GET, ("https://10.0.0.1:8443/x", "x")),
        ),
        (
            "DEFINE_IF_NOT_DEFINED PORT 8080",
            Instruction(Command.DEFINE_IF_NOT_DEFINED, ("PORT", "8080")),
        ),
        (
            "DEFINE_IF_NOT_DEFINED _OPTS timeout=5",
            Instruction(Command.DEFINE_IF_NOT_DEFINED, ("_OPTS", "timeout=5")),
        ),
    ],
)
def test_accepted_forms(text: str, instruction: Instruction) -> None:
    """Well-formed instructions parse into their words and options."""
    assert parse(text) == instruction


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["find=$HOST", "replace=$IP0", "file=/etc/app.conf"]))
)
def test_find_and_replace_keys_in_any_order(order: tuple[str, ...]) -> None:
    """FIND_AND_REPLACE takes its three keys in any order."""
    parsed = parse("FIND_AND_REPLACE " + " ".join(order))
    assert parsed.words == ()
    assert dict(parsed.options) == {"find": "$HOST", "replace": "$IP0", "file": "/etc/app.conf"}


def test_find_and_replace_values_may_hold_equals_and_replace_may_be_empty() -> None:
    """A value keeps everything after the first '='; an empty replace deletes the text."""
    parsed = parse("FIND_AND_REPLACE find=a=b replace= file=/x")
    assert dict(parsed.options) == {"find": "a=b", "replace": "", "file": "/x"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("WAIT_FILE /x", None), ("WAIT_FILE /x timeout=30", 30.0), ("WAIT_PORT timeout=0.5 80", 0.5)],
)
def test_timeout(text: str, seconds: float | None) -> None:
    """timeout= is read as seconds; without it the wait has no deadline."""
    assert parse(text).timeout == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty bootstrap instruction"),
        ("   ", "empty bootstrap instruction"),
        ("sleep 5", "unknown bootstrap command 'sleep'"),
        ("REBOOT now", "unknown bootstrap command 'REBOOT'"),
        ("SLEEP", "malformed SLEEP"),
        ("SLEEP 5 6", "malformed SLEEP"),
        ("SLEEP timeout=5", "needs whole milliseconds"),
        ("SLEEP five", "needs whole milliseconds"),
        ("SLEEP -5", "needs whole milliseconds"),
        ("SLEEP 1.5", "needs whole milliseconds"),
        ("SLEEP \u00b2", "needs whole milliseconds"),
        ("SLEEP \u0661\u0662", "needs whole milliseconds"),
        ("WAIT_FILE", "malformed WAIT_FILE"),
        ("WAIT_FILE /a /b", "malformed WAIT_FILE"),
        ("WAIT_FILE timeout=5", "malformed WAIT_FILE"),
        ("WAIT_FILE /x timeout=", "timeout= needs a value"),
        ("WAIT_FILE /x timeout=0", "positive number of seconds"),
        ("WAIT_FILE /x timeout=-1", "positive number of seconds"),
        ("WAIT_FILE /x timeout=soon", "positive number of seconds"),
        ("WAIT_FILE /x timeout=inf", "positive number of seconds"),
        ("WAIT_FILE /x timeout=nan", "positive number of seconds"),
        ("WAIT_FILE /x timeout=1 timeout=2", "timeout= given twice"),
        ("WAIT_PORT", "malformed WAIT_PORT"),
        ("WAIT_PORT if=eth0", "malformed WAIT_PORT"),
        ("WAIT_PORT if= 80", "if= needs a value"),
        ("WAIT_PORT if=eth0 if=eth1 80", "if= given twice"),
        ("WAIT_PORT 0", "'0' is not a port number"),
        ("WAIT_PORT 65536", "'65536' is not a port number"),
        ("WAIT_PORT http", "'http' is not a port number"),
        ("WAIT_PORT 80 foo=1", "'foo=1' is not a port number"),
        ("WAIT_PORT \u00b2", "is not a port number"),
        ("GET", "malformed GET"),
        ("GET http://example.com/x", "malformed GET"),
        ("GET http://example.com/x /a /b", "malformed GET"),
        ("GET ftp://example.com/x /x", "needs an http(s) URL"),
        ("GET /local/x /x", "needs an http(s) URL"),
        ("GET http:///x /x", "needs an http(s) URL"),
        ("GET http://[::1/x /x", "needs an http(s) URL"),
        ("FIND_AND_REPLACE", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE find=a replace=b", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE find=a file=/x", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE replace=b file=/x", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE find=a replace=b file=/x extra", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE find=a replace=b with=c", "malformed FIND_AND_REPLACE"),
        ("FIND_AND_REPLACE find= replace=b file=/x", "find= needs a value"),
        ("FIND_AND_REPLACE find=a replace=b file=", "file= needs a value"),
        ("FIND_AND_REPLACE find=a find=b replace=c file=/x", "find= given twice"),
        ("FIND_AND_REPLACE find=a replace=b file=/x timeout=5", "malformed FIND_AND_REPLACE"),
        ("DEFINE_IF_NOT_DEFINED", "malformed DEFINE_IF_NOT_DEFINED"),
        ("DEFINE_IF_NOT_DEFINED PORT", "malformed DEFINE_IF_NOT_DEFINED"),
        ("DEFINE_IF_NOT_DEFINED PORT 80 81", "malformed DEFINE_IF_NOT_DEFINED"),
        ("DEFINE_IF_NOT_DEFINED 1PORT 80", "'1PORT' is not a variable name"),
        ("DEFINE_IF_NOT_DEFINED MY-PORT 80", "'MY-PORT' is not a variable name"),
    ],
)
def test_rejected_forms(text: str, fragment: str) -> None:
    """Malformed instructions raise ConfigError saying what is wrong."""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert fragment in caught.value.problem


@pytest.mark.parametrize("command", list(Command))
def test_a_malformed_instruction_shows_the_usage(command: Command) -> None:
    """The error for a command with too many words names its usage as what is allowed."""
    with pytest.raises(ConfigError) as caught:
        parse(f"{command} a b c d")
    assert caught.value.allowed == USAGE[command]


def test_an_unknown_command_lists_the_commands() -> None:
    """An unknown command's error lists every command."""
    with pytest.raises(ConfigError) as caught:
        parse("WAIT 5")
    assert caught.value.allowed == ", ".join(Command)
