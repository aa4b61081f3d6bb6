"""Host names: the default from ``[info] name``, ``$SALT``, and vorteil's sanitising rules.

The builder writes a template such as ``api-$SALT``; vinitd draws the salt at boot and
sanitises the result (§7.5 of the vinitd spec). The builder also checks the template, which
vorteil never did, so that a name the guest would mangle is caught before the image exists.
"""

from __future__ import annotations

import random
import re

from vinitd.errors import ConfigError

SALT = "$SALT"
SALT_ALPHABET = "abcdefghijklmnopqrstuvwxyz-0123456789"
SALT_LENGTH = 8
MAX_LENGTH = 64
DEFAULT_BASE = "vorteil"

_LEGAL = re.compile(r"[a-z0-9-]")
_TEMPLATE = re.compile(r"^[A-Za-z0-9.-]*$")


def default_template(info_name: str) -> str:
    """``<info.name sanitised>-$SALT``, or ``vorteil-$SALT`` without a name."""
    base = re.sub(r"[^a-z0-9-]", "-", info_name.lower()).strip("-") or DEFAULT_BASE
    return f"{base[: MAX_LENGTH - 10]}-{SALT}"


def draw_salt(rng: random.Random | None = None) -> str:
    chooser = rng or random.SystemRandom()
    return "".join(chooser.choice(SALT_ALPHABET) for _ in range(SALT_LENGTH))


def check_template(template: str) -> None:
    """Raise ConfigError unless ``template`` makes a valid host name once salted."""
    if not template:
        return
    filled = template.replace(SALT, "a" * SALT_LENGTH)
    if not _TEMPLATE.fullmatch(filled):
        bad = sorted({c for c in filled if not re.match(r"[A-Za-z0-9.-]", c)})
        raise ConfigError(
            f"host name {template!r} has characters a host name cannot hold: {''.join(bad)!r}",
            allowed="letters, digits, '-', '.' and $SALT",
        )
    if len(filled) > MAX_LENGTH:
        raise ConfigError(
            f"host name {template!r} is {len(filled)} characters long once salted",
            allowed=f"at most {MAX_LENGTH}",
        )
    labels = filled.split(".")
    if any(not label for label in labels):
        raise ConfigError(f"host name {template!r} has an empty label ('..' or a dot at an end)")
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        raise ConfigError(f"host name {template!r} has a label starting or ending with '-'")


def sanitize(name: str) -> str:
    """vorteil's runtime rules: lower-case, illegal characters dropped or turned into '-'.

    Raises ConfigError for a name with nothing legal left (vorteil crashed on it).
    """
    lowered = name.lower()
    if not lowered:
        raise ConfigError("hostname can not be empty")
    if lowered.startswith("-"):
        lowered = lowered[1:]
    kept: list[str] = []
    for position, label in enumerate(lowered.split(".")):
        if not label:
            continue
        cleaned = _clean_label(label)
        if not cleaned:
            raise ConfigError(f"host name label {label!r} has no legal character")
        kept.append(("." if position else "") + cleaned)
    result = "".join(kept)[:MAX_LENGTH]
    if not result:
        raise ConfigError("hostname can not be empty")
    return result


def _clean_label(label: str) -> str:
    # Illegal characters before the first legal one are dropped; later runs become '-'.
    out: list[str] = []
    for char in label:
        if _LEGAL.match(char):
            out.append(char)
        elif out:
            out.append("-")
    return "".join(out)


def resolve(template: str, info_name: str = "", rng: random.Random | None = None) -> str:
    """The host name vinitd sets: template (or the default), salted, sanitised."""
    chosen = template or default_template(info_name)
    if len(chosen) > MAX_LENGTH:
        chosen = chosen[: MAX_LENGTH - 1]
    salt = draw_salt(rng)
    return sanitize(chosen.replace(SALT, salt))
