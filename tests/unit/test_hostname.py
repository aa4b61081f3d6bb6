"""Host names: the default template, the build-time check, the salt and vinitd's sanitising."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vinitd.errors import ConfigError
from vinitd.vcfg import hostname
from vinitd.vcfg.hostname import (
    SALT_ALPHABET,
    SALT_LENGTH,
    check_template,
    default_template,
    draw_salt,
    resolve,
    sanitize,
)


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("", "vorteil-$SALT"),
        ("hello", "hello-$SALT"),
        ("My App", "my-app-$SALT"),
        ("API.Server", "api-server-$SALT"),
        ("--edge--", "edge-$SALT"),
        ("caf\u00e9 bar", "caf--bar-$SALT"),
        ("___", "vorteil-$SALT"),
        ("x" * 100, "x" * 54 + "-$SALT"),
    ],
)
def test_default_template(name: str, template: str) -> None:
    """info.name lower-cased, illegal characters as '-', trimmed, cut to 54, plus -$SALT."""
    assert default_template(name) == template


@given(st.text(max_size=120))
def test_default_template_always_passes_the_check(name: str) -> None:
    """Whatever info.name holds, the default template is a valid host name once salted."""
    check_template(default_template(name))


@pytest.mark.parametrize(
    "template",
    ["", "api-$SALT", "$SALT", "Web.Example.com", "a" * 64, "a" * 56 + "$SALT", "x$SALT.$SALT"],
)
def test_check_template_accepts(template: str) -> None:
    """Letters, digits, '-', '.' and $SALT, up to 64 characters once salted."""
    check_template(template)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("api_$SALT", "characters a host name cannot hold: '_'"),
        ("api $SALT", "characters a host name cannot hold: ' '"),
        ("$HOSTNAME", "characters a host name cannot hold: '$'"),
        ("api\n", "characters a host name cannot hold: '\\n'"),
        ("a" * 65, "65 characters long once salted"),
        ("a" * 57 + "$SALT", "65 characters long once salted"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a.", "empty label"),
        ("-api", "starting or ending with '-'"),
        ("api-", "starting or ending with '-'"),
        ("web.-api", "starting or ending with '-'"),
    ],
)
def test_check_template_rejects(template: str, fragment: str) -> None:
    """Templates the guest would mangle are rejected at build time."""
    with pytest.raises(ConfigError) as caught:
        check_template(template)
    assert fragment in caught.value.problem


@pytest.mark.parametrize(
    ("name", "sanitized"),
    [
        ("My_App.Example", "my-app.example"),
        ("_abc!", "abc-"),
        ("-abc", "abc"),
        ("--abc", "-abc"),
        (".abc", ".abc"),
        ("abc.", "abc"),
        ("a..b", "a.b"),
        ("A!!B", "a--b"),
        ("web.__x", "web.x"),
        ("a" * 70, "a" * 64),
    ],
)
def test_sanitize(name: str, sanitized: str) -> None:
    """vinitd's rules (vinitd spec §7.5): leading junk dropped, later runs become '-'."""
    assert sanitize(name) == sanitized


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "hostname can not be empty"),
        ("...", "hostname can not be empty"),
        ("!!!", "label '!!!' has no legal character"),
        ("abc.___", "label '___' has no legal character"),
    ],
)
def test_sanitize_rejects_names_with_nothing_legal(name: str, fragment: str) -> None:
    """An empty name, or a label without a legal character, is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        sanitize(name)
    assert fragment in caught.value.problem


def test_salt_alphabet_and_length() -> None:
    """A salt is 8 characters of a-z, '-' and 0-9."""
    assert SALT_LENGTH == 8
    assert sorted(SALT_ALPHABET) == sorted("abcdefghijklmnopqrstuvwxyz-0123456789")
    for seed in range(50):
        salt = draw_salt(random.Random(seed))
        assert len(salt) == SALT_LENGTH
        assert set(salt) <= set(SALT_ALPHABET)


def test_salt_without_rng_uses_system_randomness() -> None:
    """Without an rng the salt still has the right shape."""
    salt = draw_salt()
    assert len(salt) == SALT_LENGTH
    assert set(salt) <= set(SALT_ALPHABET)


def test_resolve_salts_a_template() -> None:
    """Every $SALT is replaced by the same drawn salt and the result is sanitised."""
    salt = draw_salt(random.Random(7))
    expected = sanitize(f"api-{salt}.{salt}")
    assert resolve("API-$SALT.$SALT", rng=random.Random(7)) == expected


def test_resolve_without_template_uses_info_name() -> None:
    """An empty template falls back to the default built from info.name."""
    salt = draw_salt(random.Random(3))
    assert resolve("", "API Server", rng=random.Random(3)) == sanitize(f"api-server-{salt}")
    assert resolve("", rng=random.Random(3)) == sanitize(f"vorteil-{salt}")


def test_resolve_cuts_a_long_template_to_63() -> None:
    """A template longer than 64 characters is cut to 63 before salting."""
    assert resolve("b" * 80, rng=random.Random(1)) == "b" * 63


def test_resolve_without_salt_is_the_template() -> None:
    """A template without $SALT comes back sanitised only."""
    assert resolve("Web.Example", rng=random.Random(1)) == "web.example"


def test_resolve_rejects_a_template_with_nothing_legal() -> None:
    """resolve() raises like sanitize() for a name that cannot become a host name."""
    with pytest.raises(ConfigError):
        resolve("___", rng=random.Random(1))


@given(st.text(alphabet="abcXYZ019-._!", min_size=1, max_size=80))
def test_sanitized_names_stay_sanitized(name: str) -> None:
    """Sanitising is idempotent except for one leading '-', and keeps [a-z0-9.-] only."""
    try:
        once = sanitize(name)
    except ConfigError:
        return
    assert set(once) <= set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    assert len(once) <= hostname.MAX_LENGTH
    if not once.startswith("-"):
        assert sanitize(once) == once
