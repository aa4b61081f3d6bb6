"""VCFG JSON encode/decode against the standard json module on the same document.

The baseline (json.dumps/json.loads of the same plain object) is measured in the same run,
so the ratio is meaningful on a shared, noisy machine; vinitd decodes the VCFG at every boot.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

from imagekit.defaults import with_defaults
from imagekit.vcfgfile import parse_vcfg_text
from vinitd.vcfg import codec

DOCUMENT = """
[[program]]
binary = "/bin/server"
args = "--port 8080 --peer $EXT_IP0"
env = ["HOME=/", "LD_LIBRARY_PATH=/lib64"]
bootstrap = ["WAIT_FILE /srv/ready", "SLEEP 500"]
[[network]]
http = ["8080"]
[system]
hostname = "api-$SALT"
dns = ["1.1.1.1"]
[vm]
ram = "256 MiB"
[sysctl]
"net.core.somaxconn" = "1024"
"""


def _best(func: Callable[[], object], number: int = 2000) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1e6


def main() -> None:
    vcfg = with_defaults(parse_vcfg_text(DOCUMENT, source="bench"))
    data = codec.dumps(vcfg)
    plain = json.loads(data)
    rows = [
        ("encode", _best(lambda: codec.dumps(vcfg)), _best(lambda: json.dumps(plain))),
        ("decode", _best(lambda: codec.loads(data)), _best(lambda: json.loads(data))),
    ]
    print(f"{'step':<8}{'vcfg codec µs':>15}{'json baseline µs':>18}{'ratio':>8}")
    for step, ours, baseline in rows:
        print(f"{step:<8}{ours:>15.1f}{baseline:>18.1f}{ours / baseline:>8.1f}")
