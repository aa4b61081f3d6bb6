"""Run every benchmark and print one table each: `python -m bench [NAME ...]`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import boot, build, vcfg_codec, vmtest_overhead

BENCHMARKS: dict[str, Callable[[], None]] = {
    "vcfg-codec": vcfg_codec.main,
    "build": build.main,
    "boot": boot.main,
    "vmtest": vmtest_overhead.main,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark: {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
        return 2
    for name in names:
        print(f"== {name}")
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
