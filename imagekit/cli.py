"""The ``imagekit`` command line.

    imagekit config render [PROJECT[:TARGET]] [--vcfg FILE ...] [--pretty]

Exit status: 0 success, 2 bad input (project, VCFG, arguments), 1 the environment failed.
Errors are one clear line (plus a hint); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from imagekit import config
from imagekit.errors import ImagekitError
from vinitd.errors import VinitdError
from vinitd.vcfg import codec

log = logging.getLogger("imagekit")

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except ImagekitError as err:
        _report(args, str(err), err.hint)
        return err.exit_status
    except VinitdError as err:
        _report(args, str(err), None)
        return 2
    except KeyboardInterrupt:
        print("imagekit: interrupted", file=sys.stderr)
        return 130


def _report(args: argparse.Namespace, message: str, hint: str | None) -> None:
    if args.debug:
        traceback.print_exc()
    print(f"imagekit: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagekit",
        description="Turn a project into a bootable vorteil-layout disk image.",
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    # The same options after a subcommand; SUPPRESS keeps a subparser from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log each step"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    config_parser = commands.add_parser(
        "config", help="read and render VCFGs", allow_abbrev=False, parents=[common]
    )
    config_commands = config_parser.add_subparsers(title="config commands", metavar="COMMAND")
    render = config_commands.add_parser(
        "render",
        help="print the VCFG JSON that would be written to the disk",
        description="Merge the target's VCFG files (and --vcfg files), fill the defaults, "
        "validate, and print the exact on-disk JSON.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    render.add_argument("project", nargs="?", metavar="PROJECT[:TARGET]", help="project directory")
    _add_vcfg_option(render)
    render.add_argument("--pretty", action="store_true", help="indent the JSON for people")
    render.set_defaults(handler=_render)
    return parser


def _add_vcfg_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vcfg",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a VCFG file merged after the target's (repeatable)",
    )


def _render(args: argparse.Namespace) -> int:
    spec = args.project if args.project is not None or args.vcfg else "."
    resolved = config.resolve(spec, args.vcfg)
    if args.pretty:
        print(codec.dumps_pretty(resolved.vcfg))
    else:
        # Exactly the on-disk bytes when piped; a newline only for a person at a terminal.
        sys.stdout.buffer.write(resolved.json() + (b"\n" if sys.stdout.isatty() else b""))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
