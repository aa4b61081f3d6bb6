"""The kernel command line stored in the config block (vorteil-image §1.8, for a stock kernel).

The user's ``system.kernel-args`` come first; each generated word is added unless the user
already gave the same key. Differences from vorteil's line, on purpose:

- ``console=tty0 console=ttyS0,115200``: the *last* console is ``/dev/console``, so the serial
  port gets the early init's messages (vorteil listed ttyS0 first, making tty0 the console);
- ``quiet`` instead of ``loglevel=4``: a chatty serial console costs ~1.4 s under emulation;
- ``panic=-1``: a kernel panic reboots at once, which ends a QEMU run with ``-no-reboot``
  instead of leaving it hanging;
- ``rootfstype`` is ext4 unless ``system.filesystem`` asks for ext2.
"""

from __future__ import annotations

from collections.abc import Sequence

from imagekit.errors import UserError
from vinitd import shellwords
from vinitd.errors import ConfigError
from vinitd.layout import ROOT_PARTUUID
from vinitd.vcfg.model import VCFG

INIT_PATH = "/vorteil/vinitd"
# The kernel's COMMAND_LINE_SIZE on x86 is 2048 bytes, including the terminating NUL.
MAX_LENGTH = 2047
FIXED_WORDS = ("i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "vt.color=0x00")


def root_filesystem(vcfg: VCFG) -> str:
    """``ext2`` or ``ext4``: the type mke2fs makes and the kernel mounts."""
    return "ext2" if vcfg.system.filesystem in ("ext", "ext2") else "ext4"


def kernel_command_line(vcfg: VCFG, *, extra: Sequence[str] = ()) -> str:
    """Assemble the command line for ``vcfg``; ``extra`` words go after the user's."""
    try:
        user = shellwords.split(vcfg.system.kernel_args, strict=True)
    except ConfigError as err:
        raise UserError(f"system.kernel-args: {err.problem}") from None
    words = [*user, *extra]
    keys = {word.split("=", 1)[0] for word in words}

    def add(word: str, *, unless: Sequence[str] = ()) -> None:
        if not any(key in keys for key in (word.split("=", 1)[0], *unless)):
            words.append(word)

    add("rw", unless=("ro",))
    add(f"rootfstype={root_filesystem(vcfg)}")
    add("quiet", unless=("loglevel", "debug"))
    if "console" not in keys:
        words += ["console=tty0", "console=ttyS0,115200"]
    add(f"init={INIT_PATH}")
    add(f"root=PARTUUID={str(ROOT_PARTUUID).upper()}")
    add("panic=-1")
    words += FIXED_WORDS
    line = shellwords.join(words)
    if len(line.encode()) > MAX_LENGTH:
        raise UserError(
            f"the kernel command line would be {len(line.encode())} bytes long",
            hint=f"the kernel takes at most {MAX_LENGTH}; shorten system.kernel-args",
        )
    return line
