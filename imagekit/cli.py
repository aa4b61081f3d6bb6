"""The ``imagekit`` command line.

    imagekit build PROJECT[:TARGET] -o OUT [--vcfg FILE ...] [--format raw|qcow2]
                   [--kernel debian-cloud|DIR] [--force]
    imagekit cache info|clear
    imagekit config render [PROJECT[:TARGET]] [--vcfg FILE ...] [--pretty]
    imagekit config get IMAGE [--pretty]
    imagekit config set IMAGE [PROJECT[:TARGET]] [--vcfg FILE ...]
    imagekit inspect IMAGE [--json]

Exit status: 0 success, 2 bad input (project, VCFG, arguments), 1 the environment failed.
Errors are one clear line (plus a hint); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from imagekit import config
from imagekit.binaries import check_programs, in_filesystem
from imagekit.cache import BuildCache
from imagekit.errors import EnvironmentFailure, ImagekitError, UserError
from imagekit.image import FORMATS, BuildRequest, build
from imagekit.imagefile import image_format, raw_image, read_image_layout, write_config
from imagekit.inspect import inspect_image, render_text, stored_json
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
    except BrokenPipeError:
        # The reader went away (`imagekit inspect IMG | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


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

    build = commands.add_parser(
        "build",
        help="build a bootable disk image from a project",
        description="Build PROJECT[:TARGET] into a disk image in vorteil's layout.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    build.add_argument("project", metavar="PROJECT[:TARGET]", help="project directory")
    build.add_argument("-o", "--output", type=Path, required=True, help="image file to write")
    _add_vcfg_option(build)
    build.add_argument("--format", choices=FORMATS, default="raw", help="image format")
    build.add_argument(
        "--kernel",
        default="debian-cloud",
        metavar="debian-cloud|DIR",
        help="Debian's cloud kernel, or a directory with a bzImage and its modules",
    )
    build.add_argument("-f", "--force", action="store_true", help="replace an existing output")
    build.set_defaults(handler=_build)

    cache_parser = commands.add_parser(
        "cache", help="the build cache", allow_abbrev=False, parents=[common]
    )
    cache_commands = cache_parser.add_subparsers(title="cache commands", metavar="COMMAND")
    cache_commands.add_parser(
        "info", help="where the cache is and how big", parents=[common]
    ).set_defaults(handler=_cache_info)
    cache_commands.add_parser(
        "clear", help="remove every cached package, tree and blob", parents=[common]
    ).set_defaults(handler=_cache_clear)

    config_parser = commands.add_parser(
        "config", help="render VCFGs; read and set an image's", allow_abbrev=False, parents=[common]
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

    get = config_commands.add_parser(
        "get",
        help="print the VCFG JSON stored in an image",
        description="Print the VCFG JSON of IMAGE (raw or qcow2) exactly as stored.",
        allow_abbrev=False,
        parents=[common],
    )
    get.add_argument("image", type=Path, metavar="IMAGE", help="disk image")
    get.add_argument("--pretty", action="store_true", help="indent the JSON for people")
    get.set_defaults(handler=_config_get)

    set_command = config_commands.add_parser(
        "set",
        help="replace the VCFG stored in an image",
        description="Resolve PROJECT[:TARGET] and --vcfg files as build does (defaults, "
        "validation) and write the result into IMAGE in place of its VCFG, with a kernel "
        "command line made from it. The whole VCFG is replaced, not merged with the image's. "
        "Every program's binary must be in the image's root filesystem, as build checks. "
        "An interruption leaves the old config or the new one, never a mix.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    set_command.add_argument("image", type=Path, metavar="IMAGE", help="disk image to change")
    set_command.add_argument(
        "project", nargs="?", metavar="PROJECT[:TARGET]", help="project directory"
    )
    _add_vcfg_option(set_command)
    set_command.set_defaults(handler=_config_set)

    inspect = commands.add_parser(
        "inspect",
        help="show what an image holds",
        description="Report the partitions (cross-checked with libparted), the config block, "
        "the kernel command line, the kernel bundle, the VCFG and the root filesystem of IMAGE.",
        allow_abbrev=False,
        parents=[common],
    )
    inspect.add_argument("image", type=Path, metavar="IMAGE", help="disk image (raw or qcow2)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=_inspect)
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


def _build(args: argparse.Namespace) -> int:
    kernel_dir = None if args.kernel == "debian-cloud" else Path(args.kernel)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
    request = BuildRequest(
        spec=args.project,
        output=args.output,
        vcfgs=tuple(args.vcfg),
        image_format=args.format,
        kernel_dir=kernel_dir,
        force=args.force,
        source_date_epoch=int(epoch) if epoch is not None else None,
    )
    started = time.monotonic()
    progress = Progress(enabled=sys.stderr.isatty())
    try:
        with BuildCache() as cache:
            result = build(request, cache=cache, progress=progress.step)
    except OSError as err:
        raise _build_failure(request.output, err) from err
    finally:
        progress.done()
    print(
        f"created image: {result.path} ({_mib(result.size)} MiB, "
        f"{_mib(result.allocated)} MiB allocated) in {time.monotonic() - started:.1f} s"
    )
    return 0


def _build_failure(output: Path, err: OSError) -> EnvironmentFailure:
    """A host failure while building (full disk, file size limit, permissions) as one line."""
    where = f"{err.filename}: " if err.filename else ""
    hint = None
    if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        hint = f"make room (or raise the file size limit, ulimit -f) where {output} is written"
    return EnvironmentFailure(f"cannot build {output}: {where}{err.strerror or err}", hint=hint)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}"


class Progress:
    """One updating status line on a terminal; silent otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def step(self, name: str) -> None:
        log.info("%s", name)
        if self.enabled:
            elapsed = time.monotonic() - self.started
            sys.stderr.write(f"\r\033[K[{elapsed:5.1f}s] {name} ...")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _cache_info(args: argparse.Namespace) -> int:
    with BuildCache() as cache:
        info = cache.info()
    print(f"path: {info.root}")
    print(f"entries: {info.entries}")
    print(f"size: {_mib(info.size_bytes)} MiB")
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    with BuildCache() as cache:
        before = cache.info()
        cache.clear()
    print(f"cleared {before.root} ({_mib(before.size_bytes)} MiB)")
    return 0


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


def _config_get(args: argparse.Namespace) -> int:
    with raw_image(args.image) as image:
        data = read_image_layout(image).vcfg_json
    if args.pretty:
        decoded = stored_json(data, source=str(args.image))
        print(json.dumps(decoded, indent=2, ensure_ascii=False))
    else:
        sys.stdout.buffer.write(data + (b"\n" if sys.stdout.isatty() else b""))
        sys.stdout.flush()
    return 0


def _config_set(args: argparse.Namespace) -> int:
    image_format(args.image)  # a missing or unusable image is named before any VCFG problem
    resolved = config.resolve(args.project, args.vcfg)
    with raw_image(args.image) as image:  # every program's binary is in the image, as in build
        root = read_image_layout(image).root_offset
        check_programs(resolved.vcfg, in_filesystem(image.raw, root))
    result = write_config(args.image, resolved.vcfg)
    print(
        f"{args.image}: VCFG set ({result.json_len} bytes, room for {result.area_bytes}; "
        f"written {result.method})"
    )
    if result.kernel_args_changed:
        print(f"kernel command line: {result.kernel_args}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    report = inspect_image(args.image)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
